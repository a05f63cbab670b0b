"""Search latency of `retrieval serve` with concurrent clients while `retrieval index` adds slices to the same index.

    python benchmarks/bench_serve.py ARCHIVE [--clients 16] [--searches 50] [--query REL] [--grow REL ...] [--workers 1]

1. Indexes the test subset of ARCHIVE (45 slices of 7 patients; tests/serve) with the shipped checkpoint
   into a temporary folder, then starts `retrieval serve` on it in its own process (loopback, token).
2. Idle: one client, 30 sequential searches with the one-slice query (after 5 warm-up searches).
3. Load: starts `retrieval index` on the --grow entries (default: open_ms patient01, 6 volumes) in its own
   process and, at the same moment, --clients threads that each post the query --searches times.
Client latency includes the upload (a 0.5 MiB DICOM file over loopback); the server's own time (its
Server-Timing header: read, preprocess, embed, rank, thumbnails lookup) excludes it. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
from serve_support import SUBSET, TCGA, Load, cli_server, hammer, link

TOKEN = "bench-token"


def percentiles(values: list[float]) -> str:
    """p50 / p90 / p99 in milliseconds."""
    if not values:
        return "— / — / —"
    p50, p90, p99 = np.percentile(np.asarray(values) * 1000, [50, 90, 99])
    return f"{p50:.0f} / {p90:.0f} / {p99:.0f}"


def index(archive: Path, folder: Path, target: Path) -> subprocess.Popen:
    """`retrieval index` of a folder into target, in its own process (its errors go to target's sibling .log)."""
    command = [sys.executable, "-m", "retrieval.cli", "index", str(folder), "--index", str(target), "--manifest", str(archive / "manifest.csv"), "--json"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=target.with_name(folder.name + ".log").open("w"))


def slices(url: str) -> tuple[int, int]:
    """(slices searched, reloads so far) as the server reports them."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    info = httpx.get(url + "/api/info", headers=headers, timeout=60).json()
    return info["searched_slices"], info["server"]["reloads"]


def row(name: str, load: Load, seconds: float) -> str:
    """One markdown table row."""
    n = len(load.latencies)
    return f"| {name} | {n} | {len(load.errors)} | {percentiles(load.latencies)} | {percentiles(load.server)} | {n / seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--query", default=TCGA.format("0001_AGE_0069"))
    parser.add_argument("--grow", nargs="+", default=["mr/open_ms/patient01"])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    archive, query = args.archive.resolve(), args.archive.resolve() / args.query
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        root = Path(scratch)
        (root / "token").write_text(TOKEN)
        if index(archive, link(archive, root / "archive", SUBSET), root / "idx").wait():
            raise SystemExit("retrieval index failed on the subset: " + (root / "archive.log").read_text()[-500:])
        size = json.loads((root / "idx" / "manifest.json").read_text())["preprocessing"]["size"]
        with cli_server("--index", str(root / "idx"), "--token-file", str(root / "token"), "--workers", str(args.workers)) as url:
            hammer(url, TOKEN, query, clients=1, searches=5)
            start = time.perf_counter()
            idle = hammer(url, TOKEN, query, clients=1, searches=30)
            idle_seconds = time.perf_counter() - start
            before, _ = slices(url)
            grower = index(archive, link(archive, root / "more", args.grow), root / "idx")
            start = time.perf_counter()
            loaded = hammer(url, TOKEN, query, clients=args.clients, searches=args.searches)
            loaded_seconds = time.perf_counter() - start
            overlapped = grower.poll() is None
            if grower.wait():
                raise SystemExit("the concurrent retrieval index failed: " + (root / "more.log").read_text()[-500:])
            time.sleep(3)  # one more reload check after the run's last commit
            after, reloads = slices(url)
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average at the end {load_average}; query {args.query} (one slice, {size}² model input); "
          f"index run on {' '.join(args.grow)} {'still running when the searches ended' if overlapped else 'ended before the searches did'}; "
          f"slices searched {before} → {after}, {reloads} reloads\n")
    print("| phase | searches | errors | client ms p50 / p90 / p99 | server ms p50 / p90 / p99 | searches/s |")
    print("|---|---|---|---|---|---|")
    print(row("1 client, idle index", idle, idle_seconds))
    print(row(f"{args.clients} clients × {args.searches}, `retrieval index` adding slices", loaded, loaded_seconds))


if __name__ == "__main__":
    main()
