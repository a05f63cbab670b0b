"""The reader data types: a 2D slice in modality units, a lazily loaded series, a skipped file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MODALITIES = ("CT", "MR", "OT")


@dataclass(frozen=True)
class Slice:
    """One 2D slice: float32 pixels in modality units (HU for CT) plus where it came from."""

    pixels: np.ndarray
    patient_id: str
    series_id: str
    modality: str
    index: int
    path: str
    spacing: tuple[float, float] = (1.0, 1.0)
    study_id: str | None = None
    position: float | None = None


@dataclass(frozen=True)
class Skipped:
    """A file or folder that could not be used, with a one-line reason."""

    path: str
    reason: str


@dataclass
class Series:
    """A series known from headers only; `load()` reads its slices (one series in memory at a time)."""

    patient_id: str
    series_id: str
    modality: str
    path: str
    files: list[str]
    n_slices: int
    shape: tuple[int, int]
    spacing: tuple[float, float]
    study_id: str | None = None
    loader: Callable[[], list[Slice | Skipped]] = field(repr=False, default=lambda: [])
    # Content ids of `files` known without reading them (DICOMweb: SOPInstanceUIDs); None: the indexer hashes the files.
    checksums: dict[str, str] | None = field(default=None, repr=False)
    skipped: list[Skipped] = field(default_factory=list, repr=False)

    def load(self) -> list[Slice]:
        """Read the pixel data of every slice of this series, ordered by position.

        Files whose pixels cannot be decoded are left out and listed in `skipped` (set by each call).
        """
        items = self.loader()
        self.skipped = [item for item in items if isinstance(item, Skipped)]
        return [item for item in items if isinstance(item, Slice)]


@dataclass(frozen=True)
class SeriesKey:
    """The identity fields every Slice of a series repeats (kept apart from Series so loaders pickle)."""

    patient_id: str
    series_id: str
    modality: str
    study_id: str | None = None
