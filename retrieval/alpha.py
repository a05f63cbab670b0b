"""The α estimator: distortion severity â from statistics of the network input, the α the product reports.

The network's own α head learns what distortion looks like on its training scanners and does not carry to
others (held-out Spearman(â, α) 0.10–0.38 on CT; clean slices of unseen datasets read 0.2–0.4,
docs/training.md). What a distortion does to a slice is more general than that: CT low dose adds noise, MR
adds noise, ghosts and a k-space cut-off. So â comes from 23 statistics that measure exactly those
(`distortion_statistics`), mapped to α by regression trees fitted on seeded distortions of the training slices
(`training.alpha_fit`). Trees predict flat outside what they were fitted on, so an unusual slice gets a bounded
â instead of an extrapolated one.

Whole slices are 256–512 pixels wide, and their resize to the grid averages the scanner's noise down 4–8 times; a
zoomed crop or a small image keeps it, and whole-slice trees read that noise as distortion (pydicom's clean
MR_small.dcm: 0.38). So a slice resized by at most `small_factor` (`retrieval.preprocess.resize_factor`; 2 for
the shipped checkpoint) is read by a second set of trees, fitted also on zoomed and coarser views of the training
slices with the resize factor as a 24th input. A slice whose factor is unknown (an already preprocessed input)
is read as a whole slice.

The fitted trees live in the checkpoint config (`"alpha_estimator"`, plain numbers that survive JSON and
weights_only loading); both embedding backends apply them to the same preprocessed input, so â is the same
whichever backend embeds. A checkpoint without one reports its α head, as before. numpy only: the query path
never imports torch or scikit-learn for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

BANDS = (0.2, 0.3, 0.4, 0.45)  # spectral energy beyond these frequencies (cycles/pixel, Chebyshev radius)
INNER = (0.05, 0.95)  # a Haar block counts as inside the window when its mean lies here (not clipped air or bone)
MIN_PIXELS = 8  # fewer unclipped coefficients than this: the statistic is 0
FLOOR = 1e-4  # added before a log, below any noise level that matters at 8 bits or more
FLAT_QUANTILES = (0.1, 0.25)  # of the local standard deviation: the flattest tenth and quarter of the slice
CONFIG_KEY = "alpha_estimator"
FACTOR_COLUMN = 23  # of `estimator_features`: the log2 resize factor, after the statistics


def _haar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One level of the 2D Haar transform of (..., H, W): approximation and the diagonal, vertical, horizontal details."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 4, (a - b - c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2


def _sorted_inside(values: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's `inside` values sorted ascending (the rest pushed to the end as +inf), and how many are inside:
    one sort of the batch (np.nanmedian per row is 4× slower)."""
    ordered = np.sort(np.where(inside, values, np.inf).reshape(len(values), -1), axis=1)
    return ordered, inside.reshape(len(inside), -1).sum(1)


