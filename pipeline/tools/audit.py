"""audit: inspect an intersection file (our Parquet table or upstream's `.pt`).

Three modes, chosen by the arguments of `earthloc audit`:
- a query id: print the regions the query overlaps (km², IoU, fractions), write
  `<out_dir>/<query_id>.geojson` (the query and those regions, with the numbers) and
  `<out_dir>/<query_id>.png` (a map zoomed on the query, one panel per zoom, drawn by
  `pipeline.presentation.query_map`);
- `--check`: re-derive the overlaps of a random sample of queries from the footprints
  with the same exact-overlap code as the intersect stage and report every missing,
  extra or differing pair (plus whole-file checks that cost nothing: duplicates,
  unknown ids, values out of range, fractions that do not agree with the IoU);
- neither: print a summary of the file.

Both file formats are read into one table with the Parquet columns (`COLUMNS`), plus
`db_relpath` for `.pt` files.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.errors import InputError
from pipeline.geo.names import SAFE_ID_RE, db_relpath, parse_filename
from pipeline.io import atomic_path, read_geoparquet, write_text
from pipeline.presentation.query_map import format_date, query_png
from pipeline.schema import CENTER_COLUMNS, CORNER_COLUMNS, NADIR_COLUMNS, REGION_FOOTPRINT_COLUMNS
from pipeline.stages.intersect import IntersectParams

COLUMNS = ["query_id", "region_id", "zoom", "intersection_km2", "iou", "query_fraction", "region_fraction"]
VALUE_COLUMNS = ["intersection_km2", "iou", "query_fraction", "region_fraction"]
REL_TOL = 1e-6
ABS_TOL = 1e-6  # km² for intersection_km2, plain units for the ratios
MAX_PRINTED = 50
DISAGREEMENT_COLUMNS = ["kind", "query_id", "region_id", "field", "file_value", "recomputed_value", "detail"]


# --------------------------------------------------------------------------- loading


@dataclass
class Intersections:
    """An intersection file normalised to one table.

    `pairs`: COLUMNS (+ `db_relpath` for `.pt`). `listed`: every query id the file
    names, including `.pt` keys with an empty list. `keys`: query id -> upstream key
    (`.pt` only)."""

    path: Path
    source: str  # "parquet" or "pt"
    pairs: pd.DataFrame
    listed: set[str]
    keys: dict[str, str] = field(default_factory=dict)


def _zoom_of(region_ids: pd.Series) -> pd.Series:
    """Zoom from `ZZ_RRRR_CCCC` ids (parsed once per distinct id); <NA> if malformed."""
    codes, uniq = pd.factorize(region_ids)
    zz = pd.to_numeric(pd.Series([str(r).split("_", 1)[0] for r in uniq], dtype=object), errors="coerce")
    zoom = np.append(zz.to_numpy(dtype=np.float64), np.nan)[codes]  # code -1 (missing id) -> NaN
    return pd.Series(zoom, index=region_ids.index).astype("Int64")


def load_parquet(path: Path, only: set[str] | None = None) -> Intersections:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not an intersections table, missing columns {missing}")
    df = df[COLUMNS].copy()
    df["query_id"] = df["query_id"].astype(str)
    df["region_id"] = df["region_id"].astype(str)
    listed = set(df["query_id"].unique())
    if only is not None:
        df = df[df["query_id"].isin(only)]
    return Intersections(path, "parquet", df.reset_index(drop=True), listed)


# A `.pt` is read whole into memory, so its size is bounded before anything is decoded:
# the project's own world file is about 90 MB. torch.save stores its members
# uncompressed; a member that inflates more than MAX_PT_INFLATION times is a zip bomb.
MAX_PT_BYTES = 2 << 30
MAX_PT_INFLATION = 20


def _check_pt_sizes(path: Path, zf: zipfile.ZipFile | None) -> None:
    """Refuse a file whose (declared) decompressed size is over MAX_PT_BYTES, or any zip
    member that would inflate more than MAX_PT_INFLATION times, before reading it."""
    if zf is None:
        size = path.stat().st_size
        if size > MAX_PT_BYTES:
            raise InputError(f"{path}: {size:,} bytes, more than the limit of {MAX_PT_BYTES:,} for a .pt file")
        return
    total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.file_size > MAX_PT_INFLATION * max(info.compress_size, 1024):
            raise InputError(f"{path}: zip member {info.filename!r} inflates {info.compress_size:,} bytes to "
                             f"{info.file_size:,}, more than the limit of {MAX_PT_INFLATION}x")  # fmt: skip
    if total > MAX_PT_BYTES:
        raise InputError(f"{path}: {total:,} bytes once decompressed, more than the limit of {MAX_PT_BYTES:,}")


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, reading no more than its header declares: a header that
    understates the size cannot make the read grow past the checked bounds."""
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise InputError(f"{path}: zip member {info.filename!r} is longer than its header says")
    return data


