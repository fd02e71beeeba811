"""Parameter and compute dtypes per module, exactly the design document's recipe and table.

With `--mixed_precision bf16` (or fp16): VAE, text encoders and transformer are cast with
`.to(dtype)`; trainable (LoRA) parameters go back to fp32 with `cast_training_params`, because
MindSpore optimizers update in the parameter's dtype; each active adapter layer of every
`BaseTunerLayer` computes in the weight dtype through `to_float`.
"""

from __future__ import annotations

import mindspore as ms
from mindone.diffusers.training_utils import cast_training_params
from mindone.peft.tuners.tuners_utils import BaseTunerLayer

WEIGHT_DTYPES = {"no": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}


def weight_dtype(mixed_precision: str):
    return WEIGHT_DTYPES[mixed_precision]


def adapter_layers(model: ms.nn.Cell):
    """Each active adapter's lora_A / lora_B cell of every LoRA-wrapped layer."""
    for _, module in model.cells_and_names():
        if isinstance(module, BaseTunerLayer):
            for layer_name in module.adapter_layer_names:
                for key, layer in getattr(module, layer_name).items():
                    if key in module.active_adapters and isinstance(layer, ms.nn.Cell):
                        yield layer


def place_dtypes(models, mixed_precision: str, trainable: list[ms.nn.Cell]):
    """Cast frozen weights to the weight dtype, trainable (LoRA) ones back to fp32, LoRA compute to the weight dtype."""
    dtype = weight_dtype(mixed_precision)
    for model in models.named_modules().values():
        model.to(dtype=dtype)
    if mixed_precision != "no":
        cast_training_params(trainable, dtype=ms.float32)
        for model in trainable:
            for layer in adapter_layers(model):
                layer.to_float(dtype)
                layer.compute_dtype = dtype
    return dtype


def precision_table(models, trainable: list[ms.nn.Cell]) -> dict[str, dict[str, str]]:
    """module -> {'parameters': dtype(s), 'compute': dtype}; LoRA layers reported as their own row."""
    def names(dtypes) -> str:
        return "/".join(sorted({str(d).lower() for d in dtypes})) or "-"

    table = {}
    for name, model in models.named_modules().items():
        frozen = [p.dtype for p in model.get_parameters() if not p.requires_grad]
        table[name] = {"parameters": names(frozen), "compute": names(frozen)}
    lora_params, lora_compute = [], []
    for model in trainable:
        for layer in adapter_layers(model):
            lora_params += [p.dtype for p in layer.get_parameters()]
            lora_compute.append(getattr(layer, "compute_dtype", layer.weight.dtype))
    table["lora"] = {"parameters": names(lora_params), "compute": names(lora_compute)}
    return table
