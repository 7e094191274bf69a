"""pipeline.presentation: the three maps (evaluation-set map, audit query map, audit page)
take their coastlines from one place, and the pictures show what the land mask says."""

from __future__ import annotations

import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import pytest
import shapely
from global_land_mask import globe
from matplotlib.collections import LineCollection
from PIL import Image

from earthloc.audit_page import AuditPageConfig, make_background
from pipeline.geo.evalset import EvalSetSpec, select_evalset, summarize
from pipeline.presentation.coastlines import coastlines_in_box
from pipeline.presentation.evalset_map import (
    LAND_RGB,
    SEA_RGB,
    PoiProjection,
    evalset_figure,
    save_palette_png,
)
from pipeline.presentation.maps import near_lon
from pipeline.presentation.query_map import COASTLINE_STYLE, coastline_step_deg, query_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def lines_coloured(ax: object, colour: str) -> list[np.ndarray]:
    """Segments of the LineCollections of `ax` drawn in `colour`."""
    rgba = np.asarray(matplotlib.colors.to_rgba(colour))
    out: list[np.ndarray] = []
    for c in ax.collections:  # type: ignore[attr-defined]
        if isinstance(c, LineCollection) and len(c.get_edgecolor()) and np.allclose(c.get_edgecolor()[0], rgba):
            out += [np.asarray(s) for s in c.get_segments()]
    return out


