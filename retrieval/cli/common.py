"""Options and helpers shared by every `retrieval` subcommand: identity options, one-line errors, index opening."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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


def require(paths: list[Path]) -> None:
    """One-line error for the first path that does not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder")


def identity_options(manifest: Optional[Path], patient_regex: Optional[str], modality: Optional[str]):  # type: ignore[no-untyped-def]
    """The shared identity options as a reader Identity, or a one-line error."""
    from retrieval.io import Identity

    try:
        return Identity(manifest=manifest, patient_regex=patient_regex, modality=modality)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


IndexDirOpt = Annotated[Path, typer.Option("--index", help="Index directory (manifest.json, catalog.sqlite, vectors.faiss).")]


def open_index(index_dir: Path, writable: bool = False):  # type: ignore[no-untyped-def]
    """Open an index directory (consistency check included), or a one-line error."""
    from indexer.directory import IndexBusy, IndexDirectory
    from indexer.manifest import IndexMismatch

    try:
        return IndexDirectory.open(index_dir, writable=writable)
    except (FileNotFoundError, IndexMismatch, IndexBusy) as exc:
        fail(str(exc))

