"""Tests for mindspore_impl/cpu_kernels.py on MindSpore CPU (PyNative).

1. Each replacement against a numpy float64 reference: values, and gradients where the op is
   differentiable (the gradient of sum(out * G) for a fixed random upstream G, derived by hand).
2. The tiny FLUX transformer (+LoRA), CLIP text model (+LoRA), T5 encoder and FLUX-style VAE
   built from configs run forward (and backward where it matters) in fp32 and fp16.
3. The tiny FLUX transformer in fp32 agrees with torch diffusers' FluxTransformer2DModel
   given the same weights.

Tolerances: fp32 results are compared to float64 numpy with rtol/atol 1e-5 for elementwise ops and
1e-4 where sums of tens of products are involved (conv, attention, layer norm statistics): fp32
rounding is ~6e-8 relative per operation and grows with the length of the accumulation.  fp16
results are compared to float64 numpy evaluated on the same fp16-rounded inputs, with
rtol/atol 2e-3 (elementwise; fp16 eps is 9.8e-4, i.e. one or two ulps) or 1e-2 (reductions).
Everything is skipped when MindSpore's device target is not CPU: there the real kernels are used.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
from mindspore import mint, ops  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE)

pytestmark = pytest.mark.skipif(
    ms.get_context("device_target") != "CPU", reason="cpu_kernels only patches on a CPU device target"
)

from mindspore_impl import cpu_kernels as ck  # noqa: E402

APPLIED = ck.apply_cpu_kernels()
F = mint.nn.functional

FP = [ms.float32, ms.float16]
TOL = {ms.float32: dict(rtol=1e-5, atol=1e-5), ms.float16: dict(rtol=2e-3, atol=2e-3)}
TOL_SUM = {ms.float32: dict(rtol=1e-4, atol=1e-4), ms.float16: dict(rtol=1e-2, atol=1e-2)}
NP = {ms.float32: np.float32, ms.float16: np.float16}


def rnd(shape, dtype, seed=0, scale=1.0):
    """Random array rounded to `dtype` and returned as float64 (the exact values MindSpore sees)."""
    a = np.random.default_rng(seed).standard_normal(shape) * scale
    return a.astype(NP[dtype]).astype(np.float64)


def T(a, dtype):
    return ms.Tensor(np.asarray(a).astype(NP[dtype]))


def grads(fn, *args):
    """Gradients of fn(*args) (a scalar) w.r.t. all positional args, as float64 arrays."""
    g = ms.grad(fn, grad_position=tuple(range(len(args))))(*args)
    g = g if isinstance(g, tuple) else (g,)
    return [x.asnumpy().astype(np.float64) for x in g]


def close(actual, expected, tol):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, **tol)


# ----------------------------------------------------------------------------------------------
# the patching itself
# ----------------------------------------------------------------------------------------------
def test_apply_lists_replacements_and_is_idempotent():
    assert ck.is_cpu()
    expected = {
        "mint.arange",
        "mint.exp",
        "mint.tanh",
        "mint.log",
        "ops.log",
        "mint.split",
        "mint.outer",
        "mint.stack",
        "mint.unbind",
        "mint.repeat_interleave",
        "Tensor.repeat_interleave",
        "mint.nn.functional.layer_norm",
        "mint.nn.LayerNorm",
        "mint.nn.functional.gelu",
        "mint.nn.functional.conv2d",
        "mint.nn.Conv2d",
        "mint.nn.functional.pad",
        "mint.nn.functional.embedding",
        "mint.nn.Embedding",
        "mint.ones_like",
        "mint.zeros_like",
        "mint.full",
        "mint.nn.functional.mse_loss",
        "mint.nn.MSELoss",
        "mindone.diffusers.models.layers_compat.scaled_dot_product_attention",
    }
    assert set(APPLIED) == expected
    assert ck.apply_cpu_kernels() == APPLIED
    assert mint.arange is ck.cpu_arange and F.layer_norm is ck.cpu_layer_norm


def test_nothing_patched_off_cpu(monkeypatch):
    monkeypatch.setattr(ck, "is_cpu", lambda: False)
    assert ck.apply_cpu_kernels() == []


def test_values_bound_early_in_mindone_are_rebound():
    from mindone.diffusers.models import attention_dispatch, downsampling, layers_compat

    assert layers_compat.pad is ck.cpu_pad and downsampling.pad is ck.cpu_pad
    assert attention_dispatch.scaled_dot_product_attention is ck.cpu_scaled_dot_product_attention


# ----------------------------------------------------------------------------------------------
# creation ops (exact)
# ----------------------------------------------------------------------------------------------
def test_precise_exp_and_tanh_match_float64_and_differentiate():
    """fp32 exp/tanh to within a few fp32 ulps of float64 (the raw CPU kernels miss by 6e-6 / 1e-4)."""
    x = rnd((4096,), ms.float32, seed=11, scale=4.0)
    for fn, reference, derivative in ((mint.exp, np.exp, np.exp),
                                      (mint.tanh, np.tanh, lambda v: 1.0 - np.tanh(v) ** 2)):
        out = fn(T(x, ms.float32))
        assert out.dtype == ms.float32
        # 2 ulps of fp32 (2 * 6e-8) relative: what correctly rounded float64 -> fp32 can differ by
        np.testing.assert_allclose(out.asnumpy(), reference(x), rtol=1.2e-7, atol=1e-30)
        (g,) = grads(lambda t, fn=fn: (fn(t) * 1.0).sum(), T(x, ms.float32))
        np.testing.assert_allclose(g, derivative(x), rtol=1e-6, atol=1e-7)
    half = fn(T(x, ms.float16))
    assert half.dtype == ms.float16


def test_precise_log_matches_float64_and_differentiates():
    """fp32 log to within 2 fp32 ulps of float64 (the raw CPU kernel misses by 1e-4 relative)."""
    x = np.exp(rnd((4096,), ms.float32, seed=12, scale=3.0)).astype(np.float32)
    for fn in (mint.log, ops.log):
        out = fn(T(x, ms.float32))
        assert out.dtype == ms.float32
        np.testing.assert_allclose(out.asnumpy(), np.log(x.astype(np.float64)), rtol=1.2e-7, atol=1.2e-7)
        (g,) = grads(lambda t, fn=fn: fn(t).sum(), T(x, ms.float32))
        # 1/x: one float64 division rounded to fp32 is 1 ulp (6e-8); the raw fp32 path is not this exact
        # either, so 1e-6 (about 16 ulps) only has to catch a wrong derivative, which is off by O(1)
        np.testing.assert_allclose(g, 1.0 / x.astype(np.float64), rtol=1e-6)
    assert ops.log(T(np.minimum(x, 6e4), ms.float16)).dtype == ms.float16


@pytest.mark.parametrize("sections", [2, [1, 3, 2]])
def test_split_values_and_gradient(sections):
    x = rnd((6, 4), ms.float32, seed=3)
    parts = mint.split(T(x, ms.float32), sections, dim=0)
    bounds = np.cumsum([0] + ([sections] * 3 if isinstance(sections, int) else sections))
    assert len(parts) == len(bounds) - 1
    for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
        close(part.asnumpy(), x[lo:hi], TOL[ms.float32])
    weights = [float(k + 1) for k in range(len(parts))]
    (g,) = grads(lambda t: sum(w * p.sum() for w, p in zip(weights, mint.split(t, sections, dim=0))),
                 T(x, ms.float32))
    expected = np.concatenate([np.full((hi - lo, 4), w) for w, lo, hi in zip(weights, bounds[:-1], bounds[1:])])
    close(g, expected, TOL[ms.float32])


def test_arange():
    np.testing.assert_array_equal(mint.arange(5).asnumpy(), np.arange(5))
    assert mint.arange(5).dtype == ms.int64
    np.testing.assert_array_equal(mint.arange(0, 16, 2, dtype=ms.float32).asnumpy(), np.arange(0, 16, 2.0))
    np.testing.assert_array_equal(mint.arange(start=1, end=4, dtype=ms.float16).asnumpy(), np.arange(1.0, 4.0))
    np.testing.assert_allclose(mint.arange(0.0, 1.0, 0.25).asnumpy(), np.arange(0.0, 1.0, 0.25))


@pytest.mark.parametrize("dtype", FP)
def test_ones_zeros_full(dtype):
    x = T(np.zeros((2, 3)), dtype)
    for fn, val in ((mint.ones_like, 1.0), (mint.zeros_like, 0.0)):
        y = fn(x)
        assert y.dtype == dtype and y.shape == (2, 3)
        np.testing.assert_array_equal(y.asnumpy(), np.full((2, 3), val))
    assert mint.ones_like(x, dtype=ms.int32).dtype == ms.int32
    y = mint.full((2, 4), 1.5, dtype=dtype)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.asnumpy(), np.full((2, 4), 1.5))
    assert mint.full((3,), 7).dtype == ms.int64 and mint.full((3,), 0.5).dtype == ms.float32


# ----------------------------------------------------------------------------------------------
# shape ops
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FP)
def test_outer(dtype):
    a, b, G = rnd((5,), dtype, 1), rnd((7,), dtype, 2), rnd((5, 7), dtype, 3)
    close(mint.outer(T(a, dtype), T(b, dtype)).asnumpy(), np.outer(a, b), TOL[dtype])
    ga, gb = grads(
        lambda x, y: (mint.outer(x, y).astype(ms.float32) * T(G, ms.float32)).sum(), T(a, dtype), T(b, dtype)
    )
    close(ga, G @ b, TOL_SUM[dtype])
    close(gb, G.T @ a, TOL_SUM[dtype])


@pytest.mark.parametrize("dtype", FP)
@pytest.mark.parametrize("dim", [0, -1, 2])
def test_stack(dtype, dim):
    a, b, G = (
        rnd((2, 3, 4), dtype, 1),
        rnd((2, 3, 4), dtype, 2),
        rnd(np.stack([np.zeros((2, 3, 4))] * 2, dim).shape, dtype, 3),
    )
    np.testing.assert_array_equal(mint.stack([T(a, dtype), T(b, dtype)], dim=dim).asnumpy(), np.stack([a, b], dim))
    ga, gb = grads(lambda x, y: (mint.stack([x, y], dim=dim) * T(G, dtype)).sum(), T(a, dtype), T(b, dtype))
    close(ga, np.take(G, 0, axis=dim), TOL[dtype])
    close(gb, np.take(G, 1, axis=dim), TOL[dtype])


@pytest.mark.parametrize("dtype", FP)
def test_unbind_forward_and_backward(dtype):
    # the FLUX RoPE does x_real, x_imag = mint.unbind(x.reshape(..., -1, 2), -1); its backward failed on CPU
    x = rnd((2, 3, 4, 2), dtype, 1)
    G0, G1 = rnd((2, 3, 4), dtype, 2), rnd((2, 3, 4), dtype, 3)
    parts = mint.unbind(T(x, dtype), -1)
    assert len(parts) == 2
    np.testing.assert_array_equal(parts[0].asnumpy(), x[..., 0])
    np.testing.assert_array_equal(parts[1].asnumpy(), x[..., 1])

    def f(t):
        re, im = mint.unbind(t, -1)
        return (re * T(G0, dtype)).sum() + (im * T(G1, dtype)).sum()

    (gx,) = grads(f, T(x, dtype))
    close(gx, np.stack([G0, G1], -1), TOL[dtype])
    assert [p.shape for p in mint.unbind(T(x, dtype), 1)] == [(2, 4, 2)] * 3


@pytest.mark.parametrize("dtype", FP)
def test_repeat_interleave(dtype):
    x, G = rnd((3, 4), dtype, 1), rnd((3, 8), dtype, 2)
    np.testing.assert_array_equal(mint.repeat_interleave(T(x, dtype), 2, dim=1).asnumpy(), np.repeat(x, 2, 1))
    np.testing.assert_array_equal(mint.repeat_interleave(T(x, dtype), 3, dim=0).asnumpy(), np.repeat(x, 3, 0))
    np.testing.assert_array_equal(mint.repeat_interleave(T(x, dtype), 2).asnumpy(), np.repeat(x, 2))
    reps = [1, 0, 3]
    np.testing.assert_array_equal(
        mint.repeat_interleave(T(x, dtype), ms.Tensor(reps, ms.int64), dim=0).asnumpy(), np.repeat(x, reps, 0)
    )
    # the Tensor method, as the FLUX RoPE calls it
    y = T(x, dtype).repeat_interleave(2, dim=1, output_size=8)
    np.testing.assert_array_equal(y.asnumpy(), np.repeat(x, 2, 1))
    (gx,) = grads(lambda t: (t.repeat_interleave(2, dim=1) * T(G, dtype)).sum(), T(x, dtype))
    close(gx, G.reshape(3, 4, 2).sum(-1), TOL[dtype])
    with pytest.raises(ValueError):
        T(x, dtype).repeat_interleave(2, dim=1, output_size=9)


# ----------------------------------------------------------------------------------------------
# normalisation / activation
# ----------------------------------------------------------------------------------------------
def np_layer_norm(x, w, b, eps, n_axes):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    y = xhat * (1.0 if w is None else w) + (0.0 if b is None else b)
    return y, xhat, 1.0 / np.sqrt(var + eps), axes


def np_layer_norm_grads(x, w, G, eps, n_axes):
    _, xhat, rstd, axes = np_layer_norm(x, w, None, eps, n_axes)
    n = np.prod([x.shape[a] for a in axes])
    g = G * w
    gx = rstd / n * (n * g - g.sum(axes, keepdims=True) - xhat * (g * xhat).sum(axes, keepdims=True))
    lead = tuple(range(x.ndim - n_axes))
    return gx, (G * xhat).sum(lead), G.sum(lead)


@pytest.mark.parametrize("dtype", FP)
def test_layer_norm(dtype):
    eps = 1e-6
    x = rnd((2, 5, 16), dtype, 1, scale=3.0) + 1.0
    w, b, G = rnd((16,), dtype, 2), rnd((16,), dtype, 3), rnd((2, 5, 16), dtype, 4)
    y = F.layer_norm(T(x, dtype), (16,), T(w, dtype), T(b, dtype), eps)
    assert y.dtype == dtype
    close(y.asnumpy(), np_layer_norm(x, w, b, eps, 1)[0], TOL_SUM[dtype])
    y = F.layer_norm(T(x, dtype), (5, 16), None, None, eps)
    close(y.asnumpy(), np_layer_norm(x, None, None, eps, 2)[0], TOL_SUM[dtype])

    gx, gw, gb = grads(
        lambda a, ww, bb: (F.layer_norm(a, (16,), ww, bb, eps).astype(ms.float32) * T(G, ms.float32)).sum(),
        T(x, dtype),
        T(w, dtype),
        T(b, dtype),
    )
    ex, ew, eb = np_layer_norm_grads(x, w, G, eps, 1)
    close(gx, ex, TOL_SUM[dtype])
    close(gw, ew, TOL_SUM[dtype])
    close(gb, eb, TOL_SUM[dtype])


@pytest.mark.parametrize("dtype", FP)
def test_layer_norm_cell(dtype):
    # mint.nn.LayerNorm (FLUX's AdaLayerNormZero, norm_out) with and without affine parameters
    x = rnd((2, 4, 8), dtype, 1)
    cell = mint.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    close(cell(T(x, dtype)).asnumpy(), np_layer_norm(x, None, None, 1e-6, 1)[0], TOL_SUM[dtype])
    cell = mint.nn.LayerNorm(8, eps=1e-5, dtype=dtype)
    w = rnd((8,), dtype, 2)
    cell.weight.set_data(T(w, dtype))
    close(cell(T(x, dtype)).asnumpy(), np_layer_norm(x, w, 0.0, 1e-5, 1)[0], TOL_SUM[dtype])


_erf = np.vectorize(math.erf)


def np_gelu(x, approximate):
    if approximate == "none":
        y = 0.5 * x * (1 + _erf(x / math.sqrt(2)))
        dy = 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    else:
        c = math.sqrt(2 / math.pi)
        u = c * (x + 0.044715 * x**3)
        t = np.tanh(u)
        y = 0.5 * x * (1 + t)
        dy = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return y, dy


@pytest.mark.parametrize("dtype", FP)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(dtype, approximate):
    x, G = rnd((4, 33), dtype, 1, scale=2.0), rnd((4, 33), dtype, 2)
    y, dy = np_gelu(x, approximate)
    close(F.gelu(T(x, dtype), approximate=approximate).asnumpy(), y, TOL[dtype])
    close(mint.nn.GELU(approximate=approximate)(T(x, dtype)).asnumpy(), y, TOL[dtype])
    (gx,) = grads(lambda a: (F.gelu(a, approximate=approximate) * T(G, dtype)).sum(), T(x, dtype))
    close(gx, G * dy, TOL[dtype])


# ----------------------------------------------------------------------------------------------
# conv / pad / embedding / loss
# ----------------------------------------------------------------------------------------------
def np_conv2d(x, w, b, stride, pad, G=None):
    """Direct convolution (cross-correlation, groups=1) and, given the upstream G, its gradients."""
    (ph, pw), s = pad, stride
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    ho, wo = (xp.shape[2] - kh) // s + 1, (xp.shape[3] - kw) // s + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            win = (slice(None), slice(None), slice(i, i + s * ho, s), slice(j, j + s * wo, s))
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[win])
            if G is not None:
                gw[:, :, i, j] = np.einsum("nohw,nchw->oc", G, xp[win])
                gxp[win] += np.einsum("oc,nohw->nchw", w[:, :, i, j], G)
    if b is not None:
        out += b[None, :, None, None]
    gx = gxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]
    return out, gx, gw, (None if G is None else G.sum((0, 2, 3)))


@pytest.mark.parametrize("dtype", FP)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, (0, 1)), (1, "same"), (1, "valid")])
def test_conv2d(dtype, stride, padding):
    x, w, b = rnd((2, 3, 9, 8), dtype, 1), rnd((4, 3, 3, 3), dtype, 2, 0.3), rnd((4,), dtype, 3)
    pad = {"same": (1, 1), "valid": (0, 0)}.get(padding, padding) if isinstance(padding, str) else padding
    pad = pad if isinstance(pad, tuple) else (pad, pad)
    ref = np_conv2d(x, w, b, stride, pad)[0]
    G = rnd(ref.shape, dtype, 4)
    ref, ex, ew, eb = np_conv2d(x, w, b, stride, pad, G)
    out = F.conv2d(T(x, dtype), T(w, dtype), T(b, dtype), stride, padding)
    assert out.dtype == dtype
    close(out.asnumpy(), ref, TOL_SUM[dtype])
    gx, gw, gb = grads(
        lambda a, ww, bb: (F.conv2d(a, ww, bb, stride, padding).astype(ms.float32) * T(G, ms.float32)).sum(),
        T(x, dtype),
        T(w, dtype),
        T(b, dtype),
    )
    close(gx, ex, TOL_SUM[dtype])
    close(gw, ew, TOL_SUM[dtype])
    close(gb, eb, TOL_SUM[dtype])


@pytest.mark.parametrize("dtype", FP)
def test_conv2d_cell_and_groups(dtype):
    conv = mint.nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2, dtype=dtype)
    x = rnd((1, 4, 5, 5), dtype, 1)
    w, b = conv.weight.asnumpy().astype(np.float64), conv.bias.asnumpy().astype(np.float64)
    ref = np.concatenate(
        [
            np_conv2d(x[:, 2 * g : 2 * g + 2], w[3 * g : 3 * g + 3], b[3 * g : 3 * g + 3], 1, (1, 1))[0]
            for g in range(2)
        ],
        1,
    )
    close(conv(T(x, dtype)).asnumpy(), ref, TOL_SUM[dtype])


@pytest.mark.parametrize("dtype", FP)
def test_pad(dtype):
    # the VAE's Downsample2D pads (0, 1, 0, 1) then convolves with stride 2
    x = rnd((1, 2, 3, 4), dtype, 1)
    G = rnd((1, 2, 3 + 3, 4 + 1), dtype, 2)
    np.testing.assert_array_equal(
        F.pad(T(x, dtype), (0, 1, 0, 1)).asnumpy(), np.pad(x, ((0, 0),) * 2 + ((0, 1), (0, 1)))
    )
    y = F.pad(T(x, dtype), (1, 0, 2, 1), mode="constant", value=0.5).asnumpy()
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0),) * 2 + ((2, 1), (1, 0)), constant_values=0.5))
    (gx,) = grads(lambda a: (F.pad(a, (1, 0, 2, 1)) * T(G, dtype)).sum(), T(x, dtype))
    close(gx, G[:, :, 2:5, 1:5], TOL[dtype])
    # mint's reflect/replicate kernels are Ascend-only too
    for mode, np_mode in (("reflect", "reflect"), ("replicate", "edge"), ("circular", "wrap")):
        y = F.pad(T(x, dtype), (1, 2, 2, 1), mode=mode).asnumpy()
        np.testing.assert_array_equal(y, np.pad(x, ((0, 0),) * 2 + ((2, 1), (1, 2)), mode=np_mode))


@pytest.mark.parametrize("dtype", FP)
def test_embedding(dtype):
    w, idx = rnd((10, 6), dtype, 1), np.array([[1, 3, 3, 0], [9, 0, 2, 3]])
    G = rnd((2, 4, 6), dtype, 2)
    np.testing.assert_array_equal(F.embedding(ms.Tensor(idx, ms.int64), T(w, dtype)).asnumpy(), w[idx])
    emb = mint.nn.Embedding(10, 6, dtype=dtype)
    emb.weight.set_data(T(w, dtype))
    np.testing.assert_array_equal(emb(ms.Tensor(idx, ms.int32)).asnumpy(), w[idx])

    expected = np.zeros_like(w)
    np.add.at(expected, idx, G)
    (gw,) = grads(lambda ww: (F.embedding(ms.Tensor(idx, ms.int32), ww) * T(G, dtype)).sum(), T(w, dtype))
    close(gw, expected, TOL_SUM[dtype])
    (gw,) = grads(
        lambda ww: (F.embedding(ms.Tensor(idx, ms.int32), ww, padding_idx=3) * T(G, dtype)).sum(), T(w, dtype)
    )
    expected[3] = 0.0
    close(gw, expected, TOL_SUM[dtype])


@pytest.mark.parametrize("dtype", FP)
def test_mse_loss(dtype):
    a, b = rnd((3, 5), dtype, 1), rnd((3, 5), dtype, 2)
    close(F.mse_loss(T(a, dtype), T(b, dtype)).asnumpy(), ((a - b) ** 2).mean(), TOL_SUM[dtype])
    close(F.mse_loss(T(a, dtype), T(b, dtype), reduction="sum").asnumpy(), ((a - b) ** 2).sum(), TOL_SUM[dtype])
    close(F.mse_loss(T(a, dtype), T(b, dtype), reduction="none").asnumpy(), (a - b) ** 2, TOL[dtype])
    close(mint.nn.MSELoss()(T(a, dtype), T(b, dtype)).asnumpy(), ((a - b) ** 2).mean(), TOL_SUM[dtype])
    ga, gb = grads(lambda x, y: F.mse_loss(x, y), T(a, dtype), T(b, dtype))
    close(ga, 2 * (a - b) / a.size, TOL[dtype])
    close(gb, -2 * (a - b) / a.size, TOL[dtype])


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------
def np_attention(q, k, v, bias, scale, G):
    s = q @ np.swapaxes(k, -1, -2) * scale + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dp = G @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return out, ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ G


@pytest.mark.parametrize("dtype", FP)
@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "causal+mask", "scale", "gqa"])
def test_scaled_dot_product_attention(dtype, case):
    from mindone.diffusers.models import layers_compat

    B, N, L, S, D = 2, 4, 5, 7, 8
    nkv = 2 if case == "gqa" else N
    q, k, v = rnd((B, N, L, D), dtype, 1), rnd((B, nkv, S, D), dtype, 2), rnd((B, nkv, S, D), dtype, 3)
    G = rnd((B, N, L, D), dtype, 4)
    scale = 0.3 if case == "scale" else 1 / math.sqrt(D)
    keep = np.random.default_rng(5).random((B, 1, L, S)) > 0.3
    keep[..., 0] = True  # no fully-masked row
    bias = np.zeros((B, 1, L, S))
    kwargs = dict(scale=0.3) if case == "scale" else {}
    if case in ("bool_mask", "causal+mask"):
        kwargs["attn_mask"] = ms.Tensor(keep)
        bias = np.where(keep, 0.0, -1e30)
    if case == "float_mask":
        fm = rnd((1, 1, L, S), ms.float32, 6)
        kwargs["attn_mask"] = T(fm, dtype)
        bias = fm.astype(NP[dtype]).astype(np.float64)
    if case.startswith("causal"):
        kwargs["is_causal"] = True
        bias = bias + np.where(np.tril(np.ones((L, S), bool)), 0.0, -1e30)
    if case == "gqa":
        kwargs["enable_gqa"] = True
    kr, vr = (np.repeat(k, N // nkv, 1), np.repeat(v, N // nkv, 1))
    ref, eq, ek, ev = np_attention(q, kr, vr, bias, scale, G)
    if case == "gqa":
        ek, ev = ek.reshape(B, nkv, N // nkv, S, D).sum(2), ev.reshape(B, nkv, N // nkv, S, D).sum(2)

    sdpa = layers_compat.scaled_dot_product_attention
    out = sdpa(T(q, dtype), T(k, dtype), T(v, dtype), **kwargs)
    assert out.dtype == dtype and out.shape == (B, N, L, D)
    close(out.asnumpy(), ref, TOL_SUM[dtype])
    gq, gk, gv = grads(
        lambda a, b, c: (sdpa(a, b, c, **kwargs).astype(ms.float32) * T(G, ms.float32)).sum(),
        T(q, dtype),
        T(k, dtype),
        T(v, dtype),
    )
    close(gq, eq, TOL_SUM[dtype])
    close(gk, ek, TOL_SUM[dtype])
    close(gv, ev, TOL_SUM[dtype])


def test_attention_cell_method_and_dispatch():
    """The two entry points the models use: attention_dispatch.dispatch_attention_fn (FLUX, BSND;
    reaches the replacement) and Attention.scaled_dot_product_attention (VAE mid block, BNSD; not
    patched: mindone falls back to its own math attention off Ascend, checked here all the same)."""
    from mindone.diffusers.models.attention_dispatch import dispatch_attention_fn
    from mindone.diffusers.models.attention_processor import Attention

    q, k, v = rnd((1, 2, 6, 8), ms.float32, 1), rnd((1, 2, 6, 8), ms.float32, 2), rnd((1, 2, 6, 8), ms.float32, 3)
    ref = np_attention(q, k, v, 0.0, 1 / math.sqrt(8), np.zeros_like(q))[0]
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    out = attn.scaled_dot_product_attention(T(q, ms.float32), T(k, ms.float32), T(v, ms.float32))
    close(out.asnumpy(), ref, TOL_SUM[ms.float32])
    bsnd = [T(a.transpose(0, 2, 1, 3), ms.float32) for a in (q, k, v)]
    out = dispatch_attention_fn(*bsnd)
    close(out.asnumpy(), ref.transpose(0, 2, 1, 3), TOL_SUM[ms.float32])


# ----------------------------------------------------------------------------------------------
# tiny models from configs
# ----------------------------------------------------------------------------------------------
FLUX_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
FLUX_LORA = dict(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])


def half_precision_lora(model, dtype):
    """Frozen weights stay in `dtype`; LoRA parameters in fp32, their layers computing in `dtype`."""
    from mindone.peft.tuners.tuners_utils import BaseTunerLayer

    for _, cell in model.cells_and_names():
        if isinstance(cell, BaseTunerLayer):
            for layers in (cell.lora_A, cell.lora_B):
                for layer in layers.values():
                    layer.to_float(dtype)
    for p in model.trainable_params():
        if p.dtype != ms.float32:
            p.set_dtype(ms.float32)


def randomize_lora_b(model, seed=7):
    """peft's 'gaussian' init leaves lora_B at zero (so lora_A gets no gradient); make B nonzero."""
    rng = np.random.default_rng(seed)
    for p in model.trainable_params():
        if "lora_B" in p.name:
            p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.1).astype(np.float32)))


