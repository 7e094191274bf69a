"""The retrieval protocol: the paper's Sec. 5.1.2 as upstream implements it (docs/upstream.md §7).

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

ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
RECALL_NS: tuple[int, ...] = (1, 5, 10, 20, 100)
