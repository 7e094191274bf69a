"""Shared helpers of the retrieval/evaluate tests: a tiny model with the model contract
and tiny evaluation sets written to disk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """(B, 3, S, S) -> (B, 32) L2-normalised, rotation-sensitive (keeps a 4x4 spatial
    layout before the head), deterministic (seeded init)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1)
        return F.normalize(self.fc(y), dim=1)
