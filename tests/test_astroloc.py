"""AstroLoc's losses on hand-made cases, with expected values computed here independently
(plain numpy from the formulas in earthloc/astroloc.py's docstring), and its config.

The "no evaluation photo in the pairs" proofs are in tests/test_pairs.py (hand-made case
and the real data); `test_no_evaluation_photo_in_pairs` below re-runs the hand-made one so
this file covers all three required tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from earthloc.astroloc import (
    AstroLocConfig,
    ClusterConfig,
    PhotoLossConfig,
    PhotoPairLoss,
    WeightedClusterMSLoss,
    cluster_sampling_probs,
    cluster_weights,
    photo_region_masks,
    relevance_weights,
)
from earthloc.loss import NeutralAwareMSLoss
from pipeline.errors import ConfigError


def _unit(deg: list[float]) -> torch.Tensor:
    t = np.radians(np.asarray(deg, dtype=np.float64))
    return torch.tensor(np.stack([np.cos(t), np.sin(t)], axis=1), dtype=torch.float32)


def _ms_row(sims_pos: list[float], sims_neg: list[float], alpha: float, beta: float, lam: float) -> float:
    pos = math.log(1 + sum(math.exp(-alpha * (s - lam)) for s in sims_pos)) / alpha if sims_pos else 0.0
    neg = math.log(1 + sum(math.exp(beta * (s - lam)) for s in sims_neg)) / beta if sims_neg else 0.0
    return pos + neg


# The upstream layout of docs/upstream.md §10.4: three regions x four views.
ANGLES = [0, 10, 20, 30, 25, 35, 45, 55, 90, 100, 110, 120]
LABELS = torch.tensor([k // 4 for k in range(12)])
OVERLAP = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)


# ---------------------------------------------------------------------------
# Relevance weights and clusters


def test_relevance_weights_formula() -> None:
    # K = 2, counts (3, 0), tau = 1: w = 2 * (4, 1) / (3 + 2) = (1.6, 0.4).
    np.testing.assert_allclose(relevance_weights([3, 0], 1.0), [1.6, 0.4])
    # K = 4, counts (0, 2, 6, 0), tau = 0.5: w_k = 4 (c_k + .5) / 10.
    np.testing.assert_allclose(relevance_weights([0, 2, 6, 0], 0.5), [0.2, 1.0, 2.6, 0.2])
    # A large tau tends to uniform weights (EarthLoc).
    np.testing.assert_allclose(relevance_weights([9, 0, 1], 1e9), [1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(cluster_sampling_probs([1.6, 0.4]), [0.8, 0.2])
    with pytest.raises(ValueError):
        relevance_weights([1, -1], 1.0)


def test_cluster_weights_on_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    a, b = np.array([1.0, 0, 0, 0]), np.array([0, 0, 1.0, 0])
    regions = np.vstack([a + 0.01 * rng.standard_normal((10, 4)), b + 0.01 * rng.standard_normal((6, 4))])
    photos = a + 0.01 * rng.standard_normal((3, 4))  # every photo looks like cluster "a"
    cw = cluster_weights(
        regions.astype(np.float32), photos.astype(np.float32), ClusterConfig(n_clusters=2, smoothing=1.0)
    )
    ka, kb = int(cw.region_cluster[0]), int(cw.region_cluster[-1])
    assert ka != kb and (cw.region_cluster[:10] == ka).all() and (cw.region_cluster[10:] == kb).all()
    assert cw.photo_counts[ka] == 3 and cw.photo_counts[kb] == 0
    np.testing.assert_allclose(cw.weights[[ka, kb]], [1.6, 0.4])
    np.testing.assert_allclose(cw.region_weights()[:10], 1.6)


# ---------------------------------------------------------------------------
# The weighted cluster loss


def _expected_weighted(weights: list[float], alpha: float = 1.0, beta: float = 50.0) -> float:
    """All pairs, neutral negatives removed, per-row weight of the row's region; mean over rows."""
    x = _unit(ANGLES).double().numpy()
    s = x @ x.T
    lab = [k // 4 for k in range(12)]
    total = 0.0
    for i in range(12):
        pos = [s[i, j] for j in range(12) if j != i and lab[j] == lab[i]]
        neg = [s[i, j] for j in range(12) if lab[j] != lab[i] and not OVERLAP[lab[i], lab[j]]]
        total += weights[lab[i]] * _ms_row(pos, neg, alpha, beta, 0.0)
    return total / 12


def test_weighted_cluster_loss_hand_made() -> None:
    base = NeutralAwareMSLoss(mining=False)
    loss = WeightedClusterMSLoss(base)
    w = [2.0, 0.5, 1.0]
    out = loss(_unit(ANGLES), LABELS, OVERLAP, torch.tensor(w))
    assert out.loss.item() == pytest.approx(_expected_weighted(w), rel=1e-5)
    # Uniform weights: exactly EarthLoc's loss; docs/upstream.md §10.4 gives 1.2768859.
    ones = loss(_unit(ANGLES), LABELS, OVERLAP, torch.ones(3))
    assert ones.loss.item() == pytest.approx(1.2768859, rel=1e-5)
    assert ones.loss.item() == pytest.approx(base(_unit(ANGLES), LABELS, OVERLAP).loss.item(), rel=1e-6)


def test_weighted_cluster_loss_with_mining_matches_base_when_uniform() -> None:
    # Upstream order, mined: §10.4 gives 0.6795577 and 25 positive pairs.
    base = NeutralAwareMSLoss(neutral_order="upstream")
    out = WeightedClusterMSLoss(base)(_unit(ANGLES), LABELS, OVERLAP, torch.ones(3))
    assert out.loss.item() == pytest.approx(0.6795577, rel=1e-5)
    assert out.n_pos == 25 and out.batch_acc == pytest.approx(25.0)
    # Zero weight on the only regions with mined pairs' rows -> those rows vanish.
    half = WeightedClusterMSLoss(base)(_unit(ANGLES), LABELS, OVERLAP, torch.tensor([0.0, 1.0, 1.0]))
    assert half.loss.item() < out.loss.item()


def test_weighted_cluster_loss_gradient() -> None:
    emb = _unit(ANGLES).requires_grad_(True)
    out = WeightedClusterMSLoss(NeutralAwareMSLoss(mining=False))(emb, LABELS, OVERLAP, torch.tensor([2.0, 0.5, 1.0]))
    out.loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# The photo-to-region pairwise loss


def test_photo_pair_loss_hand_made() -> None:
    # Two photos at 5 and 95 degrees; four region images at 0, 40, 90, 180 degrees.
    photos = _unit([5, 95])
    regions = _unit([0, 40, 90, 180])
    positive = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    neutral = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # photo 0 overlaps region 1 a little
    cfg = PhotoLossConfig(alpha=2.0, beta=10.0, base=0.5, mining=False)
    out = PhotoPairLoss(cfg)(photos, regions, positive, neutral)
    c = lambda a, b: math.cos(math.radians(a - b))  # noqa: E731
    row0 = _ms_row([c(5, 0)], [c(5, 90), c(5, 180)], 2.0, 10.0, 0.5)  # region 1 neutral: no term
    row1 = _ms_row([c(95, 90)], [c(95, 0), c(95, 40), c(95, 180)], 2.0, 10.0, 0.5)
    assert out.loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert (out.n_pos, out.n_neg, out.n_neutral) == (2, 5, 1)
    # A neutral image does not affect its photo's term, wherever it lies.
    moved = regions.clone()
    moved[1] = _unit([5])[0]
    alone = PhotoPairLoss(cfg)(photos[:1], moved, positive[:1], neutral[:1])
    assert alone.loss.item() == pytest.approx(row0, rel=1e-5)


def test_photo_pair_loss_mining() -> None:
    # Photo at 0; positive at 10 (S=.985), negatives at 5 (S=.996, hard) and 90 (S=0, easy).
    photos = _unit([0])
    regions = _unit([10, 5, 90])
    positive = torch.tensor([[1, 0, 0]], dtype=torch.bool)
    neutral = torch.zeros(1, 3, dtype=torch.bool)
    out = PhotoPairLoss(PhotoLossConfig(epsilon=0.1, mining=True))(photos, regions, positive, neutral)
    c = lambda a: math.cos(math.radians(a))  # noqa: E731
    # Kept: the positive (0.985 - 0.1 < 0.996) and the hard negative (0.996 + 0.1 > 0.985), not the easy one.
    assert (out.n_pos, out.n_neg) == (1, 1)
    assert out.loss.item() == pytest.approx(_ms_row([c(10)], [c(5)], 1.0, 50.0, 0.0), rel=1e-5)


def test_photo_pair_loss_pulls_photo_to_its_region() -> None:
    photos = _unit([45]).requires_grad_(True)
    regions = _unit([0, 90])
    pos = torch.tensor([[1, 0]], dtype=torch.bool)
    opt = torch.optim.SGD([photos], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        PhotoPairLoss(PhotoLossConfig(mining=False))(photos, regions, pos, torch.zeros_like(pos)).loss.backward()
        opt.step()
    p = torch.nn.functional.normalize(photos.detach(), dim=1)[0]
    assert p @ regions[0] > p @ regions[1]


def test_photo_region_masks() -> None:
    labels = [0, 0, 1, 1, 2, 2]  # three regions x two views
    pos, neu = photo_region_masks(
        ["q1", "q2"], ["r0", "r1", "r2"], labels, {"q1": {"r0"}, "q2": {"r2", "r1"}}, {"q1": {"r1"}, "q2": {"r1"}}
    )
    assert pos.tolist() == [[True, True, False, False, False, False], [False, False, True, True, True, True]]
    assert neu.tolist() == [[False, False, True, True, False, False], [False] * 6]  # positive wins over neutral


# ---------------------------------------------------------------------------
# Config


def test_config_from_section() -> None:
    cfg = AstroLocConfig.from_section(
        {
            "losses": {"earthloc_ms": False, "photo_pairs": True, "weighted_clusters": True},
            "weights": {"photo_pairs": 0.5},
            "clusters": {"n_clusters": 4, "use": "both"},
        }
    )
    assert cfg.losses.photo_pairs and not cfg.losses.earthloc_ms and cfg.weight("photo_pairs") == 0.5
    assert cfg.weight("weighted_clusters") == 1.0 and cfg.clusters.n_clusters == 4
    assert AstroLocConfig.from_section(None).losses.earthloc_ms  # absent section = EarthLoc
    with pytest.raises(ConfigError, match="at least one"):
        AstroLocConfig.from_section({"losses": {"earthloc_ms": False}})
    with pytest.raises(ConfigError, match="unknown"):
        AstroLocConfig.from_section({"lossez": {}})
    with pytest.raises(ConfigError):
        AstroLocConfig.from_section({"clusters": {"use": "sometimes"}})


def test_no_evaluation_photo_in_pairs() -> None:
    from pipeline.geo.pairs import excluded_photos, leaked_ids, select_pairs
    from test_pairs import AREAS, INTER, MEMBERS, NADIRS

    res = select_pairs(INTER, excluded_photos(NADIRS, MEMBERS, AREAS)["query_id"], min_iou=0.01)
    assert len(res.pairs) and leaked_ids(res.pairs, MEMBERS) == set()
    assert not set(res.pairs["query_id"]) & {"A", "B", "C", "F"}
