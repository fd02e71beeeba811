"""Data parallelism for the torch trainer: one process per device, started by torchrun.

`torchrun --nproc_per_node=N -m torch_reference.train ...` starts N copies of the trainer. Each one
trains on its own slice of every global batch (`DreamBoothData.batch(..., rank)`), and the copies
average their gradients before the optimizer step, so all of them hold the same LoRA weights at every
step. Started without torchrun, everything here is a no-op and the trainer runs as one process.
mindspore_impl/distributed.py is the same module for msrun.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import torch
import torch.distributed as dist

from fluxlora.args import UsageError
from fluxlora.checkpoints import resolve_checkpoint
from fluxlora.run import choose_seed

AllReduce = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def launched() -> bool:
    """torchrun exports RANK and WORLD_SIZE to every process it starts."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[int, int, AllReduce | None]:
    """(rank, world size, gradient averaging or None): join the process group if torchrun started us."""
    if not launched():
        return 0, 1, None
    if device.type == "cuda":
        # before any CUDA work: one GPU per process, and NCCL uses the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world_size = dist.get_world_size()
    return dist.get_rank(), world_size, average_gradients if world_size > 1 else None


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def communication_device() -> torch.device:
    """NCCL moves only CUDA tensors, gloo only CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of each gradient over all processes, in one all-reduce of one flat fp32 buffer.

    One message instead of one per LoRA matrix; fp32 so that bf16 gradients are not summed in bf16."""
    names = list(grads)
    flat = torch.cat([grads[n].reshape(-1).to(torch.float32) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # ReduceOp.AVG exists only for NCCL
    flat /= dist.get_world_size()
    averaged, offset = {}, 0
    for name in names:
        size = grads[name].numel()
        averaged[name] = flat[offset : offset + size].view_as(grads[name]).to(grads[name].dtype)
        offset += size
    return averaged


def sum_over_processes(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=communication_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def from_rank_0(value: int, rank: int) -> int:
    """Rank 0's value of an integer (a seed, a step) on every process."""
    tensor = torch.tensor([value], dtype=torch.int64, device=communication_device())
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def agree_on_start(args, rank: int) -> None:
    """Make every process start from the same seed and checkpoint, or stop with a clear error.

    The same seed also gives every process the same initial LoRA weights: train() seeds the framework's
    generator with it before injecting LoRA."""
    if active():
        share_seed(args, rank)
        check_same_checkpoint(args, rank)


def share_seed(args, rank: int) -> None:
    """Without --seed each process would draw its own seed, and with it its own data order and noise."""
    if args.seed is not None:  # every process parsed the same command line
        return
    args.seed = from_rank_0(choose_seed(args) if rank == 0 else 0, rank)


def check_same_checkpoint(args, rank: int) -> None:
    """Every process resolves --resume_from_checkpoint itself (train() does it again): all must find rank 0's.

    They differ when --output_dir is not one filesystem that all see (a node finds no checkpoint), and
    would then train different steps and hang in an all-reduce. No barrier is needed against rank 0
    writing meanwhile: it writes (or deletes) a checkpoint only after its first gradient all-reduce,
    which every process reaches only after loading its checkpoint."""
    found = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    mine = checkpoint_step(found)
    expected = from_rank_0(mine, rank)
    disagreeing = sum_over_processes(int(mine != expected))
    if disagreeing:
        raise UsageError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {disagreeing} process(es) found "
                         f"another checkpoint in {args.output_dir} than process 0, which resumes at step {expected} "
                         f"(process {rank}: step {mine}). Put --output_dir on a filesystem every node sees")


def checkpoint_step(folder) -> int:
    """The step a resume starts at; 0 for a new run."""
    if folder is None:
        return 0
    return int(json.loads((folder / "state.json").read_text())["step"])


def barrier() -> None:
    dist.barrier()


def finish() -> None:
    """Wait for rank 0 to write the LoRA file, so no process reports done before the output exists."""
    if not active():
        return
    barrier()
    dist.destroy_process_group()
