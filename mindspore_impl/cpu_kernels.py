"""CPU stand-ins for the Ascend-only MindSpore ``mint`` kernels that mindone 0.5.0 calls.

Why this module exists
----------------------
mindone 0.5.0 is written against MindSpore's ``mint`` API, and many ``mint`` kernels are
registered only for Ascend.  On a MindSpore CPU build (2.7.1 here) they fail with
``The kernel X unregistered.`` (PyNative) or ``Unsupported op [X] on CPU`` (graph mode), so the
tiny FLUX / CLIP / T5 / VAE models this project uses for CPU tests cannot run.  This is the one
place that routes those calls to CPU-capable primitives.  Everything here is a small named
function computing the same thing as the kernel it replaces (checked against numpy in
``tests/test_cpu_kernels.py``).

``apply_cpu_kernels()`` patches only when ``mindspore.get_context("device_target") == "CPU"``;
on Ascend or GPU it patches nothing and returns ``[]``: the real kernels are used there.
Call it once, after ``mindspore.set_context(device_target=...)`` and **before building models**
(a few mindone cells capture ``mint`` functions in ``__init__``).  It is idempotent.

Replacements (kernel -> replacement; patched attribute)
------------------------------------------------------
Needed by the tiny FLUX transformer, T5 encoder and VAE (each one, left out, makes one of them
fail on CPU; CLIPTextModel needs none):

- Arange               -> ``ops.arange``                         ``mint.arange``  (timestep emb., RoPE, T5)
- SplitWithSize        -> ``ops.split`` (no CPU kernel in 2.7.0)  ``mint.split``
- Outer                -> broadcast multiply                     ``mint.outer``  (RoPE)
- StackExt             -> ``ops.stack``                          ``mint.stack``  (RoPE)
- unbind backward ("The pointer[input_tensor] is null.")
                       -> ``mint.split`` + squeeze               ``mint.unbind``  (apply_rotary_emb)
- RepeatInterleaveInt  -> broadcast + reshape (int repeats), gather (per-element repeats)
                                                                 ``Tensor.repeat_interleave`` (RoPE),
                                                                 ``mint.repeat_interleave``
- LayerNormExt         -> the older LayerNorm primitive, in fp32 ``mint.nn.LayerNorm.construct``,
                                                                 ``mint.nn.functional.layer_norm``
- GeluExt              -> ``ops.gelu`` (erf), x*sigmoid(..) (tanh) ``mint.nn.functional.gelu``
                                                                 (``mint.nn.GELU`` calls it)
- Conv2DExt / Conv2DPadding -> ``ops.conv2d``                    ``mint.nn.Conv2d.construct``,
                                                                 ``mint.nn.functional.conv2d``  (VAE)
- ConstantPadND        -> ``ops.pad`` (also Reflection/ReplicationPad) ``mint.nn.functional.pad``  (VAE Downsample2D)
- Embedding            -> ``ops.gather``                         ``mint.nn.Embedding.construct``,
                                                                 ``mint.nn.functional.embedding``  (T5)
- FlashAttentionScore  -> math attention softmax(QK^T*scale + mask)V in fp32, with a hand-written
                          backward (``MathAttention``: recomputes P, as flash attention does)
                          ``mindone.diffusers.models.layers_compat.scaled_dot_product_attention``
                          and ``attention_dispatch``'s copy of it (FLUX attention).  mindone's
                          ``Attention.scaled_dot_product_attention`` (VAE mid block) already falls
                          back to math attention off Ascend and is left alone.

Needed by the training / pipeline helpers around the models:

- OnesLikeExt          -> ``ops.ones``                           ``mint.ones_like``  (compute_loss_weighting_for_sd3)
- ZerosLikeExt         -> ``ops.zeros``                          ``mint.zeros_like``  (gradient accumulation helpers)
- FillScalar           -> ``ops.full``                           ``mint.full``  (FluxPipeline guidance)
- MSELossExt           -> ``(a - b) ** 2`` + reduction           ``mint.nn.functional.mse_loss``,
                                                                 ``mint.nn.MSELoss.construct``

Not missing but imprecise on CPU (measured on 2.7.1 against float64 numpy): fp32 ``Exp`` is off by
up to 6e-6 relative (torch: 6e-8), fp32 ``Tanh`` by up to 1e-4 absolute (torch: 3e-8) and fp32
``Log`` by up to 1e-4 relative. FLUX's
sinusoidal timestep/guidance embedding multiplies exp's result by up to 3500, which turned that into
a 4e-4 relative error in the transformer's output; Log's error moved T5's relative-position
buckets (see precise_log). So in fp32 these three run in float64 and cast back:
- Exp (fp32)           -> float64 exp, cast to fp32              ``mint.exp``
- Tanh (fp32)          -> float64 tanh, cast to fp32             ``mint.tanh``
- Log (fp32)           -> float64 log, cast to fp32              ``mint.log``, ``ops.log`` (T5 buckets)

Functions bound by value elsewhere (``from mindspore.mint... import x``, e.g. mindone's
``layers_compat.pad``) are re-bound in every already-imported ``mindone.*`` module.
Not replaced: random kernels (RandExt, RandnLike, NormalFloatFloat): make random arrays with
numpy or ``ops.standard_normal``/``ops.rand``; ``mint.nn.functional.dropout`` (fails on CPU even
with p=0; the models here use ``ops.dropout``/``mint.nn.Dropout``, which work); the fused
``mint.optim.AdamW``; ``ops.rms_norm`` (mindone's RMSNorm uses plain math on MindSpore 2.7);
bf16 arithmetic (MindSpore CPU has none).  Never rely on in-place ops (``Tensor.add_`` is a
silent no-op on CPU); nothing here uses them.
"""

