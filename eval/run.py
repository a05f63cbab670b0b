"""`retrieval bench` end to end: read the archive, build the workload, run every method, write JSON, report and plots."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from eval.figures import MethodRun, summarise
from eval.methods import Method, create_methods
from eval.metrics import average_precision
from eval.plots import plot_distances, plot_retrieval
from eval.protocol import QUERIES_PER_PATIENT, RESAMPLES, Workload, build_workload, check_alphas
from eval.report import PAPER, write_report
from retrieval import TAU, __version__
from retrieval.checkpoint import DEFAULT_CHECKPOINT
from retrieval.io import Identity, Skipped
from retrieval.metric import BETA, DistortionAwareMetric
from retrieval.slices import SliceSet, load_slices

OUTPUTS = ("results.json", "report.md", "retrieval.png", "distance.png")


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run was asked to do."""

    alphas: tuple[float, ...]
    methods: tuple[str, ...]
    max_queries: int | None
    seed: int
    quick: bool
    gallery_per_patient: int | None = None
    checkpoint: Path | None = None
    dino_weights: Path | None = None
    threads: int = 1
    device: str = "auto"


def run_method(method: Method, workload: Workload, on_step: Callable[[], None] = lambda: None) -> MethodRun:
    """Prepare the gallery, then at every α encode the queries, rank the gallery and measure the pairs (x, D_α(x))."""
    start = time.perf_counter()
    method.prepare(workload.gallery)
    gallery_seconds = time.perf_counter() - start
    relevant = workload.relevant
    steps, count = len(workload.alphas), len(workload.query_patients)
    ap, track = np.empty((steps, count)), np.empty((steps, count))
    spent, clean, identity = 0.0, None, np.empty(0)
    for step in range(steps):
        inputs = workload.queries(step)
        start = time.perf_counter()
        encoded = method.encode(inputs)
        distances = method.search(encoded)
        spent += time.perf_counter() - start
        ap[step] = average_precision(distances, relevant)
        if clean is None:  # alphas[0] == 0: the clean queries
            clean = encoded
            identity = np.ma.masked_array(method.to_gallery(encoded), mask=relevant).mean(axis=1).filled(np.nan)
        track[step] = method.paired(clean, encoded)
        on_step()
    return MethodRun(ap, track, identity, spent / (steps * count), gallery_seconds)


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries the figures depend on."""
    import faiss
    import scipy
    import sklearn

    return {"retrieval": __version__, "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "faiss": faiss.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}


def data_summary(paths: Sequence[Path], data: SliceSet, workload: Workload, skipped: list[Skipped]) -> dict[str, Any]:
    """Counts of slices, patients, gallery and queries, and the files that could not be read."""
    modalities, counts = np.unique(data.modalities, return_counts=True)
    return {
        "archive": [str(p) for p in paths], "slices": len(data), "patients": int(len(np.unique(data.patients))),
        "by_modality": dict(zip(modalities.tolist(), counts.tolist())),
        "gallery": len(workload.gallery_patients), "gallery_patients": int(len(np.unique(workload.gallery_patients))),
        "queries": len(workload.query_patients), "query_patients": int(len(np.unique(workload.query_patients))),
        "query_sources": workload.query_sources.tolist(), "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
    }


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and the two PNG plots in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / OUTPUTS[0]
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return [json_path, write_report(results, out_dir / OUTPUTS[1]), plot_retrieval(results, out_dir / OUTPUTS[2]),
            plot_distances(results, out_dir / OUTPUTS[3])]


def bench(paths: Sequence[Path], identity: Identity, out_dir: Path, config: BenchConfig, command: str) -> dict[str, Any]:
    """Run the benchmark and write its outputs; ValueError / FileNotFoundError name bad input before the long part."""
    import faiss

    started = time.perf_counter()
    torch.set_num_threads(config.threads)  # many times faster on shared cores (docs/benchmarks.md)
    faiss.omp_set_num_threads(config.threads)
    alphas = check_alphas(config.alphas)
    metric = DistortionAwareMetric.load(config.checkpoint, config.device)
    methods, unavailable = create_methods(config.methods, metric, config.dino_weights)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: --out exists and is not a folder")
    console = Console(stderr=True, soft_wrap=True)
    skipped: list[Skipped] = []
    with console.status("reading the archive", spinner="dots") if console.is_terminal else nullcontext():
        data = load_slices(paths, identity, metric.size, on_skip=skipped.append)
        workload = build_workload(data, alphas, config.seed, QUERIES_PER_PATIENT, config.max_queries, config.gallery_per_patient)
    console.print(f"bench: {len(workload.gallery_patients)} gallery slices, {len(workload.query_patients)} queries × {len(alphas)} α, "
                  f"{len(methods)} methods ({len(skipped)} files skipped)")
    figures: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("bench", total=len(methods) * len(alphas))
        while methods:
            method = methods.pop(0)  # drop each gallery's statistics once the method is done
            bar.update(task, description=method.name)
            run = run_method(method, workload, lambda: bar.advance(task))
            figures[method.name] = summarise(run, alphas, workload.query_patients, RESAMPLES, config.seed)
            console.print(f"{method.name}: {run.seconds_per_query:.3f} s/query, mAP(0) {figures[method.name]['map'][0]:.3f}")
    results = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "versions": versions(),
        "machine": {"description": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
                    "device": str(metric.device)},
        "checkpoint": {"path": str(config.checkpoint or DEFAULT_CHECKPOINT), "sha256": metric.checkpoint_hash,
                       "size": metric.size, "backbone": metric.config.get("backbone"), "epoch": metric.config.get("epoch")},
        "protocol": {"seed": config.seed, "quick": config.quick, "queries_per_patient": QUERIES_PER_PATIENT, "max_queries": config.max_queries,
                     "gallery_per_patient": config.gallery_per_patient,
                     "resamples": RESAMPLES, "confidence": 0.95, "tau": TAU, "beta": BETA, "relevance": "same patient",
                     "baseline_input": "channel 0 of the network input: CT soft-tissue window 40/400 HU, MR percentile-normalised"},
        "data": data_summary(paths, data, workload, skipped),
        "alphas": list(alphas),
        "paper": PAPER,
        "methods": {name: figures[name] if name in figures else {"status": unavailable[name]} for name in config.methods},
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, out_dir)
    return results

