"""Files that killed a reader worker or outlived the per-file time limit: recorded in DIR, skipped with their reason.

A worker writes a journal (`DIR/.reading-<pid>.json`: the files of the series it is decoding) before it decodes
and removes it after. A watchdog thread in the worker kills it when one series takes longer than
`seconds_per_file` × its number of files, after writing the reason into the journal. When a worker dies (time
limit, segfault in a codec, the OOM killer), the run moves its journal's files into `DIR/quarantine.json`; every
later run skips them with the reason until a file changes (size or modification time). A journal left by a run
that was simply killed (kill -9, power loss) carries no reason and names no dead worker: it is discarded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

QUARANTINE_NAME = "quarantine.json"
_JOURNAL = ".reading-"
_PIDS = re.compile(r"pid\(?s?\)? ([\d, ]+)")


def _identity(path: str) -> list[int]:
    """(size, mtime_ns) of a file, or [-1, -1] when it is gone: a changed file is tried again."""
    try:
        stat = os.stat(path)
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


class Quarantine:
    """The files of an index directory that must not be read again, each with its reason."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / QUARANTINE_NAME
        try:
            self.files: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.files = {}

    def reason(self, files: list[str]) -> str | None:
        """Why a series with these files is skipped (the first quarantined, unchanged file), or None."""
        for name in files:
            entry = self.files.get(name)
            if entry and entry.get("identity") == _identity(name):
                return f"{entry['reason']} (recorded {entry['when']} in {self.path.name}; tried again once the file changes)"
        return None

    def record(self, files: list[str], reason: str) -> None:
        """Add files with their reason and write the list atomically."""
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for name in files:
            self.files[name] = {"reason": reason, "when": when, "identity": _identity(name)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"files": self.files}, indent=2))
        os.replace(tmp, self.path)

    def collect(self, error: BaseException | None = None) -> list[str]:
        """Quarantine the journals of dead workers (named in `error`, or with a time-limit reason); drop the rest."""
        dead = {int(pid) for match in _PIDS.findall(str(error or "")) for pid in re.findall(r"\d+", match)}
        found: list[str] = []
        for journal in sorted(self.folder.glob(_JOURNAL + "*.json")):
            try:
                entry = json.loads(journal.read_text())
                pid = int(journal.stem[len(_JOURNAL):])
            except (OSError, ValueError):
                entry, pid = {}, -1
            reason = entry.get("reason") or (f"a reader worker died reading it ({_one_line(error)})" if pid in dead else None)
            if reason and entry.get("files"):
                self.record(entry["files"], reason)
                found.extend(entry["files"])
            journal.unlink(missing_ok=True)
        return found


def _one_line(error: BaseException | None) -> str:
    """The first line of a worker-death error, without the DataLoader's advice."""
    return str(error).strip().splitlines()[0][:200] if error else "no reason given"


_WATCHED: dict[str, Any] = {"pid": None}  # this process's read under watch; one watchdog thread per process


class Watchdog:
    """Per-process reading guard: a journal per series decoded and a thread that kills the process past the deadline."""

    def __init__(self, folder: str | Path, seconds_per_file: float) -> None:
        self.folder, self.seconds = Path(folder), seconds_per_file

    @contextmanager
    def reading(self, files: list[str]) -> Iterator[None]:
        """Journal `files` while they are decoded, under a deadline of the per-file limit × their number."""
        limit = self.seconds * max(1, len(files))
        journal = self.folder / f"{_JOURNAL}{os.getpid()}.json"
        journal.write_text(json.dumps({"files": files, "limit_s": limit}))
        first = _WATCHED["pid"] != os.getpid()  # a forked worker does not inherit the parent's thread
        _WATCHED.update(pid=os.getpid(), read=(time.monotonic() + limit, limit, files, journal), tick=min(0.2, limit / 4))
        if first:  # after the read is set, so the first check already keeps this read's deadline
            threading.Thread(target=_watch, daemon=True, name="read-watchdog").start()
        try:
            yield
        finally:
            _WATCHED["read"] = None
            journal.unlink(missing_ok=True)


def _watch() -> None:
    """Kill this process once a read outlives its deadline (C code in a codec cannot be interrupted any other way)."""
    while True:
        read = _WATCHED.get("read")
        time.sleep(_WATCHED["tick"])  # a quarter of the limit (at most 0.2 s): a short limit is kept closely, between reads too
        if read is None or _WATCHED.get("read") is not read or time.monotonic() <= read[0]:
            continue
        _, limit, files, journal = read
        reason = f"reading took longer than the per-file time limit ({limit:g} s for {len(files)} file(s))"
        journal.write_text(json.dumps({"files": files, "reason": reason}))
        print(f"warning: {files[0]}: {reason}; reader stopped, the file is skipped from now on ({QUARANTINE_NAME})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
