"""`retrieval serve`: the REST API and web page over an index directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli.common import (
    LIMITS, IndexDirOpt, MaxFileMbOpt, MaxSecondsPerFileOpt, MaxSlicePixelsOpt, MaxSlicesPerFileOpt, fail, limits_options,
)


def serve(
    index_dir: IndexDirOpt,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token-file.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port, printed at start).")] = 8000,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding the bearer token every route but /healthz then needs.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes; each loads the index and checkpoint once.")] = 1,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest query upload (request body), MiB.")] = 512.0,
    pseudonymise: Annotated[bool, typer.Option("--pseudonymise", help="Show patient (and series, study) ids as keyed hashes and withhold paths; the key is kept beside the token file.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: the one the index was built with).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="auto (ONNX Runtime on CPU, torch with --device cuda), onnx or torch: as `retrieval search`.")] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="FAISS (and torch-backend) threads per process; requests run side by side, so 1 is fastest on shared cores.")] = 1,
    max_slice_pixels: MaxSlicePixelsOpt = LIMITS.max_slice_pixels,
    max_slices_per_file: MaxSlicesPerFileOpt = LIMITS.max_slices_per_file,
    max_file_mb: MaxFileMbOpt = LIMITS.max_file_mb,
    seconds_per_file: MaxSecondsPerFileOpt = LIMITS.seconds_per_file,
) -> None:
    """Serve a web page and a JSON API over an index: search by upload, patients, QC, thumbnails, metrics."""
    import os
    import tempfile

    from retrieval.serve.config import ServeConfig, is_loopback

    if not is_loopback(host) and token_file is None:
        fail(f"--host {host} is reachable from other machines: give --token-file (or serve on 127.0.0.1)")
    if token_file is not None and not token_file.is_file():
        fail(f"{token_file}: no such token file")
    if pseudonymise and token_file is None:
        fail("--pseudonymise needs --token-file: its key is kept in the token file's folder")
    limits = limits_options(max_slice_pixels, max_slices_per_file, max_file_mb, seconds_per_file)
    if not (index_dir / "manifest.json").is_file():
        fail(f"{index_dir}: no index here (no manifest.json); build one with `retrieval index ARCHIVE --index {index_dir}`")
    config = ServeConfig(index=str(index_dir.resolve()), checkpoint=str(checkpoint.resolve()) if checkpoint else None, device=device, backend=backend,
                         token_file=str(token_file.resolve()) if token_file else None, pseudonymise=pseudonymise,
                         max_upload_mb=max_upload_mb, threads=threads, max_slice_pixels=limits.max_slice_pixels,
                         max_slices_per_file=limits.max_slices_per_file, max_file_mb=limits.max_file_mb, seconds_per_file=limits.seconds_per_file)
    try:
        config.token()
        config.pseudonym_key()
    except (OSError, ValueError) as exc:
        fail(str(exc))
    import uvicorn

    if workers == 1:
        from indexer.directory import IndexBusy
        from indexer.manifest import IndexMismatch
        from retrieval.serve.app import create_app
        from retrieval.serve.service import ServerState

        try:
            state = ServerState.load(config)
        except (ValueError, FileNotFoundError, IndexMismatch, IndexBusy) as exc:
            fail(str(exc))
        uvicorn.run(create_app(config, state), host=host, port=port, log_level="info")
        return
    with tempfile.TemporaryDirectory(prefix="retrieval-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # workers' metrics aggregate through files here
        config.to_environment()
        uvicorn.run("retrieval.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers, log_level="info")
