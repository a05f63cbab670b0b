"""Registry of classical retrieval baselines: name → a unit with its direction, gallery statistics and scoring.

    baseline = create("ssim")
    gallery = baseline.prepare_gallery(images)      # (G, 1, H, W) or (G, H, W) in [0, 1], once
    scores = baseline.score(queries, gallery)       # (Q, G); baseline.direction says which way is closer
    distances = baseline.distance(scores)           # 0 for identical images, whatever the direction

`create` raises BaselineUnavailable (with a `reason` for the report) when a baseline cannot run here.
"""

from __future__ import annotations

from typing import Any

from eval.baselines.base import Baseline, BaselineUnavailable, Direction, Stats, as_images
from eval.baselines.cwssim import CWSSIM
from eval.baselines.dino import DINO
from eval.baselines.gmsd import GMSD
from eval.baselines.mi import NMI
from eval.baselines.pixel import MSE, NCC
from eval.baselines.ssim import SSIM

BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (MSE, SSIM, NCC, NMI, GMSD, CWSSIM, DINO)}

__all__ = ["BASELINES", "Baseline", "BaselineUnavailable", "Direction", "Stats", "as_images", "create"]


def create(name: str, **options: Any) -> Baseline:
    """A ready baseline by registry name (options go to its constructor, e.g. dino's `weights`)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name](**options)
