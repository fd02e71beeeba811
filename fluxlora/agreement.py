"""What every data-parallel process must agree on before training, whatever the framework.

Both trainers' `distributed.agree_on_start` call `agree_on_start` here with their own two collectives:
`from_rank_0(value, rank)` (rank 0's integer on every process) and `sum_over_processes(value)`.
"""

from __future__ import annotations

from typing import Callable

from .args import UsageError
from .checkpoints import checkpoint_step, resolve_checkpoint
from .run import choose_seed

FromRank0 = Callable[[int, int], int]
SumOverProcesses = Callable[[int], int]


def agree_on_start(args, rank: int, from_rank_0: FromRank0, sum_over_processes: SumOverProcesses) -> None:
    """Make every process start from the same seed and checkpoint, or stop with a clear error.

    The same seed also gives every process the same initial LoRA weights: train() seeds the framework's
    generator with it before injecting LoRA."""
    share_seed(args, rank, from_rank_0)
    check_same_checkpoint(args, rank, from_rank_0, sum_over_processes)


def share_seed(args, rank: int, from_rank_0: FromRank0) -> None:
    """Without --seed each process would draw its own seed, and with it its own data order and noise."""
    if args.seed is not None:  # every process parsed the same command line
        return
    args.seed = from_rank_0(choose_seed(args) if rank == 0 else 0, rank)


def check_same_checkpoint(args, rank: int, from_rank_0: FromRank0, sum_over_processes: SumOverProcesses) -> None:
    """Every process resolves --resume_from_checkpoint itself (train() does it again): all must find rank 0's.

    They differ when --output_dir is not one filesystem that all see (a node finds no checkpoint), and
    would then train different steps and hang in an all-reduce. No barrier is needed against rank 0
    writing meanwhile: it writes (or deletes) a checkpoint only after its first gradient all-reduce,
    which every process reaches only after loading its checkpoint."""
    mine = checkpoint_step(resolve_checkpoint(args.resume_from_checkpoint, args.output_dir))
    expected = from_rank_0(mine, rank)
    disagreeing = sum_over_processes(int(mine != expected))
    if disagreeing:
        raise UsageError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {disagreeing} process(es) found "
                         f"another checkpoint in {args.output_dir} than process 0, which resumes at step {expected} "
                         f"(process {rank}: step {mine}). Put --output_dir on a filesystem every node sees")
