"""Upstream EarthLoc file names and folders (docs/upstream.md §1), built and parsed.

Database: `database/<YEAR>_<ZZ>/<LATBIN>_<LONBIN>/@lat1@lon1@...@lon4@<ZZ_RRRR_CCCC>@<YEAR>@<lat>@<lon>@<km2>@0@.jpg`
Query:    `@lat1@lon1@...@lon4@<MISSION-ROLL-FRAME>@<YYYYMMDD>@<nadir lat>@<nadir lon>@<km2>@<orientation>@.jpg`
Corners are LL, UL, UR, LR (lat, lon pairs); database corners have 5 decimals,
query corners 6, query nadir 1; the area is an int; database orientation is `0`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from pipeline.schema import DATABASE_YEAR

# Characters allowed in a query id: nothing that is a path separator, `@` (the field
# separator of the names) or anything a shell or file system treats specially.
SAFE_ID_RE = re.compile(r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$")


def latlon_bin(lat: float, lon: float) -> str:
    """`LATBIN_LONBIN`: each value rounded to a multiple of 10 with Python's
    round-half-to-even, as upstream does (45 -> 40, 55 -> 60, -5 -> 0, never "-0")."""
    return f"{int(round(lat, -1))}_{int(round(lon, -1))}"


def _corners(corners: Sequence[float], decimals: int) -> str:
    if len(corners) != 8:
        raise ValueError(f"need 8 corner values (lat, lon x 4), got {len(corners)}")
    return "@".join(f"{v:.{decimals}f}" for v in corners)


def db_filename(
    corners: Sequence[float], region_id: str, year: int, center_lat: float, center_lon: float, area_km2: float
) -> str:
    return f"@{_corners(corners, 5)}@{region_id}@{year}@{center_lat:.5f}@{center_lon:.5f}@{int(round(area_km2))}@0@.jpg"


def db_relpath(
    corners: Sequence[float],
    region_id: str,
    zoom: int,
    year: int,
    center_lat: float,
    center_lon: float,
    area_km2: float,
) -> str:
    """Database path relative to the data root, with POSIX separators."""
    name = db_filename(corners, region_id, year, center_lat, center_lon, area_km2)
    return f"database/{year}_{zoom:02d}/{latlon_bin(center_lat, center_lon)}/{name}"


def query_filename(
    corners: Sequence[float],
    query_id: str,
    date: str,
    nadir_lat: float,
    nadir_lon: float,
    area_km2: float,
    orientation_raw: str,
) -> str:
    if not SAFE_ID_RE.match(query_id):
        raise ValueError(f"unsafe query id {query_id!r}")
    return (
        f"@{_corners(corners, 6)}@{query_id}@{date}@{nadir_lat:.1f}@{nadir_lon:.1f}"
        f"@{int(round(area_km2))}@{orientation_raw}@.jpg"
    )


class ParsedName(NamedTuple):
    """Fields of an upstream database or query file name."""

    corners: tuple[float, ...]  # lat1, lon1, ..., lat4, lon4 (LL, UL, UR, LR)
    image_id: str
    time: str
    year: int
    nadir_lat: float
    nadir_lon: float
    area_km2: int
    orientation: str


def parse_filename(name: str) -> ParsedName:
    """Parse a file name (a bare name, or a path whose last component is used)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    tokens = base.split("@")
    if len(tokens) != 16 or tokens[0] != "" or tokens[15] != ".jpg":
        raise ValueError(f"not an EarthLoc file name: {name!r}")
    year = int(tokens[10][:4])
    if not 1900 < year < 2100:
        raise ValueError(f"implausible year in {name!r}")
    return ParsedName(
        corners=tuple(float(t) for t in tokens[1:9]),
        image_id=tokens[9],
        time=tokens[10],
        year=year,
        nadir_lat=float(tokens[11]),
        nadir_lon=float(tokens[12]),
        area_km2=int(tokens[13]),
        orientation=tokens[14],
    )


def swap_year(relpath: str, year: int) -> str:
    """The year-`year` copy of a 2021 database path: folder `<Y>_ZZ` and `@<Y>@` change.

    Unlike upstream's substring replace, only the year folder and the year token of
    the file name are touched, and a non-2021 source is an error, not a no-op."""
    parts = relpath.split("/")
    if len(parts) != 4 or parts[0] != "database":
        raise ValueError(f"not a database path: {relpath!r}")
    folder_year, zz = parts[1].split("_")
    parsed = parse_filename(parts[3])
    if int(folder_year) != parsed.year:
        raise ValueError(f"folder year and file year differ in {relpath!r}")
    if parsed.year != DATABASE_YEAR:
        raise ValueError(f"not a {DATABASE_YEAR} database path: {relpath!r}")
    tokens = parts[3].split("@")
    tokens[10] = str(year)
    return f"database/{year}_{zz}/{parts[2]}/{'@'.join(tokens)}"
