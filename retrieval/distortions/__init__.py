"""Acquisition distortions of severity α ∈ [0, 1]: CT low dose (projection domain), MR k-space corruption.

`distort` / `distort_batch` are deterministic given (α, seed); α = 0 is the identity, bit for bit.
`RandomDistortion` samples α and seeds and records them so any slice or batch replays exactly.
See docs/distortions.md for the physics and the α mappings.
"""

from retrieval.distortions.core import MODALITIES, distort, distort_batch, distort_mixed
from retrieval.distortions.ct import dose_fraction
from retrieval.distortions.random import DistortionRecord, RandomDistortion, describe

__all__ = ["MODALITIES", "DistortionRecord", "RandomDistortion", "describe", "distort", "distort_batch", "distort_mixed", "dose_fraction"]
