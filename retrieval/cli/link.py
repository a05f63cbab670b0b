"""`retrieval link`: patients in one or two indexes that look like the same subject (train/test leakage in merged datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from retrieval.cli.common import JsonOpt, fail, folder_path, open_index


def link(
    index_dirs: Annotated[list[Path], typer.Option("--index", callback=folder_path, help="Index directory; give two to link across them (repeatable, at most 2).")],
    threshold: Annotated[Optional[float], typer.Option("--threshold", min=0.0, max=1.0, help="Link pairs closer than this (default: calibrated on the indexes' own ids).")] = None,
    false_rate: Annotated[float, typer.Option("--false-rate", min=0.0, max=1.0, help="Calibration: the largest share of different-patient pairs allowed below the threshold.")] = 0.001,
    ignore_ids: Annotated[bool, typer.Option("--ignore-ids", help="Pair series whatever their patient ids (datasets merged under new names); the ids only grade the result.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Pairs of patients whose series look like the same subject, with a calibrated threshold, its false-match rate and the evidence."""
    import json
    from contextlib import ExitStack

    from retrieval.link import link as run_link

    if len(index_dirs) > 2:
        fail(f"--index: at most two indexes, got {len(index_dirs)}")
    with ExitStack() as stack:
        directories = [stack.enter_context(open_index(path)) for path in index_dirs]
        try:
            result = run_link(directories, [str(p) for p in index_dirs], threshold=threshold, false_rate=false_rate, ignore_ids=ignore_ids)
        except ValueError as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_link(result)


def print_link(result: dict[str, Any], shown: int = 20) -> None:
    """Human summary: the threshold and its rates, the linked pairs with their best slice pair, duplicates, grading."""
    cal = result["calibration"]
    rate = lambda value: "n/a" if value is None else f"{value:.4f}"  # noqa: E731
    source = f"calibrated for a false-match rate ≤ {cal['target']}" if cal["target"] is not None else "given"
    typer.echo(f"threshold {cal['threshold']:.4f} ({source}): false-match rate {rate(cal['false_match_rate'])} on {cal['negatives']} "
               f"different-patient series pairs, recall {rate(cal['recall'])} on {cal['positives']} same-patient pairs")
    pairs = result["pairs"]
    typer.echo(f"{len(pairs)} linked {result['unit']} pair(s)" + (":" if pairs else ""))
    for pair in pairs[:shown]:
        a, b, best = pair["a"], pair["b"], pair["evidence"][0]
        name = lambda side: f"{side['patient_id']}" + (f" / {side['series_id']}" if "series_id" in side else "")  # noqa: E731
        typer.echo(f"  {pair['distance']:.4f}  {name(a)}  ~  {name(b)}" + ("  (same id)" if pair["same_id"] else "")
                   + f"\n           best slices: {best['a']['path']} [{best['a']['slice_index']}] ~ {best['b']['path']} [{best['b']['slice_index']}] {best['distance']:.4f}")
    if len(pairs) > shown:
        typer.echo(f"  … and {len(pairs) - shown} more (--json lists all)")
    for dup in result["duplicates"]:
        typer.echo("duplicate files: " + "  =  ".join(f"{f['path']} ({f['patient_id']})" for f in dup["files"]))
    if "grading" in result:
        g = result["grading"]
        typer.echo(f"against the ids: {g['true_pairs']} true and {g['false_pairs']} false pairs; recall {rate(g['recall'])}, "
                   f"false-match rate {rate(g['false_match_rate'])}"
                   + (f"; {g['patients_regrouped']} of {g['patients_with_several_series']} patients with several series regrouped whole"
                      if "patients_regrouped" in g else ""))