class _PrimitiveUnpickler(pickle.Unpickler):
    """The C unpickler with every global refused: it can only build str, numbers,
    lists, tuples and dicts, which is all an intersection file holds."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _read_pt(path: Path) -> Any:
    """The object in a torch.save file holding only primitives.

    `torch.load(weights_only=True)` runs a pure-Python unpickler (about 20 s for the
    world file); a torch.save zip archive of primitives is read here with the C
    unpickler restricted as above, which is as safe and several times faster. Any
    other layout (legacy format, tensors) goes to torch.load(weights_only=True).
    Sizes are checked first (`_check_pt_sizes`), and whatever the unpickler rejects
    (an unhashable dict key, a truncated stream) is one InputError."""
    try:
        zf: zipfile.ZipFile | None = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        zf = None
    try:
        _check_pt_sizes(path, zf)
        if zf is not None:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) == 1 and not any("/data/" in n for n in zf.namelist()):
                data = _read_member(path, zf, zf.getinfo(names[0]))
                try:
                    return _PrimitiveUnpickler(io.BytesIO(data)).load()
                except pickle.UnpicklingError:
                    pass  # a global: torch.load below refuses it or reads an allowed one
                except (EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError, RecursionError,
                        zipfile.BadZipFile, OSError) as exc:  # fmt: skip
                    raise InputError(f"{path}: not a readable .pt file ({type(exc).__name__}: "
                                     f"{_first_line(exc)})") from exc  # fmt: skip
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .pt file ({type(exc).__name__}: {_first_line(exc)})") from exc
    finally:
        if zf is not None:
            zf.close()
    import torch  # heavy; only when the fast path does not apply

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"{path}: not a readable .pt file ({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_pt(path: Path, only: set[str] | None = None) -> Intersections:
    """Read an upstream intersection dict; with `only`, convert only those queries' pairs
    (every key is still parsed, so `listed` and `keys` are complete)."""
    data = _read_pt(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of query file name -> list of pairs, got {type(data).__name__}")
    keys: dict[str, str] = {}
    qids: list[str] = []
    counts: list[int] = []
    rows: list[Any] = []
    for key, value in data.items():
        if not isinstance(key, str):
            raise InputError(f"{path}: key {key!r} is not a query file name")
        try:
            qid = parse_filename(key).image_id
        except ValueError as exc:
            raise InputError(f"{path}: key {key!r} is not an upstream query file name") from exc
        if not isinstance(value, list):
            raise InputError(f"{path}: value of {qid} is a {type(value).__name__}, expected a list")
        keys[qid] = key
        if only is not None and qid not in only:
            continue
        if set(map(type, value)) - {tuple} or set(map(len, value)) - {6}:  # map() runs in C: fast
            item = next(it for it in value if type(it) is not tuple or len(it) != 6)
            raise InputError(
                f"{path}: entry {item!r:.120} of {qid} is not a 6-tuple "
                "(db_relpath, region_id, km2, iou, query_fraction, region_fraction)"
            )
        qids.append(qid)
        counts.append(len(value))
        rows.extend(value)
    cols = list(zip(*rows)) if rows else [()] * 6
    try:
        df = pd.DataFrame(
            {
                "query_id": np.repeat(np.array(qids, dtype=object), counts),
                "region_id": np.array(cols[1], dtype=object),
                "intersection_km2": np.asarray(cols[2], dtype=np.float64),
                "iou": np.asarray(cols[3], dtype=np.float64),
                "query_fraction": np.asarray(cols[4], dtype=np.float64),
                "region_fraction": np.asarray(cols[5], dtype=np.float64),
                "db_relpath": np.array(cols[0], dtype=object),
            }
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: a pair holds a non-numeric value ({exc})") from exc
    bad = [c for c in ("region_id", "db_relpath") if len(df) and not all(isinstance(v, str) for v in df[c].unique())]
    if bad:
        raise InputError(f"{path}: {bad[0]} values must be strings")
    df.insert(2, "zoom", _zoom_of(df["region_id"]))
    return Intersections(path, "pt", df, set(keys), keys)


def load_intersections(path: Path, only: set[str] | None = None) -> Intersections:
    """Either format as one table; `only` limits the pairs read to those query ids."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (run the intersect stage first)")
    if path.suffix == ".pt":
        return load_pt(path, only)
    if path.suffix == ".parquet":
        return load_parquet(path, only)
    raise InputError(f"{path}: expected a .parquet intersections table or an upstream .pt file")


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class AuditParams:
    """What `--check` re-derives pairs with: the intersect stage's parameters (which hold the
    queries' `densify_deg`), and where they were read, for the report."""

    intersect: IntersectParams = field(default_factory=IntersectParams)
    source: str = "defaults"

    @property
    def densify_deg(self) -> float:
        return self.intersect.densify_deg

    @property
    def min_intersection_km2(self) -> float:
        return self.intersect.min_intersection_km2

    @property
    def year(self) -> int:
        return self.intersect.year


