"""Slices in memory: every non-empty CT/MR slice resized to S×S in modality units, with its patient and dataset.

Shared by training, the benchmark and anything else that works on a whole archive at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from retrieval.io import Identity, Limits, Series, Skipped, read_archive
from retrieval.io.archive import in_reader, load_series
from retrieval.io.sandbox import Sandbox
from retrieval.preprocess import is_empty, native_view, to_grid

FIELDS = ("images", "patients", "modalities", "sources", "datasets", "series", "factors", "native", "native_factors")  # the cache's arrays, in SliceSet order
CACHE_VERSION = 5  # bumped when the same archive would read differently (v5: NaN-padded slices, mosaics, PAR/MGH/MINC/AFNI)
NATIVE_SEED = 1729  # native views are drawn per slice from (NATIVE_SEED, slice number): the same archive gives the same views


@dataclass
class SliceSet:
    """Slices (N, S, S) float32 in modality units with per-slice patient, modality and source."""

    images: np.ndarray
    patients: np.ndarray
    modalities: np.ndarray
    sources: np.ndarray
    datasets: np.ndarray | None = None  # manifest `dataset` or --group-regex per slice ('' when unknown)
    series: np.ndarray | None = None  # the reader's series id per slice ('' when unknown)
    factors: np.ndarray | None = None  # each slice's `resize_factor` onto the grid (None: unknown)
    native: np.ndarray | None = None  # (N, S, S) each slice once more as `native_view` draws it (fits the α estimator)
    native_factors: np.ndarray | None = None  # the native views' resize factors

    def __post_init__(self) -> None:
        """Unknown datasets and series are ''."""
        if self.datasets is None:
            self.datasets = np.full(len(self.images), "", dtype=object).astype(str)
        if self.series is None:
            self.series = np.full(len(self.images), "", dtype=object).astype(str)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> "SliceSet":
        """The slices where mask is true."""
        def part(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[mask]

        return SliceSet(self.images[mask], self.patients[mask], self.modalities[mask], self.sources[mask], self.datasets[mask], self.series[mask],
                        part(self.factors), part(self.native), part(self.native_factors))

    def summary(self) -> dict[str, object]:
        """JSON-able description for checkpoint configs."""
        mods, counts = np.unique(self.modalities, return_counts=True)
        sets, set_counts = np.unique(self.datasets, return_counts=True)
        return {"slices": len(self), "patients": int(len(np.unique(self.patients))), "by_modality": dict(zip(mods.tolist(), counts.tolist())),
                "by_dataset": dict(zip(sets.tolist(), set_counts.tolist()))}


Row = tuple[np.ndarray, float, "np.ndarray | None", "float | None", str, str, str, str, str]  # grid, factor, native view, its factor, patient, modality, source, series, path


def series_rows(series: Series, size: int, native_views: bool, first: int, limits: Limits) -> tuple[list[Row], list[Skipped]]:
    """One series' non-empty CT/MR slices on the size×size grid (and their native views, drawn for slice numbers from
    `first` on), made in the reader process so only the small grids cross back; the files it could not use."""
    slices, skipped = load_series(series, limits)
    rows: list[Row] = []
    for item in slices:
        if item.modality not in ("CT", "MR") or is_empty(item.pixels, item.modality):
            continue
        grid, factor = to_grid(item.pixels, size, item.spacing)
        view, view_factor = native_view(item.pixels, size, item.spacing, np.random.default_rng([NATIVE_SEED, first + len(rows)])) if native_views else (None, None)
        rows.append((grid, factor, view, view_factor, item.patient_id, item.modality, f"{item.path}#{item.index}", item.series_id, item.path))
    return rows, skipped


def load_slices(
    paths: Sequence[Path], identity: Identity, size: int, on_skip: Callable[[Skipped], None] | None = None, native_views: bool = True
) -> SliceSet:
    """Read every CT/MR slice under `paths`, drop empty ones, resize to size×size (modality units kept), noting each
    slice's resize factor, and draw its seeded native view (`native_view`; only the α estimator's fit reads them,
    so a benchmark asks for none and holds half the memory). Files are read in a reader process (retrieval.io.sandbox):
    one that crashes a C library or never returns is skipped with the reason, not the training run."""
    rows: list[Row] = []
    limits = Limits()
    with Sandbox(identity, memory=limits.reader_bytes()) as sandbox:
        for item in read_archive(paths, identity, sandbox=sandbox):
            if isinstance(item, Skipped):
                skipped = [item]
            else:
                outcome = in_reader(sandbox, series_rows, item, size, native_views, len(rows), limits, limits=limits)
                made, skipped = ([], [outcome]) if isinstance(outcome, Skipped) else outcome
                rows.extend(made)
            for problem in skipped if on_skip is not None else ():
                on_skip(problem)
    if not rows:
        raise ValueError(f"no usable CT/MR slices under {', '.join(map(str, paths))}")
    grids, factors, views, view_factors, patients, modalities, sources, series, files = zip(*rows)
    return SliceSet(np.stack(grids).astype(np.float32), np.array(patients), np.array(modalities), np.array(sources),
                    np.array([identity.dataset(Path(f)) for f in files]), np.array(series), np.array(factors, np.float32),
                    np.stack(views).astype(np.float32) if native_views else None, np.array(view_factors, np.float32) if native_views else None)


def cached_slices(paths: Sequence[Path], identity: Identity, size: int, cache_dir: Path | None,
                  on_skip: Callable[[Skipped], None] | None = None) -> SliceSet:
    """load_slices, memoised in cache_dir/<key>.npz (key: resolved paths, identity and size); `on_skip` hears of the
    files skipped when the archive was read, on a cache hit too (the cache keeps them)."""
    if cache_dir is None:
        return load_slices(paths, identity, size, on_skip)
    key_source = json.dumps([sorted(str(Path(p).resolve()) for p in paths), repr(identity), size])
    target = Path(cache_dir) / f"slices-v{CACHE_VERSION}-{hashlib.sha1(key_source.encode()).hexdigest()[:16]}.npz"
    if target.is_file():
        with np.load(target) as blob:
            if on_skip is not None:
                for path, reason in blob["skipped"]:
                    on_skip(Skipped(str(path), str(reason)))
            return SliceSet(*(blob[name] for name in FIELDS))
    skipped: list[Skipped] = []

    def keep(item: Skipped) -> None:
        skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    data = load_slices(paths, identity, size, keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **{name: getattr(data, name) for name in FIELDS}, skipped=np.array([[s.path, s.reason] for s in skipped], dtype=str).reshape(-1, 2))
    tmp.replace(target)
    return data
