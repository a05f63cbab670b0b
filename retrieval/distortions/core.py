"""The deterministic transform: distort slices in modality units at a severity α ∈ [0, 1] with a seed."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from retrieval.distortions import ct, mr

MODALITIES = ("CT", "MR")
MAX_SEED = 2**63 - 1


def check_modality(modality: str) -> str:
    """The canonical modality name ("CT" or "MR"); ValueError naming anything else."""
    name = str(modality).upper()
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: distortions exist for CT and MR")
    return name


def check_alpha(alpha: float) -> float:
    """α as a float in [0, 1]; ValueError naming anything else."""
    value = float(alpha)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def check_seed(seed: int) -> int:
    """A seed as an int in [0, 2^63); ValueError naming anything else."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)


def _per_slice(value: float | Sequence[float] | torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A scalar or per-slice sequence as a (B,) float32 tensor."""
    tensor = torch.as_tensor(value, dtype=torch.float32).reshape(-1).cpu()
    if tensor.numel() == 1:
        tensor = tensor.expand(batch)
    if tensor.numel() != batch:
        raise ValueError(f"{name} has {tensor.numel()} values for a batch of {batch}")
    return tensor


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block: the many small per-slice ops of a distortion wait on the
    thread pool for a busy core otherwise (100× slower CT with 2 threads on this loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def distort_batch(
    images: torch.Tensor,
    alphas: torch.Tensor | Sequence[float],
    modality: str,
    seeds: Sequence[int],
    spacing: float | Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Distort (B, H, W) slices in modality units (HU for CT) at per-slice α with per-slice seeds.

    Slice i equals `distort(images[i], alphas[i], modality, seeds[i])`: each draws from its own
    generator seeded by its seed. `spacing` is the CT pixel size in mm (one value or one per slice;
    None: the slice spans a 350 mm field of view).
    Slices with α = 0 come back bit for bit; the output keeps shape, dtype and device (the work is
    done on CPU).
    """
    name = check_modality(modality)
    if not isinstance(images, torch.Tensor) or images.ndim != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point (B, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    batch = images.shape[0]
    alpha = _per_slice(alphas, batch, "alphas")
    for value in alpha.tolist():
        check_alpha(value)
    if len(seeds) != batch:
        raise ValueError(f"seeds has {len(seeds)} values for a batch of {batch}")
    seeds = [check_seed(seed) for seed in seeds]
    pixel = _per_slice(ct.default_spacing(tuple(images.shape[1:])) if spacing is None else spacing, batch, "spacing")
    if not bool(torch.all(pixel > 0)) or not all(math.isfinite(s) for s in pixel.tolist()):
        raise ValueError(f"spacing must be positive millimetres, got {spacing!r}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")

    device, images = images.device, images.cpu()
    out = images.clone()
    active = torch.nonzero(alpha > 0).flatten()
    if active.numel() == 0:
        return out.to(device)
    generators = [torch.Generator().manual_seed(seeds[i]) for i in active.tolist()]
    x = images[active].float()
    with single_threaded():
        if name == "CT":
            result = ct.low_dose(x, alpha[active], generators, pixel[active])
        else:
            result = mr.corrupt(x, alpha[active], generators)
    out[active] = result.to(images.dtype)
    return out.to(device)


def distort(image: np.ndarray, alpha: float, modality: str, seed: int, spacing: float | None = None) -> np.ndarray:
    """Distort one 2D slice in modality units (HU for CT) at severity α with a seed; α = 0 is a copy."""
    check_modality(modality)
    value = check_alpha(alpha)
    check_seed(seed)
    array = np.asarray(image)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image must be a floating-point 2D array, got {array.dtype} {array.shape}")
    if value == 0.0:
        return array.copy()
    batch = torch.from_numpy(np.ascontiguousarray(array))[None]
    return distort_batch(batch, torch.tensor([value]), modality, [seed], spacing)[0].numpy()


def distort_mixed(images: torch.Tensor, modalities: np.ndarray, alphas: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
    """Distort a (B, S, S) batch of mixed modalities in modality units, one distort_batch call per modality."""
    out = images.clone()
    for modality in np.unique(modalities):
        rows = np.flatnonzero(modalities == modality)
        out[rows] = distort_batch(images[rows], torch.as_tensor(alphas[rows], dtype=torch.float32), str(modality), seeds[rows].tolist())
    return out
