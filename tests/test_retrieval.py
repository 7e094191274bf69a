"""earthloc.retrieval: TTA id mapping and recall against upstream's test vectors,
collapsed vs uncollapsed counting, the -1 guard, index options, the exact random
baseline, orientation errors, image loading and memmapped embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from earthloc.augment import IMAGENET_MEAN, IMAGENET_STD
from earthloc.images import check_images_exist, load_model_input
from earthloc.retrieval.bootstrap import paired_margin
from earthloc.retrieval.descriptors import DescriptorMemo, embed, embed_memo, rotate_batch
from earthloc.retrieval.index import IndexSpec, build_index, index_bytes
from earthloc.retrieval.orientation import circular_error_deg, orientation_summary
from earthloc.retrieval.recall import hits_at, random_hit_probability, random_recall_curve, recall_curve, recalls
from earthloc.retrieval.search import collapse_rotations, map_raw_ids, search
from pipeline.errors import InputError
from retrieval_support import TinyNet


# -- upstream test vectors -------------------------------------------------------------------
def test_tta_index_mapping_vector() -> None:
    db, angle = map_raw_ids([7, 4, 1, 10, 0], num_db=3)
    assert db.tolist() == [1, 1, 1, 1, 0]
    assert angle.tolist() == [180, 90, 0, 270, 0]


@pytest.mark.parametrize("angle", [0, 90, 180, 270])
def test_rot90_equals_torchvision_rotate(angle: int) -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    expected = TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST)
    assert torch.equal(rotate_batch(x, angle), expected)
    # counter-clockwise: the top-right pixel goes to the top-left after +90°.
    if angle == 90:
        assert rotate_batch(x, 90)[0, 0, 0, 0] == x[0, 0, 0, -1]


def test_recall_vector_uncollapsed_and_collapsed() -> None:
    pred = np.array([[2, 0, 1], [1, 1, 0], [1, 1, 1]])
    pos = [np.array([2]), np.array([0]), np.array([0, 2])]
    up = recalls(pred, pos, ns=(1, 2, 3))
    assert up == pytest.approx({1: 100 / 3, 2: 100 / 3, 3: 200 / 3})
    # Collapsed: q1's list becomes [1, 0], so its positive moves from rank 3 to rank 2.
    col = recalls(pred, pos, ns=(1, 2, 3), collapse=True)
    assert col == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 200 / 3})
    assert recall_curve(pred, pos).tolist() == pytest.approx([100 / 3, 100 / 3, 200 / 3])
    with pytest.raises(ValueError):
        recalls(pred, pos, ns=(4,))


def test_minus_one_guard_when_index_smaller_than_k() -> None:
    rng = np.random.default_rng(0)
    db = rng.normal(size=(4, 2, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=-1, keepdims=True)
    res = search(db, db[0], k=10)  # only 8 vectors in the index
    assert (res.raw_id[:, 8:] == -1).all() and (res.db_index[:, 8:] == -1).all()
    assert (res.angle[:, 8:] == -1).all() and np.isneginf(res.score[:, 8:]).all()
    assert set(res.db_index[:, :8].ravel().tolist()) == {0, 1}
    # Upstream mapped -1 to image N-1 at -90°, which would count as a hit for a query whose
    # positive is image N-1; here padding never counts.
    pred = np.array([[0, -1, -1]])
    assert recalls(pred, [np.array([1])], ns=(1, 3)) == {1: 0.0, 3: 0.0}
    assert map_raw_ids([-1, 5], 3)[0].tolist() == [-1, 2]


# -- search ----------------------------------------------------------------------------------
def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    a = rng.normal(size=shape).astype(np.float32)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_search_is_exact_and_rotation_major() -> None:
    rng = np.random.default_rng(1)
    db = _unit(rng, 4, 30, 24)
    q = _unit(rng, 7, 24)
    res = search(db, q, k=12)
    scores = np.einsum("md,rnd->mrn", q, db).reshape(7, -1)  # raw id = r * N + n
    order = np.argsort(-scores, axis=1, kind="stable")[:, :12]
    assert np.array_equal(res.raw_id, order)
    assert np.array_equal(res.db_index, order % 30) and np.array_equal(res.angle, 90 * (order // 30))
    np.testing.assert_allclose(res.score, np.take_along_axis(scores, order, 1), rtol=1e-5)


def test_collapse_keeps_best_rotation_and_is_exact() -> None:
    rng = np.random.default_rng(2)
    db = _unit(rng, 4, 40, 16)
    q = _unit(rng, 5, 16)
    k = 6
    col = collapse_rotations(search(db, q, k=4 * k), k)
    per_image = np.einsum("md,rnd->mrn", q, db)  # (M, R, N)
    best = per_image.max(axis=1)
    expect = np.argsort(-best, axis=1, kind="stable")[:, :k]
    assert np.array_equal(col.db_index, expect)
    assert np.array_equal(col.angle, 90 * per_image.argmax(axis=1)[np.arange(5)[:, None], expect])
    assert all(len(set(row)) == k for row in col.db_index.tolist())


@pytest.mark.parametrize("kind", ["flat", "sq_fp16", "ivf_flat", "ivf_pq", "pq"])
def test_index_kinds_find_their_own_vectors(kind: str) -> None:
    # Clustered data (the shape real descriptors have): 20 centres, 400 vectors near them.
    rng = np.random.default_rng(3)
    centres = _unit(rng, 20, 64)
    label = rng.integers(0, 20, size=100)
    db = centres[np.broadcast_to(label, (4, 100))] + 0.05 * rng.normal(size=(4, 100, 64)).astype(np.float32)
    db /= np.linalg.norm(db, axis=-1, keepdims=True)
    spec = IndexSpec(kind=kind, nlist=8, nprobe=8, pq_m=16)
    index = build_index(db, spec)
    assert index.ntotal == 400 and index_bytes(index) > 0
    res = search(None, db[2, :50], k=5, index=index, num_db=100)
    assert res.db_index.shape == (50, 5) and (res.db_index >= 0).all()
    top1 = np.mean((res.db_index[:, 0] == np.arange(50)) & (res.angle[:, 0] == 180))
    if kind in ("flat", "sq_fp16", "ivf_flat"):  # exact or exact within the probed cells (all)
        assert top1 == 1.0
    else:  # lossy codes blur near-duplicates, but the cluster structure must survive
        assert np.mean(label[res.db_index[:, 0]] == label[:50]) >= 0.95


# -- random baseline -------------------------------------------------------------------------
def test_random_recall_closed_form_and_simulation() -> None:
    # One positive among 10 images: R@n = n/10 exactly.
    np.testing.assert_allclose(random_recall_curve(10, [1], 10), 10.0 * np.arange(1, 11), rtol=1e-6)
    # Against a seeded simulation of random rankings of 4 copies per image.
    num_db, pos, k = 25, [1, 3, 6], 20
    expect = random_recall_curve(num_db, pos, k, copies=4)
    rng = np.random.default_rng(0)
    hits = np.zeros(k)
    sims = 4000
    for _ in range(sims):
        for p in pos:
            order = rng.permutation(4 * num_db) % num_db  # rotation-major copies
            first = np.flatnonzero(order < p)[0]  # images 0..p-1 are the positives
            hits[first:] += first < k
    np.testing.assert_allclose(100 * hits / (sims * len(pos)), expect, atol=1.5)
    # More ranks than the list holds: everything is found.
    assert random_recall_curve(2, [1], 10, copies=4)[-1] == pytest.approx(100.0)


def test_random_hit_probability_per_query_averages_to_the_curve() -> None:
    prob = random_hit_probability(25, [1, 3, 6], 20, copies=4)
    assert prob.shape == (3, 20)
    np.testing.assert_allclose(100 * prob.mean(axis=0), random_recall_curve(25, [1, 3, 6], 20, copies=4), rtol=1e-5)
    # One positive image among 10, one copy: P(hit in top n) = n / 10.
    np.testing.assert_allclose(random_hit_probability(10, [1], 10)[0], np.arange(1, 11) / 10)
    assert np.all(np.diff(prob, axis=1) >= 0) and np.all(prob[np.argsort([1, 3, 6])][:, 0] == np.sort(prob[:, 0]))


# -- margin between two methods --------------------------------------------------------------
def test_hits_at_from_first_positive_rank() -> None:
    # first positive at rank 0, 4, 12 and never (k = 20)
    assert hits_at([0, 4, 12, 20], [1, 5, 10, 20]).tolist() == [
        [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]
    ]  # fmt: skip


def test_paired_margin_on_hand_made_cases() -> None:
    ns = [1, 10]
    rng = np.random.default_rng(1)
    a = (rng.random((400, 2)) < 0.5).astype(float)
    same = paired_margin(a, a, ns)
    assert all(same[n] == {"diff": 0.0, "lo": 0.0, "hi": 0.0} for n in ns)
    # b finds a query only where a does, and half of those: a is ahead by 100 * mean(a) / 2 points,
    # and the interval over queries brackets that and stays above zero.
    b = a * (np.arange(400)[:, None] % 2)
    m = paired_margin(a, b, ns)
    for j, n in enumerate(ns):
        expect = 100 * (a[:, j] - b[:, j]).mean()
        assert m[n]["diff"] == pytest.approx(expect)
        assert 0 < m[n]["lo"] < expect < m[n]["hi"]
    # Against a probability baseline (random's exact expectation), a coin-flip method's
    # interval contains zero.
    coin = (rng.random((400, 2)) < 0.3).astype(float)
    m = paired_margin(coin, np.full((400, 2), 0.3), ns)
    assert all(m[n]["lo"] < 0 < m[n]["hi"] for n in ns)
    with pytest.raises(ValueError):
        paired_margin(a, a[:, :1], ns)


# -- orientation -----------------------------------------------------------------------------
def test_circular_error_and_summary() -> None:
    assert circular_error_deg([0, 90, 270, 0], [350, -90, -90, 180]).tolist() == [10, 180, 0, 180]
    s = orientation_summary([0, 90, 180, -1], [30, 150, np.nan, 0])
    assert s["num_scored"] == 2 and s["within_45deg"] == 50.0 and s["within_90deg"] == 100.0


# -- images and embedding ----------------------------------------------------------------------
def test_model_input_rgb_square_normalised(tmp_path: Path) -> None:
    Image.new("L", (60, 40), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 10)).save(tmp_path / "a.png")
    g = load_model_input(tmp_path / "g.png", 20)
    assert g.shape == (3, 20, 20)
    np.testing.assert_allclose(g[:, 0, 0].numpy(), (128 / 255 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, atol=1e-5)
    a = load_model_input(tmp_path / "a.png", 20)
    assert a.shape == (3, 20, 20) and a[0].mean() > 2.0  # red, alpha dropped
    with pytest.raises(InputError, match="missing.jpg"):
        load_model_input(tmp_path / "missing.jpg", 20)
    with pytest.raises(InputError, match="missing.jpg"):
        check_images_exist([tmp_path / "g.png", tmp_path / "missing.jpg"], "test")


def test_embed_memmap_and_rotated_copy_retrieved(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    paths = []
    for i in range(6):
        arr = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"db{i}.png")
        paths.append(tmp_path / f"db{i}.png")
        if i == 4:  # the query: image 4 turned 90° counter-clockwise (PIL's rotate is CCW)
            Image.fromarray(arr).rotate(90).save(tmp_path / "q.png")
    model = TinyNet()
    kw = dict(image_size=24, batch_size=4, num_workers=0)
    ram = embed(model, paths, **kw)
    mm = embed(model, paths, out=tmp_path / "db.npy", **kw)
    assert ram.shape == (4, 6, 32) and isinstance(mm, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "db.npy", mmap_mode="r"), ram)
    np.testing.assert_allclose(np.linalg.norm(ram, axis=-1), 1.0, rtol=1e-5)
    q = embed(model, [tmp_path / "q.png"], rotations=(0,), **kw)
    res = search(ram, q, k=3)
    assert (res.db_index[0, 0], res.angle[0, 0]) == (4, 90)
    assert res.score[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_descriptor_memo_embeds_each_image_once_and_changes_nothing(tmp_path: Path) -> None:
    """Two overlapping sets through one memo: the shared images are not embedded again, and
    every descriptor equals the one a plain `embed` gives (the memo only skips work; CPU
    kernels round differently with another batch composition, hence the tolerance)."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)).save(tmp_path / f"m{i}.png")
        paths.append(tmp_path / f"m{i}.png")
    seen: list[int] = []

    class Counting(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return super().forward(x)

    model = Counting()
    kw = dict(image_size=24, batch_size=4, num_workers=0)
    memo = DescriptorMemo()
    first = embed_memo(model, paths[:5], memo, "net", **kw)
    assert sum(seen) == 5 * 4  # 5 images x 4 rotations
    second = embed_memo(model, paths[2:], memo, "net", out=tmp_path / "second.npy", **kw)
    assert sum(seen) == 7 * 4  # only m5 and m6 were new
    np.testing.assert_allclose(first, embed(model, paths[:5], **kw), rtol=0, atol=1e-6)
    np.testing.assert_allclose(second, embed(model, paths[2:], **kw), rtol=0, atol=1e-6)
    assert isinstance(second, np.memmap)
    embed_memo(model, paths[:2], memo, "another net", rotations=(0,), **kw)
    assert len(memo) == 7 * 4 + 2  # a second name is a second network: nothing shared


# ---------------------------------------------------------------------------
# Pass (cluster) bootstrap


def test_cluster_bootstrap_counts_a_pass_once_however_many_frames() -> None:
    """Copies of a photo within one pass add no information: the pass bootstrap of a set
    where every pass holds 5 identical photos equals the photo bootstrap of one photo per
    pass, while a photo-by-photo bootstrap of the copies is too narrow."""
    from earthloc.retrieval.bootstrap import cluster_bootstrap_means, cluster_interval, cluster_margin

    rng = np.random.default_rng(3)
    per_pass = rng.integers(0, 2, size=(40, 2)).astype(np.float64)
    copies = np.repeat(per_pass, 5, axis=0)
    passes = np.repeat([f"P{i}" for i in range(40)], 5)
    a = cluster_bootstrap_means(copies, passes, n_boot=500, seed=1)
    b = cluster_bootstrap_means(per_pass, None, n_boot=500, seed=1)
    np.testing.assert_allclose(a, b)
    wide = cluster_interval(copies, passes, [1, 5])
    narrow = cluster_interval(copies, None, [1, 5])
    for n in (1, 5):
        assert wide[n]["value"] == pytest.approx(100 * per_pass[:, [1, 5].index(n)].mean())
        assert wide[n]["hi"] - wide[n]["lo"] > 1.5 * (narrow[n]["hi"] - narrow[n]["lo"])
    m = cluster_margin(copies, np.zeros_like(copies), [1, 5], passes)
    assert m[1]["diff"] == pytest.approx(wide[1]["value"]) and (m[1]["lo"], m[1]["hi"]) == pytest.approx(
        (wide[1]["lo"], wide[1]["hi"])
    )


def test_cluster_bootstrap_weights_passes_by_their_photos() -> None:
    """A replicate's mean is over photos of the drawn passes (a pass of 3 photos weighs 3)."""
    from earthloc.retrieval.bootstrap import cluster_bootstrap_means

    values = np.array([[1.0], [1.0], [1.0], [0.0]])
    reps = cluster_bootstrap_means(values, ["A", "A", "A", "B"], n_boot=4000, seed=0)
    assert set(np.round(reps[:, 0], 6)) == {0.0, 0.75, 1.0}  # B+B, A+B, A+A
    assert np.mean(reps[:, 0] == 0.75) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError):
        cluster_bootstrap_means(values, ["A", "B"])
