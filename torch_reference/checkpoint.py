"""torch <-> fluxlora.checkpoints: LoRA weights and AdamW moments as numpy, restored in place."""

from __future__ import annotations

import numpy as np
import torch

from fluxlora.args import UsageError


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
    missing = sorted(set(params) - set(lora))
    if missing:
        raise UsageError(f"--resume_from_checkpoint: the checkpoint lacks {len(missing)} LoRA tensors (e.g. "
                         f"{missing[0]}); it was written with other --lora_layers/--train_text_encoder settings. "
                         "Resume with the flags of the original run")
    mismatched = [n for n, p in params.items() if tuple(lora[n].shape) != tuple(p.shape)]
    if mismatched:
        raise UsageError(f"--resume_from_checkpoint: {mismatched[0]} has shape {lora[mismatched[0]].shape} in the "
                         f"checkpoint but {tuple(params[mismatched[0]].shape)} here: a different --rank. Resume "
                         "with the flags of the original run")
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
