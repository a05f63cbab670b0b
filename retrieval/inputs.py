"""What `DistortionAwareMetric.embed` accepts, turned into network inputs with the resize factor the α estimator reads.

Raw 2D arrays in modality units (any orientation, dtype or byte order a reader returns), preprocessed 3×S×S
tensors, file and folder paths, the objects pydicom and nibabel return, and the archive readers' own `Slice`s.
Every refusal is one line that names the input and the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from retrieval.preprocess import STORED_CT_INTERCEPT, looks_like_stored_ct, prepare_slice

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage
    from pydicom import Dataset

    from retrieval.io import Slice

ImageLike = Union[np.ndarray, torch.Tensor, str, Path, "Dataset", "SpatialImage", "Slice"]
Spacing = tuple[float, float]
STORED_VALUES_WARNING = ("a CT array with no value below -50 besides its padding and some above 700 holds stored pixel values, "
                         "not Hounsfield units: read with the usual rescale intercept -1024; pass the pydicom Dataset (or HU) to be exact")


def normalise_modality(modality: str | None) -> str | None:
    """The modality in capitals ('ct' → 'CT'), or None; a non-string is refused. Which modalities an input may have
    is checked where it is read (raw arrays: CT or MR; files: their own, or this)."""
    if modality is None:
        return None
    if not isinstance(modality, str):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    return modality.strip().upper()


def _pair(value: Any) -> Spacing:
    """One pixel size: a positive number (square pixels) or a (row, column) pair of positive millimetres."""
    pair = (value, value) if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) else value
    try:
        row, column = (float(v) for v in pair)
    except (TypeError, ValueError):
        row = column = float("nan")
    if not (np.isfinite(row) and np.isfinite(column) and row > 0 and column > 0):
        raise ValueError(f"spacing must be a positive millimetre size or a (row, column) pair of them, got {value!r}")
    return row, column


def check_spacing(spacing: Any) -> Spacing | list[Spacing] | None:
    """None (square pixels of 1 mm), one pixel size for every raw array (a number or a (row, column) pair), or a
    list of them, one per raw array in order (a sequence holding a sequence: [(0.9, 0.9), 1.2]; two numbers alone are
    one (row, column) pair)."""
    if spacing is None:
        return None
    if isinstance(spacing, (list, tuple)) and any(isinstance(v, (list, tuple, np.ndarray)) for v in spacing):
        return [_pair(v) for v in spacing]
    return _pair(spacing)


def _raw_array(item: Any) -> torch.Tensor:
    """A 2D (or one slice kept 3D) float32 tensor of an array or tensor; one-line refusals of what no reader returns."""
    if item is None:
        raise ValueError("nothing to embed: got None")
    if isinstance(item, torch.Tensor):
        array = item.detach().cpu()
        dtype = array.dtype
        complex_ = array.is_complex()
    else:
        array = np.asarray(item)
        dtype, complex_ = array.dtype, np.iscomplexobj(array)
        if not complex_ and not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"expected numeric pixels, got an array of {array.dtype} with shape {array.shape}")
    if complex_:
        raise ValueError(f"complex pixels ({dtype}): pass the magnitude (np.abs) of a complex MR image")
    if 0 in tuple(array.shape):
        raise ValueError(f"an empty array (shape {tuple(array.shape)}) holds no slice")
    tensor = array.float() if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.ndim == 3 and 1 in (tensor.shape[0], tensor.shape[2]) and min(tensor.shape) == 1:
        tensor = tensor.squeeze(0 if tensor.shape[0] == 1 else 2)  # one slice kept 3D: data[:, :, k:k+1], (1, H, W)
    return tensor


def _one_array(images: Any) -> bool:
    """Whether `images` is one array (a slice, a preprocessed input, or a 1-D array refused as such), not a sequence of
    items: a 1-D array of paths (a DataFrame column) is a sequence."""
    if not hasattr(images, "ndim") or images.ndim not in (1, 2, 3):
        return False
    return images.ndim > 1 or isinstance(images, torch.Tensor) or np.issubdtype(images.dtype, np.number)


def is_preprocessed(tensor: torch.Tensor, size: int) -> bool:
    """Whether a tensor is a checkpoint's network input (3×S×S in [0, 1]), not a volume of three slices."""
    return tensor.ndim == 3 and tuple(tensor.shape) == (3, size, size) and float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def slice_input(pixels: np.ndarray | torch.Tensor, modality: str, size: int, spacing: Spacing) -> tuple[torch.Tensor, float]:
    """One raw slice in modality units → its 3×S×S network input (a tensor) and its resize factor."""
    array, factor = prepare_slice(pixels, modality, size, spacing)
    return torch.from_numpy(array), factor


