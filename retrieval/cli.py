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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
