"""Data-parallel training under torchrun: who we are, and the few collectives the training loop needs.

`torchrun --nproc-per-node N -m dropcheck train-compare ...` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; every process runs the same command, trains its share of each global batch
under DistributedDataParallel (gloo on CPU, nccl on GPU), and only rank 0 prints and writes.
Without those variables everything here is a no-op on one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun launch, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(rank=int(os.environ.get("RANK", "0")), size=size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each process takes the GPU of its local rank."""
    if not world.distributed:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        from datetime import timedelta

        # a rank that fails makes torchrun stop the others; the timeout bounds any wait that remains
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
    return device


def stop(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def sum_across(world: World, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (metrics: correct counts, loss sums, sample counts)."""
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def batch_order(world: World, shares: list[torch.Tensor]) -> torch.Tensor:
    """The global batches' indices, in order, from this rank's shares of them.

    Rank r holds the r-th contiguous share of every global batch, so gathering the (steps, share)
    blocks of all ranks and interleaving them per step gives the single-process order back.
    """
    mine = torch.stack(shares) if shares else torch.zeros(0, 0, dtype=torch.long)
    if not world.distributed:
        return mine.reshape(-1)
    import torch.distributed as dist

    blocks = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(blocks, mine)
    return torch.stack(blocks, dim=1).reshape(-1)


def broadcast_buffers(world: World, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, so all evaluate one model.

    DDP syncs buffers at the start of each forward, so after the last step they still differ."""
    if world.distributed:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
