"""Parameter and compute dtypes per module, following the design document's table.

With `--mixed_precision bf16` (or fp16): VAE, text encoders and transformer hold and compute in the
weight dtype; LoRA layers hold fp32 parameters and compute in the weight dtype. diffusers' own FLUX
script differs: under bf16 it leaves LoRA parameters in bf16 (peft follows the base layer, and the
script upcasts only for fp16). We follow the document so both trainers train the same thing.
"""

from __future__ import annotations

import torch
from diffusers.training_utils import cast_training_params
from peft.tuners.tuners_utils import BaseTunerLayer

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return WEIGHT_DTYPES[mixed_precision]


def to_float(layer: torch.nn.Linear, dtype: torch.dtype) -> None:
    """torch's counterpart of MindSpore's `Cell.to_float`: run this layer in `dtype`, keep its parameters.

    Inputs and weights are cast on the way in; autograd carries the gradient back to the fp32 weights.
    """
    if dtype == torch.float32:
        return

    def forward(x: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return torch.nn.functional.linear(x.to(dtype), layer.weight.to(dtype), bias)

    layer.forward = forward
    layer.compute_dtype = dtype


def adapter_layers(model: torch.nn.Module):
    """Each active adapter's lora_A / lora_B module of every LoRA-wrapped layer."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for layer_name in module.adapter_layer_names:
                for key, layer in getattr(module, layer_name).items():
                    if key in module.active_adapters and isinstance(layer, torch.nn.Module):
                        yield layer


def place_dtypes(models, mixed_precision: str, trainable: list[torch.nn.Module]) -> torch.dtype:
    """Cast frozen weights to the weight dtype, trainable (LoRA) ones back to fp32, LoRA compute to the weight dtype."""
    dtype = weight_dtype(mixed_precision)
    for model in models.named_modules().values():
        model.to(dtype=dtype)
    if mixed_precision != "no":
        cast_training_params(trainable, dtype=torch.float32)
        for model in trainable:
            for layer in adapter_layers(model):
                to_float(layer, dtype)
    return dtype


def precision_table(models, trainable: list[torch.nn.Module]) -> dict[str, dict[str, str]]:
    """module -> {'parameters': dtype(s), 'compute': dtype}; LoRA layers reported as their own row."""
    def names(dtypes) -> str:
        return "/".join(sorted({str(d).replace("torch.", "") for d in dtypes})) or "-"

    table = {}
    for name, model in models.named_modules().items():
        frozen = [p.dtype for p in model.parameters() if not p.requires_grad]
        table[name] = {"parameters": names(frozen), "compute": names(frozen)}
    lora_params, lora_compute = [], []
    for model in trainable:
        for layer in adapter_layers(model):
            lora_params += [p.dtype for p in layer.parameters()]
            lora_compute.append(getattr(layer, "compute_dtype", layer.weight.dtype))
    table["lora"] = {"parameters": names(lora_params), "compute": names(lora_compute)}
    return table
