"""The synthetic Earth (`pipeline.synthetic.world`) and its WMTS server
(`pipeline.synthetic.server`): determinism, seamless tiles, zoom consistency, years that
differ without moving the geography, an Earth-like sea fraction, land and sea where the
real Earth has them, and EOX's URL forms."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET

import mercantile
import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.synthetic.server import SyntheticTileServer, layer_name
from pipeline.synthetic.world import YEARS, render_lonlat, render_tile

# Places on real land, hence land in the world (its continents follow the GLOBE mask):
# Texas coastal plain, the Alps, the Amazon mouth (a coast), the Sahara.
LAND = ((-96.5, 30.5), (9.0, 46.3), (-48.5, -1.3), (10.0, 24.0))
ANTIMERIDIAN_LAT = 66.5  # Chukotka: land crosses 180 degrees here


def _tile(lon: float, lat: float, z: int) -> mercantile.Tile:
    return mercantile.tile(lon, lat, z)


def _render(z: int, x: int, y: int, year: int = 2021) -> np.ndarray:
    return render_tile(z, x % (1 << z), y, year).astype(np.float64)


def _variation(img: np.ndarray) -> float:
    """Mean absolute deviation from the image's mean colour: how much there is to see."""
    return float(np.abs(img - img.mean(axis=(0, 1))).mean())


