"""Orientation: the bearing a photo's top edge faces, and how far the top-1 rotation is from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd


def photo_up_bearing(orientation: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Compass bearing (degrees clockwise from north) the photo's top edge faces, from NASA's
    ORIENTATION, which is the direction of north in the photo measured clockwise from the
    photo's up (measured on the NASA CSV and used by the photo simulator,
    pipeline/synthetic/photos.py): up faces bearing -ORIENTATION.

    A north-up DB image turned counter-clockwise by a degrees has its top facing bearing a,
    so the TTA angle that matches the photo is a = -ORIENTATION (mod 360)."""
    return np.mod(-np.asarray(orientation, dtype=np.float64), 360.0)


def queries_orientation(queries: pd.DataFrame) -> npt.NDArray[np.float64]:
    """NASA ORIENTATION of each query: the `orientation` column of queries.csv, else the
    orientation token of the upstream file name (NaN where neither parses)."""
    if "orientation" in queries.columns:
        return pd.to_numeric(queries["orientation"], errors="coerce").to_numpy(dtype=np.float64)
    from pipeline.geo.names import parse_filename

    out = np.full(len(queries), np.nan)
    for i, name in enumerate(queries["filename"].astype(str)):
        try:
            out[i] = float(parse_filename(name).orientation)
        except ValueError:
            pass
    return out


def circular_error_deg(predicted: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Smallest angle between two directions, degrees in [0, 180]."""
    d = np.mod(np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64), 360.0)
    return np.minimum(d, 360.0 - d)


def orientation_summary(
    predicted: npt.ArrayLike, truth: npt.ArrayLike, thresholds: Sequence[float] = (45.0, 90.0)
) -> dict[str, Any]:
    """Circular error statistics of the predicted orientation (NaN truths are skipped).

    With 4x90° TTA the prediction is a multiple of 90°, so an error of at most 45° means
    the right quadrant: the best the protocol can do."""
    pred = np.asarray(predicted, dtype=np.float64)
    tr = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(tr) & (pred >= 0)
    err = circular_error_deg(pred[ok], tr[ok])
    out: dict[str, Any] = {"num_scored": int(ok.sum())}
    if not len(err):
        out.update({f"within_{t:g}deg": None for t in thresholds} | {"median_error_deg": None, "mean_error_deg": None})
        return out
    for t in thresholds:
        out[f"within_{t:g}deg"] = float(100.0 * np.mean(err <= t))
    out["median_error_deg"] = float(np.median(err))
    out["mean_error_deg"] = float(np.mean(err))
    # 15-degree bins; the last one includes 180.
    bins = np.minimum((err // 15).astype(np.int64), 11)
    out["histogram_deg"] = {f"{15 * b}-{15 * b + 15}": int(np.sum(bins == b)) for b in range(12)}
    return out
