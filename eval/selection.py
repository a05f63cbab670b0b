"""Which slices a bench run may use, and how reports name them.

Honest by default: the checkpoint's training patients are left out of queries and gallery (by the keyed digests
new checkpoints store, or the validation list of older ones), so figures measure patients the model never saw.
Reports name sources relative to the archive root, and `--redact-paths` replaces paths and patient ids with digests.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retrieval.checkpoint import trained_on
from retrieval.slices import SliceSet

DIGEST = 12  # hex characters of a redacted name: unique among millions, short enough to read


@dataclass(frozen=True)
class Honesty:
    """How the run's patients relate to the checkpoint's training patients."""

    include_training: bool
    record: str  # "digests", "validation list" or "none": what the checkpoint says about its training patients
    training: int  # patients of the selected data that trained the checkpoint
    remaining: int  # patients the run uses

    def statement(self) -> str:
        """The report's first line."""
        if self.record == "none":
            return ("**The checkpoint does not record its training patients, so none could be left out: "
                    "these figures may include training data.**")
        if self.include_training and self.training:
            return (f"**Includes the checkpoint's training data (--include-training): {self.training} of these "
                    f"{self.remaining} patients trained it, so these figures are not held-out.**")
        left = f"{self.training} training patient{'s' if self.training != 1 else ''} of the checkpoint left out" if self.training else \
            "none of these patients trained the checkpoint"
        return f"Held-out data: {left} (by its {self.record}); {self.remaining} patients benchmarked."

    def to_json(self) -> dict[str, Any]:
        """results.json's `honesty` entry."""
        return {"include_training": self.include_training, "record": self.record, "training_patients": self.training,
                "left_out": 0 if self.include_training else self.training, "patients": self.remaining, "statement": self.statement()}


def training_record(config: dict[str, Any]) -> str:
    """What a checkpoint config says about who trained it."""
    if isinstance(config.get("patients"), dict) and "key" in config["patients"]:
        return "digests"
    return "validation list" if "validation_patients" in config else "none"


def held_out(data: SliceSet, config: dict[str, Any], include_training: bool) -> tuple[SliceSet, Honesty]:
    """The slices of patients the checkpoint never trained on (all of them with include_training); ValueError when none are left."""
    patients = sorted(set(data.patients.tolist()))
    record = training_record(config)
    training = trained_on(config, patients) if record != "none" else set()
    keep = np.ones(len(data), dtype=bool) if include_training else ~np.isin(data.patients, sorted(training))
    remaining = len(patients) if include_training else len(patients) - len(training)
    if remaining == 0:
        raise ValueError(f"all {len(patients)} patients of this archive trained the checkpoint (by its {record}), so none is held out; "
                         "benchmark other patients, or pass --include-training to measure training data knowingly")
    return data.subset(keep), Honesty(include_training, record, len(training), remaining)


def select_datasets(data: SliceSet, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> SliceSet:
    """Keep whole datasets (manifest `dataset` column or --group-regex); ValueError naming an unknown one."""
    if not include and not exclude:
        return data
    known = sorted(set(data.datasets.tolist()) - {""})
    if not known:
        raise ValueError("--datasets/--exclude-datasets need datasets: a manifest with a dataset column, or --group-regex")
    unknown = [d for d in (*include, *exclude) if d not in known]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r}; this archive has {', '.join(known)}")
    keep = np.isin(data.datasets, list(include)) if include else np.ones(len(data), dtype=bool)
    keep &= ~np.isin(data.datasets, list(exclude))
    if not keep.any():
        raise ValueError("no slices left after --datasets/--exclude-datasets")
    return data.subset(keep)


def digest(text: str) -> str:
    """Short SHA-256 of a name: hides it from a reader of the report (not from someone who can guess and hash candidates)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST]


def archive_root(paths: Sequence[Path], manifest: Path | None) -> Path:
    """The folder report paths are relative to: the manifest's folder, else the deepest folder holding every argument."""
    if manifest is not None:
        return Path(manifest).resolve().parent
    folders = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath([str(f) for f in folders]))


@dataclass(frozen=True)
class Names:
    """How a report names files and patients: relative to the archive root, or as digests (`--redact-paths`)."""

    root: Path
    redact: bool = False

    def path(self, path: str | Path) -> str:
        """A file or folder relative to the root (a digest when redacting)."""
        relative = os.path.relpath(Path(path).resolve(), self.root)
        return f"path:{digest(relative)}" if self.redact else Path(relative).as_posix()

    def patient(self, patient: str) -> str:
        """A patient id, or its digest."""
        return f"patient:{digest(patient)}" if self.redact else patient

    def source(self, source: str, patient: str, series: str) -> str:
        """A slice `path#index` as root-relative path#index, or `series:<digest of patient and series>#index`."""
        path, _, index = source.rpartition("#")
        return f"series:{digest(patient + '/' + series)}#{index}" if self.redact else f"{self.path(path)}#{index}"

    def sources(self, data: SliceSet) -> dict[str, np.ndarray]:
        """The `source` and `patient` columns of per-query records for these slices."""
        series = [r or s.rpartition("#")[0] for r, s in zip(data.series, data.sources)]  # a file stands for an unknown series
        return {"source": np.array([self.source(s, p, r) for s, p, r in zip(data.sources, data.patients, series)]),
                "patient": np.array([self.patient(p) for p in data.patients])}
