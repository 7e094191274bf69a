"""ISS passes: the unit that keeps near-duplicate photos on one side of every split (pure).

Consecutive frames of one camera roll taken during one overflight show nearly the same
ground (two frames one number apart overlap 94 % of the time in the NASA table; see
docs/evaluation.md). Splitting such frames between validation and test, or between
training and evaluation, lets a model be scored on near-copies of what it was selected
or trained on. Splits therefore assign whole passes, never single photos.

A pass is a set of photos of one mission and one roll linked by chains of *links*; two
photos are linked when their frame numbers differ by at most `max_frame_gap` and their
dates by at most `max_day_gap` days. The day tolerance keeps a pass that crosses 00:00
UTC in one piece; the date condition keeps apart frames whose numbers are close but were
taken on distant days (frame numbers of one mission are not monotonic in time). A frame
number that is not a plain non-negative integer cannot be linked: such a photo is its
own pass.

The pass id is `<mission>-<roll>-<YYYYMMDD>-<frame>` of the pass's earliest photo (by
date, then frame). It depends only on the photos of the table it is computed on, so the
evalset and pairs stages compute it on the same full queries table."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
import pandas as pd

# Chosen on the NASA table (docs/evaluation.md): consecutive located frames up to 20
# numbers apart overlap in 19-94 % of cases and lie a median of at most 565 km apart (one
# overflight of one area); beyond 20 the median distance exceeds 750 km and the overlap
# falls towards the 1 % of unrelated frames. A wider gap barely changes the passes of an
# evaluation area but drops many more far-away training photos.
DEFAULT_MAX_FRAME_GAP = 20
DEFAULT_MAX_DAY_GAP = 1


def pass_ids(
    mission: npt.ArrayLike,
    roll: npt.ArrayLike,
    frame: npt.ArrayLike,
    date: npt.ArrayLike,
    max_frame_gap: int = DEFAULT_MAX_FRAME_GAP,
    max_day_gap: int = DEFAULT_MAX_DAY_GAP,
) -> npt.NDArray[np.object_]:
    """The pass id of every photo (see module doc), in input order.

    `frame`: frame numbers as text or integers; `date`: YYYYMMDD text or integers. Raises
    ValueError on an unparseable date or negative gaps."""
    if max_frame_gap < 0 or max_day_gap < 0:
        raise ValueError("max_frame_gap and max_day_gap must be >= 0")
    mission_s = pd.Series(np.asarray(mission, dtype=object)).astype(str).to_numpy(dtype=object)
    roll_s = pd.Series(np.asarray(roll, dtype=object)).astype(str).to_numpy(dtype=object)
    frame_s = pd.Series(np.asarray(frame, dtype=object)).astype(str)
    date_s = pd.Series(np.asarray(date, dtype=object)).astype(str)
    n = len(mission_s)
    if not (len(roll_s) == len(frame_s) == len(date_s) == n):
        raise ValueError("mission, roll, frame and date must have the same length")
    if n == 0:
        return np.empty(0, dtype=object)
    days = pd.to_datetime(date_s, format="%Y%m%d", errors="coerce")
    if days.isna().any():
        bad = date_s[days.isna()].iloc[0]
        raise ValueError(f"date {bad!r} is not YYYYMMDD")
    day = ((days - pd.Timestamp("1970-01-01")) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    numeric = frame_s.str.fullmatch(r"[0-9]{1,15}").to_numpy(dtype=bool)
    num = np.where(numeric, pd.to_numeric(frame_s.where(numeric, "0")).to_numpy(dtype=np.int64), -1)

    # Links: (1) consecutive frames of one (mission, roll, date), sorted by frame, within the
    # gap, which chains every same-day pair within the gap; (2) for every other day within
    # `max_day_gap`, each photo's nearest frame below and above it on that day, within the
    # gap, which chains every cross-day pair within the gap with the same-day chains.
    group = pd.Series(mission_s + "\x00" + roll_s).factorize()[0]
    idx = np.flatnonzero(numeric)
    photos = pd.DataFrame({"i": idx, "group": group[idx], "day": day[idx], "frame": num[idx]})
    photos = photos.sort_values(["group", "day", "frame"], kind="stable").reset_index(drop=True)
    same_day = (
        (photos["group"].to_numpy()[1:] == photos["group"].to_numpy()[:-1])
        & (photos["day"].to_numpy()[1:] == photos["day"].to_numpy()[:-1])
        & (np.diff(photos["frame"].to_numpy()) <= max_frame_gap)
    )
    links = [np.column_stack([photos["i"].to_numpy()[:-1][same_day], photos["i"].to_numpy()[1:][same_day]])]
    by_frame = photos.sort_values("frame", kind="stable")
    for shift in range(1, max_day_gap + 1):
        other = by_frame.assign(day=by_frame["day"] - shift).rename(columns={"i": "j"})
        for direction in ("backward", "forward"):
            m = pd.merge_asof(
                by_frame,
                other,
                on="frame",
                by=["group", "day"],
                direction=direction,
                tolerance=max_frame_gap,
                allow_exact_matches=True,
            )
            m = m.dropna(subset=["j"])
            links.append(np.column_stack([m["i"].to_numpy(np.int64), m["j"].to_numpy(np.int64)]))
    parent = np.arange(n, dtype=np.int64)
    for i, j in np.concatenate(links):
        _union(parent, int(i), int(j))
    root = np.array([_find(parent, i) for i in range(n)], dtype=np.int64)

    # Name each pass after its earliest photo (date, then frame; non-numeric frames last).
    first = pd.DataFrame(
        {"root": root, "day": day, "num": np.where(numeric, num, np.iinfo(np.int64).max), "i": np.arange(n)}
    ).sort_values(["root", "day", "num", "i"], kind="stable")
    head = first.drop_duplicates("root").set_index("root")["i"]
    h = head.reindex(root).to_numpy(dtype=np.int64)
    dates, frames = date_s.to_numpy(dtype=object), frame_s.to_numpy(dtype=object)
    names = mission_s[h] + "-" + roll_s[h] + "-" + dates[h] + "-" + frames[h]
    return np.asarray(names, dtype=object)


def _find(parent: npt.NDArray[np.int64], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _union(parent: npt.NDArray[np.int64], i: int, j: int) -> None:
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)


def stable_fold(keys: npt.ArrayLike, folds: int) -> npt.NDArray[np.int64]:
    """Fold in 0..folds-1 of each key: the first 8 bytes of its SHA-256, modulo `folds`.

    A hash, not a position, so a key keeps its fold when other keys are added or removed.
    Evaluation sets hash pass ids, so every photo of a pass lands in the same fold."""
    ids = np.asarray(keys, dtype=object)
    if folds < 1:
        raise ValueError("folds must be >= 1")
    if folds == 1:
        return np.zeros(len(ids), dtype=np.int64)
    digests = [int.from_bytes(hashlib.sha256(str(q).encode()).digest()[:8], "big") for q in ids]
    return np.asarray([dg % folds for dg in digests], dtype=np.int64)
