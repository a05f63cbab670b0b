"""Indexing throughput from a DICOMweb PACS (a real Orthanc on loopback) against the same DICOM files from a folder, in one run.

    python benchmarks/bench_dicomweb.py ARCHIVE [--checkpoint PATH] [--workers 1] [--repeat 2] [--threads 1]

Collects every DICOM file under ARCHIVE (told by content, as `retrieval index` does), symlinks them into one folder
and uploads them to a fresh Orthanc (Debian `orthanc` + `orthanc-dicomweb`, started here with its own storage; the
upload is timed apart). Then, alternating folder and PACS `--repeat` times with the same checkpoint and workers,
it indexes each into a new directory (full run), and reruns it unchanged (the incremental check: the folder
re-hashes its files, the PACS answers QIDO-RS listings). Prints a markdown table of the best (least disturbed, as
timeit reports) and median runs, and the PACS/folder throughput ratio of each.
Orthanc stores one copy per SOPInstanceUID, so byte-identical duplicate files count once there.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "retrieval"))

from orthanc_server import Orthanc, available  # noqa: E402

from indexer.pipeline import build_index  # noqa: E402
from retrieval.io import Identity  # noqa: E402
from retrieval.io.archive import walk  # noqa: E402
from retrieval.io.formats import DICOM, Unsupported, sniff  # noqa: E402


def dicom_files(root: Path) -> list[Path]:
    """Every regular file under root whose content is DICOM."""
    found = []
    for item in walk(root.resolve()):
        if isinstance(item, Path):
            try:
                if sniff(item) == DICOM:
                    found.append(item)
            except Unsupported:
                continue
    return found


def timed_index(source: object, index_dir: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """(seconds, slices added, series unchanged) of one `retrieval index` run."""
    started = time.perf_counter()
    report = build_index([source], index_dir, Identity(), checkpoint=args.checkpoint, workers=args.workers, show_progress=False)
    return time.perf_counter() - started, report.slices_added, report.series_unchanged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads besides the workers")
    args = parser.parse_args()
    reason = available()
    if reason:
        sys.exit(f"error: {reason}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = dicom_files(args.archive)
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        root = Path(tmp)
        (root / "files").mkdir()
        for n, path in enumerate(files):
            (root / "files" / f"{n:05d}_{path.name}").symlink_to(path)
        server = Orthanc(root / "orthanc").start()
        try:
            started = time.perf_counter()
            server.upload(files)
            upload = time.perf_counter() - started
            runs: dict[str, list[tuple[float, int, int]]] = {"folder": [], "dicomweb": []}
            for attempt in range(args.repeat):
                for name, source in (("folder", root / "files"), ("dicomweb", server.source)):
                    index_dir = root / f"{name}-{attempt}"
                    full = timed_index(source, index_dir, args)
                    again = timed_index(source, index_dir, args)
                    runs[name].append((full[0], full[1], again[0]))
                    print(f"{name} run {attempt + 1}: {full[1]} slices in {full[0]:.1f} s, unchanged rerun {again[0]:.1f} s", file=sys.stderr)
        finally:
            server.stop()
    mb = sum(p.stat().st_size for p in files) / 2**20
    print(f"{len(files)} DICOM files ({mb:.0f} MiB) from {args.archive}; upload to Orthanc {upload:.1f} s; "
          f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, workers {args.workers}, "
          f"{args.repeat} alternating runs each, load average {os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d')}\n")
    print("| source | slices | full index, best (s) | slices/s, best | full index, median (s) | slices/s, median | unchanged rerun, best / median (s) |")
    print("|---|---|---|---|---|---|---|")
    rates: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        slices = results[0][1]
        best, median = min(r[0] for r in results), statistics.median(r[0] for r in results)
        rates[name] = {"best": slices / best, "median": slices / median}
        print(f"| {name} | {slices} | {best:.1f} | {rates[name]['best']:.1f} | {median:.1f} | {rates[name]['median']:.1f} | "
              f"{min(r[2] for r in results):.2f} / {statistics.median(r[2] for r in results):.2f} |")
    print(f"\nDICOMweb / folder throughput: {rates['dicomweb']['best'] / rates['folder']['best']:.2f} (best runs), "
          f"{rates['dicomweb']['median'] / rates['folder']['median']:.2f} (medians)")


if __name__ == "__main__":
    main()
