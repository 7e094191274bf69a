"""Simulated astronaut photos (`pipeline.synthetic.photos`) and the query-photo fetcher
(`pipeline.fetch.queries`): determinism, orientation, content at the footprint, effects,
selection, the synthetic and NASA paths (against a local stub server with faults), resume."""

from __future__ import annotations

import io
import math
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.fetch import queries as qmod
from pipeline.fetch.client import ClientConfig
from pipeline.fetch.queries import QueryPhotoConfig, fetch_query_photos, resize_photo, select_queries
from pipeline.fetch.store import sha256_file
from pipeline.geo.names import query_filename
from pipeline.synthetic.photos import NO_EFFECTS, PhotoEffects, PhotoGeometry, photo_seed, render_photo
from pipeline.synthetic.world import render_lonlat

R = 6371008.8


def square(lat: float, lon: float, side_km: float) -> list[float]:
    """A north-up square footprint in NASA's corner order, read unmirrored (see photos.py):
    LL = top-left = NW, UL = bottom-left = SW, UR = bottom-right = SE, LR = top-right = NE."""
    dlat = math.degrees(side_km * 500.0 / R)
    dlon = dlat / math.cos(math.radians(lat))
    nw, sw, se, ne = (
        (lat + dlat, lon - dlon),
        (lat - dlat, lon - dlon),
        (lat - dlat, lon + dlon),
        (lat + dlat, lon + dlon),
    )
    return [v for corner in (nw, sw, se, ne) for v in corner]


def rolled(corners: list[float], k: int = 1) -> list[float]:
    """The same footprint with its corner labels moved k places (LL takes UL's corner...)."""
    pts = [corners[i : i + 2] for i in range(0, 8, 2)]
    return [v for p in pts[k:] + pts[:k] for v in p]


GALVESTON = square(29.35, -94.85, 60.0)  # Gulf coast: land and sea, so there is structure to match


def _grey(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).mean(axis=-1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_grey(a).ravel(), _grey(b).ravel())[0, 1])


# --------------------------------------------------------------------------- photos


def test_render_photo_is_deterministic_and_seeded() -> None:
    a = render_photo(GALVESTON, 2016, 7, 128)
    b = render_photo(GALVESTON, 2016, 7, 128)
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
    assert a.tobytes() == b.tobytes()
    assert render_photo(GALVESTON, 2016, 8, 128).tobytes() != a.tobytes()  # other effects
    assert photo_seed("ISS047-E-55412") == photo_seed("ISS047-E-55412") != photo_seed("ISS047-E-55413")


def test_rotated_footprint_gives_the_rotated_photo() -> None:
    """Moving every corner label one place turns the photo's top edge from north to west:
    the content turns 90 degrees clockwise; ORIENTATION = 90 (north at the right) picks
    the same framing from the unrolled corners."""
    north_up = render_photo(GALVESTON, 2021, 0, 96, effects=NO_EFFECTS, render_px=96).astype(int)
    west_up = render_photo(rolled(GALVESTON), 2021, 0, 96, effects=NO_EFFECTS, render_px=96).astype(int)
    by_orientation = render_photo(GALVESTON, 2021, 0, 96, orientation=90.0, effects=NO_EFFECTS, render_px=96)
    expected = np.rot90(north_up, -1)
    assert np.abs(west_up - expected).mean() < 1.0
    assert np.abs(west_up - north_up).mean() > 10.0  # the test is not trivially true
    assert np.abs(by_orientation.astype(int) - expected).mean() < 1.0
    assert PhotoGeometry(GALVESTON).up_bearing == pytest.approx(0.0, abs=0.5)
    assert PhotoGeometry(GALVESTON, 90.0).up_bearing == pytest.approx(270.0, abs=0.5)
    assert PhotoGeometry(rolled(GALVESTON, 2), 0.0).up_bearing == pytest.approx(0.0, abs=0.5)