def _mad(detail: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Median absolute Haar detail per image over the `inside` coefficients (the wavelet noise estimate of Donoho &
    Johnstone, without its 0.6745: only ranks matter to the trees); 0 where fewer than MIN_PIXELS are inside."""
    values, count = _sorted_inside(np.abs(detail), inside)
    rows = np.arange(len(values))
    low, high = values[rows, np.maximum(count - 1, 0) // 2], values[rows, np.minimum(count // 2, values.shape[1] - 1)]
    return np.where(count >= MIN_PIXELS, (low + high) / 2, 0.0)


def _flat_noise(image: np.ndarray) -> list[np.ndarray]:
    """The noise floor of the flattest regions: the FLAT_QUANTILES of the 3×3 local standard deviation over the pixels
    inside the window. Where a slice is homogeneous (fat, muscle, liver, fluid) only noise varies, which is what
    low-dose CT adds and anatomy does not."""
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    height, width = image.shape[1:]
    shifts = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    mean = sum(shifts) / 9.0
    spread = np.sqrt(np.maximum(sum(s * s for s in shifts) / 9.0 - mean * mean, 0.0))
    values, count = _sorted_inside(spread, (mean > INNER[0]) & (mean < INNER[1]))
    rows = np.arange(len(values))
    return [np.where(count >= MIN_PIXELS, _log(values[rows, np.minimum((count * q).astype(np.int64), values.shape[1] - 1)]), 0.0)
            for q in FLAT_QUANTILES]


def _log(x: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(x, 0.0) + FLOOR)


def distortion_statistics(batch: np.ndarray) -> np.ndarray:
    """(B, 23) statistics of preprocessed (B, 3, S, S) slices that move with distortion, per channel 0 and 1 (CT: the
    soft-tissue and wide windows; MR: its one channel twice):

    - columns 0–17, per channel: the log share of spectral energy beyond each of BANDS (noise raises it on CT; MR's
      k-space cut-off lowers it); the log median |Haar detail| at level 1 over the whole slice and over the unclipped
      blocks (diagonal, vertical, horizontal), and the diagonal at level 2 (noise levels that anatomy, edges and
      clipping barely move);
    - column 18: 1 for an MR input (its three channels are equal), 0 for CT;
    - columns 19–22: per channel, the log noise floor of the flattest regions (`_flat_noise`).
    """
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 8:
        raise ValueError(f"expected preprocessed (B, 3, S, S) slices with S ≥ 8, got shape {x.shape}")
    frequencies = [np.abs(np.fft.fftfreq(n)) for n in x.shape[2:]]
    radius = np.maximum(frequencies[0][:, None], frequencies[1][None, :])
    columns = []
    for channel in (0, 1):
        image = x[:, channel]
        power = np.abs(np.fft.fft2(image)) ** 2
        total = power.reshape(len(x), -1).sum(1) + 1e-12
        columns += [np.log10(power[:, radius > band].sum(1) / total + 1e-9) for band in BANDS]
        low, diagonal, vertical, horizontal = _haar(image)
        inside = (low > INNER[0]) & (low < INNER[1])
        columns += [_log(_mad(diagonal, np.ones_like(inside))), *(_log(_mad(d, inside)) for d in (diagonal, vertical, horizontal))]
        low2, diagonal2, _, _ = _haar(low)
        columns.append(_log(_mad(diagonal2, (low2 > INNER[0]) & (low2 < INNER[1]))))
    columns.append(np.all(x[:, 0] == x[:, 1], axis=(1, 2)).astype(np.float64))
    for channel in (0, 1):
        columns += _flat_noise(x[:, channel])
    return np.nan_to_num(np.stack(columns, 1)).astype(np.float32)


def estimator_features(batch: np.ndarray, factors: "np.ndarray | None" = None) -> np.ndarray:
    """(B, 24) estimator inputs: `distortion_statistics` and the log2 `resize_factor` of each slice (NaN when unknown);
    the whole-slice trees read the first 23, the small-image trees all 24."""
    statistics = distortion_statistics(batch)
    scale = np.full(len(statistics), np.nan) if factors is None else np.log2(np.asarray(factors, dtype=np.float64))
    if scale.shape != (len(statistics),):
        raise ValueError(f"expected one resize factor per slice ({len(statistics)}), got shape {scale.shape}")
    return np.column_stack([statistics, scale]).astype(np.float32)  # the scale lands at FACTOR_COLUMN


@dataclass(frozen=True)
class AlphaEstimator:
    """Regression trees over `estimator_features`: â = clip(baseline + Σ_trees leaf value, 0, 1).

    Arrays are (trees, nodes), padded to the largest tree; a sample goes left when its feature ≤ the threshold.
    `estimate` reads a slice resized by at most `small_factor` with the `small` trees instead, fitted on zoomed and
    coarser views: the whole-slice trees never split on the resize factor, so their figures stay those of whole slices.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    leaf: np.ndarray
    baseline: float
    small: "AlphaEstimator | None" = None  # trees for slices resized by at most `small_factor` (zoomed crops, small images)
    small_factor: float = 0.0

    @classmethod
    def from_sklearn(cls, model: Any) -> "AlphaEstimator":
        """Copy the trees of a fitted `HistGradientBoostingRegressor` (squared error, no categorical features).

        Reads scikit-learn's tree arrays (`_predictors`, `_baseline_prediction`: private, stable since 0.21);
        tests/retrieval/test_alpha.py checks the copy against the model's own predict."""
        trees = [predictors[0].nodes for predictors in model._predictors]
        width = max(len(nodes) for nodes in trees)

        def padded(field: str, dtype: Any) -> np.ndarray:
            out = np.zeros((len(trees), width), dtype=dtype)
            for row, nodes in enumerate(trees):
                out[row, : len(nodes)] = nodes[field]
            return out

        padding = np.arange(width)[None, :] >= np.array([len(nodes) for nodes in trees])[:, None]  # never reached; leaves of value 0
        return cls(padded("feature_idx", np.int64), padded("num_threshold", np.float64), padded("left", np.int64),
                   padded("right", np.int64), padded("value", np.float64), padded("is_leaf", bool) | padding,
                   float(np.ravel(model._baseline_prediction)[0]))

    def predict(self, statistics: np.ndarray) -> np.ndarray:
        """â ∈ [0, 1] for (B, F) statistics."""
        stats = np.asarray(statistics, dtype=np.float64)
        trees = np.arange(len(self.feature))[:, None]
        node = np.zeros((len(self.feature), len(stats)), dtype=np.int64)
        samples = np.arange(len(stats))[None, :]
        for _ in range(self.feature.shape[1]):
            if self.leaf[trees, node].all():
                break
            go_left = stats[samples, self.feature[trees, node]] <= self.threshold[trees, node]
            node = np.where(self.leaf[trees, node], node, np.where(go_left, self.left[trees, node], self.right[trees, node]))
        return np.clip(self.baseline + self.value[trees, node].sum(0), 0.0, 1.0).astype(np.float32)

    def estimate(self, batch: np.ndarray, factors: "np.ndarray | None" = None) -> np.ndarray:
        """â ∈ [0, 1] of preprocessed (B, 3, S, S) slices with their `resize_factor`s (None or NaN: unknown, read as
        whole slices)."""
        return self.read(estimator_features(batch, factors))

    def read(self, features: np.ndarray) -> np.ndarray:
        """â ∈ [0, 1] for (B, 24) `estimator_features`: rows whose factor is at most `small_factor` by the small-image
        trees, the rest by the whole-slice trees."""
        if self.small is None:
            return self.predict(features)
        small = features[:, FACTOR_COLUMN] <= np.log2(self.small_factor)  # NaN (unknown) compares False: a whole slice
        alpha = np.empty(len(features), dtype=np.float32)
        alpha[~small], alpha[small] = self.predict(features[~small]), self.small.predict(features[small])  # each row once
        return alpha

    def to_config(self) -> dict[str, Any]:
        """Plain lists for a checkpoint config (JSON, weights_only)."""
        return {"baseline": self.baseline, "feature": self.feature.tolist(), "threshold": self.threshold.tolist(),
                "left": self.left.tolist(), "right": self.right.tolist(), "value": self.value.tolist(), "leaf": self.leaf.astype(int).tolist(),
                **({} if self.small is None else {"small": self.small.to_config(), "small_factor": self.small_factor})}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "AlphaEstimator | None":
        """The estimator a checkpoint config holds, or None (the network's α head reports â)."""
        entry = config.get(CONFIG_KEY)
        if not entry:
            return None
        small = cls.from_config({CONFIG_KEY: entry["small"]}) if entry.get("small") else None
        return cls(np.asarray(entry["feature"], np.int64), np.asarray(entry["threshold"], np.float64), np.asarray(entry["left"], np.int64),
                   np.asarray(entry["right"], np.int64), np.asarray(entry["value"], np.float64), np.asarray(entry["leaf"], bool),
                   float(entry["baseline"]), small, float(entry.get("small_factor", 0.0)))
