"""Retrieval for evaluation and localisation: 4x90° TTA embeddings, faiss search, recalls.

The protocol is the paper's Sec. 5.1.2 as upstream implements it (docs/upstream.md §7):
- every database (DB) image is embedded at 0/90/180/270° (counter-clockwise, `torch.rot90`
  over (H, W), which equals torchvision's `rotate` on square images), queries at 0° only
  (upstream embeds them at all four angles and throws three away);
- the DB descriptors are laid out rotation-major, (R, N, D) flattened to (R*N, D), so raw
  faiss id j is DB image j mod N seen at rotation j div N;
- search is exact; on L2-normalised rows inner product ranks as upstream's L2 does;
- Recall@N counts a query as found when any of its top-N *raw* results is a positive, so a
  DB image seen at two rotations takes two ranks ("uncollapsed", what the paper reports).
  `collapse=True` keeps only the best-scoring rotation of each DB image, then ranks images.

Differences from upstream, on purpose: images are always converted to RGB; a non-square
image is centre-cropped after the shorter-side resize (upstream would fail to batch it);
when the index holds fewer than k vectors faiss pads with id -1, which upstream mapped to
DB image N-1 at -90°: here -1 stays -1 (never a positive) with score -inf.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ConfigError, InputError

ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
RECALL_NS: tuple[int, ...] = (1, 5, 10, 20, 100)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INDEX_KINDS = ("flat", "sq_fp16", "ivf_flat", "ivf_pq", "pq")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------
# Images


def load_image(path: str | os.PathLike[str], image_size: int) -> torch.Tensor:
    """(3, S, S) float tensor, ImageNet-normalised: shorter side resized to S (bilinear,
    antialiased), centre-cropped to a square, always RGB.

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying at least
    as large as needed (a 1024² mosaic for S = 320 decodes at 512²), which is most of
    the decoding time; the final resize is then from a smaller but still larger image."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            scale = image_size / min(w, h)
            im.draft("RGB", (max(image_size, math.ceil(w * scale)), max(image_size, math.ceil(h * scale))))
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    return _to_tensor(rgb, image_size)


def _to_tensor(rgb: Any, image_size: int) -> torch.Tensor:
    from PIL import Image

    w, h = rgb.size
    scale = image_size / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (nw, nh) != (w, h):
        # Pillow's BILINEAR resize filters over the source footprint, i.e. antialiased.
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    if (nw, nh) != (image_size, image_size):
        rgb = rgb.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())


