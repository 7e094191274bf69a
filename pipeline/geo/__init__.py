"""Geometry core: pure functions on numpy arrays and shapely geometries.

No file or network I/O and no torch here, so every function can be tested against an
independent oracle (mercantile, pyproj) and called from any stage or worker."""
