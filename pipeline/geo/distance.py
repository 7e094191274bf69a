"""Great-circle distance as the EarthLoc evaluation uses it (sphere, R = 6371 km)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_KM = 6371.0


def haversine_km(
    lat1: npt.ArrayLike,
    lon1: npt.ArrayLike,
    lat2: npt.ArrayLike,
    lon2: npt.ArrayLike,
    radius_km: float = EARTH_RADIUS_KM,
) -> npt.NDArray[np.float64]:
    """Haversine distance in km between points given in degrees; broadcasts.

    Uses d = 2R·atan2(√a, √(1−a)) like upstream, in float64 (upstream runs float32,
    which matters only within about a metre of a radius threshold)."""
    p1 = np.radians(np.asarray(lat1, dtype=np.float64))
    p2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    a = np.clip(a, 0.0, 1.0)
    return 2.0 * radius_km * np.arctan2(np.sqrt(a), np.sqrt(1.0 - a))
