"""NIfTI (and Analyze) volumes, and the other volume formats nibabel reads (Philips PAR/REC, FreeSurfer MGH/MGZ,
MINC-1/2, AFNI): header-only series, pixels reoriented to the closest canonical (RAS+) on load.

Reorientation is the transform of `nibabel.as_closest_canonical` (io_orientation + apply_orientation),
applied per 3D volume so that a 4D file is read one volume at a time; each volume of a 4D file is a series.
Slice axis (in canonical voxel axes): the given one, else an axis of length 1 when there is one, else the
axis with the largest voxel spacing, ties going to the last (axial) axis. Thick-slice oblique acquisitions
(e.g. short-axis cardiac MR with 8-23 mm slices) are thus cut along their own slices, not across them.
Each slice is shown like a DICOM image: rows run along the second in-plane axis reversed
(anterior or superior at the top) and columns along the first reversed (the patient's right on the left).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from retrieval.io.identity import Identity
from retrieval.io.limits import FLOAT32, Cost, Limits, deflate_floor, gzip_length, short_of
from retrieval.io.pixels import one_line, quiet, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice


def slice_axis(shape: tuple[int, int, int], zooms: tuple[float, float, float], axis: int | None = None) -> int:
    """The axis to cut slices along: `axis` if given, else a length-1 axis, else the largest spacing (ties → last)."""
    if axis is not None:
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
        return axis
    singles = [i for i in range(3) if shape[i] == 1]
    if singles:
        return singles[-1]
    largest = max(zooms)
    return max(i for i in range(3) if np.isclose(zooms[i], largest, rtol=1e-3))


def _shape3(img: Any) -> tuple[int, int, int]:
    """The first three dimensions of an image, a 2D image counting as one slice thick."""
    return tuple(int(n) for n in img.shape[:3]) + (1,) * (3 - min(3, len(img.shape)))  # type: ignore[return-value]  # MGH gives numpy ints


Geometry = tuple[np.ndarray, tuple[int, int, int], tuple[float, float, float], np.ndarray]


def geometry(shape: tuple[int, int, int], zooms: tuple[float, float, float], affine: np.ndarray) -> Geometry:
    """Orientation transform, canonical shape, zooms and affine of a voxel grid with a RAS+ affine (any reader)."""
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    canon_shape, canon_zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for source, (target, _) in enumerate(ornt):
        canon_shape[int(target)], canon_zooms[int(target)] = shape[source], abs(zooms[source]) or 1.0
    canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return ornt, tuple(canon_shape), tuple(canon_zooms), canon_affine  # type: ignore[return-value]


def _geometry(img: Any) -> Geometry:
    """Geometry of a 2-4D nibabel image."""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * (3 - min(3, len(img.shape)))
    return geometry(_shape3(img), zooms, img.affine)  # type: ignore[arg-type]


def _in_plane(axis: int) -> tuple[int, int]:
    """The two canonical axes of a slice, in canonical order (first → columns, second → rows)."""
    first, second = (i for i in range(3) if i != axis)
    return first, second


def _volume_count(shape: tuple[int, ...]) -> int:
    """Number of 3D volumes (1 for 2D/3D, the 4th dimension for 4D); ValueError for 5D and beyond."""
    extra = [n for n in shape[4:] if n != 1]
    if len(shape) < 2 or extra:
        raise ValueError(f"unsupported shape {shape}: only 2D, 3D and 4D images are read")
    return int(shape[3]) if len(shape) >= 4 else 1


def volume_cost(shape: tuple[int, int, int], zooms: tuple[float, float, float], axis: int | None, volumes: int, itemsize: int) -> Cost:
    """What a volume file costs to read: its slice shape, slices over all volumes, one volume's voxels and float32 slices (any reader)."""
    cut = slice_axis(shape, zooms, axis)
    first, second = _in_plane(cut)
    return Cost((shape[second], shape[first]), shape[cut] * volumes, math.prod(shape) * (itemsize + FLOAT32))


_FORMATS = {".par": "PAR/REC", ".mgh": "MGH", ".mgz": "MGH", ".mnc": "MINC", ".head": "AFNI"}  # else NIfTI (or Analyze)
_PAIRS = {".hdr": (".img", ".IMG"), ".par": (".REC", ".rec"), ".head": (".BRIK", ".BRIK.gz", ".brik", ".brik.gz")}  # header → data names


