"""Dtype placement per module, against the design document's table, in both frameworks.

| --mixed_precision | VAE / CLIP / T5 / transformer params and compute | LoRA params | LoRA compute |
| no                | fp32                                               | fp32        | fp32         |
| fp16              | fp16                                               | fp32        | fp16         |
| bf16              | bf16                                               | fp32        | bf16         |
"""

from __future__ import annotations

import pytest
import torch

EXPECTED = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").lower()


def torch_lora_output_dtypes(pair, inputs) -> set[str]:
    from torch_reference.precision import adapter_layers
    from torch_reference.step import forward_loss

    seen, hooks = set(), []
    for layer in adapter_layers(pair.torch_models.transformer):
        hooks.append(layer.register_forward_hook(lambda m, i, o: seen.add(dtype_name(o.dtype))))
    with torch.no_grad():
        forward_loss(pair.torch_models, inputs, 3.5, 1.0)
    for hook in hooks:
        hook.remove()
    return seen


def ms_lora_output_dtypes(pair, inputs) -> set[str]:
    from mindspore_impl.precision import adapter_layers
    from mindspore_impl.step import forward_loss

    seen, hooks = set(), []
    for layer in adapter_layers(pair.ms_models.transformer):
        hooks.append(layer.register_forward_hook(lambda c, i, o: seen.add(dtype_name(o.dtype))))
    forward_loss(pair.ms_models, inputs, 3.5, 1.0)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("mixed_precision", ["no", "fp16", "bf16"])
def test_every_parameter_has_the_documents_dtype(make_pair, mixed_precision):
    from mindspore_impl.precision import precision_table as ms_table
    from torch_reference.precision import precision_table as torch_table

    pair = make_pair("--mixed_precision", mixed_precision)
    weight = EXPECTED[mixed_precision]
    for framework, models, params in (
        ("torch", pair.torch_models, lambda m: [(n, p.dtype, p.requires_grad) for n, p in m.named_parameters()]),
        ("mindspore", pair.ms_models, lambda m: [(p.name, p.dtype, p.requires_grad) for p in m.get_parameters()]),
    ):
        for module, model in models.named_modules().items():
            for name, dtype, trainable in params(model):
                want = "float32" if trainable else weight
                assert dtype_name(dtype) == want, f"{framework} {module}.{name}: {dtype_name(dtype)}, want {want}"
                assert not trainable or ".lora_" in name, f"{framework} {module}.{name} is trainable"
    table_t = torch_table(pair.torch_models, pair.torch_trainable)
    table_m = ms_table(pair.ms_models, pair.ms_trainable)
    print(f"\n--mixed_precision {mixed_precision}\n{'module':<16}{'torch params/compute':<28}mindspore params/compute")
    for module in table_t:
        t, m = table_t[module], table_m[module]
        print(f"{module:<16}{t['parameters'] + ' / ' + t['compute']:<28}{m['parameters']} / {m['compute']}")
    assert table_t == table_m
    assert table_t["lora"] == {"parameters": "float32", "compute": weight}


@pytest.mark.parametrize("mixed_precision", ["no", "fp16", "bf16"])
def test_lora_layers_compute_in_the_weight_dtype(make_pair, mixed_precision):
    """Measured, not declared: the dtype each LoRA layer's output actually has in a forward pass."""
    pair = make_pair("--mixed_precision", mixed_precision)
    inputs = pair.inputs()
    want = {EXPECTED[mixed_precision]}
    assert torch_lora_output_dtypes(pair, inputs) == want
    if mixed_precision == "bf16":
        pytest.skip("MindSpore's CPU backend has no bf16 arithmetic: placement checked above, compute needs Ascend")
    assert ms_lora_output_dtypes(pair, inputs) == want
