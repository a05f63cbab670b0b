"""`retrieval bench`: retrieval under distortion, the learned metric against classical baselines, on held-out patients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import GroupRegexOpt, ManifestOpt, ModalityOpt, PatientRegexOpt, fail, file_path, folder_path, identity_options, require


def _names(value: Optional[str]) -> tuple[str, ...]:
    """A comma-separated option as a tuple of non-empty names."""
    return tuple(n.strip() for n in value.split(",") if n.strip()) if value else ()


def bench(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to benchmark on.")],
    out: Annotated[Path, typer.Option("--out", callback=folder_path, help="Folder for report.md, results.json and the plots.")],
    checkpoint: Annotated[Optional[Path], typer.Option(callback=file_path, help="Model checkpoint (default: the shipped one); its input size is the working grid.")] = None,
    alphas: Annotated[Optional[str], typer.Option("--alphas", help="Comma-separated α grid including 0, for both protocols (default 0,0.2,…,1; --quick: 0,0.4,0.8).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated: learned,mse,ssim,ncc,mi,grad,cwssim,dino (default: all).")] = None,
    max_queries: Annotated[Optional[int], typer.Option("--max-queries", min=1, max=100_000, help="Cap on query slices, kept round-robin over patients (default 128; --quick: 24).")] = None,
    gallery_per_patient: Annotated[Optional[int], typer.Option("--gallery-per-patient", min=0, max=100_000, help="Cap on gallery slices per patient, seeded; 0: no cap (default 32; --quick: 8).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="Seeds the query split, the distortions and the bootstrap.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer α, queries and gallery slices: a check in about a minute.")] = False,
    include_training: Annotated[bool, typer.Option("--include-training", help="Keep the checkpoint's training patients (the report's first line then says so).")] = False,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated datasets to keep (manifest dataset column or --group-regex).")] = None,
    exclude_datasets: Annotated[Optional[str], typer.Option("--exclude-datasets", help="Comma-separated datasets to leave out.")] = None,
    redact_paths: Annotated[bool, typer.Option("--redact-paths", help="Name slices by series digest and patients by digest in the report and JSON.")] = False,
    dino_weights: Annotated[Optional[Path], typer.Option("--dino-weights", callback=file_path, help="DINO ViT weights file (default: the torch hub cache; without weights DINO is not run).")] = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Torch threads (1 is fastest on shared cores).")] = 1,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    group_regex: GroupRegexOpt = None,
    modality: ModalityOpt = None,
) -> None:
    """Benchmark retrieval under distortion (query and archive protocols) on patients the checkpoint never trained on, with bootstrap CIs."""
    import sys

    from eval.methods import METHODS
    from eval.protocol import ALPHAS, GALLERY_PER_PATIENT, MAX_QUERIES, QUICK_ALPHAS, QUICK_GALLERY_PER_PATIENT, QUICK_MAX_QUERIES
    from eval.report import summary_lines
    from eval.run import OUTPUTS, BenchConfig
    from eval.run import bench as run_bench

    require(archive)
    identity = identity_options(manifest, patient_regex, modality, group_regex)
    try:
        grid = tuple(float(a) for a in alphas.split(",")) if alphas else (QUICK_ALPHAS if quick else ALPHAS)
    except ValueError:
        fail(f"--alphas must be comma-separated numbers, got {alphas!r}")
    cap = gallery_per_patient if gallery_per_patient is not None else (QUICK_GALLERY_PER_PATIENT if quick else GALLERY_PER_PATIENT)
    config = BenchConfig(alphas=grid, methods=_names(methods) or METHODS, max_queries=max_queries or (QUICK_MAX_QUERIES if quick else MAX_QUERIES),
                         seed=seed, quick=quick, gallery_per_patient=cap or None, checkpoint=checkpoint, dino_weights=dino_weights,
                         threads=threads, include_training=include_training, datasets=_names(datasets),
                         exclude_datasets=_names(exclude_datasets), redact_paths=redact_paths)
    try:
        results = run_bench(archive, identity, out, config, ["retrieval", *sys.argv[1:]])
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for line in summary_lines(results):
        typer.echo(line)
    typer.echo(f"wrote {', '.join(str(out / name) for name in OUTPUTS)} in {results['seconds']:.0f} s")
