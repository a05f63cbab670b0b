"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd + raw) volumes through SimpleITK, sliced like NIfTI.

SimpleITK reports the voxel grid in LPS world coordinates (origin, spacing, direction cosines); the
affine is turned into NIfTI's RAS+ convention and handed to the NIfTI slicing rules
(`retrieval.io.nifti`: closest canonical orientation, cut along the largest spacing, shown like DICOM),
so the same volume saved as NIfTI, NRRD or MetaImage gives the same slices. Each volume of a 4D file,
and each component of a non-colour vector image (e.g. diffusion gradients), is one series.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.io.identity import Identity
from retrieval.io.limits import Limits, deflate_floor, short_of
from retrieval.io.nifti import cut_volume, geometry, slice_axis, volume_cost, volume_series
from retrieval.io.pixels import one_line, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# The header line naming a detached data file: NRRD "data file:"/"datafile:", MetaImage "ElementDataFile =".
_DATA_FILE = re.compile(rb"^(?:data ?file:|ElementDataFile\s*=)\s*(\S.*?)\s*$", re.MULTILINE)
_HEADER_BYTES = 65536
_NRRD_MAGIC = b"NRRD000"
_COLOUR_COMPONENTS = (3, 4)
_BZIP2 = re.compile(rb"^encoding:\s*(bzip2|bz2)\s*$", re.MULTILINE)  # the one NRRD encoding that can expand past deflate's 1032x
_NRRD_LINE = 512  # bytes: the longest NRRD field line handed to ITK (a 4D volume's space directions take about 200)
_NRRD_HEADER = 1 << 20  # bytes: an NRRD header must end within this (a detached one may list thousands of data files)
_HEADER_END = re.compile(rb"\n\r?\n")  # the blank line after an NRRD header


def data_files(path: Path) -> list[str]:
    """The header file and the detached data file it names (none for .nrrd/.mha with attached data, or lists)."""
    with path.open("rb") as handle:
        head = handle.read(_HEADER_BYTES)
    match = _DATA_FILE.search(head.split(b"\n\n", 1)[0] if head.startswith(_NRRD_MAGIC) else head)  # an NRRD header ends at a blank line
    files = [str(path)]
    if match:
        name = match.group(1).decode("latin-1")
        target = path.parent / name
        if name.upper() != "LOCAL" and " " not in name and target.is_file():
            files.append(str(target))
    return files


def _affine(reader: Any, dims: int) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """Voxel grid (first three axes) and RAS+ affine of an ITK header; 2D grids get a unit third axis."""
    size = list(reader.GetSize())[:3] + [1] * max(0, 3 - dims)
    spacing = list(reader.GetSpacing())[:3] + [1.0] * max(0, 3 - dims)
    origin = list(reader.GetOrigin())[:3] + [0.0] * max(0, 3 - dims)
    full = np.asarray(reader.GetDirection(), dtype=float).reshape(dims, dims)
    direction = np.eye(3)
    keep = min(dims, 3)
    direction[:keep, :keep] = full[:keep, :keep]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin)
    return tuple(size), tuple(float(s) for s in spacing), affine  # type: ignore[return-value]


def simpleitk() -> Any:
    """SimpleITK, imported with a SWIG type table of its own (every reader and test takes it from here).

    SWIG modules share one table of C++ types per process; the one imported last takes over the Python classes of
    the types both wrap, so SimpleITK imported after faiss turned faiss's id vectors into SimpleITK vectors and
    `faiss.vector_to_array` failed on every index (faiss issue #3689 shows the same clash with PyMuPDF). The shared
    table is set aside while SimpleITK loads, and SimpleITK's own is kept out of reach of modules loaded later.
    """
    if "SimpleITK" in sys.modules:
        return sys.modules["SimpleITK"]
    tables = lambda: [name for name in sys.modules if name.startswith("swig_runtime_data")]  # noqa: E731
    shared = {name: sys.modules.pop(name) for name in tables()}
    try:
        import SimpleITK
    finally:
        for name in tables():
            del sys.modules[name]
        sys.modules.update(shared)
    return SimpleITK


