"""The benchmark protocol: α grid, query split, seeds, and the tensors of both protocols and the query variants.

`query` protocol: each query distorted at every α against the clean gallery. `archive` protocol: the clean
queries against a gallery in which every slice is distorted with its own seed, at one level of the grid or at
its own α ~ U(0, 1) ("mixed"). Everything is deterministic given the slices and the seed, so every method sees
the same gallery, the same distorted queries and the same distorted galleries (docs/benchmark-protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.slices import SliceSet
from retrieval.distortions import distort_mixed
from retrieval.preprocess import network_input

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # both protocols; the archive one re-encodes the whole gallery per level
QUICK_ALPHAS = (0.0, 0.4, 0.8)
MIXED = "mixed"  # the archive level where each gallery slice has its own α ~ U(0, 1)
VARIANTS = ("flip", "rot90", "half")  # clean queries flipped left-right, turned 90°, at half resolution
QUERIES_PER_PATIENT = 8  # so large volumes do not dominate the mean
MAX_QUERIES = 128
GALLERY_PER_PATIENT = 32  # sized so the full run on the whole sample archive fits in 15 minutes on 2 cores
QUICK_MAX_QUERIES = 24
QUICK_GALLERY_PER_PATIENT = 8  # --quick thins the gallery further, keeping every patient
RESAMPLES = 100
SEED_RANGE = 2**31 - 1


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The α grid sorted and deduplicated; ValueError unless every α is in [0, 1] and 0 is present."""
    values = sorted({float(a) for a in alphas})
    if not values or not all(0.0 <= a <= 1.0 for a in values):  # also rejects NaN
        raise ValueError(f"alphas must lie in [0, 1], got {list(alphas)}")
    if values[0] != 0.0:
        raise ValueError("alphas must include 0: retention is mAP(α) / mAP(0)")
    return tuple(values)