from __future__ import annotations

import math
import sys
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint, ops

__all__ = ["apply_cpu_kernels", "is_cpu"]

_APPLIED: Optional[list] = None


def is_cpu() -> bool:
    """True when MindSpore's current device target is CPU."""
    return ms.get_context("device_target") == "CPU"


# ----------------------------------------------------------------------------------------------
# Replacements (each one computes what the Ascend kernel computes)
# ----------------------------------------------------------------------------------------------
_EXP, _TANH, _LOG = mint.exp, mint.tanh, mint.log


def _through_float64(kernel, input):  # noqa: A002
    """An fp32 input computed in float64 and cast back; other dtypes (and non-tensors) as the kernel takes them."""
    if isinstance(input, ms.Tensor) and input.dtype == ms.float32:
        return kernel(input.astype(ms.float64)).astype(ms.float32)
    return kernel(input)


def precise_exp(input):  # noqa: A002
    """fp32 exp through float64: MindSpore CPU's fp32 Exp is only ~17 bits accurate."""
    return _through_float64(_EXP, input)


def precise_tanh(input):  # noqa: A002
    """fp32 tanh through float64: MindSpore CPU's fp32 Tanh is off by up to 1e-4."""
    return _through_float64(_TANH, input)


def precise_log(input):  # noqa: A002
    """fp32 log through float64: MindSpore CPU's fp32 Log is off by up to 1e-4 relative, enough to move
    T5's relative-position buckets, floor(log(d / 8) / log(16) * 8), at d = 16, 32, 64: 1.9999995
    instead of 2.0 put those token pairs in the wrong bucket and moved the 512-token T5 output by 12%."""
    return _through_float64(_LOG, input)


def _scalar(x):
    return x.item() if isinstance(x, ms.Tensor) else x


def cpu_arange(start=0, end=None, step=1, *, dtype=None):
    """mint.arange: [start, end) by step; int args -> int64, float args -> float32."""
    return ops.arange(_scalar(start), _scalar(end), _scalar(step), dtype=dtype)


def cpu_outer(input, vec2):
    """mint.outer: out[i, j] = input[i] * vec2[j]."""
    return input.reshape(-1, 1) * vec2.reshape(1, -1)


