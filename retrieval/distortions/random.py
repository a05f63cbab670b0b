"""Seeded random wrapper: sample α and a per-call seed, distort, and keep a record that replays exactly.

Follows TorchIO's history (each call returns the parameters it applied) and MONAI's
`set_random_state` (the sampler's state is reseeded or saved and restored for resumable runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from retrieval.distortions import ct, mr
from retrieval.distortions.core import check_alpha, check_modality, check_seed, distort, distort_batch

SEED_BOUND = 2**31


@dataclass(frozen=True)
class DistortionRecord:
    """One applied distortion: modality, α, seed and spacing (None: the default) replay it; `params` shows what they meant."""

    modality: str
    alpha: float
    seed: int
    spacing: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)


def describe(modality: str, alpha: float, seed: int) -> dict[str, Any]:
    """The physical parameters behind (modality, α, seed): CT dose fraction; MR nuisance draws and strengths."""
    if check_modality(modality) == "CT":
        return {"dose_fraction": float(ct.dose_fraction(alpha))}
    nuisance = mr.draw_nuisance(torch.Generator().manual_seed(check_seed(seed)))
    return {**asdict(nuisance), **mr.settings(alpha)}


class RandomDistortion:
    """Distort at α ~ U(alpha_range) with a fresh seed per slice, drawn from a seeded sampler."""

    def __init__(self, alpha_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> None:
        low, high = (check_alpha(a) for a in alpha_range)
        if low > high:
            raise ValueError(f"alpha_range must be (low, high) with low <= high, got {alpha_range!r}")
        self.alpha_range = (low, high)
        self.set_random_state(seed)

    def set_random_state(self, seed: int) -> RandomDistortion:
        """Reseed the sampler (MONAI's convention); returns self."""
        self._rng = np.random.default_rng(check_seed(seed))
        return self

    def state_dict(self) -> dict[str, Any]:
        """The sampler state, JSON-serialisable, to resume a run where it stopped."""
        return {"alpha_range": list(self.alpha_range), "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from `state_dict`."""
        self.alpha_range = tuple(state["alpha_range"])  # type: ignore[assignment]
        self._rng.bit_generator.state = state["bit_generator"]

    def sample(self, modality: str, spacing: float | None = None) -> DistortionRecord:
        """Draw α and a seed for one slice, with the parameters they imply."""
        name = check_modality(modality)
        low, high = self.alpha_range
        alpha = float(low + (high - low) * self._rng.random())
        seed = int(self._rng.integers(SEED_BOUND))
        return DistortionRecord(name, alpha, seed, None if spacing is None else float(spacing), describe(name, alpha, seed))

    def __call__(self, image: np.ndarray, modality: str, spacing: float | None = None) -> tuple[np.ndarray, DistortionRecord]:
        """Distort one 2D slice; returns the output and its record."""
        record = self.sample(modality, spacing)
        return self.replay(image, record), record

    def batch(self, images: torch.Tensor, modality: str, spacing: float | None = None) -> tuple[torch.Tensor, list[DistortionRecord]]:
        """Distort a (B, H, W) batch, one record per slice."""
        records = [self.sample(modality, spacing) for _ in range(images.shape[0])]
        return self.replay_batch(images, records), records

    @staticmethod
    def replay(image: np.ndarray, record: DistortionRecord) -> np.ndarray:
        """Apply a recorded distortion again: the same output, bit for bit."""
        return distort(image, record.alpha, record.modality, record.seed, record.spacing)

    @staticmethod
    def replay_batch(images: torch.Tensor, records: Sequence[DistortionRecord]) -> torch.Tensor:
        """Apply one record per slice of a (B, H, W) batch again (one modality per batch)."""
        modalities = {record.modality for record in records}
        if len(modalities) != 1:
            raise ValueError(f"a batch is replayed with one modality, got {sorted(modalities)}")
        default = ct.default_spacing(tuple(images.shape[1:]))
        spacing = [default if record.spacing is None else record.spacing for record in records]
        alphas = torch.tensor([record.alpha for record in records])
        return distort_batch(images, alphas, modalities.pop(), [record.seed for record in records], spacing)