def _edge_step(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean colour step across the edge between a's last and b's first column, 90th
    percentile of the same step between neighbouring columns within 32 px of the edge).

    A seam would make the edge step an outlier among the steps inside the tiles."""
    both = np.concatenate([a[:, -33:], b[:, :33]], axis=1)
    steps = np.abs(np.diff(both, axis=1)).mean(axis=(0, 2))
    across = float(steps[32])
    inside = float(np.quantile(np.delete(steps, 32), 0.9))
    return across, inside


# --------------------------------------------------------------------------- world


def test_render_tile_is_deterministic_and_seeded() -> None:
    t = _tile(*LAND[0], 10)
    a = render_tile(10, t.x, t.y, 2019)
    b = render_tile(10, t.x, t.y, 2019)
    assert a.dtype == np.uint8 and a.shape == (256, 256, 3)
    assert a.tobytes() == b.tobytes()
    other_seed = render_tile(10, t.x, t.y, 2019, seed=1)
    assert np.abs(other_seed.astype(int) - a.astype(int)).mean() > 5


def test_render_tile_size_and_arguments() -> None:
    t = _tile(*LAND[1], 9)
    assert render_tile(9, t.x, t.y, 2018, size=64).shape == (64, 64, 3)
    for bad in ((9, -1, 0), (9, 512, 0), (9, 0, 512), (-1, 0, 0), (30, 0, 0)):
        with pytest.raises(ValueError):
            render_tile(*bad, 2018)
    with pytest.raises(ValueError):
        render_tile(9, t.x, t.y, 2018, size=7)


@pytest.mark.parametrize("zoom", [9, 10, 11])
def test_neighbouring_tiles_continue_each_other(zoom: int) -> None:
    """The step across a tile edge is like the step between neighbouring pixels inside."""
    for lon, lat in LAND[:2]:
        t = _tile(lon, lat, zoom)
        a, right, below = _render(zoom, t.x, t.y), _render(zoom, t.x + 1, t.y), _render(zoom, t.x, t.y + 1)
        across, inside = _edge_step(a, right)
        assert across < 1.25 * inside + 1.0, (lon, lat, across, inside)
        across, inside = _edge_step(a.transpose(1, 0, 2), below.transpose(1, 0, 2))
        assert across < 1.25 * inside + 1.0, (lon, lat, across, inside)


@settings(max_examples=6, deadline=None)
@given(
    zoom=st.sampled_from([9, 10, 11]),
    lon=st.floats(-179.0, 179.0),
    lat=st.floats(-60.0, 60.0),
)
def test_edges_are_seamless_anywhere(zoom: int, lon: float, lat: float) -> None:
    t = _tile(lon, lat, zoom)
    a, b = _render(zoom, t.x, t.y, 2018), _render(zoom, t.x + 1, t.y, 2018)
    across, inside = _edge_step(a, b)
    assert across < 1.25 * inside + 1.0


@pytest.mark.parametrize("zoom", [9, 10])
def test_downsampled_children_match_their_parent(zoom: int) -> None:
    """2x2 tiles of zoom z+1, averaged 2x2, look like the zoom-z tile (point-sampled
    noise makes it approximate: the difference is a fraction of the image's own variation)."""
    for lon, lat in LAND:
        t = _tile(lon, lat, zoom)
        parent = _render(zoom, t.x, t.y)
        rows = [np.concatenate([_render(zoom + 1, 2 * t.x + i, 2 * t.y + j) for i in (0, 1)], axis=1) for j in (0, 1)]
        down = np.concatenate(rows, axis=0).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        mad = float(np.abs(down - parent).mean())
        assert mad < 0.5 * _variation(parent) + 2.0, (lon, lat, mad, _variation(parent))
        assert mad < 8.0


def test_no_seam_at_the_antimeridian() -> None:
    for zoom in (9, 11):
        y = _tile(179.9, ANTIMERIDIAN_LAT, zoom).y
        east, west = _render(zoom, (1 << zoom) - 1, y), _render(zoom, 0, y)
        assert _variation(east) > 3.0  # land, so the test has something to compare
        across, inside = _edge_step(east, west)
        assert across < 1.25 * inside + 1.0
    lat = np.linspace(-50.0, 50.0, 101)
    a = render_lonlat(np.full_like(lat, 180.0), lat, 2020).astype(int)
    b = render_lonlat(np.full_like(lat, -180.0), lat, 2020).astype(int)
    assert np.abs(a - b).max() <= 1


def _edge_map(img: np.ndarray) -> np.ndarray:
    """Grey gradient magnitude averaged over 8x8 blocks: where the outlines are (coasts,
    rivers, relief, the edges of woods and towns), whichever side of them is brighter."""
    g = img.mean(axis=2)
    m = np.hypot(np.diff(g, axis=0)[:, :-1], np.diff(g, axis=1)[:-1])
    return m[:248, :248].reshape(31, 8, 31, 8).mean(axis=(1, 3)).ravel()


def test_years_differ_but_show_the_same_place() -> None:
    """The years change brightness patterns inside a tile (the year's own fields), but the
    outlines stay where they were: a tile's edge map matches its other years far better
    than it matches the neighbouring tile."""
    for lon, lat in LAND:
        t = _tile(lon, lat, 10)
        imgs = {year: _render(10, t.x, t.y, year) for year in YEARS}
        neighbour = _edge_map(_render(10, t.x + 1, t.y, 2021))
        for a, b in ((2018, 2021), (2019, 2020)):
            diff = float(np.abs(imgs[a] - imgs[b]).mean())
            same = np.corrcoef(_edge_map(imgs[a]), _edge_map(imgs[b]))[0, 1]
            other = np.corrcoef(_edge_map(imgs[a]), neighbour)[0, 1]
            assert diff > 5.0, (lon, lat, a, b, diff)  # the years are not copies
            assert same > 0.3 and same > other + 0.15, (lon, lat, a, b, same, other)  # the geography stays


def test_years_rearrange_bright_and_dark_inside_a_tile() -> None:
    """The year's own fields vary inside a tile, so a year is not a recolouring of another:
    the coarse grey pattern (8x8-pixel block means) of one year predicts another's only in
    part. A global season shift and colour balance alone keep it almost perfectly
    (correlation near 1), and a grey thumbnail would then match every region across years."""
    corr = []
    for lon, lat in LAND:
        t = _tile(lon, lat, 10)
        blocks = {
            y: _render(10, t.x, t.y, y).mean(axis=2).reshape(32, 8, 32, 8).mean(axis=(1, 3)).ravel() for y in YEARS
        }
        corr += [np.corrcoef(blocks[a], blocks[b])[0, 1] for a, b in ((2018, 2021), (2019, 2020), (2018, 2019))]
    assert float(np.mean(corr)) < 0.75, corr


@pytest.mark.parametrize("seed", [0, 1])
def test_sea_covers_about_seven_tenths(seed: int) -> None:
    n = 4000  # an even spread of points (Fibonacci lattice), seen as 20 km pixels
    k = np.arange(n) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * k / n))
    lon = (k * 180.0 * (3.0 - math.sqrt(5.0))) % 360.0 - 180.0
    rgb = render_lonlat(lon, lat, 2021, seed, pixel_m=20000.0).astype(int)
    water = (rgb[:, 2] > rgb[:, 0] + 20) & (rgb[:, 2] > rgb[:, 1])
    assert 0.6 < water.mean() < 0.8


