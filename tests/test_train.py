"""Each trainer's own behaviour, run for both (their command lines and outputs are one surface):
what trains, that it learns, what it writes, and that resume continues exactly."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import BUNDLED_IMAGES, tiny_args
from fluxlora.data import DreamBoothData
from fluxlora.inputs import make_step_inputs
from fluxlora.lora_file import LORA_WEIGHT_NAME

TRAINERS = ["torch_reference", "mindspore_impl"]


class Trainer:
    """One framework's trainer modules, behind the names they share."""

    def __init__(self, package: str):
        self.package = package
        self.train_module = importlib.import_module(f"{package}.train")
        self.step = importlib.import_module(f"{package}.step")
        self.models = importlib.import_module(f"{package}.models")
        self.lora = importlib.import_module(f"{package}.lora")

    def build(self, args):
        if self.package == "torch_reference":
            import torch

            return self.train_module.build(args, torch.device("cpu"))
        return self.train_module.build(args, self.train_module.select_device("cpu"))

    def optimizer(self, params: dict, lr: float):
        if self.package == "torch_reference":
            import torch

            return torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
        from mindspore_impl.optim import AdamW

        return AdamW([{"params": params, "lr": lr, "weight_decay": 0.0}])

    def all_parameters(self, models) -> dict[str, np.ndarray]:
        from parity_tests.harness import to_numpy

        out = {}
        for module, model in models.named_modules().items():
            pairs = model.named_parameters() if hasattr(model, "named_parameters") else \
                [(p.name, p) for p in model.get_parameters()]
            out.update({f"{module}.{n}": to_numpy(p) for n, p in pairs})
        return out


@pytest.fixture(params=TRAINERS)
def trainer(request) -> Trainer:
    return Trainer(request.param)


def extra(*flags):
    return (BUNDLED_IMAGES, *flags)


def fixed_inputs(trainer, models, args, seed=7):
    batch = DreamBoothData(args).batch(seed, epoch=0, index_in_epoch=0)
    return make_step_inputs(batch, models.tokenizers, args, seed, 0, 0, models.vae.config,
                            trainer.models.schedule_tables(models.noise_scheduler))


def test_only_lora_parameters_are_trainable(trainer, tiny_checkpoint, tmp_path):
    args = tiny_args(tiny_checkpoint, tmp_path)
    models, _ = trainer.build(args)
    params = trainer.lora.lora_parameters(models.transformer)
    assert params and all(".lora_A." in n or ".lora_B." in n for n in params)
    # each adapted Linear(in, out) gains rank*(in + out) parameters; count them from the frozen weights
    frozen = trainer.all_parameters(models)
    adapted = {n.rsplit(".lora_", 1)[0] for n in params}
    expected = sum(args.rank * sum(frozen[f"transformer.{a}.base_layer.weight"].shape) for a in adapted)
    assert sum(int(np.prod(p.shape)) for p in params.values()) == expected
    assert len(adapted) == 4 + 3  # tiny: one double block (q, k, v, out) and one single block (q, k, v)


@pytest.mark.parametrize("mixed_precision", ["no", "fp16"])
def test_loss_falls_on_a_repeated_batch_and_only_lora_changes(trainer, tiny_checkpoint, one_image, tmp_path,
                                                              mixed_precision):
    args = tiny_args(tiny_checkpoint, tmp_path, one_image, "--mixed_precision", mixed_precision)
    models, _ = trainer.build(args)
    params = trainer.lora.lora_parameters(models.transformer)
    before = trainer.all_parameters(models)
    optimizer = trainer.optimizer(params, 2e-3)
    inputs = fixed_inputs(trainer, models, args)
    losses = []
    for _ in range(10):
        loss, grads, _ = trainer.step.loss_and_grads(models, params, inputs, args.guidance_scale, 1.0)
        trainer.step.clip_and_step(optimizer, params, grads, [2e-3], max_grad_norm=1.0)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    # same batch, same noise: 10 AdamW steps must lower the loss clearly, not by rounding noise
    assert losses[-1] < 0.95 * losses[0], losses
    after = trainer.all_parameters(models)
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed and all(".lora_B." in n or ".lora_A." in n for n in changed), sorted(changed)[:5]


def test_training_writes_log_checkpoints_and_lora(trainer, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra("--checkpointing_steps", "1",
                                                                       "--checkpoints_total_limit", "2")))
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 and r["grad_norm"] >= 0 and r["lr"] > 0 for r in records)
    # checkpoints at steps 1, 2, 3 (the last step ends in the LoRA file); the limit keeps the newest two
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a staging file was left behind"
    state = json.loads((out / "checkpoint-3" / "state.json").read_text())
    assert state["step"] == 3 and state["seed"] == 7 and state["optimizer_steps"] == 3
    keys = load_file(out / LORA_WEIGHT_NAME)
    assert keys and all(k.startswith("transformer.") and ".lora_" in k and ".default." not in k for k in keys)


