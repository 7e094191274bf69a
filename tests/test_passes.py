"""ISS passes and pass-based folds: the rule, checked against a brute-force reference,
and the evaluation-set folds built from it (disjoint, complete, no pass in two folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geo.evalset import EvalSetSpec, select_evalset
from pipeline.geo.passes import pass_ids, stable_fold


def _components(
    mission: list[str], roll: list[str], frame: list[str], date: list[str], gap: int, days: int
) -> list[int]:
    """Reference: connected components of the link graph, every pair compared explicitly."""
    n = len(mission)
    day = pd.to_datetime(pd.Series(date), format="%Y%m%d").to_numpy().astype("datetime64[D]").astype(np.int64)
    label = list(range(n))

    def root(i: int) -> int:
        while label[i] != i:
            i = label[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if not (frame[i].isdigit() and frame[j].isdigit()):
                continue
            if (
                (mission[i], roll[i]) == (mission[j], roll[j])
                and abs(int(frame[i]) - int(frame[j])) <= gap
                and abs(int(day[i]) - int(day[j])) <= days
            ):
                a, b = root(i), root(j)
                label[max(a, b)] = min(a, b)
    return [root(i) for i in range(n)]


def _same_partition(a: list[object] | np.ndarray, b: list[object] | np.ndarray) -> bool:
    df = pd.DataFrame({"a": list(a), "b": list(b)})
    return bool((df.groupby("a")["b"].nunique() == 1).all() and (df.groupby("b")["a"].nunique() == 1).all())


def test_hand_made_passes() -> None:
    rows = [  # mission, roll, frame, date
        ("ISS030", "E", "100", "20120127"),  # 0: pass A starts
        ("ISS030", "E", "150", "20120127"),  # 1: gap 50 -> A
        ("ISS030", "E", "251", "20120127"),  # 2: gap 101 -> new pass B
        ("ISS030", "E", "300", "20120128"),  # 3: gap 49, next day (midnight) -> B
        ("ISS030", "E", "320", "20120305"),  # 4: gap 20 but weeks later -> its own pass
        ("ISS030", "F", "151", "20120127"),  # 5: other roll -> its own pass
        ("ISS031", "E", "150", "20120127"),  # 6: other mission -> its own pass
        ("ISS030", "E", "12a", "20120127"),  # 7: not a number -> its own pass
        ("ISS030", "E", "99", "20120128"),  # 8: frame 99 the next day, 1 from frame 100 -> A
    ]
    m, r, f, d = (list(c) for c in zip(*rows, strict=True))
    ids = pass_ids(m, r, f, d, max_frame_gap=100, max_day_gap=1)
    assert ids[0] == ids[1] == ids[8] == "ISS030-E-20120127-100"  # named after the earliest photo
    assert ids[2] == ids[3] == "ISS030-E-20120127-251"
    assert len({ids[0], ids[2], ids[4], ids[5], ids[6], ids[7]}) == 6
    assert ids[7] == "ISS030-E-20120127-12a"
    # Without the day tolerance, the pass crossing midnight splits.
    strict = pass_ids(m, r, f, d, max_frame_gap=100, max_day_gap=0)
    assert strict[2] != strict[3] and strict[0] != strict[8]
    with pytest.raises(ValueError, match="YYYYMMDD"):
        pass_ids(["a"], ["E"], ["1"], ["2012-01-27"])
    assert len(pass_ids([], [], [], [])) == 0


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["ISS030", "ISS031"]),
            st.sampled_from(["E", "F"]),
            st.one_of(st.integers(0, 400).map(str), st.just("x1")),
            st.sampled_from(["20200101", "20200102", "20200103", "20200110"]),
        ),
        min_size=1,
        max_size=40,
        unique_by=lambda t: (t[0], t[1], t[2]),
    ),
    gap=st.integers(0, 60),
    days=st.integers(0, 2),
)
def test_passes_equal_brute_force_components(rows: list[tuple[str, str, str, str]], gap: int, days: int) -> None:
    m, r, f, d = (list(c) for c in zip(*rows, strict=True))
    ids = pass_ids(m, r, f, d, max_frame_gap=gap, max_day_gap=days)
    assert _same_partition(ids, _components(m, r, f, d, gap, days))


def _world(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """~300 photos on ~40 passes around the POI (0, 0), each with one positive region."""
    rng = np.random.default_rng(seed)
    rows = []
    frame = 0
    for p in range(40):
        frame += int(rng.integers(150, 2000))  # a new pass: far in frame numbers
        date = f"202101{1 + p % 28:02d}"
        for _ in range(int(rng.integers(1, 15))):
            frame += int(rng.integers(1, 6))
            rows.append(("ISS050", "E", str(frame), date, rng.uniform(-3, 3), rng.uniform(-3, 3)))
    q = pd.DataFrame(rows, columns=["mission", "roll", "frame", "date", "nadir_lat", "nadir_lon"])
    q.insert(0, "query_id", "ISS050-E-" + q["frame"])
    q["pass_id"] = pass_ids(q["mission"], q["roll"], q["frame"], q["date"])
    regions = pd.DataFrame(
        {"region_id": ["r0"], "zoom": [9], "row": [0], "col": [0], "center_lat": [0.0], "center_lon": [0.0]}
    )
    inter = pd.DataFrame({"query_id": q["query_id"], "region_id": "r0"})
    return q, regions, inter


def test_folds_take_whole_passes_and_partition_the_set() -> None:
    q, regions, inter = _world()
    assert q["pass_id"].nunique() == 40
    everything = select_evalset(EvalSetSpec("all", 0.0, 0.0, 1000.0, 1000.0), q, regions, inter)
    assert len(everything.queries) == len(q)
    folds = [
        select_evalset(EvalSetSpec(f"f{k}", 0.0, 0.0, 1000.0, 1000.0, folds=5, take_folds=(k,)), q, regions, inter)
        for k in range(5)
    ]
    members = [set(f.queries["query_id"]) for f in folds]
    # Disjoint, and together the whole set.
    for a in range(5):
        for b in range(a + 1, 5):
            assert not members[a] & members[b]
    assert set().union(*members) == set(everything.queries["query_id"])
    assert sum(f.num_other_folds for f in folds) == 4 * len(q)
    # No pass in two folds; every fold holds at least one pass on this world.
    fold_of_pass: dict[str, int] = {}
    for k, f in enumerate(folds):
        for pid in f.queries["pass_id"]:
            assert fold_of_pass.setdefault(pid, k) == k
    assert all(len(m) for m in members)
    # Demo-style: validation fold 0 against test folds 1-4 share no pass.
    val = select_evalset(EvalSetSpec("v", 0.0, 0.0, 1000.0, 1000.0, folds=5, take_folds=(0,)), q, regions, inter)
    test = select_evalset(
        EvalSetSpec("t", 0.0, 0.0, 1000.0, 1000.0, folds=5, take_folds=(1, 2, 3, 4)), q, regions, inter
    )
    assert not set(val.queries["pass_id"]) & set(test.queries["pass_id"])
    assert len(val.queries) + len(test.queries) == len(q)


def test_folds_need_pass_ids() -> None:
    q, regions, inter = _world()
    with pytest.raises(ValueError, match="pass_id"):
        select_evalset(
            EvalSetSpec("v", 0.0, 0.0, 1000.0, 1000.0, folds=5, take_folds=(0,)),
            q.drop(columns=["pass_id"]),
            regions,
            inter,
        )


def test_stable_fold_is_a_hash_of_the_key() -> None:
    keys = [f"ISS0{i}-E-20200101-{i}" for i in range(200)]
    f = stable_fold(keys, 5)
    assert set(f.tolist()) == {0, 1, 2, 3, 4}
    assert (stable_fold(keys[::-1], 5) == f[::-1]).all()  # position does not matter
    assert (stable_fold(keys[:50], 5) == f[:50]).all()  # neither do the other keys
    assert (stable_fold(keys, 1) == 0).all()
