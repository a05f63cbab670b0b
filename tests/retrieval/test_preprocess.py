"""Preprocessing: documented CT windows, scale-invariant MR normalisation, aspect-keeping resize, empty slices."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from retrieval.io import Identity, read_path
from retrieval.preprocess import (CT_WINDOWS, intensity, is_empty, looks_like_stored_ct, native_view, prepare, resize_factor,
                                  resize_square, square_shape, to_grid)

# The README's documented defaults: (level, width) in HU for the three input channels.
DOCUMENTED_WINDOWS = {"soft tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}


def test_ct_windows_are_the_documented_ones() -> None:
    assert CT_WINDOWS == tuple(DOCUMENTED_WINDOWS.values())


@pytest.mark.parametrize("channel, window", enumerate(DOCUMENTED_WINDOWS.values()))
def test_known_hu_values_map_to_window_values(channel: int, window: tuple[float, float]) -> None:
    level, width = window
    hu = np.array([[level - width, level - width / 2, level - width / 4, level, level + width / 4, level + width / 2, level + width]])
    out = intensity(hu.astype(np.float32), "CT")[channel].numpy()
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_air_water_and_bone_land_where_radiologists_expect() -> None:
    out = intensity(np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32), "CT").numpy()[:, 0]
    soft, lung, bone = out
    assert soft[0] == 0.0 and soft[2] == 1.0 and 0.3 < soft[1] < 0.5  # water just below mid-grey
    assert 0.0 < lung[0] < 0.3 and lung[2] == 1.0  # air is visible in the lung window
    assert bone[0] == 0.0 and 0.0 < bone[2] < 1.0  # dense bone still has contrast in the bone window


@pytest.fixture(scope="module")
def mr_slice() -> np.ndarray:
    (mr,) = read_path(get_testdata_file("MR_small.dcm"))
    assert mr.modality == "MR"
    return mr.pixels


@pytest.mark.parametrize("scale", [1e-3, 0.37, 8.0, 2500.0])
def test_mr_normalisation_is_invariant_to_a_global_scale(mr_slice: np.ndarray, scale: float) -> None:
    reference = intensity(mr_slice, "MR").numpy()
    np.testing.assert_allclose(intensity(mr_slice * np.float32(scale), "MR").numpy(), reference, atol=2e-5)
    assert is_empty(mr_slice * np.float32(scale), "MR") == is_empty(mr_slice, "MR")


def test_mr_percentiles_map_to_zero_and_one(mr_slice: np.ndarray) -> None:
    out = intensity(mr_slice, "MR").numpy()
    assert out.shape == (3,) + mr_slice.shape and np.array_equal(out[0], out[2])
    low, high = np.percentile(mr_slice, [1.0, 99.5])
    assert np.all(out[0][mr_slice <= low] == 0.0) and np.all(out[0][mr_slice >= high] == 1.0)
    middle = (mr_slice > low) & (mr_slice < high)
    assert np.all((out[0][middle] > 0.0) & (out[0][middle] < 1.0))


def test_resize_keeps_physical_aspect_and_pads_with_the_minimum() -> None:
    image = np.full((64, 32), 5.0, dtype=np.float32)
    image[0, 0] = -7.0
    assert square_shape((64, 32), 256) == (256, 128)
    out = resize_square(image, 256)
    assert out.shape == (256, 256) and out.dtype == np.float32
    assert np.all(out[:, :64] == -7.0) and np.all(out[:, 192:] == -7.0)  # padding left and right
    assert np.allclose(out[10:-10, 70:186], 5.0)
    assert square_shape((64, 32), 256, spacing=(1.0, 2.0)) == (256, 256)  # 64 mm × 64 mm fills the square
    with pytest.raises(ValueError):
        resize_square(np.zeros((2, 3, 4), np.float32))


def test_prepare_is_deterministic_network_input() -> None:
    (ct,) = read_path(get_testdata_file("CT_small.dcm"))
    first = prepare(ct.pixels, ct.modality, 64, ct.spacing)
    assert first.shape == (3, 64, 64) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, prepare(ct.pixels, ct.modality, 64, ct.spacing))


def test_empty_slice_rule() -> None:
    (ct,) = read_path(get_testdata_file("CT_small.dcm"))
    assert not is_empty(ct.pixels, "CT")
    rng = np.random.default_rng(0)
    air = (-1000.0 + rng.normal(0, 20, size=(128, 128))).astype(np.float32)
    assert is_empty(air, "CT")
    assert is_empty(np.full((16, 16), 300.0, np.float32), "MR")  # constant
    mr = np.zeros((100, 100), np.float32)
    mr[:10, :10] = 500.0  # 1% tissue: under the 2% rule
    assert is_empty(mr, "MR")
    mr[:10, :30] = 500.0  # 3% tissue
    assert not is_empty(mr, "MR")


def test_pixels_outside_a_resampled_field_of_view_are_background() -> None:
    """A resampled volume is NaN where its source had no data (nibabel ships one): such a slice is not empty, and
    its NaN pixels are preprocessed as its padding value (the smallest finite one), not as 0 (water on CT)."""
    (ct,) = read_path(get_testdata_file("CT_small.dcm"))
    cut, padded = ct.pixels.copy(), ct.pixels.copy()
    cut[:, :40], padded[:, :40] = np.nan, ct.pixels.min()
    assert not is_empty(cut, "CT") and not looks_like_stored_ct(cut)
    np.testing.assert_array_equal(prepare(cut, "CT", 64, ct.spacing), prepare(padded, "CT", 64, ct.spacing))
    cut[0, 50], padded[0, 50] = np.inf, ct.pixels.min()  # an overflowed value is no data either
    np.testing.assert_array_equal(resize_square(cut, 64), resize_square(padded, 64))
    resampled = read_path(Path(nibabel.__file__).parent / "tests" / "data" / "resampled_anat_moved.nii", Identity(modality="MR"))
    assert all(np.isnan(s.pixels).any() and not is_empty(s.pixels, "MR") for s in resampled)


def test_resize_factor_is_how_many_native_pixels_a_grid_pixel_averages() -> None:
    assert resize_factor((512, 512), 64) == 8.0 and resize_factor((64, 64), 64) == 1.0 and resize_factor((32, 32), 64) == 0.5
    assert resize_factor((512, 256), 64) == pytest.approx(np.sqrt(8 * 8))  # 64 × 32 on the grid: 8 per side
    assert resize_factor((512, 512), 64, (0.5, 1.0)) == pytest.approx(np.sqrt(16 * 8))  # half-millimetre rows: 32 × 64


def test_to_grid_is_the_resize_and_its_factor_for_arrays_and_tensors() -> None:
    slice_ = np.random.default_rng(0).normal(size=(300, 200)).astype(np.float32)
    for pixels in (slice_, torch.from_numpy(slice_)):
        grid, factor = to_grid(pixels, 64, (0.5, 1.0))
        assert np.array_equal(grid, resize_square(slice_, 64, (0.5, 1.0))) and factor == resize_factor((300, 200), 64, (0.5, 1.0))
    with pytest.raises(ValueError, match="expected a 2D slice"):
        to_grid(slice_[None], 64)


def test_native_view_is_seeded_and_keeps_the_scanners_noise() -> None:
    """A 512² phantom of flat tissue with noise: resized to 64² its noise is averaged away; its native views (zoomed
    crops, decimated slices) keep more of it, say by how much less they were averaged, and are pure functions of
    their generator."""
    rng = np.random.default_rng(0)
    phantom = np.zeros((512, 512), np.float32)
    phantom[64:448, 64:448] = 100.0
    phantom += rng.normal(0.0, 10.0, phantom.shape).astype(np.float32)
    views = [native_view(phantom, 64, (1.0, 1.0), np.random.default_rng([1, k])) for k in range(16)]
    assert all(v.shape == (64, 64) and v.dtype == np.float32 and 0.5 < f <= 8.0 for v, f in views)
    again, factor = native_view(phantom, 64, (1.0, 1.0), np.random.default_rng([1, 3]))
    np.testing.assert_array_equal(views[3][0], again)
    assert factor == views[3][1]
    assert len({v.tobytes() for v, _ in views}) > len(views) // 2  # decimations by the same step coincide

    def noise(image: np.ndarray) -> float:  # the median |horizontal difference| over the tissue: flat, so only noise varies
        tissue = (image[:, 1:] > 50.0) & (image[:, :-1] > 50.0)
        return float(np.median(np.abs(np.diff(image, axis=1))[tissue]))

    resized = noise(resize_square(phantom, 64))
    assert np.median([noise(v) for v, _ in views]) > 2.0 * resized, ([round(noise(v), 2) for v, _ in views], resized)
    coarse = [noise(v) for v, f in views if f < 3.0]
    assert coarse and min(coarse) > 2.0 * resized  # the less a view was averaged, the more of the noise it keeps


def test_stored_ct_values_are_told_from_hounsfield_units() -> None:
    """CT_small's stored values (unsigned, intercept −1024) read as stored and its HU do not; padding below 0 (signed
    storage) does not hide stored values; a crop inside soft tissue reads as HU in HU and as stored when stored."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert looks_like_stored_ct(ds.pixel_array) and not looks_like_stored_ct(apply_modality_lut(ds.pixel_array, ds))
    air_and_water = np.random.default_rng(0).normal(-1000.0, 20.0, (32, 32)).astype(np.float32)  # air reads with noise
    air_and_water[8:24, 8:24] += 1000.0
    stored = np.maximum(air_and_water + 1024, 0)  # unsigned storage with intercept −1024
    assert not looks_like_stored_ct(air_and_water) and looks_like_stored_ct(stored)
    padded = np.pad(stored, 4, constant_values=-2000)  # signed storage: padding outside the field of view
    assert looks_like_stored_ct(padded) and not looks_like_stored_ct(np.pad(air_and_water, 4, constant_values=-3024))
    soft_tissue = np.random.default_rng(1).normal(50.0, 15.0, (32, 32)).astype(np.float32)  # a liver crop in HU: no air, no fat
    assert not looks_like_stored_ct(soft_tissue) and looks_like_stored_ct(soft_tissue + 1024)


@pytest.mark.archive
def test_no_archive_ct_slice_in_hu_reads_as_stored_and_every_tcga_raw_array_does(archive: Path) -> None:
    """tcga_lung stores unsigned and signed (padded) values with intercept −1024; the other CT datasets store HU."""
    in_hu, tcga_raw = [], []
    for path in sorted(p for p in (archive / "ct").rglob("*") if p.is_file() and p.suffix != ".csv"):
        ds = pydicom.dcmread(path)
        in_hu.append(looks_like_stored_ct(apply_modality_lut(ds.pixel_array, ds)))
        if "tcga_lung" in path.parts:
            tcga_raw.append(looks_like_stored_ct(ds.pixel_array))
    assert len(in_hu) == 195 and not any(in_hu)
    assert len(tcga_raw) == 77 and all(tcga_raw)
