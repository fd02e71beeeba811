"""MindSpore <-> fluxlora.checkpoints: LoRA weights and optimizer moments as numpy, restored in place."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops

from fluxlora.args import UsageError


def training_state(params: dict[str, ms.Parameter], optimizer):
    lora = {name: p.astype(ms.float32).asnumpy() for name, p in params.items()}
    moments, state = optimizer.state()
    return lora, moments, state


def restore_training_state(params: dict[str, ms.Parameter], optimizer, lora: dict[str, np.ndarray],
                           moments: dict[str, np.ndarray], state: dict) -> None:
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
    for name, p in params.items():
        ops.assign(p, ms.Tensor(lora[name]).astype(p.dtype))
    optimizer.load_state(moments, state)
