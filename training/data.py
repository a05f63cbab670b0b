"""Training data: the patient split (who validates, never trains)."""

from __future__ import annotations

import hashlib
from typing import Sequence


def split_patients(patients: Sequence[str], modalities: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """Seeded, modality-stratified choice of validation patients (no patient is in both sets)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    first_modality: dict[str, str] = {}
    for patient, modality in zip(patients, modalities):
        first_modality.setdefault(patient, modality)
    chosen: set[str] = set()
    for modality in sorted(set(first_modality.values())):
        group = sorted(p for p, m in first_modality.items() if m == modality)
        group.sort(key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).hexdigest())
        chosen.update(group[: round(len(group) * val_fraction)])
    return chosen
