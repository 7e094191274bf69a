"""Audit page: one self-contained HTML file per evaluation set, to look at retrieval results.

Pick a query (list + search box, or `#q=<query_id>` in the URL) and the map shows its
footprint (blue), its positives (thin green outlines) and its top-k predictions framed
green (the predicted region is a positive) or red (it is not), numbered by rank, next to
the query thumbnail, the predicted orientation and the photo's own orientation.

Everything the page needs is inside the file: Leaflet 1.9.4 (BSD-2-Clause, vendored in
`earthloc/assets/leaflet/`, inlined), the page's template, CSS and script
(`earthloc/assets/audit_page.html`, `.css`, `.js`, inlined), the data as JSON, thumbnails as JPEG data URIs, and
an offline background (a graticule drawn in the browser, coastlines from the GLOBE land
mask of `pipeline.presentation.coastlines`, and the database coverage in grey). No tile layer, no
CDN: the page makes no network request, so it works from a file:// URL or an archive.

Two entry points:
- `write_audit_page(dest, set_name, queries, regions, background=None, cfg=...)` takes
  plain values (`AuditQuery`, `Prediction`, region rings) so the evaluate stage can call
  it with what it has in memory;
- `audit_page_from_files(set_dir, predictions_parquet, regions_parquet, queries_dir, dest)`
  reads an evaluation set folder and the evaluate stage's per-query predictions Parquet
  (schema: `PREDICTION_COLUMNS`, see docs/audit_page.md).

Coordinates: rings are sequences of (lat, lon) corners (Leaflet's order), longitudes
unwrapped so a ring across ±180 stays contiguous (e.g. 179 -> 181, not -179).

Hostile data: ids, set names and orientations are text to the page. The JSON is escaped
for a <script> element (`script_json`), the script puts strings in the DOM as text, and a
`#q=` hash that does not decode or names no query is ignored.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.geo.regions import REGION_ID_RE
from pipeline.io import write_text
from pipeline.schema import CORNER_COLUMNS

LatLon = tuple[float, float]
Ring = Sequence[LatLon]  # (lat, lon) corners, not closed; lons unwrapped
Polyline = Sequence[LatLon]

PREDICTION_COLUMNS = {
    "query_index": "int64",  # queries.csv query_index
    "rank": "int64",  # 1 = best
    "db_index": "int64",  # database.csv db_index
    "region_id": "string",  # ZZ_RRRR_CCCC
    "score": "float64",  # similarity (inner product of L2-normalised descriptors)
    "angle_deg": "float64",  # rotation of the best-matching database image: 0/90/180/270
    "is_positive": "bool",  # region_id is one of the query's positives
}
LEAFLET_VERSION = "1.9.4"


# --------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Prediction:
    """One retrieved database region, in rank order."""

    region_id: str
    score: float
    angle_deg: float  # predicted orientation: the database rotation that matched best
    is_positive: bool


@dataclass(frozen=True)
class AuditQuery:
    """What the page shows for one query."""

    query_id: str
    footprint: Ring  # the photo's four corners (LL, UL, UR, LR as upstream orders them)
    positives: Sequence[str]  # region ids
    predictions: Sequence[Prediction]  # best first
    orientation: str = ""  # the photo's ORIENTATION from the metadata, as given
    nadir: LatLon | None = None
    thumbnail_jpeg: bytes | None = None  # small JPEG (see `thumbnail_jpeg`); None = no picture


@dataclass(frozen=True)
class Background:
    """Offline map background: coastline polylines and database coverage rings (grey)."""

    coastlines: Sequence[Polyline] = ()
    coverage: Sequence[Ring] = ()


@dataclass(frozen=True)
class AuditPageConfig:
    """The `audit_page` params section."""

    top_k: int = 10  # predictions drawn per query
    thumb_px: int = 128  # longest side of embedded query thumbnails
    thumb_quality: int = 65  # their JPEG quality
    max_thumbnails: int = 1000  # beyond this many queries, later ones get no picture (file size)
    coastlines: bool = True
    coastline_step_deg: float = 0.2  # land-mask block size the coastlines are contoured at
    simplify_deg: float = 0.05  # Douglas-Peucker tolerance for coastlines and coverage
    margin_deg: float = 5.0  # background drawn this far around the data
    region_tiles: int = 4  # grid.region_tiles: what a region id implies

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError("audit_page.top_k must be >= 1")
        if not 16 <= self.thumb_px <= 1024:
            raise ConfigError("audit_page.thumb_px must be in 16..1024")
        if not 1 <= self.thumb_quality <= 95:
            raise ConfigError("audit_page.thumb_quality must be in 1..95")
        if self.max_thumbnails < 0 or self.coastline_step_deg <= 0 or self.simplify_deg < 0:
            raise ConfigError("audit_page: max_thumbnails, coastline_step_deg, simplify_deg out of range")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> AuditPageConfig:
        names = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in (sec or {}).items() if k in names})
        except TypeError as exc:
            raise ConfigError(f"params audit_page: {exc}") from exc


# --------------------------------------------------------------------- helpers (pure)


def unwrap_ring(ring: Iterable[Sequence[float]]) -> list[LatLon]:
    """(lat, lon) ring with each longitude moved by ±360 to within 180° of the previous one."""
    out: list[LatLon] = []
    for lat, lon in ring:
        lat, lon = float(lat), float(lon)
        if out:
            prev = out[-1][1]
            lon = prev + ((lon - prev + 180.0) % 360.0 - 180.0)
        out.append((lat, lon))
    return out


def corners_ring(corners: Sequence[float]) -> list[LatLon]:
    """Ring of upstream's 8 corner values (lat1, lon1, ..., lat4, lon4)."""
    if len(corners) != 8:
        raise ValueError(f"need 8 corner values, got {len(corners)}")
    return unwrap_ring(zip(corners[0::2], corners[1::2]))


