"""The benchmark protocol: the α grid, the per-patient query split, one seed per query and the distorted queries.

Everything here is deterministic given the slices and the seed, so every method sees the same gallery and
the same distorted query tensors (docs/benchmark-protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from retrieval.slices import SliceSet
from retrieval.distortions import distort_mixed
from retrieval.preprocess import network_input

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
QUICK_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
QUERIES_PER_PATIENT = 8  # so large volumes do not dominate the mean
MAX_QUERIES = 128  # sized so the full run on the sample archive fits in 30 minutes on 2 cores
QUICK_MAX_QUERIES = 24
QUICK_GALLERY_PER_PATIENT = 8  # --quick also thins the gallery, keeping every patient
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


def query_seeds(count: int, seed: int) -> np.ndarray:
    """One distortion seed per query, derived from the run's seed and reused at every α."""
    return np.random.default_rng([seed, 2]).integers(0, SEED_RANGE, size=count)


@dataclass
class Workload:
    """The clean gallery (network inputs), the queries' patients and each query distorted at every α (modality units)."""

    alphas: tuple[float, ...]
    gallery: torch.Tensor  # (G, 3, S, S) in [0, 1]
    gallery_patients: np.ndarray
    query_patients: np.ndarray
    query_modalities: np.ndarray
    query_sources: np.ndarray
    seeds: np.ndarray
    distorted: torch.Tensor  # (A, Q, S, S) in modality units; distorted[0] is the clean query when alphas[0] == 0

    def queries(self, step: int) -> torch.Tensor:
        """(Q, 3, S, S) network inputs of the queries at alphas[step]."""
        return network_input(self.distorted[step], self.query_modalities)

    @property
    def relevant(self) -> np.ndarray:
        """(Q, G) true where the gallery slice belongs to the query's patient."""
        return self.query_patients[:, None] == self.gallery_patients[None, :]


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
    return Workload(alphas, network_input(torch.from_numpy(gallery.images), gallery.modalities), gallery.patients,
                    query.patients, query.modalities, query.sources, seeds, views)
