"""Run every method over a workload and keep the per-query measurements of both protocols and the query variants.

The loop is level-major so each distorted gallery is made once and shared: first the clean gallery (the query
protocol at every α, the query variants, and the archive protocol's level 0, which is the same clean gallery),
then each further archive level, which every method re-encodes and searches with the clean queries it encoded
once. Each method's per-level gallery statistics are dropped as soon as the level is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from eval.methods import Method
from eval.metrics import RANKING, ranking_figures
from eval.protocol import MIXED, VARIANTS, Workload, level_name
from eval.records import Records


@dataclass
class Timing:
    """CPU seconds one method spent, by part of the run (CPU, not wall: stable on shared cores; bench is single-threaded)."""

    gallery: float = 0.0  # encoding the clean gallery once
    query: float = 0.0  # encoding and ranking every query view of the query protocol and the variants
    views: int = 0  # query views ranked (queries × (α + variants))
    archive_gallery: float = 0.0  # re-encoding the distorted galleries of the archive protocol
    archive_search: float = 0.0  # ranking the distorted galleries with the clean queries

    def to_json(self, levels: int) -> dict[str, float]:
        """Seconds as results.json reports them (per query view; the archive protocol in total and per level)."""
        archive = self.archive_gallery + self.archive_search
        return {"gallery_seconds": round(self.gallery, 4), "seconds_per_query": self.query / max(self.views, 1),
                "archive_seconds": round(archive, 4), "archive_seconds_per_level": round(archive / max(levels, 1), 4),
                "archive_gallery_seconds": round(self.archive_gallery, 4)}


@dataclass
class Measured:
    """What a whole run measured: per-query records, per-method times, and the seconds spent distorting galleries."""

    records: Records
    timings: dict[str, Timing]
    distortion_seconds: dict[str, float] = field(default_factory=dict)


def _ranking(method: Method, encoded: Any, relevant: np.ndarray, timing: Timing) -> dict[str, np.ndarray]:
    """Rank the method's current gallery for encoded queries; the search time goes to `timing.query`."""
    start = time.process_time()
    distances = method.search(encoded)
    timing.query += time.process_time() - start
    return ranking_figures(distances, relevant)


def _encode(method: Method, inputs: Any, factors: np.ndarray | None, timing: Timing) -> Any:
    """Encode query inputs (made with resize `factors`), timed as query work."""
    start = time.process_time()
    encoded = method.encode(inputs, factors)
    timing.query += time.process_time() - start
    timing.views += len(inputs)
    return encoded


def _stack(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-level ranking figures stacked into (levels, Q) arrays."""
    return {key: np.stack([row[key] for row in rows]) for key in RANKING}


def clean_pass(method: Method, workload: Workload, timing: Timing, step: Callable[[], None]) -> tuple[dict[str, Any], Any, Any]:
    """Query protocol at every α and the query variants against the clean gallery: (record, clean encodings, gallery encoding)."""
    relevant = workload.relevant
    start = time.process_time()
    gallery = method.prepare(workload.gallery_inputs(0.0), workload.gallery.factors)
    timing.gallery = time.process_time() - start
    query_rows, track, alpha_hat = [], [], []
    clean = None
    for index in range(len(workload.alphas)):
        encoded = _encode(method, workload.queries(index), workload.query.factors, timing)
        query_rows.append(_ranking(method, encoded, relevant, timing))
        clean = encoded if clean is None else clean  # alphas[0] == 0: the clean queries
        track.append(method.paired(clean, encoded))
        alpha_hat.append(method.alpha_of(encoded))
        step()
    variant_rows = []
    for name in VARIANTS:
        variant_rows.append(_ranking(method, _encode(method, workload.variant(name), workload.query.factors, timing), relevant, timing))
        step()
    identity = np.ma.masked_array(method.to_gallery(clean), mask=relevant).mean(axis=1).filled(np.nan)
    record: dict[str, Any] = {"query": _stack(query_rows), "variants": _stack(variant_rows), "track": np.stack(track), "identity": identity}
    if alpha_hat[0] is not None:
        record["alpha_hat"] = np.stack(alpha_hat)
    return record, clean, gallery


def measure(methods: Sequence[Method], workload: Workload, step: Callable[[], None] = lambda: None,
            labels: dict[str, np.ndarray] | None = None) -> Measured:
    """Both protocols and the variants for every method; `labels` replace the query sources/patients shown in records."""
    relevant = workload.relevant
    timings = {m.name: Timing() for m in methods}
    records: dict[str, dict[str, Any]] = {}
    clean: dict[str, Any] = {}
    archive_rows: dict[str, list[dict[str, np.ndarray]]] = {}
    gallery: dict[str, np.ndarray] = {}
    for method in methods:
        records[method.name], clean[method.name], encoded = clean_pass(method, workload, timings[method.name], step)
        archive_rows[method.name] = [{key: records[method.name]["query"][key][0] for key in RANKING}]  # level 0 is the clean gallery
        _calibration(method, encoded, workload, "alpha_hat_clean", gallery)
        method.release()
    distortion: dict[str, float] = {}
    for level in workload.levels[1:]:
        start = time.process_time()
        inputs = workload.gallery_inputs(level)
        distortion[level_name(level)] = round(time.process_time() - start, 2)
        for method in methods:
            timing = timings[method.name]
            start = time.process_time()
            encoded = method.prepare(inputs, workload.gallery.factors)
            timing.archive_gallery += time.process_time() - start
            start = time.process_time()
            archive_rows[method.name].append(ranking_figures(method.search(clean[method.name]), relevant))
            timing.archive_search += time.process_time() - start
            if level == MIXED:
                _calibration(method, encoded, workload, "alpha_hat_mixed", gallery)
            method.release()
            step()
        del inputs
    for name, rows in archive_rows.items():
        records[name]["archive"] = _stack(rows)
    query = workload.query
    queries = {"source": query.sources, "patient": query.patients, "dataset": query.datasets, "modality": query.modalities,
               "relevant": relevant.sum(1).astype(np.int64), **(labels or {})}
    result = Records(list(workload.alphas), [level_name(level) for level in workload.levels], list(VARIANTS), queries, records, gallery)
    return Measured(result, timings, distortion)


def _calibration(method: Method, encoded: Any, workload: Workload, key: str, out: dict[str, np.ndarray]) -> None:
    """Keep the learned metric's â of a gallery (with the slices' datasets, modalities and the mixed level's true α)."""
    alpha_hat = method.alpha_of(encoded)
    if alpha_hat is None:
        return
    out.update({"dataset": workload.gallery.datasets, "modality": workload.gallery.modalities, "mixed_alpha": workload.mixed_alphas, key: alpha_hat})