def test_photo_shows_the_world_at_its_footprint() -> None:
    """Without effects, the photo is the world at the footprint: it correlates with
    render_lonlat over the same ground far better than with a footprint 40 km away."""
    photo = render_photo(GALVESTON, 2021, 0, 128, effects=NO_EFFECTS, render_px=128)
    small = photo.astype(float).reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    u = (np.arange(32) + 0.5) / 32
    uu, vv = np.meshgrid(u, u)
    pix = PhotoGeometry(GALVESTON).ground_pixel_m(32)
    same_lon, same_lat = PhotoGeometry(GALVESTON).to_lonlat(uu, vv)
    here = render_lonlat(same_lon, same_lat, 2021, pixel_m=pix)
    there = render_lonlat(same_lon + 0.4, same_lat, 2021, pixel_m=pix)
    c_here, c_there = _corr(small, here), _corr(small, there)
    assert c_here > 0.9, c_here
    assert c_here > c_there + 0.3, (c_here, c_there)


def test_effects_degrade_but_keep_the_scene() -> None:
    bare = render_photo(GALVESTON, 2021, 3, 128, effects=NO_EFFECTS)
    clear = PhotoEffects(cloud_chance=0.0)
    cloudy = PhotoEffects(cloud_chance=1.0, cloud_cover=(0.3, 0.3))
    a = render_photo(GALVESTON, 2021, 3, 128, effects=clear)
    b = render_photo(GALVESTON, 2021, 3, 128, effects=cloudy)
    assert np.abs(a.astype(int) - bare).mean() > 2.0
    assert _corr(a, bare) > 0.8
    white = (_grey(b) > 200).mean()
    assert 0.1 < white < 0.5, white  # about the drawn cloud cover is cloud
    assert (_grey(a) > 200).mean() < 0.05


def test_haze_thickens_towards_the_horizon() -> None:
    """An oblique shot looking north (a 300 km footprint, nadir 600 km south of its centre):
    the line of sight is longer, so the haze thicker, on the far (top) side."""
    wide = square(29.35, -94.85, 300.0)
    haze_only = PhotoEffects(
        haze_tau=(0.3, 0.3), cast=0.0, gamma=(1.0, 1.0), saturation=(1.0, 1.0), cloud_chance=0.0,
        blur_px=(0.0, 0.0), vignette=(0.0, 0.0), jpeg_quality=(0, 0),
    )  # fmt: skip
    bare = render_photo(wide, 2021, 0, 64, effects=NO_EFFECTS).astype(float)
    hazy = render_photo(wide, 2021, 0, 64, nadir=(23.95, -94.85), effects=haze_only).astype(float)
    # hazy = bare + alpha (haze colour - bare): solve for alpha where the two differ enough
    gap = np.asarray(haze_only.haze_colour, dtype=float) - bare
    alpha = np.where(np.abs(gap) > 30, (hazy - bare) / np.where(np.abs(gap) > 30, gap, 1.0), np.nan)
    top, bottom = np.nanmedian(alpha[:12]), np.nanmedian(alpha[-12:])
    assert 0.0 < bottom < top, (top, bottom)
    assert top > 1.15 * bottom


def test_render_photo_rejects_bad_footprints() -> None:
    with pytest.raises(ValueError):
        render_photo([30.0, -95.0] * 4, 2021, 0, 64)
    with pytest.raises(ValueError):
        render_photo([float("nan")] * 8, 2021, 0, 64)


def test_antimeridian_footprint() -> None:
    """A footprint across 180 degrees (Chukotka) renders as one piece, like its mirror halves."""
    corners = square(66.0, 180.0, 80.0)
    photo = render_photo(corners, 2021, 0, 64, effects=NO_EFFECTS)
    shifted = render_photo(
        [v if i % 2 == 0 else v - 360.0 for i, v in enumerate(corners)], 2021, 0, 64, effects=NO_EFFECTS
    )
    assert photo.tobytes() == shifted.tobytes()
    assert _grey(photo).std() > 2.0


# --------------------------------------------------------------------------- selection


