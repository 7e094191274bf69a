"""The data schema that stages share: column names, layer years and training's random streams.

The files the stages write are a contract, between the stage that writes a column and
every stage that reads it, and with users' tools (GIS, pandas, DuckDB) that find columns
by name and often by position. Written out once, here, a column's name and place cannot
drift apart between a writer and its readers. Column order is part of the contract:
the tuples below are in the order the files hold them.

Plain tuples of str and ints, and no imports, so the pure geometry of `pipeline.geo`,
the stages and `earthloc` can all use it without pulling in anything heavy.
"""

from __future__ import annotations

# -- footprints ---------------------------------------------------------------------------
# A footprint is four corners, lower-left, upper-left, upper-right, lower-right, each a
# latitude then a longitude: the order of every corner list the stages read and write.
CORNERS: tuple[str, ...] = ("ll", "ul", "ur", "lr")

# The eight corner columns of the grid, the queries and the tables built from them.
CORNER_COLUMNS: tuple[str, ...] = ("ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon")
CORNER_LAT_COLUMNS: tuple[str, ...] = CORNER_COLUMNS[0::2]  # ll, ul, ur, lr
CORNER_LON_COLUMNS: tuple[str, ...] = CORNER_COLUMNS[1::2]

# The same corners as NASA's photo metadata CSV spells them; the queries stage writes
# each one under its lower-case name.
NASA_CORNER_COLUMNS: tuple[str, ...] = tuple(c.upper() for c in CORNER_COLUMNS)


def corner_lat_lon_columns() -> tuple[tuple[str, str], ...]:
    """(lat column, lon column) of each corner, in ring order: the pairs a polygon is built from."""
    return tuple(zip(CORNER_LAT_COLUMNS, CORNER_LON_COLUMNS))


# -- regions (data/grid/regions.parquet) ----------------------------------------------------
CENTER_COLUMNS: tuple[str, ...] = ("center_lat", "center_lon")

# What a region covers, without its tile indices: enough to name its database image.
REGION_FOOTPRINT_COLUMNS: tuple[str, ...] = ("region_id", "zoom", *CORNER_COLUMNS, *CENTER_COLUMNS, "area_km2")

# Every column that describes a region, in the grid's order (`land_fraction` and the
# geometry follow them in the grid file).
GRID_COLUMNS: tuple[str, ...] = ("region_id", "zoom", "row", "col", *CORNER_COLUMNS, *CENTER_COLUMNS, "area_km2")

# -- queries (data/queries/queries.parquet) -----------------------------------------------
NADIR_COLUMNS: tuple[str, ...] = ("nadir_lat", "nadir_lon")

# What the pass grouping and the evaluation sets read of a query: its ISS pass keys
# (mission, roll, frame, date), its file name and where the camera pointed.
QUERY_COLUMNS: tuple[str, ...] = ("query_id", "mission", "roll", "frame", "date", "filename", *NADIR_COLUMNS)

# -- database years -----------------------------------------------------------------------
# The yearly Sentinel-2 cloudless layers of the database, oldest first.
DATABASE_YEARS: tuple[int, ...] = (2018, 2019, 2020, 2021)
# The layer the intersections, evaluation sets and training's clusters use unless params
# name another: the newest one.
DATABASE_YEAR = 2021

# -- random streams of training -------------------------------------------------------------
# Each consumer of random numbers draws from its own stream (see `earthloc.seeds`). The
# numbers are part of the results: changing one changes every run's weights.
STREAM_RANDOM_CLUSTERS = 1  # the random cluster assignment before the first k-means
STREAM_BATCH = 2  # the cluster and the regions of a batch
STREAM_AUGMENT = 3  # the year-wise augmentation parameters of an iteration
STREAM_KMEANS = 4  # the faiss k-means seed of a re-clustering
STREAM_LOADER = 5  # the DataLoader's worker seeds of a segment
STREAM_PHOTOS = 7  # the astronaut photos of a batch and their positive regions
STREAM_WEIGHTED_BATCH = 8  # the relevance-weighted cluster draw (weighted_clusters, use sample|both)
STREAM_CLUSTER_WEIGHTS = 9  # the k-means seed of a relevance-weight refresh

__all__ = [
    "CENTER_COLUMNS",
    "CORNERS",
    "CORNER_COLUMNS",
    "CORNER_LAT_COLUMNS",
    "CORNER_LON_COLUMNS",
    "DATABASE_YEAR",
    "DATABASE_YEARS",
    "GRID_COLUMNS",
    "NADIR_COLUMNS",
    "NASA_CORNER_COLUMNS",
    "QUERY_COLUMNS",
    "REGION_FOOTPRINT_COLUMNS",
    "STREAM_AUGMENT",
    "STREAM_BATCH",
    "STREAM_CLUSTER_WEIGHTS",
    "STREAM_KMEANS",
    "STREAM_LOADER",
    "STREAM_PHOTOS",
    "STREAM_RANDOM_CLUSTERS",
    "STREAM_WEIGHTED_BATCH",
    "corner_lat_lon_columns",
]
