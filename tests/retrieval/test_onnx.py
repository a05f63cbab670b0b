"""The ONNX Runtime query path: the same embeddings as the torch model in fp32, the same neighbours, no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.directory import IndexDirectory
from retrieval.alpha import AlphaEstimator
from indexer.pipeline import build_index
from retrieval.checkpoint import DEFAULT_CHECKPOINT, file_sha256, load_checkpoint, save_checkpoint
from retrieval.embeddings import LAYOUT_COLUMNS
from retrieval.io import Identity, read_path
from retrieval.metric import bf16_is_fast, embed_model
from retrieval.model import dihedral
from retrieval.preprocess import prepare
from retrieval.runtime import OnnxMetric, ensure_model, model_file
from retrieval.search import search_path

TCGA = [f"ct/tcga_lung/dicom_dir/ID_000{i}_AGE_00{age}_CONTRAST_1_CT.dcm" for i, age in ((0, 60), (1, 69), (4, 56))]
SUBSET = ["ct/dcm_qa_ct/GE", *TCGA, "mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/104_C0.nii.gz"]
QUERIES = [("ct/dcm_qa_ct/GE/12.dcm", None), (TCGA[1], None), ("mr/myops/102_C0.nii.gz", 2), ("mr/myops/104_DE.nii.gz", None),
           ("ct/dcm_qa_ct/GE", None)]


@pytest.fixture(scope="module")
def shipped() -> tuple[torch.nn.Module, dict]:
    """The shipped checkpoint's model and config."""
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def slices(archive: Path, shipped) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Preprocessed real CT and MR slices at the shipped checkpoint's input size."""
    identity = Identity(manifest=archive / "manifest.csv")
    chosen = [s for rel in ("ct/dcm_qa_ct/GE/12.dcm", TCGA[0], "mr/myops/101_C0.nii.gz", "mr/open_ms/patient01/study1_FLAIR.nii.gz")
              for s in read_path(archive / rel, identity)[:1]]
    return np.stack([prepare(s.pixels, s.modality, shipped[1]["size"], s.spacing) for s in chosen])


