"""Why a DICOM file cannot be used, from its header before any pixel is decoded (and the checks decoding needs).

Not a slice of anatomy (SR, RT, segmentations, DICOMDIR, localizers, a Siemens mosaic that cannot be split), over
the reading limits, or holding fewer bytes than its header declares; each returns a one-line reason or None.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from retrieval.io.limits import FLOAT32, Cost, Limits, deflate_floor, rle_floor, short_of
from retrieval.io.pixels import one_line, quiet

_DICOMDIR = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_NATIVE = {"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
_NOT_ANATOMY = {  # image SOP classes whose pixels are labels or dose, not anatomy
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
}
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}


def image_type(ds: Any) -> list[str]:
    """The values of ImageType (0008,0008), upper-case: pydicom gives one value as a str, several as a MultiValue."""
    value = ds.get("ImageType")
    return [str(v).strip().upper() for v in ([value] if isinstance(value, str) else value or [])]


def mosaic(ds: Any) -> tuple[int, str | None]:
    """How many slices a Siemens mosaic tiles into its one image (ImageType MOSAIC: fMRI, diffusion and perfusion
    series store each volume so), from NumberOfImagesInMosaic in its CSA header as nibabel reads it, on a grid of
    ⌈√n⌉ tiles a side, row by row (as dcm2niix and nibabel split it); 0 for any other image. And why it cannot be
    split, or None."""
    if "MOSAIC" not in image_type(ds):
        return 0, None
    try:
        with quiet():  # importing nibabel.nicom warns that its DICOM readers are experimental: only its CSA parser is used
            from nibabel.nicom import csareader

            count = int(csareader.get_n_mosaic(csareader.get_csa_header(ds, "image")) or 0)
    except Exception as exc:  # noqa: BLE001 - a damaged or absent CSA header: nibabel raises several types
        return 0, f"Siemens mosaic whose CSA header gives no NumberOfImagesInMosaic ({one_line(exc)}): its slices cannot be told apart"
    side = tile_side(count) if count > 0 else 0
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not side or rows % side or cols % side or frame_count(ds) != 1 or int(ds.get("SamplesPerPixel") or 1) != 1:
        return 0, (f"Siemens mosaic of {count} slices whose {rows} × {cols} image does not divide into a {side} × {side} grid"
                   " of grey tiles: its slices cannot be told apart")
    return count, None


def tile_side(tiles: int) -> int:
    """Tiles a side of the square grid a Siemens mosaic of `tiles` slices fills row by row."""
    return math.ceil(math.sqrt(tiles))


def usable(ds: Any) -> tuple[int, str | None]:
    """(the slices a Siemens mosaic tiles, 0 for any other image; why the dataset holds no usable slice, or None):
    `not_a_slice`, then `mosaic`, each read once."""
    reason = not_a_slice(ds)
    return (0, reason) if reason else mosaic(ds)


def not_a_slice(ds: Any) -> str | None:
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
    if "LOCALIZER" in image_type(ds):  # a CT scout or MR plan: what DICOM-to-volume converters leave out too
        return "localizer (ImageType LOCALIZER): a projection or planning image, not a slice of the series"
    return None


def pixel_problem(handle: Any, ds: Any, size: int) -> str | None:
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


def frame_count(ds: Any) -> int:
    """NumberOfFrames as the decoder will see it (1 when absent or malformed)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def budget_problem(ds: Any, size: int, limits: Limits) -> str | None:
    """Refuse, from the header alone, a file above the limits or declaring more pixels than its `size` bytes can hold."""
    rows, cols, frames = int(ds.Rows), int(ds.Columns), frame_count(ds)
    samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    depth = max(1, -(-int(ds.get("BitsAllocated") or 8) // 8))
    decoded = rows * cols * frames * samples * depth
    reason = limits.refuse(Cost((rows, cols), frames, decoded + rows * cols * frames * FLOAT32))
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID") or "") if meta is not None else ""
    if reason or syntax in _NATIVE:
        return reason  # native pixel data is checked against the file by pixel_problem
    if syntax == _RLE:
        return short_of(decoded, rle_floor(frames, rows * cols, samples * depth), size, "as RLE (2 bytes per 128-byte run, 72 per frame)")
    if syntax == _DEFLATED:
        return short_of(decoded, deflate_floor(decoded), size, "deflated (at most 1032× expansion)")
    return short_of(decoded, 8 * frames, size, f"as {frames:,} encapsulated frames (an 8-byte item each)")


def jp2_problem(ds: Any) -> str | None:
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
