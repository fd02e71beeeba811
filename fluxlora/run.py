"""What both trainers do around their loop, written once: the command line entry, the built-in
demo, the seed, and the plan mapping optimizer steps to micro-batches, checkpoints and validation."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .args import UsageError, parse_args
from .log import announce


def cli(argv: list[str] | None, prog: str):
    """Parse and validate, or print the one clear error and exit 2 (nothing has been written yet)."""
    try:
        return parse_args(sys.argv[1:] if argv is None else argv, prog=prog)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def fail(prog: str, error: Exception) -> None:
    print(f"{prog}: error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def settle_precision(args, on_cpu: bool, bf16_on_cpu: bool) -> None:
    """The demo on a CPU trains in fp32 unless told otherwise; a framework without CPU bf16 refuses it now."""
    if args.demo and on_cpu and not args.mixed_precision_explicit:
        args.mixed_precision = "no"
    if on_cpu and args.mixed_precision == "bf16" and not bf16_on_cpu:
        raise UsageError("--mixed_precision bf16 needs Ascend: MindSpore's CPU backend has no bf16 arithmetic. "
                         "Use --mixed_precision fp16 or no on this machine, bf16 on Ascend")


def model_location(args) -> str:
    """The FLUX.1 folder to load; for the built-in demo, the small local checkpoint (built once)."""
    if not args.demo:
        return args.pretrained_model_name_or_path
    from .tiny import cached_checkpoint

    location = str(cached_checkpoint("small", seed=0))
    announce("=" * 78 + "\nBUILT-IN DEMO: no --pretrained_model_name_or_path given, so this trains a LoRA on a\n"
             f"small FLUX.1-shaped model with random weights ({location})\n"
             f"and the bundled robot images ({args.instance_data_dir}).\n"
             f"Settings: resolution {args.resolution}, {args.max_train_steps} steps, "
             f"mixed precision '{args.mixed_precision}'. Pass --pretrained_model_name_or_path\n"
             "/path/to/FLUX.1-dev --instance_data_dir ... --instance_prompt ... for a real run.\n" + "=" * 78)
    return location


def choose_seed(args) -> int:
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        announce(f"no --seed given; using {args.seed} (saved in checkpoints, so resume continues it)")
    return args.seed


@dataclass
class TrainingPlan:
    batches_per_epoch: int
    accumulation: int
    total_steps: int
    checkpointing_steps: int
    validation_every: int | None  # optimizer steps between validations, None when no validation prompt

    @classmethod
    def of(cls, data, args) -> "TrainingPlan":
        steps_per_epoch = max(1, data.batches_per_epoch // args.gradient_accumulation_steps)
        total = args.max_train_steps or args.num_train_epochs * steps_per_epoch
        every = args.validation_epochs * steps_per_epoch if args.validation_prompt else None
        return cls(data.batches_per_epoch, args.gradient_accumulation_steps, total, args.checkpointing_steps, every)

    def micro_steps(self, step: int) -> list[int]:
        return [step * self.accumulation + k for k in range(self.accumulation)]

    def position(self, micro_step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of a micro-step."""
        return divmod(micro_step, self.batches_per_epoch)

    def checkpoint_due(self, done_steps: int) -> bool:
        return done_steps % self.checkpointing_steps == 0 and done_steps < self.total_steps

    def validation_due(self, done_steps: int) -> bool:
        # the last step's validation runs after the LoRA file is saved, not twice
        return self.validation_every is not None and done_steps % self.validation_every == 0 \
            and done_steps < self.total_steps