def region_rings_from_ids(region_ids: Iterable[str], region_tiles: int = 4) -> dict[str, list[LatLon]]:
    """Rings of grid regions computed from their ids (exact: a region is a lon/lat rectangle)."""
    from pipeline.geo.regions import parse_region_id, region_bounds

    ids = list(dict.fromkeys(region_ids))
    if not ids:
        return {}
    try:
        zrc = np.array([parse_region_id(r) for r in ids], dtype=np.int64)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    b = region_bounds(zrc[:, 0], zrc[:, 1], zrc[:, 2], region_tiles)
    # Wrapping regions keep their unwrapped east (> 180): one contiguous rectangle.
    return {
        rid: [(s, w), (n, w), (n, e), (s, e)]
        for rid, w, s, e, n in zip(ids, b.west.tolist(), b.south.tolist(), b.east.tolist(), b.north.tolist())
    }


def thumbnail_jpeg(path: str | os.PathLike[str], size: int, quality: int) -> bytes | None:
    """A small JPEG of an image file, or None if the file is missing or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale directly, ~10x faster
            rgb = im.convert("RGB")
            rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=quality, optimize=True)
            return buf.getvalue()
    except (OSError, ValueError):
        return None


def _bbox(rings: Iterable[Iterable[LatLon]]) -> tuple[float, float, float, float] | None:
    lats: list[float] = []
    lons: list[float] = []
    for ring in rings:
        for lat, lon in ring:
            lats.append(lat)
            lons.append(lon)
    if not lats:
        return None
    return min(lons), min(lats), max(lons), max(lats)


def make_background(
    region_rings: Mapping[str, Ring],
    coverage_ids: Iterable[str] | None,
    extra: Iterable[Ring],
    cfg: AuditPageConfig,
) -> Background:
    """Coverage (union of the database regions, simplified) and coastlines around the data."""
    import shapely

    coverage: list[list[LatLon]] = []
    boxes = []
    for rid in coverage_ids or ():
        ring = region_rings.get(rid)
        if ring is not None:
            boxes.append(shapely.Polygon([(lon, lat) for lat, lon in ring]))
    if boxes:
        union = shapely.union_all(np.array(boxes, dtype=object))
        if cfg.simplify_deg > 0:
            union = shapely.simplify(union, cfg.simplify_deg)
        for poly in shapely.get_parts(union):
            coverage.append([(round(y, 4), round(x, 4)) for x, y in poly.exterior.coords[:-1]])
    bbox = _bbox([*region_rings.values(), *extra])
    coast: list[list[LatLon]] = []
    if cfg.coastlines and bbox is not None:
        from pipeline.presentation.coastlines import coastlines_in_box

        m = cfg.margin_deg
        # ±85: the page's Web Mercator map ends there.
        west, south, east, north = bbox[0] - m, max(-85.0, bbox[1] - m), bbox[2] + m, min(85.0, bbox[3] + m)
        for seg in coastlines_in_box(west, south, east, north, cfg.coastline_step_deg):
            line = shapely.LineString(seg)
            if cfg.simplify_deg > 0:
                line = shapely.simplify(line, cfg.simplify_deg)
            pts = [(round(y, 3), round(x, 3)) for x, y in line.coords]
            if len(pts) >= 2:
                coast.append(pts)
    return Background(coastlines=coast, coverage=coverage)


# --------------------------------------------------------------------- page


def _leaflet_assets() -> tuple[str, str]:
    """Vendored Leaflet JS and CSS. The CSS's image references (marker icons, layer
    control) are dropped: the page uses neither, and nothing may point outside the file."""
    import re

    base = resources.files("earthloc") / "assets" / "leaflet"
    js = (base / "leaflet.js").read_text(encoding="utf-8")
    css = (base / "leaflet.css").read_text(encoding="utf-8")
    css = re.sub(r"url\([^)]*\)", "none", css)
    return js, css


def _page_assets() -> tuple[str, str, str]:
    """The page's own HTML template, CSS and script (earthloc/assets/audit_page.*), kept
    as files so the presentation is edited apart from the Python that fills it."""
    base = resources.files("earthloc") / "assets"
    html_text, css, js = ((base / f"audit_page.{ext}").read_text(encoding="utf-8") for ext in ("html", "css", "js"))
    return html_text, css, js


# JSON inside <script>: "<", ">" and "&" as \u escapes, so no "</script>", "<!--" or
# "<script" in the data can end or change the element; U+2028/2029 escaped as well.
_SCRIPT_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                      "\u2028": "\\u2028", "\u2029": "\\u2029"})  # fmt: skip


def script_json(data: Any) -> str:
    """`data` as JSON that is safe as the text of a <script> element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_JSON_ESCAPES)