@dataclass(frozen=True)
class AuditRequest:
    """What to audit: the file and its inputs, and what to do with them (a query, a check,
    or neither: a summary of the file)."""

    intersections: Path  # intersections Parquet or upstream .pt file
    grid: Path  # regions GeoParquet
    queries: Path  # queries GeoParquet
    out_dir: Path  # where a query's GeoJSON and PNG and the check's disagreements go
    query_id: str | None = None  # a query id or an upstream query file name
    check: bool = False  # re-derive a sample of pairs from the footprints
    sample: int = 2000  # queries to re-derive (0 = all)
    seed: int = 0


# --------------------------------------------------------------------------- one query


def resolve_query_id(arg: str, queries: gpd.GeoDataFrame) -> str:
    """A query id from an id or an upstream file name; an InputError if unknown."""
    qid = arg.strip()
    if "@" in qid:
        try:
            qid = parse_filename(qid).image_id
        except ValueError as exc:
            raise InputError(
                f"{arg!r}: neither a query id (MISSION-ROLL-FRAME) nor an upstream query file name"
            ) from exc
    if not SAFE_ID_RE.match(qid):
        raise InputError(f"{arg!r}: not a query id (MISSION-ROLL-FRAME)")
    if not (queries["query_id"] == qid).any():
        raise InputError(f"unknown query id {qid!r}: not in the queries file")
    return qid


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _feature(geom: shapely.Geometry, props: dict[str, Any]) -> dict[str, Any]:
    # RFC 7946 §3.1.6: exterior rings counterclockwise, holes clockwise.
    oriented = shapely.orient_polygons(geom, exterior_cw=False)
    return {
        "type": "Feature",
        "geometry": shapely.geometry.mapping(oriented),
        "properties": {k: _jsonable(v) for k, v in props.items()},
    }


def query_geojson(query: pd.Series, pairs: pd.DataFrame, regions: gpd.GeoDataFrame) -> dict[str, Any]:
    """FeatureCollection: the query footprint first, then every overlapping region."""
    qprops = {"role": "query", **{k: v for k, v in query.items() if k != "geometry"}}
    features = [_feature(query.geometry, qprops)]
    merged = pairs.merge(regions.drop(columns=["zoom"]), on="region_id", how="left", validate="many_to_one")
    keep = ["region_id", "zoom", *VALUE_COLUMNS]
    if "db_relpath" in merged:
        keep.append("db_relpath")
    keep += [c for c in ("row", "col", *CENTER_COLUMNS, "area_km2", "land_fraction") if c in merged]
    for _, r in merged.iterrows():
        if not isinstance(r["geometry"], shapely.Geometry):
            continue  # region not in the grid: reported by --check, nothing to draw
        features.append(_feature(r.geometry, {"role": "region", "query_id": r["query_id"], **{k: r[k] for k in keep}}))
    return {"type": "FeatureCollection", "features": features}


