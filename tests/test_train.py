"""Training: inputs, batches with four correct years, the train stage end to end, resume after
`kill -9` with identical weights, and DDP (torchrun, 2 CPU processes, gloo) matching one process.

Everything runs on a 25-region store of 64-px JPEGs with a ResNet-18 at 32 px (tests/train_fixtures.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from earthloc.batches import batch_regions, random_clusters
from earthloc.data import RegionYearsDataset, loader, one_line, training_regions
from earthloc.images import load_rgb
from earthloc.model import load_model
from earthloc.trainer import TrainConfig, TrainPaths, train
from pipeline.config import training_config
from pipeline.errors import ConfigError, InputError
from train_fixtures import add_photos, astroloc_section, make_store, region_image, tiny_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return add_photos(make_store(tmp_path_factory.mktemp("store")))


def paths_in(base: Path, store: dict[str, Path]) -> TrainPaths:
    return TrainPaths(store["tiles"], store["grid"], base / "models" / "earthloc.pt", base / "ckpt", base / "live")


def read_tsv(live: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(live / "plots" / "metrics" / f"{name}.tsv", sep="\t")


def state_of(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


# -- inputs ------------------------------------------------------------------------------------
def test_training_regions_need_all_four_years(tmp_path: Path) -> None:
    s = make_store(tmp_path, missing={(3, 2019), (7, 2021)})
    regions = training_regions(s["tiles"], s["grid"])
    assert len(regions) == 23 and regions.years == (2018, 2019, 2020, 2021)
    assert list(regions.region_ids) == sorted(regions.region_ids)
    for i in range(len(regions)):
        for y, year in enumerate(regions.years):
            rel = str(regions.paths[i, y])
            assert (
                rel.startswith(f"database/{year}_{regions.zooms[i]:02d}/")
                and f"@{regions.region_ids[i]}@{year}@" in rel
            )
    # a file listed as ok but missing: a clear error before training
    victim = regions.abs_path(0, 1)
    victim.unlink()
    with pytest.raises(InputError, match="missing"):
        training_regions(s["tiles"], s["grid"])


def test_loader_gives_four_years_per_region_and_corrupt_file_is_named(tmp_path: Path) -> None:
    s = make_store(tmp_path)
    regions = training_regions(s["tiles"], s["grid"])
    ds = RegionYearsDataset(regions, 32)
    ca = random_clusters(len(regions), 3, seed=0)
    batches = [batch_regions(ca, seed=0, iteration=i, batch_size=4).tolist() for i in range(3)]
    for want, batch in zip(batches, loader(ds, batches, num_workers=0, seed=0)):
        assert batch.images.shape == (4, 4, 3, 32, 32) and batch.images.dtype == torch.uint8
        assert batch.region_index.tolist() == want
        assert len(set(ca.labels[want].tolist())) == 1  # one cluster
        for r, idx in enumerate(want):
            # the fixture's region `idx` (grid order = region-id order here) year by year
            order = list(pd.read_parquet(s["grid"])["region_id"]).index(regions.region_ids[idx])
            small = [
                np.asarray(Image.fromarray(region_image(order, yy, 64)).resize((32, 32))).astype(float)
                for yy in range(4)
            ]
            for y in range(4):
                got = batch.images[r, y].permute(1, 2, 0).numpy().astype(float)
                dists = [np.abs(got - ref).mean() for ref in small]
                assert int(np.argmin(dists)) == y and dists[y] < 20  # year y is year y
    # a corrupt JPEG: InputError naming the file, in-process and from a worker process
    bad = regions.abs_path(2, 3)
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(InputError, match=str(bad.name)[:40]):
        load_rgb(bad, 32)
    with pytest.raises(InputError) as info:
        list(loader(ds, [[2]], num_workers=1, seed=0))
    msg = one_line(info.value)
    assert bad.name in msg and "\n" not in msg


def test_draft_mode_decodes_close_to_full(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((64, 64, 1))).astype(np.uint8)  # 1024 px
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=90)
    fast = load_rgb(tmp_path / "a.jpg", 128, draft=True).astype(float)
    full = load_rgb(tmp_path / "a.jpg", 128, draft=False).astype(float)
    assert fast.shape == full.shape == (128, 128, 3)
    diff = np.abs(fast - full)
    assert np.median(diff) <= 2 and diff.mean() < 8  # differences only near the sharp block edges


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_section({"regions_per_batch": 4, "nonsense": 1})
    with pytest.raises(ConfigError, match="regions_per_batch"):
        TrainConfig(regions_per_batch=1)
    with pytest.raises(ConfigError, match="cluster_choice"):
        TrainConfig(cluster_choice="biggest")


# -- the stage -----------------------------------------------------------------------------------
def test_train_stage_end_to_end(tmp_path: Path, store: dict[str, Path]) -> None:
    params = tiny_params(store["val"], iterations=6, val_every=3, recluster_every=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = paths_in(tmp_path, store)
    from earthloc.cli import main

    rc = main(["train", "--params", str(tmp_path / "params.yaml"), "--tiles", str(p.tiles_root), "--grid", str(p.regions),
               "--out", str(p.model_out), "--checkpoints", str(p.checkpoints), "--live-dir", str(p.live_dir)])  # fmt: skip
    assert rc == 0
    model, cfg = load_model(p.model_out)
    assert cfg.backbone == "resnet18" and cfg.image_size == 32
    with torch.no_grad():
        d = model.eval()(torch.zeros(2, 3, 32, 32))
    assert d.shape == (2, 32)
    last = state_of(p.checkpoints / "last.pt")
    assert (
        last["iteration"] == 6 and last["clusters"]["source"] == "kmeans" and last["clusters"]["iteration"] == 3
    )  # reclustered at 3 (at 6 the run ends)
    best = state_of(p.checkpoints / "best.pt")
    assert set(best["val_recalls"]) >= {"1", "5", "10", "20"}
    loss = read_tsv(p.live_dir, "train/loss")
    assert loss["step"].tolist() == list(range(6)) and np.isfinite(loss["loss"]).all()
    for name in (
        "train/mined_pos",
        "train/mined_neg",
        "train/batch_acc",
        "train/lr",
        "val/R@1",
        "val/R@5",
        "val/R@10",
        "val/R@20",
    ):
        assert len(read_tsv(p.live_dir, name)) >= (6 if name.startswith("train") else 3), name
    # the initial network is validated (step 0) and a candidate; later validations sit at
    # the step of the weights they describe (after 3 and 6 updates)
    assert read_tsv(p.live_dir, "val/R@5")["step"].tolist() == [0, 3, 6]
    assert [h["iteration"] for h in last["history"]] == [0.0, 3.0, 6.0]
    # same params again: the finished run is resumed (nothing to do) and the model rewritten
    again = train(training_config(params), p)
    assert again.resumed_from == 6 and again.iterations_done == 6
    # other params: a checkpoint with another fingerprint is not resumed
    other = tiny_params(store["val"], iterations=2, val_every=0, lr=5e-4)
    fresh = train(training_config(other), p)
    assert fresh.resumed_from is None and fresh.iterations_done == 2
    with pytest.raises(InputError, match="validation set"):
        train(training_config(tiny_params(tmp_path / "no_such_set")), p)


def test_checkpoint_names_the_seed_that_rebuilds_the_initial_network(
    tmp_path: Path, store: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The evaluate stage's untrained baseline is untrained_model(cfg, init_seed): it must be
    # the very network the training started from, so "model - untrained" is what training did.
    import earthloc.trainer as T
    from earthloc.model import load_checkpoint
    from pipeline.stages.evaluate import EvaluateParams, untrained_model, untrained_seed_for

    initial: dict[str, torch.Tensor] = {}
    original = T.build_model

    def recording_build(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = original(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(T, "build_model", recording_build)
    params = tiny_params(None, iterations=1, val_every=0, seed=7)
    train(training_config(params), paths_in(tmp_path, store))
    ckpt = load_checkpoint(paths_in(tmp_path, store).model_out)
    assert ckpt.extra["init_seed"] == 7
    seed = untrained_seed_for(EvaluateParams(), ckpt.extra)
    assert seed == 7 and untrained_seed_for(EvaluateParams(untrained_seed=3), ckpt.extra) == 3
    rebuilt = untrained_model(ckpt.cfg, seed).state_dict()
    assert rebuilt.keys() == initial.keys()
    for name, value in initial.items():
        torch.testing.assert_close(rebuilt[name], value, rtol=0, atol=0, msg=name)
    # ... and training changed it (the comparison is not empty).
    assert not torch.equal(ckpt.model.state_dict()["fc.weight"], initial["fc.weight"])
    assert untrained_seed_for(EvaluateParams(), {}) == 0  # checkpoints without init_seed


KILL_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import earthloc.trainer as T
    from earthloc.cli import main

    kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
    original = T.train_step
    calls = 0

    def step(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:  # a real SIGKILL in the middle of an iteration
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    T.train_step = step
    sys.exit(main(sys.argv[1:]))
    """
)


