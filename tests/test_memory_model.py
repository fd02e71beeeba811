"""benchmarks/memory_model.py against the real diffusers/peft models it describes.

Parameter counts are checked on the torch meta device (no memory), LoRA counts against peft's own
injection, and the symbolic activation trace against the tensors torch's autograd actually keeps.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from benchmarks import memory_model
from fluxlora.inputs import latent_image_ids, text_ids
from fluxlora.tiny import transformer_config
from torch_reference.lora import add_lora
from torch_reference.models import freeze
from torch_reference.precision import place_dtypes

FLUX_DEV_PARAMETERS = 11_901_408_320  # FLUX.1-dev's transformer, from the design document
FLUX_DEV_LORA_PER_RANK = 1_167_360  # to_k/to_q/to_v/to_out.0 LoRA, per unit of rank (design document)
FLUX_DEV_LORA_LAYERS = 190


def meta_transformer(size: str) -> FluxTransformer2DModel:
    with torch.device("meta"):
        return FluxTransformer2DModel(**transformer_config(size))


def lora_transformer(size: str, rank: int, targets: list[str], device: str = "cpu") -> FluxTransformer2DModel:
    with torch.device(device):
        model = FluxTransformer2DModel(**transformer_config(size))
    freeze(model)
    add_lora(model, rank, float(rank), targets)
    return model


@pytest.mark.parametrize("size", ["tiny", "small", "full"])
def test_parameter_count_matches_diffusers(size):
    real = sum(p.numel() for p in meta_transformer(size).parameters())
    assert memory_model.parameter_count(transformer_config(size)) == real


def test_full_size_is_flux_dev():
    assert memory_model.parameter_count(transformer_config("full")) == FLUX_DEV_PARAMETERS


@pytest.mark.parametrize("size", ["tiny", "small", "full"])
def test_linear_inventory_names_every_linear_layer(size):
    real = {name: (m.in_features, m.out_features) for name, m in meta_transformer(size).named_modules()
            if isinstance(m, torch.nn.Linear)}
    modelled = {layer.name: (layer.fan_in, layer.fan_out) for layer in memory_model.transformer_linears(
        transformer_config(size))}
    assert modelled == real


TARGET_SETS = [
    ["to_k", "to_q", "to_v", "to_out.0"],
    ["proj_out"],  # single blocks' proj_out and the final proj_out
    ["add_q_proj", "ff.net.2", "norm1.linear", "proj_mlp", "x_embedder", "linear_1"],
]


@pytest.mark.parametrize("targets", TARGET_SETS)
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_count_matches_peft_injection(targets, rank):
    model = lora_transformer("tiny", rank, targets)
    injected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    config = transformer_config("tiny")
    assert memory_model.lora_parameter_count(config, rank, targets) == injected
    assert len(memory_model.lora_layers(config, targets)) == layers


def test_full_size_lora_count_is_the_documented_one():
    config = transformer_config("full")
    assert memory_model.lora_parameter_count(config, 1) == FLUX_DEV_LORA_PER_RANK
    assert memory_model.lora_parameter_count(config, 16) == 16 * FLUX_DEV_LORA_PER_RANK
    assert len(memory_model.lora_layers(config)) == FLUX_DEV_LORA_LAYERS


def test_full_size_lora_count_matches_peft_on_meta():
    model = lora_transformer("full", 4, list(memory_model.DEFAULT_TARGETS), device="meta")
    injected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory_model.lora_parameter_count(transformer_config("full"), 4) == injected


class TransformerOnly:
    def __init__(self, transformer):
        self.transformer = transformer

    def named_modules(self):
        return {"transformer": self.transformer}


def saved_for_backward(size: str, mixed_precision: str, resolution: int, text_tokens: int, targets: list[str]) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps during one transformer forward."""
    torch.manual_seed(0)
    model = lora_transformer(size, 4, targets)
    dtype = place_dtypes(TransformerOnly(model), mixed_precision, [model])
    config = transformer_config(size)
    side = resolution // 8
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(hidden_states=torch.randn(1, (side // 2) ** 2, config["in_channels"], dtype=dtype),
              encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"], dtype=dtype),
              pooled_projections=torch.randn(1, config["pooled_projection_dim"], dtype=dtype),
              timestep=torch.full((1,), 0.5, dtype=dtype), guidance=torch.full((1,), 3.5),
              img_ids=torch.from_numpy(latent_image_ids(side, side)), txt_ids=torch.from_numpy(text_ids(text_tokens)),
              return_dict=False)
    return sum(kept.values())


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("targets", TARGET_SETS)
def test_activation_trace_matches_what_autograd_keeps(mixed_precision, targets):
    resolution, text_tokens = 128, 64
    real = saved_for_backward("small", mixed_precision, resolution, text_tokens, targets)
    shape = memory_model.StepShape(transformer_config("small"), 1, memory_model.image_tokens(resolution), text_tokens,
                                   memory_model.MIXED_PRECISION[mixed_precision], rank=4)
    trace = memory_model.trace_transformer(shape, targets)
    modelled = sum(trace.saved_bytes(block) for block in trace.saved)
    assert modelled == pytest.approx(real, rel=0.02)


def test_checkpointing_keeps_block_inputs_and_one_block():
    config = transformer_config("full")
    plain = memory_model.estimate_peak(config, 1024, gradient_checkpointing=False)
    checkpointed = memory_model.estimate_peak(config, 1024, gradient_checkpointing=True)
    blocks = config["num_layers"] + config["num_single_layers"]
    tokens = memory_model.image_tokens(1024) + memory_model.FLUX_TEXT_TOKENS
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    assert checkpointed.detail["block_inputs"] == pytest.approx(blocks * tokens * hidden * 2, rel=0.01)  # bf16
    assert checkpointed.activations < plain.activations / 5
    assert checkpointed.frozen_weights == plain.frozen_weights == FLUX_DEV_PARAMETERS * 2
