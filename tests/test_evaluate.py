"""evaluate stage end to end on a tiny set, the nadir baseline, `earthloc index` and
`earthloc localize` on a photo whose footprint is known."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from PIL import Image

from earthloc.baselines import contains_point, nadir_ranking, region_bounds_table
from earthloc.cli import main as cli_main
from pipeline.errors import ConfigError
from pipeline.stages.evaluate import EvaluateParams, run_set, write_audit
from pipeline.tools.localize import footprint_geometry, load_index, localize_descriptor
from retrieval_support import CORNERS, TinySet, make_tiny_set, render_region, tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinySet, Path]:
    root = tmp_path_factory.mktemp("tiny")
    ts = make_tiny_set(root)
    return ts, tiny_checkpoint(root / "model.pt")


def _params(ts: TinySet, root: Path, **kw: object) -> EvaluateParams:
    base = dict(
        sets=("tiny",),
        tiles_root=str(ts.tiles_root),
        evalsets_dir=str(ts.set_dir.parent),
        out_root=str(root / "eval"),
        regions=str(root / "no_grid.parquet"),
        num_workers=0,
        batch_size=4,
        k=20,
        recall_ns=(1, 5, 10, 20),
        grid_queries=3,
        grid_top=5,
    )
    base.update(kw)
    return EvaluateParams(**base)  # type: ignore[arg-type]


def test_evaluate_stage_writes_every_output(tiny: tuple[TinySet, Path], tmp_path: Path) -> None:
    ts, model = tiny
    p = _params(ts, tmp_path)
    metrics = run_set("tiny", p, model_path=model)
    out = tmp_path / "eval" / "tiny"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["num_queries"] == 4 and on_disk["num_db"] == 9 and on_disk["num_db_vectors"] == 36
    methods = on_disk["methods"]
    assert set(methods) == {
        "model",
        "untrained",
        "untrained_seed1",
        "untrained_seed2",
        "thumbnail",
        "random",
        "nadir",
        "always_0deg",
    }
    for name, m in methods.items():
        if name != "always_0deg":
            assert set(m) >= {"R@1", "R@5", "R@10", "R@20", "collapsed", "interval"}
            for n in (1, 5, 10, 20):
                lo, hi = m["interval"][f"R@{n}"]
                assert lo - 1e-3 <= m[f"R@{n}"] <= hi + 1e-3  # the curve is float32
    # No pass ids in this set: the bootstrap resamples queries, and says so.
    assert on_disk["bootstrap_unit"].startswith("query") and on_disk["num_passes"] is None
    # Untrained over three initialisations: seed 0 (the checkpoint has no init_seed), 1, 2.
    u = on_disk["untrained_seeds"]
    assert u["seeds"] == [0, 1, 2]
    r1 = [methods[k]["R@1"] for k in ("untrained", "untrained_seed1", "untrained_seed2")]
    assert u["R@1"]["mean"] == pytest.approx(float(np.mean(r1)), abs=1e-3)
    assert u["R@1"]["min"] == min(r1) and u["R@1"]["max"] == max(r1)
    # The thumbnail of a turned image is the turned thumbnail: it finds every exact copy.
    assert methods["thumbnail"]["collapsed"]["R@1"] == 100.0
    assert methods["thumbnail"]["orientation"]["within_45deg"] == 100.0
    # Always 0°: right only for the query that was not turned (angles 90, 0, 270, 180).
    assert methods["always_0deg"]["orientation"]["within_45deg"] == 25.0
    # Every query is an exact rotated copy of its only positive: any network finds it at
    # rank 1 at the right angle, and that angle is the photo's ORIENTATION (the convention).
    assert methods["model"]["R@1"] == 100.0 and methods["model"]["collapsed"]["R@1"] == 100.0
    assert methods["model"]["orientation"]["within_45deg"] == 100.0
    assert methods["model"]["orientation"]["median_error_deg"] == 0.0
    # Random: one positive among 9 images -> collapsed R@5 = 5/9 exactly.
    assert methods["random"]["collapsed"]["R@5"] == pytest.approx(500 / 9, abs=1e-3)
    assert methods["random"]["R@1"] == pytest.approx(100 / 9, abs=1e-3)
    # Margins: model (every query at rank 1) minus each baseline, with a bootstrap interval.
    margins = on_disk["margins"]
    assert set(margins) == {
        "model-untrained",
        "model-untrained_seed1",
        "model-untrained_seed2",
        "model-untrained_mean",
        "model-thumbnail",
        "model-random",
        "model-nadir",
        "model-always_0deg",
    }
    c1 = margins["model-random"]["collapsed"]["R@1"]
    assert c1["diff"] == pytest.approx(100 - 100 / 9, abs=0.01)
    assert set(margins["model-untrained_mean"]["collapsed"]) == {"R@1", "R@5", "R@10", "R@20"}
    z = margins["model-always_0deg"]["within_45deg"]
    assert z["diff"] == pytest.approx(75.0) and z["lo"] <= z["diff"] <= z["hi"]
    r1 = margins["model-random"]["R@1"]
    assert r1["diff"] == pytest.approx(100 - 100 / 9, abs=0.01) and r1["lo"] <= r1["diff"] <= r1["hi"]

    curves = sorted(os.listdir(out / "curves"))
    assert curves == sorted(
        [
            "model.csv",
            "model_collapsed.csv",
            "untrained.csv",
            "untrained_collapsed.csv",
            "untrained_seed1.csv",
            "untrained_seed1_collapsed.csv",
            "untrained_seed2.csv",
            "untrained_seed2_collapsed.csv",
            "thumbnail.csv",
            "thumbnail_collapsed.csv",
            "random.csv",
            "random_collapsed.csv",
            "nadir.csv",
        ]
    )

    # Per-query hits: the table's recalls are their means.
    pq = pd.read_parquet(out / "per_query.parquet")
    assert len(pq) == 4 and pq["query_id"].tolist() == [f"ISS001-E-{1000 + i}" for i in range(4)]
    for name in ("model", "thumbnail", "untrained", "random", "nadir"):
        for n in (1, 5, 10, 20):
            assert 100 * pq[f"{name}_hit@{n}"].mean() == pytest.approx(methods[name][f"R@{n}"], abs=1e-3)
            assert 100 * pq[f"{name}_collapsed_hit@{n}"].mean() == pytest.approx(
                methods[name]["collapsed"][f"R@{n}"], abs=1e-3
            )
    assert (pq["always_0deg_orientation_error_deg"] <= 45).tolist() == [a == 0 for a in ts.query_angle]
    c = pd.read_csv(out / "curves" / "random_collapsed.csv")
    assert c["N"].tolist() == list(range(1, 21)) and c["recall"].iloc[-1] == pytest.approx(100.0)

    pred = pd.read_parquet(out / "predictions.parquet")
    assert list(pred.columns)[:8] == [
        "query_index",
        "query_id",
        "rank",
        "db_index",
        "region_id",
        "score",
        "angle_deg",
        "is_positive",
    ]
    assert len(pred) == 4 * 20
    top1 = pred[pred["rank"] == 1].sort_values("query_index")
    assert top1["db_index"].tolist() == ts.query_region and top1["angle_deg"].tolist() == ts.query_angle
    assert top1["is_positive"].all()
    # 9 images x 4 rotations hold 36 entries: the top 20 repeats images, and says so.
    assert pred.groupby("query_index")["repeat"].sum().gt(0).all()

    with Image.open(out / "grid.png") as im:
        assert im.format == "PNG" and im.width > 6 * 150 and im.height > 3 * 150
    html = (out / "audit.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "ISS001-E-1000" in html


def test_evaluate_cli_missing_image_is_one_clear_line(
    tiny: tuple[TinySet, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts, model = tiny
    # A copy of the set whose database names an image that does not exist.
    set_dir = tmp_path / "evalsets" / "broken"
    set_dir.mkdir(parents=True)
    for name in ("queries.csv", "positives.parquet"):
        (set_dir / name).write_bytes((ts.set_dir / name).read_bytes())
    db = pd.read_csv(ts.set_dir / "database.csv")
    db.loc[3, "path"] = "database/2021_09/30_-100/@missing@.jpg"
    db.to_csv(set_dir / "database.csv", index=False)
    params = {
        "evaluate": {
            "sets": ["broken"],
            "model": str(model),
            "tiles_root": str(ts.tiles_root),
            "evalsets_dir": str(tmp_path / "evalsets"),
            "out_root": str(tmp_path / "eval"),
            "num_workers": 0,
            "k": 10,
            "recall_ns": [1, 10],
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli_main(["evaluate", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "@missing@.jpg" in err and "image not found" in err


def test_evaluate_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        EvaluateParams.from_section({"setz": ["demo"]})
    with pytest.raises(ConfigError, match="baselines"):
        EvaluateParams.from_section({"baselines": ["oracle"]})
    with pytest.raises(ConfigError, match="recall_ns"):
        EvaluateParams.from_section({"k": 10, "recall_ns": [1, 20]})
    p = EvaluateParams.from_section({"index": {"kind": "sq_fp16"}, "sets": ["a", "b"]})
    assert p.index.kind == "sq_fp16" and p.sets == ("a", "b")


# -- nadir baseline --------------------------------------------------------------------------
def test_nadir_ranking_contains_first_coarse_first() -> None:
    # z9 region 09_0196_0112 and the z10/z11 regions inside its north-west corner, plus a far one.
    ids = ["11_0784_0448", "10_0392_0224", "09_0196_0112", "09_0196_0140"]
    b = region_bounds_table(ids)
    lat = float(b["north"].iloc[0] - 0.05)
    lon = float(b["west"].iloc[0] + 0.05)  # inside the first three
    assert contains_point(b, lat, lon).tolist() == [True, True, True, False]
    clat = ((b["south"] + b["north"]) / 2).to_numpy()
    clon = ((b["west"] + b["east"]) / 2).to_numpy()
    order = nadir_ranking([lat], [lon], clat, clon, b, k=6)
    assert order[0].tolist() == [2, 1, 0, 3, -1, -1]  # containing by zoom (9, 10, 11), then the rest, then padding


# -- index and localize ------------------------------------------------------------------------
def _write_manifest(ts: TinySet) -> None:
    db = pd.read_csv(ts.set_dir / "database.csv")
    man = pd.DataFrame({"region_id": db["region_id"], "zoom": db["zoom"], "path": db["path"], "status": "ok"})
    (ts.tiles_root / "manifests").mkdir(exist_ok=True)
    man.to_parquet(ts.tiles_root / "manifests" / "2021_09.parquet", index=False)


def test_index_and_localize_find_the_photo_footprint(
    tiny: tuple[TinySet, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts, model = tiny
    _write_manifest(ts)
    params = {
        "index": {
            "model": str(model),
            "tiles_root": str(ts.tiles_root),
            "out_dir": str(tmp_path / "index"),
            "num_workers": 0,
            "batch_size": 4,
        },
        "localize": {"index_dir": str(tmp_path / "index"), "model": str(model), "radius_km": 2500, "top": 3},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli_main(["index", "--params", str(tmp_path / "params.yaml")]) == 0
    loaded = load_index(tmp_path / "index")
    assert loaded.num_db == 9 and loaded.index.ntotal == 36

    # The photo: region 5's mosaic turned 270° CCW (its top faces west), saved as JPEG.
    reg = ts.regions.iloc[5]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.rot90(render_region(int(reg["zoom"]), int(reg["row"]), int(reg["col"])), k=3)).save(photo)
    truth = footprint_geometry(str(reg["region_id"]))
    out = tmp_path / "result.geojson"
    rc = cli_main(
        [
            "localize",
            str(photo),
            "--nadir",
            f"{reg['center_lat'] + 1:.2f}",
            f"{reg['center_lon']:.2f}",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(reg["region_id"]) in printed
    gj = json.loads(out.read_text())
    polys = [f for f in gj["features"] if f["geometry"]["type"] != "Point"]
    assert len(polys) == 3 and [f["properties"]["rank"] for f in polys] == [1, 2, 3]
    best = shapely.geometry.shape(polys[0]["geometry"])
    assert best.intersection(truth).area > 0.9 * truth.area
    # Top faces west (bearing 270), so north is 90° clockwise from up: NASA ORIENTATION 90.
    assert polys[0]["properties"]["photo_top_azimuth_deg"] == 270
    assert polys[0]["properties"]["predicted_orientation_deg"] == 90
    assert len({f["properties"]["region_id"] for f in polys}) == 3  # distinct regions

    # Lost in space (no nadir) finds it too; a nadir far away leaves it out entirely.
    q = loaded.index.reconstruct(int(3 * 9 + 5))  # the stored 270° copy of region 5
    assert localize_descriptor(loaded, q, top=1, nadir=None, radius_km=2500)[0].region_id == reg["region_id"]
    far = localize_descriptor(
        loaded, q, top=9, nadir=(float(reg["center_lat"]), float(reg["center_lon"])), radius_km=200
    )
    assert far and all(m.distance_km is not None and m.distance_km < 200 for m in far)
    assert far[0].region_id == reg["region_id"]
    none = localize_descriptor(loaded, q, top=3, nadir=(-40.0, 100.0), radius_km=2500)
    assert none == []


def test_localize_refuses_another_model(
    tiny: tuple[TinySet, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts, model = tiny
    _write_manifest(ts)
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    params = {
        "index": {
            "model": str(model),
            "tiles_root": str(ts.tiles_root),
            "out_dir": str(tmp_path / "ix"),
            "num_workers": 0,
            "index": {"kind": "sq_fp16"},
        },
        "localize": {"index_dir": str(tmp_path / "ix"), "model": str(other)},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli_main(["index", "--params", str(tmp_path / "params.yaml")]) == 0
    photo = next((ts.tiles_root / "queries").glob("*.jpg"))
    assert cli_main(["localize", str(photo), "--params", str(tmp_path / "params.yaml")]) == 1
    assert "not the model the index was built with" in capsys.readouterr().err


def test_region_corners_match_footprint() -> None:
    from pipeline.stages.index import region_table

    t = region_table(["09_0196_0112"], ["x.jpg"])
    g = footprint_geometry("09_0196_0112")
    minx, miny, maxx, maxy = g.bounds
    row = t.iloc[0]
    assert (row["ll_lat"], row["ll_lon"], row["ur_lat"], row["ur_lon"]) == pytest.approx((miny, minx, maxy, maxx))
    assert list(t.columns[:4]) == ["db_index", "region_id", "zoom", "path"] and set(CORNERS) <= set(t.columns)


@pytest.mark.parametrize("orientation", [0.0, 90.0, 180.0, 270.0, -75.0, 200.0])
def test_orientation_convention_matches_the_photo_simulator(orientation: float) -> None:
    """A simulated photo (no effects) of a region, rendered with NASA ORIENTATION O, best
    matches the region's mosaic turned CCW by the angle nearest photo_up_bearing(O)."""
    from earthloc.retrieval.orientation import circular_error_deg, photo_up_bearing
    from pipeline.geo.regions import describe_regions
    from pipeline.synthetic.photos import NO_EFFECTS, render_photo

    grid = pd.DataFrame([(9, 196, 112)], columns=["zoom", "row", "col"])
    reg = describe_regions(grid)[0].iloc[0]
    # A square footprint inside the region, so no rotation of the photo leaves the region.
    lat_c, lon_c = reg["center_lat"], reg["center_lon"]
    h = 0.5 * (reg["ul_lat"] - reg["ll_lat"]) * 0.6
    w = 0.5 * (reg["ur_lon"] - reg["ul_lon"]) * 0.6
    corners = [lat_c - h, lon_c - w, lat_c + h, lon_c - w, lat_c + h, lon_c + w, lat_c - h, lon_c + w]
    photo = render_photo(corners, 2021, 0, size=64, orientation=orientation, effects=NO_EFFECTS).astype(np.float64)
    mosaic = render_region(9, 196, 112, tile_px=64)  # 256 px
    n = mosaic.shape[0]
    inner = np.asarray(
        Image.fromarray(mosaic[int(n * 0.2) : int(n * 0.8), int(n * 0.2) : int(n * 0.8)]).resize((64, 64))
    )
    corr = []
    for k in range(4):
        a = np.rot90(inner, k).astype(np.float64).ravel()
        b = photo.ravel()
        corr.append(np.corrcoef(a - a.mean(), b - b.mean())[0, 1])
    best = 90 * int(np.argmax(corr))
    assert circular_error_deg(best, photo_up_bearing(orientation)) <= 45.0
    assert max(corr) > 0.8


