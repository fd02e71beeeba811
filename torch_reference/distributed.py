"""Data parallelism for the torch trainer: one process per device, started by torchrun.

`torchrun --nproc_per_node=N -m torch_reference.train ...` starts N copies of the trainer. Each one
trains on its own slice of every global batch (`DreamBoothData.batch(..., rank)`), and the copies
average their gradients before the optimizer step, so all of them hold the same LoRA weights at every
step. Started without torchrun, everything here is a no-op and the trainer runs as one process.
mindspore_impl/distributed.py is the same module for msrun.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist

from fluxlora import agreement

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
    """The same seed and checkpoint in every process (fluxlora.agreement), over this framework's collectives."""
    if active():
        agreement.agree_on_start(args, rank, from_rank_0, sum_over_processes)


def barrier() -> None:
    dist.barrier()


def finish() -> None:
    """Wait for rank 0 to write the LoRA file, so no process reports done before the output exists."""
    if not active():
        return
    barrier()
    dist.destroy_process_group()
