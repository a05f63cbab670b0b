"""A montage of one slice at several severities, so a person can see what the α levels mean."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.distortions.core import check_alpha, check_modality, distort
from retrieval.distortions.ct import dose_fraction
from retrieval.io import Slice
from retrieval.preprocess import CT_WINDOWS, MR_PERCENTILES, resize_square


def working_spacing(item: Slice, size: int) -> float:
    """Pixel size in mm of a slice after `resize_square` to size×size (aspect kept)."""
    return max(item.pixels.shape[0] * item.spacing[0], item.pixels.shape[1] * item.spacing[1]) / size


def display_range(image: np.ndarray, modality: str) -> tuple[float, float]:
    """Grey-level range shared by every panel: the CT soft-tissue window, or the clean MR slice's percentiles."""
    if modality == "CT":
        level, width = CT_WINDOWS[0]
        return level - width / 2, level + width / 2
    low, high = np.percentile(image, MR_PERCENTILES)
    return float(low), float(high)


def panel_title(alpha: float, modality: str) -> str:
    """'α = 0.3' plus the simulated CT dose."""
    if modality == "CT":
        return f"α = {alpha:g}  (dose {100 * float(dose_fraction(alpha)):.3g}%)"
    return f"α = {alpha:g}"


def render(item: Slice, alphas: Sequence[float], out: Path, seed: int = 0, size: int = 256) -> None:
    """Write a one-row montage of `item` resized to size×size and distorted at each α (same seed) to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modality = check_modality(item.modality)
    levels = [check_alpha(alpha) for alpha in alphas]
    image = resize_square(item.pixels, size, item.spacing)
    spacing = working_spacing(item, size)
    low, high = display_range(image, modality)
    figure, axes = plt.subplots(1, len(levels), figsize=(2.6 * len(levels), 3.0), squeeze=False)
    for axis, alpha in zip(axes[0], levels):
        axis.imshow(distort(image, alpha, modality, seed, spacing), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(panel_title(alpha, modality), fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{Path(item.path).name} · slice {item.index} · {modality} · {size}² at {spacing:.2f} mm · seed {seed}", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
