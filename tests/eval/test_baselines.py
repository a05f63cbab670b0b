"""Each baseline against its reference implementation on real slices, plus the registry's contract and input checks."""

from __future__ import annotations

import numpy as np
import piq
import pytest
import torch
import torchvision
from scipy.special import factorial
from skimage import feature, metrics

from eval.baselines import BASELINES, BaselineUnavailable, create

CLASSICAL = ["mse", "ssim", "ncc", "mi", "grad", "cwssim"]
TOLERANCE = 1e-4


def ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """skimage's SSIM set up as Wang et al. (Gaussian σ 1.5, population covariance)."""
    return metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def gmsd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """piq's GMSD of two greyscale images in float64."""
    return float(piq.gmsd(torch.from_numpy(x)[None, None].double(), torch.from_numpy(y)[None, None].double()))


REFERENCES = {
    "mse": metrics.mean_squared_error,
    "ncc": lambda x, y: feature.match_template(x.astype(np.float64), y.astype(np.float64))[0, 0],
    "ssim": ssim_reference,
    "mi": lambda x, y: metrics.normalized_mutual_information(x, y, bins=100),
    "grad": gmsd_reference,
}


def reference_matrix(reference, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Reference score of every query against every gallery image, pair by pair."""
    return np.array([[reference(q, g) for g in gallery] for q in queries])


def small_blocks(name: str):
    """A baseline forced to split queries and gallery into several blocks, so the chunk loop is exercised."""
    baseline = create(name)
    baseline.query_block, baseline.gallery_block = 2, 3
    return baseline


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_reference(name: str, slices: torch.Tensor) -> None:
    baseline = small_blocks(name)
    queries, gallery = slices[:4], slices
    ours = baseline.score(queries[:, None], baseline.prepare_gallery(gallery.numpy())).double().numpy()
    expected = reference_matrix(REFERENCES[name], queries.numpy(), gallery.numpy())
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)


def test_ssim_matches_piq(slices: torch.Tensor) -> None:
    baseline = create("ssim")
    ours = baseline.paired(slices, slices.flip(0)).double()
    expected = piq.ssim(slices[:, None].double(), slices.flip(0)[:, None].double(), data_range=1.0, reduction="none")
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


# --- CW-SSIM: a slow transcription of buildSCFpyr (matlabPyrTools) and of Sampat et al.'s cwssim_index ---


def raised_cosine_table(width: float = 1.0, position: float = -0.5) -> tuple[np.ndarray, np.ndarray]:
    """rcosFn: a cos² step from 0 to 1 sampled in a 259-entry table, flat at both ends."""
    size = 256
    x = np.pi * np.arange(-size - 1, 2) / (2 * size)
    y = np.cos(x) ** 2
    y[0], y[size + 2] = y[1], y[size + 1]
    return position + (2 * width / np.pi) * (x + np.pi / 4), y


def point_op(values: np.ndarray, table_x: np.ndarray, table_y: np.ndarray) -> np.ndarray:
    """pointOp: table lookup with linear interpolation (the tables are flat at their ends)."""
    return np.interp(values.ravel(), table_x, table_y).reshape(values.shape)


def scf_pyramid(image: np.ndarray, levels: int, orientations: int) -> list[list[np.ndarray]]:
    """buildSCFpyr / buildSCFpyrLevs, line by line: the complex bands of every band-pass level."""
    dims = np.array(image.shape)
    ctr = np.ceil((dims + 0.5) / 2).astype(int)  # 1-based centre
    xramp, yramp = np.meshgrid((np.arange(1, dims[1] + 1) - ctr[1]) / (dims[1] / 2), (np.arange(1, dims[0] + 1) - ctr[0]) / (dims[0] / 2))
    angle = np.arctan2(yramp, xramp)
    log_rad = np.sqrt(xramp**2 + yramp**2)
    log_rad[ctr[0] - 1, ctr[1] - 1] = log_rad[ctr[0] - 1, ctr[1] - 2]
    log_rad = np.log2(log_rad)
    xrcos, yrcos = raised_cosine_table()
    yrcos = np.sqrt(yrcos)
    yircos = np.sqrt(1.0 - yrcos**2)
    lodft = np.fft.fftshift(np.fft.fft2(image)) * point_op(log_rad, xrcos, yircos)
    lut = 1024
    xcosn = np.pi * np.arange(-(2 * lut + 1), lut + 2) / lut
    order = orientations - 1
    const = (2 ** (2 * order)) * (factorial(order) ** 2) / (orientations * factorial(2 * order))
    alfa = np.mod(np.pi + xcosn, 2 * np.pi) - np.pi
    ycosn = 2 * np.sqrt(const) * (np.cos(xcosn) ** order) * (np.abs(alfa) < np.pi / 2)
    pyramid = []
    for _ in range(levels):
        log_rad = log_rad + 1
        himask = point_op(log_rad, xrcos, yrcos)
        bands = []
        for b in range(orientations):
            anglemask = point_op(angle, xcosn + np.pi * b / orientations, ycosn)
            bands.append(np.fft.ifft2(np.fft.ifftshift((-1j) ** order * lodft * anglemask * himask)))
        pyramid.append(bands)
        dims = np.array(lodft.shape)
        ctr = np.ceil((dims + 0.5) / 2).astype(int)
        lodims = np.ceil((dims - 0.5) / 2).astype(int)
        loctr = np.ceil((lodims + 0.5) / 2).astype(int)
        lostart = ctr - loctr  # 0-based
        crop = (slice(lostart[0], lostart[0] + lodims[0]), slice(lostart[1], lostart[1] + lodims[1]))
        log_rad, angle, lodft = log_rad[crop], angle[crop], lodft[crop]
        lodft = lodft * point_op(log_rad, xrcos, yircos)
    return pyramid


def cwssim_reference(x: np.ndarray, y: np.ndarray, levels: int = 4, orientations: int = 8, k: float = 0.0) -> float:
    """cwssim_index(img1, img2, level, or, guardb=0, K) with explicit window loops."""
    bands_x, bands_y = scf_pyramid(x, levels, orientations)[-1], scf_pyramid(y, levels, orientations)[-1]
    rows, cols = bands_x[0].shape
    win = 7
    gy, gx = np.mgrid[0 : rows - win + 1, 0 : cols - win + 1]
    weights = np.exp(-(((gy - (rows - win) / 2) ** 2) + (gx - (cols - win) / 2) ** 2) / (2 * (rows / 4) ** 2))
    weights /= weights.sum()
    per_band = []
    for bx, by in zip(bands_x, bands_y, strict=True):
        index = np.zeros((rows - win + 1, cols - win + 1))
        for i in range(rows - win + 1):
            for j in range(cols - win + 1):
                a, b = bx[i : i + win, j : j + win], by[i : i + win, j : j + win]
                corr = (a * np.conj(b)).sum() / win**2
                var = (np.abs(a) ** 2 + np.abs(b) ** 2).sum() / win**2
                index[i, j] = (2 * abs(corr) + k) / (var + k)
        per_band.append((index * weights).sum())
    return float(np.mean(per_band))


def test_cwssim_matches_published_definition(slices: torch.Tensor) -> None:
    baseline = small_blocks("cwssim")
    queries, gallery = slices[[0, 1, 3]], slices[[0, 4, 5, 6]]
    ours = baseline.score(queries, baseline.prepare_gallery(gallery)).double().numpy()
    expected = reference_matrix(cwssim_reference, queries.double().numpy(), gallery.double().numpy())
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)


def test_cwssim_tolerates_small_translations_that_ssim_does_not(slices: torch.Tensor) -> None:
    mr = slices[1:2]
    shifted = torch.roll(mr, 2, dims=-1)
    assert float(create("cwssim").paired(mr, shifted)[0]) > 0.98
    assert float(create("ssim").paired(mr, shifted)[0]) < 0.8


# --- behaviour shared by every classical baseline ---


@pytest.mark.parametrize("name", CLASSICAL)
def test_distorted_copy_retrieves_its_source(name: str, slices: torch.Tensor) -> None:
    """Slices 4–6 are noisy / shifted / blurred copies of 0, 1 and 3: each finds its source first."""
    baseline = create(name)
    distances = baseline.distance(baseline.score(slices[4:], baseline.prepare_gallery(slices[:4])))
    assert distances.argmin(dim=1).tolist() == [0, 1, 3]
    self_distance = baseline.distance(baseline.paired(slices, slices))
    torch.testing.assert_close(self_distance, torch.zeros(len(slices)), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", CLASSICAL)
def test_distance_grows_with_noise(name: str, slices: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(slices[:1].shape, generator=generator)
    ladder = torch.cat([(slices[:1] + sigma * noise).clamp(0, 1) for sigma in (0.02, 0.05, 0.1, 0.2)])
    baseline = create(name)
    distances = baseline.distance(baseline.paired(slices[:1].expand_as(ladder), ladder))
    assert (distances.diff() > 0).all(), distances


def test_paired_is_the_diagonal_of_score(slices: torch.Tensor) -> None:
    baseline = create("mi")
    full = baseline.score(slices, baseline.prepare_gallery(slices.flip(0)))
    torch.testing.assert_close(baseline.paired(slices, slices.flip(0)), full.diagonal())


def test_registry_declares_every_method_and_direction() -> None:
    directions = {name: cls.direction for name, cls in BASELINES.items()}
    assert directions == {"mse": "lower", "ssim": "higher", "ncc": "higher", "mi": "higher", "grad": "lower", "cwssim": "higher", "dino": "higher"}
    with pytest.raises(ValueError, match="unknown baseline 'psnr'"):
        create("psnr")


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(2, 3, 64, 64), ValueError, r"expected shape \(B, 1, H, W\)"),
        (torch.randint(0, 255, (2, 64, 64)), TypeError, "floating point"),
        (torch.rand(2, 64, 64) * 2, ValueError, r"values must lie in \[0, 1\]"),
        (torch.full((2, 64, 64), float("nan")), ValueError, "NaN or infinite"),
        (torch.rand(2, 32, 32), ValueError, "at least 64×64"),
        (torch.rand(0, 64, 64), ValueError, "empty batch"),
        ([[0.5]], TypeError, "torch.Tensor or numpy array"),
    ],
)
def test_bad_input_is_refused_clearly(images, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        create("cwssim").prepare_gallery(images)


def test_query_and_gallery_sizes_must_agree(slices: torch.Tensor) -> None:
    baseline = create("ssim")
    with pytest.raises(ValueError, match=r"query images are \(64, 64\), gallery images \(128, 128\)"):
        baseline.score(slices[:1, :64, :64], baseline.prepare_gallery(slices))


# --- DINO: weights from a path or the hub cache, never untrained ---

TORCHVISION_TO_DINO = {
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
}
BLOCK_TO_DINO = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}


def tiny_vit() -> torchvision.models.VisionTransformer:
    """A seeded two-layer ViT/16 of width 64 (one 64-wide head, as DINO's heads are) standing in for real weights."""
    torch.manual_seed(3)
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=1, hidden_dim=64, mlp_dim=128)
    model.heads = torch.nn.Identity()
    return model.eval()


def dino_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the key names of DINO's own vision_transformer.py."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("encoder.layers."):
            _, _, layer, rest = key.split(".", 3)
            for ours, theirs in BLOCK_TO_DINO.items():
                rest = rest.replace(ours, theirs)
            renamed[f"blocks.{layer.removeprefix('encoder_layer_')}.{rest}"] = value
        else:
            renamed[TORCHVISION_TO_DINO[key]] = value
    return renamed


def test_dino_without_weights_reports_unavailable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BaselineUnavailable) as caught:
        create("dino")
    assert caught.value.reason == "no weights"
    assert str(caught.value) == "dino: not run (no weights)"


