"""The one command line both trainers share.

Flag names are those of diffusers' `train_dreambooth_lora_flux.py`, so a user's command line carries
over; defaults follow the design document (LoRA on to_k/to_q/to_v/to_out.0, gaussian init,
alpha = rank, bf16 mixed precision). Everything a run can get wrong before it touches a model is
checked here, with a message that names the flag and the fix.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

DEFAULT_TRANSFORMER_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
DEFAULT_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# what diffusers' train_dreambooth_lora_flux.py adapts when --lora_layers is not given
DIFFUSERS_DEFAULT_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                             "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                             "ff_context.net.0.proj", "ff_context.net.2")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("AdamW", "AdamWeightDecay")
BUNDLED_IMAGES = Path(__file__).with_name("assets") / "instance"
DEMO_PROMPT = "a photo of sks robot"

# What the built-in demo sets when the user did not: small enough for a 2-core CPU, long enough for
# the loss to visibly fall. Applied only when no --pretrained_model_name_or_path is given.
DEMO_DEFAULTS = dict(
    instance_prompt=DEMO_PROMPT,
    resolution=128,
    train_batch_size=1,
    max_train_steps=30,
    learning_rate=1e-3,
    max_sequence_length=32,
    checkpointing_steps=10,
    seed=0,
)


class UsageError(ValueError):
    """A problem with the user's input: the message names it and says how to fix it."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="FLUX.1 DreamBooth LoRA training.")
    a = p.add_argument
    # model
    a("--pretrained_model_name_or_path", default=None,
      help="FLUX.1 folder in the diffusers layout (or a hub name). Omit it for the built-in demo.")
    a("--revision", default=None)
    a("--variant", default=None, help="weights variant, e.g. fp16")
    # data
    a("--instance_data_dir", default=None, help="folder of instance images (a .txt beside an image is its caption)")
    a("--instance_prompt", default=None, help="prompt for images without a caption file, e.g. 'a photo of sks dog'")
    a("--class_data_dir", default=None)
    a("--class_prompt", default=None)
    a("--with_prior_preservation", action="store_true")
    a("--prior_loss_weight", type=float, default=1.0)
    a("--num_class_images", type=int, default=100,
      help="prior preservation: missing class images are generated from --class_prompt by the base model")
    a("--sample_batch_size", type=int, default=4, help="batch size for generating class images")
    a("--resolution", type=int, default=512)
    a("--center_crop", action="store_true")
    a("--random_flip", action="store_true")
    a("--repeats", type=int, default=1)
    a("--cache_latents", action="store_true")
    # schedule
    a("--train_batch_size", type=int, default=4)
    a("--max_train_steps", type=int, default=None)
    a("--num_train_epochs", type=int, default=1)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--gradient_checkpointing", action="store_true")
    a("--learning_rate", type=float, default=1e-4)
    a("--text_encoder_lr", type=float, default=5e-6)
    a("--scale_lr", action="store_true")
    a("--lr_scheduler", default="constant")
    a("--lr_warmup_steps", type=int, default=500)
    a("--lr_num_cycles", type=int, default=1)
    a("--lr_power", type=float, default=1.0)
    # LoRA
    a("--rank", "--lora_rank", dest="rank", type=int, default=4)
    a("--lora_alpha", type=float, default=None, help="default: equal to --rank (the design document)")
    a("--lora_dropout", type=float, default=0.0)
    a("--lora_layers", default=None, help="comma-separated transformer module names to adapt")
    a("--train_text_encoder", action="store_true", help="also train a LoRA on CLIP (q/k/v/out_proj)")
    # precision and loss
    a("--mixed_precision", default="bf16", help="no, fp16 or bf16")
    a("--guidance_scale", type=float, default=3.5)
    a("--weighting_scheme", default="none")
    a("--logit_mean", type=float, default=0.0)
    a("--logit_std", type=float, default=1.0)
    a("--mode_scale", type=float, default=1.29)
    a("--max_sequence_length", type=int, default=512)
    # optimizer
    a("--optimizer", default="AdamW", help="AdamW (torch semantics) or AdamWeightDecay (MindSpore only)")
    a("--max_grad_norm", type=float, default=1.0)
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-4)
    a("--adam_weight_decay_text_encoder", type=float, default=1e-3)
    a("--adam_epsilon", type=float, default=1e-8)
    # checkpoints, output, validation
    a("--output_dir", default="flux-dreambooth-lora")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=None)
    a("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest' in --output_dir")
    a("--upcast_before_saving", action="store_true")
    a("--validation_prompt", default=None)
    a("--num_validation_images", type=int, default=4)
    a("--validation_epochs", type=int, default=50)
    a("--seed", type=int, default=None)
    # where it runs
    a("--device", default=None, help="cpu, cuda or ascend (default: what this machine has)")
    a("--mindspore_mode", default="pynative", help="MindSpore only: pynative or graph (jit train step)")
    return p


