"""PNG plots of a bench run: mAP and retention against α, and each method's distance against α, with CI bands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas


def _array(values: Sequence[float | None]) -> np.ndarray:
    """Floats with None as NaN (undefined points leave gaps)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _band(axes: Axes, alphas: np.ndarray, values: Sequence[float | None], bounds: Sequence[Sequence[float | None]], label: str, scale: float = 1.0) -> None:
    """A line with its 95% interval as a shaded band."""
    low, high = _array([b[0] for b in bounds]), _array([b[1] for b in bounds])
    line = axes.plot(alphas, _array(values) * scale, marker="o", markersize=3, label=label)[0]
    axes.fill_between(alphas, low * scale, high * scale, color=line.get_color(), alpha=0.15, linewidth=0)


def _ran(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods that produced figures."""
    return {name: m for name, m in results["methods"].items() if "status" not in m}


def plot_retrieval(results: dict[str, Any], path: Path) -> Path:
    """mAP(α) and retention(α) per method, side by side."""
    alphas = np.asarray(results["alphas"], dtype=np.float64)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    map_axes, retention_axes = figure.subplots(1, 2)
    for name, m in _ran(results).items():
        _band(map_axes, alphas, m["map"], m["ci"]["map"], name)
        _band(retention_axes, alphas, m["retention"], m["ci"]["retention"], name, scale=100.0)
    map_axes.set(xlabel="distortion severity α", ylabel="mAP", title="mAP against α (95% CI)")
    retention_axes.set(xlabel="distortion severity α", ylabel="retention, % of mAP(0)", title="mAP retention against α")
    retention_axes.legend(fontsize=8)
    for axes in (map_axes, retention_axes):
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return path


def plot_distances(results: dict[str, Any], path: Path) -> Path:
    """One panel per method: mean d(x, D_α(x)) against α, with the method's identity movement as a dashed line."""
    alphas = np.asarray(results["alphas"], dtype=np.float64)
    ran = _ran(results)
    columns = min(4, max(1, len(ran)))
    rows = max(1, math.ceil(len(ran) / columns))
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axes, (name, m) in zip(panels, ran.items()):
        _band(axes, alphas, m["distance"], m["ci"]["distance"], "d(x, D_α(x))")
        identity, bounds = m["identity_distance"], m["ci"]["identity_distance"]
        if identity is not None:
            axes.axhline(identity, color="grey", linestyle="--", linewidth=1, label="other patients")
            if None not in bounds:
                axes.axhspan(bounds[0], bounds[1], color="grey", alpha=0.1, linewidth=0)
        axes.set(title=name, xlabel="α", ylabel="distance")
        axes.grid(alpha=0.3)
    for axes in panels[len(ran):]:
        axes.set_visible(False)
    if ran:
        panels[0].legend(fontsize=7)
    figure.suptitle("Distance between a slice and its distorted copy against α (95% CI)")
    figure.savefig(path, dpi=120)
    return path
