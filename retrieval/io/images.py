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


_TIFF_SIZE_TAGS = {256: 1, 257: 0}  # ImageWidth → cols, ImageLength → rows
_TIFF_ENTRIES_READ = 16  # tags come sorted, and the two size tags are among the first


def _tiff_pages(path: Path, limit: int) -> list[tuple[int, int]]:
    """(rows, cols) of each page of a classic TIFF along its IFD chain (at most `limit` + 1 pages; a loop ends it, as in Pillow)."""
    pages: list[tuple[int, int]] = []
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
            entries = struct.unpack(endian + "H", count)[0]
            size = [0, 0]
            block = handle.read(12 * min(entries, _TIFF_ENTRIES_READ))
            for at in range(0, len(block) - 11, 12):
                tag, kind = struct.unpack(endian + "HH", block[at : at + 4])
                if tag in _TIFF_SIZE_TAGS and kind in (3, 4):  # SHORT or LONG, held in the entry itself
                    size[_TIFF_SIZE_TAGS[tag]] = struct.unpack(endian + ("H" if kind == 3 else "I"), block[at + 8 : at + (10 if kind == 3 else 12)])[0]
            pages.append((size[0], size[1]))
            handle.seek(offset + 2 + 12 * entries)
            link = handle.read(4)
            offset = struct.unpack(endian + "I", link)[0] if len(link) == 4 else 0
    return pages


def _cost(image: object, path: Path, limits: Limits) -> Cost:
    """Cost of an image file: its largest page, its page count, every page decoded and as float32 at once.

    A TIFF's pages (each with its own size) are read from its IFD chain, never walked further than the limit;
    other formats declare their frame count up front (APNG, MPO), all of the first frame's size."""
    width, height = image.size  # type: ignore[attr-defined]
    if image.format == "TIFF":  # type: ignore[attr-defined]
        pages = [(rows or height, cols or width) for rows, cols in _tiff_pages(path, limits.max_slices_per_file)] or [(height, width)]
    else:
        pages = [(height, width)] * int(getattr(image, "n_frames", 1))
    largest = max(pages, key=lambda shape: shape[0] * shape[1])
    return Cost(largest, len(pages), sum(rows * cols for rows, cols in pages) * (_DECODED + FLOAT32))


def read_image(path: Path, identity: Identity, limits: Limits = Limits()) -> Series | Skipped:
    """Header of a 2D image file (size and page count, no pixels) as a Series, or the reason it is unusable (limits included)."""
    from PIL import Image

    try:
        with quiet():
            with Image.open(path) as image:
                width, height = image.size
                reason = limits.refuse(Cost((height, width), 1, height * width * (_DECODED + FLOAT32)))
                cost = None if reason else _cost(image, path, limits)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt files
        return Skipped(str(path), f"unreadable image: {one_line(exc)}")
    reason = reason or limits.refuse(cost)  # type: ignore[arg-type]
    if reason:
        return Skipped(str(path), reason)
    resolved, pages = str(path), cost.slices  # type: ignore[union-attr]
    patient, modality = identity.patient(path), identity.modality_of(path)
    key = SeriesKey(patient, resolved, modality)
    return Series(
        patient_id=patient, series_id=resolved, modality=modality, path=resolved, files=[resolved], n_slices=pages,
        shape=(height, width), spacing=(1.0, 1.0), loader=partial(load_image, resolved, pages, key, limits.max_slice_pixels),
    )


def _grey(image: object) -> np.ndarray:
    """Float32 grey pixels of one Pillow frame: scalar modes as stored, any colour mode by BT.601 luma."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in _SCALAR_MODES or mode.startswith("I;16"):
        return to_grey(np.asarray(image), colour=False)
    return to_grey(np.asarray(image.convert("RGB")), colour=True)  # type: ignore[attr-defined]


def load_image(path: str, pages: int, key: SeriesKey, max_pixels: int = Limits.max_slice_pixels) -> list[Slice | Skipped]:
    """Decode every page of an image file into Slices (a decoding failure, or a page above `max_pixels`, becomes one Skipped)."""
    from PIL import Image

    slices: list[Slice | Skipped] = []
    try:
        with quiet():
            with Image.open(path) as image:
                for page in range(pages):
                    image.seek(page)
                    width, height = image.size
                    if width * height > max_pixels:  # a page the header walk did not see (its size tags past the first entries)
                        return [Skipped(path, f"page {page} of {height}×{width} pixels, above --max-slice-pixels {max_pixels:,}")]
                    slices.append(
                        Slice(pixels=_grey(image), patient_id=key.patient_id, series_id=key.series_id,
                              modality=key.modality, index=page, path=path)
                    )
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
        return [Skipped(path, f"cannot decode image: {one_line(exc)}")]
    return slices