def test_render_lonlat_agrees_with_tiles() -> None:
    """The point renderer is the same world: pixel centres of a tile, rendered as points
    of the tile's pixel size, match the tile (up to how finely each samples the noise)."""
    for (lon, lat), z in zip(LAND[:3], (9, 10, 11)):
        t = _tile(lon, lat, z)
        tile = render_tile(z, t.x, t.y, 2020).astype(float)
        idx = np.arange(2, 256, 8)
        n = 1 << z
        lons = (t.x + (idx + 0.5) / 256) / n * 360.0 - 180.0
        lats = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * (t.y + (idx + 0.5) / 256) / n))))
        glon, glat = np.meshgrid(lons, lats)
        pix = 40075016.686 / (n * 256) * np.cos(np.radians(glat))
        pts = render_lonlat(glon, glat, 2020, pixel_m=pix).astype(float)
        assert pts.shape == (idx.size, idx.size, 3)
        sub = tile[np.ix_(idx, idx)]
        # tiles interpolate their finest octaves from two nodes per noise cell
        assert np.abs(pts - sub).mean() < 0.5 * _variation(sub) + 2.0


def test_render_lonlat_shapes() -> None:
    assert render_lonlat(10.0, 45.0, 2018).shape == (3,)
    assert render_lonlat(np.zeros((2, 3)), np.zeros((2, 3)), 2018).shape == (2, 3, 3)
    assert render_lonlat(np.zeros(0), np.zeros(0), 2018).shape == (0, 3)


# --------------------------------------------------------------------------- server

REST = "/wmts/1.0.0/{layer}/default/{tms}/{z}/{y}/{x}.jpg"
KVP = (
    "/wmts?layer={layer}&style=default&tilematrixset=GoogleMapsCompatible&Service=WMTS&Request=GetTile"
    "&Version=1.0.0&Format=image%2Fjpeg&TileMatrix={z}&TileCol={x}&TileRow={y}"
)

KVP_UPPER = (
    "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER={layer}&STYLE=default&FORMAT=image%2Fjpeg"
    "&TILEMATRIXSET=g&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}"
)


@pytest.fixture(scope="module")
def server():
    with SyntheticTileServer(seed=0) as srv:
        yield srv


def test_rest_and_kvp_serve_the_same_jpeg(server: SyntheticTileServer) -> None:
    t = _tile(*LAND[0], 10)
    layer = layer_name(2021)
    with requests.Session() as http:
        rest = http.get(server.base_url + REST.format(layer=layer, tms="g", z=10, y=t.y, x=t.x), timeout=10)
        long = http.get(
            server.base_url + REST.format(layer=layer, tms="GoogleMapsCompatible", z=10, y=t.y, x=t.x), timeout=10
        )
        kvp = http.get(server.base_url + KVP.format(layer=layer, z=10, y=t.y, x=t.x), timeout=10)
        # WMTS parameter names are case-insensitive
        upper = http.get(server.base_url + KVP_UPPER.format(layer=layer, z=10, y=t.y, x=t.x), timeout=10)
    for resp in (rest, long, kvp, upper):
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "image/jpeg"
    assert rest.content == long.content == kvp.content == upper.content
    img = Image.open(io.BytesIO(rest.content))
    assert img.format == "JPEG" and img.size == (256, 256) and img.mode == "RGB"
    decoded = np.asarray(img).astype(int)
    assert np.abs(decoded - render_tile(10, t.x, t.y, 2021).astype(int)).mean() < 4.0


def test_capabilities_list_four_layers_with_attribution(server: SyntheticTileServer) -> None:
    resp = requests.get(server.base_url + "/wmts/1.0.0/WMTSCapabilities.xml", timeout=10)
    assert resp.status_code == 200 and "xml" in resp.headers["Content-Type"]
    ns = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
    root = ET.fromstring(resp.content)
    layers = root.findall("w:Contents/w:Layer", ns)
    assert [lay.find("ows:Identifier", ns).text for lay in layers] == [layer_name(y) for y in YEARS]
    for year, lay in zip(YEARS, layers):
        abstract = lay.find("ows:Abstract", ns).text
        assert "EOxCloudless https://cloudless.eox.at by EOX IT Services GmbH" in abstract
        assert f"(Contains modified Copernicus Sentinel data {year})" in abstract
        assert "synthetic" in abstract.lower() and "no licence restriction" in abstract
        template = lay.find("w:ResourceURL", ns).get("template")
        assert template.startswith(server.base_url) and template.endswith("{TileMatrix}/{TileRow}/{TileCol}.jpg")
    sets = {s.find("ows:Identifier", ns).text for s in root.findall("w:Contents/w:TileMatrixSet", ns)}
    assert {"GoogleMapsCompatible", "g"} <= sets
    kvp = requests.get(server.base_url + "/wmts?service=WMTS&request=GetCapabilities", timeout=10)
    assert kvp.status_code == 200 and kvp.content == resp.content


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (REST.format(layer="s2cloudless-2017_3857", tms="g", z=9, y=0, x=0), 404),  # unknown layer
        (REST.format(layer="s2cloudless-2021_4326", tms="g", z=9, y=0, x=0), 404),
        (REST.format(layer=layer_name(2021), tms="WorldCRS84Quad", z=9, y=0, x=0), 404),  # unknown matrix set
        (REST.format(layer=layer_name(2021), tms="g", z=19, y=0, x=0), 404),  # zoom out of range
        (REST.format(layer=layer_name(2021), tms="g", z=9, y=512, x=0), 404),  # row out of range
        (REST.format(layer=layer_name(2021), tms="g", z=9, y=0, x=-1), 404),  # column out of range
        (KVP.format(layer="nope", z=9, y=0, x=0), 404),
        ("/tiles/9/0/0.png", 404),
        (REST.format(layer=layer_name(2021), tms="g", z="nine", y=0, x=0), 400),  # malformed
        (KVP.format(layer=layer_name(2021), z=9, y="1.5", x=0), 400),
        ("/wmts?service=WMTS&request=GetTile&layer=" + layer_name(2021), 400),  # missing parameters
        ("/wmts?service=WMS&request=GetMap", 400),
        (KVP.format(layer=layer_name(2021), z=9, y=0, x=0).replace("image%2Fjpeg", "image%2Fpng"), 400),
    ],
)
def test_errors(server: SyntheticTileServer, path: str, status: int) -> None:
    resp = requests.get(server.base_url + path, timeout=10)
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("text/plain") and resp.text.strip()


