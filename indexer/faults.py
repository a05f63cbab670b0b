"""Crash points for the kill -9 tests: `RETRIEVAL_KILL_AT=NAME[:N]` kills the process the N-th time it reaches NAME.

The index writes its files in an order that makes any crash recoverable; these named points let a
test crash it exactly where that order matters (a FAISS file written but not yet renamed, renamed but
the manifest not yet rewritten) instead of hoping a timed kill lands there. Unset, they do nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "RETRIEVAL_KILL_AT"
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process when RETRIEVAL_KILL_AT names this point (and this is its N-th visit)."""
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point == name:
        _reached[name] += 1
        if _reached[name] >= int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)
