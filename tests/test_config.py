"""The one config loader: the shipped params load strictly, a misspelt key anywhere is
an error naming it, and each default is taken from one dataclass."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from earthloc.cli import main as cli_main
from pipeline import config
from pipeline.errors import ConfigError
from pipeline.geo.area import DEFAULT_DENSIFY_DEG
from pipeline.geo.regions import GridSpec
from pipeline.params import build_config, load_params
from pipeline.stages.grid import GridParams
from pipeline.stages.intersect import IntersectParams

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILES = [p for p in (ROOT / "params.yaml", ROOT / "params_paper.yaml") if p.exists()]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_shipped_params_load_strictly(path: Path) -> None:
    params = config.load(path)
    built = config.build_all(params)
    assert set(built) == set(params)  # every section of the file has a builder and builds


# Every mapping of params.yaml whose keys are a fixed set: a misspelt copy of its first
# key must be reported by name, whichever stage reads it.
KEYED_MAPPINGS = [
    ("grid",), ("queries",), ("intersect",), ("evalset",), ("evalset", "sets", "texas"),
    ("fetch",), ("fetch", "client"), ("fetch", "synthetic"), ("fetch", "run"), ("fetch", "aois", 0),
    ("fetch_queries",), ("export",), ("model",), ("augment",), ("loss",), ("train",), ("evaluate",),
    ("evaluate", "index"), ("index",), ("localize",), ("pairs",), ("astroloc",), ("astroloc", "losses"),
    ("astroloc", "clusters"), ("astroloc", "photo_loss"), ("audit_page",), ("lost_in_space",),
    ("lost_in_space", "sets", "demo_lost_in_space"), ("fetch_queries", "scope"), ("catalog",),
]  # fmt: skip


@pytest.mark.parametrize("where", KEYED_MAPPINGS, ids=lambda w: ".".join(map(str, w)))
def test_misspelt_key_is_named(shipped: dict[str, Any], where: tuple[Any, ...]) -> None:
    params = copy.deepcopy(shipped)
    node: Any = params
    for step in where:
        node = node[step]
    misspelt = next(iter(node)) + "_typo"
    node[misspelt] = node[next(iter(node))]
    with pytest.raises(ConfigError) as err:
        config.build(params, where[0])
    assert misspelt in str(err.value)


def test_error_names_section_path_and_key(shipped: dict[str, Any]) -> None:
    params = copy.deepcopy(shipped)
    params["fetch"]["client"]["max_concurency"] = 3
    with pytest.raises(ConfigError, match=r"^params fetch\.client: unknown key 'max_concurency' "
                                          r"\(did you mean 'max_concurrency'\?\)$"):  # fmt: skip
        config.fetch_config(params)


def test_unknown_section_is_an_error(tmp_path: Path, shipped: dict[str, Any]) -> None:
    params = copy.deepcopy(shipped)
    params["intersekt"] = params.pop("intersect")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="unknown section 'intersekt' \\(did you mean 'intersect'\\?\\)"):
        config.load(path)


def test_grid_defaults_come_from_gridspec() -> None:
    assert GridParams.from_section({}) == GridParams()
    assert GridParams.from_section({}).spec == GridSpec()
    p = GridParams.from_section({"zooms": [9, 10], "max_abs_lat": 50, "bbox": [5, 43, 15, 48]})
    assert p.spec == GridSpec(zooms=(9, 10), max_abs_lat=50.0) and isinstance(p.spec.max_abs_lat, float)
    assert p.bbox == (5.0, 43.0, 15.0, 48.0)


def test_intersect_takes_densify_from_queries(shipped: dict[str, Any]) -> None:
    params = copy.deepcopy(shipped)
    params["queries"]["densify_deg"] = 0.5
    assert config.intersect_config(params).densify_deg == 0.5
    del params["queries"]["densify_deg"]
    assert config.intersect_config(params).densify_deg == DEFAULT_DENSIFY_DEG
    params["intersect"]["densify_deg"] = 0.1  # a key of queries, not of intersect
    with pytest.raises(ConfigError, match="params intersect: unknown key 'densify_deg'"):
        config.intersect_config(params)
    with pytest.raises(ConfigError, match="partitions"):
        IntersectParams.from_section({"partitions": 0})


def test_region_shape_comes_from_grid(shipped: dict[str, Any]) -> None:
    params = copy.deepcopy(shipped)
    params["grid"]["region_tiles"] = 2
    assert config.export_config(params).region_tiles == 2
    assert config.audit_page_config(params).region_tiles == 2
    params["export"]["stride"] = 4
    with pytest.raises(ConfigError, match="params export: unknown key 'stride'"):
        config.export_config(params)


def test_audit_page_section_is_optional(shipped: dict[str, Any]) -> None:
    params = copy.deepcopy(shipped)
    params["audit_page"]["top_k"] = 3
    assert config.audit_page_config(params).top_k == 3
    del params["audit_page"]
    assert config.audit_page_config(params).top_k == config.audit_page_config({}).top_k


@dataclass(frozen=True)
class _Inner:
    rate: float = 1.0


@dataclass(frozen=True)
class _Outer:
    sizes: tuple[int, ...] = (1,)
    inner: _Inner = field(default_factory=_Inner)
    maybe: _Inner | None = None


def test_build_config_nested_and_converted() -> None:
    cfg = build_config(_Outer, {"sizes": [2, 3], "inner": {"rate": 2}, "maybe": {"rate": 0.5}}, "demo")
    assert cfg == _Outer(sizes=(2, 3), inner=_Inner(2.0), maybe=_Inner(0.5))
    assert isinstance(cfg.inner.rate, float)
    hash(cfg)  # frozen and hashable: lists became tuples
    with pytest.raises(ConfigError, match=r"^params demo\.inner: unknown key 'rat' \(did you mean 'rate'\?\)$"):
        build_config(_Outer, {"inner": {"rat": 2}}, "demo")
    with pytest.raises(ConfigError, match=r"^params demo: unknown keys 'a', 'b'$"):
        build_config(_Outer, {"a": 1, "b": 2}, "demo")
    with pytest.raises(ConfigError, match="params demo: expected a mapping"):
        build_config(_Outer, [1, 2], "demo")  # type: ignore[arg-type]


def test_cli_reports_a_misspelt_key_on_one_line(
    tmp_path: Path, shipped: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    params = copy.deepcopy(shipped)
    params["grid"]["strid"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for argv in (["grid", "--out", str(tmp_path / "g.parquet")],
                 ["export", "--all", "--zoom", "9"]):  # fmt: skip
        assert cli_main([argv[0], "--params", str(path), *argv[1:]]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "unknown key 'strid'" in err
    assert not (tmp_path / "g.parquet").exists()


# The earthloc/ stages and the sections each builds its config from.
EARTHLOC_STAGES = {
    "train": ("model", "augment", "loss", "train", "astroloc"),
    "evaluate": ("evaluate", "audit_page"),
    "index": ("index",),
    "localize": ("localize",),
}
EARTHLOC_BUILDERS = {
    "train": config.training_config,
    "evaluate": config.evaluate_config,
    "index": config.index_config,
    "localize": config.localize_config,
}


@pytest.mark.parametrize(("stage", "name"), [(s, n) for s, names in EARTHLOC_STAGES.items() for n in names])
def test_earthloc_stage_config_names_an_unknown_key(shipped: dict[str, Any], stage: str, name: str) -> None:
    params = copy.deepcopy(shipped)
    params[name]["surplus_key"] = 1
    with pytest.raises(ConfigError, match=rf"^params {name}: unknown key 'surplus_key'$"):
        EARTHLOC_BUILDERS[stage](params)


def test_training_config_bundles_its_sections(shipped: dict[str, Any]) -> None:
    c = config.training_config(shipped)
    assert (c.train, c.model, c.loss, c.astroloc) == tuple(
        config.build(shipped, name) for name in ("train", "model", "loss", "astroloc")
    )
    assert c.augment.out_size == c.model.image_size  # one source for the output size
    assert set(config.MIGRATED) >= {name for names in EARTHLOC_STAGES.values() for name in names}


@pytest.mark.parametrize("stage", sorted(EARTHLOC_STAGES))
def test_earthloc_cli_reports_an_unknown_key_before_any_work(
    tmp_path: Path, shipped: dict[str, Any], capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    argv = {
        "train": ["--tiles", str(tmp_path / "tiles"), "--out", str(tmp_path / "m.pt"),
                  "--checkpoints", str(tmp_path / "ckpt"), "--live-dir", str(tmp_path / "live")],
        "evaluate": ["--out-dir", str(tmp_path / "eval")],
        "index": ["--out-dir", str(tmp_path / "index")],
        "localize": [str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "out.geojson")],
    }[stage]  # fmt: skip
    for name in EARTHLOC_STAGES[stage]:
        params = copy.deepcopy(shipped)
        params[name]["surplus_key"] = 1
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        assert cli_main([stage, "--params", str(path), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"params {name}: unknown key 'surplus_key'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


# The subcommand of each section whose stage takes its config from `pipeline.config`, with
# the arguments it needs to reach the config (inputs need not exist: the config comes first).
MIGRATED_COMMANDS = {
    "queries": ["queries", "--out", "q.parquet", "--rejected", "r.csv"],
    "evalset": ["evalset", "demo", "--out-dir", "out"],
    "pairs": ["pairs", "--out-dir", "out"],
    "lost_in_space": ["lost-in-space", "demo_lost_in_space", "--out-dir", "out"],
    "fetch_queries": ["fetch-queries", "--summary", "out/q.json"],
    "catalog": ["catalog", "--out-dir", "out"],
}


@pytest.mark.parametrize("name", sorted(MIGRATED_COMMANDS))
def test_migrated_section_refuses_an_unknown_key(
    name: str, tmp_path: Path, shipped: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key in the section is an error naming it, from the builder and from the
    subcommand (one line, exit 1), before the stage writes anything."""
    assert name in config.MIGRATED
    params = copy.deepcopy(shipped)
    params[name]["not_a_key"] = 1
    with pytest.raises(ConfigError, match=f"params {name}: unknown key 'not_a_key'"):
        config.build(params, name)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    argv = MIGRATED_COMMANDS[name]
    out = [str(tmp_path / a) if a.startswith(("out", "q.", "r.")) else a for a in argv[1:]]
    assert cli_main([argv[0], "--params", str(path), *out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'not_a_key'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("where", "key"),
    [(("evalset", "sets", "demo"), "zoom"), (("lost_in_space", "sets", "demo_lost_in_space"), "zoom"),
     (("fetch_queries", "scope"), "evalset"), (("fetch", "run"), "render_process")],
)  # fmt: skip
def test_named_sets_and_subsections_refuse_an_unknown_key(
    shipped: dict[str, Any], where: tuple[str, ...], key: str
) -> None:
    params = copy.deepcopy(shipped)
    node: Any = params
    for step in where:
        node = node[step]
    node[key] = 1
    with pytest.raises(ConfigError, match=f"params {'.'.join(where)}: unknown key '{key}'"):
        config.build(params, where[0])


def test_audit_check_refuses_an_unknown_intersect_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("queries:\n  densify_deg: 2.0\nintersect:\n  min_intersect_km2: 0.0\n")
    argv = ["audit", str(tmp_path / "i.parquet"), "--check", "--params", str(path), "--out-dir", str(tmp_path / "o")]
    assert cli_main(argv) == 1
    assert "params intersect: unknown key 'min_intersect_km2'" in capsys.readouterr().err
    path.write_text("queries:\n  densify_deg: 2.0\n")  # no intersect section: its defaults
    audit = config.audit_config(config.load(path), source=str(path))
    assert (audit.densify_deg, audit.min_intersection_km2, audit.year) == (2.0, 0.0, IntersectParams().year)


def test_stage_defaults_live_on_the_dataclasses(shipped: dict[str, Any]) -> None:
    from pipeline.stages.evalset import EvalsetParams
    from pipeline.stages.lost_in_space import LostInSpaceParams
    from pipeline.stages.pairs import PairsParams

    evalset = config.evalset_config(shipped)
    assert evalset.pass_rule == (shipped["evalset"]["pass_max_frame_gap"], shipped["evalset"]["pass_max_day_gap"])
    assert evalset.names == tuple(shipped["evalset"]["sets"])
    bare = EvalsetParams.from_section({"sets": shipped["evalset"]["sets"]})
    assert (bare.year, bare.pass_rule) == (EvalsetParams.year, (EvalsetParams.pass_max_frame_gap,
                                                              EvalsetParams.pass_max_day_gap))  # fmt: skip
    pairs = PairsParams.from_section({}, evalset)
    assert pairs.exclude_sets == evalset.names  # `all`, the default
    assert (pairs.min_iou, pairs.years, pairs.pass_rule) == (PairsParams.min_iou, PairsParams.years, evalset.pass_rule)
    assert LostInSpaceParams.from_section({}).year == LostInSpaceParams.year
    run = config.fetch_config(shipped).run
    assert run.render_processes == shipped["fetch"]["run"]["render_processes"]
    params = copy.deepcopy(shipped)
    params["fetch"]["run"]["render_processes"] = -1
    with pytest.raises(ConfigError, match="fetch.run.render_processes"):
        config.fetch_config(params)
