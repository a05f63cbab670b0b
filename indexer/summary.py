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
        "checkpoint": {"sha256": directory.manifest.checkpoint_sha256, "path": directory.manifest.checkpoint_path},
        "repaired_on_open": {"added": directory.repair.added, "removed": directory.repair.removed},
    }


def quality_control(directory: IndexDirectory, above: float) -> dict[str, Any]:
    """Series and slices whose predicted α exceeds `above` (worst series first): a list for archive teams."""
    columns = ["patient_id", "series_id", "modality", "path", "slice_index", "alpha"]
    sizes = directory.catalog.counts("series_id")
    flagged: dict[str, dict[str, Any]] = {}
    for patient, series_id, modality, path, index, alpha in directory.catalog.table(columns, above=above):
        entry = flagged.setdefault(series_id, {"patient_id": patient, "series_id": series_id, "modality": modality,
                                               "n_slices": sizes.get(series_id, 0), "slices": []})
        entry["slices"].append({"path": path, "slice_index": index, "alpha": round(float(alpha), 4)})
    for entry in flagged.values():
        entry["n_above"] = len(entry["slices"])
        entry["max_alpha"] = max(s["alpha"] for s in entry["slices"])
    series = sorted(flagged.values(), key=lambda e: (-e["max_alpha"], e["series_id"]))
    patients: dict[str, int] = defaultdict(int)
    for entry in series:
        patients[entry["patient_id"]] += entry["n_above"]
    return {"above": above, "slices": sum(e["n_above"] for e in series), "series": series, "patients": dict(patients)}


def print_info(summary: dict[str, Any]) -> None:
    """Human-readable `info`."""
    modalities = ", ".join(f"{m} {n}" for m, n in sorted(summary["by_modality"].items()))
    print(f"{summary['index']}: {summary['slices']} slices of {summary['patients']} patients in {summary['series']} series ({modalities}); "
          f"{summary['size_bytes'] / 2**20:.1f} MiB on disk; index {summary['index_type'].get('kind')}"
          + (f", recall@10 {summary['index_type']['recall_at_10']}" if "recall_at_10" in summary["index_type"] else ""))
    if summary["series_incomplete"]:
        print(f"{summary['series_incomplete']} series are incomplete (an interrupted run): rerun `retrieval index` to finish them")
    histogram = summary["alpha_histogram"]
    print("predicted α: " + "  ".join(f"{lo:.1f}-{hi:.1f}: {n}" for lo, hi, n in zip(histogram["edges"], histogram["edges"][1:], histogram["counts"])))
    print("slices per patient: " + ", ".join(f"{p} {n}" for p, n in summary["by_patient"].items()))


def print_qc(report: dict[str, Any]) -> None:
    """Human-readable `qc`: one line per flagged series, then its slices."""
    print(f"{report['slices']} slices in {len(report['series'])} series have predicted α above {report['above']}")
    for entry in report["series"]:
        print(f"{entry['patient_id']}  {entry['modality']}  {entry['series_id']}: {entry['n_above']}/{entry['n_slices']} slices, max α {entry['max_alpha']:.3f}")
        for s in entry["slices"]:
            print(f"    α {s['alpha']:.3f}  {s['path']} [slice {s['slice_index']}]")
