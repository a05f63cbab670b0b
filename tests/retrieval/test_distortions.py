"""Distortions: α = 0 identity, seeding, batch = single, CT noise physics, MR scale invariance, replay, monotone severity."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import piq
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from retrieval.cli import app
from retrieval.distortions import RandomDistortion, distort, distort_batch, dose_fraction
from retrieval.distortions import ct
from retrieval.io import Identity, Slice, iter_slices, read_path
from retrieval.preprocess import intensity, is_empty, resize_square

ALPHA_GRID = [round(0.1 * i, 1) for i in range(11)]


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Torch single-threaded: on shared cores the thread pool makes small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slices() -> dict[str, np.ndarray]:
    """Real CT (128², HU) and MR (64²) slices from pydicom's test data."""
    return {name: read_path(get_testdata_file(f"{name}_small.dcm"))[0].pixels for name in ("CT", "MR")}


def water_cylinder(size: int = 128, diameter_px: int = 110) -> np.ndarray:
    """A noise-free water cylinder (0 HU) in air (−1000 HU)."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return np.where(x**2 + y**2 < (diameter_px / 2) ** 2, 0.0, -1000.0).astype(np.float32)


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_alpha_zero_is_the_identity_bit_for_bit(slices: dict[str, np.ndarray], modality: str, dtype: type) -> None:
    image = slices[modality].astype(dtype)
    out = distort(image, 0.0, modality, seed=7)
    assert out.dtype == image.dtype and out.tobytes() == image.tobytes()
    assert out is not image
    batch = torch.from_numpy(np.stack([image, image]))
    mixed = distort_batch(batch, torch.tensor([0.0, 0.8]), modality, [1, 2])
    assert torch.equal(mixed[0], batch[0]) and not torch.equal(mixed[1], batch[1])


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_output_keeps_shape_and_dtype_also_off_square(slices: dict[str, np.ndarray], modality: str) -> None:
    for image in (slices[modality].astype(np.float64), slices[modality][:, 5:-17]):
        out = distort(image, 0.6, modality, seed=0)
        assert out.shape == image.shape and out.dtype == image.dtype and np.isfinite(out).all()
        assert not np.array_equal(out, image)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_seed_same_output_other_seed_differs(slices: dict[str, np.ndarray], modality: str) -> None:
    image = slices[modality]
    first, again, other = (distort(image, 0.5, modality, seed) for seed in (3, 3, 4))
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 0.1 * np.abs(first - image).mean()


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_batch_equals_single_slices(slices: dict[str, np.ndarray], modality: str) -> None:
    image = torch.from_numpy(slices[modality])
    batch = torch.stack([image, image.flip(0), image.flip(1), image.T.contiguous(), image])
    alphas, seeds = torch.tensor([0.2, 0.9, 0.0, 0.5, 1.0]), [11, 12, 13, 14, 11]
    out = distort_batch(batch, alphas, modality, seeds)
    for i in range(len(batch)):
        single = distort(batch[i].numpy(), float(alphas[i]), modality, seeds[i])
        assert np.array_equal(out[i].numpy(), single), f"slice {i} differs from its single-slice form"


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda im: distort(im, -0.1, "CT", 0), "-0.1"),
        (lambda im: distort(im, 1.5, "CT", 0), "1.5"),
        (lambda im: distort(im, float("nan"), "MR", 0), "nan"),
        (lambda im: distort(im, 0.5, "PET", 0), "PET"),
        (lambda im: distort(im, 0.5, "CT", -1), "-1"),
        (lambda im: distort(im.astype(np.int16), 0.5, "CT", 0), "int16"),
        (lambda im: distort(im[None], 0.5, "CT", 0), "2D"),
        (lambda im: distort(np.where(im > 0, np.nan, im), 0.5, "CT", 0), "NaN"),
        (lambda im: distort(im, 0.5, "CT", 0, spacing=0.0), "spacing"),
        (lambda im: distort_batch(torch.from_numpy(im)[None], torch.tensor([0.5]), "MR", [1, 2]), "seeds"),
        (lambda im: distort_batch(torch.from_numpy(im)[None].repeat(2, 1, 1), torch.tensor([0.5, 2.0]), "MR", [1, 2]), "2.0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(slices: dict[str, np.ndarray], call, word: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=word.replace(".", r"\.").replace("-", r"\-")):
        call(slices["CT"])


def test_projector_and_fbp_recover_water_attenuation() -> None:
    """Reference check of the CT geometry and units: FBP of a cylinder's sinogram gives μ_water inside, 0 outside."""
    mu = torch.from_numpy(np.clip(ct.MU_WATER * (1 + water_cylinder() / 1000), 0, None))[None]
    sinogram = ct.project(mu)
    assert sinogram.max() == pytest.approx(110 * ct.MU_WATER, rel=0.02)  # the central chord
    image = ct.reconstruct(sinogram, (128, 128))[0]
    assert image[54:74, 54:74].mean() == pytest.approx(ct.MU_WATER, rel=0.01)
    assert abs(float(image[:10, :10].mean())) < 0.01 * ct.MU_WATER


