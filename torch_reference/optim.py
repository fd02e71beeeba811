"""Optimizers for the LoRA parameters: torch's AdamW, behind the same factory as mindspore_impl.optim.

`--optimizer AdamWeightDecay` (the design document's MindSpore optimizer) has no torch counterpart here;
mindspore_impl reproduces torch's AdamW instead, and parity_tests measure the difference.
"""

from __future__ import annotations

import torch


def AdamW(groups: list[dict], betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:  # noqa: N802
    """groups: [{'params': {name: Parameter}, 'lr': float, 'weight_decay': float}, ...], as mindspore_impl takes."""
    return torch.optim.AdamW([{**g, "params": list(g["params"].values())} for g in groups], betas=betas, eps=eps)


OPTIMIZERS = {"AdamW": AdamW}
