"""Time the archive readers and preprocessing on a real archive: headers only, full decode, prepare(), the
empty-slice check with the resize onto the 64² grid that indexing runs on every slice, and what reading in a reader
process (retrieval.io.sandbox) costs `scan` against reading in this process.

Run: python benchmarks/bench_readers.py [ARCHIVE] [--repeats 3]   (ARCHIVE defaults to $RETRIEVAL_SAMPLE_ARCHIVE)
Each figure is the best of `repeats` runs in this process (warm file cache), per source format, so the
ratios between formats and between headers-only and full reads are measured under the same load.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

from retrieval.io import Series, read_archive, read_path
from retrieval.io.sandbox import Sandbox
from retrieval.preprocess import is_empty, prepare, to_grid
from retrieval.scan import scan_archive


def _kind(series: Series) -> str:
    """DICOM, NIfTI or image, by the series' first file name."""
    name = series.files[0].lower()
    return "NIfTI" if ".nii" in name or name.endswith(".hdr") else "image" if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")) else "DICOM"


def best(repeats: int, run) -> float:  # type: ignore[no-untyped-def]
    """Smallest wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", default=os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.archive or not Path(args.archive).is_dir():
        parser.error("give an archive folder or set RETRIEVAL_SAMPLE_ARCHIVE")
    headers = best(args.repeats, lambda: list(read_archive([args.archive])))
    series = [s for s in read_archive([args.archive]) if isinstance(s, Series)]
    decode: dict[str, float] = defaultdict(float)
    slices: dict[str, int] = defaultdict(int)
    size: dict[str, int] = defaultdict(int)
    for item in series:
        kind = _kind(item)
        decode[kind] += best(args.repeats, item.load)
        slices[kind] += item.n_slices
        size[kind] += sum(os.path.getsize(f) for f in item.files)
    sample = [s for s in series if s.n_slices][:20]
    loaded = [sl for s in sample for sl in s.load()][:200]
    threads = torch.get_num_threads()
    prep = best(args.repeats, lambda: [prepare(s.pixels, s.modality, 256, s.spacing) for s in loaded])
    torch.set_num_threads(1)
    prep_one = best(args.repeats, lambda: [prepare(s.pixels, s.modality, 256, s.spacing) for s in loaded])
    index_checks = best(args.repeats, lambda: [(is_empty(s.pixels, s.modality), to_grid(s.pixels, 64, s.spacing)) for s in loaded])
    print(f"# readers on {args.archive} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"headers only: {len(series)} series in {headers:.2f} s ({sum(slices.values()) / headers:,.0f} slices/s)")
    print("| format | series slices | MiB on disk | decode s | slices/s | MiB/s |")
    print("|---|---|---|---|---|---|")
    for kind in sorted(decode):
        mib = size[kind] / 2**20
        print(f"| {kind} | {slices[kind]} | {mib:.1f} | {decode[kind]:.2f} | {slices[kind] / decode[kind]:,.0f} | {mib / decode[kind]:.0f} |")
    per = 1000 / max(1, len(loaded))
    print(f"prepare() to 3×256×256, {len(loaded)} slices: {prep * per:.2f} ms per slice with {threads} torch threads, "
          f"{prep_one * per:.2f} ms with 1 (ratio {prep / prep_one:.1f})")
    print(f"is_empty + to_grid(64), {len(loaded)} slices: {index_checks * per:.3f} ms per slice")
    _reader_processes(args.archive, args.repeats)


def _reader_processes(archive: str, repeats: int) -> None:
    """`scan` with its files read in a reader process against in this process, and what starting readers costs."""

    def fresh() -> None:
        with Sandbox() as sandbox:
            sandbox.call(os.getpid, seconds=30)

    first = best(1, fresh)  # starts the fork server, which imports the readers
    reader = best(repeats, fresh)
    print(f"reader processes: the first answered after {first:.2f} s (the fork server's start, once per process), "
          f"a fresh one after {reader * 1000:.0f} ms")
    print("| scan | in this process s | in a reader process s | ratio |")
    print("|---|---|---|---|")
    for label, pixels in (("headers only", False), ("headers and pixels", True)):
        inline = best(repeats, lambda: scan_archive([archive], read_pixels=pixels, isolated=False))
        isolated = best(repeats, lambda: scan_archive([archive], read_pixels=pixels))
        print(f"| {label} | {inline:.2f} | {isolated:.2f} | {isolated / inline:.2f} |")
    queries = [s.files[0] for s in read_archive([archive]) if isinstance(s, Series) and s.n_slices][:: 40][:5]
    inline = best(repeats, lambda: [read_path(q) for q in queries])
    isolated = best(repeats, lambda: [read_path(q, isolated=True) for q in queries])  # a fresh reader per query, as `serve` reads an upload
    print(f"a query read as `search` and `serve` read it ({len(queries)} files of the archive, each in a fresh reader): "
          f"{isolated / len(queries) * 1000:.0f} ms a query against {inline / len(queries) * 1000:.0f} ms in this process")


if __name__ == "__main__":
    main()
