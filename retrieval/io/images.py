"""Plain 2D images (PNG, JPEG, TIFF incl. multi-page) via Pillow: one series per file, colour to grey."""

from __future__ import annotations

import struct
from functools import partial
from pathlib import Path

import numpy as np

from retrieval.io.identity import Identity
from retrieval.io.limits import FLOAT32, Cost, Limits
from retrieval.io.pixels import one_line, quiet, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

_SCALAR_MODES = ("1", "L", "I", "F")
_DECODED = 4  # bytes a pixel takes in Pillow's decoded image at most (RGB(A), I and F modes)


def _tiff_pages(path: Path, limit: int) -> int:
    """Pages of a classic TIFF, counted along its IFD chain (at most `limit` + 1, a loop ends it as in Pillow)."""
    with path.open("rb") as handle:
        head = handle.read(8)
        endian = "<" if head[:2] == b"II" else ">"
        offset, seen = struct.unpack(endian + "I", head[4:8])[0], set()
        while offset and offset not in seen and len(seen) <= limit:
            seen.add(offset)
            handle.seek(offset)
            count = handle.read(2)
            if len(count) < 2:
                break
            handle.seek(offset + 2 + 12 * struct.unpack(endian + "H", count)[0])
            link = handle.read(4)
            offset = struct.unpack(endian + "I", link)[0] if len(link) == 4 else 0
    return max(1, len(seen))


def _pages(image: object, path: Path, limit: int) -> int:
    """Page count without walking Pillow's pages: declared up front (APNG, MPO) or counted along a TIFF's IFD chain."""
    if image.format == "TIFF":  # type: ignore[attr-defined]
        return _tiff_pages(path, limit)
    return int(getattr(image, "n_frames", 1))


def read_image(path: Path, identity: Identity, limits: Limits = Limits()) -> Series | Skipped:
    """Header of a 2D image file (size and page count, no pixels) as a Series, or the reason it is unusable (limits included)."""
    from PIL import Image

    try:
        with quiet():
            with Image.open(path) as image:
                width, height = image.size
                reason = limits.refuse(Cost((height, width), 1, height * width * (_DECODED + FLOAT32)))
                pages = 1 if reason else _pages(image, path, limits.max_slices_per_file)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt files
        return Skipped(str(path), f"unreadable image: {one_line(exc)}")
    reason = reason or limits.refuse(Cost((height, width), pages, pages * height * width * (_DECODED + FLOAT32)))
    if reason:
        return Skipped(str(path), reason)
    resolved = str(path)
    patient, modality = identity.patient(path), identity.modality_of(path)
    key = SeriesKey(patient, resolved, modality)
    return Series(
        patient_id=patient, series_id=resolved, modality=modality, path=resolved, files=[resolved],
        n_slices=pages, shape=(height, width), spacing=(1.0, 1.0), loader=partial(load_image, resolved, pages, key),
    )


def _grey(image: object) -> np.ndarray:
    """Float32 grey pixels of one Pillow frame: scalar modes as stored, any colour mode by BT.601 luma."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in _SCALAR_MODES or mode.startswith("I;16"):
        return to_grey(np.asarray(image), colour=False)
    return to_grey(np.asarray(image.convert("RGB")), colour=True)  # type: ignore[attr-defined]


def load_image(path: str, pages: int, key: SeriesKey) -> list[Slice | Skipped]:
    """Decode every page of an image file into Slices (a decoding failure becomes one Skipped)."""
    from PIL import Image

    slices: list[Slice | Skipped] = []
    try:
        with quiet():
            with Image.open(path) as image:
                for page in range(pages):
                    image.seek(page)
                    slices.append(
                        Slice(pixels=_grey(image), patient_id=key.patient_id, series_id=key.series_id,
                              modality=key.modality, index=page, path=path)
                    )
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
        return [Skipped(path, f"cannot decode image: {one_line(exc)}")]
    return slices