def test_fault_hook_and_clean_shutdown() -> None:
    seen: list[tuple[str, int]] = []

    def fault(path: str, attempt: int) -> tuple[int, dict[str, str], bytes] | None:
        seen.append((path, attempt))
        return (429, {"Retry-After": "1"}, b"slow down") if attempt == 1 else None

    path = REST.format(layer=layer_name(2018), tms="g", z=9, y=200, x=300)
    with SyntheticTileServer(seed=0, fault=fault) as srv:
        base = srv.base_url
        first = requests.get(base + path, timeout=10)
        second = requests.get(base + path, timeout=10)
        assert srv.requests == 2
    assert (first.status_code, first.headers["Retry-After"], first.content) == (429, "1", b"slow down")
    assert second.status_code == 200 and second.headers["Content-Type"] == "image/jpeg"
    assert seen == [(path, 1), (path, 2)]
    with pytest.raises(requests.ConnectionError):
        requests.get(base + path, timeout=2)


# --------------------------------------------------------------------------- real land


def _water(rgb: np.ndarray) -> np.ndarray:
    """Sea, lake and river pixels: the world paints water, and only water, blue-dominant."""
    rgb = rgb.astype(int)
    return (rgb[..., 2] > rgb[..., 0] + 20) & (rgb[..., 2] > rgb[..., 1])


def test_land_and_sea_follow_the_real_land_mask() -> None:
    """Points and whole tiles: where GLOBE (global-land-mask, the grid stage's mask) has
    land the world shows land, where it has sea the world shows sea, up to the coast
    detail its noise draws."""
    from global_land_mask import globe

    n = 3000  # an even spread (Fibonacci lattice) over the database's +-60 degrees
    k = np.arange(n) + 0.5
    lat = np.degrees(np.arcsin((1.0 - 2.0 * k / n) * math.sin(math.radians(60.0))))
    lon = (k * 180.0 * (3.0 - math.sqrt(5.0))) % 360.0 - 180.0
    real_land = globe.is_land(lat, lon)
    shown_land = ~_water(render_lonlat(lon, lat, 2021, pixel_m=1000.0))
    assert shown_land[real_land].mean() > 0.85  # lakes and rivers make up part of the rest
    assert (~shown_land[~real_land]).mean() > 0.95
    # tiles along the Gulf coast, over land, sea and coast: rendered land share vs GLOBE's
    shares = []
    for x in range(112, 124):
        for y in (212, 214, 216):  # zoom 9, ~26-33 N, -101..-94 E
            tile = render_tile(9, x, y, 2018, size=64)
            b = mercantile.bounds(x, y, 9)
            glon, glat = np.meshgrid(np.linspace(b.west, b.east, 64), np.linspace(b.north, b.south, 64))
            shares.append(((~_water(tile)).mean(), globe.is_land(glat, glon).mean()))
    shown, real = np.array(shares).T
    assert real.min() < 0.1 and real.max() > 0.9  # the sample holds sea, land and coast
    assert np.corrcoef(shown, real)[0, 1] > 0.9
    assert np.abs(shown - real).mean() < 0.15
