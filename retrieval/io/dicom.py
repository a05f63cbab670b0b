"""DICOM: headers without pixels, series grouping and ordering, and lazy pixel decoding to modality units.

Files are grouped by (patient, SeriesInstanceUID); a multi-frame file contributes one entry per frame, a Siemens
mosaic one per tile (`_mosaic`).
Order within a series: ImagePositionPatient projected on the slice normal (the cross product of
ImageOrientationPatient) when every frame has both, else InstanceNumber; ties keep file path and frame order.
Pixels are RescaleSlope × value + RescaleIntercept (per frame for enhanced multi-frame; a Modality LUT when
present), so CT is in Hounsfield units; colour becomes grey; MONOCHROME1 is negated so higher is brighter.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from retrieval.io.identity import Identity
from retrieval.io.limits import FLOAT32, Cost, Limits, deflate_floor, rle_floor, short_of
from retrieval.io.pixels import one_line, quiet, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

_DICOMDIR = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_NATIVE = {"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_J2K = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
_NOT_ANATOMY = {  # image SOP classes whose pixels are labels or dose, not anatomy
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
}
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}


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


def _image_type(ds: Any) -> list[str]:
    """The values of ImageType (0008,0008), upper-case: pydicom gives one value as a str, several as a MultiValue."""
    value = ds.get("ImageType")
    return [str(v).strip().upper() for v in ([value] if isinstance(value, str) else value or [])]


def _mosaic(ds: Any) -> tuple[int, str | None]:
    """How many slices a Siemens mosaic tiles into its one image (ImageType MOSAIC: fMRI, diffusion and perfusion
    series store each volume so), from NumberOfImagesInMosaic in its CSA header as nibabel reads it, on a grid of
    ⌈√n⌉ tiles a side, row by row (as dcm2niix and nibabel split it); 0 for any other image. And why it cannot be
    split, or None."""
    if "MOSAIC" not in _image_type(ds):
        return 0, None
    try:
        with quiet():  # importing nibabel.nicom warns that its DICOM readers are experimental: only its CSA parser is used
            from nibabel.nicom import csareader

            count = int(csareader.get_n_mosaic(csareader.get_csa_header(ds, "image")) or 0)
    except Exception as exc:  # noqa: BLE001 - a damaged or absent CSA header: nibabel raises several types
        return 0, f"Siemens mosaic whose CSA header gives no NumberOfImagesInMosaic ({one_line(exc)}): its slices cannot be told apart"
    side = math.ceil(math.sqrt(count)) if count > 0 else 0
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not side or rows % side or cols % side or _frame_count(ds) != 1 or int(ds.get("SamplesPerPixel") or 1) != 1:
        return 0, (f"Siemens mosaic of {count} slices whose {rows} × {cols} image does not divide into a {side} × {side} grid"
                   " of grey tiles: its slices cannot be told apart")
    return count, None


def _not_a_slice(ds: Any) -> str | None:
    """Why a dataset holds no slice of anatomy (SR, presentation state, RT, raw data, DICOMDIR, a localizer…), or None:
    from the attributes a QIDO-RS listing gives too (`INSTANCE_FIELDS` of retrieval.io.dicomweb)."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    name = UID(str(sop)).name if sop else "no SOP class"
    if sop == _DICOMDIR:
        return "DICOMDIR: a directory index, not an image"
    if sop in _NOT_ANATOMY:
        return f"non-image DICOM ({name}): its pixels are labels or dose, not anatomy"
    if "Rows" not in ds or "Columns" not in ds:
        if "Image Storage" in name:
            return f"{name} without image attributes (no Rows/Columns)"
        return f"non-image DICOM ({name}): no image pixel data"
    if "LOCALIZER" in _image_type(ds):  # a CT scout or MR plan: what DICOM-to-volume converters leave out too
        return "localizer (ImageType LOCALIZER): a projection or planning image, not a slice of the series"
    return None