def test_resume_continues_exactly(trainer, tiny_checkpoint, tmp_path):
    """Interrupted at step 2 and resumed == uninterrupted, bit for bit (fp32, same CPU kernels)."""
    flags = extra("--checkpointing_steps", "2", "--max_train_steps", "4", "--lr_scheduler", "cosine",
                  "--lr_warmup_steps", "1", "--gradient_accumulation_steps", "2")
    whole = tmp_path / "whole"
    trainer.train_module.train(tiny_args(tiny_checkpoint, whole, *flags))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    trainer.train_module.train(tiny_args(tiny_checkpoint, resumed, *flags, "--resume_from_checkpoint", "latest"))
    a, b = load_file(whole / LORA_WEIGHT_NAME), load_file(resumed / LORA_WEIGHT_NAME)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    log = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert log == [3, 4]


def test_train_text_encoder_adds_clip_lora(trainer, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra("--train_text_encoder",
                                                                       "--max_train_steps", "2")))
    keys = load_file(out / LORA_WEIGHT_NAME)
    clip = [k for k in keys if k.startswith("text_encoder.")]
    assert clip and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "out_proj")) for k in clip)
    assert any(np.abs(keys[k]).max() > 0 for k in clip if ".lora_B." in k), "CLIP LoRA never trained"


@pytest.mark.parametrize("flags", [["--gradient_checkpointing"], ["--weighting_scheme", "logit_normal"],
                                   ["--cache_latents", "--center_crop"], ["--random_flip", "--repeats", "2"]],
                         ids=["checkpointing", "logit_normal", "cache_latents", "flip_repeats"])
def test_training_options_run(trainer, tiny_checkpoint, tmp_path, flags):
    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra("--max_train_steps", "2", *flags)))
    assert (out / LORA_WEIGHT_NAME).is_file()


def test_prior_preservation_trains(trainer, tiny_checkpoint, tmp_path):
    classes = tmp_path / "class"
    shutil.copytree(BUNDLED_IMAGES, classes)
    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra(
        "--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", "a photo of a robot",
        "--num_class_images", "4", "--max_train_steps", "2")))
    assert all(np.isfinite(json.loads(line)["loss"]) for line in (out / "train_log.jsonl").read_text().splitlines())


def test_mindspore_refuses_bf16_on_cpu_at_once(tiny_checkpoint, tmp_path, capsys):
    from conftest import tiny_argv
    from mindspore_impl.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(tiny_argv(tiny_checkpoint, tmp_path / "out") + ["--mixed_precision", "bf16"])
    assert exit_info.value.code == 2
    assert "bf16 needs Ascend" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_adam_weight_decay_optimizer_flag(tiny_checkpoint, tmp_path):
    from mindspore_impl.train import train

    out = tmp_path / "run"
    train(tiny_args(tiny_checkpoint, out, *extra("--optimizer", "AdamWeightDecay", "--max_train_steps", "2",
                                                 "--checkpointing_steps", "1")))
    assert (out / LORA_WEIGHT_NAME).is_file() and (out / "checkpoint-1" / "optimizer.safetensors").is_file()


def test_validation_images(trainer, tiny_checkpoint, tmp_path):
    """--validation_prompt renders every --validation_epochs epochs and once more at the end."""
    out = tmp_path / "run"
    # 4 bundled images at batch 1: an epoch is 4 steps, so 5 steps validate after step 4 and at step 5
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra(
        "--max_train_steps", "5", "--validation_prompt", "a photo of sks robot", "--num_validation_images", "2",
        "--validation_epochs", "1")))
    names = sorted(p.name for p in (out / "validation").iterdir())
    assert names == ["step000004_0.png", "step000004_1.png", "step000005_0.png", "step000005_1.png"]


def test_resume_with_other_lora_settings_fails_cleanly(trainer, tiny_checkpoint, tmp_path, capsys):
    from conftest import tiny_argv

    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra("--max_train_steps", "2",
                                                                       "--checkpointing_steps", "1")))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        trainer.train_module.main(tiny_argv(tiny_checkpoint, out) + ["--rank", "8", "--resume_from_checkpoint",
                                                                      "latest"])
    assert exit_info.value.code == 2
    assert "different --rank" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before, "a failed resume changed the output folder"


def test_prior_preservation_generates_missing_class_images(trainer, tiny_checkpoint, tmp_path):
    """As in diffusers: too few class images -> the base model draws the rest from --class_prompt."""
    classes = tmp_path / "class"
    classes.mkdir()
    shutil.copy(sorted(BUNDLED_IMAGES.glob("*.png"))[0], classes / "mine.png")
    out = tmp_path / "run"
    trainer.train_module.train(tiny_args(tiny_checkpoint, out, *extra(
        "--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", "a photo of a robot",
        "--num_class_images", "3", "--sample_batch_size", "2", "--max_train_steps", "1")))
    assert sorted(p.name for p in classes.iterdir()) == ["class_1.png", "class_2.png", "mine.png"]
    from PIL import Image

    assert Image.open(classes / "class_2.png").size == (32, 32)
