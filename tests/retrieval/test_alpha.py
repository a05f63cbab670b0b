"""The α estimator: statistics that move with real distortions of the slices pydicom ships, trees that predict what
scikit-learn's do, and a config that survives JSON."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sklearn.ensemble import HistGradientBoostingRegressor

from retrieval.alpha import CONFIG_KEY, AlphaEstimator, distortion_statistics
from retrieval.distortions import distort
from retrieval.io import read_path
from retrieval.preprocess import intensity_array, resize_square

LEVELS = (0.0, 0.3, 0.6, 0.9)
BEYOND_02, BEYOND_045, MR_FLAG, FLAT_10 = 0, 3, 18, 19  # columns of distortion_statistics (channel 0)


def _distorted(name: str, modality: str) -> np.ndarray:
    """pydicom's test slice on the 64² working grid at each of LEVELS (seed 0), as network input."""
    item = read_path(get_testdata_file(name))[0]
    grid = resize_square(item.pixels, 64, item.spacing)
    return np.stack([intensity_array(distort(grid, level, modality, 0), modality) for level in LEVELS])


def test_ct_noise_raises_the_high_frequency_share_and_the_mr_cut_off_removes_it() -> None:
    ct, mr = distortion_statistics(_distorted("CT_small.dcm", "CT")), distortion_statistics(_distorted("MR_small.dcm", "MR"))
    assert ct.shape == mr.shape == (len(LEVELS), 23) and np.isfinite(ct).all() and np.isfinite(mr).all()
    assert list(ct[:, MR_FLAG]) == [0.0] * len(LEVELS) and list(mr[:, MR_FLAG]) == [1.0] * len(LEVELS)
    assert np.all(np.diff(ct[:, BEYOND_02]) > 0.1), ct[:, BEYOND_02]  # low dose: more noise, more energy beyond 0.2 cycles/pixel
    assert np.all(np.diff(ct[:, FLAT_10]) > 0.02), ct[:, FLAT_10]  # and a higher noise floor where the slice is flat
    assert np.all(mr[1:, BEYOND_045] < mr[0, BEYOND_045] - 1.0), mr[:, BEYOND_045]  # the k-space cut-off: 10× less beyond 0.45


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 1, 64, 64), (2, 3, 4, 4)])
def test_statistics_refuse_what_is_not_a_preprocessed_batch(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected preprocessed"):
        distortion_statistics(np.zeros(shape, np.float32))


def test_trees_predict_what_scikit_learn_predicts_and_survive_json() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 23))
    target = np.clip(0.5 + 0.3 * features[:, 0] - 0.2 * features[:, 3] * features[:, 5], 0.0, 1.0)
    model = HistGradientBoostingRegressor(max_iter=30, max_depth=3, random_state=0).fit(features, target)
    estimator = AlphaEstimator.from_sklearn(model)
    probe = rng.normal(scale=2.0, size=(200, 23))  # wider than the fit: leaves at the edges
    np.testing.assert_allclose(estimator.predict(probe), np.clip(model.predict(probe), 0.0, 1.0), atol=1e-6)
    restored = AlphaEstimator.from_config(json.loads(json.dumps({CONFIG_KEY: estimator.to_config()})))
    assert restored is not None
    np.testing.assert_array_equal(restored.predict(probe), estimator.predict(probe))
    assert AlphaEstimator.from_config({"layout": 0.5}) is None  # older checkpoints: the α head reports â


def test_small_images_are_read_by_the_small_image_trees() -> None:
    """Slices resized by at most `small_factor` go to the small-image trees (which see the factor), the rest and the
    slices of unknown factor to the whole-slice trees; both survive JSON."""
    rng = np.random.default_rng(1)
    statistics = rng.normal(size=(300, 23))
    whole = AlphaEstimator.from_sklearn(HistGradientBoostingRegressor(max_iter=10, random_state=0).fit(statistics, np.full(300, 0.8)))
    small = AlphaEstimator.from_sklearn(HistGradientBoostingRegressor(max_iter=10, random_state=0).fit(np.hstack([statistics, statistics[:, :1]]), np.full(300, 0.1)))
    estimator = AlphaEstimator.from_config(json.loads(json.dumps({CONFIG_KEY: dataclasses.replace(whole, small=small, small_factor=2.0).to_config()})))
    assert estimator is not None and estimator.small is not None and estimator.small_factor == 2.0
    batch = np.stack([np.stack([np.full((16, 16), v, np.float32)] * 3) for v in np.linspace(0.2, 0.8, 4)]) + rng.uniform(0, 0.1, (4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(estimator.estimate(batch, np.array([1.0, 2.0, 2.5, 8.0])), [0.1, 0.1, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(estimator.estimate(batch, np.array([1.0, np.nan, 0.5, 8.0])), [0.1, 0.8, 0.1, 0.8], atol=1e-6)
    np.testing.assert_allclose(estimator.estimate(batch), [0.8] * 4, atol=1e-6)  # unknown factors: whole slices