def _rounded_ring(ring: Ring, nd: int = 5) -> list[float]:
    """Flat [lat, lon, lat, lon, ...], rounded (1e-5 deg ~ 1 m) to keep the JSON small."""
    flat: list[float] = []
    for lat, lon in ring:
        flat.extend((round(float(lat), nd), round(float(lon), nd)))
    return flat


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def page_data(
    set_name: str,
    queries: Sequence[AuditQuery],
    regions: Mapping[str, Ring],
    background: Background | None,
    cfg: AuditPageConfig,
) -> dict[str, Any]:
    """The JSON the page script reads, kept small for sets of thousands of queries:
    regions are listed once (sorted by id, so a query's positives are near each other)
    and referenced by index, positives as index deltas, and a grid region whose ring is
    the one its id implies carries no ring (the page computes it from the id)."""
    seen: set[str] = set()
    for q in queries:
        if q.query_id in seen:
            raise InputError(f"audit page: query {q.query_id} given twice")
        seen.add(q.query_id)
    used = sorted({r for q in queries for r in (*q.positives, *(p.region_id for p in q.predictions[: cfg.top_k]))})
    missing = [r for r in used if r not in regions]
    if missing:
        raise InputError(f"audit page: no geometry for region {missing[0]} ({len(missing)} regions lack one)")
    implied = region_rings_from_ids([r for r in used if REGION_ID_RE.match(r)], cfg.region_tiles)
    region_list: list[dict[str, Any]] = []
    for rid in used:
        ring = unwrap_ring(regions[rid])
        own = implied.get(rid)
        if own is not None and len(own) == len(ring) and np.allclose(own, ring, rtol=0.0, atol=1e-6):
            region_list.append({"id": rid})
        else:
            region_list.append({"id": rid, "ring": _rounded_ring(ring)})
    index = {rid: i for i, rid in enumerate(used)}

    out_queries = []
    n_thumbs = 0
    for q in queries:
        preds = list(q.predictions)[: cfg.top_k]
        thumb = None
        if q.thumbnail_jpeg is not None and n_thumbs < cfg.max_thumbnails:
            thumb = "data:image/jpeg;base64," + base64.b64encode(q.thumbnail_jpeg).decode("ascii")
            n_thumbs += 1
        first_hit = next((i + 1 for i, p in enumerate(q.predictions) if p.is_positive), None)
        pos = sorted({index[r] for r in q.positives})
        out_queries.append(
            {
                "id": q.query_id,
                "footprint": _rounded_ring(unwrap_ring(q.footprint)),
                "pos": [b - a for a, b in zip([0, *pos[:-1]], pos)],  # deltas of sorted region indices
                "preds": [
                    [index[p.region_id], round(float(p.score), 4), _angle(p.angle_deg), int(bool(p.is_positive))]
                    for p in preds
                ],  # fmt: skip
                "first_hit": first_hit,  # rank of the first positive among all predictions given
                "orientation": q.orientation,
                "nadir": None if q.nadir is None else [round(q.nadir[0], 3), round(q.nadir[1], 3)],
                "thumb": thumb,
            }
        )
    bg = background or Background()
    return {
        "set": set_name,
        "top_k": cfg.top_k,
        "region_tiles": cfg.region_tiles,
        "regions": region_list,
        "queries": out_queries,
        "coast": [_rounded_ring(line, 3) for line in bg.coastlines],
        "coverage": [_rounded_ring(r, 4) for r in bg.coverage],
    }


