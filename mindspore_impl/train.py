"""The MindSpore trainer: `python -m mindspore_impl.train [diffusers flags]`.

The design document on mindone, with the loop on one screen and mirroring torch_reference/train.py:
load, freeze, inject LoRA, place dtypes, then for each optimizer step accumulate micro-batch
gradients from `step.loss_and_grads`, clip, step, log, checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import mindspore as ms
from mindspore import ops

from fluxlora.args import DEFAULT_TEXT_ENCODER_TARGETS, UsageError, transformer_targets
from fluxlora.checkpoints import load_checkpoint, resolve_checkpoint, save_checkpoint
from fluxlora.data import DreamBoothData, missing_class_images
from fluxlora.inputs import make_step_inputs
from fluxlora.log import TrainLog, announce
from fluxlora.run import TrainingPlan, choose_seed, cli, fail, model_location, settle_precision
from fluxlora.schedule import lr_multiplier

from . import distributed

PROG = "python -m mindspore_impl.train"
DEVICE_TARGETS = {"cpu": "CPU", "cuda": "GPU", "ascend": "Ascend"}
# Measured with mindone 0.5.0 on MindSpore 2.7.1 CPU, ms.jit over value_and_grad of the FLUX loss:
# with capture_mode "ast" and "bytecode" the graph fails kernel selection at Chunk (mint.chunk in
# AdaLayerNormContinuous, Tensor.chunk in AdaLayerNormZero / AdaLayerNormZeroSingle), then, with those
# routed by hand, at RepeatInterleaveInt (Tensor.repeat_interleave in the rotary embedding) and
# SplitWithSize (Tensor.split in FluxAttnProcessor); "trace" fails earlier, tracing an int arange.
# Graph mode resolves Tensor methods in C++, so cpu_kernels cannot reach them without rewriting
# mindone's blocks. Not yet tried on Ascend, where these kernels exist.
GRAPH_MODE_UNSUPPORTED = ("--mindspore_mode graph is not available yet: mindone 0.5.0's FLUX does not compile in "
                          "graph mode on MindSpore CPU (no CPU graph kernels for Chunk, RepeatInterleaveInt and "
                          "SplitWithSize, reached through Tensor methods) and the graph step is untested on "
                          "Ascend. Use --mindspore_mode pynative (the default)")


def select_device(requested: str | None, mode: str = "pynative") -> str:
    """Set MindSpore's device (default: what this MindSpore build targets); on CPU, route Ascend-only kernels."""
    if requested is not None and requested not in DEVICE_TARGETS:
        raise UsageError(f"--device {requested}: use one of {', '.join(DEVICE_TARGETS)}")
    if mode == "graph":
        raise UsageError(GRAPH_MODE_UNSUPPORTED)
    context = {"mode": ms.PYNATIVE_MODE}
    if requested is not None:
        context["device_target"] = DEVICE_TARGETS[requested]
    try:
        ms.set_context(**context)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"--device {requested}: this MindSpore cannot use it ({error})") from None
    target = ms.get_context("device_target")
    if target == "CPU":
        from .cpu_kernels import apply_cpu_kernels

        apply_cpu_kernels()
        # PyNative's asynchronous launch keeps busy-waiting dispatch threads that starve the compute
        # threads on a few cores: the tiny FLUX step took 1.2-3.4 s asynchronous and 0.095 s with
        # synchronous launches (2 cores), and two data-parallel processes 7 s vs 1.1 s.
        ms.runtime.launch_blocking()
    return target


def build(args, device: str):
    """Models loaded, frozen, LoRA-injected and dtype-placed (the document's three sections, in order)."""
    from .lora import add_lora
    from .models import enable_gradient_checkpointing, freeze, load_models
    from .precision import place_dtypes

    models = load_models(model_location(args), args.revision, args.variant)
    freeze(*models.named_modules().values())
    add_lora(models.transformer, args.rank, args.lora_alpha, transformer_targets(args), args.lora_dropout)
    trainable = [models.transformer]
    if args.train_text_encoder:
        add_lora(models.text_encoder_one, args.rank, args.lora_alpha, list(DEFAULT_TEXT_ENCODER_TARGETS),
                 args.lora_dropout, flag="--train_text_encoder")
        trainable.append(models.text_encoder_one)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(models.transformer, models.text_encoder_one if args.train_text_encoder else None)
    place_dtypes(models, args.mixed_precision, trainable)
    return models, trainable


def param_groups(models, args) -> list[dict]:
    from .lora import lora_parameters

    groups = [{"params": lora_parameters(models.transformer), "lr": args.learning_rate,
               "weight_decay": args.adam_weight_decay}]
    if args.train_text_encoder:
        groups.append({"params": lora_parameters(models.text_encoder_one), "lr": args.text_encoder_lr,
                       "weight_decay": args.adam_weight_decay_text_encoder})
    return groups


