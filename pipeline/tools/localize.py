"""`earthloc localize IMAGE [--nadir LAT LON]`: the regions of the index stage's index
(pipeline/stages/index.py) that best match one photo.

A tool, not a dvc.yaml stage: it answers one photo at a time, on demand. It refuses an
index built with a different model file (descriptors of two models are not comparable).

With a nadir, only regions whose centre lies within `radius_km` (haversine, like the
evaluation sets' radii) are searched: faiss's ID selector restricts the search to their
rotated copies, exactly. Without a nadir the whole index is searched (AstroLoc's
"lost in space" setting). Results are distinct regions (the best rotation of each).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
import torch

from earthloc.images import load_model_input
from earthloc.published import file_sha256
from earthloc.retrieval.index import INDEX_FORMAT
from earthloc.retrieval.search import SearchResult, collapse_rotations, map_raw_ids
from pipeline.errors import InputError
from pipeline.geo.distance import haversine_km
from pipeline.geo.regions import parse_region_id, region_bounds, region_footprint
from pipeline.io import write_json
from pipeline.params import build_config
from pipeline.schema import CORNER_COLUMNS

# A photo is checked from its header before any pixel is decoded. The largest ISS camera
# frames are about 46 megapixels at 3:2; decoding costs 3 bytes a pixel, and the resize to
# the model's input scales the longer side by the aspect ratio, so both are bounded.
MAX_IMAGE_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 4.0


@dataclass(frozen=True)
class LocalizeParams:
    """The `localize` section of params.yaml."""

    index_dir: str = "data/index"
    model: str = "models/earthloc.pt"
    radius_km: float = 2500.0  # regions visible from the ISS around the nadir (the paper's query radius)
    top: int = 10

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> LocalizeParams:
        return build_config(cls, dict(sec), "localize")


@dataclass(frozen=True)
class LocalizeRequest:
    """One photo to localise, with the files the command line names (None: the `localize` section's)."""

    image: Path
    nadir: tuple[float, float] | None = None  # (lat, lon) of the ISS; None searches the whole index
    model: Path | None = None  # must be the model the index was built with
    index_dir: Path | None = None
    out: Path | None = None  # GeoJSON of the matches


@dataclass(frozen=True)
class LoadedIndex:
    index: Any
    regions: pd.DataFrame
    meta: dict[str, Any]

    @property
    def num_db(self) -> int:
        return len(self.regions)

    @property
    def rotations(self) -> tuple[int, ...]:
        return tuple(self.meta["rotations"])


def check_image_bounds(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only; InputError when the
    file is not an image or is larger than MAX_IMAGE_PIXELS or more elongated than
    MAX_ASPECT_RATIO, so a small crafted file cannot make the decoder allocate gigabytes."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # parses the header; pixels are decoded later, on load
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: image over the limit of {MAX_IMAGE_PIXELS:,} pixels ({exc})") from None
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise InputError(f"{path}: not a readable image ({exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{path}: {width}x{height} image has {width * height:,} pixels, "
                         f"over the limit of {MAX_IMAGE_PIXELS:,}")  # fmt: skip
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise InputError(f"{path}: {width}x{height} image is more elongated than the limit of "
                         f"{MAX_ASPECT_RATIO:g}:1")  # fmt: skip
    return width, height


def load_index(index_dir: str | os.PathLike[str]) -> LoadedIndex:
    """The index directory written by `earthloc index`; anything missing, truncated or
    of another format is one InputError naming the file."""
    import faiss

    d = Path(index_dir)
    for name in ("index.faiss", "regions.parquet", "meta.json"):
        if not (d / name).is_file():
            raise InputError(f"{d / name}: missing (run `earthloc index` first)")
    try:
        meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{d / 'meta.json'}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or not isinstance(meta.get("rotations"), list):
        raise InputError(f"{d / 'meta.json'}: not an {INDEX_FORMAT} index")
    try:
        regions = pd.read_parquet(d / "regions.parquet")
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{d / 'regions.parquet'}: not a readable Parquet file ({type(exc).__name__})") from None
    try:
        index = faiss.read_index(str(d / "index.faiss"))
    except RuntimeError as exc:  # faiss reports a truncated or foreign file as a RuntimeError
        first = next((ln.strip() for ln in str(exc).splitlines() if "Error" in ln), "unreadable")
        raise InputError(f"{d / 'index.faiss'}: not a readable faiss index ({first})") from None
    if index.ntotal != len(regions) * len(meta["rotations"]):
        raise InputError(f"{d}: index holds {index.ntotal} vectors for {len(regions)} regions; rebuild it")
    return LoadedIndex(index, regions, meta)


@dataclass(frozen=True)
class Match:
    rank: int
    db_index: int
    region_id: str
    zoom: int
    score: float
    angle_deg: int  # CCW turn of the north-up region image that matched
    corners: tuple[float, ...]  # ll_lat, ll_lon, ul_lat, ..., lr_lon
    center: tuple[float, float]  # lat, lon
    distance_km: float | None  # centre to the nadir

    @property
    def photo_top_azimuth_deg(self) -> int:
        """Compass bearing the photo's top edge faces: a north-up image turned CCW by a has
        its top facing bearing a (docs/evaluation.md)."""
        return self.angle_deg % 360

    @property
    def nasa_orientation_deg(self) -> int:
        """The same prediction in NASA's ORIENTATION convention (north's direction in the
        photo, clockwise from up) = -bearing mod 360."""
        return (-self.angle_deg) % 360


def candidates_near(regions: pd.DataFrame, lat: float, lon: float, radius_km: float) -> np.ndarray:
    """db_index of regions whose centre lies strictly within radius_km of (lat, lon)."""
    d = haversine_km(lat, lon, regions["center_lat"].to_numpy(), regions["center_lon"].to_numpy())
    return np.flatnonzero(d < radius_km).astype(np.int64)


def restricted_search(
    index: Any, query: np.ndarray, k: int, allowed_raw: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """faiss search limited to the raw ids in `allowed_raw` (None: everything)."""
    import faiss

    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    if allowed_raw is None:
        return index.search(q, k)
    if len(allowed_raw) == 0:
        return np.full((1, k), -np.inf, np.float32), np.full((1, k), -1, np.int64)
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_raw, dtype=np.int64))
    ivf = None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        pass
    # Fields assigned after construction: faiss's stubs type the attributes but not the
    # keyword constructor (both keep `sel` alive the same way).
    params: faiss.SearchParameters
    if ivf is not None:
        ivf_params = faiss.SearchParametersIVF()
        ivf_params.nprobe = ivf.nprobe
        params = ivf_params
    else:
        params = faiss.SearchParameters()
    params.sel = sel
    try:
        return index.search(q, k, params=params)
    except RuntimeError:
        # IndexPQ takes no search parameters. Its inner-product (ADC) score is q . decode(code),
        # so scoring the decoded allowed vectors gives the same ranking.
        vecs = index.reconstruct_batch(np.ascontiguousarray(allowed_raw, dtype=np.int64))
        scores = vecs @ q[0]
        order = np.argsort(-scores, kind="stable")[:k]
        out_s = np.full((1, k), -np.inf, np.float32)
        out_i = np.full((1, k), -1, np.int64)
        out_s[0, : len(order)] = scores[order]
        out_i[0, : len(order)] = allowed_raw[order]
        return out_s, out_i


def localize_descriptor(
    loaded: LoadedIndex, query: np.ndarray, *, top: int, nadir: tuple[float, float] | None, radius_km: float
) -> list[Match]:
    """The `top` best distinct regions for one query descriptor."""
    n, rot = loaded.num_db, loaded.rotations
    regions = loaded.regions
    allowed = None
    if nadir is not None:
        cand = candidates_near(regions, nadir[0], nadir[1], radius_km)
        allowed = (np.arange(len(rot), dtype=np.int64)[:, None] * n + cand[None, :]).ravel()
    k_raw = min(len(rot) * top, int(loaded.index.ntotal))
    scores, raw = restricted_search(loaded.index, query, k_raw, allowed)
    db, angle = map_raw_ids(raw, n, rot)
    res = collapse_rotations(SearchResult(db, angle, scores.astype(np.float32), raw), top)
    out: list[Match] = []
    for rank, (di, a, s) in enumerate(zip(res.db_index[0], res.angle[0], res.score[0], strict=True), start=1):
        if di < 0:
            break
        row = regions.iloc[int(di)]
        dist = None
        if nadir is not None:
            dist = float(haversine_km(nadir[0], nadir[1], row["center_lat"], row["center_lon"]))
        out.append(
            Match(
                rank,
                int(di),
                str(row["region_id"]),
                int(row["zoom"]),
                float(s),
                int(a),
                tuple(float(row[c]) for c in CORNER_COLUMNS),
                (float(row["center_lat"]), float(row["center_lon"])),
                dist,
            )
        )
    return out


def footprint_geometry(region_id: str) -> shapely.Geometry:
    z, r, c = parse_region_id(region_id)
    b = region_bounds(np.array([z]), np.array([r]), np.array([c]))
    return region_footprint(b)[0]


def to_geojson(matches: list[Match], image: str, nadir: tuple[float, float] | None) -> dict[str, Any]:
    """FeatureCollection: one footprint polygon per match (properties: rank, region, score,
    angle, predicted orientation), plus the nadir point if given."""
    feats: list[dict[str, Any]] = []
    for m in matches:
        feats.append({
            "type": "Feature",
            "geometry": shapely.geometry.mapping(footprint_geometry(m.region_id)),
            "properties": {
                "rank": m.rank, "region_id": m.region_id, "zoom": m.zoom, "score": round(m.score, 6),
                "db_angle_deg": m.angle_deg, "photo_top_azimuth_deg": m.photo_top_azimuth_deg,
                "predicted_orientation_deg": m.nasa_orientation_deg,
                "center_lat": m.center[0], "center_lon": m.center[1],
                "distance_from_nadir_km": None if m.distance_km is None else round(m.distance_km, 1),
            },
        })  # fmt: skip
    if nadir is not None:
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [nadir[1], nadir[0]]},
                "properties": {"kind": "nadir"},
            }
        )
    return {"type": "FeatureCollection", "properties": {"image": image}, "features": feats}