class ImageFiles(Dataset[torch.Tensor]):
    """Images from a list of paths, loaded as `load_image` does."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], image_size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.image_size)


def check_images_exist(paths: Sequence[str | os.PathLike[str]], what: str) -> None:
    """One clear error naming the first missing file (and how many are missing), before
    any DataLoader worker trips over it with a traceback."""
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: image not found: {missing[0]}{more}; run the fetch stage first")


# ---------------------------------------------------------------------------
# Embedding


def rotate_batch(x: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotate (B, C, S, S) counter-clockwise by a multiple of 90° (exact, no resampling)."""
    if angle % 90:
        raise ValueError(f"rotation {angle} is not a multiple of 90°")
    k = (angle // 90) % 4
    return x if k == 0 else torch.rot90(x, k, dims=(2, 3))


class DescriptorMemo:
    """Descriptors one process has already computed, per network, image file and rotation.

    The evaluate stage scores several sets whose databases and queries overlap (the demo
    set's 1,906 regions lie inside the lost-in-space set's database, and both sets share
    their queries), with the model and several untrained networks. Embedding dominates its
    time, and an image's descriptor under one network does not depend on the set it is in,
    so each (network, file, rotation) is embedded once. `network` must name the weights
    exactly (a checkpoint path, an init seed): two networks under one name would mix."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int, str], npt.NDArray[np.float32]] = {}

    def get(self, network: str, angle: int, path: str) -> npt.NDArray[np.float32] | None:
        return self._rows.get((network, angle, path))

    def put(self, network: str, angle: int, path: str, desc: npt.NDArray[np.float32]) -> None:
        self._rows[(network, angle, path)] = desc

    def __len__(self) -> int:
        return len(self._rows)


def embed_memo(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    memo: DescriptorMemo,
    network: str,
    *,
    rotations: Sequence[int] = ROTATIONS,
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> FloatArray:
    """`embed` of image files through `memo`: only images without a remembered descriptor at
    every rotation are decoded and embedded; the result is the same (R, N, D) layout."""
    rotations = tuple(int(r) for r in rotations)
    keys = [os.fspath(p) for p in paths]
    todo = [i for i, key in enumerate(keys) if any(memo.get(network, a, key) is None for a in rotations)]
    fresh = embed(model, [paths[i] for i in todo], rotations=rotations, **kwargs) if todo else None
    if fresh is not None:
        for j, i in enumerate(todo):
            for ri, angle in enumerate(rotations):
                memo.put(network, angle, keys[i], fresh[ri, j].copy())
    if not keys:
        return embed(model, [], rotations=rotations, out=out, **kwargs)
    dim = len(cast(npt.NDArray[np.float32], memo.get(network, rotations[0], keys[0])))
    result = _allocate((len(rotations), len(keys), dim), out)
    for ri, angle in enumerate(rotations):
        result[ri] = np.stack([cast(npt.NDArray[np.float32], memo.get(network, angle, k)) for k in keys])
    if isinstance(result, np.memmap):
        result.flush()
    return result


def embed(
    model: torch.nn.Module,
    images: Dataset[torch.Tensor] | Sequence[str | os.PathLike[str]],
    *,
    image_size: int,
    batch_size: int,
    num_workers: int,
    rotations: Sequence[int] = ROTATIONS,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FloatArray:
    """Descriptors of every image at every rotation: (len(rotations), N, D) float32.

    Each image is decoded once and its rotations embedded from the same batch. With `out`
    the array is a numpy memmap at that path (`.npy` format), so a world-size database
    does not have to fit in RAM while embedding. `progress(n)` is called after each batch
    with the number of images done."""
    dataset = images if isinstance(images, Dataset) else ImageFiles(list(images), image_size)
    n = len(dataset)  # type: ignore[arg-type]
    rotations = tuple(int(r) for r in rotations)
    if not rotations:
        raise ValueError("no rotations given")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=False, pin_memory=False,
    )  # fmt: skip
    model = model.eval().to(device)
    result: FloatArray | None = None
    done = 0
    amp = torch.autocast("cpu" if str(device) == "cpu" else "cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), amp:
        for batch in loader:
            batch = batch.to(device)
            if batch.shape[-1] != batch.shape[-2] and any(r % 180 for r in rotations):
                raise ValueError("rotations by 90° need square images")
            for ri, angle in enumerate(rotations):
                desc = model(rotate_batch(batch, angle)).float().cpu().numpy()
                if result is None:
                    result = _allocate((len(rotations), n, desc.shape[1]), out)
                result[ri, done : done + len(batch)] = desc
            done += len(batch)
            if progress is not None:
                progress(done)
    if result is None:  # empty dataset: the dimension is unknown, ask the model
        dim = _output_dim(model, image_size, device)
        result = _allocate((len(rotations), 0, dim), out)
    if isinstance(result, np.memmap):
        result.flush()
    return result


def _allocate(shape: tuple[int, int, int], out: str | os.PathLike[str] | None) -> FloatArray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)


def _output_dim(model: torch.nn.Module, image_size: int, device: str | torch.device) -> int:
    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])


# ---------------------------------------------------------------------------
# Index and search


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index holds the DB descriptors (all inner product).

    flat      exact, float32 (IndexFlatIP): upstream's exact search, 16 KB per 4096-D vector
    sq_fp16   exact scan over float16 codes (IndexScalarQuantizer QT_fp16): half the memory
    ivf_flat  inverted file over `nlist` k-means cells, `nprobe` cells scanned, float32 codes
    ivf_pq    inverted file + product quantizer (`pq_m` sub-vectors of `pq_nbits` bits)
    pq        product quantizer, exhaustive scan
    Trained kinds train on at most `train_size` DB vectors drawn with `seed`."""

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 32
    pq_m: int = 256
    pq_nbits: int = 8
    train_size: int = 65536
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "pq_m", "pq_nbits", "train_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"index {name} must be positive")

    @classmethod
    def from_section(cls, sec: dict[str, Any] | str | None) -> IndexSpec:
        if sec is None:
            return cls()
        if isinstance(sec, str):
            return cls(kind=sec)
        names = set(cls.__dataclass_fields__)
        unknown = set(sec) - names
        if unknown:
            raise ConfigError(f"params index: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**sec)


def flat_view(db_desc: npt.ArrayLike) -> FloatArray:
    """(R, N, D) -> (R*N, D) rotation-major (a view for C-contiguous arrays and memmaps)."""
    a = np.asarray(db_desc)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected (R, N, D) or (R*N, D) descriptors, got shape {a.shape}")
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])


