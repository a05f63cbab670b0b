"""Embeddings: what every embedding backend (torch model, ONNX Runtime) returns, without importing either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Embeddings:
    """Model outputs for N images: anatomy (N×128, unit norm), noise (N×64) and α (N)."""

    anatomy: np.ndarray
    noise: np.ndarray
    alpha: np.ndarray

    def __len__(self) -> int:
        return len(self.alpha)

    @staticmethod
    def concat(parts: Sequence["Embeddings"]) -> "Embeddings":
        """Embeddings of several batches, in order, as one."""
        return Embeddings(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("anatomy", "noise", "alpha")))
