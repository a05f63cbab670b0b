"""PNG thumbnails of catalog slices (by id only) and of a query, in the modality's display window.

CT is shown in the soft-tissue window (the first of the network's three CT windows), MR and other
images with the percentile normalisation the network sees; both through `retrieval.preprocess`, so
a thumbnail is what the model was given, at thumbnail size.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from retrieval.io import Identity, Slice, read_path
from retrieval.preprocess import prepare

SIZE = 160  # pixels on a side
CACHED = 2048  # thumbnails kept in memory (about 10 KiB each)


class SliceUnavailable(LookupError):
    """The catalog row exists but its image can no longer be read."""


def render(pixels: np.ndarray, modality: str, spacing: tuple[float, float] = (1.0, 1.0), size: int = SIZE) -> bytes:
    """A size×size greyscale PNG of one slice in modality units, aspect kept by pixel spacing."""
    grey = prepare(pixels, modality, size, spacing)[0]
    buffer = io.BytesIO()
    Image.fromarray(np.rint(grey * 255.0).astype(np.uint8)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def pick(slices: list[Slice], series_id: str, slice_index: int) -> Slice | None:
    """The slice a catalog row names among those read from its file (a single-frame file holds just one)."""
    for candidates in ([s for s in slices if s.series_id == series_id and s.index == slice_index],
                       [s for s in slices if s.index == slice_index], slices if len(slices) == 1 else []):
        if candidates:
            return candidates[0]
    return None


@lru_cache(maxsize=CACHED)
def catalog_thumbnail(slice_id: int, path: str, series_id: str, slice_index: int, modality: str) -> bytes:
    """The thumbnail of catalog slice `slice_id`, read from the file its row names (ids are never reused, so cached by id)."""
    try:
        chosen = pick(read_path(path, Identity(modality=modality)), series_id, slice_index)
    except (OSError, ValueError) as exc:
        raise SliceUnavailable(f"slice {slice_id}: its image can no longer be read ({type(exc).__name__})") from None
    if chosen is None:
        raise SliceUnavailable(f"slice {slice_id}: its file no longer holds slice {slice_index}")
    return render(chosen.pixels, modality, chosen.spacing)