def cpu_stack(tensors, dim=0):
    """mint.stack."""
    return ops.stack(list(tensors), axis=dim)


def cpu_split(tensor, split_size_or_sections, dim=0):
    """mint.split via ops.split: MindSpore 2.7.0 has no CPU kernel for SplitWithSize (2.7.1 does)."""
    if isinstance(split_size_or_sections, (list, tuple)):
        split_size_or_sections = [int(s) for s in split_size_or_sections]
    return ops.split(tensor, split_size_or_sections, axis=dim)


def cpu_unbind(input, dim=0):
    """mint.unbind, built from split + squeeze so that its backward works on CPU."""
    return tuple(p.squeeze(dim) for p in cpu_split(input, 1, dim=dim))


def cpu_repeat_interleave(input, repeats, dim=None, output_size=None):
    """mint.repeat_interleave: each element repeated `repeats` times along `dim`
    (flattened first when dim is None).  `output_size` is only a hint and is checked."""
    if dim is None:
        input = input.reshape(-1)
        dim = 0
    dim = dim % input.ndim
    if isinstance(repeats, ms.Tensor) and repeats.size == 1:
        repeats = int(repeats.item())
    if isinstance(repeats, int):
        shape = input.shape
        x = input.unsqueeze(dim + 1)
        x = mint.broadcast_to(x, shape[: dim + 1] + (repeats,) + shape[dim + 1 :])
        out = x.reshape(shape[:dim] + (shape[dim] * repeats,) + shape[dim + 1 :])
    else:
        reps = repeats.asnumpy() if isinstance(repeats, ms.Tensor) else np.asarray(repeats)
        index = np.repeat(np.arange(input.shape[dim]), reps.astype(np.int64))
        out = ops.gather(input, ms.Tensor(index, ms.int32), dim)
    if output_size is not None and out.shape[dim] != output_size:
        raise ValueError(f"repeat_interleave: output_size={output_size} but got {out.shape[dim]}")
    return out


def _tensor_repeat_interleave(self, repeats, dim=None, *, output_size=None):
    return cpu_repeat_interleave(self, repeats, dim=dim, output_size=output_size)


def cpu_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """mint.nn.functional.layer_norm through the older LayerNorm primitive, which has CPU kernels
    (forward and backward): statistics and affine in fp32, result in input dtype. It replaced mean /
    variance arithmetic that was 2-3x slower, MindSpore's CPU broadcasts being slow."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    axis = input.ndim - len(normalized_shape)
    gamma = ops.ones(normalized_shape, ms.float32) if weight is None else weight.astype(ms.float32)
    beta = ops.zeros(normalized_shape, ms.float32) if bias is None else bias.astype(ms.float32)
    y, _, _ = _layer_norm_primitive(axis, float(eps))(input.astype(ms.float32), gamma, beta)
    return y.astype(input.dtype)


_LAYER_NORMS: dict = {}


def _layer_norm_primitive(axis: int, eps: float):
    if (axis, eps) not in _LAYER_NORMS:
        _LAYER_NORMS[axis, eps] = ops.LayerNorm(begin_norm_axis=axis, begin_params_axis=axis, epsilon=eps)
    return _LAYER_NORMS[axis, eps]


def _layer_norm_cell_construct(self, input):
    return cpu_layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def cpu_gelu(input, approximate="none"):
    """mint.nn.functional.gelu: 'none' = x*Phi(x) (erf form), 'tanh' = tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if approximate == "none":
        return ops.gelu(input, approximate="none")
    return gelu_tanh(input)