def test_orientation_from_file_name_when_no_column(tiny: tuple[TinySet, Path]) -> None:
    from earthloc.retrieval.orientation import queries_orientation

    ts, _ = tiny
    q = pd.read_csv(ts.set_dir / "queries.csv")
    from_col = queries_orientation(q)
    from_name = queries_orientation(q.drop(columns=["orientation"]))
    np.testing.assert_array_equal(from_col, from_name)
    assert from_col.tolist() == [float((-a) % 360) for a in ts.query_angle]


def test_audit_page_off_leaves_a_note_not_a_stale_page(tmp_path: Path) -> None:
    # The stage declares audit.html; turned off, it must still exist and say why, replacing
    # any page left by an earlier run on other predictions.
    out = tmp_path / "eval" / "demo"
    out.mkdir(parents=True)
    (out / "audit.html").write_text("<html>old page of other predictions</html>", encoding="utf-8")
    p = EvaluateParams(audit_page=False)
    message = write_audit(out, tmp_path / "evalsets" / "demo", p)
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "turned off" in message and "evaluate.audit_page is false" in page and "old page" not in page
    assert [f.name for f in out.iterdir()] == ["audit.html"]  # no temp file left behind


def test_audit_page_section_reaches_the_page(tiny: tuple[TinySet, Path], tmp_path: Path) -> None:
    """The `audit_page` params section, built by the config loader, draws the evaluate
    stage's page: a non-default top_k cuts every query's predictions on the page."""
    import re

    from pipeline import config

    ts, model = tiny
    evaluate = {
        "sets": ["tiny"], "tiles_root": str(ts.tiles_root), "evalsets_dir": str(ts.set_dir.parent),
        "out_root": str(tmp_path / "eval"), "regions": str(tmp_path / "no_grid.parquet"), "num_workers": 0,
        "batch_size": 4, "k": 20, "recall_ns": [1, 5, 10, 20], "grid_queries": 3, "grid_top": 5,
        "baselines": ["random"],
    }  # fmt: skip
    p = config.evaluate_config({"evaluate": evaluate, "audit_page": {"top_k": 3}})
    assert p.page.top_k == 3
    assert config.evaluate_config({"evaluate": evaluate}).page == config.audit_page_config({})
    run_set("tiny", p, model_path=model)
    text = (tmp_path / "eval" / "tiny" / "audit.html").read_text(encoding="utf-8")
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert m
    preds = [len(q["preds"]) for q in json.loads(m.group(1))["queries"]]
    assert preds == [3] * 4  # 36 database vectors per query: the default top_k would show 10
    with pytest.raises(ConfigError, match="unknown key 'page'"):
        EvaluateParams.from_section({"page": {"top_k": 3}})