def test_select_queries() -> None:
    queries = pd.DataFrame({"query_id": ["q3", "q1", "q2", "q4", "q5"], "x": range(5)})
    inter = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q2", "q2", "q3", "q5"],
            "region_id": ["r1", "r2", "r1", "r9", "r2", "r9"],
        }
    )
    out = select_queries(queries, inter, {"r1", "r2"})
    # q1: all positives inside; q2: one outside; q3: inside; q4: no positive; q5: outside
    assert out["query_id"].tolist() == ["q1", "q3"]
    assert out["x"].tolist() == [1, 0]
    assert select_queries(queries, inter, []).empty


# --------------------------------------------------------------------------- config


def test_config_from_section() -> None:
    cfg = QueryPhotoConfig.from_section(
        {"source": "nasa", "size": 512, "resize": "pad", "effects": {"cloud_cover": [0.1, 0.2]}}
    )
    assert (cfg.source, cfg.size, cfg.resize, cfg.effects.cloud_cover) == ("nasa", 512, "pad", (0.1, 0.2))
    for bad in ({"source": "eox"}, {"resize": "squash"}, {"jpeg_quality": 0}, {"nope": 1}, {"effects": {"x": 1}}):
        with pytest.raises(ConfigError):
            QueryPhotoConfig.from_section(bad)
    # what shapes the bytes changes the id, what only shapes the speed does not
    assert QueryPhotoConfig(seed=1).config_id != QueryPhotoConfig().config_id
    assert QueryPhotoConfig(workers=4).config_id == QueryPhotoConfig().config_id


def test_resize_policies() -> None:
    wide = Image.new("RGB", (300, 100), (200, 0, 0))
    wide.paste((0, 0, 200), (0, 0, 100, 100))  # the left third is blue
    s = np.asarray(resize_photo(wide, 90, "stretch"))
    assert s.shape == (90, 90, 3) and s[45, 10, 2] > 150 and s[45, 80, 0] > 150
    c = np.asarray(resize_photo(wide, 90, "crop"))
    assert c[45, 5, 0] > 150 and c[45, 85, 0] > 150  # the centre square is all red
    p = np.asarray(resize_photo(wide, 90, "pad"))
    assert p[5, 45].max() < 10 and p[45, 45, 0] > 150  # black bars above and below
    assert p[45, 5, 2] > 150


# --------------------------------------------------------------------------- fetcher


def query_table(n: int, url_base: str = "http://127.0.0.1:9/") -> pd.DataFrame:
    rows = []
    for i in range(n):
        lat, lon = 29.0 + 0.3 * i, -95.5 + 0.4 * i
        corners = square(lat, lon, 50.0)
        qid = f"ISS0{60 + i}-E-{1000 + i}"
        date = f"20{10 + i:02d}0601"
        orientation = [0.0, 90.0, -45.5, 200.0][i % 4]
        row = dict(zip(qmod.CORNER_COLUMNS, corners))
        row.update(
            query_id=qid, year=int(date[:4]), date=date, nadir_lat=lat - 2.0, nadir_lon=lon, orientation=orientation,
            url=f"{url_base}{qid}.JPG",
            filename=query_filename(corners, qid, date, lat - 2.0, lon, 2500.0, f"{orientation:.1f}"),
        )  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def _tree(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((root / "queries").glob("*.jpg"))}


SMALL = dict(size=96, render_px=64)


