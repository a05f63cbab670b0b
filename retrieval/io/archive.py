"""One reader interface: walk files and folders, tell formats by content, yield lazy Series or Skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from retrieval.io.dicom import Frame, dataset_slices, group_series, read_header
from retrieval.io.dicomweb import DicomWeb, is_remote
from retrieval.io.formats import DICOM, ITK, NIBABEL, NIFTI, Unsupported, sniff
from retrieval.io.identity import Identity
from retrieval.io.images import read_image
from retrieval.io.limits import Limits, ReadTimeout, time_limit
from retrieval.io.itk import is_detached_data, read_itk
from retrieval.io.nifti import image_slices, is_pair_data, read_nifti
from retrieval.io.slices import Series, Skipped, Slice

PathLike = str | os.PathLike[str]
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


def walk(root: Path) -> Iterator[Path | Skipped]:
    """Every file under `root` in name order (folder symlinks followed once); problems as Skipped."""
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
        if real in seen:
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


def load_series(series: Series, limits: Limits | None = None) -> tuple[list[Slice], list[Skipped]]:
    """A series' slices and the files it could not use, read under the per-file time limit (× its files)."""
    try:
        with time_limit((limits or Limits()).seconds_per_file * max(1, len(series.files))):
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
) -> Iterator[Series | Skipped]:
    """Headers only: yield a lazily loaded Series per volume/DICOM series, and a Skipped per unusable file.

    NIfTI and 2D images are yielded as they are met; DICOM series after the walk, since one series
    may span folders. `slice_axis` fixes the NIfTI slice axis; `on_file` is called per file (progress);
    a file whose header declares more than `limits` allow (or more than its bytes can hold) is Skipped.
    """
    identity, limits = identity or Identity(), limits or Limits()
    if isinstance(paths, (str, os.PathLike, DicomWeb)):
        paths = [paths]  # one path, not an iterable of characters
    frames: list[Frame] = []
    seen: set[str] = set()
    for root in paths:
        remote = remote_source(root)
        if remote is not None:  # listed with QIDO-RS, fetched by each series' loader
            yield from remote.read(identity)
            continue
        for item in walk(Path(os.path.abspath(root))):
            if isinstance(item, Skipped):
                yield item
                continue
            real = os.path.realpath(item)
            if real in seen or _is_pair_data(item):
                continue
            seen.add(real)
            if on_file is not None:
                on_file(item)
            found, items = _read_file(item, identity, slice_axis, limits)
            frames.extend(found)
            seen.update(os.path.realpath(f) for v in items if isinstance(v, Series) for f in v.files)  # data files a header names
            yield from items
    yield from group_series(frames)


def iter_slices(
    paths: Iterable[Source], identity: Identity | None = None, *, slice_axis: int | None = None, limits: Limits | None = None
) -> Iterator[Slice | Skipped]:
    """Every slice of an archive in series order, one series in memory at a time; problems as Skipped."""
    for item in read_archive(paths, identity, slice_axis=slice_axis, limits=limits):
        if isinstance(item, Skipped):
            yield item
            continue
        slices, skipped = load_series(item, limits)
        yield from slices
        yield from skipped


def read_path(
    path: Source, identity: Identity | None = None, *, slice_axis: int | None = None, limits: Limits | None = None
) -> list[Slice]:
    """All slices of one file or folder (e.g. a search query); raises when it holds no usable image."""
    remote = remote_source(path)
    target = remote or Path(path)  # type: ignore[arg-type]
    if remote is None and not os.path.lexists(target):
        raise FileNotFoundError(f"{target}: no such file or folder")
    slices: list[Slice] = []
    problems: list[Skipped] = []
    for item in iter_slices([target], identity, slice_axis=slice_axis, limits=limits):
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
