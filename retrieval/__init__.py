"""Content-based medical image retrieval with a distortion-aware learned similarity metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
TAU = 0.3  # α at or below which a distortion is benign (the paper's threshold)
BETA = 0.1  # weight of the α difference in the distortion-aware distance (retrieval.metric)

if TYPE_CHECKING:
    from retrieval.metric import DistortionAwareMetric
    from retrieval.model import DisentangledSiamese

__all__ = ["BETA", "TAU", "DisentangledSiamese", "DistortionAwareMetric", "__version__"]


def __getattr__(name: str) -> Any:
    """Import the torch-backed classes lazily so `import retrieval` (and the CLI) stays fast."""
    if name == "DisentangledSiamese":
        from retrieval.model import DisentangledSiamese

        return DisentangledSiamese
    if name == "DistortionAwareMetric":
        from retrieval.metric import DistortionAwareMetric

        return DistortionAwareMetric
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
