"""A LoRA file written by either trainer loads in the other framework's FluxPipeline, uses every key,
and gives the same transformer output there as in the framework that trained it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import tiny_args
from fluxlora.lora_file import LORA_WEIGHT_NAME

from .harness import assert_close, hf_name

OUTPUT_REL = 1e-5  # fp32 forward of the same weights: the single-step bound


def transformer_inputs():
    rng = np.random.default_rng(3)
    return dict(hidden_states=rng.standard_normal((1, 4, 64), dtype=np.float32),
                encoder_hidden_states=rng.standard_normal((1, 16, 16), dtype=np.float32),
                pooled_projections=rng.standard_normal((1, 32), dtype=np.float32),
                timestep=np.array([0.6], np.float32), guidance=np.array([3.5], np.float32),
                txt_ids=np.zeros((16, 3), np.float32),
                img_ids=np.stack([np.zeros(4), [0, 0, 1, 1], [0, 1, 0, 1]], 1).astype(np.float32))


def torch_output(checkpoint, lora_file) -> tuple[np.ndarray, dict]:
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = FluxPipeline.from_pretrained(checkpoint)
    pipe.load_lora_weights(lora_file)
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.transformer.active_adapters()[0])
    with torch.no_grad():
        out = pipe.transformer(**{k: torch.from_numpy(v) for k, v in transformer_inputs().items()},
                               return_dict=False)[0]
    return out.numpy(), {f"transformer.{k}": v.numpy() for k, v in loaded.items()}


def ms_output(checkpoint, lora_file) -> tuple[np.ndarray, dict]:
    import mindspore as ms
    from mindone.diffusers import FluxPipeline

    import mindspore_impl.train as ms_train

    ms_train.select_device("cpu")
    pipe = FluxPipeline.from_pretrained(checkpoint)
    pipe.load_lora_weights(lora_file)
    loaded = {f"transformer.{hf_name(p.name)}".replace(".default_0.", ".").replace(".default.", "."): p.asnumpy()
              for p in pipe.transformer.get_parameters() if ".lora_" in p.name}
    out = pipe.transformer(**{k: ms.Tensor(v) for k, v in transformer_inputs().items()}, return_dict=False)[0]
    return out.asnumpy(), loaded


@pytest.mark.parametrize("trainer", ["torch_reference", "mindspore_impl"])
def test_lora_file_loads_in_both_frameworks_with_the_same_output(trainer, tiny_checkpoint, tmp_path):
    import importlib

    out = tmp_path / "run"
    train = importlib.import_module(f"{trainer}.train").train
    train(tiny_args(tiny_checkpoint, out, *_flags("--max_train_steps", "2", "--learning_rate", "1e-2")))
    lora_file = out / LORA_WEIGHT_NAME
    saved = load_file(lora_file)
    t_out, t_loaded = torch_output(tiny_checkpoint, lora_file)
    m_out, m_loaded = ms_output(tiny_checkpoint, lora_file)
    for loaded, framework in ((t_loaded, "torch"), (m_loaded, "mindspore")):
        assert set(loaded) == set(saved), f"{framework} did not use every key: {sorted(set(saved) ^ set(loaded))[:4]}"
        for key, value in saved.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{framework} {key}")
    assert_close("transformer output with the LoRA", t_out, m_out, OUTPUT_REL)
    base, _ = torch_base_output(tiny_checkpoint)
    assert np.abs(t_out - base).max() > 1e-4, "the LoRA did not change the output"


def torch_base_output(checkpoint):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(checkpoint, subfolder="transformer")
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in transformer_inputs().items()},
                     return_dict=False)[0].numpy(), None


def _flags(*flags):
    from conftest import BUNDLED_IMAGES

    return (BUNDLED_IMAGES, *flags)


def test_a_torch_checkpoint_resumes_in_mindspore_on_the_same_trajectory(tiny_checkpoint, tmp_path):
    """The training state is framework-free: torch trains steps 1-2, MindSpore continues 3-4, and the
    result matches torch training all four steps (fp32; the trajectory test's bound)."""
    import shutil

    from mindspore_impl.train import train as ms_train
    from torch_reference.train import train as torch_train

    flags = _flags("--max_train_steps", "4", "--checkpointing_steps", "2")
    whole = tmp_path / "torch"
    torch_train(tiny_args(tiny_checkpoint, whole, *flags))
    handed_over = tmp_path / "mindspore"
    handed_over.mkdir()
    shutil.copytree(whole / "checkpoint-2", handed_over / "checkpoint-2")
    ms_train(tiny_args(tiny_checkpoint, handed_over, *flags, "--resume_from_checkpoint", "latest"))
    a, b = load_file(whole / LORA_WEIGHT_NAME), load_file(handed_over / LORA_WEIGHT_NAME)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 2e-6, worst
