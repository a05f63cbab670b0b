"""The benchmark's methods behind one interface: the learned metric and the classical baselines.

A method encodes images once (baseline statistics or model embeddings), then gives three kinds of distance
(lower = closer): `search` ranks the gallery for retrieval, `to_gallery` is the tracking distance to every
gallery slice (for identity movement), `paired` the tracking distance of row-aligned pairs (x, D_α(x)).
Baselines see one grey channel: channel 0 of the network input, i.e. the soft-tissue window (40/400 HU) for
CT and the percentile-normalised image for MR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from eval.baselines import Baseline, BaselineUnavailable, Stats, create
from indexer.store import VectorStore
from retrieval.metric import DistortionAwareMetric, Embeddings

METHODS = ("learned", "mse", "ssim", "ncc", "mi", "grad", "cwssim", "dino")
EMBED_BATCH = 32
ROW_BLOCK = 32  # query rows per block of broadcast (Q, G, D) distance temporaries


class Method:
    """One benchmark method: prepare the gallery once, then encode queries and measure distances."""

    name: str
    direction: str

    def prepare(self, gallery: torch.Tensor, factors: np.ndarray | None = None) -> Any:
        """Encode a gallery, (G, 3, S, S) network inputs made with resize `factors`, and search it from now on; returns the encoding."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, factors: np.ndarray | None = None) -> Any:
        """Encode (B, 3, S, S) network inputs (the per-query work); `factors`: their resize factors, which only the
        learned metric's α estimator reads (`retrieval.preprocess.resize_factor`)."""
        raise NotImplementedError

    def search(self, queries: Any) -> np.ndarray:
        """(Q, G) retrieval distances of encoded queries to the gallery."""
        raise NotImplementedError

    def to_gallery(self, queries: Any) -> np.ndarray:
        """(Q, G) tracking distances of encoded queries to the gallery."""
        return self.search(queries)

    def paired(self, first: Any, second: Any) -> np.ndarray:
        """(B,) tracking distances of row-aligned encoded images."""
        raise NotImplementedError

    def alpha_of(self, encoded: Any) -> np.ndarray | None:
        """Predicted distortion severity â of encoded images, for methods that predict one (else None)."""
        return None

    def release(self) -> None:
        """Drop the prepared gallery (its statistics can be large) once it has been searched."""


class BaselineMethod(Method):
    """A registered baseline on channel 0 of the network input, its scores turned into distances."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.name = baseline.name
        self.direction = baseline.direction
        self.gallery: Stats | None = None

    def prepare(self, gallery: torch.Tensor, factors: np.ndarray | None = None) -> Stats:
        self.gallery = self.encode(gallery)
        return self.gallery

    def release(self) -> None:
        self.gallery = None

    def encode(self, images: torch.Tensor, factors: np.ndarray | None = None) -> Stats:
        return self.baseline.prepare_gallery(images[:, 0])

    def search(self, queries: Stats) -> np.ndarray:
        assert self.gallery is not None, "prepare() the gallery first"
        return self.baseline.distance(self.baseline.score(queries, self.gallery)).numpy()

    def paired(self, first: Stats, second: Stats) -> np.ndarray:
        return self.baseline.distance(self.baseline.paired(first, second)).numpy()


class LearnedMethod(Method):
    """The learned metric: anatomy distance searched through FAISS; the documented distortion-aware distance for tracking."""

    name = "learned"
    direction = "lower"

    def __init__(self, metric: DistortionAwareMetric) -> None:
        self.metric = metric
        self.gallery: Embeddings | None = None
        self.store: VectorStore | None = None

    def prepare(self, gallery: torch.Tensor, factors: np.ndarray | None = None) -> Embeddings:
        self.gallery = self.encode(gallery, factors)
        self.store = VectorStore.empty(self.gallery.anatomy.shape[1])
        self.store.add(np.arange(len(self.gallery)), self.gallery.anatomy)
        return self.gallery

    def encode(self, images: torch.Tensor, factors: np.ndarray | None = None) -> Embeddings:
        return self.metric.embed_tensor(images, EMBED_BATCH, factors)

    def search(self, queries: Embeddings) -> np.ndarray:
        """Anatomy distance 0.5 · (1 − inner product) of every gallery slice, from an exact FAISS search of all of them
        with each of the query's views (its layout's flips/turns), the best view counting, as `retrieval search` does."""
        assert self.store is not None, "prepare() the gallery first"
        inner, ids = self.store.search_views(queries.views(), len(self.store))
        distances = np.empty(ids.shape, dtype=np.float64)
        np.put_along_axis(distances, ids, 0.5 * (1.0 - inner.astype(np.float64)), axis=1)
        return distances

    def to_gallery(self, queries: Embeddings) -> np.ndarray:
        """DistortionAwareMetric.distance of each query to every gallery slice (broadcast one block of rows at a time)."""
        assert self.gallery is not None, "prepare() the gallery first"
        g = self.gallery
        wide = Embeddings(g.anatomy[None], g.noise[None], g.alpha[None], g.layout)
        blocks = []
        for i in range(0, len(queries), ROW_BLOCK):
            rows = slice(i, i + ROW_BLOCK)
            tall = Embeddings(queries.anatomy[rows, None], queries.noise[rows, None], queries.alpha[rows, None], queries.layout)
            blocks.append(self.metric.distance(tall, wide))
        return np.concatenate(blocks).astype(np.float64)

    def paired(self, first: Embeddings, second: Embeddings) -> np.ndarray:
        return self.metric.distance(first, second).astype(np.float64)

    def alpha_of(self, encoded: Embeddings) -> np.ndarray:
        return encoded.alpha

    def release(self) -> None:
        self.gallery, self.store = None, None


def create_methods(names: Sequence[str], metric: DistortionAwareMetric, dino_weights: Path | None) -> tuple[list[Method], dict[str, str]]:
    """The methods that can run, in the order asked, and the reason each other one cannot ("not run (no weights)").

    Unknown names and a DINO weights file that does not load are errors (ValueError, FileNotFoundError).
    """
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    methods: list[Method] = []
    unavailable: dict[str, str] = {}
    for name in names:
        if name == "learned":
            methods.append(LearnedMethod(metric))
            continue
        try:
            methods.append(BaselineMethod(create(name, **({"weights": dino_weights} if name == "dino" else {}))))
        except BaselineUnavailable as exc:
            unavailable[name] = f"not run ({exc.reason})"
    return methods, unavailable