def train(args, rank: int = 0, world_size: int = 1, all_reduce=None) -> Path:
    device = select_device(args.device, args.mindspore_mode)
    settle_precision(args, on_cpu=device == "CPU", bf16_on_cpu=False)
    from .checkpoint import restore_training_state, training_state
    from .export import generate_class_images, render_validation, save_lora
    from .models import schedule_tables
    from .optim import OPTIMIZERS
    from .precision import precision_table
    from .step import clip_and_step, loss_and_grads

    seed = choose_seed(args)
    # LoRA's A matrices come from the framework's generator: seeded, a run (and every data-parallel
    # process) starts from the same weights
    ms.set_seed(seed)
    missing = missing_class_images(args)
    data = None if missing else DreamBoothData(args, world_size)  # a bad image fails before the models load
    models, trainable = build(args, device)
    if missing:
        if rank == 0:
            announce(f"prior preservation: generating {missing} class images into {args.class_data_dir}")
            generate_class_images(models, args, seed, missing)
        if distributed.active():
            distributed.barrier()  # the other ranks read them only once rank 0 has written them
        data = DreamBoothData(args, world_size)
    groups = param_groups(models, args)
    if args.scale_lr:
        for group in groups:
            group["lr"] *= args.gradient_accumulation_steps * args.train_batch_size * world_size
    base_lrs = [g["lr"] for g in groups]
    params = {n: p for g in groups for n, p in g["params"].items()}
    optimizer = OPTIMIZERS[args.optimizer](groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    plan = TrainingPlan.of(data, args)
    output_dir = Path(args.output_dir)
    resume = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    start = 0
    if resume is not None:
        lora, moments, state = load_checkpoint(resume)
        restore_training_state(params, optimizer, lora, moments, state)
        start, seed = state["step"], state["seed"]
        announce(f"resumed from {resume} at step {start}")
    elif args.resume_from_checkpoint == "latest":
        announce(f"no checkpoint in {output_dir}; starting a new run")
    is_main = rank == 0
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        announce(f"device {device}, precision: {precision_table(models, trainable)}")
    schedule = schedule_tables(models.noise_scheduler)
    prompt_cache: dict = {}
    latent_cache: dict = {}
    log = TrainLog(output_dir, start, plan.total_steps, enabled=is_main)
    for step in range(start, plan.total_steps):
        began = time.perf_counter()
        summed, losses = None, []
        for micro in plan.micro_steps(step):
            batch = data.batch(seed, *plan.position(micro), rank=rank)
            inputs = make_step_inputs(batch, models.tokenizers, args, seed, micro,
                                      rank * len(batch.prompts), models.vae.config, schedule)
            cached = {}
            if not args.train_text_encoder:
                cached["prompt_embeddings"] = cached_prompt(models, inputs, prompt_cache)
            if args.cache_latents:
                cached["posterior"] = cached_posterior(models, inputs, latent_cache)
            loss, grads, _ = loss_and_grads(models, params, inputs, args.guidance_scale, args.prior_loss_weight,
                                            **cached)
            losses.append(float(loss))
            summed = grads if summed is None else {n: summed[n] + g for n, g in grads.items()}
        grads = {n: g / plan.accumulation for n, g in summed.items()}
        if all_reduce is not None:
            grads = all_reduce(grads)
        multiplier = lr_multiplier(args.lr_scheduler, step, args.lr_warmup_steps, plan.total_steps,
                                   args.lr_num_cycles, args.lr_power)
        grad_norm = clip_and_step(optimizer, params, grads, [lr * multiplier for lr in base_lrs], args.max_grad_norm)
        done = step + 1
        log.step(done, sum(losses) / len(losses), base_lrs[0] * multiplier, grad_norm, time.perf_counter() - began)
        if is_main and plan.checkpoint_due(done):
            lora, moments, state = training_state(params, optimizer)
            save_checkpoint(output_dir, done, lora, moments, {**state, "seed": seed}, args.checkpoints_total_limit)
        if is_main and plan.validation_due(done):
            render_validation(models, args, seed, done, output_dir)
    log.close()
    if not is_main:
        return output_dir
    path = save_lora(output_dir, models, args)
    if args.validation_prompt:
        render_validation(models, args, seed, plan.total_steps, output_dir)
    announce(f"saved {path}")
    return path


def cached_prompt(models, inputs, cache: dict):
    """Frozen text encoders give the same embeddings for the same prompts: compute them once."""
    from .step import encode_prompt

    key = tuple(inputs.prompts)
    if key not in cache:
        cache[key] = tuple(ops.stop_gradient(t) for t in
                           encode_prompt(models, ms.Tensor(inputs.clip_ids), ms.Tensor(inputs.t5_ids)))
    return cache[key]


def cached_posterior(models, inputs, cache: dict):
    """--cache_latents: encode each distinct preprocessed image once; a new crop or flip is a new entry."""
    from .step import vae_posterior

    rows = []
    for pixels in inputs.pixel_values:
        key = hashlib.sha1(pixels.tobytes()).hexdigest()
        if key not in cache:
            cache[key] = [ops.stop_gradient(t[0]) for t in vae_posterior(models.vae, ms.Tensor(pixels[None]))]
        rows.append(cache[key])
    return ops.stack([r[0] for r in rows]), ops.stack([r[1] for r in rows])


def main(argv: list[str] | None = None) -> None:
    args = cli(argv, PROG)
    try:
        # the device first: joining the process group needs it (and MindSpore's init() its context)
        rank, world_size, all_reduce = distributed.setup(select_device(args.device, args.mindspore_mode))
        distributed.agree_on_start(args, rank)
        train(args, rank, world_size, all_reduce)
        distributed.finish()
    except UsageError as error:
        fail(PROG, error)


if __name__ == "__main__":
    main()
