"""Inject LoRA with peft's `add_adapter(LoraConfig(...))`, as the design document does."""

from __future__ import annotations

import torch
from peft import LoraConfig

from fluxlora.args import UsageError


def lora_config(rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=list(targets))


def check_targets(model: torch.nn.Module, targets: list[str], flag: str) -> None:
    """peft quietly skips a target that matches nothing as long as another matches: we do not."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"{flag}: {', '.join(missing)} match no module of the {type(model).__name__}; "
                         f"linear layers it has: {', '.join(leaves)}")


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: list[str], dropout: float = 0.0,
             flag: str = "--lora_layers") -> None:
    check_targets(model, targets, flag)
    model.add_adapter(lora_config(rank, alpha, targets, dropout))


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
