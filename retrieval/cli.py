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


def _require(paths: list[Path]) -> None:
    """One-line error for the first path that does not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder")


def _identity(manifest: Optional[Path], patient_regex: Optional[str], modality: Optional[str]):  # type: ignore[no-untyped-def]
    """The shared identity options as a reader Identity, or a one-line error."""
    from retrieval.io import Identity

    try:
        return Identity(manifest=manifest, patient_regex=patient_regex, modality=modality)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


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

    from retrieval.scan import print_report, scan_archive

    _require(paths)
    identity = _identity(manifest, patient_regex, modality)
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


@app.command()
def distort(
    path: Annotated[Path, typer.Argument(help="A DICOM/NIfTI/image file or a series folder.")],
    out: Annotated[Path, typer.Option("--out", help="Montage image to write (PNG; the extension picks the format).")],
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", min=0.0, max=1.0, help="Severity α (repeatable; default 0 0.1 0.3 0.5 0.7 1).")] = None,
    slice_index: Annotated[Optional[int], typer.Option("--slice", min=0, help="Slice of the volume (default: the middle one).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Distortion seed, the same for every panel.")] = 0,
    size: Annotated[int, typer.Option(min=8, help="Working grid: the slice is resized to size×size first, as for training.")] = 256,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
) -> None:
    """Write a montage of one slice at several distortion severities α (CT low dose, MR k-space corruption)."""
    from retrieval.io import read_path

    identity = _identity(manifest, patient_regex, modality)
    try:
        slices = read_path(path, identity)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    index = len(slices) // 2 if slice_index is None else slice_index
    if index >= len(slices):
        fail(f"{path}: --slice {index} is out of range, it has {len(slices)} slices (0–{len(slices) - 1})")
    item = slices[index]
    if item.modality not in ("CT", "MR"):
        fail(f"{item.path}: modality {item.modality!r} has no distortion; pass --modality CT or MR")
    if not out.parent.is_dir():
        fail(f"{out.parent}: no such folder for --out")
    from retrieval.distortions.montage import render

    levels = alpha or [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    try:
        render(item, levels, out, seed=seed, size=size)
    except ValueError as exc:
        fail(f"{out}: {exc}")
    typer.echo(f"wrote {out}: {Path(item.path).name} slice {index} ({item.modality}) at α = {', '.join(f'{a:g}' for a in levels)}")


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

    from training.loop import TrainConfig
    from training.run import fit

    _require(archive)
    identity = _identity(manifest, patient_regex, modality)
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_patients=batch_patients,
                         lr=lr, seed=seed, val_fraction=val_fraction, device=device, pretrained=str(pretrained) if pretrained else None)
    try:
        summary = fit(archive, identity, out, config, cache, quiet=json_out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if json_out else f"done: {summary['epochs']} epochs, best checkpoint {out / 'best.pt'}; last epoch {summary['last']}")


IndexDirOpt = Annotated[Path, typer.Option("--index", help="Index directory (manifest.json, catalog.sqlite, vectors.faiss).")]


@app.command()
def index(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to index.")],
    index_dir: IndexDirOpt,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Model checkpoint (default: the shipped one).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per model batch and per catalog transaction.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Worker processes that read and preprocess (0: in the main process; default: half the CPUs, at most 8).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    index_type: Annotated[str, typer.Option("--index-type", help="flat (exact) or ivfpq (approximate, for large archives; reports recall@10).")] = "flat",
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Embed an archive into an index directory (incremental: reruns embed only new or changed series)."""
    import json

    from indexer.directory import IndexBusy
    from indexer.manifest import IndexMismatch
    from indexer.pipeline import build_index, print_report

    _require(archive)
    identity = _identity(manifest, patient_regex, modality)
    try:
        report = build_index(archive, index_dir, identity, checkpoint=checkpoint, device=device, batch_size=batch_size,
                             workers=workers, kind=index_type, show_progress=not json_out)
    except (ValueError, FileNotFoundError, IndexMismatch, IndexBusy) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)


