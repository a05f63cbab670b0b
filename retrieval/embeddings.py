"""Embeddings: what every embedding backend (torch model, ONNX Runtime) returns, without importing either.

An anatomy vector may end in a layout: the slice as a LAYOUT_SIDE² thumbnail in the orientation it was read
(`retrieval.model.layout`). A query is compared under all 8 flips/turns of its layout (`orientations`) and the best
counts, so search stays orientation-free while the layout keeps where things are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

LAYOUT_SIDE = 16  # side of the thumbnail at the end of an anatomy vector whose checkpoint has a layout weight
LAYOUT_COLUMNS = LAYOUT_SIDE * LAYOUT_SIDE


def layout_columns(config: Mapping[str, Any]) -> int:
    """How many trailing anatomy columns a checkpoint with this config spends on the layout (0: none)."""
    return LAYOUT_COLUMNS if float(config.get("layout", 0.0)) > 0 else 0


def orientations(vectors: np.ndarray, layout: int) -> np.ndarray:
    """(8, ..., D): anatomy vectors (..., D) as their slices would embed under each flip/turn (the order of
    `retrieval.model.dihedral`); only the layout columns move, the rest is already pooled over the flips/turns."""
    if not layout:
        return vectors[None]
    head, tail = vectors[..., :-layout], vectors[..., -layout:].reshape(*vectors.shape[:-1], LAYOUT_SIDE, LAYOUT_SIDE)
    views = []
    for k in range(8):
        turned = np.rot90(tail, k % 4, axes=(-2, -1))
        turned = turned[..., ::-1] if k >= 4 else turned
        views.append(np.concatenate([head, turned.reshape(*vectors.shape[:-1], layout)], axis=-1))
    return np.stack(views)


def best_cosine(queries: np.ndarray, gallery: np.ndarray, layout: int) -> np.ndarray:
    """(Q, M) cosine of unit query and gallery vectors, the best over the query's flips/turns."""
    return np.max(orientations(queries, layout) @ gallery.T, axis=0)


def aligned_cosine(a: np.ndarray, b: np.ndarray, layout: int) -> np.ndarray:
    """Cosine of broadcast rows of unit vectors a and b (..., D), the best over a's flips/turns."""
    return np.max(np.sum(orientations(a, layout) * b, axis=-1), axis=0)


@dataclass(frozen=True)
class Embeddings:
    """Model outputs for N images: anatomy (N×D, unit norm; the last `layout` columns a thumbnail), noise (N×64), α (N)."""

    anatomy: np.ndarray
    noise: np.ndarray
    alpha: np.ndarray
    layout: int = field(default=0)

    def __len__(self) -> int:
        return len(self.alpha)

    def views(self) -> np.ndarray:
        """(8, N, D) anatomy vectors under the 8 flips/turns (1, N, D without a layout): what a query searches with."""
        return orientations(self.anatomy, self.layout)

    @staticmethod
    def concat(parts: Sequence["Embeddings"]) -> "Embeddings":
        """Embeddings of several batches, in order, as one."""
        return Embeddings(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("anatomy", "noise", "alpha")), layout=parts[0].layout)
