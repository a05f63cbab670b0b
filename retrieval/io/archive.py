"""One reader interface: walk files and folders, tell formats by content, yield lazy Series or Skipped."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from retrieval.io.dicom import Frame, dataset_slices, group_series, read_header
from retrieval.io.dicomweb import DicomWeb, is_remote
from retrieval.io.formats import DICOM, ITK, NIBABEL, NIFTI, Unsupported, sniff
from retrieval.io.identity import Identity
from retrieval.io.images import read_image
from retrieval.io.limits import Limits, ReadTimeout, time_limit
from retrieval.io.itk import is_detached_data, read_itk
from retrieval.io.nifti import image_slices, is_pair_data, read_nifti
from retrieval.io.sandbox import ReaderCrashed, Sandbox
from retrieval.io.slices import Series, Skipped, Slice

PathLike = str | os.PathLike[str]
T = TypeVar("T")
Source = PathLike | DicomWeb  # a file or folder, or a DICOMweb server (`dicomweb:http://…` strings too)


def remote_source(root: Source) -> DicomWeb | None:
    """The DICOMweb source a root names (a DicomWeb, or a `dicomweb:` string), None for a local path."""
    if isinstance(root, DicomWeb):
        return root
    return DicomWeb.parse(root) if isinstance(root, str) and is_remote(root) else None


def scopes(paths: Iterable[Source]) -> list[str]:
    """Path prefixes of the catalog that reading `paths` covers completely: each folder or file, or a DICOMweb listing's."""
    found: list[str] = []
    for root in [paths] if isinstance(paths, (str, os.PathLike, DicomWeb)) else paths:
        remote = remote_source(root)
        found.extend(remote.scopes() if remote else [os.path.abspath(root)])
    return found


def _entries(folder: Path) -> list[os.DirEntry[str]] | Skipped:
    """A folder's entries sorted by name, or the reason it cannot be listed."""
    try:
        with os.scandir(folder) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        return Skipped(str(folder), f"cannot read folder: {exc.strerror or exc}")


def walk(root: Path, exclude: frozenset[str] = frozenset()) -> Iterator[Path | Skipped]:
    """Every file under `root` in name order (folder symlinks followed once, folders whose real path is in `exclude` left
    out); problems as Skipped."""
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        yield Skipped(str(root), "no such file or folder" if not os.path.lexists(root) else "not a regular file or folder")
        return
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen or real in exclude:
            continue
        seen.add(real)
        entries = _entries(folder)
        if isinstance(entries, Skipped):
            yield entries
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():
                subfolders.append(path)
            elif entry.is_file():
                yield path
            else:
                yield Skipped(str(path), "broken symbolic link" if entry.is_symlink() else "not a regular file")
        stack.extend(reversed(subfolders))


def _is_pair_data(path: Path) -> bool:
    """True for the data half of a header/data pair (.hdr+.img, .PAR+.REC, .HEAD+.BRIK, .mhd+.raw, .nhdr+.raw): it is
    read with its header."""
    return is_pair_data(path) or is_detached_data(path)


def _read_file(path: Path, identity: Identity, slice_axis: int | None, limits: Limits) -> tuple[list[Frame], list[Series | Skipped]]:
    """One file's headers, under the per-file time limit: DICOM frames (grouped after the walk), or its Series or Skipped."""
    try:
        with time_limit(limits.seconds_per_file):
            try:
                kind = sniff(path)
            except Unsupported as exc:
                return [], [Skipped(str(path), str(exc))]
            if kind == DICOM:
                header = read_header(path, identity, limits)
                return ([], [header]) if isinstance(header, Skipped) else (header, [])
            if kind in (NIFTI, NIBABEL, ITK):
                volumes = (read_itk if kind == ITK else read_nifti)(path, identity, slice_axis, limits)
                return [], volumes if isinstance(volumes, list) else [volumes]
            return [], [read_image(path, identity, limits)]
    except ReadTimeout as exc:
        return [], [Skipped(str(path), str(exc))]


