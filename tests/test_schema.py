"""pipeline.schema: the names it gives are the ones the stages write, in the files' order."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

from pipeline import schema
from pipeline.geo.regions import GridSpec
from pipeline.stages import grid as grid_stage
from pipeline.stages import queries as queries_stage
from support import ROOT, texas_csv

# The file contract, spelled out once more: a change to pipeline/schema.py that renames or
# reorders a column fails here instead of silently changing every output.
WRITTEN_CORNERS = ["ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon"]


def test_corner_names_follow_the_corner_order():
    assert list(schema.CORNER_COLUMNS) == WRITTEN_CORNERS
    assert schema.CORNER_COLUMNS == tuple(f"{c}_{axis}" for c in schema.CORNERS for axis in ("lat", "lon"))
    assert schema.corner_lat_lon_columns() == (
        ("ll_lat", "ll_lon"),
        ("ul_lat", "ul_lon"),
        ("ur_lat", "ur_lon"),
        ("lr_lat", "lr_lon"),
    )
    assert schema.CORNER_LAT_COLUMNS == ("ll_lat", "ul_lat", "ur_lat", "lr_lat")
    assert schema.NASA_CORNER_COLUMNS == (
        "LL_LAT",
        "LL_LON",
        "UL_LAT",
        "UL_LON",
        "UR_LAT",
        "UR_LON",
        "LR_LAT",
        "LR_LON",
    )


def test_queries_stage_writes_the_schema_columns(tmp_path):
    csv = texas_csv(tmp_path / "nasa.csv", 3)
    raw = queries_stage.read_nasa_csv(csv)
    assert set(schema.NASA_CORNER_COLUMNS) <= set(raw.columns)
    out, rejected = tmp_path / "queries.parquet", tmp_path / "rejected.csv"
    queries_stage.run(queries_stage.QueriesParams(), queries_stage.QueriesPaths(csv, out, rejected))
    written = pq.read_schema(out).names
    assert [c for c in written if c in schema.CORNER_COLUMNS] == WRITTEN_CORNERS
    start = written.index("ll_lat")
    assert written[start : start + 8] == WRITTEN_CORNERS  # side by side, as users' tools expect
    assert set(schema.QUERY_COLUMNS) <= set(written)
    assert pq.read_table(out).num_rows == 3


def test_grid_parquet_holds_the_schema_columns_in_order(tmp_path):
    out = tmp_path / "regions.parquet"
    params = grid_stage.GridParams(spec=GridSpec(zooms=(6,)), land_samples_per_tile=2, bbox=(5.0, 45.0, 7.0, 46.0))
    grid_stage.run(params, grid_stage.GridPaths(out=out))
    written = pq.read_schema(out).names
    assert written == [*schema.GRID_COLUMNS, "land_fraction", "geometry"]
    assert written[4:12] == WRITTEN_CORNERS
    assert set(schema.REGION_FOOTPRINT_COLUMNS) <= set(written)
    assert pq.read_table(out).num_rows > 0


def test_database_years():
    assert schema.DATABASE_YEARS == (2018, 2019, 2020, 2021)
    assert schema.DATABASE_YEAR == schema.DATABASE_YEARS[-1]


def test_random_streams_are_distinct():
    streams = {k: v for k, v in vars(schema).items() if k.startswith("STREAM_")}
    assert len(streams) == 8
    assert len(set(streams.values())) == len(streams), "two consumers would share random numbers"


def test_schema_imports_nothing_heavy():
    code = textwrap.dedent(
        """
        import sys
        import pipeline.schema
        heavy = {"numpy", "pandas", "torch", "shapely", "pyarrow"} & set(sys.modules)
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
