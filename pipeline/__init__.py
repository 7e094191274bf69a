"""Geospatial database-building pipeline of EarthLoc: region grid, query footprints,
intersections and evaluation sets. The geometry core (`pipeline.geo`) does no I/O;
the stages (`pipeline.stages`) read and write files and call the core."""

__all__ = ["__version__"]
__version__ = "0.1.0"
