"""PNG plots of a bench run: both protocols' mAP and retention against α, each method's distance against α, and â against α."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

MIXED_X = 1.12  # where the mixed gallery's point sits on the α axis, right of α = 1


def _array(values: Sequence[float | None]) -> np.ndarray:
    """Floats with None as NaN (undefined points leave gaps)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _band(axes: Axes, x: np.ndarray, values: Sequence[float | None], bounds: Sequence[Sequence[float | None]], label: str,
          scale: float = 1.0) -> str:
    """A line with its 95% interval as a shaded band; returns the line's colour."""
    low, high = _array([b[0] for b in bounds]), _array([b[1] for b in bounds])
    line = axes.plot(x, _array(values) * scale, marker="o", markersize=3, label=label)[0]
    axes.fill_between(x, low * scale, high * scale, color=line.get_color(), alpha=0.15, linewidth=0)
    return line.get_color()


def _ran(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods that produced figures."""
    return {name: m for name, m in results["methods"].items() if "status" not in m}


def _protocol_panel(axes: Axes, results: dict[str, Any], protocol: str, key: str, scale: float) -> None:
    """One figure of one protocol against α for every method; the archive's mixed gallery as a point with an error bar."""
    levels = results["alphas"] if protocol == "query" else [v for v in results["levels"] if v != "mixed"]
    x = np.asarray(levels, dtype=np.float64)
    for name, m in _ran(results).items():
        block = m[protocol]
        count = len(x)
        colour = _band(axes, x, block[key][:count], block["ci"][key][:count], name, scale)
        if protocol == "archive" and len(block[key]) > count:
            value, (low, high) = block[key][count], block["ci"][key][count]
            if value is not None and low is not None and high is not None:
                axes.errorbar([MIXED_X], [value * scale], yerr=[[(value - low) * scale], [(high - value) * scale]], fmt="s", color=colour,
                              markersize=4, capsize=2)
    if protocol == "archive":
        axes.set_xticks([*x, MIXED_X], [*(f"{v:g}" for v in x), "mixed"])


def plot_retrieval(results: dict[str, Any], path: Path) -> Path:
    """mAP and retention against α: the query protocol (distorted queries) above, the archive protocol (distorted gallery) below."""
    figure = Figure(figsize=(11, 8), layout="constrained")
    grid = figure.subplots(2, 2)
    for row, (protocol, xlabel) in enumerate((("query", "query distortion α"), ("archive", "gallery distortion α"))):
        _protocol_panel(grid[row, 0], results, protocol, "map", 1.0)
        _protocol_panel(grid[row, 1], results, protocol, "retention", 100.0)
        grid[row, 0].set(xlabel=xlabel, ylabel="mAP", title=f"{protocol} protocol: mAP (95% CI)")
        grid[row, 1].set(xlabel=xlabel, ylabel="% of clean mAP", title=f"{protocol} protocol: mAP retained")
    grid[0, 1].legend(fontsize=8)
    for axes in grid.ravel():
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
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
        _band(axes, alphas, m["query"]["distance"], m["query"]["ci"]["distance"], "d(x, D_α(x))")
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
    figure.savefig(path, dpi=110)
    return path


def plot_calibration(results: dict[str, Any], path: Path) -> Path:
    """Per modality: â of the mixed gallery's slices against their true α, and the queries' mean â at each α (95% CI)."""
    calibration = results.get("calibration") or {"by_modality": {}}
    modalities = list(calibration["by_modality"])
    figure = Figure(figsize=(4.2 * max(1, len(modalities)), 4), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, max(1, len(modalities)), squeeze=False).ravel())
    gallery = results.get("per_query", {}).get("gallery", {})
    for axes, modality in zip(panels, modalities):
        if "alpha_hat_mixed" in gallery:
            mine = np.asarray(gallery["modality"]) == modality
            axes.scatter(np.asarray(gallery["mixed_alpha"], dtype=float)[mine], _array(gallery["alpha_hat_mixed"])[mine], s=4, alpha=0.35,
                         label="mixed gallery slices")
        entry = calibration["by_modality"][modality]
        _band(axes, np.asarray(results["alphas"], dtype=float), entry["mean_alpha_hat"], entry["ci"]["mean_alpha_hat"], "queries: mean â")
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="â = α")
        axes.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="true α", ylabel="predicted â", title=f"{modality}: â against α")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    if not modalities:
        panels[0].text(0.5, 0.5, "no method predicts α", ha="center", va="center")
        panels[0].set_axis_off()
    figure.savefig(path, dpi=110)
    return path
