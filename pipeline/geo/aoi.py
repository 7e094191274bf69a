"""Areas of interest: the discs of the world whose pixels a run fetches (pure, no I/O).

The geometry stages run on the whole world; fetching pixels for the whole world takes
days (docs/sources.md), so the pixel stages take regions inside a list of discs. A region is
inside a disc when its centre lies strictly within the radius (haversine, R = 6371 km):
the same rule as an evaluation set's database, so an evaluation set with the same POI
and `db_radius_km` equal to the disc's radius has exactly the fetched regions.

A disc may name the years it is fetched for: the evaluation database needs only the
database year, while training needs every year, so a wide 2021-only disc (the evaluation
database) can sit beside a small all-years one (the training area) without fetching the
wide one four times."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.geo.distance import haversine_km


@dataclass(frozen=True)
class Aoi:
    """A disc: centre (lat, lon) in degrees, radius in km; `years` it is fetched for
    (None: every year the run fetches)."""

    name: str
    lat: float
    lon: float
    radius_km: float
    years: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.lat, self.lon, self.radius_km)):
            raise ValueError(f"aoi {self.name}: lat, lon and radius_km must be finite numbers")
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"aoi {self.name}: centre ({self.lat}, {self.lon}) outside the globe")
        if self.radius_km <= 0:
            raise ValueError(f"aoi {self.name}: radius_km must be positive")
        if self.years is not None and not self.years:
            raise ValueError(f"aoi {self.name}: years must be a non-empty list (or absent for every year)")

    def fetched_in(self, year: int) -> bool:
        return self.years is None or year in self.years

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_name: str = "aoi") -> Aoi:
        missing = {"lat", "lon", "radius_km"} - set(d)
        if missing:
            raise ValueError(f"aoi lacks {sorted(missing)}")
        unknown = set(d) - {"name", "lat", "lon", "radius_km", "years"}
        if unknown:
            raise ValueError(f"aoi {d.get('name', default_name)}: unknown key(s) {sorted(unknown)}")
        raw_years = d.get("years")
        if raw_years is not None and (isinstance(raw_years, (str, bytes)) or not isinstance(raw_years, Sequence)):
            raise ValueError(f"aoi {d.get('name', default_name)}: years must be a list of integers, got {raw_years!r}")
        years = None if raw_years is None else tuple(sorted({int(y) for y in raw_years}))
        name = str(d.get("name", default_name))
        return cls(name, float(d["lat"]), float(d["lon"]), float(d["radius_km"]), years)


def aois_for_year(aois: Sequence[Aoi] | None, year: int) -> tuple[Aoi, ...] | None:
    """The discs fetched for `year`; None (the whole world) stays None."""
    return None if aois is None else tuple(a for a in aois if a.fetched_in(year))


def in_aois(lat: npt.ArrayLike, lon: npt.ArrayLike, aois: Sequence[Aoi] | None) -> npt.NDArray[np.bool_]:
    """Mask of points inside any disc; `None` means the whole world (all True)."""
    lat_a = np.asarray(lat, dtype=np.float64)
    if aois is None:
        return np.ones(lat_a.shape, dtype=bool)
    mask = np.zeros(lat_a.shape, dtype=bool)
    for a in aois:
        mask |= haversine_km(a.lat, a.lon, lat_a, lon) < a.radius_km
    return mask
