"""Neutral-aware multi-similarity loss and miner: upstream's test vectors (docs/upstream.md
§10.2-10.4) and the paper order checked against an independent float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.miners import MultiSimilarityMiner

from earthloc.loss import LossConfig, NeutralAwareMSLoss, mine_masked, pair_masks
from pipeline.errors import ConfigError

REL = 1e-4


# ---- independent float64 reference (numpy, formulas of docs/upstream.md §6 / paper Eq. 3) ----


def ref_masks(labels: np.ndarray, neutral: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    same = labels[:, None] == labels[None, :]
    neutral_pairs = neutral[labels[:, None], labels[None, :]].astype(bool) & ~same
    return same & ~np.eye(len(labels), dtype=bool), ~same & ~neutral_pairs


def ref_mine(sim: np.ndarray, pos: np.ndarray, neg: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Loop-per-anchor MS mining over the pairs in pos/neg only."""
    n = len(sim)
    mp, mn = np.zeros_like(pos), np.zeros_like(neg)
    for a in range(n):
        ps, ns = np.flatnonzero(pos[a]), np.flatnonzero(neg[a])
        if len(ps) == 0 or len(ns) == 0:
            continue
        max_neg, min_pos = sim[a, ns].max(), sim[a, ps].min()
        for p in ps:
            mp[a, p] = sim[a, p] - eps < max_neg
        for q in ns:
            mn[a, q] = sim[a, q] + eps > min_pos
    return mp, mn


def ref_loss(sim: np.ndarray, pos: np.ndarray, neg: np.ndarray, alpha=1.0, beta=50.0, lam=0.0) -> float:
    rows = []
    for i in range(len(sim)):
        lp = np.log1p(np.exp(-alpha * (sim[i, pos[i]] - lam)).sum()) / alpha if pos[i].any() else 0.0
        ln = np.log1p(np.exp(beta * (sim[i, neg[i]] - lam)).sum()) / beta if neg[i].any() else 0.0
        rows.append(lp + ln)
    return float(np.mean(rows))


def unit_sim(emb: np.ndarray) -> np.ndarray:
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return u @ u.T


# ---- fixtures: upstream's vectors ----


def four_vectors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    return emb, torch.tensor([0, 0, 1, 1]), torch.eye(2, dtype=torch.bool)


def twelve_vectors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    deg = np.radians([0, 10, 20, 30, 25, 35, 45, 55, 90, 100, 110, 120])
    emb = torch.tensor(np.stack([np.cos(deg), np.sin(deg)], axis=1), dtype=torch.float32)
    labels = torch.arange(12) // 4
    overlap = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    return emb, labels, overlap


def pair_set(a: torch.Tensor, b: torch.Tensor) -> set[tuple[int, int]]:
    return set(zip(a.tolist(), b.tolist()))


# ---- §10.2 / §10.3 ----


def test_all_pairs_four_vectors_10_2() -> None:
    emb, labels, neutral = four_vectors()
    out = NeutralAwareMSLoss(mining=False)(emb, labels, neutral)
    assert out.loss.item() == pytest.approx(0.6780321, rel=REL)
    assert (out.n_pos, out.n_neg) == (4, 8)
    per_row = np.array([0.3849636, 0.9711007, 0.9711007, 0.3849636])
    pos, neg = ref_masks(labels.numpy(), neutral.numpy())
    assert ref_loss(unit_sim(emb.double().numpy()), pos, neg) == pytest.approx(per_row.mean(), rel=REL)


@pytest.mark.parametrize("order", ["upstream", "paper"])
def test_miner_four_vectors_mines_nothing_10_3(order: str) -> None:
    emb, labels, neutral = four_vectors()
    a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(emb, labels)
    assert all(len(t) == 0 for t in (a1, p, a2, n))
    emb = emb.clone().requires_grad_(True)
    out = NeutralAwareMSLoss(neutral_order=order)(emb, labels, neutral)
    assert out.loss.item() == 0.0 and (out.n_pos, out.n_neg) == (0, 0)
    out.loss.backward()  # PML's zero-loss path still gives a differentiable scalar


# ---- §10.4 ----


