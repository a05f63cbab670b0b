"""`retrieval search`: the patients and slices of an index that look like a query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import (
    LIMITS, MAX_K, CatalogOpt, IndexDirOpt, JsonOpt, ManifestOpt, MaxFileMbOpt, MaxSecondsPerFileOpt, MaxSlicePixelsOpt, MaxSlicesPerFileOpt,
    PasswordFileOpt, PatientRegexOpt, SinceOpt, StudyOpt, TokenFileOpt, UserOpt, fail, file_path, identity_options, limits_options, open_index, sources,
)

def search(
    query: Annotated[str, typer.Argument(help="Query: a DICOM/NIfTI/image file, a series folder, or dicomweb:URL with --study (its slices' results aggregate).")],
    index_dir: IndexDirOpt,
    k: Annotated[int, typer.Option("-k", min=1, max=MAX_K, help="Number of patients (or slices with --by slice) to return.")] = 10,
    max_alpha: Annotated[Optional[float], typer.Option("--max-alpha", min=0.0, max=1.0, help="Only return slices whose predicted α is at most this.")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="CT or MR: the query's modality when the file does not say; also restricts results to it.")] = None,
    exclude_patient: Annotated[Optional[list[str]], typer.Option("--exclude-patient", help="Leave this patient out of the results (repeatable).")] = None,
    by: Annotated[str, typer.Option("--by", help="Rank patients, single slices, series or studies (series/study: mean over query slices of each one's best match).")] = "patient",
    same_patient: Annotated[bool, typer.Option("--same-patient", help="The other series (--by series) or studies of the patient whose series matches best.")] = False,
    slice_index: Annotated[Optional[int], typer.Option("--slice", min=0, help="Query with this slice of a volume only.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(callback=file_path, help="Checkpoint (default: the one the index was built with).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="auto (ONNX Runtime on CPU, torch with --device cuda), onnx or torch.")] = "auto",
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    study: StudyOpt = None,
    since: SinceOpt = None,
    auth_token_file: TokenFileOpt = None,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    max_slice_pixels: MaxSlicePixelsOpt = LIMITS.max_slice_pixels,
    max_slices_per_file: MaxSlicesPerFileOpt = LIMITS.max_slices_per_file,
    max_file_mb: MaxFileMbOpt = LIMITS.max_file_mb,
    seconds_per_file: MaxSecondsPerFileOpt = LIMITS.seconds_per_file,
) -> None:
    """Find the patients (and their slices) that look most like the query, optionally only good-quality slices."""
    import json

    from indexer.manifest import IndexMismatch
    from retrieval.io import SourceUnavailable
    from retrieval.search import BY, GROUPED, print_result, search_path

    [source] = sources([query], study, since, auth_token_file, user, password_file)
    if by not in BY + GROUPED:
        fail(f"--by must be one of {', '.join(BY + GROUPED)}, got {by!r}")
    if same_patient and by == "slice":
        fail("--same-patient ranks series or studies: use it with --by series or --by study")
    by = "study" if same_patient and by == "patient" else by
    modality = modality.upper() if modality else None
    identity = identity_options(manifest, patient_regex, modality)
    limits = limits_options(max_slice_pixels, max_slices_per_file, max_file_mb, seconds_per_file)
    with open_index(index_dir, catalog=catalog) as directory:
        try:
            metric = directory.embedder(checkpoint, device, backend)
            result = search_path(directory, metric, source, identity, slice_index=slice_index, k=k, by=by, max_alpha=max_alpha,
                                 modality=modality, exclude_patients=exclude_patient or (), same_patient=same_patient, limits=limits)
        except (ValueError, FileNotFoundError, IndexMismatch, SourceUnavailable) as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        print_result(result)

