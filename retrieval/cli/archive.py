"""`retrieval scan` and `retrieval distort`: look at an archive before using it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import (
    LIMITS, JsonOpt, ManifestOpt, MaxFileMbOpt, MaxSecondsPerFileOpt, MaxSlicePixelsOpt, MaxSlicesPerFileOpt, ModalityOpt, PatientRegexOpt, fail,
    PasswordFileOpt, SinceOpt, StudyOpt, TokenFileOpt, UserOpt, file_path, identity_options, limits_options, sources,
)

def scan(
    paths: Annotated[list[str], typer.Argument(help="Archive folders or files (DICOM, NIfTI, NRRD, MetaImage, PAR/REC, MGH, MINC, AFNI, PNG/JPEG/TIFF), or dicomweb:http://host:port/dicom-web.")],
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    slice_axis: Annotated[Optional[int], typer.Option("--slice-axis", min=0, max=2, help="NIfTI canonical axis to slice along (default: largest spacing).")] = None,
    headers_only: Annotated[bool, typer.Option("--headers-only", help="Read headers only: faster, no value ranges or pixel checks.")] = False,
    json_out: JsonOpt = False,
    max_slice_pixels: MaxSlicePixelsOpt = LIMITS.max_slice_pixels,
    max_slices_per_file: MaxSlicesPerFileOpt = LIMITS.max_slices_per_file,
    max_file_mb: MaxFileMbOpt = LIMITS.max_file_mb,
    seconds_per_file: MaxSecondsPerFileOpt = LIMITS.seconds_per_file,
    study: StudyOpt = None,
    since: SinceOpt = None,
    auth_token_file: TokenFileOpt = None,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Summarise an archive per patient and series, with totals and the files that could not be used."""
    import json

    from retrieval.io import SourceUnavailable
    from retrieval.scan import print_report, scan_archive

    paths = sources(paths, study, since, auth_token_file, user, password_file)
    identity = identity_options(manifest, patient_regex, modality)
    limits = limits_options(max_slice_pixels, max_slices_per_file, max_file_mb, seconds_per_file)
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

        try:
            report = scan_archive(paths, identity, slice_axis=slice_axis, read_pixels=not headers_only, progress=progress, limits=limits)
        except SourceUnavailable as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def distort(
    path: Annotated[Path, typer.Argument(help="A DICOM/NIfTI/image file or a series folder.")],
    out: Annotated[Path, typer.Option("--out", callback=file_path, help="Montage image to write (PNG; the extension picks the format).")],
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", min=0.0, max=1.0, help="Severity α (repeatable; default 0 0.1 0.3 0.5 0.7 1).")] = None,
    slice_index: Annotated[Optional[int], typer.Option("--slice", min=0, help="Slice of the volume (default: the middle one).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Distortion seed, the same for every panel.")] = 0,
    size: Annotated[int, typer.Option(min=8, max=2048, help="Working grid: the slice is resized to size×size first, as for training.")] = 256,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    max_slice_pixels: MaxSlicePixelsOpt = LIMITS.max_slice_pixels,
    max_slices_per_file: MaxSlicesPerFileOpt = LIMITS.max_slices_per_file,
    max_file_mb: MaxFileMbOpt = LIMITS.max_file_mb,
) -> None:
    """Write a montage of one slice at several distortion severities α (CT low dose, MR k-space corruption)."""
    from retrieval.io import read_path

    identity = identity_options(manifest, patient_regex, modality)
    limits = limits_options(max_slice_pixels, max_slices_per_file, max_file_mb)
    try:
        slices = read_path(path, identity, limits=limits, isolated=True)
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

