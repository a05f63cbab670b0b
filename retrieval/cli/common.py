"""Options and helpers shared by every `retrieval` subcommand: identity options, one-line errors, path checks, index opening."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from retrieval.io.limits import Limits

LIMITS = Limits()  # the defaults the limit options show

MAX_K = 10_000  # results per search: far beyond any page a person reads, small enough to bound the FAISS search


def _path_kind(folder: bool):  # type: ignore[no-untyped-def]
    """A typer callback refusing, in one line, an existing path of the other kind (a file where a folder goes, or the reverse)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if not ctx.resilient_parsing and path is not None and path.exists() and path.is_dir() != folder:
                fail(f"{param.opts[0]} {path}: " + ("a file, not a folder" if folder else "a folder, not a file"))
        return value

    return check


folder_path = _path_kind(folder=True)  # callback for options that name a folder (an index, an output folder, a cache)
file_path = _path_kind(folder=False)  # callback for options that name a file (a manifest, a checkpoint, weights)

# Patient-identity options shared by every command that reads an archive.
ManifestOpt = Annotated[
    Optional[Path],
    typer.Option("--manifest", callback=file_path, help="CSV with relative_path, patient_id[, modality] columns (paths relative to the CSV); wins over headers."),
]
PatientRegexOpt = Annotated[
    Optional[str],
    typer.Option("--patient-regex", help="Regex on the file path whose first group is the patient id (for files without a DICOM PatientID)."),
]
ModalityOpt = Annotated[
    Optional[str],
    typer.Option("--modality", help="CT or MR, for files whose header does not say."),
]
GroupRegexOpt = Annotated[
    Optional[str],
    typer.Option("--group-regex", help="Regex on the file path whose first group names the dataset (when the manifest has no dataset column)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(callback=file_path, help="Model checkpoint (default: the shipped one).")]
CacheOpt = Annotated[Optional[Path], typer.Option(callback=folder_path, help="Folder to cache the resized slices in between runs.")]
# Reading limits shared by every command that reads an archive: a file whose header declares more is skipped with the reason.
MaxSlicePixelsOpt = Annotated[int, typer.Option("--max-slice-pixels", min=1, help="Skip files whose slices have more pixels than this (rows × columns).")]
MaxSlicesPerFileOpt = Annotated[int, typer.Option("--max-slices-per-file", min=1, help="Skip files holding more 2D slices than this (frames, or slices × volumes).")]
MaxFileMbOpt = Annotated[int, typer.Option("--max-file-mb", min=1, help="Skip files whose decoded pixels and float32 slices take more MiB than this (one volume of a 4D file).")]
MaxSecondsPerFileOpt = Annotated[float, typer.Option("--max-seconds-per-file", min=0.001, help="Stop reading a file after this long and skip it (index: the reader worker is stopped and the file skipped from then on).")]


# DICOMweb options shared by every command that reads an archive; they apply to its `dicomweb:` sources.
StudyOpt = Annotated[Optional[list[str]], typer.Option("--study", help="dicomweb: sources: read only this StudyInstanceUID (repeatable).")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="dicomweb: sources: only studies dated this day or later (YYYY-MM-DD); never prunes.")]
TokenFileOpt = Annotated[Optional[Path], typer.Option("--auth-token-file", callback=file_path, help="dicomweb: sources: file holding a bearer token.")]
UserOpt = Annotated[Optional[str], typer.Option("--user", help="dicomweb: sources: HTTP basic user (with --password-file).")]
PasswordFileOpt = Annotated[Optional[Path], typer.Option("--password-file", callback=file_path, help="dicomweb: sources: file holding --user's password.")]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def require(paths: list[Path]) -> None:
    """One-line error for the first path that does not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder")


def sources(archive: list[str], study: Optional[list[str]], since: Optional[str], token_file: Optional[Path],  # type: ignore[no-untyped-def]
            user: Optional[str], password_file: Optional[Path]) -> list:
    """Archive arguments as existing local paths and `dicomweb:` sources carrying the DICOMweb options, or a one-line error."""
    from retrieval.io.dicomweb import Credentials, DicomWeb, dicom_date, is_remote, read_secret

    remote = [a for a in archive if is_remote(a)]
    try:
        if (study or since or token_file or user or password_file) and not remote:
            raise ValueError("--study, --since, --auth-token-file, --user and --password-file apply to dicomweb: sources only")
        if token_file and (user or password_file):
            raise ValueError("give either --auth-token-file or --user with --password-file, not both")
        if bool(user) != bool(password_file):
            raise ValueError("--user and --password-file go together")
        credentials = Credentials(token=read_secret(token_file, "token") if token_file else None, user=user,
                                  password=read_secret(password_file, "password") if password_file else None)
        options = {"studies": tuple(study or ()), "since": dicom_date(since) if since else None, "credentials": credentials}
        found = [DicomWeb.parse(a, **options) if is_remote(a) else Path(a) for a in archive]
    except ValueError as exc:
        fail(str(exc))
    require([p for p in found if isinstance(p, Path)])
    return found


def identity_options(manifest: Optional[Path], patient_regex: Optional[str], modality: Optional[str],  # type: ignore[no-untyped-def]
                     group_regex: Optional[str] = None):
    """The shared identity options as a reader Identity, or a one-line error."""
    from retrieval.io import Identity

    try:
        return Identity(manifest=manifest, patient_regex=patient_regex, modality=modality, group_regex=group_regex)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def limits_options(max_slice_pixels: int, max_slices_per_file: int, max_file_mb: int, seconds_per_file: float = 60.0):  # type: ignore[no-untyped-def]
    """The shared limit options as reader Limits, or a one-line error."""
    from retrieval.io import Limits

    try:
        return Limits(max_slice_pixels, max_slices_per_file, max_file_mb, seconds_per_file)
    except ValueError as exc:
        fail(str(exc))


IndexDirOpt = Annotated[Path, typer.Option("--index", callback=folder_path, help="Index directory (manifest.json, catalog.sqlite, vectors.faiss).")]
CatalogOpt = Annotated[Optional[str], typer.Option("--catalog", help="postgresql://USER@HOST:PORT/DB to keep the catalog in PostgreSQL (default: DIR/catalog.sqlite; an index keeps the catalog it was built with).")]


@contextmanager
def open_index(index_dir: Path, writable: bool = False, catalog: Optional[str] = None) -> Iterator[Any]:
    """Open an index directory (consistency check included; repairs said on stderr) and close it; a one-line error
    for a missing, busy, read-only or damaged index, also when the damage shows while it is in use."""
    from indexer.engines import CatalogError
    from indexer.directory import IndexDirectory, IndexUnavailable
    from indexer.manifest import IndexMismatch

    try:
        directory = IndexDirectory.open(index_dir, writable=writable, catalog=catalog)
    except (FileNotFoundError, IndexMismatch, IndexUnavailable, CatalogError) as exc:
        fail(str(exc))
    for note in directory.notes:
        typer.echo(f"warning: {note}", err=True)
    try:
        with directory:
            yield directory
    except CatalogError as exc:
        fail(str(exc))

