"""Patient-keyed triplets with two distortion levels of the positive, deterministic per (seed, step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TripletBatch:
    """Indices into a SliceSet plus the distortion record of one training step (replayable)."""

    anchor: np.ndarray  # clean slice of patient P
    positive: np.ndarray  # another slice of P (the same one when P has one slice)
    negative: np.ndarray  # a slice of another patient
    alpha_1: np.ndarray  # first distortion level of the positive
    alpha_2: np.ndarray  # second distortion level of the positive (for the ordering term)
    alpha_negative: np.ndarray  # distortion level of the negative
    seeds: np.ndarray  # (B, 3) distortion seeds for positive@low, positive@high, negative


class TripletSampler:
    """Draws `batch_patients` distinct patients per step; batch k is a pure function of (seed, k)."""

    def __init__(self, patients: np.ndarray, batch_patients: int, seed: int) -> None:
        names, inverse = np.unique(patients, return_inverse=True)
        if len(names) < 2:
            raise ValueError(f"training needs slices of at least 2 patients, got {len(names)}")
        self.by_patient = [np.flatnonzero(inverse == i) for i in range(len(names))]
        self.batch_patients = min(batch_patients, len(names))
        self.seed = seed

    def batch(self, step: int) -> TripletBatch:
        """The triplets of training step `step`."""
        rng = np.random.default_rng([self.seed, step])
        n = len(self.by_patient)
        chosen = rng.choice(n, size=self.batch_patients, replace=False)
        anchor, positive, negative = [], [], []
        for p in chosen:
            slices = self.by_patient[p]
            a, b = rng.choice(slices, size=2, replace=len(slices) < 2)
            other = (p + rng.integers(1, n)) % n
            anchor.append(a)
            positive.append(b)
            negative.append(rng.choice(self.by_patient[other]))
        size = self.batch_patients
        alphas = rng.uniform(0.0, 1.0, size=(3, size))
        return TripletBatch(
            np.array(anchor), np.array(positive), np.array(negative),
            alphas[0], alphas[1], alphas[2], rng.integers(0, 2**31 - 1, size=(size, 3)),
        )