@pytest.mark.parametrize("order", ["upstream", "paper"])
def test_all_pairs_twelve_vectors_10_4(order: str) -> None:
    emb, labels, overlap = twelve_vectors()
    no_neutral = torch.eye(3, dtype=torch.bool)
    out = NeutralAwareMSLoss(mining=False, neutral_order=order)(emb, labels, no_neutral)
    assert out.loss.item() == pytest.approx(1.6285797, rel=REL) and (out.n_pos, out.n_neg) == (36, 96)
    out = NeutralAwareMSLoss(mining=False, neutral_order=order)(emb, labels, overlap)
    assert out.loss.item() == pytest.approx(1.2768859, rel=REL) and (out.n_pos, out.n_neg) == (36, 64)


def test_mined_twelve_vectors_without_neutrals_10_4() -> None:
    emb, labels, _ = twelve_vectors()
    no_neutral = torch.eye(3, dtype=torch.bool)
    loss = NeutralAwareMSLoss(neutral_order="upstream")
    a1, p, a2, n = loss.select_pairs(emb, labels, no_neutral)
    intra = {(i, j) for r in (0, 1) for i in range(4 * r, 4 * r + 4) for j in range(4 * r, 4 * r + 4) if i != j}
    assert pair_set(a1, p) == intra | {(8, 11)}
    assert len(a2) == 24
    out = loss(emb, labels, no_neutral)
    assert out.loss.item() == pytest.approx(1.2589962, rel=REL)


def test_upstream_order_twelve_vectors_10_4() -> None:
    emb, labels, overlap = twelve_vectors()
    loss = NeutralAwareMSLoss(neutral_order="upstream")
    a1, p, a2, n = loss.select_pairs(emb, labels, overlap)
    assert len(a1) == 25
    assert pair_set(a2, n) == {(7, 8), (8, 7)}
    out = loss(emb, labels, overlap)
    assert out.loss.item() == pytest.approx(0.6795577, rel=REL)
    assert (out.n_pos, out.n_neg) == (25, 2)
    assert out.batch_acc == pytest.approx(25.0)


def test_paper_order_twelve_vectors_against_numpy_reference() -> None:
    emb, labels, overlap = twelve_vectors()
    sim = unit_sim(emb.double().numpy())
    pos, neg = ref_masks(labels.numpy(), overlap.numpy())
    mp, mn = ref_mine(sim, pos, neg, 0.1)
    expected = ref_loss(sim, mp, mn)
    out = NeutralAwareMSLoss(neutral_order="paper")(emb, labels, overlap)
    a1, p, a2, n = NeutralAwareMSLoss(neutral_order="paper").select_pairs(emb, labels, overlap)
    assert pair_set(a1, p) == set(zip(*np.nonzero(mp)))
    assert pair_set(a2, n) == set(zip(*np.nonzero(mn)))
    assert out.loss.item() == pytest.approx(expected, rel=REL)
    # The orders differ here: with the neutral region 1 invisible, regions 0 and 1 have no
    # close negative, so (almost) none of their positives are hard any more.
    assert out.n_pos < 25
    assert out.batch_acc == pytest.approx(100.0 * (1 - len(set(np.nonzero(mp)[0])) / 12))


def random_batch(seed: int, regions: int = 6, years: int = 4, dim: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(regions, dim))
    emb = np.repeat(centres, years, axis=0) + 0.6 * rng.normal(size=(regions * years, dim))
    neutral = rng.random((regions, regions)) < 0.3
    neutral = neutral | neutral.T | np.eye(regions, dtype=bool)
    labels = np.repeat(np.arange(regions), years)
    return (torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), torch.tensor(neutral), emb, labels, neutral)


@pytest.mark.parametrize("seed", range(5))
def test_both_orders_against_numpy_reference_random(seed: int) -> None:
    emb_t, labels_t, neutral_t, emb, labels, neutral = random_batch(seed)
    sim = unit_sim(emb)
    pos, neg = ref_masks(labels, neutral)
    # paper: neutral pairs removed before mining
    mp, mn = ref_mine(sim, pos, neg, 0.1)
    out = NeutralAwareMSLoss(neutral_order="paper")(emb_t, labels_t, neutral_t)
    assert out.loss.item() == pytest.approx(ref_loss(sim, mp, mn) if (mp.sum() > 1 or mn.sum() > 1) else 0.0, rel=REL)
    # upstream: mine over all different-label pairs, then drop neutral negatives
    all_neg = labels[:, None] != labels[None, :]
    up, un = ref_mine(sim, pos, all_neg, 0.1)
    un &= neg
    out = NeutralAwareMSLoss(neutral_order="upstream")(emb_t, labels_t, neutral_t)
    assert out.loss.item() == pytest.approx(ref_loss(sim, up, un) if (up.sum() > 1 or un.sum() > 1) else 0.0, rel=REL)
    assert (out.n_pos, out.n_neg) == (int(up.sum()), int(un.sum()))