def test_synthetic_fetch_writes_names_manifest_and_resumes(tmp_path: Path) -> None:
    table = query_table(3)
    cfg = QueryPhotoConfig(**SMALL)
    first = fetch_query_photos(table, tmp_path, cfg, progress=False)
    assert (first["ok"], first["reused"], first["failed"]) == (3, 0, 0)
    man = pd.read_parquet(tmp_path / "queries" / "manifest.parquet")
    assert list(man.columns) == qmod.MANIFEST_COLUMNS
    assert man["query_id"].tolist() == sorted(table["query_id"])
    assert set(man["status"]) == {"ok"} and set(man["source"]) == {"synthetic"}
    for _, row in man.iterrows():
        path = tmp_path / row["path"]
        assert path.name in set(table["filename"]) and sha256_file(path) == row["sha256"]
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 96))
    assert "SYNTHETIC" in (tmp_path / "queries" / "ATTRIBUTION.txt").read_text()
    tree = _tree(tmp_path)

    again = fetch_query_photos(table, tmp_path, cfg, progress=False)
    assert (again["ok"], again["reused"]) == (0, 3)
    # a deleted and a corrupted photo are redone, identically; the third is kept
    names = sorted(tree)
    (tmp_path / "queries" / names[0]).unlink()
    (tmp_path / "queries" / names[1]).write_bytes(b"garbage")
    third = fetch_query_photos(table, tmp_path, cfg, progress=False)
    assert (third["ok"], third["reused"]) == (2, 1)
    assert _tree(tmp_path) == tree
    # a setting that changes the bytes redoes everything
    changed = fetch_query_photos(table, tmp_path, QueryPhotoConfig(**SMALL, jpeg_quality=60), progress=False)
    assert changed["ok"] == 3