def split_queries(patients: np.ndarray, seed: int, per_patient: int = QUERIES_PER_PATIENT, max_queries: int | None = None) -> np.ndarray:
    """Sorted row indices of the query slices; every other row is gallery.

    Per patient with n ≥ 2 slices, the first min(n // 2, per_patient) rows of a seeded permutation are
    queries (so the gallery keeps at least as many of its slices); patients with one slice are gallery-only
    distractors. `max_queries` then keeps queries round-robin over patients: every patient's first query
    before anyone's second, ties in a seeded order.
    """
    patients = np.asarray(patients)
    rng = np.random.default_rng([seed, 1])
    chosen: list[int] = []
    rank: list[int] = []
    for patient in np.unique(patients):
        rows = np.flatnonzero(patients == patient)
        picked = rng.permutation(rows)[: min(len(rows) // 2, per_patient)]
        chosen.extend(picked.tolist())
        rank.extend(range(len(picked)))
    order = np.lexsort((rng.permutation(len(chosen)), np.asarray(rank, dtype=np.int64)))
    return np.sort(np.asarray(chosen, dtype=np.int64)[order][:max_queries])


def thin_gallery(gallery: np.ndarray, patients: np.ndarray, per_patient: int, seed: int) -> np.ndarray:
    """Sorted gallery rows keeping at most `per_patient` of each patient's (seeded choice), so no patient disappears."""
    rng = np.random.default_rng([seed, 3])
    kept = [rng.permutation(gallery[patients[gallery] == p])[:per_patient] for p in np.unique(patients[gallery])]
    return np.sort(np.concatenate(kept))


def query_seeds(count: int, seed: int, stream: int = 2) -> np.ndarray:
    """One distortion seed per slice, derived from the run's seed and reused at every α (stream 2: queries, 4: gallery)."""
    return np.random.default_rng([seed, stream]).integers(0, SEED_RANGE, size=count)


def level_name(level: float | str) -> str:
    """An archive level as results.json names it: '0.8' or 'mixed'."""
    return level if isinstance(level, str) else f"{level:g}"


def query_variant(images: torch.Tensor, name: str) -> torch.Tensor:
    """(Q, S, S) working-grid slices flipped left-right, turned 90° counter-clockwise, or downsampled ×2 and resampled back."""
    if name == "flip":
        return torch.flip(images, dims=(-1,))
    if name == "rot90":
        return torch.rot90(images, 1, dims=(-2, -1))
    if name == "half":
        size = images.shape[-1]
        low = F.interpolate(images[:, None], size=(size // 2, size // 2), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    raise ValueError(f"unknown query variant {name!r}; choose from {', '.join(VARIANTS)}")


@dataclass
class Workload:
    """Gallery and query slices (modality units), their seeds, and the queries distorted at every α."""

    alphas: tuple[float, ...]
    gallery: SliceSet
    query: SliceSet
    seeds: np.ndarray  # (Q,) one distortion seed per query
    gallery_seeds: np.ndarray  # (G,) one distortion seed per gallery slice, for the archive protocol
    mixed_alphas: np.ndarray  # (G,) each gallery slice's own α ~ U(0, 1) in the mixed archive level
    distorted: torch.Tensor  # (A, Q, S, S) in modality units; distorted[0] is the clean query (alphas[0] == 0)

    @property
    def levels(self) -> tuple[float | str, ...]:
        """The archive protocol's gallery levels: the α grid, then the mixed gallery."""
        return (*self.alphas, MIXED)

    def queries(self, step: int) -> torch.Tensor:
        """(Q, 3, S, S) network inputs of the queries at alphas[step]."""
        return network_input(self.distorted[step], self.query.modalities)

    def variant(self, name: str) -> torch.Tensor:
        """(Q, 3, S, S) network inputs of the clean queries in a variant (see `query_variant`)."""
        return network_input(query_variant(self.distorted[0], name), self.query.modalities)

    def gallery_alphas(self, level: float | str) -> np.ndarray:
        """(G,) the true α of every gallery slice at an archive level."""
        if level == MIXED:
            return self.mixed_alphas
        return np.full(len(self.gallery), float(level), dtype=np.float32)

    def gallery_inputs(self, level: float | str) -> torch.Tensor:
        """(G, 3, S, S) network inputs of the gallery at an archive level (level 0: the clean gallery, bit for bit)."""
        images = torch.from_numpy(self.gallery.images)
        alphas = self.gallery_alphas(level)
        if np.any(alphas > 0):
            images = distort_mixed(images, self.gallery.modalities, alphas, self.gallery_seeds)
        return network_input(images, self.gallery.modalities)

    @property
    def relevant(self) -> np.ndarray:
        """(Q, G) true where the gallery slice belongs to the query's patient."""
        return self.query.patients[:, None] == self.gallery.patients[None, :]


def build_workload(data: SliceSet, alphas: Sequence[float], seed: int, per_patient: int = QUERIES_PER_PATIENT,
                   max_queries: int | None = MAX_QUERIES, gallery_per_patient: int | None = None) -> Workload:
    """Split slices into gallery and queries (optionally thinning the gallery) and distort every query at every α with its own seed."""
    alphas = check_alphas(alphas)
    if len(np.unique(data.patients)) < 2:
        raise ValueError("need slices of at least two patients: identity movement compares different patients")
    queries = split_queries(data.patients, seed, per_patient, max_queries)
    if len(queries) == 0:
        raise ValueError("no patient has two usable slices, so there is nothing to query")
    is_query = np.zeros(len(data), dtype=bool)
    is_query[queries] = True
    rows = np.flatnonzero(~is_query)
    if gallery_per_patient is not None:
        rows = thin_gallery(rows, data.patients, gallery_per_patient, seed)
    gallery, query = data.subset(rows), data.subset(is_query)
    seeds = query_seeds(len(query), seed)
    clean = torch.from_numpy(query.images)
    views = torch.stack([distort_mixed(clean, query.modalities, np.full(len(query), alpha, np.float32), seeds) for alpha in alphas])
    mixed = np.random.default_rng([seed, 5]).uniform(0.0, 1.0, size=len(gallery)).astype(np.float32)
    return Workload(alphas, gallery, query, seeds, query_seeds(len(gallery), seed, stream=4), mixed, views)