def _open_index(index_dir: Path, writable: bool = False):  # type: ignore[no-untyped-def]
    """Open an index directory (consistency check included), or a one-line error."""
    from indexer.directory import IndexBusy, IndexDirectory
    from indexer.manifest import IndexMismatch

    try:
        return IndexDirectory.open(index_dir, writable=writable)
    except (FileNotFoundError, IndexMismatch, IndexBusy) as exc:
        fail(str(exc))


@app.command()
def search(
    query: Annotated[Path, typer.Argument(help="Query: a DICOM/NIfTI/image file, or a series folder (its slices' results aggregate per patient).")],
    index_dir: IndexDirOpt,
    k: Annotated[int, typer.Option("-k", min=1, help="Number of patients (or slices with --by slice) to return.")] = 10,
    max_alpha: Annotated[Optional[float], typer.Option("--max-alpha", min=0.0, max=1.0, help="Only return slices whose predicted α is at most this.")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="CT or MR: the query's modality when the file does not say; also restricts results to it.")] = None,
    exclude_patient: Annotated[Optional[list[str]], typer.Option("--exclude-patient", help="Leave this patient out of the results (repeatable).")] = None,
    by: Annotated[str, typer.Option("--by", help="Rank patients or single slices.")] = "patient",
    slice_index: Annotated[Optional[int], typer.Option("--slice", min=0, help="Query with this slice of a volume only.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint (default: the one the index was built with).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the patients (and their slices) that look most like the query, optionally only good-quality slices."""
    import json

    from indexer.manifest import IndexMismatch
    from retrieval.search import BY, print_result, search_path

    _require([query])
    if by not in BY:
        fail(f"--by must be one of {', '.join(BY)}, got {by!r}")
    modality = modality.upper() if modality else None
    identity = _identity(manifest, patient_regex, modality)
    with _open_index(index_dir) as directory:
        try:
            metric = directory.metric(checkpoint, device)
            result = search_path(directory, metric, query, identity, slice_index=slice_index, k=k, by=by, max_alpha=max_alpha,
                                 modality=modality, exclude_patients=exclude_patient or ())
        except (ValueError, FileNotFoundError, IndexMismatch) as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        print_result(result)


@app.command()
def remove(
    index_dir: IndexDirOpt,
    patient: Annotated[str, typer.Option("--patient", help="Patient id to delete from the index.")],
    json_out: JsonOpt = False,
) -> None:
    """Delete every slice of a patient from the index (catalog and vectors)."""
    import json

    with _open_index(index_dir, writable=True) as directory:
        removed = directory.remove_patient(patient)
    if not removed:
        fail(f"{index_dir}: no slices of patient {patient!r}", code=1)
    typer.echo(json.dumps({"patient_id": patient, "slices_removed": removed}) if json_out else f"removed {removed} slices of {patient}")


@app.command()
def info(index_dir: IndexDirOpt, json_out: JsonOpt = False) -> None:
    """Counts by modality and patient, predicted-α histogram and size on disk of an index."""
    import json

    from indexer.summary import info as summarise
    from indexer.summary import print_info

    with _open_index(index_dir) as directory:
        summary = summarise(directory)
    typer.echo(json.dumps(summary, indent=2)) if json_out else print_info(summary)


@app.command()
def qc(
    index_dir: IndexDirOpt,
    above: Annotated[float, typer.Option("--above", min=0.0, max=1.0, help="Flag slices whose predicted α exceeds this.")] = 0.3,
    json_out: JsonOpt = False,
) -> None:
    """Quality control: series and slices whose predicted distortion α exceeds a threshold."""
    import json

    from indexer.summary import print_qc, quality_control

    with _open_index(index_dir) as directory:
        report = quality_control(directory, above)
    typer.echo(json.dumps(report, indent=2)) if json_out else print_qc(report)


@app.command()
def demo(
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Keep the demo index here (default: a temporary folder).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Model checkpoint (default: the shipped one).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Index the real test images pydicom and nibabel ship, then search them (no data of your own needed)."""
    from indexer.directory import IndexBusy
    from indexer.demo import run_demo
    from indexer.manifest import IndexMismatch

    try:
        run_demo(index_dir, checkpoint, device)
    except (ValueError, FileNotFoundError, IndexMismatch, IndexBusy) as exc:
        fail(str(exc))


@app.command()
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

    _require(archive)
    identity = _identity(manifest, patient_regex, modality)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