def _angle(x: float) -> float | int | None:
    v = _num(x)
    return int(v) if v is not None and v.is_integer() else v


def render_html(data: dict[str, Any]) -> str:
    """The page: the template's %%NAME%% slots filled in one pass, so text put in one
    slot (a set name holding "%%PAGE_JS%%", say) is never read as another slot."""
    import re

    leaflet_js, leaflet_css = _leaflet_assets()
    template, page_css, page_js = _page_assets()
    slots = {
        "TITLE": html.escape(f"EarthLoc audit: {data['set']}"),
        "LEAFLET_CSS": leaflet_css,
        "PAGE_CSS": page_css,
        "LEAFLET_JS": leaflet_js,
        "PAGE_JS": page_js,
        "DATA": script_json(data),
    }
    return re.sub(r"%%([A-Z_]+)%%", lambda m: slots[m.group(1)], template)


def write_audit_page(
    dest: str | os.PathLike[str],
    set_name: str,
    queries: Sequence[AuditQuery],
    regions: Mapping[str, Ring],
    background: Background | None = None,
    cfg: AuditPageConfig | None = None,
) -> Path:
    """Write the audit page of one evaluation set to `dest` (atomically) and return its path.

    `queries`: one `AuditQuery` per query, predictions best first (only the first
    `cfg.top_k` are drawn). `regions`: (lat, lon) ring of every region id named by a
    positive or a prediction (`region_rings_from_ids` computes them from the ids).
    `background`: see `make_background`; None draws the graticule only."""
    cfg = cfg or AuditPageConfig()
    dest = Path(dest)
    write_text(dest, render_html(page_data(set_name, queries, regions, background, cfg)))
    return dest


# --------------------------------------------------------------------- from files


def _read_csv(path: Path, required: set[str]) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise InputError(f"{path}: not a readable CSV ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None  # fmt: skip
    missing = required - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    return df


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The evaluate stage's predictions Parquet, checked against `PREDICTION_COLUMNS`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (run the evaluate stage first)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = set(PREDICTION_COLUMNS) - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)} (schema: docs/audit_page.md)")
    return df.sort_values(["query_index", "rank"], kind="stable").reset_index(drop=True)


def _regions_from_parquet(path: Path, ids: set[str]) -> dict[str, list[LatLon]]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path}: no such file (run the grid stage first)")
    table = pq.read_table(path, columns=["region_id", *CORNER_COLUMNS], filters=[("region_id", "in", sorted(ids))])
    df = table.to_pandas()
    return {str(r.region_id): corners_ring([getattr(r, c) for c in CORNER_COLUMNS]) for r in df.itertuples(index=False)}