def _format(path: Path | str) -> str:
    """The volume format a file name says, for messages."""
    return _FORMATS.get(Path(path).suffix.lower(), "NIfTI")


def _missing_data(path: Path) -> str | None:
    """The reason a header's data file (.hdr+.img, .PAR+.REC, .HEAD+.BRIK[.gz]) is missing, or None."""
    datas = _PAIRS.get(path.suffix.lower(), ())
    if not datas or any(path.with_suffix(data).is_file() for data in datas):
        return None
    return f"header of an image pair whose data file {path.with_suffix(datas[0]).name} is missing"


def is_pair_data(path: Path) -> bool:
    """True for the data half of a header/data pair (.hdr+.img, .PAR+.REC, .HEAD+.BRIK[.gz]): it is read with its header."""
    for header, datas in _PAIRS.items():
        for data in datas:
            if path.name.endswith(data) and any(path.with_name(path.name[: -len(data)] + h).is_file() for h in (header, header.upper())):
                return True
    return False


def _stored_problem(img: Any, data_bytes: int) -> str | None:
    """Refuse a file too short for the voxels it declares: raw byte for byte, gzip by its 1032× bound, then by its
    length (NIfTI, Analyze, MGH, PAR/REC, AFNI: the voxels start at the proxy's offset of the data file)."""
    data = Path(img.file_map["image"].filename)
    needed = int(getattr(img.dataobj, "offset", 0)) + data_bytes  # where nibabel reads from (a single file's vox_offset 0 means 352)
    if data.name.lower().endswith((".gz", ".mgz")):
        short = short_of(data_bytes, deflate_floor(needed), data.stat().st_size, "gzip-compressed (at most 1032× expansion)")
        length = gzip_length(data, needed) if not short else needed
        return short or (f"truncated: the header needs {needed:,} bytes, the gzip stream holds {length:,}" if length < needed else None)
    held = data.stat().st_size
    return f"truncated: the header needs {needed:,} bytes, {data.name} holds {held:,}" if held < needed else None


def read_nifti(path: Path, identity: Identity, axis: int | None = None, limits: Limits = Limits()) -> list[Series] | Skipped:
    """Headers of a NIfTI (or other nibabel) volume file as one Series per 3D volume, or the reason it cannot be used
    (limits included)."""
    import nibabel as nib

    missing = _missing_data(path)
    if missing:
        return Skipped(str(path), missing)
    try:
        with quiet():
            img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):  # not CIFTI or surfaces
            return Skipped(str(path), f"{type(img).__name__} is not a volume image")
        minc = isinstance(img, (nib.minc1.Minc1Image, nib.minc2.Minc2Image))  # netCDF or HDF5 lays out its own data
        if minc and len(img.shape) > 3:
            return Skipped(str(path), f"MINC with {len(img.shape)} dimensions: only 2D and 3D MINC are read (its time axis comes first)")
        if np.issubdtype(img.get_data_dtype(), np.complexfloating):
            return Skipped(str(path), f"complex-valued {_format(path)} is not supported")
        volumes = _volume_count(img.shape)
        _, shape, zooms, _ = _geometry(img)
        slice_axis(shape, zooms, axis)  # a bad axis is this file's one-line reason
        itemsize = img.get_data_dtype().itemsize
        reason = limits.refuse(volume_cost(shape, zooms, axis, volumes, itemsize)) or (
            None if minc else _stored_problem(img, math.prod(shape) * itemsize * volumes))  # a short MINC fails when its voxels are read
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on corrupt headers
        return Skipped(str(path), f"unreadable {_format(path)} header: {one_line(exc)}")
    if reason:
        return Skipped(str(path), reason)
    files = list(dict.fromkeys([str(path), str(img.file_map["image"].filename)]))
    modality = "MR" if isinstance(img, nib.parrec.PARRECImage) else None  # Philips PAR/REC is MR export
    return volume_series(path, files, volumes, shape, zooms, axis, identity, load_volume, modality)


