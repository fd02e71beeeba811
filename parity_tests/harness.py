"""Build both trainers on the same checkpoint, feed them the same inputs, and compare what they compute.

A failed comparison says which stage, the largest absolute and relative errors, and where they peak,
so a broken port is located, not only detected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fluxlora.data import DreamBoothData
from fluxlora.inputs import StepInputs, make_step_inputs


def to_numpy(value) -> np.ndarray:
    """A torch tensor, a MindSpore tensor or an array, as float64 numpy (bf16 included)."""
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy().astype(np.float64)
    if hasattr(value, "asnumpy"):
        import mindspore as ms

        return value.astype(ms.float32).asnumpy().astype(np.float64)
    return np.asarray(value, dtype=np.float64)


MINDSPORE_LEGACY_NAMES = {".gamma": ".weight", ".beta": ".bias", ".embedding_table": ".weight"}


def hf_name(name: str) -> str:
    """mindone keeps MindSpore's legacy names for LayerNorm/Embedding cells (gamma, beta, embedding_table)."""
    for legacy, hf in MINDSPORE_LEGACY_NAMES.items():
        if name.endswith(legacy):
            return name[: -len(legacy)] + hf
    return name


@dataclass
class Difference:
    stage: str
    max_abs: float
    max_rel: float  # largest |a - b| / max|a|: error relative to the stage's scale
    where: tuple
    reference: float
    candidate: float

    def __str__(self) -> str:
        return (f"{self.stage}: max abs err {self.max_abs:.3e}, rel {self.max_rel:.3e} at index {self.where} "
                f"(torch {self.reference:.6g}, mindspore {self.candidate:.6g})")


def difference(stage: str, reference, candidate) -> Difference:
    a, b = to_numpy(reference), to_numpy(candidate)
    if a.shape != b.shape:
        raise AssertionError(f"{stage}: shapes differ, torch {a.shape} vs mindspore {b.shape}")
    error = np.abs(a - b)
    where = np.unravel_index(int(error.argmax()), error.shape) if error.size else ()
    scale = float(np.abs(a).max()) if a.size else 0.0
    peak = float(error.max()) if error.size else 0.0
    return Difference(stage, peak, peak / scale if scale else peak, tuple(int(i) for i in where),
                      float(a[where]) if a.size else 0.0, float(b[where]) if b.size else 0.0)


def assert_close(stage: str, reference, candidate, rel: float) -> Difference:
    """Fail unless the largest error is within `rel` of the stage's own scale (max |reference|)."""
    diff = difference(stage, reference, candidate)
    if not diff.max_rel <= rel:
        raise AssertionError(f"{diff}; allowed rel {rel:.1e}")
    return diff


def copy_lora(torch_model, ms_model) -> int:
    """Give the MindSpore LoRA the torch LoRA's initial values, so both start from one point."""
    import mindspore as ms
    from mindspore import ops

    source = {n: p for n, p in torch_model.named_parameters() if p.requires_grad}
    targets = list(ms_model.trainable_params())
    if {p.name for p in targets} != set(source):
        raise AssertionError(f"LoRA parameter names differ: {sorted({p.name for p in targets} ^ set(source))[:5]}")
    for p in targets:
        ops.assign(p, ms.Tensor(source[p.name].detach().float().numpy()).astype(p.dtype))
    return len(targets)


def shared_inputs(args, tokenizers, vae_config, schedule, seed: int = 7, micro_step: int = 0) -> StepInputs:
    """One micro-batch with its random draws, fed identically to both frameworks."""
    data = DreamBoothData(args)
    batch = data.batch(seed, *divmod(micro_step, data.batches_per_epoch))
    return make_step_inputs(batch, tokenizers, args, seed, micro_step, 0, vae_config, schedule)


@dataclass
class Pair:
    """The same run set up in both frameworks: LoRA initial values copied torch -> MindSpore."""

    args: object
    torch_models: object
    torch_trainable: list
    ms_models: object
    ms_trainable: list

    def inputs(self, seed: int = 7, micro_step: int = 0) -> StepInputs:
        from torch_reference.models import schedule_tables

        m = self.torch_models
        return shared_inputs(self.args, m.tokenizers, m.vae.config, schedule_tables(m.noise_scheduler), seed,
                             micro_step)


def build_pair(args, sync_lora: bool = True) -> Pair:
    import torch

    import mindspore_impl.train as ms_train
    import torch_reference.train as torch_train

    device = ms_train.select_device("cpu")
    torch.manual_seed(0)  # the torch LoRA init (copied to MindSpore) is then the same every run
    torch_models, torch_trainable = torch_train.build(args, torch.device("cpu"))
    ms_models, ms_trainable = ms_train.build(args, device)
    if sync_lora:
        for t, m in zip(torch_trainable, ms_trainable):
            copy_lora(t, m)
    return Pair(args, torch_models, torch_trainable, ms_models, ms_trainable)


def perturb_lora_b(pair, scale: float = 0.02, seed: int = 5) -> None:
    import mindspore as ms
    import torch
    from mindspore import ops

    """Give every lora_B small random values (the same on both sides), so the LoRA path is live:
    with B = 0, lora_A's gradients are exactly zero and a wrong LoRA forward would go unnoticed."""
    rng = np.random.default_rng(seed)
    for torch_model, ms_model in zip(pair.torch_trainable, pair.ms_trainable):
        values = {}
        for name, p in torch_model.named_parameters():
            if ".lora_B." in name:
                values[name] = (scale * rng.standard_normal(tuple(p.shape))).astype(np.float32)
                with torch.no_grad():
                    p.copy_(torch.from_numpy(values[name]))

        for p in ms_model.trainable_params():
            if p.name in values:
                ops.assign(p, ms.Tensor(values[p.name]))
