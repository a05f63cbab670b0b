"""DICOM: headers without pixels, series grouping and ordering, and lazy pixel decoding to modality units.

Files are grouped by (patient, SeriesInstanceUID); a multi-frame file contributes one entry per frame, a Siemens
mosaic one per tile. Why a file cannot be used is decided from its header in `retrieval.io.dicom_checks`.
Order within a series: ImagePositionPatient projected on the slice normal (the cross product of
ImageOrientationPatient) when every frame has both, else InstanceNumber; ties keep file path and frame order.
Pixels are RescaleSlope × value + RescaleIntercept (per frame for enhanced multi-frame; a Modality LUT when
present), so CT is in Hounsfield units; colour becomes grey; MONOCHROME1 is negated so higher is brighter.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from retrieval.io.dicom_checks import budget_problem, frame_count, jp2_problem, mosaic, pixel_problem, tile_side, usable
from retrieval.io.identity import Identity
from retrieval.io.limits import Limits
from retrieval.io.pixels import one_line, quiet, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

_J2K = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}


@dataclass(frozen=True)
class Frame:
    """Header facts about one 2D frame of a DICOM file, enough to group, order and later decode it."""

    path: str
    frame: int
    patient_id: str
    modality: str
    series_uid: str
    study_id: str | None
    shape: tuple[int, int]
    spacing: tuple[float, float]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """`count` floats from a DICOM multi-value, or None when absent or malformed."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def _functional(ds: Any, index: int, sequence: str, attribute: str) -> Any:
    """An attribute from frame `index`'s functional group, then the shared group, then the top level."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1]):
        inner = item.get(sequence)
        if inner and attribute in inner[0]:
            return inner[0].get(attribute)
    return ds.get(attribute)


def _frames(path: Path, ds: Any, identity: Identity, tiles: int) -> list[Frame]:
    """One Frame per frame of a dataset (per tile of a Siemens mosaic of `tiles` slices), with identity, position and
    spacing resolved."""
    count = frame_count(ds)
    patient = identity.patient(path, str(ds.get("PatientID") or "") or None)
    modality = identity.modality_of(path, str(ds.get("Modality") or "") or None)
    series = str(ds.get("SeriesInstanceUID") or "") or str(path)
    study = str(ds.get("StudyInstanceUID") or "") or None
    instance = ds.get("InstanceNumber")
    try:
        instance = int(instance) if instance not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    shape = (int(ds.Rows), int(ds.Columns))
    if tiles:  # one frame per tile; the mosaic's position is not any tile's, so tiles order by instance, then tile
        side = tile_side(tiles)
        count, shape = tiles, (shape[0] // side, shape[1] // side)
    frames = []
    for index in range(count):
        spacing = _floats(_functional(ds, index, "PixelMeasuresSequence", "PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2)
        position = _functional(ds, index, "PlanePositionSequence", "ImagePositionPatient") if not tiles and (count == 1 or "PerFrameFunctionalGroupsSequence" in ds) else None
        frames.append(
            Frame(
                path=str(path), frame=index, patient_id=patient, modality=modality, series_uid=series,
                study_id=study, shape=shape, spacing=spacing if spacing and min(spacing) > 0 else (1.0, 1.0),
                position=_floats(position, 3),  # type: ignore[arg-type]
                orientation=_floats(_functional(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                instance=instance,
            )
        )
    return frames


def read_header(path: Path, identity: Identity, limits: Limits = Limits()) -> list[Frame] | Skipped:
    """Read one DICOM file's header (no pixels) into frames, or the reason it cannot be used (limits included)."""
    import pydicom

    try:
        with quiet(), path.open("rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
            size = path.stat().st_size
            tiles, reason = usable(ds)
            reason = reason or budget_problem(ds, size, limits) or pixel_problem(handle, ds, size)
            if reason:
                return Skipped(str(path), reason)
            return _frames(path, ds, identity, tiles)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input; report, never stop
        return Skipped(str(path), f"unreadable DICOM header: {one_line(exc)}")


def _projection(frame: Frame, normal: np.ndarray | None) -> float | None:
    """Position of a frame along the series' slice normal (mm), or None without geometry."""
    if normal is None or frame.position is None:
        return None
    return float(np.dot(frame.position, normal))


def _normal(frames: list[Frame]) -> np.ndarray | None:
    """Unit slice normal of a series when every frame has a position and orientation, else None."""
    if not all(f.position is not None and f.orientation is not None for f in frames):
        return None
    orientation = np.asarray(frames[0].orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 1e-6 else None


def order_frames(frames: list[Frame]) -> list[tuple[Frame, float | None]]:
    """Frames in slice order with their positions: by projection on the normal, else by InstanceNumber."""
    normal = _normal(frames)
    big = float("inf")

    def key(frame: Frame) -> tuple[float, float, str, int]:
        projected = _projection(frame, normal)
        instance = float(frame.instance) if frame.instance is not None else big
        first = projected if projected is not None else instance
        return (first, instance, frame.path, frame.frame)

    return [(frame, _projection(frame, normal)) for frame in sorted(frames, key=key)]


def _rescale(ds: Any, index: int, image: np.ndarray) -> np.ndarray:
    """Apply the modality transform of frame `index`: Modality LUT, or slope/intercept (per frame when given)."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(image, ds), dtype=np.float32)
    slope = _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    image = image.astype(np.float32)
    if slope not in (None, "") and float(slope) != 1.0:
        image *= np.float32(float(slope))
    if intercept not in (None, "") and float(intercept) != 0.0:
        image += np.float32(float(intercept))
    return image


def _assume_transfer_syntax(ds: Any) -> None:
    """Give a dataset without a Transfer Syntax UID the native one it was parsed with (little endian for one made in
    memory), so it can decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


def _decode(path: str) -> tuple[Any, np.ndarray]:
    """Read one file with pixels: the dataset and an array of shape (frames, rows, cols[, samples])."""
    import pydicom

    with quiet():
        ds = pydicom.dcmread(path, force=True)
    return ds, _pixels(ds, mosaic(ds)[0])


def _pixels(ds: Any, tiles: int) -> np.ndarray:
    """Decode a dataset's pixels into an array of shape (frames, rows, cols[, samples]); a Siemens mosaic of `tiles`
    slices into (tiles, rows, cols)."""
    with quiet():
        _assume_transfer_syntax(ds)
        problem = jp2_problem(ds) if ds.file_meta.TransferSyntaxUID in _J2K else None
        if problem:
            raise ValueError(problem)
        try:
            pixels = ds.pixel_array
        except BaseException as exc:  # a Rust codec's panic (pylibjpeg-rle on a corrupt segment) is a BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise ValueError(f"the decoder failed on corrupt data ({one_line(exc)})") from None
    count = frame_count(ds)
    colour = int(ds.get("SamplesPerPixel") or 1) > 1
    if count == 1:
        pixels = pixels[None]
    expected_ndim = 4 if colour else 3
    if pixels.ndim != expected_ndim:
        raise ValueError(f"decoded pixel array has shape {pixels.shape}, expected {count} frame(s)")
    if tiles:  # (1, side·r, side·c) → (tiles, r, c), row by row
        side = tile_side(tiles)
        rows, cols = pixels.shape[1] // side, pixels.shape[2] // side
        pixels = pixels[0].reshape(side, rows, side, cols).swapaxes(1, 2).reshape(side * side, rows, cols)[:tiles]
    return pixels


def _image(ds: Any, pixels: np.ndarray, frame: int) -> np.ndarray:
    """Frame `frame` of decoded `pixels` in modality units: grey, rescaled, MONOCHROME1 inverted."""
    colour = int(ds.get("SamplesPerPixel") or 1) > 1
    image = _rescale(ds, frame, to_grey(pixels[frame], colour) if colour else pixels[frame])
    return -image if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1" else image


def dataset_slices(ds: Any, identity: Identity | None = None, name: str = "<dataset>") -> list[Slice]:
    """Every frame of an in-memory pydicom Dataset as a Slice, as the archive reader would give it (rescaled to
    modality units, MONOCHROME1 inverted, spacing and identity from the header); raises ValueError in one line.
    A dataset without a transfer syntax is given the native one (`_assume_transfer_syntax`)."""
    tiles, reason = usable(ds)
    if reason:
        raise ValueError(f"{name}: {reason}")
    try:
        pixels = _pixels(ds, tiles)
        frames = _frames(Path(name), ds, identity or Identity(), tiles)
        return [
            Slice(pixels=_image(ds, pixels, f.frame), patient_id=f.patient_id, series_id=f.series_uid, modality=f.modality,
                  index=f.frame, path=name, spacing=f.spacing, study_id=f.study_id)
            for f in frames
        ]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed datasets
        raise ValueError(f"{name}: cannot decode pixel data: {one_line(exc)}") from None


def load_frames(ordered: tuple[tuple[Frame, float | None], ...], series: SeriesKey) -> list[Slice | Skipped]:
    """Decode a series' frames file by file into Slices (in order); a file that fails becomes a Skipped."""
    by_file: dict[str, list[int]] = defaultdict(list)
    for index, (frame, _) in enumerate(ordered):
        by_file[frame.path].append(index)
    slices: dict[int, Slice] = {}
    problems: list[Skipped] = []
    for path, indices in by_file.items():
        try:
            ds, pixels = _decode(path)
            for index in indices:
                frame, position = ordered[index]
                slices[index] = Slice(
                    pixels=_image(ds, pixels, frame.frame), patient_id=series.patient_id, series_id=series.series_id,
                    modality=series.modality, index=index, path=path, spacing=frame.spacing,
                    study_id=series.study_id, position=position,
                )
        except Exception as exc:  # noqa: BLE001 - a corrupt file must not stop the series
            problems.append(Skipped(path, f"cannot decode pixel data: {one_line(exc)}"))
    return [slices[i] for i in sorted(slices)] + problems


def _most_common(values: Iterable[Any]) -> Any:
    """The most frequent value (first seen on ties)."""
    return Counter(values).most_common(1)[0][0]


def group_series(frames: Iterable[Frame]) -> Iterator[Series]:
    """Group frames by (patient, SeriesInstanceUID) into lazily loaded, ordered Series."""
    groups: dict[tuple[str, str], list[Frame]] = defaultdict(list)
    for frame in frames:
        groups[(frame.patient_id, frame.series_uid)].append(frame)
    for (patient, uid), members in groups.items():
        ordered = tuple(order_frames(members))
        files = list(dict.fromkeys(frame.path for frame, _ in ordered))
        folder = files[0] if len(files) == 1 else os.path.commonpath([str(Path(f).parent) for f in files])
        series = Series(
            patient_id=patient, series_id=uid, modality=members[0].modality, path=folder, files=files,
            n_slices=len(ordered), shape=_most_common(f.shape for f in members),
            spacing=_most_common(f.spacing for f in members), study_id=members[0].study_id,
        )
        series.loader = partial(load_frames, ordered, SeriesKey(patient, uid, members[0].modality, members[0].study_id))
        yield series
