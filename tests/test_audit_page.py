"""Audit page: data model, reading an evaluation set + predictions, and the page in headless Chromium.

The browser test opens the file from a file:// URL in Debian's chromium (driven by
selenium through /usr/bin/chromedriver, so selenium-manager downloads nothing),
selects a query through the search box, screenshots the map and looks for the green
and red frames; Chrome's network log must show no request other than file:/data:."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from earthloc.audit_page import (
    AuditPageConfig,
    AuditQuery,
    Prediction,
    audit_page_from_files,
    corners_ring,
    make_background,
    region_rings_from_ids,
    unwrap_ring,
    write_audit_page,
)
from pipeline.errors import EarthLocError
from pipeline.geo.names import query_filename
from pipeline.geo.regions import describe_regions

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def rid(row: int, col: int, zoom: int = 9) -> str:
    return f"{zoom:02d}_{row:04d}_{col:04d}"


# Around the Texas POI (30N, 95W) at zoom 9: rows 210.. are ~30.75N, cols 118.. ~97W.
POS_A = [rid(210, 118), rid(210, 120), rid(212, 118)]
FAR_1, FAR_2 = rid(216, 126), rid(218, 130)
FOOT_A = [(28.9, -96.9), (30.6, -96.9), (30.6, -95.0), (28.9, -95.0)]  # LL, UL, UR, LR (lat, lon)


def jpeg(colour: tuple[int, int, int], size: int = 256) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def hand_made() -> tuple[list[AuditQuery], dict[str, list[tuple[float, float]]]]:
    """Query A: rank 1 a positive, rank 2 not, rank 3 a positive. Query B: all misses."""
    a = AuditQuery(
        "ISS030-E-1111", FOOT_A, POS_A,
        [Prediction(POS_A[1], 0.91, 90.0, True), Prediction(FAR_1, 0.85, 0.0, False), Prediction(POS_A[0], 0.80, 270.0, True)],
        orientation="12.5", nadir=(29.8, -95.9), thumbnail_jpeg=jpeg((200, 120, 40), 64),
    )  # fmt: skip
    b = AuditQuery(
        "ISS040-E-2222", FOOT_A, POS_A[:1],
        [Prediction(FAR_1, 0.70, 180.0, False), Prediction(FAR_2, 0.65, 0.0, False)],
    )  # fmt: skip
    return [a, b], region_rings_from_ids([*POS_A, FAR_1, FAR_2])


def embedded_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert m
    return json.loads(m.group(1))


# -- pure parts --------------------------------------------------------------------------------
def test_rings_unwrap_and_match_region_bounds() -> None:
    assert unwrap_ring([(0, 179.0), (1, -179.0), (2, -178.0)]) == [(0, 179.0), (1, 181.0), (2, 182.0)]
    assert corners_ring([1, 179, 2, 179, 2, -179, 1, -179]) == [(1, 179), (2, 179), (2, 181), (1, 181)]
    rings = region_rings_from_ids([rid(10, 510), POS_A[0]])
    (s, w), (n, _), (_, e), _ = rings[rid(10, 510)]
    assert e > 180.0 and e - w == pytest.approx(4 * 360 / 512)  # the wrapping region stays contiguous
    df, _ = describe_regions(pd.DataFrame({"zoom": [9], "row": [210], "col": [118]}))
    (s, w), (n, _), (_, e), _ = rings[POS_A[0]]
    r = df.iloc[0]
    assert (s, w, n, e) == pytest.approx((r.ll_lat, r.ll_lon, r.ul_lat, r.ur_lon))


def test_page_is_self_contained_and_holds_the_data(tmp_path: Path) -> None:
    queries, rings = hand_made()
    page = write_audit_page(tmp_path / "audit.html", "demo", queries, rings, cfg=AuditPageConfig(top_k=2))
    text = page.read_text(encoding="utf-8")
    assert "Leaflet 1.9.4" in text and "leaflet-container" in text  # JS and CSS inlined
    # Leaflet's own source holds an unused attribution link (the control is off); all else is ours.
    leaflet_js = (Path(__file__).resolve().parents[1] / "earthloc/assets/leaflet/leaflet.js").read_text(
        encoding="utf-8"
    )
    assert leaflet_js in text
    ours = text.replace(leaflet_js, "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours), "a remote src/href in the page"
    assert not re.search(r"url\((?!\s*data:)", text.split('<script id="data"')[0]), "CSS refers to a file"
    data = embedded_data(page)
    assert [q["id"] for q in data["queries"]] == ["ISS030-E-1111", "ISS040-E-2222"]
    qa = data["queries"][0]
    assert len(qa["preds"]) == 2 and qa["first_hit"] == 1  # top_k=2 cuts the third
    assert [p[3] for p in qa["preds"]] == [1, 0]
    assert qa["thumb"].startswith("data:image/jpeg;base64,")
    assert data["queries"][1]["first_hit"] is None and data["queries"][1]["thumb"] is None
    assert {r["id"] for r in data["regions"]} == {*POS_A, FAR_1, FAR_2}
    one = embedded_data(write_audit_page(tmp_path / "one.html", "demo", queries, rings, cfg=AuditPageConfig(top_k=1)))
    assert {r["id"] for r in one["regions"]} == {*POS_A, FAR_1}  # FAR_2 is only at rank 2: cut by top_k


def test_rings_other_than_the_grid_are_kept(tmp_path: Path) -> None:
    queries, rings = hand_made()
    rings[FAR_1] = [(lat + 0.5, lon) for lat, lon in rings[FAR_1]]  # not what the id implies
    data = embedded_data(write_audit_page(tmp_path / "a.html", "demo", queries, rings))
    kept = {r["id"]: r.get("ring") for r in data["regions"]}
    assert kept[POS_A[0]] is None
    np.testing.assert_allclose(kept[FAR_1], [v for latlon in rings[FAR_1] for v in latlon], atol=1e-5)


def test_missing_region_geometry_is_an_error(tmp_path: Path) -> None:
    queries, rings = hand_made()
    del rings[FAR_1]
    with pytest.raises(EarthLocError, match=f"no geometry for region {FAR_1}"):
        write_audit_page(tmp_path / "x.html", "demo", queries, rings)
    assert not (tmp_path / "x.html").exists()


def make_set(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A hand-made evaluation set folder, its predictions, a grid file and query photos."""
    set_dir = tmp_path / "evalsets" / "demo"
    set_dir.mkdir(parents=True)
    corners = [v for latlon in FOOT_A for v in latlon]
    names = [
        query_filename(corners, qid, "20120101", 29.8, -95.9, 40000, "12.5")
        for qid in ("ISS030-E-1111", "ISS040-E-2222")
    ]
    pd.DataFrame({"query_index": [0, 1], "query_id": ["ISS030-E-1111", "ISS040-E-2222"], "filename": names,
                  "nadir_lat": [29.8, 29.8], "nadir_lon": [-95.9, -95.9], "num_positives": [3, 1]}
                 ).to_csv(set_dir / "queries.csv", index=False)  # fmt: skip
    db = [*POS_A, FAR_1, FAR_2]
    pd.DataFrame({"db_index": range(len(db)), "region_id": db, "zoom": 9}).to_csv(set_dir / "database.csv", index=False)
    pd.DataFrame({"query_index": [0, 0, 0, 1], "db_index": [0, 1, 2, 0], "iou": 0.1}).to_parquet(
        set_dir / "positives.parquet"
    )
    preds = pd.DataFrame(
        {"query_index": [0, 0, 0, 1, 1], "rank": [1, 2, 3, 1, 2], "db_index": [1, 3, 0, 3, 4],
         "region_id": [db[1], db[3], db[0], db[3], db[4]], "score": [0.91, 0.85, 0.8, 0.7, 0.65],
         "angle_deg": [90.0, 0.0, 270.0, 180.0, 0.0], "is_positive": [True, False, True, False, False]}
    )  # fmt: skip
    preds_path = tmp_path / "predictions.parquet"
    preds.sample(frac=1.0, random_state=0).to_parquet(preds_path)  # order must not matter
    grid, _ = describe_regions(pd.DataFrame([(9, 210 + 2 * i, 118 + 2 * j) for i in range(6) for j in range(8)],
                                            columns=["zoom", "row", "col"]))  # fmt: skip
    grid_path = tmp_path / "regions.parquet"
    grid.to_parquet(grid_path)
    photos = tmp_path / "queries"
    photos.mkdir()
    (photos / names[0]).write_bytes(jpeg((30, 90, 200), 1024))  # only the first query has a photo
    return set_dir, preds_path, grid_path, photos