def test_dose_mapping_is_the_documented_one() -> None:
    np.testing.assert_allclose(dose_fraction(torch.tensor([0.0, 0.5, 1.0])).numpy(), [1.0, 0.1, 0.01], rtol=1e-6)


def added_noise_std(image: np.ndarray, window: tuple[slice, slice], alpha: float, spacing: float, seeds: range) -> float:
    """Std of (distorted − clean) in a window, pooled over seeds."""
    batch = torch.from_numpy(image)[None].repeat(len(seeds), 1, 1)
    out = distort_batch(batch, torch.full((len(seeds),), alpha), "CT", list(seeds), spacing)
    return float((out - batch)[(slice(None), *window)].std())


def test_inserted_ct_noise_variance_follows_the_dose() -> None:
    """Noise insertion adds variance ∝ (1 − d)/d; so a scan whose own noise is the simulator's full-dose noise
    σ0 has total σ0/√d (the issue's 1/√dose). On a noise-free cylinder the added σ at d = 0.5 is σ0."""
    image, window = water_cylinder(), (slice(52, 76), slice(52, 76))
    doses = np.array([0.5, 0.25, 0.1, 0.05, 0.02])
    alphas = -np.log10(doses) / ct.DOSE_DECADES
    sigma = np.array([added_noise_std(image, window, float(a), 1.5, range(6)) for a in alphas])
    sigma0 = sigma[0]
    np.testing.assert_allclose(sigma / sigma0, np.sqrt((1 - doses) / doses), rtol=0.15)
    np.testing.assert_allclose(np.sqrt(sigma0**2 + sigma**2), sigma0 / np.sqrt(doses), rtol=0.15)