def format_pairs(pairs: pd.DataFrame) -> str:
    cols = ["region_id", "zoom", *VALUE_COLUMNS] + (["db_relpath"] if "db_relpath" in pairs else [])
    df = pairs[cols].copy()
    df["intersection_km2"] = df["intersection_km2"].map(lambda v: f"{v:,.3f}")
    for c in ("iou", "query_fraction", "region_fraction"):
        df[c] = df[c].map(lambda v: f"{v:.6f}")
    return df.to_string(index=False)


def audit_query(
    qid: str, inter: Intersections, queries: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, out_dir: Path
) -> pd.DataFrame:
    query = queries[queries["query_id"] == qid].iloc[0]
    pairs = inter.pairs[inter.pairs["query_id"] == qid].sort_values(["iou", "region_id"], ascending=[False, True])
    pairs = pairs.reset_index(drop=True)
    listed = "" if qid in inter.listed else " (the query is not in this file)"
    print(
        f"{qid}  date {format_date(query.get('date', ''))}  footprint {query.get('area_km2', float('nan')):,.0f} km²  "
        f"nadir ({query['nadir_lat']}, {query['nadir_lon']}): {len(pairs)} overlapping regions{listed}"
    )
    if len(pairs):
        print(format_pairs(pairs))
    out_dir = Path(out_dir)
    gj, png = out_dir / f"{qid}.geojson", out_dir / f"{qid}.png"
    write_text(gj, json.dumps(query_geojson(query, pairs, regions)) + "\n")
    query_png(png, query, pairs, regions)
    print(f"wrote {gj} and {png}")
    return pairs


