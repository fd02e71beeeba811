"""torch <-> fluxlora.checkpoints: LoRA weights and AdamW moments as numpy, restored in place."""

from __future__ import annotations

import numpy as np
import torch

from fluxlora.checkpoints import check_matches


def training_state(params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer):
    lora = {name: p.detach().float().cpu().numpy() for name, p in params.items()}
    moments, steps = {}, 0
    for name, p in params.items():
        state = optimizer.state.get(p, {})
        if state:
            moments[f"{name}.exp_avg"] = state["exp_avg"].float().cpu().numpy()
            moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].float().cpu().numpy()
            steps = int(state["step"])
    return lora, moments, {"optimizer_steps": steps}


def restore_training_state(params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                           lora: dict[str, np.ndarray], moments: dict[str, np.ndarray], state: dict) -> None:
    check_matches(lora, {name: tuple(p.shape) for name, p in params.items()})
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(lora[name]))
    for name, p in params.items():
        if f"{name}.exp_avg" in moments:
            optimizer.state[p] = {
                "step": torch.tensor(float(state["optimizer_steps"])),
                "exp_avg": torch.from_numpy(moments[f"{name}.exp_avg"]).to(p.device, p.dtype),
                "exp_avg_sq": torch.from_numpy(moments[f"{name}.exp_avg_sq"]).to(p.device, p.dtype),
            }
