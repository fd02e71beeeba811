"""Data parallelism for the MindSpore trainer: one process per device, started by msrun.

`msrun --worker_num=N --local_worker_num=N --master_port=P --join=True python -m mindspore_impl.train ...`
starts N workers (and one scheduler process running the same command). Each worker trains on its own
slice of every global batch (`DreamBoothData.batch(..., rank)`), and the workers average their
gradients before the optimizer step, so all of them hold the same LoRA weights at every step. Started
without msrun, everything here is a no-op and the trainer runs as one process.
torch_reference/distributed.py is the same module for torchrun.
"""

from __future__ import annotations

import os
from typing import Callable

import mindspore as ms
from mindspore import ops

from fluxlora import agreement
from fluxlora.args import UsageError

AllReduce = Callable[[dict[str, ms.Tensor]], dict[str, ms.Tensor]]
# a two-process CPU all-reduce of one float fails there ("Launch kernel failed, name:Default/AllReduce-op0")
# and works on 2.7.0, 2.7.1 and 2.7.2 (tests/test_distributed.py::test_mindspore_cpu_all_reduce)
CPU_ALL_REDUCE_BROKEN = {"2.7.1.post1"}


def launched() -> bool:
    """msrun exports MS_ROLE (MS_WORKER, or MS_SCHED for its scheduler) to every process it starts.

    Ascend's older rank-table launch sets RANK_TABLE_FILE and RANK_SIZE instead; it counts too, since
    missing it would run N independent trainers writing one output folder (untested here: no Ascend)."""
    if os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED"):
        return True
    return bool(os.environ.get("RANK_TABLE_FILE")) and int(os.environ.get("RANK_SIZE", "1")) > 1


def setup(device: str) -> tuple[int, int, AllReduce | None]:
    """(rank, world size, gradient averaging or None): join the cluster if msrun started us.

    Call after `select_device`: `init()` picks HCCL, NCCL or the CPU collectives from the device target
    already set. In msrun's scheduler process `init()` serves the cluster and ends the process there,
    so the scheduler never loads a model."""
    if not launched():
        return 0, 1, None
    if device == "CPU" and ms.__version__ in CPU_ALL_REDUCE_BROKEN:
        raise UsageError(f"MindSpore {ms.__version__} cannot all-reduce between CPU processes (its AllReduce "
                         "kernel fails to launch): install mindspore 2.7.1 or 2.7.2, or train in one process")
    from mindspore.communication import get_group_size, get_rank, init

    init()
    world_size = get_group_size()
    return get_rank(), world_size, average_gradients if world_size > 1 else None


def active() -> bool:
    from mindspore.communication import GlobalComm

    return GlobalComm.INITED


def average_gradients(grads: dict[str, ms.Tensor]) -> dict[str, ms.Tensor]:
    """The mean of each gradient over all processes, in one all-reduce of one flat fp32 buffer.

    One message instead of one per LoRA matrix; fp32 so that half-precision gradients are not summed
    in half precision."""
    from mindspore.communication import get_group_size

    names = list(grads)
    flat = ops.cat([grads[n].reshape(-1).astype(ms.float32) for n in names])
    flat = ops.AllReduce(ops.ReduceOp.SUM)(flat) / get_group_size()
    averaged, offset = {}, 0
    for name in names:
        size = grads[name].size
        # slices, not ops.split: the split kernels that take a size list are missing on MindSpore CPU
        averaged[name] = flat[offset : offset + size].reshape(grads[name].shape).astype(grads[name].dtype)
        offset += size
    return averaged


def sum_over_processes(value: int) -> int:
    """The sum of a small integer over all processes. MindSpore's CPU AllReduce does only float32 sums;
    float32 holds integers exactly below 2**24."""
    if not 0 <= value < 2**24:
        raise ValueError(f"{value}: outside what a float32 all-reduce sums exactly")
    return round(float(ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor([value], ms.float32)).asnumpy()[0]))


def from_rank_0(value: int, rank: int) -> int:
    """Rank 0's value of a non-negative integer below 2**32 on every process (a seed, a step): a sum in which
    the others add 0, sent in 16-bit halves because float32 is exact only below 2**24."""
    mine = value if rank == 0 else 0
    return (sum_over_processes(mine >> 16) << 16) | sum_over_processes(mine & 0xFFFF)


def agree_on_start(args, rank: int) -> None:
    """The same seed and checkpoint in every process (fluxlora.agreement), over this framework's collectives."""
    if active():
        agreement.agree_on_start(args, rank, from_rank_0, sum_over_processes)


def barrier() -> None:
    """An all-reduce of one number, waited for: MindSpore's Barrier kernel is missing on CPU."""
    sum_over_processes(0)


def finish() -> None:
    """Wait for rank 0 to write the LoRA file, so no process reports done before the output exists."""
    if active():
        barrier()
