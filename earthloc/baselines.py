"""Baselines of the evaluation table that need no learning: random choice, nadir, and a
grey thumbnail descriptor.

- random: the DB ranked uniformly at random. Its expected Recall@N is computed exactly
  (hypergeometric, `retrieval.recall.random_recall_curve`), uncollapsed (a random order of the
  4 rotated copies of every image, as upstream's list is) and collapsed (of images).
- nadir: what one knows without looking at the photo: the ISS was above the nadir point,
  so guess the regions under it. Ranking, per query: first the regions whose footprint
  contains the nadir point, coarsest zoom first (a zoom-9 region is 16x the area of a
  zoom-11 one, so it is the likeliest to overlap an oblique photo), then nearest centre;
  then every other region by distance from its centre to the nadir (haversine), coarser
  zoom first on ties. There is one entry per image (no rotations), so its collapsed and
  uncollapsed recalls are the same.
- thumbnail: the image itself as a descriptor: grey, averaged down to 16x16, standardised
  (zero mean, unit variance per image, so brightness and contrast do not count) and
  L2-normalised. It runs as a torch module through the same loading, 4x90° rotation and
  search path as the network, so it shows how far plain appearance matching goes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from earthloc.augment import IMAGENET_MEAN, IMAGENET_STD
from pipeline.geo.distance import haversine_km
from pipeline.geo.regions import parse_region_id, region_bounds

IntArray = npt.NDArray[np.int64]


def region_bounds_table(region_ids: npt.ArrayLike) -> pd.DataFrame:
    """west, south, east, north (degrees; east may exceed 180 for a region that wraps)
    and zoom of each region id."""
    parsed = np.array([parse_region_id(str(r)) for r in np.asarray(region_ids)], dtype=np.int64).reshape(-1, 3)
    b = region_bounds(parsed[:, 0], parsed[:, 1], parsed[:, 2])
    return pd.DataFrame({"zoom": parsed[:, 0], "west": b.west, "south": b.south, "east": b.east, "north": b.north})


def contains_point(bounds: pd.DataFrame, lat: float, lon: float) -> npt.NDArray[np.bool_]:
    """Which regions contain (lat, lon); longitudes compared modulo 360 (wrapping regions)."""
    west = bounds["west"].to_numpy()
    width = bounds["east"].to_numpy() - west
    dlon = np.mod(lon - west, 360.0)
    lat_ok = (bounds["south"].to_numpy() <= lat) & (lat <= bounds["north"].to_numpy())
    return lat_ok & (dlon <= width)


def nadir_ranking(
    nadir_lat: npt.ArrayLike,
    nadir_lon: npt.ArrayLike,
    db_center_lat: npt.ArrayLike,
    db_center_lon: npt.ArrayLike,
    bounds: pd.DataFrame,
    k: int,
) -> IntArray:
    """(M, k) DB indices ranked as the module docstring says; -1 pads a DB smaller than k."""
    nlat = np.asarray(nadir_lat, dtype=np.float64)
    nlon = np.asarray(nadir_lon, dtype=np.float64)
    clat = np.asarray(db_center_lat, dtype=np.float64)
    clon = np.asarray(db_center_lon, dtype=np.float64)
    zoom = bounds["zoom"].to_numpy()
    n = len(clat)
    out = np.full((len(nlat), k), -1, dtype=np.int64)
    for qi in range(len(nlat)):
        dist = haversine_km(nlat[qi], nlon[qi], clat, clon)
        inside = contains_point(bounds, nlat[qi], nlon[qi])
        # lexsort: last key is primary. Inside first, then zoom (containing only), then distance.
        zkey = np.where(inside, zoom, 0)
        order = np.lexsort((zoom, dist, zkey, ~inside))
        take = order[: min(k, n)]
        out[qi, : len(take)] = take
    return out


_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


class ThumbnailDescriptor(nn.Module):
    """(B, 3, H, W) ImageNet-normalised images -> (B, size²) descriptors: grey, area-averaged
    to size x size, standardised per image, L2-normalised. No parameters: nothing learned."""

    # Buffers registered in __init__, declared here so they are typed as tensors.
    mean: torch.Tensor
    std: torch.Tensor
    grey: torch.Tensor

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        if size < 2:
            raise ValueError("thumbnail size must be >= 2")
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("grey", torch.tensor(_GREY_WEIGHTS).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.float() * self.std + self.mean  # undo the loader's ImageNet normalisation
        grey = (rgb * self.grey).sum(dim=1, keepdim=True)
        thumb = F.adaptive_avg_pool2d(grey, self.size).flatten(1)
        thumb = thumb - thumb.mean(dim=1, keepdim=True)
        thumb = thumb / thumb.std(dim=1, keepdim=True).clamp_min(1e-6)
        return F.normalize(thumb, dim=1)
