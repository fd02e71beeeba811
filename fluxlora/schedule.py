"""Learning-rate multipliers by step, the same formulas as diffusers' `get_scheduler`, written once.

Both trainers ask `lr_multiplier(step)` for the step they are about to take, so their learning
rates agree to the last bit and a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math


def lr_multiplier(name: str, step: int, warmup: int, total: int, cycles: int = 1, power: float = 1.0,
                  base_lr: float = 1.0, lr_end: float = 1e-7) -> float:
    if name == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if name == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    if name == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    if name == "polynomial":
        if step > total:
            return lr_end / base_lr
        decay = (base_lr - lr_end) * (1 - progress) ** power + lr_end
        return decay / base_lr
    raise ValueError(f"unknown lr scheduler {name!r}")
