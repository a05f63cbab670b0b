"""Helpers of the server tests: the indexed subset of the archive and real uvicorn servers (in a thread or as `retrieval serve`)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.io import Identity

# Three single-slice CT patients, a 28-slice CT head series and three short MR volumes: 45 slices of 7 patients.
TCGA = "ct/tcga_lung/dicom_dir/ID_{}_CONTRAST_1_CT.dcm"
SUBSET = ["ct/dcm_qa_ct/GE", TCGA.format("0000_AGE_0060"), TCGA.format("0001_AGE_0069"), TCGA.format("0004_AGE_0056"),
          "mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/104_C0.nii.gz"]
TOKEN = "test-token-0123456789"
STARTED = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def link(archive: Path, folder: Path, relative: list[str]) -> Path:
    """Symlink archive entries into folder (the index reads them in place)."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel in relative:
        (folder / Path(rel).name).symlink_to(archive / rel)
    return folder


def identity(archive: Path) -> Identity:
    """The archive's patient ids (dataset-prefixed, from its manifest)."""
    return Identity(manifest=archive / "manifest.csv")


@contextmanager
def running(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve an ASGI app with uvicorn on 127.0.0.1 and an ephemeral port in a thread; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def cli_server(*args: str) -> Iterator[str]:
    """Run `retrieval serve ARGS --port 0` as its own process; yield the URL it prints once it listens."""
    command = [sys.executable, "-m", "retrieval.cli", "serve", *args, "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # uvicorn's access log goes to stdout
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            found = STARTED.search(line)
            if found:
                threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()  # keep draining the log
                yield found.group(1)
                return
        raise RuntimeError("retrieval serve exited before listening:\n" + "".join(lines))
    finally:
        process.terminate()
        process.wait(30)
        if process.returncode not in (0, -15):
            sys.stderr.write(f"retrieval serve exited with {process.returncode}:\n" + "".join(lines[-40:]))


@dataclass
class Load:
    """What a load run saw: client-side seconds per search, the server's own search time, and every error."""

    latencies: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def hammer(url: str, token: str, query: Path, clients: int, searches: int, keep_going: Callable[[], bool] = lambda: False) -> Load:
    """`clients` threads each POST the query `searches` times (and on while `keep_going()`); a non-200 or empty answer is an error."""
    import httpx

    payload, load = query.read_bytes(), Load()

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as session:
            done = 0
            while (done < searches or keep_going()) and len(load.errors) < 20:
                start = time.perf_counter()
                try:
                    answer = session.post("/api/search", files={"files": (query.name, payload)}, data={"k": "5"})
                    if answer.status_code != 200 or not answer.json()["results"]:
                        load.errors.append(f"{answer.status_code}: {answer.text[:200]}")
                    else:
                        load.latencies.append(time.perf_counter() - start)
                        load.server.append(float(answer.headers["Server-Timing"].split("dur=")[1]) / 1000)
                except httpx.HTTPError as exc:
                    load.errors.append(f"{type(exc).__name__}: {exc}")
                done += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load