# --------------------------------------------------------------------------- check


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where a and b differ beyond both the relative and the absolute tolerance."""
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    return ~(diff <= np.maximum(REL_TOL * scale, ABS_TOL)) & ~(np.isnan(a) & np.isnan(b))


def _rows(kind: str, df: pd.DataFrame, **cols: Any) -> pd.DataFrame:
    out = pd.DataFrame({"kind": kind, "query_id": df["query_id"].to_numpy(), "region_id": df["region_id"].to_numpy()})
    for c in DISAGREEMENT_COLUMNS[3:]:
        v = cols.get(c, "")
        out[c] = v.to_numpy() if isinstance(v, pd.Series) else v
    return out


def file_wide_checks(inter: Intersections, queries: gpd.GeoDataFrame, regions: gpd.GeoDataFrame) -> list[pd.DataFrame]:
    """Checks over every pair of the file that need no geometry."""
    pairs = inter.pairs
    found: list[pd.DataFrame] = []
    dup = pairs[pairs.duplicated(["query_id", "region_id"], keep="first")]
    if len(dup):
        found.append(_rows("duplicate", dup, detail="pair listed more than once"))
    known_q = set(queries["query_id"])
    unknown_q = sorted(inter.listed - known_q)
    if unknown_q:
        found.append(
            pd.DataFrame(
                {
                    "kind": "unknown_query",
                    "query_id": unknown_q,
                    "region_id": "",
                    "field": "query_id",
                    "file_value": unknown_q,
                    "recomputed_value": "",
                    "detail": "not in the queries file",
                }
            )
        )
    codes, uniq = pd.factorize(pairs["region_id"])
    zoom_of = pd.Series(regions["zoom"].to_numpy(np.float64), index=regions["region_id"].to_numpy())
    zoom_of = zoom_of[~zoom_of.index.duplicated()]
    grid_zoom = pd.Series(np.append(zoom_of.reindex(uniq).to_numpy(), np.nan)[codes], index=pairs.index)
    unknown_r = pairs[grid_zoom.isna()]
    if len(unknown_r):
        found.append(
            _rows(
                "unknown_region",
                unknown_r,
                field="region_id",
                file_value=unknown_r["region_id"],
                detail="not in the grid",
            )
        )
    bad_zoom = pairs[grid_zoom.notna() & (pairs["zoom"].astype("float64") != grid_zoom.astype("float64"))]
    if len(bad_zoom):
        found.append(
            _rows(
                "value",
                bad_zoom,
                field="zoom",
                file_value=bad_zoom["zoom"],
                recomputed_value=grid_zoom[bad_zoom.index],
                detail="zoom differs from the grid",
            )
        )
    v = {c: pairs[c].to_numpy(dtype=np.float64) for c in VALUE_COLUMNS}
    slack = 1e-9
    out_of_range = ~np.isfinite(v["intersection_km2"]) | (v["intersection_km2"] <= 0)
    for c in ("iou", "query_fraction", "region_fraction"):
        out_of_range |= ~np.isfinite(v[c]) | (v[c] <= 0) | (v[c] > 1 + slack)
    if out_of_range.any():
        bad = pairs[out_of_range]
        found.append(
            _rows(
                "out_of_range",
                bad,
                detail=bad[VALUE_COLUMNS].apply(
                    lambda r: (
                        "km2 must be > 0, ratios in (0, 1]: " + ", ".join(f"{k}={r[k]:.6g}" for k in VALUE_COLUMNS)
                    ),
                    axis=1,
                ),
            )
        )
    # I/(Aq + Ar - I) with Aq = I/qf and Ar = I/rf: IoU = 1 / (1/qf + 1/rf - 1).
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = 1.0 / (1.0 / v["query_fraction"] + 1.0 / v["region_fraction"] - 1.0)
    inconsistent = ~out_of_range & _differs(implied, v["iou"])
    if inconsistent.any():
        bad = pairs[inconsistent]
        found.append(
            _rows(
                "inconsistent",
                bad,
                field="iou",
                file_value=bad["iou"],
                recomputed_value=pd.Series(implied[inconsistent]),
                detail="iou disagrees with query_fraction and region_fraction",
            )
        )
    return found


def sample_queries(queries: gpd.GeoDataFrame, sample: int, seed: int) -> np.ndarray:
    n = len(queries)
    if sample <= 0 or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def check(
    inter: Intersections,
    queries: gpd.GeoDataFrame,
    regions: gpd.GeoDataFrame,
    params: AuditParams,
    picked: np.ndarray,
) -> tuple[pd.DataFrame, int]:
    """Disagreements between the file and a re-derivation of the `picked` queries
    (positions in `queries`), plus the file-wide checks. Returns (table, pairs checked)."""
    from pipeline.geo.overlap import overlap_table

    found = file_wide_checks(inter, queries, regions)
    sel = queries.iloc[picked].reset_index(drop=True)
    got = overlap_table(
        np.asarray(sel.geometry.values, dtype=object),
        np.asarray(regions.geometry.values, dtype=object),
        densify_deg=params.densify_deg,
        min_intersection_km2=params.min_intersection_km2,
    )
    truth = pd.DataFrame(
        {
            "query_id": sel["query_id"].to_numpy()[got["query_index"].to_numpy()],
            "region_id": regions["region_id"].to_numpy()[got["region_index"].to_numpy()],
            **{c: got[c].to_numpy(dtype=np.float64) for c in VALUE_COLUMNS},
        }
    )
    ids = set(sel["query_id"])
    mine = inter.pairs[inter.pairs["query_id"].isin(ids)].drop_duplicates(["query_id", "region_id"])
    m = mine.merge(truth, on=["query_id", "region_id"], how="outer", suffixes=("_file", "_true"), indicator=True)
    near_threshold = params.min_intersection_km2 + np.maximum(ABS_TOL, REL_TOL * params.min_intersection_km2)

    missing = m[(m["_merge"] == "right_only") & (m["intersection_km2_true"] > near_threshold)]
    if len(missing):
        absent = ~missing["query_id"].isin(inter.listed)
        detail = missing.apply(
            lambda r: f"overlap of {r['intersection_km2_true']:,.3f} km² (iou {r['iou_true']:.6f}) not in the file",
            axis=1,
        ) + np.where(absent, "; the query is not in the file at all", "")
        found.append(
            _rows("missing", missing, field="pair", recomputed_value=missing["intersection_km2_true"], detail=detail)
        )
    extra = m[(m["_merge"] == "left_only") & (m["intersection_km2_file"] > near_threshold)]
    if len(extra):
        found.append(
            _rows(
                "extra",
                extra,
                field="pair",
                file_value=extra["intersection_km2_file"],
                detail=f"in the file, but the footprints do not overlap by more than "
                f"{params.min_intersection_km2:g} km²",
            )
        )
    both = m[m["_merge"] == "both"]
    for c in VALUE_COLUMNS:
        a, b = both[f"{c}_file"].to_numpy(np.float64), both[f"{c}_true"].to_numpy(np.float64)
        bad = _differs(a, b)
        if bad.any():
            d = both[bad]
            found.append(
                _rows(
                    "value",
                    d,
                    field=c,
                    file_value=d[f"{c}_file"],
                    recomputed_value=d[f"{c}_true"],
                    detail=(d[f"{c}_file"] - d[f"{c}_true"]).map(lambda x: f"difference {x:+.6g}"),
                )
            )
    if inter.source == "pt":
        found.extend(_pt_name_checks(inter, sel, regions, params, mine))
    table = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    return table[DISAGREEMENT_COLUMNS], int(len(m))


def _pt_name_checks(
    inter: Intersections, sel: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, params: AuditParams, mine: pd.DataFrame
) -> list[pd.DataFrame]:
    """Upstream names of the sampled queries: the key is the query's file name, each
    db path is the one upstream's layout gives the region."""
    found: list[pd.DataFrame] = []
    if "filename" in sel:
        expected = dict(zip(sel["query_id"], sel["filename"]))
        bad = [(q, k, expected[q]) for q, k in inter.keys.items() if q in expected and k != expected[q]]
        if bad:
            q, k, e = zip(*bad)
            found.append(
                pd.DataFrame(
                    {
                        "kind": "name",
                        "query_id": q,
                        "region_id": "",
                        "field": "key",
                        "file_value": k,
                        "recomputed_value": e,
                        "detail": "key differs from the query's file name",
                    }
                )
            )
    if not all(c in regions for c in REGION_FOOTPRINT_COLUMNS):
        return found
    used = regions[regions["region_id"].isin(pd.unique(mine["region_id"]))]
    r = mine[mine["region_id"].isin(used["region_id"])].copy()  # unknown regions are reported elsewhere
    if not len(r):
        return found
    expected = {
        rid: db_relpath(c, rid, int(z), params.year, float(la), float(lo), float(a))
        for rid, z, c, la, lo, a in zip(
            used["region_id"],
            used["zoom"],
            used[list(CORNER_COLUMNS)].to_numpy().tolist(),
            used["center_lat"],
            used["center_lon"],
            used["area_km2"],
        )
    }
    r["expected"] = r["region_id"].map(expected)
    bad = r[r["db_relpath"] != r["expected"]]
    if len(bad):
        found.append(
            _rows(
                "name",
                bad,
                field="db_relpath",
                file_value=bad["db_relpath"],
                recomputed_value=bad["expected"],
                detail="db path differs from the region's upstream path",
            )
        )
    return found


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.9g}"
    return str(v)