def test_bootstrap_resamples_passes_when_the_set_has_them(tiny: tuple[TinySet, Path], tmp_path: Path) -> None:
    """With queries.csv's pass_id, intervals resample passes: here two passes of two queries."""
    import shutil

    ts, model = tiny
    set_dir = tmp_path / "sets" / "passes"
    shutil.copytree(ts.set_dir, set_dir)
    q = pd.read_csv(set_dir / "queries.csv")
    q["pass_id"] = ["ISS001-E-20210701-1000"] * 2 + ["ISS001-E-20210701-1002"] * 2
    q.to_csv(set_dir / "queries.csv", index=False)
    p = _params(ts, tmp_path, evalsets_dir=str(set_dir.parent), baselines=("random", "thumbnail"))
    metrics = run_set("passes", p, model_path=model)
    assert metrics["bootstrap_unit"] == "pass" and metrics["num_passes"] == 2
    pq = pd.read_parquet(tmp_path / "eval" / "passes" / "per_query.parquet")
    assert pq["pass_id"].tolist() == q["pass_id"].tolist()
    # A replicate's recall is the mean over the drawn passes' queries: with two passes the
    # interval's ends are one of the three possible draws (pass A twice, A+B, B twice).
    hits = pq["random_hit@5"].to_numpy()
    a, b = hits[:2].mean(), hits[2:].mean()
    lo, hi = metrics["methods"]["random"]["interval"]["R@5"]
    assert lo == pytest.approx(100 * min(a, b), abs=0.01) and hi == pytest.approx(100 * max(a, b), abs=0.01)