def _pixel_problem(handle: Any, ds: Any, size: int) -> str | None:
    """Check the Pixel Data element where the header read stopped: present, and long enough when native."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == _DEFLATED:
        return None  # the header was read from an inflated stream: positions in the file do not apply
    start = handle.tell()
    head = handle.read(12)
    implicit, little = getattr(ds, "original_encoding", (None, True))
    implicit = implicit or not (head[4:6].isalpha() and head[4:6].isupper())  # files that lie about their VR
    endian = "<" if little is not False else ">"
    if len(head) < 8 or struct.unpack(endian + "HH", head[:4]) not in _PIXEL_TAGS:
        return "no Pixel Data element (missing, or the file is truncated before it)"
    if implicit or head[4:6] in _LONG_VRS:
        offset, length = (8, struct.unpack(endian + "I", head[4:8])[0]) if implicit else (12, struct.unpack(endian + "I", head[8:12])[0])
    else:
        offset, length = 8, struct.unpack(endian + "H", head[6:8])[0]
    if length == 0xFFFFFFFF:
        return None  # encapsulated (compressed): checked when decoded
    held = size - start - offset
    if held < length:
        return f"truncated: Pixel Data declares {length} bytes, the file holds {max(held, 0)}"
    from pydicom.pixels.utils import get_expected_length

    try:
        expected = get_expected_length(ds)
    except Exception:  # noqa: BLE001 - malformed image attributes surface when decoding
        return None
    if length < expected:
        return f"Pixel Data holds {length} bytes but the image attributes need {expected}"
    return None


def _frame_count(ds: Any) -> int:
    """NumberOfFrames as the decoder will see it (1 when absent or malformed)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _budget_problem(ds: Any, size: int, limits: Limits) -> str | None:
    """Refuse, from the header alone, a file above the limits or declaring more pixels than its `size` bytes can hold."""
    rows, cols, frames = int(ds.Rows), int(ds.Columns), _frame_count(ds)
    samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    depth = max(1, -(-int(ds.get("BitsAllocated") or 8) // 8))
    decoded = rows * cols * frames * samples * depth
    reason = limits.refuse(Cost((rows, cols), frames, decoded + rows * cols * frames * FLOAT32))
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID") or "") if meta is not None else ""
    if reason or syntax in _NATIVE:
        return reason  # native pixel data is checked against the file by _pixel_problem
    if syntax == _RLE:
        return short_of(decoded, rle_floor(frames, rows * cols, samples * depth), size, "as RLE (2 bytes per 128-byte run, 72 per frame)")
    if syntax == _DEFLATED:
        return short_of(decoded, deflate_floor(decoded), size, "deflated (at most 1032× expansion)")
    return short_of(decoded, 8 * frames, size, f"as {frames:,} encapsulated frames (an 8-byte item each)")


def _frames(path: Path, ds: Any, identity: Identity) -> list[Frame]:
    """One Frame per frame of a dataset, with identity, position and spacing resolved."""
    count = _frame_count(ds)
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
    tiles = _mosaic(ds)[0]
    if tiles:  # one frame per tile; the mosaic's position is not any tile's, so tiles order by instance, then tile
        side = math.ceil(math.sqrt(tiles))
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
            reason = _not_a_slice(ds) or _mosaic(ds)[1] or _budget_problem(ds, size, limits) or _pixel_problem(handle, ds, size)
            if reason:
                return Skipped(str(path), reason)
            return _frames(path, ds, identity)
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


def _jp2_problem(ds: Any) -> str | None:
    """A JP2-wrapped JPEG 2000 frame with a zero-length box before its codestream: pydicom's box walk never ends on it."""
    from pydicom.encaps import generate_fragments

    for fragment in generate_fragments(ds.PixelData):
        offset = 12 if fragment.startswith(_JP2_SIGNATURE) else len(fragment)
        while offset < len(fragment) and fragment[offset + 4 : offset + 8] != b"jp2c":  # the walk of pydicom's get_j2k_parameters
            length = int.from_bytes(fragment[offset : offset + 4], "big")
            if length == 0:
                return f"JPEG 2000 frame with a zero-length JP2 box at byte {offset} (a parser loop, not an image)"
            offset += length
    return None


def _decode(path: str) -> tuple[Any, np.ndarray]:
    """Read one file with pixels: the dataset and an array of shape (frames, rows, cols[, samples])."""
    import pydicom

    with quiet():
        ds = pydicom.dcmread(path, force=True)
    return ds, _pixels(ds)


def _pixels(ds: Any) -> np.ndarray:
    """Decode a dataset's pixels into an array of shape (frames, rows, cols[, samples])."""
    with quiet():
        _assume_transfer_syntax(ds)
        problem = _jp2_problem(ds) if ds.file_meta.TransferSyntaxUID in _J2K else None
        if problem:
            raise ValueError(problem)
        try:
            pixels = ds.pixel_array
        except BaseException as exc:  # a Rust codec's panic (pylibjpeg-rle on a corrupt segment) is a BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise ValueError(f"the decoder failed on corrupt data ({one_line(exc)})") from None
    count = _frame_count(ds)
    colour = int(ds.get("SamplesPerPixel") or 1) > 1
    if count == 1:
        pixels = pixels[None]
    expected_ndim = 4 if colour else 3
    if pixels.ndim != expected_ndim:
        raise ValueError(f"decoded pixel array has shape {pixels.shape}, expected {count} frame(s)")
    tiles = _mosaic(ds)[0]
    if tiles:  # (1, side·r, side·c) → (tiles, r, c), row by row
        side = math.ceil(math.sqrt(tiles))
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
    reason = _not_a_slice(ds) or _mosaic(ds)[1]
    if reason:
        raise ValueError(f"{name}: {reason}")
    try:
        pixels = _pixels(ds)
        frames = _frames(Path(name), ds, identity or Identity())
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
