"""Training data: the regions to train on, their four year images, and the input pipeline.

- `training_regions` reads the fetch manifests (`tiles/manifests/<YEAR>_<ZZ>.parquet`) and
  keeps every region with an `ok` row in *all* training years, joined to the grid's
  footprints (for the neutral pairs). Order is by region id, so indices are stable.
- `RegionYearsDataset`: one item = one region's Y images, decoded and resized in a
  DataLoader worker to `size` x `size` uint8 by `earthloc.images.load_rgb`, the decoder
  evaluation uses too. Images travel as uint8 (4x less shared memory than upstream's
  float32) and become float on the training device.
- `loader` builds a DataLoader over an explicit list of batches (each a list of dataset
  indices), so which regions a batch holds is decided by `earthloc.batches` (a pure
  function of seed and iteration), never by the loader's iterator state.

Inputs are validated: a missing file fails before training starts, a corrupt one fails
with an `InputError` naming the file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from earthloc.images import load_rgb
from pipeline.errors import InputError
from pipeline.io import read_geoparquet
from pipeline.schema import DATABASE_YEARS

YEARS: tuple[int, ...] = DATABASE_YEARS  # the years a training region has images of


# -- which regions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRegions:
    """The training set: N regions, each with one image path per year (relative to `tiles_root`)."""

    tiles_root: Path
    years: tuple[int, ...]
    region_ids: npt.NDArray[np.str_]  # (N,)
    zooms: npt.NDArray[np.int64]  # (N,)
    paths: npt.NDArray[np.object_]  # (N, Y) relative paths
    footprints: npt.NDArray[np.object_]  # (N,) shapely geometries, EPSG:4326, split at ±180

    def __len__(self) -> int:
        return len(self.region_ids)

    def abs_path(self, i: int, y: int) -> Path:
        return self.tiles_root / str(self.paths[i, y])

    def year_index(self, year: int) -> int:
        return self.years.index(year)


def _read_manifests(tiles_root: Path, years: Sequence[int]) -> pd.DataFrame:
    frames = []
    for year in years:
        # `<YEAR>_<ZZ>.parquet` only: `<YEAR>_<ZZ>.tiles.parquet` is the per-tile manifest.
        for path in sorted((tiles_root / "manifests").glob(f"{year}_[0-9][0-9].parquet")):
            try:
                df = pd.read_parquet(path, columns=["region_id", "year", "zoom", "path", "status"])
            except Exception as exc:  # pyarrow raises many types; report one line
                raise InputError(f"{path}: unreadable manifest ({exc})") from exc
            frames.append(df)
    if not frames:
        raise InputError(
            f"{tiles_root / 'manifests'}: no manifests for years {list(years)} (run the fetch stage first)"
        )
    return pd.concat(frames, ignore_index=True)


def training_regions(
    tiles_root: str | Path,
    regions_path: str | Path,
    years: Sequence[int] = YEARS,
    *,
    check_files: bool = True,
) -> TrainingRegions:
    """Regions with an ok image in every year, sorted by region id, with their footprints."""
    root = Path(tiles_root)
    years = tuple(int(y) for y in years)
    man = _read_manifests(root, years)
    ok = man[man["status"] == "ok"].drop_duplicates(["region_id", "year"], keep="last")
    wide = ok.pivot(index="region_id", columns="year", values="path")
    wide = wide.reindex(columns=list(years)).dropna().sort_index()
    if wide.empty:
        raise InputError(f"{root}: no region has an ok image in all of {list(years)}")
    grid = read_geoparquet(regions_path, columns=["region_id", "zoom", "geometry"]).set_index("region_id")
    unknown = wide.index.difference(grid.index)
    if len(unknown):
        raise InputError(f"{regions_path}: {len(unknown)} fetched regions are not in the grid (e.g. {unknown[0]})")
    grid = grid.loc[wide.index]
    paths = wide.to_numpy(dtype=object)
    if check_files:
        for rel in paths.ravel():
            if not (root / rel).is_file():
                raise InputError(f"{root / rel}: training image listed as ok in the manifest is missing")
    return TrainingRegions(
        tiles_root=root,
        years=years,
        region_ids=wide.index.to_numpy(dtype=str),
        zooms=grid["zoom"].to_numpy(dtype=np.int64),
        paths=paths,
        footprints=grid.geometry.to_numpy(dtype=object),
    )


class RegionItem(NamedTuple):
    images: torch.Tensor  # (Y, 3, S, S) uint8
    index: int  # type: ignore[assignment]  # training-region index; the field shadows tuple.index on purpose


class RegionBatch(NamedTuple):
    images: torch.Tensor  # (R, Y, 3, S, S) uint8
    region_index: torch.Tensor  # (R,) long


class RegionYearsDataset(Dataset[RegionItem]):
    """Item i = the Y year images of training region i (years in `regions.years` order)."""

    def __init__(
        self, regions: TrainingRegions, size: int, *, years: Sequence[int] | None = None, draft: bool = True
    ) -> None:
        self.regions = regions
        self.size = size
        self.draft = draft
        self.year_idx = [regions.year_index(y) for y in (years if years is not None else regions.years)]

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, i: int) -> RegionItem:
        imgs = [load_rgb(self.regions.abs_path(i, y), self.size, draft=self.draft) for y in self.year_idx]
        arr = np.stack(imgs).transpose(0, 3, 1, 2)  # (Y, 3, S, S)
        return RegionItem(torch.from_numpy(np.ascontiguousarray(arr)), int(i))


def collate_regions(items: Sequence[RegionItem]) -> RegionBatch:
    return RegionBatch(
        torch.stack([it.images for it in items]), torch.tensor([it.index for it in items], dtype=torch.long)
    )


class FixedBatches(Sampler[list[int]]):
    """Yields the given batches in order: the batch schedule is decided outside the loader."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(map(int, b)) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in each worker from torch's per-worker seed (itself derived from
    the loader's generator), so any randomness a worker ever uses is reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def loader(
    dataset: Dataset[RegionItem],
    batches: Sequence[Sequence[int]],
    *,
    num_workers: int,
    seed: int,
    prefetch_factor: int = 2,
) -> DataLoader[RegionItem]:
    """A DataLoader that decodes the given batches in `num_workers` processes, in order."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=FixedBatches(batches),
        num_workers=num_workers,
        collate_fn=collate_regions,
        worker_init_fn=_seed_worker,
        generator=gen,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
    )


def one_line(exc: BaseException) -> str:
    """The last line of an error re-raised from a DataLoader worker (which prepends a traceback)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    prefix = "pipeline.errors.InputError: "
    return last[len(prefix) :] if last.startswith(prefix) else last