def flux_inputs(dtype):
    rng = np.random.default_rng(0)
    img_ids = np.stack(np.meshgrid([0.0], np.arange(4.0), np.arange(4.0), indexing="ij"), -1).reshape(16, 3)
    arrays = dict(
        hidden_states=rng.standard_normal((1, 16, 64)),
        encoder_hidden_states=rng.standard_normal((1, 8, 32)),
        pooled_projections=rng.standard_normal((1, 32)),
        timestep=np.array([0.5]),
        guidance=np.array([3.5]),
        txt_ids=np.zeros((8, 3)),
        img_ids=img_ids,
    )
    return arrays, {k: T(v, dtype) for k, v in arrays.items()}


def build_flux(dtype):
    from mindone.diffusers import FluxTransformer2DModel
    from mindone.peft import LoraConfig

    ms.set_seed(0)
    model = FluxTransformer2DModel(**FLUX_CONFIG)
    if dtype != ms.float32:
        model = model.to(dtype)
    model.add_adapter(LoraConfig(**FLUX_LORA))
    if dtype != ms.float32:
        half_precision_lora(model, dtype)
    randomize_lora_b(model)
    return model


def assert_finite_nonzero(gradients, names):
    assert len(gradients) == len(names) > 0
    for g, name in zip(gradients, names, strict=True):
        g = g.asnumpy().astype(np.float64)
        assert np.isfinite(g).all(), name
        assert np.abs(g).max() > 0, name