def print_disagreements(table: pd.DataFrame, limit: int = MAX_PRINTED) -> None:
    for row in table.head(limit).itertuples(index=False):
        pair = f"{row.query_id} x {row.region_id}" if row.region_id else row.query_id
        vals = ""
        if row.file_value != "" or row.recomputed_value != "":
            vals = f" file={_fmt(row.file_value)} recomputed={_fmt(row.recomputed_value)}"
        fld = f" {row.field}" if row.field else ""
        print(f"  {row.kind:<14} {pair}{fld}{vals}: {row.detail}")
    if len(table) > limit:
        print(f"  ... and {len(table) - limit} more")


# --------------------------------------------------------------------------- summary


def print_summary(inter: Intersections) -> None:
    p = inter.pairs
    per_query = p.groupby("query_id").size().reindex(sorted(inter.listed), fill_value=0)
    print(f"{inter.path}: {len(inter.listed):,} queries, {len(p):,} pairs ({inter.source})")
    if len(per_query):
        print(
            f"  regions per query: min {per_query.min()}, median {per_query.median():g}, max {per_query.max()}; "
            f"{int((per_query == 0).sum())} queries without any"
        )
    if len(p):
        by_zoom = p.groupby("zoom").agg(pairs=("iou", "size"), median_iou=("iou", "median"), max_iou=("iou", "max"))
        print(by_zoom.to_string())
    print("give a query id for its regions and map, or --check to re-derive a sample")