# Every objective gets the loop's resume: EarthLoc's region loss, and AstroLoc's photo pairs
# with relevance-weighted cluster sampling (whose weights, refreshed every 3 iterations, the
# checkpoint must carry: the kill lands between two refreshes).
RESUME_OBJECTIVES = {
    "earthloc": None,
    "astroloc": {"earthloc_ms": False, "photo_pairs": True, "weighted_clusters": True},
}


@pytest.mark.parametrize("objective", list(RESUME_OBJECTIVES))
def test_resume_after_kill_gives_the_same_weights(tmp_path: Path, store: dict[str, Path], objective: str) -> None:
    n = 8
    params = tiny_params(store["val"], iterations=n, checkpoint_every=2, recluster_every=3, val_every=4)
    losses = RESUME_OBJECTIVES[objective]
    if losses is not None:
        params["astroloc"] = astroloc_section(store, losses, refresh_every=3, use="both")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def run(base: Path, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
        p = paths_in(base, store)
        argv = ["train", "--params", str(tmp_path / "params.yaml"), "--tiles", str(p.tiles_root), "--grid", str(p.regions),
                "--out", str(p.model_out), "--checkpoints", str(p.checkpoints), "--live-dir", str(p.live_dir)]  # fmt: skip
        env = {**os.environ, "KILL_AT_STEP": str(kill_at), "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, "-c", KILL_DRIVER, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    configs = training_config(params)
    whole = train(configs, paths_in(tmp_path / "whole", store))  # in-process: one interpreter start-up less
    assert whole.iterations_done == n
    killed = run(tmp_path / "killed", kill_at=6)  # steps 1..5 done; checkpoint at iteration 4
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert state_of(tmp_path / "killed" / "ckpt" / "last.pt")["iteration"] == 4
    resumed = train(configs, paths_in(tmp_path / "killed", store))  # a fresh process would do the same
    assert resumed.resumed_from == 4 and resumed.iterations_done == n
    a, b = state_of(tmp_path / "whole" / "ckpt" / "last.pt"), state_of(tmp_path / "killed" / "ckpt" / "last.pt")
    assert a["iteration"] == b["iteration"] == n
    assert_same_state(a["state_dict"], b["state_dict"])  # bit-identical weights
    assert (a["clusters"]["labels"] == b["clusters"]["labels"]).all()
    assert a["best_r5"] == b["best_r5"] and a["best_iteration"] == b["best_iteration"]
    assert_same_state(state_of(tmp_path / "whole" / "models" / "earthloc.pt")["state_dict"],
                      state_of(tmp_path / "killed" / "models" / "earthloc.pt")["state_dict"])  # fmt: skip
    # the dvclive history has each step once, with the uninterrupted run's values
    la, lb = read_tsv(tmp_path / "whole" / "live", "train/loss"), read_tsv(tmp_path / "killed" / "live", "train/loss")
    assert lb["step"].tolist() == list(range(n))
    assert la["loss"].tolist() == lb["loss"].tolist()
    va, vb = read_tsv(tmp_path / "whole" / "live", "val/R@5"), read_tsv(tmp_path / "killed" / "live", "val/R@5")
    assert va.to_dict("list") == vb.to_dict("list") and vb["step"].tolist() == [0, 4, 8]
    if losses is not None:
        oa, ob = a["objectives"]["weighted_clusters"], b["objectives"]["weighted_clusters"]
        assert oa["refreshed_at"] == ob["refreshed_at"] == 6 and torch.equal(oa["weights"], ob["weights"])


def test_selection_can_return_the_initial_network(tmp_path: Path, store: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """When validation gets worse with training, the stage's model is the network it started from."""
    import earthloc.trainer as T

    scores = iter([40.0, 30.0, 20.0])  # R@5 of the initial network, then after 2 and 4 updates
    monkeypatch.setattr(T, "validate", lambda *a, **k: {1: 0.0, 5: next(scores), 10: 0.0, 20: 0.0})
    p = paths_in(tmp_path, store)
    s = train(training_config(tiny_params(store["val"], iterations=4, val_every=2, recluster_every=0)), p)
    assert s.best_iteration == 0 and s.best_r5 == 40.0
    torch.manual_seed(0)
    from earthloc.model import ModelConfig, build_model

    initial = build_model(ModelConfig.from_section(tiny_params(None)["model"])).state_dict()
    assert_same_state(state_of(p.model_out)["state_dict"], initial)
    assert state_of(p.checkpoints / "best.pt")["iteration"] == 0
    assert [h["iteration"] for h in state_of(p.checkpoints / "last.pt")["history"]] == [0.0, 2.0, 4.0]
    assert read_tsv(p.live_dir, "val/R@5")["R@5"].tolist() == [40.0, 30.0, 20.0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_cpu_processes_match_one(tmp_path: Path, store: dict[str, Path]) -> None:
    # Every backbone stage frozen with its BN statistics: on CPU there is no SyncBatchNorm,
    # and per-rank batch statistics would (correctly) differ from the single-process ones.
    params = tiny_params(None, iterations=4, recluster_every=2, checkpoint_every=2)
    params["model"]["frozen_stages"] = ["conv1", "bn1", "layer1", "layer2", "layer3"]
    params["model"]["freeze_bn_stats"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = paths_in(tmp_path / "ddp", store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "earthloc.cli", "train", "--params", str(tmp_path / "params.yaml"),
           "--tiles", str(p.tiles_root), "--grid", str(p.regions), "--out", str(p.model_out),
           "--checkpoints", str(p.checkpoints), "--live-dir", str(p.live_dir)]  # fmt: skip
    res = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "world size 2" in res.stdout
    single = paths_in(tmp_path / "single", store)
    s = train(training_config(params), single)
    assert s.world_size == 1
    ld, ls = read_tsv(p.live_dir, "train/loss"), read_tsv(single.live_dir, "train/loss")
    assert ld["step"].tolist() == ls["step"].tolist() == list(range(4))
    np.testing.assert_allclose(ld["loss"], ls["loss"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(
        read_tsv(p.live_dir, "train/mined_pos")["mined_pos"], read_tsv(single.live_dir, "train/mined_pos")["mined_pos"]
    )
    assert_same_state(state_of(p.model_out)["state_dict"], state_of(single.model_out)["state_dict"], atol=1e-5)


def test_val_rotations_are_checked() -> None:
    from earthloc.trainer import TrainConfig

    assert TrainConfig(val_rotations=[0]).val_rotations == (0,)
    for bad in ([], [45], [0, 0]):
        with pytest.raises(ConfigError, match="val_rotations"):
            TrainConfig(val_rotations=bad)
