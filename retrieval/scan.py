"""`retrieval scan`: summarise an archive per patient and series, and list what could not be used."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Any, Callable, Iterable

import numpy as np

from retrieval.io import Identity, Limits, Series, Skipped, read_archive
from retrieval.io.archive import in_reader, load_series
from retrieval.io.sandbox import Sandbox

Progress = Callable[[str, str], None]  # (event: "file" | "series", path)


def _series_entry(series: Series, read_pixels: bool, limits: Limits | None = None) -> tuple[dict[str, Any], list[Skipped]]:
    """One series' summary; with `read_pixels`, decode it for the value range and real slice count (run in a reader process)."""
    entry: dict[str, Any] = {
        "series_id": series.series_id, "path": series.path, "modality": series.modality, "study_id": series.study_id,
        "n_slices": series.n_slices, "n_files": len(series.files), "shape": list(series.shape),
        "spacing": [round(float(s), 4) for s in series.spacing], "value_range": None, "non_finite_pixels": None,
    }
    if not read_pixels:
        return entry, []
    slices, skipped = load_series(series, limits)
    entry["n_slices"] = len(slices)
    ranges = [_finite_range(s.pixels) for s in slices]  # NaN outside a resampled field of view is not a value
    low, high = min((r[0] for r in ranges), default=math.inf), max((r[1] for r in ranges), default=-math.inf)
    entry["value_range"] = [low, high] if low <= high else None
    entry["non_finite_pixels"] = sum(r[2] for r in ranges)
    return entry, skipped


def _finite_range(pixels: np.ndarray) -> tuple[float, float, int]:
    """A slice's smallest and largest finite value and how many pixels are not finite ((inf, -inf, n) when none is);
    the finite mask is made only for a slice whose plain min or max is not finite, so a normal slice costs two passes."""
    low, high = float(pixels.min()), float(pixels.max())
    if math.isfinite(low) and math.isfinite(high):
        return low, high, 0
    finite = np.isfinite(pixels)
    return float(pixels.min(where=finite, initial=math.inf)), float(pixels.max(where=finite, initial=-math.inf)), int(pixels.size - finite.sum())


def scan_archive(
    paths: Iterable[str | os.PathLike[str]],
    identity: Identity | None = None,
    *,
    slice_axis: int | None = None,
    read_pixels: bool = True,
    progress: Progress | None = None,
    limits: Limits | None = None,
    isolated: bool = True,
) -> dict[str, Any]:
    """Walk `paths` and return the scan report: patients with their series, skipped files, totals.

    With `read_pixels` (the default) every series is decoded, one at a time, so the report has value
    ranges and catches files whose pixel data is corrupt; without it only headers are read. `isolated` (the default):
    files are read in a reader process (retrieval.io.sandbox), so one that crashes a C library or never returns is
    skipped with the reason.
    """
    patients: dict[str, list[dict[str, Any]]] = defaultdict(list)
    skipped: list[Skipped] = []
    identity, limits = identity or Identity(), limits or Limits()
    on_file = (lambda path: progress("file", str(path))) if progress else None
    with Sandbox(identity, memory=limits.reader_bytes()) if isolated else nullcontext() as sandbox:
        for item in read_archive(paths, identity, slice_axis=slice_axis, on_file=on_file, limits=limits, sandbox=sandbox):
            if isinstance(item, Skipped):
                skipped.append(item)
                continue
            if progress:
                progress("series", item.path)
            outcome = in_reader(sandbox, _series_entry, item, read_pixels, limits, limits=limits)
            entry, problems = ({"n_slices": 0}, [outcome]) if isinstance(outcome, Skipped) else outcome
            skipped.extend(problems)
            if entry["n_slices"]:
                patients[item.patient_id].append(entry)
    report_patients = [
        {
            "patient_id": patient,
            "modality": ",".join(sorted({s["modality"] for s in series})),
            "n_slices": sum(s["n_slices"] for s in series),
            "series": sorted(series, key=lambda s: s["path"]),
        }
        for patient, series in sorted(patients.items())
    ]
    return {
        "patients": report_patients,
        "skipped": [{"path": s.path, "reason": s.reason} for s in sorted(skipped, key=lambda s: s.path)],
        "totals": {
            "patients": len(report_patients),
            "series": sum(len(p["series"]) for p in report_patients),
            "slices": sum(p["n_slices"] for p in report_patients),
            "skipped": len(skipped),
        },
    }


def _root(report: dict[str, Any]) -> str:
    """The deepest folder holding every series and skipped path of a report ('' when there are none)."""
    paths = [s["path"] for p in report["patients"] for s in p["series"]] + [s["path"] for s in report["skipped"]]
    if not paths:
        return ""
    root = os.path.commonpath(paths)
    return root if os.path.isdir(root) else os.path.dirname(root)


def _number(value: float) -> str:
    """Compact number: integers without decimals, others to 3 significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def print_report(report: dict[str, Any]) -> None:
    """Print the scan report as rich tables: one row per series, the totals, then the skipped files."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    root = _root(report)
    table = Table(title=f"Series per patient under {root}")
    for column in ("patient", "modality", "source", "slices", "shape", "spacing (mm)", "value range"):
        table.add_column(column, justify="right" if column == "slices" else "left", overflow="fold",
                         no_wrap=column in ("shape", "spacing (mm)"))
    for patient in report["patients"]:
        for number, series in enumerate(patient["series"]):
            value_range = series["value_range"]
            table.add_row(
                patient["patient_id"] if number == 0 else "", series["modality"], os.path.relpath(series["path"], root),
                str(series["n_slices"]), "×".join(map(str, series["shape"])), "×".join(_number(s) for s in series["spacing"]),
                (f"{_number(value_range[0])}…{_number(value_range[1])}" if value_range else "-")
                + (f" ({series['non_finite_pixels']:,} non-finite)" if series["non_finite_pixels"] else ""),
            )
    console.print(table)
    totals = report["totals"]
    console.print(
        f"{totals['patients']} patients, {totals['series']} series, {totals['slices']} slices; "
        f"{totals['skipped']} files skipped"
    )
    if report["skipped"]:
        skipped = Table(title=f"Skipped (under {root})")
        skipped.add_column("path", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for item in report["skipped"]:
            skipped.add_row(os.path.relpath(item["path"], root), item["reason"])
        console.print(skipped)