def parse_args(argv: list[str] | None = None, prog: str = "train") -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    given = {arg.split("=", 1)[0] for arg in (argv or []) if arg.startswith("--")}
    explicit = {action.dest for action in parser._actions if given & set(action.option_strings)}
    args.demo = args.pretrained_model_name_or_path is None
    if args.demo:
        for key, value in DEMO_DEFAULTS.items():
            if key not in explicit:
                setattr(args, key, value)
        if args.instance_data_dir is None:
            args.instance_data_dir = str(BUNDLED_IMAGES)
    args.mixed_precision_explicit = "mixed_precision" in explicit
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    need(args.mixed_precision in MIXED_PRECISIONS,
         f"--mixed_precision {args.mixed_precision!r} is not known; use one of {', '.join(MIXED_PRECISIONS)}")
    need(args.lr_scheduler in LR_SCHEDULERS,
         f"--lr_scheduler {args.lr_scheduler!r} is not known; use one of {', '.join(LR_SCHEDULERS)}")
    need(args.weighting_scheme in WEIGHTING_SCHEMES,
         f"--weighting_scheme {args.weighting_scheme!r} is not known; use one of {', '.join(WEIGHTING_SCHEMES)}")
    need(args.optimizer in OPTIMIZERS,
         f"--optimizer {args.optimizer!r} is not known; use one of {', '.join(OPTIMIZERS)}")
    need(args.mindspore_mode in ("pynative", "graph"), "--mindspore_mode must be pynative or graph")
    need(args.rank > 0, f"--rank must be a positive integer (got {args.rank}); 4 to 64 is usual for FLUX")
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    need(args.lora_alpha > 0, f"--lora_alpha must be positive (got {args.lora_alpha})")
    need(0.0 <= args.lora_dropout < 1.0, f"--lora_dropout must be in [0, 1) (got {args.lora_dropout})")
    need(args.resolution > 0 and args.resolution % 16 == 0,
         f"--resolution {args.resolution} must be a positive multiple of 16 (VAE 8x downsampling, then 2x2 patches)")
    for flag in ("train_batch_size", "sample_batch_size", "gradient_accumulation_steps", "repeats", "num_train_epochs",
                 "checkpointing_steps", "max_sequence_length", "num_validation_images", "validation_epochs"):
        need(getattr(args, flag) >= 1, f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    need(args.max_sequence_length <= 512, "--max_sequence_length must be at most 512 (T5's limit in FLUX)")
    need(args.max_train_steps is None or args.max_train_steps >= 1, "--max_train_steps must be at least 1")
    need(args.checkpoints_total_limit is None or args.checkpoints_total_limit >= 1,
         "--checkpoints_total_limit must be at least 1")
    need(args.max_grad_norm > 0, "--max_grad_norm must be positive")
    need(args.learning_rate > 0, "--learning_rate must be positive")

    if args.pretrained_model_name_or_path is not None:
        check_model_location(args.pretrained_model_name_or_path)
    need(args.instance_data_dir is not None,
         "--instance_data_dir is required: a folder of images of your subject")
    need(args.instance_prompt is not None,
         "--instance_prompt is required, e.g. --instance_prompt 'a photo of sks dog'")
    if args.with_prior_preservation:
        need(args.class_data_dir is not None, "--with_prior_preservation needs --class_data_dir")
        need(args.class_prompt is not None, "--with_prior_preservation needs --class_prompt")
    if args.lora_layers is not None:
        layers = [name.strip() for name in args.lora_layers.split(",") if name.strip()]
        need(bool(layers), "--lora_layers is empty; give comma-separated module names like to_q,to_k")
        args.lora_layers = ",".join(layers)
    if args.resume_from_checkpoint is not None:
        from .checkpoints import resolve_checkpoint

        resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)  # a path that is no checkpoint fails now


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_location(location: str) -> None:
    path = Path(location)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"--pretrained_model_name_or_path {location}: no model_index.json there; point it at "
                             "the FLUX.1 folder in the diffusers layout (the one holding transformer/, vae/, ...)")
        return
    if location.startswith(("/", ".", "~")) or not HUB_NAME.match(location):
        raise UsageError(f"--pretrained_model_name_or_path {location}: no such folder. Download FLUX.1-dev "
                         "(diffusers layout) and pass its path, or omit the flag for the built-in demo")


def transformer_targets(args: argparse.Namespace) -> list[str]:
    return args.lora_layers.split(",") if args.lora_layers else list(DEFAULT_TRANSFORMER_TARGETS)