def test_killed_run_resumes_to_the_same_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = query_table(4)
    cfg = QueryPhotoConfig(**SMALL)
    fetch_query_photos(table, tmp_path / "clean", cfg, progress=False)

    real = qmod.render_query
    calls = Counter[str]()

    def dies_on_third(row: dict, c: QueryPhotoConfig):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like a kill between two photos
        return real(row, c)

    monkeypatch.setattr(qmod, "render_query", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        fetch_query_photos(table, tmp_path / "run", cfg, progress=False)
    man = pd.read_parquet(tmp_path / "run" / "queries" / "manifest.parquet")
    assert (man["status"] == "ok").sum() == 2  # what was done is recorded
    monkeypatch.setattr(qmod, "render_query", real)
    resumed = fetch_query_photos(table, tmp_path / "run", cfg, progress=False)
    assert (resumed["reused"], resumed["ok"]) == (2, 2)
    assert _tree(tmp_path / "run") == _tree(tmp_path / "clean")


def test_dask_threads_give_the_same_photos(tmp_path: Path) -> None:
    table = query_table(4)
    fetch_query_photos(table, tmp_path / "seq", QueryPhotoConfig(**SMALL), progress=False)
    par = QueryPhotoConfig(**SMALL, workers=2, processes=False)
    summary = fetch_query_photos(table, tmp_path / "par", par, progress=False)
    assert summary["ok"] == 4
    assert _tree(tmp_path / "par") == _tree(tmp_path / "seq")


def test_unsafe_filename_is_refused(tmp_path: Path) -> None:
    table = query_table(1)
    table.loc[0, "filename"] = "../evil.jpg"
    with pytest.raises(InputError):
        fetch_query_photos(table, tmp_path, QueryPhotoConfig(**SMALL), progress=False)


# --------------------------------------------------------------------------- NASA path


def _jpeg(w: int, h: int) -> bytes:
    img = Image.new("RGB", (w, h), (30, 90, 150))
    img.paste((220, 200, 40), (0, 0, w // 3, h))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class PhotoStub:
    """127.0.0.1 server for NASA-like photo URLs; behaviour by the id in the path:
    ...-1000 a 300x200 JPEG; ...-1001 always 404; ...-1002 503 once then the JPEG;
    ...-1003 an HTML page with status 200."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.agents: set[str] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                stub.hits[name] += 1
                stub.agents.add(self.headers.get("User-Agent", ""))
                if name.endswith("-1001.JPG"):
                    self._send(404, b"not here", "text/plain")
                elif name.endswith("-1002.JPG") and stub.hits[name] == 1:
                    self._send(503, b"busy", "text/plain")
                elif name.endswith("-1003.JPG"):
                    self._send(200, b"<html><body>maintenance</body></html>", "text/html; charset=utf-8")
                else:
                    self._send(200, _jpeg(300, 200), "image/jpeg")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/DatabaseImages/ESC/large/"

    def __enter__(self) -> PhotoStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_nasa_path_records_failures_and_retries_them(tmp_path: Path) -> None:
    client = ClientConfig(contact="tests@example.org", min_interval_s=0.0, max_attempts=3, backoff_base_s=0.01)
    cfg = QueryPhotoConfig(source="nasa", size=128)
    with PhotoStub() as stub:
        table = query_table(4, stub.base)
        summary = fetch_query_photos(table, tmp_path, cfg, client, progress=False)
        assert (summary["ok"], summary["not_found"], summary["failed"]) == (2, 1, 1)
        assert summary["failed_by_reason"] == {"bad_content_type": 1, "http_404": 1}
        man = pd.read_parquet(tmp_path / "queries" / "manifest.parquet").set_index("query_id")
        ids = table["query_id"].tolist()
        assert man.loc[ids[0], "status"] == "ok" and man.loc[ids[0], "attempts"] == 1
        assert (man.loc[ids[1], "status"], man.loc[ids[1], "reason"], man.loc[ids[1], "attempts"]) == (
            "not_found", "http_404", 1,
        )  # fmt: skip
        assert man.loc[ids[2], "status"] == "ok" and man.loc[ids[2], "attempts"] == 2  # 503, then the photo
        assert (man.loc[ids[3], "status"], man.loc[ids[3], "reason"], man.loc[ids[3], "attempts"]) == (
            "failed", "bad_content_type", 3,
        )  # fmt: skip
        assert man.loc[ids[0], "url"] == table.loc[0, "url"] and man.loc[ids[0], "source"] == "nasa"
        assert stub.agents == {client.user_agent} and "tests@example.org" in client.user_agent
        # the 300x200 photo is stretched to the square, as upstream did
        with Image.open(tmp_path / man.loc[ids[0], "path"]) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
            px = np.asarray(im)
        assert px[64, 20, 0] > 150 and px[64, 100, 2] > 100  # yellow left third, blue rest, full height
        assert "NASA Johnson Space Center" in (tmp_path / "queries" / "ATTRIBUTION.txt").read_text()
        # a rerun asks again only for what is not ok
        before = Counter(stub.hits)
        again = fetch_query_photos(table, tmp_path, cfg, client, progress=False)
        assert (again["reused"], again["ok"], again["not_found"], again["failed"]) == (2, 0, 1, 1)
        asked = {k for k in stub.hits if stub.hits[k] > before[k]}
        assert asked == {f"{ids[1]}.JPG", f"{ids[3]}.JPG"}


def test_orientation_finding_on_the_real_metadata() -> None:
    """The documented reading of NASA's corners (photos.py docstring), checked on the CSV:
    the corner sequence is counter-clockwise on the map (so LL = top-left pixel, unmirrored),
    the photo's up bearing given ORIENTATION agrees with -ORIENTATION, and the literal label
    order already agrees for about three quarters of the rows."""
    from support import SOURCE_CSV

    df = pd.read_csv(SOURCE_CSV, usecols=[*(c.upper() for c in qmod.CORNER_COLUMNS), "ORIENTATION"])
    corners = df[[c.upper() for c in qmod.CORNER_COLUMNS]].to_numpy(float)
    orient = df["ORIENTATION"].to_numpy(float)
    corners, orient = corners[::5], orient[::5]  # every fifth row keeps the test to seconds
    ccw, err, literal = [], [], []
    for c, o in zip(corners, orient):
        g = PhotoGeometry(c, o)
        ccw.append(
            g.ground_xy[:, 0] @ np.roll(g.ground_xy[:, 1], -1) - np.roll(g.ground_xy[:, 0], -1) @ g.ground_xy[:, 1] > 0
        )
        err.append(abs((g.up_bearing + o + 180.0) % 360.0 - 180.0))
        literal.append(bool(np.allclose(g.image_corners, PhotoGeometry(c).image_corners)))
    assert np.mean(ccw) > 0.999
    err_a = np.array(err)
    assert np.median(err_a) < 4.0 and np.quantile(err_a, 0.95) < 25.0
    assert 0.65 < np.mean(literal) < 0.85