def test_dino_loads_torchvision_weights_from_a_path(tmp_path, slices: torch.Tensor) -> None:
    model = tiny_vit()
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    baseline = create("dino", weights=tmp_path / "vit.pt")
    batch = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(baseline.model(batch), model(batch))
    scores = baseline.score(slices, baseline.prepare_gallery(slices))
    torch.testing.assert_close(scores, scores.T)
    torch.testing.assert_close(scores.diagonal(), torch.ones(len(slices)))


def test_dino_finds_dino_layout_weights_in_the_hub_cache(tmp_path, monkeypatch, slices: torch.Tensor) -> None:
    model = tiny_vit()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(dino_layout(model.state_dict()), tmp_path / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    torch.save(model.state_dict(), tmp_path / "torchvision.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from_hub = create("dino")
    assert from_hub.weights.name == "dino_deitsmall16_pretrain.pth"
    from_path = create("dino", weights=tmp_path / "torchvision.pt")
    torch.testing.assert_close(from_hub.prepare_gallery(slices)["f"], from_path.prepare_gallery(slices)["f"])


def test_dino_refuses_missing_or_corrupt_weights(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth: DINO weights file not found"):
        create("dino", weights=tmp_path / "missing.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken.pth: not a checkpoint \(torch.save writes a zip archive"):
        create("dino", weights=tmp_path / "broken.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth: not a DINO ViT checkpoint \(KeyError"):
        create("dino", weights=tmp_path / "other.pth")