@pytest.mark.parametrize("seed", range(3))
def test_masked_miner_equals_pml_miner_without_neutrals(seed: int) -> None:
    emb, labels, *_ = random_batch(seed)
    pos, neg, _ = pair_masks(labels, torch.eye(6, dtype=torch.bool))
    unit = torch.nn.functional.normalize(emb, dim=1)
    mp, mn = mine_masked(unit @ unit.T, pos, neg, 0.1)
    a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(emb, labels)
    assert pair_set(*mp.nonzero(as_tuple=True)) == pair_set(a1, p)
    assert pair_set(*mn.nonzero(as_tuple=True)) == pair_set(a2, n)


def test_loss_is_fp32_under_autocast() -> None:
    emb, labels, overlap = twelve_vectors()
    ref = NeutralAwareMSLoss(neutral_order="upstream")(emb, labels, overlap)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = NeutralAwareMSLoss(neutral_order="upstream")(emb.bfloat16(), labels, overlap)
    assert out.loss.dtype == torch.float32
    assert (out.n_pos, out.n_neg) == (ref.n_pos, ref.n_neg)


def test_gradients_flow_and_bad_inputs() -> None:
    emb, labels, overlap = twelve_vectors()
    emb = emb.clone().requires_grad_(True)
    NeutralAwareMSLoss()(emb, labels, overlap).loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        NeutralAwareMSLoss()(emb, labels, torch.eye(2, dtype=torch.bool))  # label 2 outside (2, 2)
    with pytest.raises(ConfigError):
        LossConfig(neutral_order="sideways")
    with pytest.raises(ConfigError):
        LossConfig.from_section({"alpha": 1.0, "gamma": 2})
    assert LossConfig.from_section({"neutral_order": "upstream"}).neutral_order == "upstream"
    assert LossConfig().neutral_order == "paper"


def test_overlap_positive_masks() -> None:
    # regions 0 and 1 overlap; region 2 overlaps neither; two views per region
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    overlap = torch.zeros(3, 3, dtype=torch.bool)
    overlap[0, 1] = overlap[1, 0] = True
    pos_n, neg_n, neu_n = pair_masks(labels, overlap)
    pos_p, neg_p, neu_p = pair_masks(labels, overlap, "positive")
    assert not pos_n[0, 2] and neu_n[0, 2] and not neg_n[0, 2]  # paper: neutral
    assert pos_p[0, 2] and pos_p[3, 1] and not neg_p[0, 2] and not neu_p.any()  # positive instead
    assert torch.equal(neg_p, neg_n)  # negatives are the same pairs either way
    assert torch.equal(pos_p & ~pos_n, neu_n)
    assert not pos_p.diagonal().any()


def test_overlap_positive_loss_pulls_overlapping_regions_together() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    overlap = torch.zeros(3, 3, dtype=torch.bool)
    overlap[0, 1] = overlap[1, 0] = True
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True)
    loss = NeutralAwareMSLoss(mining=False, overlap="positive")(emb, labels, overlap)
    loss.loss.backward()
    assert loss.n_pos == 6 + 8  # 3 regions x 2 ordered same-region pairs, + 2 x 2 x 2 overlapping pairs
    # a small step against the gradient makes regions 0 and 1 more similar
    with torch.no_grad():
        before = float(emb[0] @ emb[2])
        moved = torch.nn.functional.normalize(emb - 0.05 * emb.grad, dim=1)
        assert float(moved[0] @ moved[2]) > before
    with pytest.raises(ConfigError):
        LossConfig(overlap="sometimes")
    with pytest.raises(ConfigError):
        LossConfig(overlap="positive", neutral_order="upstream")
    assert LossConfig().overlap == "neutral"