def _read_entry(entry: Path | Skipped, identity: Identity, slice_axis: int | None, limits: Limits) -> tuple[list[Frame], list[Series | Skipped]]:
    """A walked entry's outcome: a file's headers (`_read_file`), or the walk's own Skipped."""
    return ([], [entry]) if isinstance(entry, Skipped) else _read_file(entry, identity, slice_axis, limits)


def _read_entries(
    entries: Iterable[Path | Skipped], identity: Identity, slice_axis: int | None, limits: Limits, sandbox: Sandbox | None
) -> Iterator[tuple[Path | Skipped, tuple[list[Frame], list[Series | Skipped]]]]:
    """Each entry with its outcome, read in the sandbox's reader process when there is one: a file whose reader crashes
    or hangs there is Skipped with the reason, and the rest go on in a fresh reader."""
    if sandbox is None:
        yield from ((entry, _read_entry(entry, identity, slice_axis, limits)) for entry in entries)
        return
    for entry, outcome in sandbox.map(_read_entry, entries, identity, slice_axis, limits, seconds=limits.wall_seconds()):
        yield entry, ([], [Skipped(str(entry), str(outcome))]) if isinstance(outcome, ReaderCrashed) else outcome


def _files(root: Path, seen: set[str], named: set[str], exclude: frozenset[str]) -> Iterator[Path | Skipped]:
    """The walk's files to read, each once by real path; data files (of a pair, or named by a header read) are read with their header."""
    for item in walk(root, exclude):
        if isinstance(item, Skipped):
            yield item
            continue
        real = os.path.realpath(item)
        if real in seen or real in named or _is_pair_data(item):
            continue
        seen.add(real)
        yield item


def _read_root(
    root: Path, identity: Identity, slice_axis: int | None, limits: Limits, sandbox: Sandbox | None,
    frames: list[Frame], seen: set[str], named: set[str], on_file: Callable[[Path], None] | None, exclude: frozenset[str],
) -> Iterator[Series | Skipped]:
    """The Series and Skipped of one local root in walk order; its DICOM frames go to `frames`, grouped after the walk."""
    for entry, (found, items) in _read_entries(_files(root, seen, named, exclude), identity, slice_axis, limits, sandbox):
        if not isinstance(entry, Skipped):
            if os.path.realpath(entry) in named:  # queued before the header that names it was read
                continue
            if on_file is not None:
                on_file(entry)
        frames.extend(found)
        named.update(os.path.realpath(f) for v in items if isinstance(v, Series) for f in v.files)
        yield from items


def in_reader(sandbox: Sandbox | None, fn: Callable[..., T], series: Series, *args: Any, limits: Limits) -> T | Skipped:
    """`fn(series, *args)` in the sandbox's reader process under the series' wall-time limit (in this process without a
    sandbox); a Skipped naming the series when its reader died or overran."""
    if sandbox is None:
        return fn(series, *args)
    try:
        return sandbox.call(fn, series, *args, seconds=limits.wall_seconds(len(series.files)))
    except ReaderCrashed as exc:
        return Skipped(series.path, str(exc))


def load_series(series: Series, limits: Limits | None = None, sandbox: Sandbox | None = None) -> tuple[list[Slice], list[Skipped]]:
    """A series' slices and the files it could not use, read under the per-file time limit (× its files), in the
    sandbox's reader process when there is one (a crash or hang there skips the series with the reason)."""
    limits = limits or Limits()
    if sandbox is not None:
        outcome = in_reader(sandbox, load_series, series, limits, limits=limits)
        return ([], [outcome]) if isinstance(outcome, Skipped) else outcome
    try:
        with time_limit(limits.seconds_per_file * max(1, len(series.files))):
            slices = series.load()
    except ReadTimeout as exc:
        return [], [Skipped(series.path, str(exc))]
    return slices, list(series.skipped)