@pytest.mark.parametrize("size", [128, 256])
def test_full_dose_noise_matches_the_documented_calibration(size: int) -> None:
    """σ0 ≈ 10 HU at the centre of a 300 mm water cylinder, on whatever grid it is."""
    spacing = 300 / (0.85 * size)
    image = water_cylinder(size=size, diameter_px=round(0.85 * size))
    centre = slice(size // 2 - size // 10, size // 2 + size // 10)
    sigma0 = added_noise_std(image, (centre, centre), math.log10(2) / ct.DOSE_DECADES, spacing, range(4))
    assert sigma0 == pytest.approx(10.0, rel=0.15)


def test_ct_noise_grows_with_the_attenuation_path() -> None:
    """A wider cylinder, or the same pixels standing for more millimetres, attenuates more and is noisier."""
    window = (slice(56, 72), slice(56, 72))
    narrow = added_noise_std(water_cylinder(diameter_px=60), window, 0.5, 1.5, range(4))
    wide = added_noise_std(water_cylinder(diameter_px=120), window, 0.5, 1.5, range(4))
    wider_in_mm = added_noise_std(water_cylinder(diameter_px=120), window, 0.5, 2.5, range(4))
    assert narrow < wide < wider_in_mm


def test_mr_corruption_is_scale_invariant(slices: dict[str, np.ndarray]) -> None:
    image = slices["MR"]
    np.testing.assert_allclose(distort(image * 7.0, 0.7, "MR", 5), 7.0 * distort(image, 0.7, "MR", 5), rtol=1e-4, atol=1e-3)


def test_mr_output_stays_above_the_input_floor(slices: dict[str, np.ndarray]) -> None:
    """Magnitude images stay ≥ 0; an image with negative values is shifted to 0 and back, so stays ≥ its minimum."""
    image = slices["MR"]
    assert distort(image, 1.0, "MR", 2).min() >= 0.0
    shifted = image - image.min() - 100.0
    out = distort(shifted, 1.0, "MR", 2)
    assert out.min() >= -100.0 and np.allclose(out, distort(image - image.min(), 1.0, "MR", 2) - 100.0, atol=1e-3)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_random_wrapper_replays_exactly_and_resumes(slices: dict[str, np.ndarray], modality: str) -> None:
    image = slices[modality]
    sampler = RandomDistortion(alpha_range=(0.2, 0.8), seed=42)
    out, record = sampler(image, modality)
    assert 0.2 <= record.alpha <= 0.8 and np.array_equal(RandomDistortion.replay(image, record), out)
    json.dumps(record.params)  # records are plain data
    state = sampler.state_dict()
    batch = torch.from_numpy(np.stack([image, image[::-1].copy(), image]))
    outputs, records = sampler.batch(batch, modality)
    assert len({r.seed for r in records}) == 3
    assert torch.equal(RandomDistortion.replay_batch(batch, records), outputs)
    resumed = RandomDistortion(alpha_range=(0.2, 0.8), seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed.batch(batch, modality)[1] == records
    assert RandomDistortion(seed=42).sample(modality) == RandomDistortion(seed=42).sample(modality)


def test_records_describe_the_physics() -> None:
    sampler = RandomDistortion(seed=1)
    ct_record, mr_record = sampler.sample("CT"), sampler.sample("mr")
    assert ct_record.params["dose_fraction"] == pytest.approx(10 ** (-2 * ct_record.alpha), rel=1e-5)
    assert mr_record.modality == "MR" and mr_record.params["phase_axis"] in (0, 1)
    assert mr_record.params["kspace_fraction"] == pytest.approx(1 - 0.6 * mr_record.alpha)
    with pytest.raises(ValueError, match="1.2"):
        RandomDistortion(alpha_range=(0.0, 1.2))


def test_cli_writes_a_montage_with_one_panel_per_alpha(tmp_path: Path) -> None:
    runner, source = CliRunner(), get_testdata_file("CT_small.dcm")
    widths = []
    for alphas in (["0", "1"], ["0", "0.3", "0.6", "1"]):
        out = tmp_path / f"{len(alphas)}.png"
        args = ["distort", source, "--out", str(out), "--size", "64", *[x for a in alphas for x in ("--alpha", a)]]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        widths.append(Image.open(out).size[0])
    assert widths[1] > 1.8 * widths[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--slice", "3"], ["--slice 3", "1 slices"]),
        (["--out", "/no/such/folder/m.png"], ["/no/such/folder"]),
        (["--alpha", "1.5"], ["--alpha", "less than or equal to 1"]),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    out = ["--out", str(tmp_path / "m.png")] if "--out" not in args else []
    result = CliRunner().invoke(app, ["distort", get_testdata_file("CT_small.dcm"), *out, *args])
    assert result.exit_code != 0 and all(word in result.output for word in words), result.output


def test_cli_names_a_file_without_a_distortion_modality(tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(picture)
    result = CliRunner().invoke(app, ["distort", str(picture), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 2 and "photo.png" in result.output and "--modality" in result.output
    result = CliRunner().invoke(app, ["distort", str(picture), "--modality", "MR", "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output


# --- the real archive ---------------------------------------------------------------------------

def archive_slices(archive: Path, modality: str, per_dataset: int, size: int) -> tuple[torch.Tensor, list[float]]:
    """Middle slices of the first volumes of each dataset of one modality, resized to size² (and their mm/pixel)."""
    with open(archive / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["modality"] == modality]
    chosen: dict[str, list[Path]] = {}
    for row in rows:
        if len(chosen.setdefault(row["dataset"], [])) < per_dataset:
            chosen[row["dataset"]].append(archive / row["relative_path"])
    images, spacings = [], []
    identity = Identity(manifest=archive / "manifest.csv")
    for paths in chosen.values():
        for path in paths:
            volume = [s for s in iter_slices([path], identity) if isinstance(s, Slice)]
            item = volume[len(volume) // 2]
            if is_empty(item.pixels, modality):
                continue
            images.append(resize_square(item.pixels, size, item.spacing))
            spacings.append(max(item.pixels.shape[0] * item.spacing[0], item.pixels.shape[1] * item.spacing[1]) / size)
    return torch.from_numpy(np.stack(images)), spacings


@pytest.mark.archive
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_ssim_and_psnr_fall_monotonically_with_alpha(archive: Path, modality: str) -> None:
    images, spacings = archive_slices(archive, modality, per_dataset=3, size=128)
    assert len(images) >= 6
    clean = intensity(images, modality)[:, :1]
    seeds = list(range(len(images)))
    ssim, psnr = [], []
    for alpha in ALPHA_GRID:
        out = distort_batch(images, torch.full((len(images),), alpha), modality, seeds, spacings)
        distorted = intensity(out, modality)[:, :1]
        ssim.append(float(piq.ssim(distorted, clean, data_range=1.0)))
        psnr.append(float(piq.psnr(distorted, clean, data_range=1.0)))
    assert ssim[0] == pytest.approx(1.0) and all(np.diff(ssim) < 0), ssim
    assert all(np.diff(psnr) < 0), psnr
    assert ssim[-1] < 0.8  # α = 1 is a severe distortion


@pytest.mark.archive
def test_noise_in_a_flat_ct_region_rises_as_dose_falls(archive: Path) -> None:
    """On a real abdominal slice: added variance ∝ (1 − d)/d and total σ ≈ √(σ_native² + added), rising as d falls."""
    item = read_path(archive / "ct/ircadb/3Dircadb1.1/PATIENT_DICOM/image_60")[0]
    image = resize_square(item.pixels, 256, item.spacing)
    spacing = max(item.pixels.shape) * item.spacing[0] / 256
    window = flattest_soft_tissue(image, 20)
    doses = np.array([0.5, 0.2, 0.1, 0.05, 0.02])
    added = np.array([added_noise_std(image, window, float(-math.log10(d) / 2), spacing, range(4)) for d in doses])
    law = np.sqrt((1 - doses) / doses)
    quantum_limited = doses >= 0.1
    np.testing.assert_allclose((added / added[0])[quantum_limited], law[quantum_limited], rtol=0.2)
    assert all((added / added[0]) > 0.9 * law)  # below 10% dose electronic noise adds more (Yu et al.)
    native = float(image[window].std())
    total = np.sqrt(native**2 + added**2)
    assert all(np.diff(total) > 0)


def flattest_soft_tissue(image: np.ndarray, side: int) -> tuple[slice, slice]:
    """The side×side window of soft tissue (0–150 HU) with the lowest standard deviation."""
    best, where = math.inf, (slice(0, side), slice(0, side))
    for top in range(0, image.shape[0] - side, side // 2):
        for left in range(0, image.shape[1] - side, side // 2):
            patch = image[top : top + side, left : left + side]
            if 0 < patch.min() and patch.max() < 150 and patch.std() < best:
                best, where = float(patch.std()), (slice(top, top + side), slice(left, left + side))
    assert best < math.inf, "no soft-tissue window found"
    return where


# --- MR strengths at α = 1, measured on outputs ------------------------------------------------------

def legendre_basis(n: int, degree: int) -> np.ndarray:
    """(n², terms) smooth 2D basis P_i(y)·P_j(x), i + j ≤ degree, for fitting a slowly varying field."""
    u = np.linspace(-1.0, 1.0, n)
    polys = [np.polynomial.legendre.Legendre.basis(i)(u) for i in range(degree + 1)]
    return np.stack([np.outer(polys[i], polys[j]).ravel() for i in range(degree + 1) for j in range(degree + 1) if i + j <= degree], 1)


def test_mr_bias_field_at_alpha_1_spans_the_documented_range() -> None:
    """On a flat image the output is the bias field (exp(±0.4) = ×0.67…×1.49 at its extreme) plus noise: a smooth fit finds it."""
    level, n = 100.0, 128
    basis = legendre_basis(n, 6)
    extremes = []
    for seed in range(4):
        out = distort(np.full((n, n), level, np.float32), 1.0, "MR", seed).astype(np.float64).ravel() / level
        coefficients, *_ = np.linalg.lstsq(basis, np.log(out), rcond=None)
        log_field = basis @ coefficients
        extremes.append(np.abs(log_field - log_field.mean()).max())
        assert 0.67 - 0.02 < np.exp(log_field.min()) and np.exp(log_field.max()) < 1.49 + 0.02
    assert 0.33 < np.mean(extremes) < 0.42, extremes  # 0.4 before truncation rounds the field's peaks a little


def test_mr_noise_at_alpha_1_is_6_percent_of_the_99th_percentile() -> None:
    """Where the image is 0 (rows and columns away from the object, so no ghost or ringing lands there) the output is
    pure Rician noise: a Rayleigh magnitude whose σ is 6% of the 99th percentile (the object's level)."""
    level, n = 100.0, 128
    sigmas = []
    for seed in range(4):
        image = np.zeros((n, n), np.float32)
        image[4:24, 4:24] = level  # 2.4% of the pixels: the 99th percentile is the level
        background = distort(image, 1.0, "MR", seed).astype(np.float64)[64:, 64:]
        sigmas.append(float(np.sqrt(np.mean(background**2) / 2)) / level)
    np.testing.assert_allclose(sigmas, 0.06, rtol=0.08)


def test_mr_truncation_at_alpha_1_keeps_the_central_40_percent_of_k_space() -> None:
    n = 128
    image = (100.0 + 10.0 * np.random.default_rng(0).random((n, n))).astype(np.float32)  # texture at every frequency
    before = np.abs(np.fft.fft2(image - image.mean())) ** 2
    for seed in range(3):
        out = distort(image, 1.0, "MR", seed).astype(np.float64)
        after = np.abs(np.fft.fft2(out - out.mean())) ** 2
        for axis in (0, 1):
            kept = (after.sum(axis) / before.sum(axis) > 0.1).mean()  # out-of-band lines keep ~1% (the magnitude image)
            assert kept == pytest.approx(0.4, abs=1.5 / n), (seed, axis, kept)


def test_mr_ghosts_at_alpha_1_are_30_percent_of_lines_shifted_by_3_percent_of_the_field_of_view() -> None:
    """A point image has no noise (its 99th percentile is 0): the output is the truncated point plus a copy moved by the
    motion shift, weighted by the share of phase-encoding lines acquired moved. Both are fitted from the output alone."""
    from retrieval.distortions import mr

    n = 256
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    band = (np.abs(ky) <= 0.2) & (np.abs(kx) <= 0.2)

    near = (slice(n // 2 - 20, n // 2 + 21),) * 2  # the point and its moved copy; incoherent ghosts spread elsewhere

    def point(dy: float, dx: float) -> np.ndarray:
        return np.real(np.fft.ifft2(band * np.exp(-2j * np.pi * (ky * (n // 2 + dy) + kx * (n // 2 + dx)))))[near].ravel()

    still = point(0, 0)
    shifts, shares = [], []
    for seed in range(4):
        image = np.zeros((n, n), np.float32)
        image[n // 2, n // 2] = 1.0
        out = distort(image, 1.0, "MR", seed).astype(np.float64)[near].ravel()
        angle = mr.draw_nuisance(torch.Generator().manual_seed(seed)).motion_angle  # the direction; the size is measured
        fits = []
        for shift in np.linspace(0.015, 0.045, 31):
            design = np.stack([still, point(shift * n * math.sin(angle), shift * n * math.cos(angle))], 1)
            weights, *_ = np.linalg.lstsq(design, out, rcond=None)
            fits.append((float(np.sum((design @ weights - out) ** 2)), shift, weights[1] / weights.sum()))
        _, shift, share = min(fits)
        shifts.append(shift)
        shares.append(share)
    np.testing.assert_allclose(shifts, 0.03, atol=0.0015)
    assert np.mean(shares) == pytest.approx(0.3, abs=0.05) and min(shares) > 0.15, shares
