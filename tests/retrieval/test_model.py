"""DisentangledSiamese and checkpoint files: outputs, shared weights, local weights, the quickstart loading path."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import models

from retrieval.checkpoint import load_checkpoint, save_checkpoint
from retrieval.model import DisentangledSiamese, anatomical_distance


@pytest.fixture(scope="module")
def model() -> DisentangledSiamese:
    torch.manual_seed(0)
    return DisentangledSiamese("resnet18").eval()


def test_forward_once_shapes_norms_and_alpha_range(model: DisentangledSiamese) -> None:
    z_anat, z_noise, a_hat = model.forward_once(torch.rand(3, 3, 48, 48))
    assert z_anat.shape == (3, 128) and z_noise.shape == (3, 64) and a_hat.shape == (3,)
    assert torch.allclose(z_anat.norm(dim=1), torch.ones(3), atol=1e-5)
    assert ((a_hat >= 0) & (a_hat <= 1)).all()


def test_forward_runs_triplets_through_shared_weights(model: DisentangledSiamese) -> None:
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        anchor, positive, negative = model(x, x.clone(), torch.rand(2, 3, 48, 48))
        single = model.forward_once(x)
    for a, p, s in zip(anchor, positive, single):
        assert torch.allclose(a, p, atol=1e-5) and torch.allclose(a, s, atol=1e-5)
    assert not torch.allclose(anchor[0], negative[0])


def test_anatomical_distance_range() -> None:
    z = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.allclose(anatomical_distance(z, z), torch.zeros(4), atol=1e-6)
    assert torch.allclose(anatomical_distance(z, -z), torch.ones(4), atol=1e-6)


def test_unknown_backbone_and_missing_imagenet_weights_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        DisentangledSiamese("vgg11")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not on disk"):
        DisentangledSiamese("resnet18", pretrained="imagenet")


def test_pretrained_loads_local_torchvision_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    built = DisentangledSiamese("resnet18", pretrained=weights)
    assert torch.equal(built.encoder.conv1.weight, reference.conv1.weight)
    with pytest.raises(ValueError, match=r"resnet18.pth: not torchvision resnet50 weights \(\d+ missing, first layer1\.0\.conv3\.weight; \d+ of another shape"):
        DisentangledSiamese("resnet50", pretrained=weights)  # ResNet-18 weights for a ResNet-50, in one line


def test_quickstart_loads_a_whole_checkpoint_into_the_default_model(model: DisentangledSiamese, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", model, {"backbone": "resnet18", "size": 48}, half=True)
    quick = DisentangledSiamese()  # resnet50 by default: rebuilt for the checkpoint's backbone
    quick.load_state_dict(torch.load(path, weights_only=True))
    quick.eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        expected, *_ = model.forward_once(x)
        got, *_ = quick.forward_once(x)
    assert quick.backbone_name == "resnet18"
    assert torch.allclose(got, expected, atol=2e-2)  # fp16 storage
    loaded, config = load_checkpoint(path)
    assert config == {"backbone": "resnet18", "size": 48}
    assert isinstance(loaded, DisentangledSiamese)


def test_load_checkpoint_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: not a checkpoint \(torch.save writes a zip archive; this file is not one\)$"):
        load_checkpoint(junk)
    unsafe = tmp_path / "unsafe.pt"
    torch.save(argparse.Namespace(weights=1), unsafe)  # a global weights_only refuses, in torch's dozen-line message
    with pytest.raises(ValueError, match="not a readable checkpoint") as refused:
        load_checkpoint(unsafe)
    assert "\n" not in str(refused.value) and "argparse.Namespace" in str(refused.value)  # the unpickler's finding, not its advice
    assert "weights_only" not in str(refused.value)
    saved = save_checkpoint(tmp_path / "r18.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 48})
    blob = torch.load(saved, weights_only=True)
    blob["config"]["backbone"] = "resnet50"  # a config that does not describe its weights
    torch.save(blob, tmp_path / "mislabelled.pt")
    with pytest.raises(ValueError, match=r"its weights do not fit the resnet50 model its config describes \(\d+ missing, first encoder\.") as refused:
        load_checkpoint(tmp_path / "mislabelled.pt")
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pt", DisentangledSiamese("resnet18"), {"path": Path("x")})


def test_grid_pooling_keeps_the_layout_and_survives_both_loading_paths(tmp_path: Path) -> None:
    """`pooling="grid"` feeds the heads the last map on a 2×2 grid; the checkpoint config rebuilds it on either
    loading path (load_checkpoint, and the quickstart's load_state_dict into a default model)."""
    torch.manual_seed(0)
    grid = DisentangledSiamese("resnet18", pooling="grid").eval()
    assert grid.anatomy_head[0].in_features == 4 * 512
    path = save_checkpoint(tmp_path / "g.pt", grid, {"backbone": "resnet18", "pooling": "grid", "size": 32})
    loaded, _ = load_checkpoint(path)
    quick = DisentangledSiamese()
    quick.load_state_dict(torch.load(path, weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = grid.forward_once(x)[0]
        for other in (loaded, quick.eval()):
            assert other.pooling == "grid" and torch.allclose(other.forward_once(x)[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        DisentangledSiamese("resnet18", pooling="max")


@pytest.mark.parametrize("layout_map", ["intensity", "silhouette"])
def test_layout_views_are_the_embeddings_of_the_flipped_and_turned_slice(tmp_path: Path, layout_map: str) -> None:
    """With a layout weight w the anatomy vector is [√(1−w)·z_anat, √w·layout]: unit norm, its cosine splits by w, and
    `Embeddings.views()` of a slice are exactly the embeddings of its 8 flips/turns (what search compares a query by),
    for either layout map. The weight and the map travel in the checkpoint config."""
    from retrieval.embeddings import LAYOUT_COLUMNS
    from retrieval.metric import embed_model
    from retrieval.model import dihedral, layout

    torch.manual_seed(0)
    model = DisentangledSiamese("resnet18", invariance="d4", layout=0.3, layout_map=layout_map).eval()
    x = F.interpolate(torch.rand(3, 3, 8, 8), size=64, mode="bilinear")  # smooth, so the silhouette has a shape
    cpu = torch.device("cpu")
    embedded = embed_model(model, x, cpu)
    assert embedded.anatomy.shape == (3, 128 + LAYOUT_COLUMNS) and embedded.layout == LAYOUT_COLUMNS
    assert np.allclose(np.linalg.norm(embedded.anatomy, axis=1), 1.0, atol=1e-5)
    learned, thumbs = embedded.anatomy[:, :128] / np.sqrt(0.7), layout(x, layout_map).numpy()
    assert np.allclose(thumbs, embedded.anatomy[:, 128:] / np.sqrt(0.3), atol=1e-5)
    assert embedded.anatomy[0] @ embedded.anatomy[1] == pytest.approx(0.7 * learned[0] @ learned[1] + 0.3 * thumbs[0] @ thumbs[1], abs=1e-5)
    views = embedded.views()
    for k in range(8):
        np.testing.assert_allclose(embed_model(model, dihedral(x, k), cpu).anatomy, views[k], atol=1e-5)
    assert np.abs(views[1] - views[0]).max() > 0.01  # the layout part does move
    config = {"backbone": "resnet18", "invariance": "d4", "layout": 0.3, "layout_map": layout_map, "size": 64}
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "l.pt", model, config))
    assert (loaded.layout, loaded.layout_map) == (0.3, layout_map)
    np.testing.assert_allclose(embed_model(loaded, x, cpu).anatomy, embedded.anatomy, atol=2e-2)  # fp16 weights
    for weight in (-0.1, 1.0):
        with pytest.raises(ValueError, match="layout weight must be in"):
            DisentangledSiamese("resnet18", layout=weight)
    with pytest.raises(ValueError, match="unknown layout map 'edges'"):
        DisentangledSiamese("resnet18", layout_map="edges")


def test_silhouette_marks_where_the_slice_has_signal_and_noise_barely_moves_it() -> None:
    """The silhouette of a disc on an empty background is the disc (its cells 1 inside, 0 outside, before centring),
    whatever the disc's brightness; on the clean CT and MR slices pydicom ships, the distortion at α = 0.8 keeps its
    cosine to the clean silhouette high (a hard threshold at 10% of the range kept 0.65 on these crops; the ramp 0.86–0.91)."""
    from pydicom.data import get_testdata_file

    from retrieval.distortions import distort_mixed
    from retrieval.io import Identity, read_path
    from retrieval.model import layout, silhouettes
    from retrieval.preprocess import network_input, resize_square

    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = ((rows - 20) ** 2 + (cols - 40) ** 2 < 15**2).float()
    for brightness in (0.3, 0.9):
        x = (brightness * disc).expand(1, 3, 64, 64)
        maps = silhouettes(x)[0]
        inside, outside = maps[5, 10].item(), maps[14, 2].item()  # cells at (20, 40) and (56, 8) of the slice
        assert inside - outside == pytest.approx(1.0, abs=1e-6)
    for name in ("CT", "MR"):
        read = read_path(get_testdata_file(f"{name}_small.dcm"), Identity())[0]
        raw = torch.from_numpy(resize_square(read.pixels, 64, read.spacing))[None].repeat(8, 1, 1)
        modalities = np.array([read.modality] * 8)
        noisy = distort_mixed(raw, modalities, np.full(8, 0.8, np.float32), np.arange(8))
        cosine = (layout(network_input(raw, modalities), "silhouette") * layout(network_input(noisy, modalities), "silhouette")).sum(1)
        assert cosine.mean() > 0.8, (name, cosine)