def test_thumbnail_descriptor_matches_a_numpy_reference() -> None:
    """Grey (BT.601), 16x16 block means, standardised, L2-normalised; blind to brightness
    and contrast; turning the image turns the thumbnail."""
    import torch

    from earthloc.augment import IMAGENET_MEAN, IMAGENET_STD
    from earthloc.baselines import ThumbnailDescriptor

    rng = np.random.default_rng(0)
    rgb = rng.random((2, 64, 64, 3))
    x = torch.from_numpy(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)).float()
    got = ThumbnailDescriptor(16)(x).numpy()
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    thumb = grey.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(2, -1)
    thumb = (thumb - thumb.mean(axis=1, keepdims=True)) / thumb.std(axis=1, ddof=1, keepdims=True)
    ref = thumb / np.linalg.norm(thumb, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    brighter = torch.from_numpy(((0.5 * rgb + 0.2 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)).float()
    np.testing.assert_allclose(ThumbnailDescriptor(16)(brighter).numpy(), got, atol=1e-5)
    turned = ThumbnailDescriptor(16)(torch.rot90(x, 1, dims=(-2, -1))).numpy().reshape(2, 16, 16)
    np.testing.assert_allclose(turned, np.rot90(got.reshape(2, 16, 16), 1, axes=(1, 2)), atol=1e-5)
