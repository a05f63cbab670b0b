"""`retrieval index`, `remove`, `info`, `qc` and `demo`: build and inspect an index directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import (
    LIMITS, CatalogOpt, CheckpointOpt, IndexDirOpt, JsonOpt, ManifestOpt, MaxFileMbOpt, MaxSecondsPerFileOpt, MaxSlicePixelsOpt, MaxSlicesPerFileOpt, ModalityOpt, PatientRegexOpt, fail,
    PasswordFileOpt, SinceOpt, StudyOpt, TokenFileOpt, UserOpt, folder_path, identity_options, limits_options, open_index,
    sources,
)


def index(
    archive: Annotated[list[str], typer.Argument(help="Archive folders or files to index, or dicomweb:http://host:port/dicom-web.")],
    index_dir: IndexDirOpt,
    checkpoint: CheckpointOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="Slices per model batch and per catalog transaction.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=0, max=64, help="Worker processes that read and preprocess (0: in the main process; default: half the CPUs, at most 8).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    index_type: Annotated[str, typer.Option("--index-type", help="auto (by archive size and memory), flat (exact), hnsw or ivfpq (approximate; recall@10 in the manifest).")] = "auto",
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help='Read, preprocess and embed as a Ray Data pipeline on a cluster: auto (the one on this machine, else a new local one) or its ADDRESS; needs pip install -e ".[ray]".')] = None,
    max_slice_pixels: MaxSlicePixelsOpt = LIMITS.max_slice_pixels,
    max_slices_per_file: MaxSlicesPerFileOpt = LIMITS.max_slices_per_file,
    max_file_mb: MaxFileMbOpt = LIMITS.max_file_mb,
    seconds_per_file: MaxSecondsPerFileOpt = LIMITS.seconds_per_file,
    prune: Annotated[bool, typer.Option("--prune", help="Remove indexed series whose files are gone (kept and reported otherwise).")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --prune: remove them even when that empties a whole folder given or indexed.")] = False,
    study: StudyOpt = None,
    since: SinceOpt = None,
    auth_token_file: TokenFileOpt = None,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Embed an archive into an index directory (incremental: reruns embed only new or changed series)."""
    import json

    from indexer.directory import IndexUnavailable
    from indexer.manifest import IndexMismatch, read_manifest
    from indexer.console import print_report, print_warnings
    from indexer.pipeline import build_index
    from retrieval.io import SourceUnavailable
    from retrieval.runtime import ensure_model

    archive = sources(archive, study, since, auth_token_file, user, password_file)
    identity = identity_options(manifest, patient_regex, modality)
    limits = limits_options(max_slice_pixels, max_slices_per_file, max_file_mb, seconds_per_file)
    try:
        report = build_index(archive, index_dir, identity, checkpoint=checkpoint, device=device, batch_size=batch_size,
                             workers=workers, kind=index_type, show_progress=not json_out, limits=limits, prune=prune, force=force,
                             catalog=catalog, ray=ray)
        built = read_manifest(index_dir)
        ensure_model(index_dir, built.checkpoint_path, built.checkpoint_sha256)  # once per checkpoint: searches then run without torch
    except (ValueError, FileNotFoundError, IndexMismatch, IndexUnavailable, SourceUnavailable) as exc:
        fail(str(exc))
    if json_out:
        print_warnings(report)
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)



def remove(
    index_dir: IndexDirOpt,
    patient: Annotated[str, typer.Option("--patient", help="Patient id to delete from the index.")],
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Delete every slice of a patient from the index (catalog and vectors)."""
    import json

    with open_index(index_dir, writable=True, catalog=catalog) as directory:
        removed = directory.remove_patient(patient)
    if not removed:
        fail(f"{index_dir}: no slices of patient {patient!r}", code=1)
    typer.echo(json.dumps({"patient_id": patient, "slices_removed": removed}) if json_out else f"removed {removed} slices of {patient}")


def info(index_dir: IndexDirOpt, json_out: JsonOpt = False, catalog: CatalogOpt = None) -> None:
    """Counts by modality and patient, predicted-α histogram and size on disk of an index."""
    import json

    from indexer.summary import info as summarise
    from indexer.summary import print_info

    with open_index(index_dir, catalog=catalog) as directory:
        summary = summarise(directory)
    typer.echo(json.dumps(summary, indent=2)) if json_out else print_info(summary)


def qc(
    index_dir: IndexDirOpt,
    above: Annotated[float, typer.Option("--above", min=0.0, max=1.0, help="Flag slices whose predicted α exceeds this (with --relative: exceeds their series' median by this).")] = 0.3,
    relative: Annotated[bool, typer.Option("--relative", help="Compare each slice with its own series' median α: for scanners the model reads as noisier than they are.")] = False,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """Quality control: series and slices whose predicted distortion α exceeds a threshold (or their series' median)."""
    import json

    from indexer.summary import print_qc, quality_control

    with open_index(index_dir, catalog=catalog) as directory:
        report = quality_control(directory, above, relative)
    typer.echo(json.dumps(report, indent=2)) if json_out else print_qc(report)


def demo(
    index_dir: Annotated[Optional[Path], typer.Option("--index", callback=folder_path, help="Keep the demo index here (default: a temporary folder).")] = None,
    checkpoint: CheckpointOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Index the real test images pydicom and nibabel ship, then search them (no data of your own needed)."""
    from indexer.demo import run_demo
    from indexer.directory import IndexUnavailable
    from indexer.manifest import IndexMismatch

    try:
        run_demo(index_dir, checkpoint, device)
    except (ValueError, FileNotFoundError, IndexMismatch, IndexUnavailable) as exc:
        fail(str(exc))

