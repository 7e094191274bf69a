"""Descriptors of whole image sets under the current weights, for re-clustering and relevance weights.

Both the loop (k-means of the 2021 region descriptors) and objectives (photo descriptors
for AstroLoc's cluster weights) embed every image of a set in eval mode, without TTA;
under DDP each rank embeds a contiguous share and the shares are all-gathered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset

from earthloc.augment import normalize, to_float
from earthloc.data import RegionYearsDataset, TrainingRegions, loader, one_line
from earthloc.distributed import Dist, gather_rows
from earthloc.model import ModelConfig, unwrap
from pipeline.errors import InputError


@dataclass(frozen=True)
class EmbedContext:
    """How to embed a set: the model's input side, batching, loader workers, device and process group."""

    image_size: int
    batch_size: int
    num_workers: int
    seed: int
    device: torch.device
    dist: Dist = Dist()


@torch.no_grad()
def embed_year(
    model: torch.nn.Module, regions: TrainingRegions, year: int, ctx: EmbedContext
) -> npt.NDArray[np.float32]:
    """(N, D) float32 descriptors of every training region's `year` image."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    d, device = ctx.dist, ctx.device
    ds = RegionYearsDataset(regions, ctx.image_size, years=[year])
    shares = np.array_split(np.arange(len(regions)), d.world_size)
    mine = shares[d.rank]
    batches = [mine[i : i + ctx.batch_size].tolist() for i in range(0, len(mine), ctx.batch_size)]
    out = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        for batch in loader(ds, batches, num_workers=ctx.num_workers, seed=ctx.seed):
            x = normalize(to_float(batch.images[:, 0].to(device, non_blocking=True)))
            with autocast:
                out.append(net(x).float())
    except InputError as exc:
        raise InputError(one_line(exc)) from exc
    finally:
        net.train(was_training)
    dim = cast(ModelConfig, net.cfg).descriptor_dim
    local = torch.cat(out) if out else torch.zeros(0, dim, device=device)
    return gather_rows(local, [len(s) for s in shares], d).cpu().numpy().astype(np.float32)


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: Dataset[torch.Tensor], ctx: EmbedContext) -> npt.NDArray[np.float32]:
    """(Q, D) descriptors of a dataset of (3, S, S) uint8 images, in one process."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    out = []
    try:
        for x in DataLoader(images, batch_size=ctx.batch_size, num_workers=0):
            out.append(net(normalize(to_float(x.to(ctx.device)))).float().cpu())
    finally:
        net.train(was_training)
    return (
        torch.cat(out).numpy().astype(np.float32)
        if out
        else np.zeros((0, cast(ModelConfig, net.cfg).descriptor_dim), np.float32)
    )