def test_from_files(tmp_path: Path) -> None:
    set_dir, preds, grid, photos = make_set(tmp_path)
    page = audit_page_from_files(set_dir, preds, grid, photos, tmp_path / "demo.html",
                                 AuditPageConfig(coastlines=False))  # fmt: skip
    data = embedded_data(page)
    assert data["set"] == "demo"
    qa, qb = data["queries"]
    regions = [r["id"] for r in data["regions"]]
    assert [regions[p[0]] for p in qa["preds"]] == [POS_A[1], FAR_1, POS_A[0]]  # sorted by rank
    assert [p[2] for p in qa["preds"]] == [90.0, 0.0, 270.0] and qa["first_hit"] == 1
    assert sorted(regions[i] for i in np.cumsum(qa["pos"])) == sorted(POS_A)  # stored as index deltas
    assert qa["orientation"] == "12.5" and qa["thumb"] and qb["thumb"] is None
    thumb = Image.open(io.BytesIO(__import__("base64").b64decode(qa["thumb"].split(",", 1)[1])))
    assert max(thumb.size) == AuditPageConfig().thumb_px
    # The footprint comes from the corners in the file name.
    assert qa["footprint"] == pytest.approx([v for latlon in FOOT_A for v in latlon])
    # Without the grid file the rings are computed from the ids: the same numbers.
    again = embedded_data(audit_page_from_files(set_dir, preds, None, None, tmp_path / "b.html",
                                                AuditPageConfig(coastlines=False)))  # fmt: skip
    assert again["regions"] == data["regions"] == [{"id": r} for r in sorted(regions)]  # rings implied by the ids
    assert data["coverage"]  # the database in grey


