"""Patient-keyed triplets with two distortion levels of the positive, deterministic per (seed, step).

Patients are drawn without replacement with weights n_d^(−balance), n_d the number of patients of the
patient's dataset: balance 0 is uniform over patients, 1 gives every dataset the same share of draws, so
one large dataset does not decide what the network learns. The anchor and positive are any two slices
of the patient (other sequences and series of the same patient included); with probability `instance`
the anchor is the positive slice itself under another augmentation (SimCLR-style instance positives),
which teaches invariance to how a slice is shown rather than memorising the training patients. With probability
`neighbour` the positive is instead a slice at most two positions from the anchor in the same series (reader order):
nearby anatomy of one volume, the similarity pixel metrics find on any body part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.augment import AugmentConfig, AugmentParams, sample_params


@dataclass(frozen=True)
class TripletBatch:
    """Indices into a SliceSet plus the distortion record of one training step (replayable)."""

    anchor: np.ndarray  # clean slice of patient P
    positive: np.ndarray  # another slice of P (the same one when P has one slice)
    negative: np.ndarray  # a slice of another patient
    alpha_1: np.ndarray  # first distortion level of the positive
    alpha_2: np.ndarray  # second distortion level of the positive (for the ordering term)
    alpha_negative: np.ndarray  # distortion level of the negative
    patient: np.ndarray  # index of the anchor's (and positive's) patient among the sampler's sorted patients
    negative_patient: np.ndarray  # index of the negative's patient
    seeds: np.ndarray  # (B, 3) distortion seeds for positive@low, positive@high, negative
    augment_anchor: AugmentParams
    augment_positive: AugmentParams  # shared by the positive's clean and distorted views
    augment_negative: AugmentParams


class TripletSampler:
    """Draws `batch_patients` distinct patients per step; batch k is a pure function of (seed, k)."""

    def __init__(self, patients: np.ndarray, batch_patients: int, seed: int, datasets: np.ndarray | None = None,
                 balance: float = 0.0, augment: AugmentConfig | None = None, instance: float = 0.0,
                 series: np.ndarray | None = None, neighbour: float = 0.0) -> None:
        names, inverse = np.unique(patients, return_inverse=True)
        if len(names) < 2:
            raise ValueError(f"training needs slices of at least 2 patients, got {len(names)}")
        for name, value in (("balance", balance), ("instance", instance), ("neighbour", neighbour)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.by_patient = [np.flatnonzero(inverse == i) for i in range(len(names))]
        self.batch_patients = min(batch_patients, len(names))
        self.seed = seed
        self.augment = augment
        self.instance = instance
        self.neighbour = neighbour
        self.neighbours = _neighbours(patients, series) if neighbour > 0 and series is not None else None
        groups = np.zeros(len(names), dtype=np.int64)
        if datasets is not None:
            _, groups = np.unique(np.asarray(datasets)[[rows[0] for rows in self.by_patient]], return_inverse=True)
        weights = np.bincount(groups)[groups].astype(np.float64) ** -balance
        self.weights = weights / weights.sum()

    def batch(self, step: int) -> TripletBatch:
        """The triplets of training step `step`."""
        rng = np.random.default_rng([self.seed, step])
        n = len(self.by_patient)
        chosen = rng.choice(n, size=self.batch_patients, replace=False, p=self.weights)
        anchor, positive, negative, others = [], [], [], []
        for p in chosen:
            slices = self.by_patient[p]
            a, b = rng.choice(slices, size=2, replace=len(slices) < 2)
            if self.neighbours is not None and rng.random() < self.neighbour and len(self.neighbours[a]):
                b = rng.choice(self.neighbours[a])
            if rng.random() < self.instance:
                a = b
            other = (p + rng.integers(1, n)) % n
            others.append(other)
            anchor.append(a)
            positive.append(b)
            negative.append(rng.choice(self.by_patient[other]))
        size = self.batch_patients
        alphas = rng.uniform(0.0, 1.0, size=(3, size))
        seeds = rng.integers(0, 2**31 - 1, size=(size, 3))
        augment = [sample_params(rng, size, self.augment) for _ in range(3)]
        return TripletBatch(np.array(anchor), np.array(positive), np.array(negative), alphas[0], alphas[1], alphas[2], chosen,
                            np.array(others), seeds, *augment)


def _neighbours(patients: np.ndarray, series: np.ndarray) -> list[np.ndarray]:
    """Per slice, the rows at most two positions away in its series (reader order); none where the series is unknown."""
    rows_of: dict[tuple[str, str], list[int]] = {}
    for row, key in enumerate(zip(patients.tolist(), series.tolist())):
        rows_of.setdefault(key, []).append(row)
    out = [np.zeros(0, np.int64)] * len(patients)
    for (_, series_id), rows in rows_of.items():
        if series_id:
            for i, row in enumerate(rows):
                out[row] = np.array(rows[max(0, i - 2) : i] + rows[i + 1 : i + 3], np.int64)
    return out