def build_index(db_desc: npt.ArrayLike, spec: IndexSpec = IndexSpec(), *, chunk: int = 65536) -> Any:
    """A faiss index over the rotation-major DB descriptors, added in chunks so a memmap
    is read a piece at a time."""
    import faiss

    flat = flat_view(db_desc)
    total, dim = flat.shape
    index = _new_index(spec, dim, total)
    if not index.is_trained:
        rng = np.random.default_rng(spec.seed)
        take = np.sort(rng.choice(total, size=min(total, spec.train_size), replace=False))
        index.train(np.ascontiguousarray(flat[take], dtype=np.float32))
    for start in range(0, total, chunk):
        index.add(np.ascontiguousarray(flat[start : start + chunk], dtype=np.float32))
    if spec.kind in ("ivf_flat", "ivf_pq"):
        faiss.extract_index_ivf(index).nprobe = min(spec.nprobe, _nlist(spec, total))
    return index


def _nlist(spec: IndexSpec, total: int) -> int:
    # k-means needs a few dozen points per cell; a small database gets fewer cells.
    return max(1, min(spec.nlist, total // 39))


def _new_index(spec: IndexSpec, dim: int, total: int) -> Any:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.kind == "sq_fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip)
    if spec.kind in ("ivf_pq", "pq") and dim % spec.pq_m:
        raise ConfigError(f"index pq_m={spec.pq_m} must divide the descriptor dimension {dim}")
    # PQ k-means wants ~39 training points per centroid; cap the bits on tiny databases.
    nbits = max(1, min(spec.pq_nbits, int(math.log2(max(2, min(total, spec.train_size) // 39)))))
    if spec.kind == "pq":
        return faiss.IndexPQ(dim, spec.pq_m, nbits, ip)
    quantizer = faiss.IndexFlatIP(dim)
    nlist = _nlist(spec, total)
    if spec.kind == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    return faiss.IndexIVFPQ(quantizer, dim, nlist, spec.pq_m, nbits, ip)


def index_bytes(index: Any) -> int:
    """Serialized size of a faiss index: what it costs on disk and, to within the small
    fixed overhead, in RAM."""
    import faiss

    return int(faiss.serialize_index(index).size)


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query after mapping raw faiss ids back: DB image, rotation angle (degrees,
    counter-clockwise applied to the DB image), score (inner product). Slots faiss could not
    fill hold db_index -1, angle -1, score -inf. `raw_id` is the faiss row (-1 if none)."""

    db_index: IntArray
    angle: IntArray
    score: FloatArray
    raw_id: IntArray

    @property
    def k(self) -> int:
        return int(self.db_index.shape[1])

    def head(self, k: int) -> SearchResult:
        return SearchResult(self.db_index[:, :k], self.angle[:, :k], self.score[:, :k], self.raw_id[:, :k])


def map_raw_ids(raw: npt.ArrayLike, num_db: int, rotations: Sequence[int] = ROTATIONS) -> tuple[IntArray, IntArray]:
    """Raw rotation-major ids -> (db_index = j mod N, angle = rotations[j div N]); -1 stays -1
    (upstream's Python modulo turned it into image N-1 at -90°)."""
    raw = np.asarray(raw, dtype=np.int64)
    if num_db <= 0:
        raise ValueError("num_db must be positive")
    rot = np.asarray(rotations, dtype=np.int64)
    valid = raw >= 0
    if np.any(raw[valid] >= num_db * len(rot)):
        raise ValueError("raw id beyond the rotation-major index")
    db_index = np.where(valid, raw % num_db, -1)
    angle = np.where(valid, rot[np.where(valid, raw // num_db, 0)], -1)
    return db_index, angle


def search(
    db_desc: npt.ArrayLike | None,
    query_desc: npt.ArrayLike,
    k: int,
    *,
    index: Any = None,
    index_spec: IndexSpec = IndexSpec(),
    num_db: int | None = None,
    rotations: Sequence[int] = ROTATIONS,
) -> SearchResult:
    """Top-k raw (uncollapsed) results of each query.

    `db_desc` (R, N, D) builds an index of `index_spec`; or pass a prebuilt `index` with
    `num_db` = N. `query_desc` is (M, D), or (R', M, D) of which rotation 0 is used."""
    q = np.asarray(query_desc, dtype=np.float32)
    if q.ndim == 3:
        q = q[0]
    q = np.ascontiguousarray(q)
    if index is None:
        if db_desc is None:
            raise ValueError("give db_desc or index")
        a = np.asarray(db_desc)
        num_db = a.shape[1] if a.ndim == 3 else (a.shape[0] // len(rotations))
        index = build_index(a, index_spec)
    if num_db is None:
        num_db = index.ntotal // len(rotations)
    if index.ntotal != num_db * len(rotations):
        raise ValueError(f"index holds {index.ntotal} vectors, expected {num_db} x {len(rotations)} rotations")
    if k < 1:
        raise ValueError("k must be positive")
    m = q.shape[0]
    raw = np.full((m, k), -1, dtype=np.int64)
    score = np.full((m, k), -np.inf, dtype=np.float32)
    # Ask faiss for no more than it holds, then pad: the -1 guard upstream lacked.
    k_eff = min(k, int(index.ntotal))
    if m and k_eff:
        s, i = index.search(q, k_eff)
        raw[:, :k_eff] = i
        score[:, :k_eff] = np.where(i >= 0, s, -np.inf)
    db_index, angle = map_raw_ids(raw, num_db, rotations)
    return SearchResult(db_index, angle, score, raw)


def collapse_rotations(res: SearchResult, k: int | None = None) -> SearchResult:
    """Keep each DB image once, at its best-scoring (first) rank, then re-rank images; pad
    with -1. To get an exact collapsed top-k, search R*k raw results first (each image
    takes at most R raw ranks)."""
    m, kk = res.db_index.shape
    k = kk if k is None else k
    out = SearchResult(
        np.full((m, k), -1, np.int64), np.full((m, k), -1, np.int64),
        np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64),
    )  # fmt: skip
    for qi in range(m):
        row = res.db_index[qi]
        valid = np.flatnonzero(row >= 0)
        _, first = np.unique(row[valid], return_index=True)
        keep = valid[np.sort(first)][:k]
        n = len(keep)
        out.db_index[qi, :n] = row[keep]
        out.angle[qi, :n] = res.angle[qi, keep]
        out.score[qi, :n] = res.score[qi, keep]
        out.raw_id[qi, :n] = res.raw_id[qi, keep]
    return out


# ---------------------------------------------------------------------------
# Recalls


def first_hit_rank(pred_db_index: npt.ArrayLike, positives: Sequence[npt.ArrayLike]) -> IntArray:
    """0-based rank of the first positive in each query's predictions, or k if none."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    m, k = pred.shape
    if len(positives) != m:
        raise ValueError(f"{m} prediction rows but {len(positives)} positive lists")
    out = np.full(m, k, dtype=np.int64)
    for qi in range(m):
        pos = np.asarray(positives[qi], dtype=np.int64)
        hit = np.flatnonzero(np.isin(pred[qi], pos) & (pred[qi] >= 0))
        if len(hit):
            out[qi] = hit[0]
    return out


def recalls(
    pred_db_index: npt.ArrayLike,
    positives: Sequence[npt.ArrayLike],
    ns: Sequence[int] = RECALL_NS,
    collapse: bool = False,
) -> dict[int, float]:
    """Recall@N in percent: share of queries with a positive among their top-N predictions.

    `collapse=False` is upstream's count (a DB image repeated at several rotations takes
    several ranks); `collapse=True` drops repeats of an image after its first (best) rank.
    N beyond the number of prediction columns is an error (the count would be wrong)."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    if collapse:
        pred = _dedupe_rows(pred)
    m, k = pred.shape
    bad = [n for n in ns if n > k or n < 1]
    if bad:
        raise ValueError(f"recall N {bad} outside 1..{k} (the number of predictions per query)")
    if m == 0:
        return {int(n): float("nan") for n in ns}
    rank = first_hit_rank(pred, positives)
    return {int(n): float(100.0 * np.mean(rank < n)) for n in ns}


def _dedupe_rows(pred: IntArray) -> IntArray:
    out = np.full_like(pred, -1)
    for qi, row in enumerate(pred):
        valid = np.flatnonzero(row >= 0)
        _, first = np.unique(row[valid], return_index=True)
        keep = valid[np.sort(first)]
        out[qi, : len(keep)] = row[keep]
    return out


def recall_curve(
    pred_db_index: npt.ArrayLike, positives: Sequence[npt.ArrayLike], collapse: bool = False
) -> FloatArray:
    """Recall@N in percent for N = 1..k."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    if collapse:
        pred = _dedupe_rows(pred)
    m, k = pred.shape
    if m == 0:
        return np.full(k, np.nan, dtype=np.float32)
    rank = first_hit_rank(pred, positives)
    return (100.0 * np.cumsum(np.bincount(rank, minlength=k + 1)[:k]) / m).astype(np.float32)


def random_hit_probability(num_db: int, num_positives: npt.ArrayLike, k: int, copies: int = 1) -> FloatArray:
    """P(a positive in the top N), N = 1..k, per query (shape (Q, k), in [0, 1]), when the DB
    is ranked uniformly at random.

    The ranked list is a random order of `copies` x num_db entries (copies = 4: upstream's
    uncollapsed list of rotated copies; 1: collapsed), of which copies x P are positive
    for a query with P positives. P(no positive in the top n) = C(T - cP, n) / C(T, n)
    (hypergeometric)."""
    p = np.asarray(num_positives, dtype=np.float64).reshape(-1)
    total = copies * num_db
    i = np.arange(min(k, total), dtype=np.float64)
    neg = total - copies * p[:, None]
    # C(neg, n) / C(total, n) = prod_{i<n} (neg - i) / (total - i); a factor hits 0 once n > neg.
    miss = np.cumprod(np.clip(neg - i[None, :], 0.0, None) / (total - i[None, :]), axis=1)
    if k > total:  # beyond the whole list every query is found (if it has a positive)
        miss = np.concatenate([miss, np.repeat(miss[:, -1:], k - total, axis=1)], axis=1)
    return 1.0 - miss


def random_recall_curve(num_db: int, num_positives: npt.ArrayLike, k: int, copies: int = 1) -> FloatArray:
    """Expected Recall@N (N = 1..k, percent) of ranking the DB uniformly at random, exactly:
    `random_hit_probability` averaged over queries."""
    if np.asarray(num_positives).size == 0:
        return np.full(k, np.nan, dtype=np.float32)
    return (100.0 * np.mean(random_hit_probability(num_db, num_positives, k, copies), axis=0)).astype(np.float32)


def hits_at(first_rank: npt.ArrayLike, ns: Sequence[int]) -> FloatArray:
    """(Q, len(ns)) 0/1: whether each query's first positive (0-based rank, `first_hit_rank`)
    lies in its top N."""
    r = np.asarray(first_rank, dtype=np.int64).reshape(-1, 1)
    return (r < np.asarray(ns, dtype=np.int64)[None, :]).astype(np.float64)


def paired_margin(
    a: npt.ArrayLike, b: npt.ArrayLike, ns: Sequence[int], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[int, dict[str, float]]:
    """Recall@N of method a minus method b, in points, with a percentile bootstrap interval
    over queries (paired: the same resampled queries for both).

    `a` and `b` are (Q, len(ns)) per-query hit indicators or hit probabilities (a random
    ranking's expected hit, `random_hit_probability`). The interval says whether a
    difference is larger than what the choice of queries alone could produce."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 2 or a_.shape[1] != len(ns):
        raise ValueError(f"paired_margin: shapes {a_.shape} and {b_.shape} for {len(ns)} cut-offs")
    d = 100.0 * (a_ - b_)
    q = d.shape[0]
    if q == 0:
        return {int(n): {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")} for n in ns}
    rng = np.random.default_rng(seed)
    boot = np.stack([d[rng.integers(0, q, q)].mean(axis=0) for _ in range(n_boot)])
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    return {int(n): {"diff": float(d[:, j].mean()), "lo": float(lo[j]), "hi": float(hi[j])} for j, n in enumerate(ns)}


def cluster_bootstrap_means(
    values: npt.ArrayLike, clusters: npt.ArrayLike | None, *, n_boot: int = 2000, seed: int = 0
) -> npt.NDArray[np.float64]:
    """(n_boot, J) bootstrap replicates of the column means of `values` (Q, J), resampling
    whole clusters with replacement (None: every row its own cluster).

    Photos of one ISS pass are near-duplicates, so they are not independent draws: an
    interval that resamples photos one by one is too narrow. Resampling passes keeps each
    pass's photos together; a replicate's mean is over all photos of the drawn passes."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"cluster_bootstrap_means: values must be (Q, J), got shape {v.shape}")
    q = v.shape[0]
    labels = np.arange(q) if clusters is None else pd.factorize(np.asarray(clusters, dtype=object))[0]
    if len(labels) != q:
        raise ValueError(f"cluster_bootstrap_means: {len(labels)} cluster labels for {q} rows")
    c = int(labels.max()) + 1 if q else 0
    if c == 0:
        return np.full((n_boot, v.shape[1]), np.nan)
    sums = np.zeros((c, v.shape[1]))
    np.add.at(sums, labels, v)
    sizes = np.bincount(labels, minlength=c).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(c, np.full(c, 1.0 / c), size=n_boot).astype(np.float64)  # (n_boot, C) counts
    return (draws @ sums) / (draws @ sizes)[:, None]


def cluster_interval(
    values: npt.ArrayLike,
    clusters: npt.ArrayLike | None,
    ns: Sequence[int],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    scale: float = 100.0,
) -> dict[int, dict[str, float]]:
    """Mean of each column of `values` (Q, len(ns)) x `scale`, with a percentile interval
    from `cluster_bootstrap_means`: {n: {value, lo, hi}}."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(ns):
        raise ValueError(f"cluster_interval: shape {v.shape} for {len(ns)} cut-offs")
    if v.shape[0] == 0:
        return {int(n): {"value": float("nan"), "lo": float("nan"), "hi": float("nan")} for n in ns}
    boot = scale * cluster_bootstrap_means(v, clusters, n_boot=n_boot, seed=seed)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    mean = scale * v.mean(axis=0)
    return {int(n): {"value": float(mean[j]), "lo": float(lo[j]), "hi": float(hi[j])} for j, n in enumerate(ns)}


def cluster_margin(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    ns: Sequence[int],
    clusters: npt.ArrayLike | None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[int, dict[str, float]]:
    """Recall@N of method a minus method b, in points, with a paired percentile interval
    over clusters (passes): both methods see the same resampled passes. `a`, `b`: (Q,
    len(ns)) hit indicators or hit probabilities. With `clusters=None` this is the
    per-query bootstrap."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 2 or a_.shape[1] != len(ns):
        raise ValueError(f"cluster_margin: shapes {a_.shape} and {b_.shape} for {len(ns)} cut-offs")
    m = cluster_interval(a_ - b_, clusters, ns, n_boot=n_boot, seed=seed, level=level)
    return {n: {"diff": v["value"], "lo": v["lo"], "hi": v["hi"]} for n, v in m.items()}


# ---------------------------------------------------------------------------
# Orientation


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


# ---------------------------------------------------------------------------
# One evaluation set


@dataclass(frozen=True)
class EvalSetFiles:
    """An evaluation set as read from `data/evalsets/<set>/`."""

    queries: pd.DataFrame  # query_index order
    database: pd.DataFrame  # db_index order
    positives: list[IntArray]  # DB indices overlapping each query
    query_paths: list[Path]
    db_paths: list[Path]


def read_evalset(set_dir: str | os.PathLike[str], tiles_root: str | os.PathLike[str]) -> EvalSetFiles:
    """Read queries.csv, database.csv and positives.parquet; image paths under `tiles_root`."""
    set_dir, tiles_root = Path(set_dir), Path(tiles_root)
    files = {name: set_dir / name for name in ("queries.csv", "database.csv", "positives.parquet")}
    for p in files.values():
        if not p.is_file():
            raise InputError(f"{p}: no such file (run the evalset stage first)")
    try:
        queries = pd.read_csv(files["queries.csv"])
        database = pd.read_csv(files["database.csv"])
        pos = pd.read_parquet(files["positives.parquet"], columns=["query_index", "db_index"])
    except Exception as exc:  # pandas/pyarrow raise many types; report one line
        raise InputError(f"{set_dir}: unreadable evaluation set ({exc})") from exc
    for df, name, cols in (
        (queries, "queries.csv", ["query_index", "query_id", "filename"]),
        (database, "database.csv", ["db_index", "region_id", "zoom", "path"]),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"{set_dir / name}: missing column(s) {', '.join(missing)}")
    queries = queries.sort_values("query_index").reset_index(drop=True)
    database = database.sort_values("db_index").reset_index(drop=True)
    if not np.array_equal(queries["query_index"].to_numpy(), np.arange(len(queries))):
        raise InputError(f"{files['queries.csv']}: query_index must be 0..n-1")
    if not np.array_equal(database["db_index"].to_numpy(), np.arange(len(database))):
        raise InputError(f"{files['database.csv']}: db_index must be 0..n-1")
    qi = pos["query_index"].to_numpy(np.int64)
    di = pos["db_index"].to_numpy(np.int64)
    if len(qi) and (qi.min() < 0 or qi.max() >= len(queries) or di.min() < 0 or di.max() >= len(database)):
        raise InputError(f"{files['positives.parquet']}: indices outside the set's queries or database")
    order = np.lexsort((di, qi))
    qi, di = qi[order], di[order]
    bounds = np.searchsorted(qi, np.arange(len(queries) + 1))
    positives = [di[bounds[i] : bounds[i + 1]] for i in range(len(queries))]
    query_paths = [tiles_root / "queries" / str(f) for f in queries["filename"]]
    db_paths = [tiles_root / str(p) for p in database["path"]]
    return EvalSetFiles(queries, database, positives, query_paths, db_paths)


@dataclass(frozen=True)
class EvalResult:
    """Everything one model's evaluation on one set produced.

    `recalls` is upstream's (uncollapsed) Recall@N in percent, the paper's numbers;
    `recalls_collapsed` ranks DB images with their best rotation only. `search` and
    `search_collapsed` hold the top-k per query; `orientation` the circular error summary
    of the top-1 angle against the photo's up bearing (None when no query has an orientation)."""

    recalls: dict[int, float]
    recalls_collapsed: dict[int, float]
    curve: FloatArray
    curve_collapsed: FloatArray
    search: SearchResult
    search_collapsed: SearchResult
    orientation: dict[str, Any] | None
    num_queries: int
    num_db: int
    extras: dict[str, Any] = field(default_factory=dict)


def evaluate_set(
    model: torch.nn.Module,
    set_dir: str | os.PathLike[str],
    tiles_root: str | os.PathLike[str] = "tiles",
    *,
    image_size: int,
    batch_size: int = 16,
    num_workers: int = 0,
    k: int = 100,
    ns: Sequence[int] = RECALL_NS,
    index_spec: IndexSpec = IndexSpec(),
    rotations: Sequence[int] = ROTATIONS,
    features_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    evalset: EvalSetFiles | None = None,
    memo: tuple[DescriptorMemo, str] | None = None,
) -> EvalResult:
    """Embed the set's DB (4 rotations) and queries (0°), search, count recalls.

    `features_dir` keeps the descriptors as `.npy` memmaps there (db.npy, queries.npy);
    otherwise they live in RAM. `memo` (a DescriptorMemo and the network's name) reuses
    descriptors this process computed before for the same network. N in `ns` larger than the DB's size are reported for the
    padded list (the -1 guard), as upstream would if it did not crash."""
    ev = evalset if evalset is not None else read_evalset(set_dir, tiles_root)
    check_images_exist(ev.db_paths, f"{set_dir} database")
    check_images_exist(ev.query_paths, f"{set_dir} queries")
    fdir = Path(features_dir) if features_dir is not None else None
    common: dict[str, Any] = dict(
        image_size=image_size, batch_size=batch_size, num_workers=num_workers, device=device, bf16=bf16
    )
    db_out = fdir / "db.npy" if fdir else None
    q_out = fdir / "queries.npy" if fdir else None
    if memo is not None:
        db_desc = embed_memo(model, ev.db_paths, *memo, rotations=rotations, out=db_out, **common)
        q_desc = embed_memo(model, ev.query_paths, *memo, rotations=(0,), out=q_out, **common)
    else:
        db_desc = embed(model, ev.db_paths, rotations=rotations, out=db_out, **common)
        q_desc = embed(model, ev.query_paths, rotations=(0,), out=q_out, **common)
    return score_descriptors(db_desc, q_desc[0], ev, k=k, ns=ns, index_spec=index_spec, rotations=rotations)


def score_descriptors(
    db_desc: npt.ArrayLike,
    query_desc: npt.ArrayLike,
    ev: EvalSetFiles,
    *,
    k: int = 100,
    ns: Sequence[int] = RECALL_NS,
    index_spec: IndexSpec = IndexSpec(),
    rotations: Sequence[int] = ROTATIONS,
) -> EvalResult:
    """The search-and-count half of `evaluate_set`, on descriptors already computed."""
    num_db = len(ev.database)
    if num_db == 0:
        raise InputError("the evaluation set's database is empty")
    kmax = max(k, *ns)
    # R*k raw results contain at least k distinct images, so the collapsed top-k is exact.
    raw = search(db_desc, query_desc, len(rotations) * kmax, index_spec=index_spec, rotations=rotations)
    res = raw.head(kmax)
    res_c = collapse_rotations(raw, kmax)
    orientation = queries_orientation(ev.queries)
    orient = None
    if np.isfinite(orientation).any():
        orient = orientation_summary(res.angle[:, 0], photo_up_bearing(orientation))
    return EvalResult(
        recalls=recalls(res.db_index, ev.positives, ns),
        recalls_collapsed=recalls(res_c.db_index, ev.positives, ns),
        curve=recall_curve(res.db_index, ev.positives),
        curve_collapsed=recall_curve(res_c.db_index, ev.positives),
        search=res,
        search_collapsed=res_c,
        orientation=orient,
        num_queries=len(ev.queries),
        num_db=num_db,
    )
