"""Helpers shared by several test modules (imported as `support`)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pyproj
import shapely

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CSV = ROOT / "data" / "inputs" / "metadata_queries_images.csv"
GEOD = pyproj.Geod(ellps="WGS84")


def geod_km2(geom: shapely.Geometry, step: float = 0.01) -> float:
    """Reference area: pyproj.Geod on the geometry segmentized to `step` degrees, so the
    geodesic edges follow the lon/lat-straight ones."""
    total = 0.0
    for part in shapely.get_parts(shapely.segmentize(geom, step)):
        a, _ = GEOD.geometry_area_perimeter(part)
        total += abs(a)
    return total / 1e6


def nasa_rows(dest: Path, keep: Callable[[float, float], bool], n: int | None = None) -> int:
    """Header + the real NASA rows whose nadir (lat, lon) satisfies `keep` (the first `n` of
    them when `n` is given), written to `dest`; returns how many rows were written."""
    with open(SOURCE_CSV, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        ilat, ilon = header.index("NADIR_LAT"), header.index("NADIR_LON")
        rows = []
        for rec in reader:
            try:
                lat, lon = float(rec[ilat]), float(rec[ilon])
            except (ValueError, IndexError):
                continue
            if keep(lat, lon):
                rows.append(rec)
                if len(rows) == n:
                    break
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return len(rows)


def texas_csv(dest: Path, n: int) -> Path:
    """Header + the first `n` real rows whose nadir lies in Texas/Louisiana/Gulf."""
    got = nasa_rows(dest, lambda lat, lon: 26 <= lat <= 34 and -99 <= lon <= -91, n)
    assert got == n, f"only {got} rows near Texas in {SOURCE_CSV}"
    return dest