def vertices(lines: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(lines) if lines else np.zeros((0, 2))


# -- the shared coastlines ----------------------------------------------------------------------
def test_box_past_the_antimeridian_keeps_its_longitudes() -> None:
    """Fiji straddles 180: a box from 176 to 184 gives the same lines as the box from
    -184 to -176, one turn apart, and no line jumps across the map."""
    east_side = coastlines_in_box(176.0, -20.0, 184.0, -15.0, 0.1)
    west_side = coastlines_in_box(-184.0, -20.0, -176.0, -15.0, 0.1)
    assert len(east_side) == len(west_side) > 0
    for a, b in zip(east_side, west_side, strict=True):
        np.testing.assert_allclose(a - [360.0, 0.0], b, atol=1e-9)
    pts = vertices(east_side)
    assert pts[:, 0].min() >= 176.0 and pts[:, 0].max() <= 184.0 and (pts[:, 0] > 180.0).any()
    assert max(np.abs(np.diff(s[:, 0])).max() for s in east_side) < 1.0


def test_near_lon_moves_whole_parts() -> None:
    left = shapely.box(179.0, 0.0, 180.0, 1.0)
    right = shapely.box(-180.0, 0.0, -179.0, 1.0)
    moved = near_lon(np.array([left, right], dtype=object), 180.0)
    assert shapely.bounds(moved[0]).tolist() == [179.0, 0.0, 180.0, 1.0]
    assert shapely.bounds(moved[1]).tolist() == [180.0, 0.0, 181.0, 1.0]
    assert shapely.union_all(moved).geom_type == "Polygon"


# -- the audit map and the audit page use them --------------------------------------------------
QUERY_BOX = (10.5, 41.0, 12.5, 43.0)  # Tuscany's coast: land and sea


def audit_inputs() -> tuple[pd.Series, pd.DataFrame, gpd.GeoDataFrame]:
    w, s, e, n = QUERY_BOX
    query = pd.Series({"query_id": "ISS001-E-1", "date": "20210615", "area_km2": 40000.0, "nadir_lat": 42.0,
                       "nadir_lon": 11.5, "geometry": shapely.box(w, s, e, n)})  # fmt: skip
    regions = gpd.GeoDataFrame(
        {"region_id": ["r1", "r2"],
         "geometry": [shapely.box(w - 0.5, s, w + 1.0, s + 1.5), shapely.box(11.0, 42.0, 13.0, 44.0)]},
        geometry="geometry", crs="EPSG:4326",
    )  # fmt: skip
    pairs = pd.DataFrame({"query_id": ["ISS001-E-1"] * 2, "region_id": ["r1", "r2"], "zoom": [9, 9], "iou": [0.2, 0.4]})
    return query, pairs, regions


def test_audit_map_draws_the_shared_coastlines() -> None:
    fig = query_figure(*audit_inputs())
    try:
        ax = fig.axes[0]
        (w, e), (s, n) = ax.get_xlim(), ax.get_ylim()
        drawn = lines_coloured(ax, COASTLINE_STYLE["colors"])
        shared = coastlines_in_box(w, s, e, n, coastline_step_deg(w, e))
        assert len(shared) > 0 and len(drawn) == len(shared)
        for a, b in zip(drawn, shared, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        plt.close(fig)


def test_audit_page_carries_the_shared_coastlines() -> None:
    w, s, e, n = QUERY_BOX
    ring = [(s, w), (n, w), (n, e), (s, e)]
    cfg = AuditPageConfig(margin_deg=1.0, coastline_step_deg=0.1, simplify_deg=0.0)
    bg = make_background({"r": ring}, None, [], cfg)
    shared = coastlines_in_box(w - 1.0, s - 1.0, e + 1.0, n + 1.0, 0.1)
    assert len(shared) > 0
    assert [list(line) for line in bg.coastlines] == [[(round(y, 3), round(x, 3)) for x, y in seg] for seg in shared]


def test_audit_map_shows_coastlines_where_they_are() -> None:
    """Dark grey pixels lie on the projected coastline vertices (content, not a header)."""
    fig = query_figure(*audit_inputs())
    try:
        fig.canvas.draw()
        img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        ax = fig.axes[0]
        (w, e), (s, n) = ax.get_xlim(), ax.get_ylim()
        pts = vertices(lines_coloured(ax, COASTLINE_STYLE["colors"]))
        inside = (pts[:, 0] > w) & (pts[:, 0] < e) & (pts[:, 1] > s) & (pts[:, 1] < n)
        px = ax.transData.transform(pts[inside])
        cols = np.clip(px[:, 0].astype(int), 2, img.shape[1] - 3)
        rows = np.clip((img.shape[0] - px[:, 1]).astype(int), 2, img.shape[0] - 3)
        near = np.stack([img[rows + dy, cols + dx].max(axis=-1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        dark = near.min(axis=0) < 110  # "0.2" is 51; the faint region fills stay light
        assert inside.sum() > 50 and dark.mean() > 0.9
    finally:
        plt.close(fig)


# -- the evaluation-set map ---------------------------------------------------------------------
POI = (5.0, 0.0)  # off Ghana: the Gulf of Guinea and West Africa


def evalset_inputs() -> tuple[EvalSetSpec, object, pd.DataFrame, dict]:
    spec = EvalSetSpec(name="gulf", lat=POI[0], lon=POI[1], query_radius_km=600.0, db_radius_km=900.0)
    centres = [(5.0, 0.0), (6.0, 1.0), (4.0, -2.0), (20.0, 20.0)]
    regions = pd.DataFrame({
        "region_id": [f"09_{i:04d}_0000" for i in range(4)], "zoom": 9, "row": range(4), "col": 0,
        "center_lat": [c[0] for c in centres], "center_lon": [c[1] for c in centres],
        "geometry": [shapely.box(lo - 0.5, la - 0.5, lo + 0.5, la + 0.5) for la, lo in centres],
    })  # fmt: skip
    queries = pd.DataFrame({
        "query_id": ["ISS001-E-1", "ISS001-E-2", "ISS001-E-3"], "nadir_lat": [5.2, 6.0, 3.0],
        "nadir_lon": [0.3, 1.2, 2.0],
        "geometry": [shapely.box(0.0, 5.0, 0.6, 5.4), shapely.box(1.0, 5.8, 1.4, 6.2), shapely.box(1.8, 2.8, 2.2, 3.2)],
    })  # fmt: skip
    pairs = pd.DataFrame({"query_id": ["ISS001-E-1", "ISS001-E-2"], "region_id": regions["region_id"][:2],
                          "iou": [0.3, 0.2], "intersection_km2": [100.0, 80.0]})  # fmt: skip
    ev = select_evalset(spec, queries, regions, pairs)
    return spec, ev, queries.set_index("query_id"), summarize(spec, ev)


@pytest.fixture(scope="module")
def evalset_map(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, np.ndarray, EvalSetSpec]:
    spec, ev, queries, summary = evalset_inputs()
    fig = evalset_figure(spec, ev, queries, summary)
    dest = tmp_path_factory.mktemp("map") / "map.png"
    save_palette_png(fig, dest)  # as render_map writes map.png; the draw also fixes the axes' place
    img = np.asarray(Image.open(dest).convert("RGB")).astype(int)
    yield fig, img, spec
    plt.close(fig)


def test_evalset_map_land_pixels_where_the_mask_says_land(evalset_map: tuple) -> None:
    fig, img, spec = evalset_map
    ax = fig.axes[0]
    assert img.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width))
    land = np.abs(img - np.asarray(LAND_RGB) * 255).max(axis=-1) <= 3
    sea = np.abs(img - np.asarray(SEA_RGB) * 255).max(axis=-1) <= 3
    rows, cols = np.nonzero(land | sea)
    pick = np.random.default_rng(0).choice(len(rows), size=min(4000, len(rows)), replace=False)
    rows, cols = rows[pick], cols[pick]
    xy = ax.transData.inverted().transform(np.column_stack([cols + 0.5, img.shape[0] - rows - 0.5]))
    lon, lat = PoiProjection(spec.lat, spec.lon).inv(xy[:, 0], xy[:, 1])
    mask_land = globe.is_land(lat, lon)
    drawn_land = land[rows, cols]
    assert 0.2 < drawn_land.mean() < 0.8  # both land and sea are on this map
    assert (drawn_land == mask_land).mean() > 0.99  # off only at the smoothed coast (a 1° shift gives ~0.95)


def test_evalset_map_coastline_is_the_shared_one(evalset_map: tuple) -> None:
    """The map contours the land mask in its own projection; its coastline follows the
    lon/lat coastline the other maps draw, to within the contouring step."""
    fig, _, spec = evalset_map
    ax = fig.axes[0]
    drawn = vertices(lines_coloured(ax, "0.45"))
    assert len(drawn) > 100
    lon, lat = PoiProjection(spec.lat, spec.lon).inv(drawn[:, 0], drawn[:, 1])
    box = (lon.min() - 1, lat.min() - 1, lon.max() + 1, lat.max() + 1)
    shared = shapely.MultiLineString(coastlines_in_box(*box, 0.05))
    pick = np.random.default_rng(0).choice(len(lon), size=min(300, len(lon)), replace=False)
    dist = shapely.distance(shapely.points(lon[pick], lat[pick]), shared)
    assert np.quantile(dist, 0.95) < 0.1  # degrees


def test_audit_map_names_an_off_map_nadir_in_geographic_longitude() -> None:
    """A footprint west of 180 with its nadir just east of it: the panel is drawn around
    the footprint and the note gives the nadir's longitude as stored, not one past 180."""
    query, pairs, regions = audit_inputs()
    query = query.copy()
    query["geometry"] = shapely.box(175.0, -40.0, 176.0, -38.5)
    query["nadir_lat"], query["nadir_lon"] = -39.5, -179.4
    regions = regions.assign(geometry=[shapely.box(174.5, -40.5, 176.5, -38.0), shapely.box(175, -39, 176, -38)])
    fig = query_figure(query, pairs, regions)
    try:
        notes = [t.get_text() for t in fig.axes[0].texts if "off map" in t.get_text()]
        assert notes == ["nadir (-39.5, -179.4) off map"]
    finally:
        plt.close(fig)
