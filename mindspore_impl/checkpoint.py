"""MindSpore <-> fluxlora.checkpoints: LoRA weights and optimizer moments as numpy, restored in place."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops


def training_state(params: dict[str, ms.Parameter], optimizer):
    lora = {name: p.astype(ms.float32).asnumpy() for name, p in params.items()}
    moments, state = optimizer.state()
    return lora, moments, state


def restore_training_state(params: dict[str, ms.Parameter], optimizer, lora: dict[str, np.ndarray],
                           moments: dict[str, np.ndarray], state: dict) -> None:
    missing = sorted(set(params) - set(lora))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} LoRA tensors (e.g. {missing[0]}); it was written "
                         "with other --rank/--lora_layers/--train_text_encoder settings")
    for name, p in params.items():
        ops.assign(p, ms.Tensor(lora[name]).astype(p.dtype))
    optimizer.load_state(moments, state)
