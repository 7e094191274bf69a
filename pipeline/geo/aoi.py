"""Areas of interest: the discs of the world whose pixels a run fetches (pure, no I/O).

The geometry stages run on the whole world; fetching pixels for the whole world takes
days (docs/sources.md), so the pixel stages take regions inside a list of discs. A region is
inside a disc when its centre lies strictly within the radius (haversine, R = 6371 km):
the same rule as an evaluation set's database, so an evaluation set with the same POI
and `db_radius_km` equal to the disc's radius has exactly the fetched regions.

A disc may name the years it is fetched for: the evaluation database needs only the
database year, while training needs every year, so a wide 2021-only disc (the evaluation
database) can sit beside a small all-years one (the training area) without fetching the
wide one four times. It may also name the zooms it is fetched at: an evaluation database
of one zoom covers a wide disc with a quarter of the regions of three zooms, so the
demo's database can reach far enough for a low base rate within the time budget.

Every selection of fetched regions (the fetch shards, `fetch --plan`) goes through
`aois_for`, so they agree on which (year, zoom) a disc covers."""

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
    """A disc: centre (lat, lon) in degrees, radius in km; `years` and `zooms` it is fetched
    for (None: every year / zoom the run fetches)."""

    name: str
    lat: float
    lon: float
    radius_km: float
    years: tuple[int, ...] | None = None
    zooms: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.lat, self.lon, self.radius_km)):
            raise ValueError(f"aoi {self.name}: lat, lon and radius_km must be finite numbers")
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"aoi {self.name}: centre ({self.lat}, {self.lon}) outside the globe")
        if self.radius_km <= 0:
            raise ValueError(f"aoi {self.name}: radius_km must be positive")
        if self.years is not None and not self.years:
            raise ValueError(f"aoi {self.name}: years must be a non-empty list (or absent for every year)")
        if self.zooms is not None and (not self.zooms or any(not 0 <= z <= 30 for z in self.zooms)):
            raise ValueError(
                f"aoi {self.name}: zooms must be a non-empty list of zooms 0..30 (or absent for every zoom)"
            )

    def fetched_in(self, year: int) -> bool:
        return self.years is None or year in self.years

    def fetched_at(self, zoom: int) -> bool:
        return self.zooms is None or zoom in self.zooms

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_name: str = "aoi") -> Aoi:
        missing = {"lat", "lon", "radius_km"} - set(d)
        if missing:
            raise ValueError(f"aoi lacks {sorted(missing)}")
        name = str(d.get("name", default_name))
        unknown = set(d) - {"name", "lat", "lon", "radius_km", "years", "zooms"}
        if unknown:
            raise ValueError(f"aoi {name}: unknown key(s) {sorted(unknown)}")
        years = _int_list(d.get("years"), name, "years")
        zooms = _int_list(d.get("zooms"), name, "zooms")
        return cls(name, float(d["lat"]), float(d["lon"]), float(d["radius_km"]), years, zooms)


def _int_list(raw: Any, name: str, key: str) -> tuple[int, ...] | None:
    """A sorted, de-duplicated tuple of the integers of a params list; None when absent.
    Zooms are often written with two digits ("09"), so integer strings are read base 10;
    anything else (a bare number, a float, a word) is refused."""
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ValueError(f"aoi {name}: {key} must be a list of integers, got {raw!r}")
    out: set[int] = set()
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"aoi {name}: {key} must be a list of integers, got {v!r}")
        try:
            out.add(int(v, 10) if isinstance(v, str) else v)
        except ValueError:
            raise ValueError(f"aoi {name}: {key} must be a list of integers, got {v!r}") from None
    return tuple(sorted(out))


def aois_for(aois: Sequence[Aoi] | None, year: int | None = None, zoom: int | None = None) -> tuple[Aoi, ...] | None:
    """The discs fetched for `year` at `zoom` (None: any); None (the whole world) stays None."""
    if aois is None:
        return None
    return tuple(a for a in aois if (year is None or a.fetched_in(year)) and (zoom is None or a.fetched_at(zoom)))


def aois_for_year(aois: Sequence[Aoi] | None, year: int) -> tuple[Aoi, ...] | None:
    """The discs fetched for `year`; None (the whole world) stays None."""
    return aois_for(aois, year=year)


def in_aois(lat: npt.ArrayLike, lon: npt.ArrayLike, aois: Sequence[Aoi] | None) -> npt.NDArray[np.bool_]:
    """Mask of points inside any disc; `None` means the whole world (all True)."""
    lat_a = np.asarray(lat, dtype=np.float64)
    if aois is None:
        return np.ones(lat_a.shape, dtype=bool)
    mask = np.zeros(lat_a.shape, dtype=bool)
    for a in aois:
        mask |= haversine_km(a.lat, a.lon, lat_a, lon) < a.radius_km
    return mask