_GELU_TANH_C = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(input):  # noqa: A002
    """0.5 x (1 + tanh(c (x + 0.044715 x^3))) written as x * sigmoid(2c (x + 0.044715 x^3)), the same
    function: MindSpore CPU's GeLU kernel took 16 ms on FLUX-small's (1, 1536, 512) MLP activation and
    these four elementwise ops 0.9 ms (torch: 0.8 ms), with 6e-7 max error (fp32, vs float64)."""
    x = input.astype(ms.float32)
    return (x * ops.sigmoid((x + 0.044715 * x * x * x) * _GELU_TANH_C)).astype(input.dtype)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def cpu_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """mint.nn.functional.conv2d (zero padding: int, (ph, pw), 'valid' or 'same')."""
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"conv2d: padding must be 'valid' or 'same', got {padding!r}")
        return ops.conv2d(input, weight, bias, _pair(stride), padding, 0, _pair(dilation), groups)
    ph, pw = _pair(padding)
    if ph == 0 and pw == 0:
        return ops.conv2d(input, weight, bias, _pair(stride), "valid", 0, _pair(dilation), groups)
    return ops.conv2d(input, weight, bias, _pair(stride), "pad", (ph, pw), _pair(dilation), groups)


def _conv2d_cell_construct(self, input):
    if self.padding_mode != "zeros":  # reflect / replicate / circular: pad first, then convolve
        input = cpu_pad(input, self._reversed_padding, mode=self.padding_mode)
        return cpu_conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
    return cpu_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def cpu_pad(input, pad, mode="constant", value=None):
    """mint.nn.functional.pad via ops.pad (PadV3), which has CPU kernels for all four modes
    (mint's ConstantPadND / ReflectionPad / ReplicationPad kernels are Ascend-only)."""
    pad = tuple(int(p) for p in pad)
    if mode == "constant":
        return ops.pad(input, pad, mode="constant", value=0.0 if value is None else value)
    return ops.pad(input, pad, mode=mode)


def cpu_embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False):
    """mint.nn.functional.embedding: rows of `weight` picked by `input`; no gradient flows to the
    padding_idx row (as in torch).  max_norm / scale_grad_by_freq are not supported."""
    if max_norm is not None or scale_grad_by_freq:
        raise NotImplementedError("cpu_embedding: max_norm and scale_grad_by_freq are not supported")
    out = ops.gather(weight, input, 0)
    if padding_idx is not None:
        if padding_idx < 0:
            padding_idx += weight.shape[0]
        is_pad = (input == padding_idx).unsqueeze(-1)
        out = ops.where(is_pad, ops.stop_gradient(out), out)
    return out


def _embedding_cell_construct(self, input):
    return cpu_embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq)


def cpu_ones_like(input, *, dtype=None):
    """mint.ones_like."""
    return ops.ones(input.shape, dtype or input.dtype)


def cpu_zeros_like(input, *, dtype=None):
    """mint.zeros_like."""
    return ops.zeros(input.shape, dtype or input.dtype)


def cpu_full(size, fill_value, *, dtype=None):
    """mint.full (default dtype follows the fill value: bool, int64 or float32)."""
    fill_value = _scalar(fill_value)
    if dtype is None:
        dtype = ms.bool_ if isinstance(fill_value, bool) else ms.int64 if isinstance(fill_value, int) else ms.float32
    if isinstance(size, int):
        size = (size,)
    return ops.full(tuple(size), fill_value, dtype=dtype)


def cpu_mse_loss(input, target, reduction="mean"):
    """mint.nn.functional.mse_loss ('mean' | 'sum' | 'none'), with broadcasting."""
    sq = (input - target) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    if reduction == "none":
        return sq
    raise ValueError(f"mse_loss: unknown reduction {reduction!r}")


def _mse_loss_cell_construct(self, input, target):
    return cpu_mse_loss(input, target, self.reduction)


_SCORES = ops.BatchMatMul(transpose_b=True)  # A B^T, batched over (B, N)
_WEIGHTED = ops.BatchMatMul()  # A B
_ROWS_T = ops.BatchMatMul(transpose_a=True)  # A^T B


