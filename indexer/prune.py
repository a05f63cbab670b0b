"""Removal is explicit: series whose files are gone are kept and reported until `index --prune` removes them.

A series is missing when it was recorded under a folder given to this run and not found there again,
or when its path is gone from the disk. An unmounted share, a moved archive or a typo in a path would
otherwise empty the index, so `--prune` still refuses when it would remove every series of a source,
unless `--force`. A source is the given folder a series lies under, or else the deepest folder of its
path that still exists (an empty mount point is such a folder).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from retrieval.io import is_remote, scopes


class PruneRefused(ValueError):
    """`--prune` would remove every indexed series of a source."""


def under(path: str, roots: Sequence[str]) -> bool:
    """True when path is one of the roots or inside one."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def missing_series(recorded: dict[str, str], seen: Collection[str], paths: Sequence[str | Path]) -> list[str]:
    """Keys of recorded series not found under the folders given to this run, or whose path left the disk."""
    roots = scopes(paths)  # a folder, or what a DICOMweb listing covers
    return [key for key, path in recorded.items() if key not in seen and (under(path, roots) or (not is_remote(path) and not os.path.exists(path)))]


def source(path: str, roots: Sequence[str]) -> str:
    """The given root a series path lies under, else the deepest existing folder of the path."""
    for root in roots:
        if under(path, [root]):
            return root
    folder = os.path.dirname(path)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return folder


def check_prune(missing: Sequence[str], recorded: dict[str, str], paths: Sequence[str | Path], force: bool) -> None:
    """Raise PruneRefused when removing the missing series would leave a source with none (unless forced)."""
    if force or not missing:
        return
    roots = scopes(paths)
    gone = Counter(source(recorded[key], roots) for key in missing)
    total = Counter(source(path, roots) for path in recorded.values())
    emptied = sorted(folder for folder, n in gone.items() if n == total[folder])
    if emptied:
        raise PruneRefused(
            f"{emptied[0]}: all {gone[emptied[0]]} indexed series of it are missing (an unmounted share or a moved archive?); "
            f"kept: --prune removes them only with --force" + (f" ({len(emptied) - 1} more such folders)" if len(emptied) > 1 else "")
        )