def audit_page_from_files(
    set_dir: str | os.PathLike[str],
    predictions_parquet: str | os.PathLike[str],
    regions_parquet: str | os.PathLike[str] | None,
    queries_dir: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str],
    cfg: AuditPageConfig | None = None,
) -> Path:
    """Audit page of an evaluation set folder (`queries.csv`, `database.csv`, `positives.parquet`)
    and its predictions. `regions_parquet` (the grid) gives region corners; None computes
    them from the ids. `queries_dir` holds the query photos (`tiles/queries/`); None or a
    missing photo means no thumbnail. Queries without predictions are still listed."""
    from pipeline.geo.names import parse_filename

    cfg = cfg or AuditPageConfig()
    set_dir = Path(set_dir)
    qdf = _read_csv(set_dir / "queries.csv", {"query_index", "query_id", "filename"})
    ddf = _read_csv(set_dir / "database.csv", {"db_index", "region_id"})
    pos_path = set_dir / "positives.parquet"
    if not pos_path.exists():
        raise InputError(f"{pos_path}: no such file")
    pos = pd.read_parquet(pos_path, columns=["query_index", "db_index"])
    db_ids = ddf.set_index("db_index")["region_id"].astype(str)
    pos["region_id"] = db_ids.reindex(pos["db_index"]).to_numpy()
    if pos["region_id"].isna().any():
        raise InputError(f"{pos_path}: db_index values not in database.csv")
    preds = read_predictions(predictions_parquet)
    unknown = set(preds["query_index"]) - set(qdf["query_index"])
    if unknown:
        raise InputError(f"{predictions_parquet}: query_index values not in queries.csv, e.g. {sorted(unknown)[:5]}")
    known = preds["db_index"].isin(db_ids.index)
    if not known.all():
        raise InputError(f"{predictions_parquet}: db_index values not in database.csv, e.g. "
                         f"{sorted(preds.loc[~known, 'db_index'].unique())[:5]}")  # fmt: skip
    if (db_ids.reindex(preds["db_index"]).to_numpy() != preds["region_id"].astype(str).to_numpy()).any():
        raise InputError(f"{predictions_parquet}: region_id disagrees with database.csv for some db_index")
    pairs = set(zip(pos["query_index"].tolist(), pos["db_index"].tolist()))
    truth = np.array(
        [(q, d) in pairs for q, d in zip(preds["query_index"].tolist(), preds["db_index"].tolist())], dtype=bool
    )
    wrong = int((truth != preds["is_positive"].to_numpy(dtype=bool)).sum())
    if wrong:
        raise InputError(f"{predictions_parquet}: is_positive disagrees with positives.parquet in {wrong} rows")
    preds = preds.groupby("query_index", sort=False).head(cfg.top_k)
    pos_by_q = pos.groupby("query_index")["region_id"].apply(list).to_dict()
    preds_by_q = {k: g for k, g in preds.groupby("query_index", sort=False)}
    queries: list[AuditQuery] = []
    for row in qdf.itertuples(index=False):
        try:
            parsed = parse_filename(str(row.filename))
        except ValueError as exc:
            raise InputError(f"{set_dir / 'queries.csv'}: query {row.query_id}: {exc}") from exc
        g = preds_by_q.get(row.query_index)
        plist = [] if g is None else [
            Prediction(str(r), float(s), float(a), bool(p))
            for r, s, a, p in zip(g["region_id"], g["score"], g["angle_deg"], g["is_positive"])
        ]  # fmt: skip
        thumb = None
        if queries_dir is not None and len(queries) < cfg.max_thumbnails:
            thumb = thumbnail_jpeg(Path(queries_dir) / str(row.filename), cfg.thumb_px, cfg.thumb_quality)
        nadir = (float(row.nadir_lat), float(row.nadir_lon)) if hasattr(row, "nadir_lat") else None
        queries.append(
            AuditQuery(
                query_id=str(row.query_id), footprint=corners_ring(parsed.corners),
                positives=pos_by_q.get(row.query_index, []), predictions=plist,
                orientation=parsed.orientation, nadir=nadir, thumbnail_jpeg=thumb,
            )
        )  # fmt: skip
    needed = set(db_ids) | {p.region_id for q in queries for p in q.predictions}
    if regions_parquet is not None:
        rings = _regions_from_parquet(Path(regions_parquet), needed)
        missing = needed - set(rings)
        if missing:
            raise InputError(f"{regions_parquet}: regions not in the grid, e.g. {sorted(missing)[:5]}")
    else:
        rings = region_rings_from_ids(needed)
    background = make_background(rings, db_ids.tolist(), [q.footprint for q in queries], cfg)
    return write_audit_page(dest, set_dir.name, queries, rings, background, cfg)
