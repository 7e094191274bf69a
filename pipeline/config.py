"""The one loader of params.yaml: every section becomes a typed, frozen dataclass.

How configuration flows:
- `load(path)` reads the file (YAML 1.2 floats, as DVC reads it) and refuses a section
  name it does not know, so a misspelt section is an error instead of silently absent.
- `build(params, name)` turns one section into its dataclass. Every builder is strict:
  an unknown key at any depth is a `ConfigError` naming it, e.g.
  `params fetch.client: unknown key 'max_concurency' (did you mean 'max_concurrency'?)`.
- A section's defaults live on its dataclass and nowhere else; keys that belong to
  another section (the grid's region shape, the queries' densification step) are taken
  from that section here, so the user writes each value once.
- The CLI parses its flags, calls a builder, and passes the config (and the paths it
  was given) to the stage's `run(config, paths)`; nothing below the CLI sees argparse.

Sections are built lazily and each builder imports its stage only when called: the grid
stage must not pay for importing torch to check the `model` section.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.params import build_config, check_keys, load_params, section

if TYPE_CHECKING:
    from earthloc.astroloc import AstroLocConfig
    from earthloc.audit_page import AuditPageConfig
    from earthloc.augment import AugmentConfig
    from earthloc.loss import LossConfig
    from earthloc.model import ModelConfig
    from earthloc.trainer import TrainConfig, TrainingConfig
    from pipeline.stages.catalog import BuildContext, CatalogParams
    from pipeline.stages.evalset import EvalsetParams
    from pipeline.stages.evaluate import EvaluateParams
    from pipeline.stages.fetch import FetchParams
    from pipeline.stages.fetch_queries import FetchQueriesParams
    from pipeline.stages.grid import GridParams
    from pipeline.stages.index import IndexParams
    from pipeline.stages.intersect import IntersectParams
    from pipeline.stages.lost_in_space import LostInSpaceParams
    from pipeline.stages.pairs import PairsParams
    from pipeline.stages.queries import QueriesParams
    from pipeline.tools.audit import AuditParams
    from pipeline.tools.export import ExportConfig
    from pipeline.tools.localize import LocalizeParams

Params = Mapping[str, Any]


def load(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The params file, with every section name checked (sections are built on demand)."""
    params = load_params(path)
    unknown = sorted(str(k) for k in set(params) - set(SECTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(SECTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"params: unknown section {unknown[0]!r}{hint}")
    return params


def build(params: Params, name: str) -> Any:
    """The dataclass of one section, built strictly."""
    if name not in SECTIONS:
        raise ConfigError(f"params: no section named {name!r}")
    return SECTIONS[name](params)


def build_all(params: Params) -> dict[str, Any]:
    """Every section present in `params`, built strictly: checks a whole params file."""
    return {name: build(params, name) for name in SECTIONS if name in params}


# --------------------------------------------------------------------- migrated sections


def grid_config(params: Params) -> GridParams:
    from pipeline.stages.grid import GridParams

    return GridParams.from_section(section(dict(params), "grid"))


def queries_config(params: Params) -> QueriesParams:
    from pipeline.stages.queries import QueriesParams

    return QueriesParams.from_section(section(dict(params), "queries"))


def intersect_config(params: Params) -> IntersectParams:
    """The `intersect` section; footprints are densified as the queries stage ingested them."""
    from pipeline.stages.intersect import IntersectParams

    densify = queries_config(params).densify_deg
    return IntersectParams.from_section(section(dict(params), "intersect"), densify_deg=densify)


def evalset_config(params: Params) -> EvalsetParams:
    """The `evalset` section with every named set built."""
    from pipeline.stages.evalset import EvalsetParams

    return EvalsetParams.from_section(section(dict(params), "evalset"))


def pairs_config(params: Params) -> PairsParams:
    """The `pairs` section, with the query discs and pass rule of the `evalset` section."""
    from pipeline.stages.pairs import PairsParams

    return PairsParams.from_section(section(dict(params), "pairs"), evalset_config(params))


def lost_in_space_config(params: Params) -> LostInSpaceParams:
    from pipeline.stages.lost_in_space import LostInSpaceParams

    return LostInSpaceParams.from_section(section(dict(params), "lost_in_space"))


def export_config(params: Params) -> ExportConfig:
    """The `export` section, with the region shape of the `grid` section."""
    from pipeline.tools.export import ExportConfig

    return ExportConfig.from_section(section(dict(params), "export"), grid_config(params).spec)


def audit_config(params: Params, source: str) -> AuditParams:
    """What `earthloc audit --check` re-derives pairs with: the `intersect` section and the
    queries' `densify_deg`, built strictly; a section the file lacks takes its defaults.
    `source` names the file in the report."""
    from pipeline.stages.intersect import IntersectParams
    from pipeline.tools.audit import AuditParams

    densify = {"densify_deg": queries_config(params).densify_deg} if "queries" in params else {}
    return AuditParams(intersect=IntersectParams.from_section(params.get("intersect"), **densify), source=source)


def audit_page_config(params: Params) -> AuditPageConfig:
    """The `audit_page` section (all defaults when absent), with the grid's region shape."""
    from earthloc.audit_page import AuditPageConfig

    sec = dict(params.get("audit_page") or {})
    check_keys(sec, {f.name for f in fields(AuditPageConfig)} - {"region_tiles"}, "audit_page")
    region_tiles = grid_config(params).spec.region_tiles if "grid" in params else None
    if region_tiles is not None:
        sec["region_tiles"] = region_tiles
    return build_config(AuditPageConfig, sec, "audit_page")


# Keys of the `fetch` section as the fetch stage reads them (its dataclass does not
# mirror the YAML: `synthetic.seed` becomes `synthetic_seed`, `client` gains the URL).
FETCH_KEYS = frozenset(
    {"source", "url_form", "url_template", "layer_template", "contact", "years", "zooms", "aois",
     "keep_tile_cache", "max_failed_fraction", "client", "synthetic", "run"}
)  # fmt: skip
AOI_KEYS = frozenset({"name", "lat", "lon", "radius_km", "years", "zooms"})


def fetch_config(params: Params) -> FetchParams:
    """The `fetch` section: the client and run subsections strictly through their
    dataclasses, the synthetic overrides against the client's keys."""
    from pipeline.fetch.client import ClientConfig
    from pipeline.stages.fetch import FetchParams

    sec = section(dict(params), "fetch")
    check_keys(sec, FETCH_KEYS, "fetch")
    for key in ("client", "synthetic", "run"):
        if sec.get(key) is not None and not isinstance(sec[key], Mapping):
            raise ConfigError(f"params fetch.{key}: expected a mapping")
    check_keys(sec.get("synthetic") or {}, {"seed"} | {f.name for f in fields(ClientConfig)}, "fetch.synthetic")
    for i, aoi in enumerate(sec.get("aois") or []):
        if isinstance(aoi, Mapping):
            check_keys(aoi, AOI_KEYS, f"fetch.aois[{i}]")
    return FetchParams.from_section(sec)


def fetch_queries_config(params: Params) -> FetchQueriesParams:
    """The `fetch_queries` section, with the built `fetch` section and the intersections' year."""
    from pipeline.stages.fetch_queries import FetchQueriesParams

    year = intersect_config(params).year
    return FetchQueriesParams.from_section(section(dict(params), "fetch_queries"), fetch_config(params), year)


# --------------------------------------------------------------------- sections owned by earthloc/


def model_config(params: Params) -> ModelConfig:
    from earthloc.model import ModelConfig

    return ModelConfig.from_section(section(dict(params), "model"))


def augment_config(params: Params) -> AugmentConfig:
    """The `augment` section; its output size is the model's `image_size`."""
    from earthloc.augment import AugmentConfig

    return AugmentConfig.from_section(section(dict(params), "augment"), model_config(params).image_size)


def loss_config(params: Params) -> LossConfig:
    from earthloc.loss import LossConfig

    return LossConfig.from_section(section(dict(params), "loss"))


def train_config(params: Params) -> TrainConfig:
    from earthloc.trainer import TrainConfig

    return TrainConfig.from_section(section(dict(params), "train"))


def astroloc_config(params: Params) -> AstroLocConfig:
    """The `astroloc` section (all defaults when absent: the EarthLoc objective alone)."""
    from earthloc.astroloc import AstroLocConfig

    return AstroLocConfig.from_section(params.get("astroloc"))


def training_config(params: Params) -> TrainingConfig:
    """Everything the train stage reads: `train`, `model`, `augment`, `loss` and `astroloc`,
    each built strictly, bundled so that a checkpoint's fingerprint sees all of them."""
    from earthloc.trainer import TrainingConfig

    return TrainingConfig(
        train=train_config(params),
        model=model_config(params),
        augment=augment_config(params),
        loss=loss_config(params),
        astroloc=astroloc_config(params),
    )


def evaluate_config(params: Params) -> EvaluateParams:
    """The `evaluate` section, with the built `audit_page` section the stage draws its pages with."""
    from pipeline.stages.evaluate import EvaluateParams

    return EvaluateParams.from_section(dict(section(dict(params), "evaluate")), page=audit_page_config(params))


def index_config(params: Params) -> IndexParams:
    from pipeline.stages.index import IndexParams

    return IndexParams.from_section(dict(section(dict(params), "index")))


def localize_config(params: Params) -> LocalizeParams:
    from pipeline.tools.localize import LocalizeParams

    return LocalizeParams.from_section(dict(section(dict(params), "localize")))


def catalog_config(params: Params) -> CatalogParams:
    from pipeline.stages.catalog import CatalogParams

    return build_config(CatalogParams, dict(section(dict(params), "catalog")), "catalog")


def catalog_context(params: Params) -> BuildContext:
    """What the catalog describes from other sections: the fetched shards and whose imagery
    (`fetch`), whose photos (`fetch_queries`), the evaluation sets (`evalset` and
    `lost_in_space`, either may be absent) and the training recipe, as written."""
    from pipeline.fetch.queries import QueryPhotoConfig
    from pipeline.stages.catalog import RECIPE_SECTIONS, BuildContext

    fetch = fetch_config(params)
    photos = fetch_queries_config(params).photos if "fetch_queries" in params else QueryPhotoConfig()
    sets = evalset_config(params).names if "evalset" in params else ()
    if "lost_in_space" in params:
        sets += tuple(s.name for s in lost_in_space_config(params).sets)
    recipe = {k: params[k] for k in RECIPE_SECTIONS if k in params}
    return BuildContext(fetch.years, fetch.zooms, fetch.source, photos.source, sets, recipe)


# Every section params.yaml may hold, in the file's order.
SECTIONS: dict[str, Callable[[Params], Any]] = {
    "grid": grid_config,
    "queries": queries_config,
    "intersect": intersect_config,
    "evalset": evalset_config,
    "fetch": fetch_config,
    "fetch_queries": fetch_queries_config,
    "export": export_config,
    "model": model_config,
    "augment": augment_config,
    "loss": loss_config,
    "train": train_config,
    "evaluate": evaluate_config,
    "index": index_config,
    "localize": localize_config,
    "pairs": pairs_config,
    "astroloc": astroloc_config,
    "audit_page": audit_page_config,
    "lost_in_space": lost_in_space_config,
    "catalog": catalog_config,
}

# Sections whose stage takes its dataclass from this module (`run(config, paths)`): every one.
MIGRATED = (
    "grid", "queries", "intersect", "evalset", "fetch", "fetch_queries", "export", "pairs", "lost_in_space",
    "catalog", "model", "augment", "loss", "train", "astroloc", "evaluate", "audit_page", "index", "localize",
)  # fmt: skip

__all__ = [
    "MIGRATED", "SECTIONS", "astroloc_config", "audit_config", "audit_page_config", "augment_config", "build",
    "build_all", "catalog_config", "catalog_context", "evalset_config", "evaluate_config", "export_config",
    "fetch_config", "fetch_queries_config", "grid_config", "index_config", "intersect_config", "load",
    "localize_config", "loss_config", "lost_in_space_config", "model_config", "pairs_config", "queries_config",
    "train_config", "training_config",
]  # fmt: skip