def volume_series(
    path: Path, files: list[str], volumes: int, shape: tuple[int, int, int], zooms: tuple[float, float, float],
    axis: int | None, identity: Identity, load: Callable[[str, int, int | None, SeriesKey], list[Slice | Skipped]],
    header_modality: str | None = None,
) -> list[Series]:
    """One lazily loaded Series per 3D volume of a volume file, from its canonical shape and zooms."""
    cut = slice_axis(shape, zooms, axis)
    first, second = _in_plane(cut)
    patient, modality = identity.patient(path), identity.modality_of(path, header_modality)
    series = []
    for volume in range(volumes):
        series_id = files[0] + (f"#t{volume}" if volumes > 1 else "")
        key = SeriesKey(patient, series_id, modality)
        series.append(
            Series(
                patient_id=patient, series_id=series_id, modality=modality, path=files[0], files=files,
                n_slices=shape[cut], shape=(shape[second], shape[first]), spacing=(zooms[second], zooms[first]),
                loader=partial(load, files[0], volume, axis, key),
            )
        )
    return series


def _as_grey(data: np.ndarray) -> np.ndarray:
    """Float32 scalar voxels; RGB(A) structured voxels become BT.601 grey."""
    if data.dtype.names:
        return to_grey(np.stack([data[name] for name in data.dtype.names], axis=-1), colour=True)
    return np.asarray(data, dtype=np.float32)


def load_volume(path: str, volume: int, axis: int | None, key: SeriesKey) -> list[Slice | Skipped]:
    """Read one 3D volume, reorient it to the closest canonical and cut it into ordered Slices."""
    import nibabel as nib

    try:
        with quiet():
            img = nib.load(path)
            data = _voxels(img, volume)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: report the file, keep going
        return [Skipped(path, f"cannot read {_format(path)} voxels: {one_line(exc)}")]
    return cut_volume(data, _geometry(img), axis, key, path)


def _voxels(img: Any, volume: int) -> np.ndarray:
    """One 3D volume of a nibabel image as float32 (grey for RGB) voxels, read through its data proxy."""
    data = img.dataobj[:, :, :, volume] if len(img.shape) >= 4 else img.dataobj
    return _as_grey(np.asanyarray(data)).reshape(_shape3(img))


def image_slices(img: Any, identity: Identity | None = None, name: str = "<image>") -> list[Slice]:
    """Every slice of an in-memory nibabel volume image (each volume of a 4D one), cut and oriented as the archive
    reader cuts files (`read_nifti`): NIfTI and Analyze, and the formats only nibabel reads (PAR/REC, MGH, MINC);
    raises ValueError in one line."""
    import nibabel as nib

    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise ValueError(f"{name}: {type(img).__name__} is not a volume image")
    identity = identity or Identity()
    patient, modality = identity.patient(Path(name)), identity.modality_of(Path(name))
    try:
        volumes, grid = _volume_count(img.shape), _geometry(img)
        slices: list[Slice] = []
        for volume in range(volumes):
            key = SeriesKey(patient, name + (f"#t{volume}" if volumes > 1 else ""), modality)
            slices += cut_volume(_voxels(img, volume), grid, None, key, name)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on malformed images
        raise ValueError(f"{name}: unreadable volume: {one_line(exc)}") from None
    return slices


def cut_volume(data: np.ndarray, grid: Geometry, axis: int | None, key: SeriesKey, path: str) -> list[Slice]:
    """Reorient a 3D voxel array (voxel axes of `grid`) to the closest canonical and cut it into ordered Slices."""
    import nibabel as nib

    ornt, shape, zooms, affine = grid
    data = nib.orientations.apply_orientation(data, ornt)
    cut = slice_axis(shape, zooms, axis)
    first, second = _in_plane(cut)
    step = float(np.linalg.norm(affine[:3, cut])) or 1.0
    origin = float(np.dot(affine[:3, 3], affine[:3, cut] / step))
    # (slice, first, second) → flip both in-plane axes → (slice, rows=second, cols=first), one copy
    images = np.ascontiguousarray(np.flip(np.moveaxis(data, cut, 0), axis=(1, 2)).transpose(0, 2, 1))
    return [
        Slice(
            pixels=images[index], patient_id=key.patient_id, series_id=key.series_id, modality=key.modality,
            index=index, path=path, spacing=(zooms[second], zooms[first]), position=origin + index * step,
        )
        for index in range(shape[cut])
    ]
