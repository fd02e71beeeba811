"""Optimizers for the LoRA parameters.

`AdamW` reproduces torch.optim.AdamW (bias-corrected moments, decoupled weight decay) so the two
trainers take the same steps; it is the default. `AdamWeightDecay` wraps the document's
`mindspore.nn.AdamWeightDecay`, which has no bias correction: for a steady gradient its step t is
(1 - beta1^t) / sqrt(1 - beta2^t) times AdamW's: 3.16x at the first step, about 6.5x around step 12,
and still 3.2x at step 100; it approaches AdamW only after thousands of steps. Over 10 steps of the
tiny model the LoRA ends ~5x larger (parity_tests/test_trajectory.py measures it).
Updates are written with `ops.assign`
(in-place tensor methods are silent no-ops on MindSpore CPU).
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import ops


@ms.jit
def adamw_update(param, exp_avg, exp_avg_sq, grad, beta1, beta2, correction2_sqrt, eps, step_size, shrink):
    """One parameter's torch-AdamW update, compiled once per shape: PyNative dispatches each of these ~10
    elementwise ops separately (about 1 ms apiece on CPU), a compiled graph runs them in one call."""
    g = grad.astype(ms.float32)
    m = exp_avg * beta1 + g * (1.0 - beta1)
    v = exp_avg_sq * beta2 + g * g * (1.0 - beta2)
    ops.assign(exp_avg, m)
    ops.assign(exp_avg_sq, v)
    denom = ops.sqrt(v) / correction2_sqrt + eps
    ops.assign(param, (param * shrink - step_size * m / denom).astype(param.dtype))
    return param


class AdamW:
    def __init__(self, groups: list[dict], betas=(0.9, 0.999), eps: float = 1e-8):
        """groups: [{'params': {name: Parameter}, 'lr': float, 'weight_decay': float}, ...] as in torch_reference."""
        self.groups = groups
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = 0
        self.exp_avg = {n: ms.Parameter(ops.zeros(p.shape, ms.float32), name=f"{n}.exp_avg", requires_grad=False)
                        for g in groups for n, p in g["params"].items()}
        self.exp_avg_sq = {n: ms.Parameter(ops.zeros(p.shape, ms.float32), name=f"{n}.exp_avg_sq",
                                           requires_grad=False)
                           for g in groups for n, p in g["params"].items()}

    def set_learning_rates(self, lrs: list[float]) -> None:
        for group, lr in zip(self.groups, lrs):
            group["lr"] = lr

    def step(self, grads: list[ms.Tensor]) -> None:
        self.steps += 1
        scalar = lambda x: ms.Tensor(x, ms.float32)  # noqa: E731  (tensors, so the compiled update is reused)
        beta1, beta2 = scalar(self.beta1), scalar(self.beta2)
        correction2_sqrt = scalar(math.sqrt(1.0 - self.beta2 ** self.steps))
        eps = scalar(self.eps)
        grads = iter(grads)
        for group in self.groups:
            step_size = scalar(group["lr"] / (1.0 - self.beta1 ** self.steps))
            shrink = scalar(1.0 - group["lr"] * group["weight_decay"])
            for name, p in group["params"].items():
                adamw_update(p, self.exp_avg[name], self.exp_avg_sq[name], next(grads), beta1, beta2,
                             correction2_sqrt, eps, step_size, shrink)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        moments = {f"{n}.exp_avg": t.asnumpy() for n, t in self.exp_avg.items()}
        moments.update({f"{n}.exp_avg_sq": t.asnumpy() for n, t in self.exp_avg_sq.items()})
        return moments, {"optimizer_steps": self.steps}

    def load_state(self, moments: dict[str, np.ndarray], state: dict) -> None:
        for name in self.exp_avg:
            if f"{name}.exp_avg" in moments:
                ops.assign(self.exp_avg[name], ms.Tensor(moments[f"{name}.exp_avg"]))
                ops.assign(self.exp_avg_sq[name], ms.Tensor(moments[f"{name}.exp_avg_sq"]))
        self.steps = int(state["optimizer_steps"])


class AdamWeightDecay:
    """The document's optimizer, `mindspore.nn.AdamWeightDecay`, behind the same interface."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.999), eps: float = 1e-8):
        self.groups = groups
        self.names = [n for g in groups for n in g["params"]]
        self.lrs = [ms.Parameter(ms.Tensor(g["lr"], ms.float32), name=f"lr_{i}", requires_grad=False)
                    for i, g in enumerate(groups)]
        ms_groups = [{"params": list(g["params"].values()), "lr": lr, "weight_decay": g["weight_decay"]}
                     for g, lr in zip(groups, self.lrs)]
        self.optimizer = ms.nn.AdamWeightDecay(ms_groups, learning_rate=self.lrs[0], beta1=betas[0], beta2=betas[1],
                                               eps=eps)
        self.steps = 0

    def set_learning_rates(self, lrs: list[float]) -> None:
        for parameter, lr in zip(self.lrs, lrs):
            ops.assign(parameter, ms.Tensor(lr, ms.float32))

    def step(self, grads: list[ms.Tensor]) -> None:
        self.steps += 1
        self.optimizer(tuple(grads))

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        moments = {f"{n}.exp_avg": m.asnumpy() for n, m in zip(self.names, self.optimizer.moments1)}
        moments.update({f"{n}.exp_avg_sq": v.asnumpy() for n, v in zip(self.names, self.optimizer.moments2)})
        return moments, {"optimizer_steps": self.steps}

    def load_state(self, moments: dict[str, np.ndarray], state: dict) -> None:
        for name, m, v in zip(self.names, self.optimizer.moments1, self.optimizer.moments2):
            if f"{name}.exp_avg" in moments:
                ops.assign(m, ms.Tensor(moments[f"{name}.exp_avg"]))
                ops.assign(v, ms.Tensor(moments[f"{name}.exp_avg_sq"]))
        self.steps = int(state["optimizer_steps"])


OPTIMIZERS = {"AdamW": AdamW, "AdamWeightDecay": AdamWeightDecay}
