"""Parity fixtures: both frameworks on the session's tiny checkpoint, MindSpore on CPU in PyNative mode."""

from __future__ import annotations

import pytest

from conftest import tiny_args

from .harness import build_pair


@pytest.fixture
def make_pair(tiny_checkpoint, tmp_path):
    """make_pair(*flags) -> Pair: a fresh pair of models per call, LoRA initial values shared."""
    def make(*flags, sync_lora: bool = True):
        from conftest import BUNDLED_IMAGES

        return build_pair(tiny_args(tiny_checkpoint, tmp_path / "out", BUNDLED_IMAGES, *flags), sync_lora)

    return make
