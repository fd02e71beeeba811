"""LoRA initialization: the same adapters in the same places, initialised the same way, on both sides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fluxlora.args import DEFAULT_TRANSFORMER_TARGETS
from fluxlora.tiny import transformer_config

from .harness import assert_close, hf_name, to_numpy

RANK = 8


def torch_lora_layers(model) -> dict[str, object]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def ms_lora_layers(model) -> dict[str, object]:
    from mindone.peft.tuners.tuners_utils import BaseTunerLayer

    return {n: c for n, c in model.cells_and_names() if isinstance(c, BaseTunerLayer)}


def test_same_adapted_modules_shapes_names_and_scaling(make_pair):
    pair = make_pair("--rank", str(RANK), "--lora_alpha", "16", sync_lora=False)
    t, m = torch_lora_layers(pair.torch_models.transformer), ms_lora_layers(pair.ms_models.transformer)
    assert sorted(t) == sorted(m) and t
    assert all(name.endswith(DEFAULT_TRANSFORMER_TARGETS) for name in t)
    for name in t:
        assert list(t[name].lora_A) == list(m[name].lora_A) == ["default"]
        assert t[name].scaling["default"] == m[name].scaling["default"] == 16 / RANK
        assert tuple(t[name].lora_A["default"].weight.shape) == tuple(m[name].lora_A["default"].weight.shape)
        assert tuple(t[name].lora_B["default"].weight.shape) == tuple(m[name].lora_B["default"].weight.shape)
    t_names = {n for n, p in pair.torch_models.transformer.named_parameters() if p.requires_grad}
    m_names = {hf_name(p.name) for p in pair.ms_models.transformer.trainable_params()}
    assert t_names == m_names


def lora_a_and_b(framework: str):
    """A freshly injected rank-8 LoRA on the `small` transformer (10k lora_A values: enough for statistics)."""
    if framework == "torch":
        from diffusers import FluxTransformer2DModel

        from torch_reference.lora import add_lora

        torch.manual_seed(0)
        model = FluxTransformer2DModel(**transformer_config("small"))
        add_lora(model, RANK, RANK, list(DEFAULT_TRANSFORMER_TARGETS))
        params = dict(model.named_parameters())
    else:
        from mindone.diffusers import FluxTransformer2DModel

        import mindspore_impl.train as ms_train
        from mindspore_impl.lora import add_lora

        ms_train.select_device("cpu")
        model = FluxTransformer2DModel(**transformer_config("small"))
        add_lora(model, RANK, RANK, list(DEFAULT_TRANSFORMER_TARGETS))
        params = {p.name: p for p in model.get_parameters()}
    a = np.concatenate([to_numpy(p).ravel() for n, p in params.items() if ".lora_A." in n])
    b = np.concatenate([to_numpy(p).ravel() for n, p in params.items() if ".lora_B." in n])
    return a, b


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_gaussian_init_lora_b_zero_lora_a_normal_with_std_one_over_rank(framework):
    """peft's and mindone's `init_lora_weights="gaussian"`: A ~ N(0, std = 1/r), B = 0."""
    a, b = lora_a_and_b(framework)
    assert np.all(b == 0)
    n, sigma = a.size, 1.0 / RANK
    # 5 standard errors: a correct init fails this about once in 3 million runs; a std of 1/sqrt(r)
    # (the other common convention) would be off by a factor 2.8 and fail every time.
    assert abs(a.mean()) <= 5 * sigma / math.sqrt(n)
    assert abs(a.std() / sigma - 1) <= 5 / math.sqrt(2 * n)
    # and it is a normal, not a uniform with that std: the fourth moment (kurtosis 3, uniform 1.8)
    kurtosis = float(np.mean((a / a.std()) ** 4))
    assert abs(kurtosis - 3.0) <= 5 * math.sqrt(24 / n)


def test_fresh_adapter_leaves_the_output_unchanged(make_pair):
    """B = 0: the adapted transformer computes exactly the base transformer, in both frameworks."""
    from mindspore_impl.step import forward_loss as ms_forward
    from torch_reference.step import forward_loss as torch_forward

    pair = make_pair()
    inputs = pair.inputs()
    with torch.no_grad():
        _, with_lora = torch_forward(pair.torch_models, inputs, 3.5, 1.0)
        pair.torch_models.transformer.disable_adapters()
        _, base = torch_forward(pair.torch_models, inputs, 3.5, 1.0)
    np.testing.assert_array_equal(to_numpy(with_lora["model_pred"]), to_numpy(base["model_pred"]))
    _, ms_with = ms_forward(pair.ms_models, inputs, 3.5, 1.0)
    pair.ms_models.transformer.disable_adapters()
    _, ms_base = ms_forward(pair.ms_models, inputs, 3.5, 1.0)
    np.testing.assert_array_equal(to_numpy(ms_with["model_pred"]), to_numpy(ms_base["model_pred"]))
    assert_close("base model_pred", base["model_pred"], ms_base["model_pred"], 1e-5)


def test_clip_lora_with_train_text_encoder(make_pair):
    """--train_text_encoder: CLIP's q/k/v/out_proj adapted alike on both sides, B zero, fp32 under fp16."""
    pair = make_pair("--train_text_encoder", "--mixed_precision", "fp16", sync_lora=False)
    t = torch_lora_layers(pair.torch_models.text_encoder_one)
    m = ms_lora_layers(pair.ms_models.text_encoder_one)
    assert sorted(t) == sorted(m) and len(t) == 4 * pair.torch_models.text_encoder_one.config.num_hidden_layers
    for name in t:
        assert name.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))
        assert t[name].scaling["default"] == m[name].scaling["default"] == 1.0
        for side in (t[name], m[name]):
            assert float(abs(to_numpy(side.lora_B["default"].weight)).max()) == 0.0
            assert str(side.lora_A["default"].weight.dtype).lower().endswith("float32")
