"""The faiss index over the rotation-major database descriptors, and its kinds (IndexSpec);
the format tag of the index directory that `earthloc index` writes and `earthloc localize` reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigError

# Written into the index directory's meta.json; a reader refuses any other tag.
INDEX_FORMAT = "earthloc-index/1"
INDEX_KINDS = ("flat", "sq_fp16", "ivf_flat", "ivf_pq", "pq")

FloatArray = npt.NDArray[np.float32]


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
