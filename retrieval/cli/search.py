"""`retrieval search`: the patients and slices of an index that look like a query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import MAX_K, IndexDirOpt, JsonOpt, ManifestOpt, PatientRegexOpt, fail, file_path, identity_options, open_index, require

def search(
    query: Annotated[Path, typer.Argument(help="Query: a DICOM/NIfTI/image file, or a series folder (its slices' results aggregate per patient).")],
    index_dir: IndexDirOpt,
    k: Annotated[int, typer.Option("-k", min=1, max=MAX_K, help="Number of patients (or slices with --by slice) to return.")] = 10,
    max_alpha: Annotated[Optional[float], typer.Option("--max-alpha", min=0.0, max=1.0, help="Only return slices whose predicted α is at most this.")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="CT or MR: the query's modality when the file does not say; also restricts results to it.")] = None,
    exclude_patient: Annotated[Optional[list[str]], typer.Option("--exclude-patient", help="Leave this patient out of the results (repeatable).")] = None,
    by: Annotated[str, typer.Option("--by", help="Rank patients or single slices.")] = "patient",
    slice_index: Annotated[Optional[int], typer.Option("--slice", min=0, help="Query with this slice of a volume only.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(callback=file_path, help="Checkpoint (default: the one the index was built with).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="auto (ONNX Runtime on CPU, torch with --device cuda), onnx or torch.")] = "auto",
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the patients (and their slices) that look most like the query, optionally only good-quality slices."""
    import json

    from indexer.manifest import IndexMismatch
    from retrieval.search import BY, print_result, search_path

    require([query])
    if by not in BY:
        fail(f"--by must be one of {', '.join(BY)}, got {by!r}")
    modality = modality.upper() if modality else None
    identity = identity_options(manifest, patient_regex, modality)
    with open_index(index_dir) as directory:
        try:
            metric = directory.embedder(checkpoint, device, backend)
            result = search_path(directory, metric, query, identity, slice_index=slice_index, k=k, by=by, max_alpha=max_alpha,
                                 modality=modality, exclude_patients=exclude_patient or ())
        except (ValueError, FileNotFoundError, IndexMismatch) as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        print_result(result)

