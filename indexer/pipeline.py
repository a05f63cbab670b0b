"""`retrieval index`: worker processes read and preprocess series while the model embeds batches.

Incremental: a series (a DICOM series or one volume) is keyed by its id and path and fingerprinted
by its files' SHA-256 plus its patient/modality; a complete series with the same fingerprint is
skipped, a changed or incomplete one is deleted and redone, one that left the scanned folders (or the disk) is
kept and reported as missing until `prune` removes it (indexer/prune.py). Crash-safe: each batch of slices commits in one catalog transaction with its vectors, and
the series' `complete` flag commits with its last slice; the FAISS file is a cache that
`IndexDirectory.open` repairs from the catalog (see indexer/directory.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from indexer.chunks import Batcher, Job, SeriesDataset, drop_inherited_lock, keep
from indexer.console import progress_bar
from indexer.catalog import SeriesRecord, SliceRecord
from indexer.engines import masked
from indexer.directory import IndexDirectory
from indexer.distributed import RaySource
from indexer.manifest import new_manifest
from indexer.prune import check_prune, missing_series
from indexer.quarantine import Quarantine, Watchdog
from indexer.ann import INDEX_TYPES
from retrieval import __version__
from retrieval.checkpoint import file_sha256
from retrieval.io import Identity, Limits, Series, Skipped, SourceUnavailable, read_archive
from retrieval.io.sandbox import Sandbox
from retrieval.metric import DistortionAwareMetric, bf16_is_fast
from retrieval.runtime import OnnxMetric, ensure_model

INDEXED_MODALITIES = ("CT", "MR")
SAVE_EVERY_S = 60.0  # the FAISS cache is rewritten at least this often during a run (and at its end)

Progress = Callable[[int], None]  # called with the number of slices just finished


@dataclass
class Plan:
    """What a run has to do: series to embed, series unchanged, stale series to redo, series gone missing, unusable files."""

    jobs: list[Job]
    unchanged: int
    stale: list[str]
    skipped: list[Skipped]
    missing: list[str] = field(default_factory=list)


@dataclass
class IndexReport:
    """Summary of one `retrieval index` run."""

    series_indexed: int = 0
    series_unchanged: int = 0
    series_removed: int = 0  # missing series pruned
    series_missing: list[str] = field(default_factory=list)  # paths of missing series kept (no --prune)
    slices_added: int = 0
    slices_removed: int = 0
    slices_empty: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    seconds_embedding: float = 0.0
    index: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what opening the index repaired (a rebuilt store, a catalog set aside)

    @property
    def slices_per_s(self) -> float:
        """Indexing throughput of the run."""
        return self.slices_added / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        out = {k: v for k, v in vars(self).items() if k != "skipped"}
        out["slices_per_s"] = round(self.slices_per_s, 2)
        out["skipped"] = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return out


def series_key(series: Series) -> str:
    """Stable catalog key of a series: its id and where it lives."""
    return f"{series.series_id}@{series.path}"


def _fingerprint(series: Series, sums: dict[str, str]) -> str:
    """SHA-256 over the series' identity and its files' checksums: any change means re-embedding."""
    blob = json.dumps([series.patient_id, series.study_id, series.modality, sorted(sums.items())])
    return hashlib.sha256(blob.encode()).hexdigest()


def plan(paths: Sequence[str | Path], identity: Identity, states: dict[str, tuple[str, bool]], recorded: dict[str, str],
         limits: Limits | None = None, quarantine: Quarantine | None = None, exclude: Sequence[str | Path] = ()) -> Plan:
    """Read headers (in a reader process: a file that crashes a C library is skipped; folders in `exclude`, the index's
    own, not walked) and checksums; split series into to-do and unchanged; list stale and missing catalog series."""
    series_list: list[Series] = []
    skipped: list[Skipped] = []
    held_keys: set[str] = set()  # quarantined series: their rows go, and they are not missing
    limits = limits or Limits()
    with Sandbox(identity, memory=limits.reader_bytes()) as sandbox:
        items = list(read_archive(paths, identity, limits=limits, sandbox=sandbox, exclude=exclude))
    for item in items:
        held = quarantine.reason(item.files) if quarantine and isinstance(item, Series) else None
        if held:
            held_keys.add(series_key(item))  # type: ignore[arg-type]
        if isinstance(item, Skipped) or held:
            skipped.append(Skipped(item.path, held) if held else item)  # type: ignore[arg-type]
        elif item.modality not in INDEXED_MODALITIES:
            skipped.append(Skipped(item.path, f"modality {item.modality}: only CT and MR are indexed (say which with --modality or --manifest)"))
        else:
            series_list.append(item)
    files = sorted({f for s in series_list if s.checksums is None for f in s.files})  # DICOMweb series come with theirs
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
        sums = dict(zip(files, pool.map(file_sha256, files)))
    jobs: list[Job] = []
    seen: set[str] = set()
    for series in series_list:
        own = series.checksums or {f: sums[f] for f in series.files}
        record = SeriesRecord(series_key(series), series.patient_id, series.study_id, series.series_id, series.modality, series.path, _fingerprint(series, own))
        if record.key in seen:
            skipped.append(Skipped(series.path, f"series {series.series_id} found twice under this path; indexed once"))
            continue
        seen.add(record.key)
        if states.get(record.key) != (record.checksum, True):
            jobs.append(Job(series, record, own))
    todo = {job.record.key for job in jobs}
    missing = missing_series({key: recorded[key] for key in states}, seen | held_keys, paths)
    return Plan(jobs, len(seen) - len(todo), [key for key in states if key in todo or key in held_keys], skipped, missing)


def index_archive(
    paths: Sequence[str | Path],
    directory: IndexDirectory,
    metric: DistortionAwareMetric | OnnxMetric,
    identity: Identity,
    *,
    batch_size: int = 32,
    workers: int = 1,
    kind: str = "auto",
    progress: Callable[[int], Progress] | None = None,
    save_every: float = SAVE_EVERY_S,
    limits: Limits | None = None,
    prune: bool = False,
    force: bool = False,
    source: RaySource | None = None,
) -> IndexReport:
    """Bring DIR in line with the archive: embed new/changed series, redo stale ones, prune missing ones if asked, save.

    `source`: a Ray cluster reads, preprocesses and embeds the series (indexer/distributed.py) instead of local workers.
    """
    started = time.perf_counter()
    catalog, store = directory.catalog, directory.store
    limits, quarantine = limits or Limits(), Quarantine(directory.path)
    quarantine.collect()  # a file that outlived the time limit in a killed run's main process
    recorded = catalog.series_paths()
    work = plan(paths, identity, catalog.series_states(), recorded, limits, quarantine, exclude=[directory.path])
    if prune:
        check_prune(work.missing, recorded, paths, force)
    pruned = work.missing if prune else []
    report = IndexReport(series_unchanged=work.unchanged, skipped=list(work.skipped), notes=list(directory.notes),
                         series_missing=sorted(recorded[key] for key in work.missing if not prune))
    removed = catalog.delete_series(work.stale + pruned)
    store.remove(removed)
    report.series_removed, report.slices_removed = len(pruned), len(removed)
    records = {job.record.key: job for job in work.jobs}
    advance = progress(sum(job.series.n_slices for job in work.jobs)) if progress else (lambda n: None)
    chunks = source.chunks(work.jobs, metric.size, batch_size) if source else (chunk for group in DataLoader(
        SeriesDataset(work.jobs, metric.size, batch_size, Watchdog(directory.path, limits.seconds_per_file)), batch_size=None, num_workers=workers,
        collate_fn=keep, prefetch_factor=4 if workers else None, worker_init_fn=partial(drop_inherited_lock, directory.lock_fd)) for chunk in group)
    batcher, last_save = Batcher(), time.monotonic()

    def commit(n: int) -> None:
        nonlocal last_save
        pixels, meta, done = batcher.take(n)
        slices: list[SliceRecord] = []
        if len(meta):
            start = time.perf_counter()
            if source:  # embedded by the Ray actors: [anatomy | α] rows
                vectors, alphas = pixels[:, :-1].numpy(), pixels[:, -1].numpy()
            else:
                embedded = metric.embed_tensor(pixels, factors=np.array([m[3] for m in meta]))
                vectors, alphas = embedded.anatomy, embedded.alpha
            report.seconds_embedding += time.perf_counter() - start
            slices = [SliceRecord(key, index, path, records[key].file_checksums.get(path, records[key].record.checksum), float(alpha), vector)
                      for (key, index, path, _), alpha, vector in zip(meta, alphas, vectors)]
        series = [records[key].record for key in {m[0] for m in meta} | set(done)]
        ids = catalog.commit_batch(series, slices, done, metric.checkpoint_hash[:16], __version__)
        store.add(ids, np.stack([s.vector for s in slices]) if slices else np.zeros((0, store.dim), np.float32))
        report.slices_added += len(ids)
        report.series_indexed += len(done)
        advance(len(ids))
        if time.monotonic() - last_save > save_every:
            directory.save()
            last_save = time.monotonic()

    for chunk in chunks:
        if chunk.fatal:  # what is committed stays consistent; the rerun redoes the unfinished series
            directory.save()
            raise SourceUnavailable(chunk.failed)
        if chunk.failed:
            report.skipped.append(Skipped(records[chunk.key].series.path, chunk.failed))
            advance(records[chunk.key].series.n_slices)
            continue
        report.skipped.extend(chunk.problems)
        report.slices_empty += chunk.n_empty
        advance(chunk.n_empty + len(chunk.problems))
        batcher.put(chunk)
        while batcher.queued >= batch_size:
            commit(batch_size)
    while batcher.queued or batcher.completions:
        commit(batch_size)
    directory.reshape(kind)
    directory.save()
    report.seconds = time.perf_counter() - started
    report.index = dict(directory.manifest.index)
    return report


def build_index(
    paths: Sequence[str | Path],
    index_dir: str | Path,
    identity: Identity,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    kind: str = "auto",
    catalog: str | None = None,
    ray: str | None = None,
    show_progress: bool = True,
    limits: Limits | None = None,
    prune: bool = False,
    force: bool = False,
    save_every: float = SAVE_EVERY_S,
) -> IndexReport:
    """Load the checkpoint, open (or create) DIR for it and index the archive into it (`prune`: remove missing series).

    When a reader worker dies (a codec crash, the OOM killer, the per-file time limit), the files it was reading
    are quarantined (indexer/quarantine.py) and the run starts over without them: done series stay done.
    """
    from retrieval.checkpoint import DEFAULT_CHECKPOINT

    if kind not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, got {kind!r}")
    checkpoint = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    metric = DistortionAwareMetric.load(checkpoint, device)
    expected = new_manifest(metric.checkpoint_hash, checkpoint, metric.config, metric.size, kind, masked(catalog) if catalog else "")
    workers = default_workers() if workers is None else workers
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(model_threads(workers))
    faiss.omp_set_num_threads(model_threads(workers))  # IVF-PQ training, like the model, gets the cores the readers leave
    try:
        while True:
            try:
                with IndexDirectory.open(index_dir, expected, writable=True, catalog=catalog) as directory, progress_bar(show_progress) as progress:
                    embedder = metric if ray else indexing_embedder(metric, checkpoint, directory.path, model_threads(workers))
                    return index_archive(paths, directory, embedder, identity, batch_size=batch_size, workers=workers, kind=kind,
                                         progress=progress, limits=limits, prune=prune, force=force, save_every=save_every,
                                         source=RaySource(ray, checkpoint, metric.checkpoint_hash, device) if ray else None)
            except RuntimeError as exc:  # a dead DataLoader worker; anything else is re-raised
                if not Quarantine(index_dir).collect(exc):
                    raise
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


def indexing_embedder(metric: DistortionAwareMetric, checkpoint: Path, directory: Path, threads: int) -> DistortionAwareMetric | OnnxMetric:
    """The faster embedder to index with: the torch model where bf16 pays (CUDA, CPUs with bf16 units), else DIR's
    fp32 ONNX export (the one queries use), 1.2–1.3× faster than torch fp32 on such CPUs (docs/benchmarks.md)."""
    if bf16_is_fast(metric.device):
        return metric
    try:
        path = ensure_model(directory, checkpoint, metric.checkpoint_hash)
    except Exception as exc:  # an optimisation only: any export failure leaves indexing on the torch model
        warnings.warn(f"{directory}: cannot export the checkpoint to ONNX ({exc}); indexing with the torch model", stacklevel=2)
        return metric
    onnx = OnnxMetric(path, threads=threads, throughput=True, checkpoint_hash=metric.checkpoint_hash, config=metric.config)
    onnx.session  # loaded (and checked) before the reader workers fork: no loader thread mid-flight in a fork
    return onnx


def default_workers() -> int:
    """Reader processes: half the CPUs this process may use (1 on 2 cores), at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) // 2))


def model_threads(workers: int) -> int:
    """CPU threads left to the model once each reader worker has its core (oversubscribed OpenMP threads spin)."""
    return max(1, len(os.sched_getaffinity(0)) - workers)
