"""`retrieval bench` end to end: read and select the archive, build the workload, measure every method, write the outputs."""

from __future__ import annotations

import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from eval.figures import all_figures
from eval.measure import measure
from eval.methods import create_methods
from eval.plots import plot_calibration, plot_distances, plot_retrieval
from eval.protocol import MIXED, QUERIES_PER_PATIENT, RESAMPLES, VARIANTS, Workload, build_workload, check_alphas
from eval.records import dumps
from eval.report import PAPER, write_report
from eval.selection import Names, archive_root, held_out, select_datasets
from retrieval import TAU, __version__
from retrieval.checkpoint import DEFAULT_CHECKPOINT
from retrieval.io import Identity, Skipped
from retrieval.metric import BETA, DistortionAwareMetric
from retrieval.slices import SliceSet, load_slices

OUTPUTS = ("results.json", "report.md", "retrieval.png", "distance.png", "calibration.png")
VARIANT_TEXT = {"flip": "flipped left-right", "rot90": "turned 90° counter-clockwise",
                "half": "downsampled ×2 on the working grid (antialiased) and resampled back"}


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
    include_training: bool = False
    datasets: tuple[str, ...] = ()
    exclude_datasets: tuple[str, ...] = ()
    redact_paths: bool = False


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries the figures depend on."""
    import faiss
    import scipy
    import sklearn

    return {"retrieval": __version__, "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "faiss": faiss.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}


def command_line(argv: Sequence[str], names: Names) -> str:
    """The command as run, with every existing path under the archive root shown as the report names it."""
    import shlex

    def shown(token: str) -> str:
        path = Path(token)
        if not token or token.startswith("-") or not path.exists():
            return token
        resolved = path.resolve()
        if resolved == names.root:
            return "ARCHIVE"
        return f"ARCHIVE/{names.path(resolved)}" if names.root in resolved.parents else token

    return shlex.join([shown(t) for t in argv])


def checkpoint_name(path: Path | None) -> str:
    """The checkpoint as reports name it: relative to the working folder when inside it, else its file name."""
    path = Path(path or DEFAULT_CHECKPOINT).resolve()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.name


def data_summary(data: SliceSet, workload: Workload, skipped: list[Skipped], names: Names) -> dict[str, Any]:
    """Counts of slices, patients, datasets, gallery and queries, and the files that could not be read."""
    modalities, counts = np.unique(data.modalities, return_counts=True)
    datasets = {(d or "(none)"): {"slices": int((data.datasets == d).sum()), "patients": int(len(np.unique(data.patients[data.datasets == d])))}
                for d in sorted(set(data.datasets.tolist()))}
    return {
        "archive_root": names.root.name, "slices": len(data), "patients": int(len(np.unique(data.patients))),
        "by_modality": dict(zip(modalities.tolist(), counts.tolist())), "by_dataset": datasets,
        "gallery": len(workload.gallery), "gallery_patients": int(len(np.unique(workload.gallery.patients))),
        "queries": len(workload.query), "query_patients": int(len(np.unique(workload.query.patients))),
        "skipped": [{"path": names.path(s.path), "reason": s.reason} for s in skipped],
    }


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and the three PNG plots in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / OUTPUTS[0]
    json_path.write_text(dumps(results), encoding="utf-8")
    return [json_path, write_report(results, out_dir / OUTPUTS[1]), plot_retrieval(results, out_dir / OUTPUTS[2]),
            plot_distances(results, out_dir / OUTPUTS[3]), plot_calibration(results, out_dir / OUTPUTS[4])]


def protocol_settings(config: BenchConfig, workload: Workload, distortion_seconds: dict[str, float]) -> dict[str, Any]:
    """results.json's `protocol`: how queries, galleries and intervals were made."""
    return {"seed": config.seed, "quick": config.quick, "queries_per_patient": QUERIES_PER_PATIENT, "max_queries": config.max_queries,
            "gallery_per_patient": config.gallery_per_patient, "resamples": RESAMPLES, "confidence": 0.95, "tau": TAU, "beta": BETA,
            "relevance": "same patient",
            "baseline_input": "channel 0 of the network input: CT soft-tissue window 40/400 HU, MR percentile-normalised",
            "query": "each query distorted at every α with its own seed, against the clean gallery",
            "archive": {"description": "clean queries against the gallery with every slice distorted with its own seed, at each α of the grid "
                                       f"and at its own α ~ U(0, 1) ('{MIXED}')", "levels": [str(v) for v in workload.levels],
                        "distortion_seconds": distortion_seconds},
            "variants": {name: VARIANT_TEXT[name] for name in VARIANTS}}


def bench(paths: Sequence[Path], identity: Identity, out_dir: Path, config: BenchConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark and write its outputs; ValueError / FileNotFoundError name bad input before the long part."""
    import faiss

    started, cpu_started = time.perf_counter(), time.process_time()
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
        data = select_datasets(load_slices(paths, identity, metric.size, on_skip=skipped.append, native_views=False), config.datasets, config.exclude_datasets)
        data, honesty = held_out(data, metric.config, config.include_training)
        workload = build_workload(data, alphas, config.seed, QUERIES_PER_PATIENT, config.max_queries, config.gallery_per_patient)
    names = Names(archive_root(paths, identity.manifest), config.redact_paths)
    console.print(honesty.statement().strip("*"))
    console.print(f"bench: {len(workload.gallery)} gallery slices, {len(workload.query)} queries; query protocol {len(alphas)} α, "
                  f"archive protocol {len(workload.levels) - 1} distorted galleries, {len(VARIANTS)} query variants; {len(methods)} methods "
                  f"({len(skipped)} files skipped)")
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("bench", total=len(methods) * (len(alphas) + len(VARIANTS) + len(workload.levels) - 1))
        measured = measure(methods, workload, lambda: bar.advance(task), names.sources(workload.query))
    figures = all_figures(measured.records, RESAMPLES, config.seed)
    results = {
        "honesty": honesty.to_json(),
        "command": command_line(argv, names),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "versions": versions(),
        "machine": {"description": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
                    "device": str(metric.device)},
        "checkpoint": {"path": checkpoint_name(config.checkpoint), "sha256": metric.checkpoint_hash, "size": metric.size,
                       "backbone": metric.config.get("backbone"), "epoch": metric.config.get("epoch"),
                       "invariance": metric.config.get("invariance", "none"), "layout": float(metric.config.get("layout", 0.0))},
        "protocol": protocol_settings(config, workload, measured.distortion_seconds),
        "data": data_summary(data, workload, skipped, names),
        "alphas": list(alphas),
        "levels": measured.records.levels,
        "variants": measured.records.variants,
        "paper": PAPER,
        "methods": {name: {**figures["methods"][name], "timing": measured.timings[name].to_json(len(workload.levels) - 1)}
                    if name in figures["methods"] else {"status": unavailable[name]} for name in config.methods},
        "breakdown": figures["breakdown"],
        "calibration": figures["calibration"],
        "per_query": measured.records.to_json(),
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    write_outputs(results, out_dir)
    return results