def _reader_slices(items: Iterable[Any], modality: str | None, size: int) -> Iterator[tuple[torch.Tensor, float]]:
    """Slices a reader gave, preprocessed with their own (or the given) modality and spacing; a Skipped raises."""
    from retrieval.io import Skipped

    for item in items:
        if isinstance(item, Skipped):
            raise ValueError(f"{item.path}: {item.reason}")
        chosen = modality or item.modality
        if chosen not in ("CT", "MR"):
            raise ValueError(f"{item.path}: modality {item.modality!r} is not CT or MR; pass modality=")
        yield slice_input(item.pixels, chosen, size, item.spacing)


def network_inputs(images: ImageLike | Sequence[ImageLike], modality: str | None, spacing: Spacing | list[Spacing] | None,
                   size: int) -> Iterator[tuple[torch.Tensor, float]]:
    """Network inputs of everything `embed` takes, each with its resize factor (NaN for a preprocessed input).
    `spacing` is `check_spacing`'s: one pixel size for every raw array, or one per raw array."""
    from retrieval.io import Identity, Slice, is_reader_object, iter_slices, object_slices

    if images is None:
        raise ValueError("nothing to embed: got None")
    per_array = spacing if isinstance(spacing, list) else None
    raw = 0
    single = isinstance(images, (str, Path, Slice)) or is_reader_object(images) or _one_array(images)
    for item in [images] if single else images:
        if isinstance(item, (str, Path)):
            yield from _reader_slices(iter_slices([Path(item)], Identity(modality=modality)), modality, size)
        elif is_reader_object(item):  # a Dataset or a volume image: rescale, spacing and modality from its header
            yield from _reader_slices(object_slices(item, Identity(modality=modality)), modality, size)
        elif isinstance(item, Slice):
            yield from _reader_slices([item], modality, size)
        else:
            tensor = _raw_array(item)
            if is_preprocessed(tensor, size):
                yield tensor, float("nan")
                continue
            if tensor.ndim != 2:
                raise ValueError(f"expected a 2D slice or a preprocessed 3×{size}×{size} input in [0, 1], got shape "
                                 f"{tuple(tensor.shape)}: pass a volume as its nibabel image or pydicom Dataset, or as a list of 2D slices")
            if modality not in ("CT", "MR"):
                raise ValueError(f"modality must be 'CT' or 'MR' for raw arrays (it cannot be read from a file), got {modality!r}")
            if not torch.isfinite(tensor).any():
                raise ValueError(f"raw array {raw} has no finite pixel value")
            if per_array is not None and raw >= len(per_array):
                raise ValueError(f"more raw arrays than the {len(per_array)} spacings given")
            pixel = per_array[raw] if per_array is not None else (spacing or (1.0, 1.0))
            if modality == "CT" and looks_like_stored_ct(tensor):  # ds.pixel_array without its rescale
                warnings.warn(STORED_VALUES_WARNING, stacklevel=3)  # at the caller of embed
                tensor = tensor + STORED_CT_INTERCEPT
            raw += 1
            yield slice_input(tensor, modality, size, pixel)
    if per_array is not None and raw != len(per_array):
        raise ValueError(f"{len(per_array)} spacings for {raw} raw arrays")
