"""Synthetic Earth: the offline default source of database tiles.

`world` is a deterministic procedural planet, f(lon, lat, year) -> RGB, pure numpy and
no I/O; `server` serves it on 127.0.0.1 with EOX's WMTS URL layout so that the fetch
stage runs the same HTTP code offline as it does against the real service.
"""

from pipeline.synthetic.world import YEARS, render_lonlat, render_tile

__all__ = ["YEARS", "render_lonlat", "render_tile"]
