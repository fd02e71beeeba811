"""The PyTorch reference trainer's own behaviour: what trains, that it learns, saving, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import tiny_args
from fluxlora.data import DreamBoothData
from fluxlora.inputs import make_step_inputs
from fluxlora.lora_file import LORA_WEIGHT_NAME
from torch_reference.lora import lora_parameters
from torch_reference.models import schedule_tables
from torch_reference.step import clip_and_step, loss_and_grads
from torch_reference.train import build, param_groups, train


def fixed_inputs(models, args, seed=7):
    data = DreamBoothData(args)
    batch = data.batch(seed, epoch=0, index_in_epoch=0)
    return make_step_inputs(batch, models.tokenizers, args, seed, 0, 0, models.vae.config,
                            schedule_tables(models.noise_scheduler))


def test_only_lora_parameters_are_trainable(tiny_checkpoint, tmp_path):
    args = tiny_args(tiny_checkpoint, tmp_path)
    models, _ = build(args, torch.device("cpu"))
    trainable = {n for m in models.named_modules().values() for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # each adapted Linear(in, out) gains r*in + r*out parameters; count them from the base layers
    expected = sum(args.rank * (m.base_layer.in_features + m.base_layer.out_features)
                   for name, m in models.transformer.named_modules()
                   if name.endswith(("to_q", "to_k", "to_v", "to_out.0")))
    assert sum(p.numel() for p in lora_parameters(models.transformer).values()) == expected
    assert not any(p.requires_grad for p in models.text_encoder_one.parameters())


def test_loss_is_finite_and_falls_on_a_repeated_batch(tiny_checkpoint, one_image, tmp_path):
    args = tiny_args(tiny_checkpoint, tmp_path, one_image)
    models, _ = build(args, torch.device("cpu"))
    groups = param_groups(models, args)
    params = groups[0]["params"]
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=0.0)
    inputs = fixed_inputs(models, args)
    losses = []
    for _ in range(8):
        loss, grads, _ = loss_and_grads(models, params, inputs, args.guidance_scale, args.prior_loss_weight)
        clip_and_step(optimizer, params, grads, [1e-3], max_grad_norm=1.0)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    # same batch, same noise: 8 AdamW steps must lower the loss clearly, not by rounding noise
    assert losses[-1] < 0.95 * losses[0], losses


def test_training_writes_log_checkpoints_and_lora(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    train(tiny_args(tiny_checkpoint, out, *_extra("--checkpointing_steps", "2", "--checkpoints_total_limit", "1")))
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 and r["grad_norm"] >= 0 for r in records)
    # step 4 is the last step, so only checkpoint-2 is written; the limit keeps at most one folder
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a staging folder was left behind"
    keys = load_file(out / LORA_WEIGHT_NAME)
    assert keys and all(k.startswith("transformer.") and ".lora_" in k and ".default." not in k for k in keys)


def _extra(*flags):
    from conftest import BUNDLED_IMAGES

    return (BUNDLED_IMAGES, *flags)


def test_saved_lora_loads_in_flux_pipeline_uses_every_key_and_changes_output(tiny_checkpoint, tmp_path):
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    out = tmp_path / "run"
    train(tiny_args(tiny_checkpoint, out, *_extra("--learning_rate", "1e-2")))
    pipe = FluxPipeline.from_pretrained(tiny_checkpoint)
    kwargs = dict(prompt="a photo of sks robot", height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                  output_type="np")
    before = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(out / LORA_WEIGHT_NAME)
    saved = load_file(out / LORA_WEIGHT_NAME)
    adapter = pipe.transformer.active_adapters()[0]
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)
    assert {f"transformer.{k}" for k in loaded} == set(saved)
    for key, value in loaded.items():
        np.testing.assert_array_equal(value.numpy(), saved[f"transformer.{key}"])
    after = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(after - before).max() > 1e-4


def test_resume_continues_exactly(tiny_checkpoint, tmp_path):
    """Interrupted at step 2 and resumed == uninterrupted, bit for bit (fp32, same CPU kernels)."""
    flags = _extra("--checkpointing_steps", "2", "--max_train_steps", "4", "--lr_scheduler", "cosine",
                   "--lr_warmup_steps", "1")
    whole = tmp_path / "whole"
    train(tiny_args(tiny_checkpoint, whole, *flags))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    train(tiny_args(tiny_checkpoint, resumed, *flags, "--resume_from_checkpoint", "latest"))
    a, b = load_file(whole / LORA_WEIGHT_NAME), load_file(resumed / LORA_WEIGHT_NAME)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    log = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert log == [3, 4]


def test_train_text_encoder_adds_clip_lora(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    train(tiny_args(tiny_checkpoint, out, *_extra("--train_text_encoder", "--max_train_steps", "2")))
    keys = load_file(out / LORA_WEIGHT_NAME)
    clip = [k for k in keys if k.startswith("text_encoder.")]
    assert clip and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "out_proj")) for k in clip)


@pytest.mark.parametrize("flags", [["--gradient_accumulation_steps", "2"], ["--gradient_checkpointing"],
                                   ["--weighting_scheme", "logit_normal"], ["--cache_latents"]])
def test_training_options_run(tiny_checkpoint, tmp_path, flags):
    out = tmp_path / "run"
    train(tiny_args(tiny_checkpoint, out, *_extra("--max_train_steps", "2", *flags)))
    assert (out / LORA_WEIGHT_NAME).is_file()