class MathAttention(ms.nn.Cell):
    """softmax(Q K^T * scale + bias) V on fp32 (B, N, L, D) inputs, with flash attention's backward.

    Autograd through the plain formula was 5x slower than torch's fused CPU attention (small config,
    1,536 tokens: 190 ms against 32 ms forward + backward), nearly all of it in reductions and
    broadcasts over the L x S score matrix, which MindSpore's CPU kernels run slowly (a row-broadcast
    subtraction on it: 50 ms; a same-shape multiply: 2 ms). This backward recomputes the
    probabilities P and uses the identities dS = P * (dO V^T - rowsum(dO * O)) and
    dO V^T - delta = [dO, -delta] [V, 1]^T, so the only work on L x S matrices is two matmuls, a
    softmax and one same-shape multiply: 40 ms. It also keeps nothing of size L x S between forward
    and backward, as flash attention does."""

    def __init__(self, scale: float, bias=None):
        super().__init__()
        self.scale, self.bias = scale, bias

    def probabilities(self, q, k):
        scores = _SCORES(q * self.scale, k)
        if self.bias is not None:
            scores = scores + self.bias
        return ops.softmax(scores, -1)

    def construct(self, q, k, v):
        return _WEIGHTED(self.probabilities(q, k), v)

    def bprop(self, q, k, v, out, dout):
        probs = self.probabilities(q, k)
        delta = (dout * out).sum(-1, keepdims=True)
        ones = ops.ones(v.shape[:-1] + (1,), v.dtype)
        d_scores = probs * _SCORES(ops.concat((dout, -delta), -1) * self.scale, ops.concat((v, ones), -1))
        return _WEIGHTED(d_scores, k), _ROWS_T(d_scores, q), _ROWS_T(probs, dout)


def cpu_scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    backend=None,
):
    """mindone's layers_compat.scaled_dot_product_attention (BNSD layout), as math attention with
    torch semantics: softmax(Q K^T * scale + bias) V, scale defaults to 1/sqrt(head_dim); a bool
    attn_mask keeps True positions, a float attn_mask is added (as a constant: no gradient reaches
    it); is_causal keeps j <= i (top-left aligned).  Everything is computed in fp32 (as the fused
    kernel accumulates; fp16 matmuls are also slower than fp32 ones on CPU); the output has query's
    dtype.  Masked positions get the fp32 minimum instead of -inf, so fully masked rows give a
    uniform average rather than NaN.  `backend` is accepted for signature compatibility and ignored."""
    out_dtype = query.dtype
    L, S = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        n_rep = query.shape[-3] // key.shape[-3]
        key = cpu_repeat_interleave(key, n_rep, dim=-3)
        value = cpu_repeat_interleave(value, n_rep, dim=-3)
    q, k, v = query.astype(ms.float32), key.astype(ms.float32), value.astype(ms.float32)
    bias = _attention_bias(attn_mask, is_causal, L, S)
    if dropout_p > 0.0:  # dropout needs the probabilities themselves: plain autograd
        probs = ops.softmax(_SCORES(q * scale, k) + (0.0 if bias is None else bias), -1)
        return mint.matmul(ops.dropout(probs, dropout_p, training=True), v).astype(out_dtype)
    return MathAttention(scale, bias)(q, k, v).astype(out_dtype)


def _attention_bias(attn_mask, is_causal: bool, L: int, S: int):
    """The additive fp32 score bias of a bool/float mask and causality, or None when there is neither."""
    neg = float(np.finfo(np.float32).min)
    causal = ms.Tensor(np.tril(np.ones((L, S), dtype=np.bool_))) if is_causal else None
    if attn_mask is None:
        return None if causal is None else ops.masked_fill(ops.zeros((L, S), ms.float32), ops.logical_not(causal), neg)
    if attn_mask.dtype == ms.bool_:
        keep = attn_mask if causal is None else ops.logical_and(attn_mask, causal)
        return ops.masked_fill(ops.zeros(keep.shape, ms.float32), ops.logical_not(keep), neg)
    bias = ops.stop_gradient(attn_mask.astype(ms.float32))
    return bias if causal is None else ops.masked_fill(bias, ops.logical_not(causal), neg)


