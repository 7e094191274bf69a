"""The process group of a DistributedDataParallel run, as the training loop and its objectives see it.

torchrun describes the group in the environment (WORLD_SIZE, RANK, LOCAL_RANK); alone, a
process is rank 0 of 1 and every collective below is a no-op, so single-process code and
DDP code are the same code."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun (or a test) describes in the environment; no-op alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local)


def gather_with_grad(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Every rank's `x` (equal shapes) concatenated in rank order, differentiable.

    The backward of the gather sums the gradient of all ranks (W times the gradient of
    one loss) and DDP averages over W: together exactly the single-process gradient."""
    if not d.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_rows(local: torch.Tensor, sizes: list[int], d: Dist) -> torch.Tensor:
    """Concatenate every rank's rows (rank r holds sizes[r] rows; sizes may differ), no grad."""
    if not d.enabled:
        return local
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    gathered = [torch.zeros_like(padded) for _ in range(d.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's `flag` on every rank."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
