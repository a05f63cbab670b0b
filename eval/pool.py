"""Pool several bench runs into one report: `python -m eval.pool RUN_DIR... --out DIR`.

For models benchmarked on different held-out data, e.g. leave-one-dataset-out fold models each run on its own
held-out datasets: the runs' per-query records are concatenated and every figure, interval and breakdown is
recomputed by the same code as a single run's, into the same report.md, results.json and plots. The runs must
share the α grid, archive levels and query variants; methods missing from a run are left out. A patient that
appears in several runs is one patient in the bootstrap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from eval.figures import all_figures
from eval.records import Records, concat
from eval.report import summary_lines
from eval.run import OUTPUTS, versions, write_outputs


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's results.json; ValueError naming the folder when it is missing or has no per-query records."""
    path = Path(run_dir) / OUTPUTS[0]
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {OUTPUTS[0]} (not a bench output folder)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if "per_query" not in results:
        raise ValueError(f"{path}: has no per-query records (written by an older retrieval bench); rerun it")
    return results


def pooled_honesty(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The pool's honesty entry: held-out only when every run was."""
    entries = [r["honesty"] for r in runs]
    warned = [i for i, e in enumerate(entries) if e["statement"].startswith("**")]
    left_out = sum(e["left_out"] for e in entries)
    if warned:
        statement = (f"**Pooled from {len(runs)} runs; {len(warned)} of them may include training data "
                     f"(run{'s' if len(warned) > 1 else ''} {', '.join(str(i + 1) for i in warned)}): these figures are not all held-out.**")
    else:
        statement = f"Held-out data: pooled from {len(runs)} runs, each without its checkpoint's training patients ({left_out} left out in all)."
    return {"include_training": any(e["include_training"] for e in entries), "left_out": left_out,
            "patients": sum(e["patients"] for e in entries), "runs": entries, "statement": statement}


def pooled_data(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over runs (patients in several runs are counted once per run), skipped files listed."""
    data: dict[str, Any] = {"archive_root": ", ".join(sorted({r["data"]["archive_root"] for r in runs}))}
    for key in ("slices", "patients", "gallery", "gallery_patients", "queries", "query_patients"):
        data[key] = sum(r["data"][key] for r in runs)
    data["by_modality"] = {}
    data["by_dataset"] = {}
    for r in runs:
        for modality, count in r["data"]["by_modality"].items():
            data["by_modality"][modality] = data["by_modality"].get(modality, 0) + count
        for name, counts in r["data"].get("by_dataset", {}).items():
            merged = data["by_dataset"].setdefault(name, {"slices": 0, "patients": 0})
            merged["slices"] += counts["slices"]
            merged["patients"] += counts["patients"]
    data["skipped"] = [s for r in runs for s in r["data"]["skipped"]]
    return data


def pool(run_dirs: Sequence[Path], out_dir: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Pool the runs in run_dirs into out_dir; returns the pooled results."""
    started = time.perf_counter()
    runs = [read_run(d) for d in run_dirs]
    records = concat([Records.from_json(r["per_query"], r["alphas"], r["levels"], r["variants"]) for r in runs])
    protocol = runs[0]["protocol"]
    figures = all_figures(records, protocol["resamples"], protocol["seed"])
    names = list(dict.fromkeys(n for r in runs for n in r["methods"]))
    results = {
        "honesty": pooled_honesty(runs),
        "command": " ".join(["python -m eval.pool", *argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "versions": versions(),
        "machine": runs[0]["machine"],
        "checkpoint": [r["checkpoint"] for r in runs],
        "protocol": {**protocol, "archive": {**protocol["archive"], "distortion_seconds": {}}},
        "data": pooled_data(runs),
        "alphas": records.alphas,
        "levels": records.levels,
        "variants": records.variants,
        "paper": runs[0]["paper"],
        "methods": {n: figures["methods"][n] if n in figures["methods"] else {"status": "not run in every pooled run"} for n in names},
        "breakdown": figures["breakdown"],
        "calibration": figures["calibration"],
        "runs": [{"dir": Path(d).name, "command": r["command"], "date": r["date"], "checkpoint": r["checkpoint"]["sha256"][:12],
                  "queries": r["data"]["queries"], "statement": r["honesty"]["statement"]} for d, r in zip(run_dirs, runs)],
        "per_query": records.to_json(),
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, out_dir)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: pool RUN_DIR... into --out; a one-line error and exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m eval.pool", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench output folders (each with results.json)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the pooled report.md, results.json and plots")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"error: {args.out}: --out exists and is not a folder", file=sys.stderr)
        return 2
    try:
        results = pool(args.runs, args.out, list(argv if argv is not None else sys.argv[1:]))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(results):
        print(line)
    print(f"pooled {len(args.runs)} runs ({results['data']['queries']} queries) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