@pytest.fixture(scope="module")
def flux_fp32():
    return build_flux(ms.float32)


@pytest.mark.parametrize("dtype", FP)
def test_flux_transformer_lora_forward_backward(dtype, flux_fp32, capsys):
    model = flux_fp32 if dtype == ms.float32 else build_flux(dtype)
    _, inputs = flux_inputs(dtype)
    params = model.trainable_params()
    assert len(params) == 14 and all("lora" in p.name and p.dtype == ms.float32 for p in params)

    def loss_fn(hidden_states):
        out = model(**{**inputs, "hidden_states": hidden_states}, return_dict=False)[0]
        return (out.astype(ms.float32) ** 2).mean()

    step = ms.value_and_grad(loss_fn, grad_position=0, weights=params)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        loss, (g_input, g_params) = step(inputs["hidden_states"])
        loss = float(loss.asnumpy())
        times.append(time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[tiny FLUX {dtype}] fwd+bwd seconds: {', '.join(f'{t:.2f}' for t in times)}")
    assert np.isfinite(loss) and loss > 0
    assert g_input.dtype == dtype
    assert_finite_nonzero([g_input], ["hidden_states"])
    assert_finite_nonzero(list(g_params), [p.name for p in params])


def test_flux_transformer_matches_torch(flux_fp32):
    """Same weights (copied by name via numpy) in torch diffusers; names must match 1:1."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    peft = pytest.importorskip("peft")

    tmodel = diffusers.FluxTransformer2DModel(**FLUX_CONFIG)
    tmodel.add_adapter(peft.LoraConfig(**FLUX_LORA))
    ms_state = {p.name: p.asnumpy() for p in flux_fp32.get_parameters()}
    t_state = tmodel.state_dict()
    assert set(ms_state) == set(t_state)
    assert all(tuple(t_state[k].shape) == v.shape for k, v in ms_state.items())
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in ms_state.items()})

    arrays, inputs = flux_inputs(ms.float32)
    t_inputs = {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()}
    ms_params = flux_fp32.trainable_params()

    def loss_fn():
        return (flux_fp32(**inputs, return_dict=False)[0] ** 2).mean()

    ms_out = flux_fp32(**inputs, return_dict=False)[0].asnumpy()
    _, ms_grads = ms.value_and_grad(loss_fn, None, ms_params)()

    t_params = dict(tmodel.named_parameters())
    for p in tmodel.parameters():
        p.requires_grad_(False)
    for p in ms_params:
        t_params[p.name].requires_grad_(True)
    t_out = tmodel(**t_inputs, return_dict=False)[0]
    (t_out**2).mean().backward()
    t_out = t_out.detach().numpy()

    # Observed: max |diff| ~6e-5 on outputs of magnitude ~2; it comes from the fp32 sinusoidal
    # timestep/guidance embedding (sin/cos of arguments up to 3500, where one fp32 ulp is 2.4e-4)
    # and is ~5e-7 with timestep = guidance = 0.  Tolerance 5e-4 absolute.
    np.testing.assert_allclose(ms_out, t_out, rtol=0, atol=5e-4)
    for p, g in zip(ms_params, ms_grads, strict=True):
        tg = t_params[p.name].grad.numpy()
        np.testing.assert_allclose(g.asnumpy(), tg, rtol=0, atol=5e-3 * np.abs(tg).max(), err_msg=p.name)


@pytest.mark.parametrize("dtype", FP)
def test_clip_text_model(dtype):
    from mindone.peft import LoraConfig
    from mindone.transformers import CLIPTextModel
    from transformers import CLIPTextConfig

    ms.set_seed(0)
    config = CLIPTextConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=49408
    )
    model = CLIPTextModel(config)
    if dtype != ms.float32:
        model = model.to(dtype)
    # BOS, 9 tokens, then EOS padding as CLIP's tokenizer does; pooled_output is taken at the first
    # EOS.  (With no EOS it is taken at position 0, which under the causal mask attends only to
    # itself, so q/k LoRA gradients would be exactly zero: correct, but useless as a test.)
    tokens = np.full((1, 77), config.eos_token_id)
    tokens[0, 0], tokens[0, 1:10] = config.bos_token_id, np.random.default_rng(0).integers(0, 49406, 9)
    ids = ms.Tensor(tokens, ms.int32)
    pooled = model(ids, return_dict=False)[1]
    assert pooled.shape == (1, 32) and pooled.dtype == dtype and np.isfinite(pooled.asnumpy()).all()

    model.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        )
    )
    if dtype != ms.float32:
        half_precision_lora(model, dtype)
    randomize_lora_b(model)
    params = [p for p in model.trainable_params() if "lora" in p.name]
    assert len(params) == 16

    def loss_fn():
        return (model(ids, return_dict=False)[1].astype(ms.float32) ** 2).mean()

    loss, g = ms.value_and_grad(loss_fn, None, params)()
    assert np.isfinite(loss.asnumpy())
    assert_finite_nonzero(list(g), [p.name for p in params])


@pytest.mark.parametrize("dtype", FP)
def test_t5_encoder(dtype):
    from mindone.transformers import T5EncoderModel
    from transformers import T5Config

    ms.set_seed(0)
    config = T5Config(
        d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=2, vocab_size=32128, feed_forward_proj="gated-gelu"
    )
    model = T5EncoderModel(config)
    if dtype != ms.float32:
        model = model.to(dtype)
    ids = ms.Tensor(np.random.default_rng(0).integers(0, 32128, (1, 16)), ms.int32)
    out = model(ids, return_dict=False)[0]
    assert out.shape == (1, 16, 16) and out.dtype == dtype
    assert np.isfinite(out.asnumpy()).all() and np.abs(out.asnumpy()).max() > 0


@pytest.mark.parametrize("dtype", FP)
def test_vae_encode(dtype):
    from mindone.diffusers import AutoencoderKL

    ms.set_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    if dtype != ms.float32:
        vae = vae.to(dtype)
    image = T(np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)), dtype)
    moments = vae.encode(image)[0]  # mindone returns the moments; latent_dist is built from them
    mean, _, _, std = vae.diag_gauss_dist.init(moments)
    assert mean.shape == std.shape == (1, 16, 8, 8) and mean.dtype == dtype
    assert np.isfinite(mean.asnumpy()).all() and (std.asnumpy() > 0).all()