def test_from_files_bad_input(tmp_path: Path) -> None:
    set_dir, preds, grid, _ = make_set(tmp_path)
    bad = pd.read_parquet(preds).drop(columns=["angle_deg"])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(EarthLocError, match=r"missing columns \['angle_deg'\]"):
        audit_page_from_files(set_dir, tmp_path / "bad.parquet", grid, None, tmp_path / "x.html")
    with pytest.raises(EarthLocError, match="no such file"):
        audit_page_from_files(set_dir, tmp_path / "none.parquet", grid, None, tmp_path / "x.html")
    good = pd.read_parquet(preds)
    first = good.index[0]
    for column, value, message in [("is_positive", not good.loc[first, "is_positive"], "is_positive disagrees"),
                                   ("db_index", 99, "not in database.csv"),
                                   ("region_id", "09_0300_0300", "region_id disagrees")]:  # fmt: skip
        bad = good.copy()
        bad.loc[first, column] = value
        bad.to_parquet(tmp_path / "bad.parquet")
        with pytest.raises(EarthLocError, match=message):
            audit_page_from_files(set_dir, tmp_path / "bad.parquet", grid, None, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    for content in (b"", b'query_index,query_id\n0,"a\n1,b,c,d,e\n', b"\xff\xfe\x00q\x00"):
        (set_dir / "queries.csv").write_bytes(content)
        with pytest.raises(EarthLocError, match="queries.csv: not a readable CSV"):
            audit_page_from_files(set_dir, preds, grid, None, tmp_path / "x.html")


def test_background_has_coastlines_near_texas() -> None:
    queries, rings = hand_made()
    bg = make_background(rings, list(rings), [q.footprint for q in queries], AuditPageConfig())
    pts = np.array([p for line in bg.coastlines for p in line])
    assert len(bg.coastlines) > 0 and len(bg.coverage) >= 1
    # The Gulf coast near Houston (about 29.5N, 95W) is among the lines.
    assert (np.hypot(pts[:, 0] - 29.5, pts[:, 1] + 94.8) < 1.0).any()


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium/chromium-driver not installed (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,800", f"--user-data-dir={profile}"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def colour_counts(png: bytes, left: int = 340, legend: int = 30) -> tuple[int, int]:
    """(green, red) frame pixels in the map part of a screenshot (right of the side panel,
    above the legend, whose swatches have the same colours)."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[:-legend, left:]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    green = (g > 150) & (r < 40) & (b < 40)  # #00b400: a prediction that is a positive
    red = (r > 190) & (g < 40) & (b < 40)  # #e00000: a prediction that is not
    return int(green.sum()), int(red.sum())


def requested_urls(drv: object) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):  # type: ignore[attr-defined]
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def test_page_in_chromium(driver: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    queries, rings = hand_made()
    bg = make_background(rings, list(rings), [q.footprint for q in queries], AuditPageConfig())
    page = write_audit_page(tmp_path / "audit.html", "demo", queries, rings, bg)
    drv = driver
    requested_urls(drv)  # drain what the browser did before (its own chrome:// new-tab page)
    drv.get(page.as_uri())  # type: ignore[attr-defined]
    wait = WebDriverWait(drv, 20)
    wait.until(lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")
    assert drv.execute_script("return typeof window.L !== 'undefined' && L.version") == "1.9.4"  # type: ignore[attr-defined]
    assert drv.execute_script("return document.querySelectorAll('#list li').length") == 2  # type: ignore[attr-defined]
    # The rings the page derives from region ids are the grid's.
    js_rings = drv.execute_script("return auditPage.data.regions.map(r => [r.id, r.ring])")  # type: ignore[attr-defined]
    for region, ring in js_rings:
        np.testing.assert_allclose(ring, [v for latlon in rings[region] for v in latlon], atol=1e-9)

    # Pick query B through the search box: only misses, so red frames and no green ones.
    box = drv.find_element(By.ID, "search")  # type: ignore[attr-defined]
    box.send_keys("2222")
    wait.until(lambda d: d.execute_script("return document.querySelectorAll('#list li').length") == 1)
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: d.execute_script("return document.body.getAttribute('data-query')") == "ISS040-E-2222")
    png_b = drv.get_screenshot_as_png()  # type: ignore[attr-defined]
    (tmp_path / "audit_b.png").write_bytes(png_b)
    green_b, red_b = colour_counts(png_b)

    # Then query A by clicking it in the list: a hit at rank 1 (green) and a miss (red).
    box.clear()
    box.send_keys("1111")
    wait.until(lambda d: d.execute_script("return document.querySelectorAll('#list li').length") == 1)
    drv.find_element(By.CSS_SELECTOR, "#list li").click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.execute_script("return document.body.getAttribute('data-query')") == "ISS030-E-1111")
    png = drv.get_screenshot_as_png()  # type: ignore[attr-defined]
    (tmp_path / "audit.png").write_bytes(png)
    green_a, red_a = colour_counts(png)
    assert drv.find_element(By.ID, "qid").text == "ISS030-E-1111"  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "angle").text == "90°"  # type: ignore[attr-defined]
    assert drv.execute_script("return document.getElementById('thumb').naturalWidth") == 64  # type: ignore[attr-defined]
    assert drv.execute_script("return location.hash") == "#q=ISS030-E-1111"  # type: ignore[attr-defined]

    assert red_b > 200 and green_b < 20, (green_b, red_b)
    assert green_a > 200 and red_a > 200, (green_a, red_a)

    # Nothing left the page: every element's src/href is local, and Chrome's network log
    # shows only the file itself and data: URIs (the thumbnail); chrome:// and about: are the
    # browser's own pages, never the network.
    refs = drv.execute_script(  # type: ignore[attr-defined]
        "return Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))"
    )
    assert not [r for r in refs if re.match(r"(https?:)?//", r)], refs
    urls = requested_urls(drv)
    assert page.as_uri() in urls
    remote = [u for u in urls if not u.startswith(("file:", "data:", "chrome:", "about:"))]
    assert not remote, remote


# -- hostile data and the antimeridian in the browser ------------------------------------------
HOSTILE_ID = '<img src=x onerror="window.__pwned=(window.__pwned||0)+1">'
HOSTILE_SET = "</script><!--<script>\u2028&amp;<b onmouseover=window.__pwned=1>set"
HOSTILE_REGION = "<svg onload=window.__pwned=1>"
# Installed before the page's own scripts: any error (a script error, or an image that an
# injected <img> tried to load) is recorded.
ERROR_PROBE = (
    "window.__errors = []; window.addEventListener('error', function (e) {"
    " window.__errors.push(String(e.message || (e.target && e.target.outerHTML) || e.type)); }, true);"
)


def hostile_page(tmp_path: Path) -> tuple[Path, list[AuditQuery]]:
    queries, rings = hand_made()
    rings[HOSTILE_REGION] = [(lat + 1.0, lon) for lat, lon in rings[FAR_1]]
    evil = AuditQuery(HOSTILE_ID, FOOT_A, [POS_A[0]],
                      [Prediction(POS_A[0], 0.9, 0.0, True), Prediction(HOSTILE_REGION, 0.8, 90.0, False)],
                      orientation="<svg onload=window.__pwned=1>")  # fmt: skip
    proto = AuditQuery("__proto__", FOOT_A, [POS_A[1]], [Prediction(POS_A[1], 0.7, 0.0, True)])
    queries = [*queries, evil, proto]
    return write_audit_page(tmp_path / "hostile.html", HOSTILE_SET, queries, rings), queries


def test_hostile_strings_stay_inside_the_json(tmp_path: Path) -> None:
    page, _ = hostile_page(tmp_path)
    text = page.read_text(encoding="utf-8")
    data_text = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1)
    assert not re.search(r"[<>&\u2028\u2029]", data_text)  # all escaped: nothing can end the element
    data = json.loads(data_text)
    assert data["set"] == HOSTILE_SET and HOSTILE_ID in [q["id"] for q in data["queries"]]
    assert text.count("<script") == 3  # data, Leaflet, the page script: none injected


def _open_every_overlay(drv: object) -> None:
    drv.execute_script(  # type: ignore[attr-defined]
        "auditPage.layers.eachLayer(function (l) {"
        " if (l.getTooltip && l.getTooltip()) l.openTooltip(); if (l.getPopup && l.getPopup()) l.openPopup(); });"
    )


def test_hostile_page_in_chromium(driver: object, tmp_path: Path) -> None:
    """Hostile query and region ids, orientation, set name and hashes: no script runs, no
    element is injected, no error is thrown, and the page still selects queries."""
    from selenium.webdriver.support.ui import WebDriverWait

    page, queries = hostile_page(tmp_path)
    drv = driver
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_PROBE})  # type: ignore[attr-defined]
    wait = WebDriverWait(drv, 20)

    def load(fragment: str) -> None:
        drv.get("about:blank")  # type: ignore[attr-defined]
        drv.get(page.as_uri() + fragment)  # type: ignore[attr-defined]
        ready = "return document.body && document.body.getAttribute('data-ready')"
        wait.until(lambda d: d.execute_script(ready) == "1")

    def state() -> dict:
        return drv.execute_script(  # type: ignore[attr-defined]
            "return {pwned: window.__pwned === undefined ? null : window.__pwned, errors: window.__errors,"
            " imgs: Array.from(document.querySelectorAll("
            "   'img:not(#thumb), svg:not(.leaflet-zoom-animated), b:not(#angle)')).map(e => e.outerHTML),"
            " query: document.body.getAttribute('data-query'), title: document.title,"
            " h1: document.querySelector('h1').textContent, items: document.querySelectorAll('#list li').length}"
        )

    load("")
    for q in queries:
        drv.execute_script("auditPage.select(arguments[0])", q.query_id)  # type: ignore[attr-defined]
        _open_every_overlay(drv)
        drv.execute_script("return new Promise(function (r) { setTimeout(r, 300); })")  # type: ignore[attr-defined]
        s = state()
        assert s["pwned"] is None and s["errors"] == [] and s["imgs"] == [], (q.query_id, s)
        assert s["query"] == q.query_id
    s = state()
    assert s["title"] == s["h1"] == f"EarthLoc audit: {HOSTILE_SET}" and s["items"] == len(queries)
    # The hostile ids are shown as text: in the list, the heading, a tooltip and a popup.
    drv.execute_script("auditPage.select(arguments[0])", HOSTILE_ID)  # type: ignore[attr-defined]
    _open_every_overlay(drv)
    shown = drv.execute_script(  # type: ignore[attr-defined]
        "return [document.getElementById('qid').textContent,"
        " Array.from(document.querySelectorAll('.leaflet-tooltip, .leaflet-popup-content'))"
        "   .map(e => e.textContent).join('|')]"
    )
    assert shown[0] == HOSTILE_ID and f"footprint {HOSTILE_ID}" in shown[1] and HOSTILE_REGION in shown[1]

    # Hashes: a query named __proto__, undecodable, unknown, and the hostile id itself.
    from urllib.parse import quote

    for fragment, expected in [("#q=__proto__", "__proto__"), ("#q=%E0%A4%A", queries[0].query_id),
                               ("#q=constructor", queries[0].query_id), ("#q=toString", queries[0].query_id),
                               ("#q=" + quote(HOSTILE_ID, safe=""), HOSTILE_ID)]:  # fmt: skip
        load(fragment)
        s = state()
        assert s["errors"] == [] and s["pwned"] is None and s["query"] == expected, (fragment, s)
        drv.execute_script("location.hash = '#q=%E0%A4%A'")  # type: ignore[attr-defined]
        drv.execute_script("return new Promise(function (r) { setTimeout(r, 100); })")  # type: ignore[attr-defined]
        assert state()["errors"] == []


# A footprint across ±180 near Fiji; regions at both edges of the grid and one that wraps.
FOOT_AM = [(-18.0, 179.3), (-17.0, 179.3), (-17.0, -179.4), (-18.0, -179.4)]
AM_EAST, AM_WEST, AM_WRAP = rid(284, 0), rid(284, 508), rid(284, 510)  # -180..-177.2, 177.2..180, 178.6..181.4


def test_antimeridian_in_chromium(driver: object, tmp_path: Path) -> None:
    """Regions east of -180 are drawn next to a footprint west of +180 (shifted by 360
    degrees), so the map frames them together instead of spanning the whole world."""
    from selenium.webdriver.support.ui import WebDriverWait

    rings = region_rings_from_ids([AM_EAST, AM_WEST, AM_WRAP])
    q = AuditQuery("ISS050-E-5555", FOOT_AM, [AM_EAST, AM_WRAP],
                   [Prediction(AM_EAST, 0.9, 0.0, True), Prediction(AM_WEST, 0.8, 0.0, False),
                    Prediction(AM_WRAP, 0.7, 0.0, True)])  # fmt: skip
    page = write_audit_page(tmp_path / "am.html", "fiji", [q], rings)
    drv = driver
    drv.get(page.as_uri())  # type: ignore[attr-defined]
    WebDriverWait(drv, 20).until(lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")
    lngs = drv.execute_script(  # type: ignore[attr-defined]
        "var out = []; auditPage.layers.eachLayer(function (l) {"
        " if (l.getLatLngs) l.getLatLngs()[0].forEach(function (p) { out.push(p.lng); }); }); return out;"
    )
    assert len(lngs) == 6 * 4  # the footprint, two positives, three predictions
    assert min(lngs) >= 177.0 and max(lngs) <= 183.0, sorted(lngs)  # all on one side of the world
    west, east = drv.execute_script(  # type: ignore[attr-defined]
        "var b = auditPage.map.getBounds(); return [b.getWest(), b.getEast()];"
    )
    assert east - west < 30, (west, east)  # framed around the footprint, not the whole world
    green, red = colour_counts(drv.get_screenshot_as_png())  # type: ignore[attr-defined]
    assert green > 200 and red > 200, (green, red)