def read_archive(
    paths: Iterable[Source],
    identity: Identity | None = None,
    *,
    slice_axis: int | None = None,
    on_file: Callable[[Path], None] | None = None,
    limits: Limits | None = None,
    sandbox: Sandbox | None = None,
    exclude: Iterable[PathLike] = (),
) -> Iterator[Series | Skipped]:
    """Headers only: yield a lazily loaded Series per volume/DICOM series, and a Skipped per unusable file.

    NIfTI and 2D images are yielded as they are met; DICOM series after the walk, since one series
    may span folders. `slice_axis` fixes the NIfTI slice axis; `on_file` is called per file (progress);
    a file whose header declares more than `limits` allow (or more than its bytes can hold) is Skipped.
    With a `sandbox`, each file's header is read in its reader process, so a file that crashes a C library is Skipped.
    Folders in `exclude` are not walked (`index` leaves out its own index folder when it sits inside the archive).
    """
    identity, limits = identity or Identity(), limits or Limits()
    if isinstance(paths, (str, os.PathLike, DicomWeb)):
        paths = [paths]  # one path, not an iterable of characters
    frames: list[Frame] = []
    seen: set[str] = set()  # files read (or queued to the reader process)
    named: set[str] = set()  # files the headers read so far name
    left_out = frozenset(os.path.realpath(folder) for folder in exclude)
    for root in paths:
        remote = remote_source(root)
        if remote is not None:  # listed with QIDO-RS, fetched by each series' loader
            yield from remote.read(identity)
            continue
        items = _read_root(Path(os.path.abspath(root)), identity, slice_axis, limits, sandbox, frames, seen, named, on_file, left_out)
        yield from list(items) if sandbox is not None else items  # the reader process is free again before a Series is loaded
    yield from group_series(frames)


def iter_slices(
    paths: Iterable[Source], identity: Identity | None = None, *, slice_axis: int | None = None, limits: Limits | None = None,
    sandbox: Sandbox | None = None,
) -> Iterator[Slice | Skipped]:
    """Every slice of an archive in series order, one series in memory at a time; problems as Skipped."""
    for item in read_archive(paths, identity, slice_axis=slice_axis, limits=limits, sandbox=sandbox):
        if isinstance(item, Skipped):
            yield item
            continue
        slices, skipped = load_series(item, limits, sandbox)
        yield from slices
        yield from skipped


def read_path(
    path: Source, identity: Identity | None = None, *, slice_axis: int | None = None, limits: Limits | None = None,
    isolated: bool = False,
) -> list[Slice]:
    """All slices of one file or folder (e.g. a search query); raises when it holds no usable image.

    `isolated`: read in a reader process (retrieval.io.sandbox), for files from outside (an upload, a user's query).
    """
    identity, limits = identity or Identity(), limits or Limits()
    remote = remote_source(path)
    target = remote or Path(path)  # type: ignore[arg-type]
    if remote is None and not os.path.lexists(target):
        raise FileNotFoundError(f"{target}: no such file or folder")
    slices: list[Slice] = []
    problems: list[Skipped] = []
    with Sandbox(identity, memory=limits.reader_bytes()) if isolated else nullcontext() as sandbox:
        for item in iter_slices([target], identity, slice_axis=slice_axis, limits=limits, sandbox=sandbox):
            (problems if isinstance(item, Skipped) else slices).append(item)  # type: ignore[arg-type]
    if not slices:
        reason = f"{problems[0].path}: {problems[0].reason}" if problems else f"{remote.name if remote else target}: no image files"
        raise ValueError(reason)
    return slices


def is_reader_object(item: Any) -> bool:
    """Whether `item` comes from pydicom or nibabel (what `dcmread` or `nibabel.load` returns), not an array."""
    return type(item).__module__.split(".")[0] in ("pydicom", "nibabel")


def object_slices(item: Any, identity: Identity | None = None) -> list[Slice]:
    """Every slice of a pydicom Dataset or nibabel image already in memory, as `read_path` gives a file's."""
    if type(item).__module__.startswith("nibabel"):
        get_filename = getattr(item, "get_filename", lambda: None)
        return image_slices(item, identity, name=str(get_filename() or "<nibabel image>"))
    from pydicom import Dataset

    if not isinstance(item, Dataset):
        raise ValueError(f"a pydicom {type(item).__name__} is not a Dataset: pass what dcmread returns")
    return dataset_slices(item, identity, name=str(getattr(item, "filename", None) or "<pydicom dataset>"))