# --------------------------------------------------------------------------- entry point


def _read_inputs(request: AuditRequest) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    queries = read_geoparquet(request.queries)
    regions = read_geoparquet(request.grid)
    for path, gdf, cols in (
        (request.queries, queries, ["query_id", *NADIR_COLUMNS]),
        (request.grid, regions, ["region_id", "zoom"]),
    ):
        missing = [c for c in cols if c not in gdf.columns]
        if missing:
            raise InputError(f"{path}: missing columns {missing}")
    return queries, regions


def run(params: AuditParams, request: AuditRequest) -> dict[str, Any]:
    """Summarise the file, audit one query, and/or check it (`request`); return what was
    done, with `disagreements` (None without a check): a check that finds any fails."""
    t0 = time.perf_counter()
    path = Path(request.intersections)
    query_arg, do_check = request.query_id, request.check
    if query_arg is None and not do_check:
        print_summary(load_intersections(path))
        return {"query_id": None, "disagreements": None}
    if not path.exists():
        raise InputError(f"{path}: no such file (run the intersect stage first)")
    queries, regions = _read_inputs(request)
    out_dir = Path(request.out_dir)
    qid = resolve_query_id(query_arg, queries) if query_arg is not None else None
    # Auditing one query reads only its pairs; --check needs the whole file.
    inter = load_intersections(path, only=None if do_check or qid is None else {qid})
    if qid is not None:
        audit_query(qid, inter, queries, regions, out_dir)
    if not do_check:
        return {"query_id": qid, "disagreements": None}

    if qid is not None:
        picked = np.flatnonzero(queries["query_id"].to_numpy() == qid)
    else:
        picked = sample_queries(queries, int(request.sample), int(request.seed))
    table, n_pairs = check(inter, queries, regions, params, picked)
    dest = out_dir / "check_disagreements.csv"
    with atomic_path(dest) as tmp:
        table.to_csv(tmp, index=False)
    print(
        f"check: {len(picked):,} of {len(queries):,} queries re-derived, {n_pairs:,} pairs checked, "
        f"{len(table):,} disagreements ({time.perf_counter() - t0:.1f} s) -> {dest}"
    )
    print(
        f"  (re-derived with queries.densify_deg={params.densify_deg:g}, "
        f"intersect.min_intersection_km2={params.min_intersection_km2:g}, year {params.year}"
        f" from {params.source})"
    )
    print_disagreements(table)
    value_pairs = table.loc[table["kind"] == "value", ["query_id", "region_id"]].drop_duplicates()
    if n_pairs and len(value_pairs) > 0.5 * n_pairs:
        print(
            "hint: most pairs differ slightly, which usually means the file was made with other parameters "
            "(e.g. queries.densify_deg) or older footprints; rerun the intersect stage (dvc repro)"
        )
    return {"query_id": qid, "queries_checked": len(picked), "pairs_checked": n_pairs, "disagreements": len(table)}


__all__ = [
    "COLUMNS",
    "AuditParams",
    "AuditRequest",
    "Intersections",
    "audit_query",
    "check",
    "file_wide_checks",
    "load_intersections",
    "query_geojson",
    "query_png",
    "resolve_query_id",
    "run",
]