def _nrrd_header_problem(path: str) -> str | None:
    """Why ITK must not read an NRRD header: a field line over _NRRD_LINE bytes (teem, inside ITK, overruns a buffer
    formatting its error about a long malformed line and kills the process: found by benchmarks/fuzz_readers.py), or
    no end of the header within _NRRD_HEADER. Comments and key:=value lines are free text that ITK reads safely."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
        end = _HEADER_END.search(head)
        if end is None and len(head) == _HEADER_BYTES:  # a long detached header (a list of data files): read on
            head += handle.read(_NRRD_HEADER - _HEADER_BYTES)
            end = _HEADER_END.search(head)
            if end is None and handle.read(1):
                return f"no end of the header in its first {_NRRD_HEADER >> 20} MiB"
    for number, line in enumerate(head[: end.start() if end else len(head)].split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if len(line) > _NRRD_LINE and not line.startswith(b"#") and b":=" not in line:
            return f"header line {number} is {len(line):,} bytes long: no NRRD field needs more than {_NRRD_LINE}"
    return None


def _reader(path: str) -> Any:
    """A SimpleITK file reader with the header read (no voxels); the format comes from the content, not the name."""
    sitk = simpleitk()

    kind = _kind(path)
    problem = _nrrd_header_problem(path) if kind == "NRRD" else None
    if problem:
        raise ValueError(problem)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("NrrdImageIO" if kind == "NRRD" else "MetaImageIO")
    reader.ReadImageInformation()
    return reader


def _volumes(reader: Any, dims: int) -> tuple[int, bool]:
    """(number of 3D volumes, whether the pixels are colour) of an ITK header; ValueError when unsupported."""
    sitk = simpleitk()

    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if "complex" in pixel:
        raise ValueError(f"complex-valued pixels ({pixel}) are not supported")
    if dims not in (2, 3, 4) or (dims == 4 and reader.GetNumberOfComponents() > 1):
        raise ValueError(f"unsupported {dims}D image with {reader.GetNumberOfComponents()} component(s): only 2D, 3D and 4D scalar images are read")
    components = reader.GetNumberOfComponents()
    colour = components in _COLOUR_COMPONENTS and "8-bit unsigned" in pixel
    if dims == 4:
        return int(reader.GetSize()[3]), False
    return (1 if colour else components), colour


def _voxel_bytes(reader: Any) -> int:
    """Bytes of one voxel, all components, as the header declares it."""
    sitk = simpleitk()

    components = reader.GetNumberOfComponents()
    return int(sitk.Image([1, 1], reader.GetPixelID(), components).GetSizeOfPixelComponent()) * components


def _stored_problem(files: list[str], data_bytes: int) -> str | None:
    """Refuse files that cannot hold the voxels their header declares: raw or deflated (gzip, zlib) at most 1032x; bzip2 unbounded."""
    with open(files[0], "rb") as handle:
        if _BZIP2.search(handle.read(_HEADER_BYTES)):
            return None
    held = sum(os.path.getsize(name) for name in files)
    return short_of(data_bytes, deflate_floor(data_bytes), held, "raw or deflate-compressed (at most 1032× expansion)")


def read_itk(path: Path, identity: Identity, axis: int | None = None, limits: Limits = Limits()) -> list[Series] | Skipped:
    """Headers of an NRRD or MetaImage file as one Series per 3D volume, or the reason it cannot be used (limits included)."""
    try:
        reader = _reader(str(path))
        dims = reader.GetDimension()
        volumes, _ = _volumes(reader, dims)
        size, spacing, affine = _affine(reader, dims)
        _, shape, zooms, _ = geometry(size, spacing, affine)
        slice_axis(shape, zooms, axis)  # a bad axis is this file's one-line reason
        files = data_files(path)
        voxel = _voxel_bytes(reader)
    except Exception as exc:  # noqa: BLE001 - ITK raises RuntimeError with multi-line text on bad headers
        return Skipped(str(path), f"unreadable {_kind(path)} header: {one_line(exc)}")
    data_bytes = math.prod(shape) * voxel * (volumes if dims == 4 else 1)  # a vector image's components are in `voxel`
    reason = limits.refuse(volume_cost(shape, zooms, axis, volumes, voxel)) or _stored_problem(files, data_bytes)
    if reason:
        return Skipped(str(path), reason)
    return volume_series(path, files, volumes, shape, zooms, axis, identity, load_itk)


def _kind(path: Path | str) -> str:
    """NRRD or MetaImage, told by the file's first bytes."""
    with open(path, "rb") as handle:
        return "NRRD" if handle.read(len(_NRRD_MAGIC)) == _NRRD_MAGIC else "MetaImage"


def _voxels(reader: Any, dims: int, volume: int) -> np.ndarray:
    """One 3D volume as float32 voxels in (i, j, k) order; 4D files are read one volume at a time."""
    sitk = simpleitk()

    _, colour = _volumes(reader, dims)
    if dims == 4:
        reader.SetExtractSize(list(reader.GetSize()[:3]) + [0])
        reader.SetExtractIndex([0, 0, 0, volume])
    array = sitk.GetArrayFromImage(reader.Execute())  # a copy (a view dies with the image): (k, j, i[, c]) for 3D, (j, i[, c]) for 2D
    if array.ndim == dims - (dims == 4) + 1:  # a trailing component axis
        array = to_grey(array, colour=True) if colour else array[..., volume]
    array = np.asarray(array, dtype=np.float32)
    return (array[None] if dims == 2 else array).transpose(2, 1, 0)


def load_itk(path: str, volume: int, axis: int | None, key: SeriesKey) -> list[Slice | Skipped]:
    """Read one 3D volume of an NRRD or MetaImage file and cut it with the NIfTI rules."""
    try:
        reader = _reader(path)
        dims = reader.GetDimension()
        data = _voxels(reader, dims, volume)
        size, spacing, affine = _affine(reader, dims)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: report the file, keep going
        return [Skipped(path, f"cannot read {_kind(path)} voxels: {one_line(exc)}")]
    return cut_volume(data, geometry(size, spacing, affine), axis, key, path)  # type: ignore[return-value]


def is_detached_data(path: Path) -> bool:
    """True for the data half of an .mhd or .nhdr header beside it with the same stem (read with its header)."""
    name = path.name.lower()
    for ending, headers in ((".raw.gz", (".nhdr",)), (".raw", (".mhd", ".nhdr")), (".zraw", (".mhd",))):
        if name.endswith(ending):
            stem = path.name[: -len(ending)]
            return any(os.path.isfile(path.with_name(stem + header)) for header in headers)
    return False