@pytest.fixture(scope="module")
def index_dir(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The subset indexed with the shipped checkpoint by the torch pipeline, with its ONNX export made as `retrieval index` does."""
    root = tmp_path_factory.mktemp("onnx")
    (root / "archive").mkdir()
    for rel in SUBSET:
        (root / "archive" / Path(rel).name).symlink_to(archive / rel)
    build_index([root / "archive"], root / "idx", Identity(manifest=archive / "manifest.csv"), workers=0, show_progress=False)
    ensure_model(root / "idx", DEFAULT_CHECKPOINT, file_sha256(DEFAULT_CHECKPOINT))
    return root / "idx"


@pytest.fixture(scope="module")
def backends(index_dir: Path):  # type: ignore[no-untyped-def]
    """The open index and its two query embedders."""
    with IndexDirectory.open(index_dir) as directory:
        yield directory, {backend: directory.embedder(backend=backend) for backend in ("onnx", "torch")}


@pytest.mark.parametrize(("invariance", "layout_map"), [("none", "intensity"), ("d4", "intensity"), ("d4", "silhouette")])
def test_export_gives_the_torch_fp32_embeddings(slices: np.ndarray, shipped, tmp_path: Path, invariance: str, layout_map: str) -> None:  # type: ignore[no-untyped-def]
    model, config = shipped
    checkpoint = save_checkpoint(tmp_path / f"{invariance}.pt", model, {**config, "invariance": invariance, "layout_map": layout_map})
    sha = file_sha256(checkpoint)
    metric = OnnxMetric(ensure_model(tmp_path, checkpoint, sha))
    assert metric.checkpoint_hash == sha and metric.size == config["size"]
    onnx = metric.embed(list(slices))
    model, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        reference = [t.numpy() for t in model.embed(torch.from_numpy(slices))]
    for ours, theirs in zip((onnx.anatomy, onnx.noise), reference):
        assert np.abs(ours - theirs).max() < 1e-4
    np.testing.assert_array_equal(onnx.alpha, AlphaEstimator.from_config(config).estimate(slices))  # â: the checkpoint's estimator
    indexed = embed_model(model, torch.from_numpy(slices), torch.device("cpu"))  # bf16 only where the CPU has bf16 units
    gap = np.abs(indexed.anatomy - onnx.anatomy).max()
    assert gap > np.abs(reference[0] - onnx.anatomy).max() if bf16_is_fast(torch.device("cpu")) else gap < 1e-4
    if invariance == "d4":  # pooling and layout are in the graph: a turned and flipped slice embeds as that view
        turned = dihedral(torch.from_numpy(slices), 5).numpy()
        assert onnx.layout == LAYOUT_COLUMNS and config["layout"] > 0  # the shipped recipe has a layout
        np.testing.assert_allclose(metric.embed(list(turned)).anatomy, onnx.views()[5], atol=1e-4)


@pytest.mark.parametrize(("relative", "slice_index"), QUERIES)
@pytest.mark.parametrize("by", ["patient", "slice"])
def test_onnx_and_torch_backends_find_the_same_neighbours(archive: Path, backends, relative: str, slice_index: int | None, by: str) -> None:  # type: ignore[no-untyped-def]
    directory, embedders = backends
    identity = Identity(manifest=archive / "manifest.csv")
    results = [search_path(directory, embedders[backend], archive / relative, identity, slice_index=slice_index, k=5, by=by) for backend in ("onnx", "torch")]
    onnx, torch_ = ([(r.patient_id, [(s.path, s.slice_index) for s in r.slices]) for r in result.results] for result in results)
    # Adjacent slices of one series can tie to within the two backends' difference (bf16 against fp32), so the order
    # is compared for patients, the best slice (the query itself), and every rank's distance.
    assert [p for p, _ in onnx] == [p for p, _ in torch_] and len(onnx) == 5
    if Path(relative).suffix:
        assert onnx[0][1][0] == torch_[0][1][0]
    distances = [[r.distance for r in result.results] for result in results]
    np.testing.assert_allclose(distances[0], distances[1], atol=5e-3)


def test_both_backends_report_the_checkpoints_alpha_estimator(backends, slices: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    directory, embedders = backends
    estimator = AlphaEstimator.from_config(directory.manifest.checkpoint_config)
    assert estimator is not None  # the index manifest carries the shipped checkpoint's estimator
    noise = np.random.default_rng(0).normal(0.0, 0.05, (len(slices), 1, *slices.shape[2:]))  # one map for all channels: MR stays MR
    views = np.concatenate([slices, np.clip(slices + noise, 0.0, 1.0).astype(np.float32)])
    expected = estimator.estimate(views)
    np.testing.assert_array_equal(embedders["onnx"].embed_tensor(views).alpha, expected)
    np.testing.assert_array_equal(embedders["torch"].embed_tensor(torch.from_numpy(views)).alpha, expected)
    clean, noisy = expected[: len(slices)], expected[len(slices) :]
    assert np.all(noisy > clean + 0.1), (clean, noisy)  # the estimator, not a constant: noise raises every slice's â


def test_cli_search_never_imports_torch(archive: Path, index_dir: Path) -> None:
    query = archive / "ct/dcm_qa_ct/GE/12.dcm"
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "retrieval.cli", "search", str(query), "--index", str(index_dir), "-k", "3", "--json"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and not {m for m in imported if m.split(".")[0] in ("torch", "torchvision")}
    result = json.loads(run.stdout)
    best = result["results"][0]
    assert best["patient_id"] == "dcm_qa_ct-QMNx85rKkkg" and best["slices"][0]["path"].endswith("GE/12.dcm") and best["slices"][0]["slice_index"] == 11


def test_a_changed_checkpoint_is_refused_not_exported(index_dir: Path, tmp_path: Path) -> None:
    model, config = load_checkpoint(DEFAULT_CHECKPOINT)
    other = save_checkpoint(tmp_path / "other.pt", model, {**config, "note": "retrained"})
    with IndexDirectory.open(index_dir) as directory, pytest.raises(ValueError, match="built with checkpoint"):
        directory.embedder(other, backend="onnx")
    assert not model_file(index_dir, file_sha256(other)).exists()
