"""What `retrieval info` and `retrieval qc` report about an index directory."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from indexer.directory import IndexDirectory

ALPHA_BINS = np.linspace(0.0, 1.0, 11)


def info(directory: IndexDirectory) -> dict[str, Any]:
    """Counts by modality and patient, α histogram, size on disk, index kind and checkpoint."""
    alphas = np.array([row[0] for row in directory.catalog.table(["alpha"])], dtype=np.float64)
    counts, _ = np.histogram(alphas, bins=ALPHA_BINS)
    series, complete = directory.catalog.series_count()
    by_patient = directory.catalog.counts("patient_id")
    return {
        "index": str(directory.path),
        "slices": int(len(alphas)),
        "patients": len(by_patient),
        "series": series,
        "series_incomplete": series - complete,
        "by_modality": directory.catalog.counts("modality"),
        "by_patient": dict(sorted(by_patient.items())),
        "alpha_histogram": {"edges": [round(float(e), 2) for e in ALPHA_BINS], "counts": counts.tolist()},
        "size_bytes": sum(p.stat().st_size for p in directory.path.iterdir() if p.is_file()),
        "index_type": directory.manifest.index,
        "vectors": {"dim": directory.store.dim, "layout_columns": directory.layout, "query_views": directory.query_views},
        "checkpoint": {"sha256": directory.manifest.checkpoint_sha256, "path": directory.manifest.checkpoint_path},
        "repaired_on_open": {"added": directory.repair.added, "removed": directory.repair.removed},
    }


def quality_control(directory: IndexDirectory, above: float, relative: bool = False) -> dict[str, Any]:
    """Series and slices whose predicted α exceeds `above` (worst series first): a list for archive teams.

    `relative`: a slice is flagged when its α exceeds its own series' median α by more than `above`, so a scanner or
    protocol the model reads as noisier than it is does not flag every slice (docs/training.md, â on unseen data).
    """
    columns = ["patient_id", "series_id", "modality", "path", "slice_index", "alpha"]
    rows = directory.catalog.table(columns, above=None if relative else above)
    by_series = _series_alphas(rows) if relative else {}  # relative reads every row: the series sizes come with them
    sizes = {series_id: len(values) for series_id, values in by_series.items()} if relative else directory.catalog.counts("series_id")
    medians = {series_id: float(np.median(values)) for series_id, values in by_series.items()}
    flagged: dict[str, dict[str, Any]] = {}
    for patient, series_id, modality, path, index, alpha in rows:
        excess = float(alpha) - medians.get(series_id, 0.0)
        if relative and excess <= above:
            continue
        entry = flagged.setdefault(series_id, {"patient_id": patient, "series_id": series_id, "modality": modality,
                                               "n_slices": sizes.get(series_id, 0), "slices": []})
        if relative:
            entry["median_alpha"] = round(medians[series_id], 4)
        entry["slices"].append({"path": path, "slice_index": index, "alpha": round(float(alpha), 4)}
                               | ({"excess": round(excess, 4)} if relative else {}))
    for entry in flagged.values():
        entry["n_above"] = len(entry["slices"])
        entry["max_alpha"] = max(s["alpha"] for s in entry["slices"])
        if relative:
            entry["max_excess"] = max(s["excess"] for s in entry["slices"])
    key = "max_excess" if relative else "max_alpha"
    series = sorted(flagged.values(), key=lambda e: (-e[key], e["series_id"]))
    patients: dict[str, int] = defaultdict(int)
    for entry in series:
        patients[entry["patient_id"]] += entry["n_above"]
    return {"above": above, "relative": relative, "slices": sum(e["n_above"] for e in series), "series": series, "patients": dict(patients)}


def _series_alphas(rows: list[tuple]) -> dict[str, list[float]]:
    """Predicted α of each series' slices, from (…, series_id, …, alpha) catalog rows."""
    by_series: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_series[row[1]].append(float(row[-1]))
    return by_series


def print_info(summary: dict[str, Any]) -> None:
    """Human-readable `info`."""
    modalities = ", ".join(f"{m} {n}" for m, n in sorted(summary["by_modality"].items()))
    print(f"{summary['index']}: {summary['slices']} slices of {summary['patients']} patients in {summary['series']} series ({modalities}); "
          f"{summary['size_bytes'] / 2**20:.1f} MiB on disk; {summary['vectors']['dim']}-d vectors"
          + (f" ending in a {summary['vectors']['layout_columns']}-column layout (queries search {summary['vectors']['query_views']} flips/turns)"
             if summary["vectors"]["layout_columns"] else "")
          + f"; index {summary['index_type'].get('kind')}"
          + (f", recall@10 {summary['index_type']['recall_at_10']}" if "recall_at_10" in summary["index_type"] else ""))
    if summary["series_incomplete"]:
        print(f"{summary['series_incomplete']} series are incomplete (an interrupted run): rerun `retrieval index` to finish them")
    histogram = summary["alpha_histogram"]
    print("predicted α: " + "  ".join(f"{lo:.1f}-{hi:.1f}: {n}" for lo, hi, n in zip(histogram["edges"], histogram["edges"][1:], histogram["counts"])))
    print("slices per patient: " + ", ".join(f"{p} {n}" for p, n in summary["by_patient"].items()))


def print_qc(report: dict[str, Any]) -> None:
    """Human-readable `qc`: one line per flagged series, then its slices."""
    relative = report.get("relative", False)
    where = f"more than {report['above']} above their series' median" if relative else f"above {report['above']}"
    print(f"{report['slices']} slices in {len(report['series'])} series have predicted α {where}")
    for entry in report["series"]:
        median = f", series median α {entry['median_alpha']:.3f}" if relative else ""
        print(f"{entry['patient_id']}  {entry['modality']}  {entry['series_id']}: {entry['n_above']}/{entry['n_slices']} slices, max α {entry['max_alpha']:.3f}{median}")
        for s in entry["slices"]:
            print(f"    α {s['alpha']:.3f}  {s['path']} [slice {s['slice_index']}]")
