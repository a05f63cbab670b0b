"""The held-out benchmark of a recipe: `retrieval bench` of every fold model on its own held-out datasets, pooled.

Run: python benchmarks/bench_folds.py runs/folds/* --archive ../shared/data --out docs/bench-folds [--quick]
(the committed report: runs/folds-alpha/*/ --out docs/bench-folds --quick --redact-paths --layout 0.5 --layout-map silhouette,
where runs/folds-alpha/FOLD/final.pt is `retrieval calibrate` of runs/folds-d4/FOLD/final.pt on its training patients)
Each fold model (FOLD/final.pt) is benchmarked on the datasets its config held out (the bench leaves the
model's training patients out by their digests anyway), then `python -m eval.pool` pools the per-query
records into one report: every figure there comes from models that never saw the data they are measured on.
`--layout W` benchmarks each fold model with that layout weight (a copy with only its config changed: the weight
acts at inference, training never sees it), e.g. 0 for the learned code alone; `--layout-map` likewise swaps what the
layout is (intensity thumbnail or silhouette).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from retrieval.checkpoint import load_checkpoint, save_checkpoint
from retrieval.model import LAYOUT_MAPS


def main() -> None:
    """Bench each fold, then pool."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folds", nargs="+", type=Path, help="fold run folders holding final.pt")
    parser.add_argument("--archive", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redact-paths", action="store_true")
    parser.add_argument("--layout", type=float, help="layout weight to benchmark the fold models with (default: their own)")
    parser.add_argument("--layout-map", choices=sorted(LAYOUT_MAPS), help="layout map to benchmark them with (default: their own)")
    args = parser.parse_args()
    runs = []
    for fold in args.folds:
        checkpoint = fold / "final.pt"
        model, config = load_checkpoint(checkpoint)
        held_out = config.get("held_out_datasets") or []
        if not held_out:
            sys.exit(f"{checkpoint}: not a fold model (its config holds out no dataset)")
        run_dir = args.out / "folds" / fold.name
        changed = {k: v for k, v in (("layout", args.layout), ("layout_map", args.layout_map)) if v is not None}
        if changed:
            name = "-".join(f"{k}-{v}" for k, v in changed.items())
            checkpoint = save_checkpoint(fold / f"{name}.pt", model, config | changed, half=True)
        command = [sys.executable, "-m", "retrieval.cli", "bench", str(args.archive), "--manifest", str(args.archive / "manifest.csv"),
                   "--checkpoint", str(checkpoint), "--datasets", ",".join(held_out), "--out", str(run_dir)]
        command += ["--quick"] * args.quick + ["--redact-paths"] * args.redact_paths
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        runs.append(str(run_dir))
    subprocess.run([sys.executable, "-m", "eval.pool", *runs, "--out", str(args.out)], check=True)


if __name__ == "__main__":
    main()