# ----------------------------------------------------------------------------------------------
# Patching
# ----------------------------------------------------------------------------------------------
def _rebind_in_mindone(original, replacement) -> None:
    """Replace module globals that captured `original` by value in imported mindone modules."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "mindone" or name.startswith("mindone.")):
            continue
        namespace = getattr(module, "__dict__", None)
        if not namespace:
            continue
        for attr, val in list(namespace.items()):
            if val is original:
                setattr(module, attr, replacement)


def _patch_function(owner, attr: str, replacement, label: str, done: list) -> None:
    original = getattr(owner, attr)
    setattr(owner, attr, replacement)
    _rebind_in_mindone(original, replacement)
    done.append(label)


def _patch_method(cls, attr: str, replacement, label: str, done: list) -> None:
    setattr(cls, attr, replacement)
    done.append(label)


def apply_cpu_kernels() -> list:
    """Route Ascend-only mint kernels used by mindone to CPU-capable code.

    Patches only when the device target is CPU; returns the names of what was replaced
    ([] on Ascend/GPU).  Idempotent: later calls patch nothing and return the same list."""
    global _APPLIED
    if not is_cpu():
        return []
    if _APPLIED is not None:
        return list(_APPLIED)

    done: list = []
    F = mint.nn.functional
    _patch_function(mint, "arange", cpu_arange, "mint.arange", done)
    _patch_function(mint, "exp", precise_exp, "mint.exp", done)
    _patch_function(mint, "tanh", precise_tanh, "mint.tanh", done)
    _patch_function(mint, "log", precise_log, "mint.log", done)
    _patch_function(ops, "log", precise_log, "ops.log", done)  # T5's relative-position buckets
    _patch_function(mint, "split", cpu_split, "mint.split", done)
    _patch_function(mint, "outer", cpu_outer, "mint.outer", done)
    _patch_function(mint, "stack", cpu_stack, "mint.stack", done)
    _patch_function(mint, "unbind", cpu_unbind, "mint.unbind", done)
    _patch_function(mint, "repeat_interleave", cpu_repeat_interleave, "mint.repeat_interleave", done)
    _patch_method(ms.Tensor, "repeat_interleave", _tensor_repeat_interleave, "Tensor.repeat_interleave", done)
    _patch_function(mint, "ones_like", cpu_ones_like, "mint.ones_like", done)
    _patch_function(mint, "zeros_like", cpu_zeros_like, "mint.zeros_like", done)
    _patch_function(mint, "full", cpu_full, "mint.full", done)
    _patch_function(F, "layer_norm", cpu_layer_norm, "mint.nn.functional.layer_norm", done)
    _patch_method(mint.nn.LayerNorm, "construct", _layer_norm_cell_construct, "mint.nn.LayerNorm", done)
    _patch_function(F, "gelu", cpu_gelu, "mint.nn.functional.gelu", done)
    _patch_function(F, "conv2d", cpu_conv2d, "mint.nn.functional.conv2d", done)
    _patch_method(mint.nn.Conv2d, "construct", _conv2d_cell_construct, "mint.nn.Conv2d", done)
    _patch_function(F, "pad", cpu_pad, "mint.nn.functional.pad", done)
    _patch_function(F, "embedding", cpu_embedding, "mint.nn.functional.embedding", done)
    _patch_method(mint.nn.Embedding, "construct", _embedding_cell_construct, "mint.nn.Embedding", done)
    _patch_function(F, "mse_loss", cpu_mse_loss, "mint.nn.functional.mse_loss", done)
    _patch_method(mint.nn.MSELoss, "construct", _mse_loss_cell_construct, "mint.nn.MSELoss", done)

    try:
        from mindone.diffusers.models import (
            attention_dispatch,  # noqa: F401  (holds a copy of sdpa)
            layers_compat,
        )
    except ImportError:  # mindone not installed: only the mint patches apply
        pass
    else:
        _patch_function(
            layers_compat,
            "scaled_dot_product_attention",
            cpu_scaled_dot_product_attention,
            "mindone.diffusers.models.layers_compat.scaled_dot_product_attention",
            done,
        )

    _APPLIED = done
    return list(done)
