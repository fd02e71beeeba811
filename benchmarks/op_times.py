"""Where a MindSpore CPU step's time goes: single ops at FLUX-small's shapes, MindSpore against torch.

    python benchmarks/op_times.py [--tokens 1536] [--repeats 9]

Shapes are those of `--size small` at 512 px (1,536 tokens: 1,024 image + 512 text; hidden 128, 4 heads
of 32, MLP 512). Each row times forward or forward + backward (the gradient of sum(f(x) * G)) and
prints the best of `--repeats` runs after one warm-up, in milliseconds. MindSpore runs PyNative with
synchronous launches and mindspore_impl's CPU kernels, as the trainer does on CPU. The rows that
compare a kernel with its replacement are why `mindspore_impl/cpu_kernels.py` computes attention,
the tanh GELU and LayerNorm the way it does; the broadcast rows show a cost that remains in mindone's
blocks (AdaLayerNorm modulation, gates, RMSNorm, rotary embedding).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

HIDDEN, HEADS, MLP = 128, 4, 512


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return 1e3 * min(times)


def mindspore_rows(tokens: int, repeats: int) -> dict[str, float]:
    import mindspore as ms
    from mindspore import mint, ops

    from mindspore_impl.train import select_device

    select_device("cpu")
    from mindspore_impl import cpu_kernels as ck

    rng = np.random.default_rng(0)

    def tensor(*shape):
        return ms.Tensor(rng.standard_normal(shape, dtype=np.float32))

    def timed_grad(f, *xs):
        weight = tensor(*f(*xs).shape)
        grad = ms.value_and_grad(lambda *a: (f(*a) * weight).sum(), grad_position=tuple(range(len(xs))))
        return best_ms(lambda: grad(*xs)[0].asnumpy(), repeats)

    def plain_attention(q, k, v):  # what autograd sees without the hand-written backward
        probs = ops.softmax(mint.matmul(q, k.swapaxes(-2, -1)) * (1 / math.sqrt(q.shape[-1])), -1)
        return mint.matmul(probs, v)

    def mean_var_layer_norm(x):  # the arithmetic cpu_layer_norm replaced
        centered = x - x.mean(-1, keep_dims=True)
        return centered * ops.rsqrt((centered * centered).mean(-1, keep_dims=True) + 1e-6)

    q, k, v = (tensor(1, HEADS, tokens, HIDDEN // HEADS) for _ in range(3))
    mlp, x = tensor(1, tokens, MLP), tensor(1, tokens, HIDDEN)
    column, row = tensor(1, 1, MLP), tensor(1, tokens, 1)
    weight = tensor(MLP, HIDDEN)
    return {
        "attention fwd+bwd: autograd through the formula": timed_grad(plain_attention, q, k, v),
        "attention fwd+bwd: cpu_kernels (hand-written backward)": timed_grad(ck.cpu_scaled_dot_product_attention,
                                                                             q, k, v),
        "tanh GELU fwd: CPU GeLU kernel": best_ms(lambda: ops.gelu(mlp, approximate="tanh").asnumpy(), repeats),
        "tanh GELU fwd: cpu_kernels (x * sigmoid)": best_ms(lambda: ck.gelu_tanh(mlp).asnumpy(), repeats),
        "LayerNorm fwd+bwd: mean/variance arithmetic": timed_grad(mean_var_layer_norm, x),
        "LayerNorm fwd+bwd: cpu_kernels (LayerNorm primitive)": timed_grad(
            lambda t: ck.cpu_layer_norm(t, HIDDEN, eps=1e-6), x),
        "multiply, same shape (1, L, 512)": best_ms(lambda: (mlp * mlp).asnumpy(), repeats),
        "multiply, broadcast (1, L, 512) x (1, 1, 512)": best_ms(lambda: (mlp * column).asnumpy(), repeats),
        "multiply, broadcast (1, L, 512) x (1, L, 1)": best_ms(lambda: (mlp * row).asnumpy(), repeats),
        "linear (1, L, 128) -> 512 fwd": best_ms(lambda: mint.nn.functional.linear(x, weight).asnumpy(), repeats),
    }


def torch_rows(tokens: int, repeats: int) -> dict[str, float]:
    import torch

    torch.manual_seed(0)

    def timed_grad(f, *xs):
        xs = [t.requires_grad_() for t in xs]
        weight = torch.randn_like(f(*xs))

        def step():
            (f(*xs) * weight).sum().backward()

        return best_ms(step, repeats)

    q, k, v = (torch.randn(1, HEADS, tokens, HIDDEN // HEADS) for _ in range(3))
    mlp, x = torch.randn(1, tokens, MLP), torch.randn(1, tokens, HIDDEN)
    column, row, weight = torch.randn(1, 1, MLP), torch.randn(1, tokens, 1), torch.randn(MLP, HIDDEN)
    sdpa, F = torch.nn.functional.scaled_dot_product_attention, torch.nn.functional
    attention = timed_grad(sdpa, q, k, v)
    layer_norm = timed_grad(lambda t: F.layer_norm(t, (HIDDEN,), eps=1e-6), x)
    gelu = best_ms(lambda: F.gelu(mlp, approximate="tanh"), repeats)
    return {
        "attention fwd+bwd: autograd through the formula": attention,
        "attention fwd+bwd: cpu_kernels (hand-written backward)": attention,
        "tanh GELU fwd: CPU GeLU kernel": gelu,
        "tanh GELU fwd: cpu_kernels (x * sigmoid)": gelu,
        "LayerNorm fwd+bwd: mean/variance arithmetic": layer_norm,
        "LayerNorm fwd+bwd: cpu_kernels (LayerNorm primitive)": layer_norm,
        "multiply, same shape (1, L, 512)": best_ms(lambda: mlp * mlp, repeats),
        "multiply, broadcast (1, L, 512) x (1, 1, 512)": best_ms(lambda: mlp * column, repeats),
        "multiply, broadcast (1, L, 512) x (1, L, 1)": best_ms(lambda: mlp * row, repeats),
        "linear (1, L, 128) -> 512 fwd": best_ms(lambda: F.linear(x, weight), repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1536, help="L: image + text tokens (small, 512 px: 1536)")
    parser.add_argument("--repeats", type=int, default=9)
    options = parser.parse_args(argv)
    ms_rows = mindspore_rows(options.tokens, options.repeats)
    torch_ms = torch_rows(options.tokens, options.repeats)
    print(f"{'op (ms, best of ' + str(options.repeats) + ')':58s} {'mindspore':>10s} {'torch':>8s} {'ratio':>7s}")
    for name, value in ms_rows.items():
        print(f"{name:58s} {value:10.3f} {torch_ms[name]:8.3f} {value / torch_ms[name]:7.1f}")
    print("torch's column shows its own kernel (SDPA, GELU, layer_norm) beside both MindSpore variants.")


if __name__ == "__main__":
    main()
