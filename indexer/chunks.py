"""The reader side of `retrieval index`: a series to re-index (Job), loaded and preprocessed into chunks in worker
processes (SeriesDataset), sent to the model in messages of about a batch, and re-cut into model batches (Batcher)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from indexer.catalog import SeriesRecord
from indexer.quarantine import Watchdog
from retrieval.io import Series, Skipped, SourceUnavailable
from retrieval.io.pixels import one_line
from retrieval.preprocess import is_empty, prepare_slice


@dataclass(frozen=True)
class Job:
    """A series to (re)index, with its catalog record and the SHA-256 of each of its files."""

    series: Series
    record: SeriesRecord
    file_checksums: dict[str, str]


@dataclass
class Chunk:
    """Up to one batch of preprocessed slices of one series, made in a worker process."""

    key: str
    pixels: torch.Tensor
    indices: list[int]
    paths: list[str]
    last: bool
    n_empty: int = 0
    problems: list[Skipped] = field(default_factory=list)
    failed: str | None = None
    fatal: bool = False  # the source is unreachable (a DICOMweb server went away): the run stops, a rerun resumes
    embedded: bool = False  # pixels already replaced by [anatomy | α] rows (made by a Ray actor, indexer/distributed.py)
    factors: list[float] = field(default_factory=list)  # each slice's resize factor onto the grid, which the α estimator reads


def series_chunks(job: Job, size: int, chunk: int, watchdog: Watchdog | None = None) -> Iterator[Chunk]:
    """Load one series (under the watchdog's time limit), drop empty slices, preprocess the rest into chunks of at most `chunk` slices."""
    key = job.record.key
    try:
        with watchdog.reading(job.series.files) if watchdog else nullcontext():
            slices = job.series.load()
    except SourceUnavailable as exc:
        yield Chunk(key, torch.zeros(0), [], [], True, failed=str(exc), fatal=True)
        return
    except Exception as exc:  # noqa: BLE001 - a broken series is reported, the run goes on
        yield Chunk(key, torch.zeros(0), [], [], True, failed=one_line(exc))
        return
    if not slices:
        reason = job.series.skipped[0].reason if job.series.skipped else "no slices could be read"
        yield Chunk(key, torch.zeros(0), [], [], True, failed=reason)
        return
    kept = [s for s in slices if not is_empty(s.pixels, s.modality)]
    for start in range(0, max(1, len(kept)), chunk):
        part = kept[start : start + chunk]
        inputs = [prepare_slice(s.pixels, s.modality, size, s.spacing) for s in part]
        pixels = torch.from_numpy(np.stack([array for array, _ in inputs])) if part else torch.zeros(0, 3, size, size)
        first = start == 0
        yield Chunk(key, pixels, [s.index for s in part], [s.path for s in part], start + chunk >= len(kept),
                    n_empty=len(slices) - len(kept) if first else 0, problems=list(job.series.skipped) if first else [],
                    factors=[factor for _, factor in inputs])


class SeriesDataset(IterableDataset):
    """Series split across DataLoader workers (round robin); each worker yields preprocessed chunks."""

    def __init__(self, jobs: Sequence[Job], size: int, chunk: int, watchdog: Watchdog | None = None) -> None:
        self.jobs, self.size, self.chunk, self.watchdog = list(jobs), size, chunk, watchdog

    def __iter__(self) -> Iterator[list[Chunk]]:
        info = get_worker_info()
        mine = self.jobs if info is None else self.jobs[info.id :: info.num_workers]
        chunks = (chunk for job in mine for chunk in series_chunks(job, self.size, self.chunk, self.watchdog))
        return grouped(chunks, self.chunk)


def grouped(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    """Consecutive chunks sent as one message of about `size` slices, their pixels in one tensor: a worker-to-model
    transfer costs ~3 ms whatever its size, and most series of a DICOM archive are a slice or a few."""
    group: list[Chunk] = []
    rows = 0
    for chunk in chunks:
        group.append(chunk)
        rows += len(chunk.indices)
        if rows >= size or chunk.failed:
            yield one_tensor(group)
            group, rows = [], 0
    if group:
        yield one_tensor(group)


def one_tensor(group: list[Chunk]) -> list[Chunk]:
    """The group with its chunks' pixels as views of one tensor."""
    filled = [chunk for chunk in group if len(chunk.indices)]
    if len(filled) > 1:
        merged = torch.cat([chunk.pixels for chunk in filled])
        start = 0
        for chunk in filled:
            chunk.pixels, start = merged[start : start + len(chunk.indices)], start + len(chunk.indices)
    return group


def drop_inherited_lock(fd: int | None, _worker_id: int) -> None:
    """Close the writer-lock fd a forked worker inherited, so a killed run's orphans never hold the lock."""
    if fd is not None:
        os.close(fd)


def keep(group: list[Chunk]) -> list[Chunk]:
    """DataLoader collate function: chunks are already batched."""
    return group


class Batcher:
    """Re-cuts worker chunks into model batches; a series completes with the batch holding its last slice."""

    def __init__(self) -> None:
        self.pixels: list[torch.Tensor] = []
        self.meta: list[tuple[str, int, str, float]] = []  # (series key, slice index, path, resize factor)
        self.completions: list[tuple[int, str]] = []  # (slices queued before it completed, key)
        self.queued = 0

    def put(self, chunk: Chunk) -> None:
        """Queue a chunk's slices (and its series' completion when it is the last chunk)."""
        if len(chunk.indices):
            self.pixels.append(chunk.pixels)
            self.meta.extend(zip([chunk.key] * len(chunk.indices), chunk.indices, chunk.paths, chunk.factors, strict=True))
            self.queued += len(chunk.indices)
        if chunk.last:
            self.completions.append((self.queued, chunk.key))

    def take(self, n: int) -> tuple[torch.Tensor, list[tuple[str, int, str, float]], list[str]]:
        """The first n queued slices and the series completed by them."""
        parts, rows = [], 0
        while self.pixels and rows < n:  # concatenate only the chunks this batch needs
            part = self.pixels.pop(0)
            if rows + len(part) > n:
                self.pixels.insert(0, part[n - rows :])
                part = part[: n - rows]
            parts.append(part)
            rows += len(part)
        head = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.zeros(0)
        meta, self.meta = self.meta[:n], self.meta[n:]
        self.queued -= len(meta)
        done = [key for before, key in self.completions if before <= len(meta)]
        self.completions = [(before - len(meta), key) for before, key in self.completions if before > len(meta)]
        return head, meta, done
