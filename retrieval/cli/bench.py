"""`retrieval bench`: retrieval under distortion, the learned metric against classical baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import ManifestOpt, ModalityOpt, PatientRegexOpt, fail, identity_options, require

def bench(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to benchmark on.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, results.json, retrieval.png and distance.png.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Model checkpoint (default: the shipped one); its input size is the working grid.")] = None,
    alphas: Annotated[Optional[str], typer.Option("--alphas", help="Comma-separated α grid including 0 (default 0,0.1,…,1; --quick: 0,0.2,…,1).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated: learned,mse,ssim,ncc,mi,grad,cwssim,dino (default: all).")] = None,
    max_queries: Annotated[Optional[int], typer.Option("--max-queries", min=1, help="Cap on query slices, kept round-robin over patients (default 128; --quick: 24).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the query split, the distortions and the bootstrap.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer α, queries and gallery slices (at most 8 per patient): a check that fits in 2 minutes.")] = False,
    dino_weights: Annotated[Optional[Path], typer.Option("--dino-weights", help="DINO ViT weights file (default: the torch hub cache; without weights DINO is not run).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads (1 is fastest on shared cores).")] = 1,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
) -> None:
    """Benchmark retrieval under distortion: the learned metric against classical similarity measures, with bootstrap CIs."""
    import shlex
    import sys

    from eval.methods import METHODS
    from eval.protocol import ALPHAS, MAX_QUERIES, QUICK_ALPHAS, QUICK_GALLERY_PER_PATIENT, QUICK_MAX_QUERIES
    from eval.report import summary_lines
    from eval.run import OUTPUTS, BenchConfig
    from eval.run import bench as run_bench

    require(archive)
    identity = identity_options(manifest, patient_regex, modality)
    try:
        grid = tuple(float(a) for a in alphas.split(",")) if alphas else (QUICK_ALPHAS if quick else ALPHAS)
    except ValueError:
        fail(f"--alphas must be comma-separated numbers, got {alphas!r}")
    names = tuple(n.strip() for n in methods.split(",") if n.strip()) if methods else METHODS
    config = BenchConfig(alphas=grid, methods=names, max_queries=max_queries or (QUICK_MAX_QUERIES if quick else MAX_QUERIES), seed=seed,
                         quick=quick, gallery_per_patient=QUICK_GALLERY_PER_PATIENT if quick else None, checkpoint=checkpoint,
                         dino_weights=dino_weights, threads=threads)
    try:
        results = run_bench(archive, identity, out, config, shlex.join(["retrieval", *sys.argv[1:]]))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for line in summary_lines(results):
        typer.echo(line)
    typer.echo(f"wrote {', '.join(str(out / name) for name in OUTPUTS)} in {results['seconds']:.0f} s")

