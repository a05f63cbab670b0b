"""The `retrieval` command line: typer subcommands whose heavy imports happen inside each command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Content-based medical image retrieval with a distortion-aware learned similarity metric.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Patient-identity options shared by every command that reads an archive.
ManifestOpt = Annotated[
    Optional[Path],
    typer.Option("--manifest", help="CSV with relative_path, patient_id[, modality] columns (paths relative to the CSV); wins over headers."),
]
PatientRegexOpt = Annotated[
    Optional[str],
    typer.Option("--patient-regex", help="Regex on the file path whose first group is the patient id (for files without a DICOM PatientID)."),
]
ModalityOpt = Annotated[
    Optional[str],
    typer.Option("--modality", help="CT or MR, for files whose header does not say."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to train on.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: last.pt (resume), best.pt, metrics.csv.")],
    backbone: Annotated[str, typer.Option(help="resnet18, resnet34 or resnet50.")] = "resnet18",
    size: Annotated[int, typer.Option(help="Network input side S (slices are resized to S×S).")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 100,
    batch_patients: Annotated[int, typer.Option(min=2, help="Distinct patients per step (5 views each).")] = 16,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for validation.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    pretrained: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet weights to start the encoder from.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder to cache the resized slices in between runs.")] = None,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the distortion-aware metric (seeded; rerun the same command to resume)."""
    import json

    from retrieval.io import Identity
    from training.loop import TrainConfig
    from training.run import fit

    missing = [str(p) for p in archive if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder")
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_patients=batch_patients,
                         lr=lr, seed=seed, val_fraction=val_fraction, device=device, pretrained=str(pretrained) if pretrained else None)
    try:
        summary = fit(archive, Identity(manifest=manifest, patient_regex=patient_regex, modality=modality), out, config, cache, quiet=json_out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if json_out else f"done: {summary['epochs']} epochs, best checkpoint {out / 'best.pt'}; last epoch {summary['last']}")


@app.command()
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Archive folders or files (DICOM, NIfTI, PNG/JPEG/TIFF).")],
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    slice_axis: Annotated[Optional[int], typer.Option("--slice-axis", min=0, max=2, help="NIfTI canonical axis to slice along (default: largest spacing).")] = None,
    headers_only: Annotated[bool, typer.Option("--headers-only", help="Read headers only: faster, no value ranges or pixel checks.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Summarise an archive per patient and series, with totals and the files that could not be used."""
    import json

    from retrieval.io import Identity
    from retrieval.scan import print_report, scan_archive

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder")
    try:
        identity = Identity(manifest=manifest, patient_regex=patient_regex, modality=modality)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    counts = {"file": 0, "series": 0}
    stderr = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task("scanning", total=None)

        def progress(event: str, path: str) -> None:
            counts[event] += 1
            bar.update(task, description=f"{counts['file']} files, {counts['series']} series: {Path(path).name}")

        report = scan_archive(paths, identity, slice_axis=slice_axis, read_pixels=not headers_only, progress=progress)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
