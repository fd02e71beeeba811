"""MindSpore <-> fluxlora.checkpoints: LoRA weights and optimizer moments as numpy, restored in place."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops

from fluxlora.checkpoints import check_matches


def training_state(params: dict[str, ms.Parameter], optimizer):
    lora = {name: p.astype(ms.float32).asnumpy() for name, p in params.items()}
    moments, state = optimizer.state()
    return lora, moments, state


def restore_training_state(params: dict[str, ms.Parameter], optimizer, lora: dict[str, np.ndarray],
                           moments: dict[str, np.ndarray], state: dict) -> None:
    check_matches(lora, {name: tuple(p.shape) for name, p in params.items()})
    for name, p in params.items():
        ops.assign(p, ms.Tensor(lora[name]).astype(p.dtype))
    optimizer.load_state(moments, state)
