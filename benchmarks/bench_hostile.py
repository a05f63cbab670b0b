"""Cost of the hostile-file corpus: `retrieval scan` per file and `retrieval index` over all of it, CPU time and peak memory.

Run: nice -n 15 python benchmarks/bench_hostile.py [--before CHECKOUT] [--archive DIR] [--limit-s 60] [--limit-gb 4]
Each hostile file (retrieval/io/hostile.py) is scanned in its own `retrieval scan --json` process; a legitimate
file (pydicom's CT_small.dcm) is the baseline measured in the same run, so the hostile rows read against it.
`index` runs once over the whole corpus and once over the baseline file (shipped checkpoint, one worker).
With --before, the same scans also run on an older checkout (e.g. `git worktree add /tmp/old <commit>`) under a
CPU-time and address-space cap, which shows what the limits changed. Every command runs under the caps.
With --archive, `scan --headers-only` of a real archive is timed too (with --before: what the checks cost).
CPU time, not wall time, is the figure: on a shared machine wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, whatever the install points at
from retrieval.io.hostile import build  # noqa: E402

def cli(checkout: Path | None = None) -> list[str]:
    """The `retrieval` command of a checkout's source tree (default: this one), its packages first on the path."""
    root = str(checkout or Path(__file__).resolve().parents[1])
    first = f"import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f)]; sys.path.insert(0, {root!r})"
    return [sys.executable, "-c", first + "; from retrieval.cli import main; main()"]


def measure(command: list[str], limit_s: int, limit_gb: float | None) -> dict[str, object]:
    """Run a command under a CPU-time (and address-space) cap: its CPU seconds, peak RSS (MiB), exit status and stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limit_s, limit_s))
        if limit_gb:  # not for index: torch's CUDA build maps far more address space than it uses
            resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30),) * 2)

    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, preexec_fn=cap) as child:
        out = child.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage, not the other commands'
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        last = [line for line in err.read().splitlines() if line.strip() and not line.startswith(" ")][-1:]
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_mb": round(usage.ru_maxrss / 1024), "code": child.returncode, "out": out,
            "err": last[0] if last else ""}


def outcome(result: dict[str, object]) -> str:
    """What a scan did with its one file: the skip reason, the series it read, or how it died."""
    code = int(result["code"])  # type: ignore[arg-type]
    if code < 0:
        return {9: "killed at the CPU-time cap (SIGKILL)", 24: "killed at the CPU-time cap (SIGXCPU)"}.get(-code, f"killed by signal {-code}")
    try:
        report = json.loads(str(result["out"]))
    except ValueError:
        return f"exit {code}: {result['err']}"
    if report["skipped"]:
        return "skipped: " + report["skipped"][0]["reason"]
    return f"read: {report['totals']['series']} series, {report['totals']['slices']} slices"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older checkout to measure the same scans on")
    parser.add_argument("--archive", type=Path, help="a real archive to time `scan --headers-only` on")
    parser.add_argument("--limit-s", type=int, default=60, help="CPU-time cap per command (s)")
    parser.add_argument("--limit-gb", type=float, default=4.0, help="address-space cap per command (GiB)")
    args = parser.parse_args()

    def meter(command: list[str]) -> dict[str, object]:
        return measure(command, args.limit_s, args.limit_gb if "scan" in command else None)

    with tempfile.TemporaryDirectory() as tmp:
        corpus, single = Path(tmp) / "hostile", Path(tmp) / "baseline"
        phrases = build(corpus)
        single.mkdir()
        (single / "CT_small.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
        files = [single / "CT_small.dcm"] + [corpus / name for name in phrases]
        print(f"# Hostile files ({date.today()}, {platform.node()}, {os.cpu_count()} CPUs, {platform.python_version()})")
        print(f"CPU time and peak RSS per `retrieval scan --json FILE` process; caps {args.limit_s} s CPU, {args.limit_gb:g} GiB address space.\n")
        header = "| file | bytes | scan CPU s | scan peak MB | outcome |" + (" before: CPU s | before: peak MB | before: outcome |" if args.before else "")
        print(header + "\n|" + "---|" * (header.count("|") - 1))
        for path in files:
            now = meter(cli() + ["scan", "--json", str(path)])
            row = f"| {path.name} | {path.stat().st_size:,} | {now['cpu_s']} | {now['peak_mb']} | {outcome(now)[:90]} |"
            if args.before:
                old = meter(cli(args.before) + ["scan", "--json", str(path)])
                row += f" {old['cpu_s']} | {old['peak_mb']} | {outcome(old)[:90]} |"
            print(row, flush=True)
        if args.archive:
            print(f"\n| `scan --headers-only` of {args.archive.name} | CPU s | peak MB | series |\n|---|---|---|---|")
            for label, checkout in (("now", None), ("before", args.before)) if args.before else (("now", None),):
                run = meter(cli(checkout) + ["scan", "--headers-only", "--json", str(args.archive)])
                print(f"| {label} | {run['cpu_s']} | {run['peak_mb']} | {json.loads(str(run['out']))['totals']['series']} |", flush=True)
        print("\n| `retrieval index` (shipped checkpoint, --workers 1) | CPU s | peak MB | series indexed | files skipped |\n|---|---|---|---|---|")
        for label, folder in (("baseline: CT_small.dcm", single), (f"hostile corpus ({len(phrases)} files)", corpus)):
            run = meter(cli() + ["index", str(folder), "--index", str(Path(tmp) / f"index-{folder.name}"), "--workers", "1", "--modality", "MR", "--json"])
            report = json.loads(str(run["out"]))
            print(f"| {label} | {run['cpu_s']} | {run['peak_mb']} | {report['series_indexed']} | {len(report['skipped'])} |", flush=True)


if __name__ == "__main__":
    main()
