"""Plain 2D images (PNG, JPEG, TIFF incl. multi-page) via Pillow: one series per file, colour to grey."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from retrieval.io.identity import Identity
from retrieval.io.pixels import one_line, quiet, to_grey
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

_SCALAR_MODES = ("1", "L", "I", "F")


def read_image(path: Path, identity: Identity) -> Series | Skipped:
    """Header of a 2D image file (size and page count, no pixels) as a Series, or the reason it is unusable."""
    from PIL import Image

    try:
        with quiet():
            with Image.open(path) as image:
                width, height = image.size
                pages = int(getattr(image, "n_frames", 1))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt files
        return Skipped(str(path), f"unreadable image: {one_line(exc)}")
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
