"""Inject LoRA with mindone.peft's `add_adapter(LoraConfig(...))`, as the design document does."""

from __future__ import annotations

import mindspore as ms
from mindone.peft import LoraConfig

from fluxlora.args import UsageError


def lora_config(rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=list(targets))


def is_linear(cell: ms.nn.Cell) -> bool:
    return isinstance(cell, (ms.nn.Dense, ms.mint.nn.Linear))


def check_targets(model: ms.nn.Cell, targets: list[str], flag: str) -> None:
    """peft quietly skips a target that matches nothing as long as another matches: we do not."""
    names = [name for name, _ in model.cells_and_names()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.split(".")[-1] for n, c in model.cells_and_names() if is_linear(c)})
        raise UsageError(f"{flag}: {', '.join(missing)} match no module of the {type(model).__name__}; "
                         f"linear layers it has: {', '.join(leaves)}")


def add_lora(model: ms.nn.Cell, rank: int, alpha: float, targets: list[str], dropout: float = 0.0,
             flag: str = "--lora_layers") -> None:
    check_targets(model, targets, flag)
    model.add_adapter(lora_config(rank, alpha, targets, dropout))


def lora_parameters(model: ms.nn.Cell) -> dict[str, ms.Parameter]:
    return {p.name: p for p in model.trainable_params()}
