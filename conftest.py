"""Fixtures shared by tests/ and parity_tests/: one tiny FLUX.1-shaped checkpoint per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fluxlora.args import BUNDLED_IMAGES, parse_args
from fluxlora.tiny import write_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "flux-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def one_image(tmp_path_factory) -> Path:
    """A folder with a single bundled image: 'a few steps on one image' tests."""
    folder = tmp_path_factory.mktemp("one_image")
    shutil.copy(sorted(BUNDLED_IMAGES.glob("*.png"))[0], folder)
    return folder


def tiny_argv(checkpoint: Path, output_dir: Path, images: Path = BUNDLED_IMAGES, *extra: str) -> list[str]:
    """A fast fp32 run on the tiny checkpoint; tests add or override flags through `extra`."""
    return ["--pretrained_model_name_or_path", str(checkpoint), "--instance_data_dir", str(images),
            "--instance_prompt", "a photo of sks robot", "--output_dir", str(output_dir),
            "--resolution", "32", "--train_batch_size", "1", "--max_train_steps", "4", "--learning_rate", "1e-3",
            "--max_sequence_length", "16", "--mixed_precision", "no", "--seed", "7", "--checkpointing_steps", "100",
            *extra]


def tiny_args(checkpoint: Path, output_dir: Path, images: Path = BUNDLED_IMAGES, *extra: str):
    return parse_args(tiny_argv(checkpoint, output_dir, images, *extra))