def check_model_matches(loaded: LoadedIndex, model_path: Path) -> None:
    want = loaded.meta.get("model_sha256")
    if want and file_sha256(model_path) != want:
        raise InputError(
            f"{model_path}: not the model the index was built with (sha256 differs); "
            f"rerun `earthloc index` or pass --model {loaded.meta.get('model_path')}"
        )


def localize_image(
    image: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    top: int,
    nadir: tuple[float, float] | None,
    radius_km: float,
) -> list[Match]:
    from earthloc.published import load_model  # also upstream's and torchgeo's weights

    check_image_bounds(image)  # before the index and the model: bad input fails fast
    loaded = load_index(index_dir)
    check_model_matches(loaded, Path(model_path))
    model, cfg = load_model(model_path)
    x = load_model_input(image, cfg.image_size).unsqueeze(0)
    with torch.inference_mode():
        q = model.eval()(x).float().numpy()
    return localize_descriptor(loaded, q[0], top=top, nadir=nadir, radius_km=radius_km)


def format_matches(matches: list[Match], nadir: tuple[float, float] | None, radius_km: float) -> str:
    where = f"within {radius_km:g} km of nadir ({nadir[0]:g}, {nadir[1]:g})" if nadir else "whole index (no nadir)"
    lines = [
        f"top {len(matches)} regions, {where}; orient. = predicted ORIENTATION (north's direction in the "
        "photo, degrees clockwise from up, NASA's convention):",
        "rank  region        zoom  score   orient.  centre (lat, lon)     corners LL UL UR LR (lat, lon)",
    ]
    for m in matches:
        c = m.corners
        corners = " ".join(f"({c[i]:.3f},{c[i + 1]:.3f})" for i in range(0, 8, 2))
        lines.append(
            f"{m.rank:>4}  {m.region_id}  {m.zoom:>4}  {m.score:.4f}  {m.nasa_orientation_deg:>5}°  "
            f"({m.center[0]:8.3f}, {m.center[1]:8.3f})  {corners}"
        )
    return "\n".join(lines)


def run(config: LocalizeParams, request: LocalizeRequest) -> list[Match]:
    """Entry point of `earthloc localize`: print the top `config.top` regions of one photo
    (and write them as GeoJSON when asked); the matches."""
    matches = localize_image(
        request.image,
        request.model or config.model,
        request.index_dir or config.index_dir,
        top=config.top,
        nadir=request.nadir,
        radius_km=config.radius_km,
    )
    print(format_matches(matches, request.nadir, config.radius_km))
    if request.out:
        write_json(request.out, to_geojson(matches, str(request.image), request.nadir))
        print(f"GeoJSON -> {request.out}")
    return matches
