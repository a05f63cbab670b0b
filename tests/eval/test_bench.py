"""retrieval bench: the query split and seeds, the learned method's FAISS search, the figures, and --quick on the archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from eval.figures import MethodRun, summarise
from eval.methods import METHODS, LearnedMethod
from eval.protocol import QUICK_ALPHAS, QUICK_MAX_QUERIES, build_workload, check_alphas, split_queries, thin_gallery
from retrieval.checkpoint import save_checkpoint
from retrieval.cli import app
from retrieval.distortions import distort
from retrieval.metric import DistortionAwareMetric
from retrieval.model import DisentangledSiamese
from retrieval.slices import SliceSet

# A small real subset: three cardiac MR patients, one head CT volume, single-slice chest CTs (two patients with two).
SUBSET = (
    "mr/myops/101_C0.nii.gz", "mr/myops/101_DE.nii.gz", "mr/myops/101_T2.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/102_T2.nii.gz",
    "mr/myops/104_C0.nii.gz", "mr/myops/104_DE.nii.gz", "ct/dcm_qa_ct/GE",
    "ct/tcga_lung/dicom_dir/ID_0001_AGE_0069_CONTRAST_1_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0047_AGE_0069_CONTRAST_1_CT.dcm",
    "ct/tcga_lung/dicom_dir/ID_0054_AGE_0082_CONTRAST_0_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0083_AGE_0082_CONTRAST_0_CT.dcm",
    "ct/tcga_lung/dicom_dir/ID_0057_AGE_0049_CONTRAST_0_CT.dcm",
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ResNet18 checkpoint with a 64×64 input (seeded)."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})


def phantoms(patients: list[str], modality: str, size: int = 64, seed: int = 0) -> SliceSet:
    """Slices the test makes: a body ellipse with a few random organs, in HU for CT and arbitrary units for MR."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    images = []
    for _ in patients:
        image = np.where((x / 0.42) ** 2 + (y / 0.32) ** 2 < 1, 40.0, -1000.0)
        for cx, cy, r, value in zip(rng.uniform(-0.2, 0.2, 3), rng.uniform(-0.15, 0.15, 3), rng.uniform(0.04, 0.1, 3), rng.uniform(-100, 300, 3)):
            image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = value
        images.append(image if modality == "CT" else image + 1000.0)
    names = np.array(patients)
    return SliceSet(np.stack(images).astype(np.float32), names, np.full(len(names), modality), np.array([f"{p}#{i}" for i, p in enumerate(patients)]))


def counts(patients: np.ndarray, rows: np.ndarray) -> dict[str, int]:
    """Rows per patient."""
    names, n = np.unique(patients[rows], return_counts=True)
    return dict(zip(names.tolist(), n.tolist()))


def test_split_takes_at_most_half_of_each_patient_and_leaves_single_slices_in_the_gallery() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 5 + ["c"] * 2 + ["d"])
    queries = split_queries(patients, seed=0, per_patient=8)
    assert counts(patients, queries) == {"a": 8, "b": 2, "c": 1}
    assert np.array_equal(queries, split_queries(patients, seed=0, per_patient=8))
    assert not np.array_equal(queries, split_queries(patients, seed=1, per_patient=8))


def test_max_queries_goes_round_robin_over_patients() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 6 + ["c"] * 2 + ["e"] * 10)
    assert counts(patients, split_queries(patients, seed=0, max_queries=4)) == {"a": 1, "b": 1, "c": 1, "e": 1}
    six = counts(patients, split_queries(patients, seed=0, max_queries=6))
    assert sum(six.values()) == 6 and set(six) == {"a", "b", "c", "e"} and max(six.values()) == 2


def test_thinned_gallery_keeps_every_patient() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 3 + ["c"])
    kept = thin_gallery(np.arange(len(patients)), patients, per_patient=4, seed=0)
    assert counts(patients, kept) == {"a": 4, "b": 3, "c": 1}


def test_alpha_grid_must_include_zero_and_stay_in_range() -> None:
    assert check_alphas([0.5, 0.0, 0.5, 1.0]) == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="must include 0"):
        check_alphas([0.2, 0.8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_alphas([0.0, 1.5])


def test_every_query_is_distorted_with_its_own_seed_the_same_way_each_time() -> None:
    data = phantoms(["p1"] * 4 + ["p2"] * 3 + ["p3"], "CT")
    workload = build_workload(data, (0.0, 0.5, 1.0), seed=3)
    again = build_workload(data, (0.0, 0.5, 1.0), seed=3)
    assert torch.equal(workload.distorted, again.distorted)
    assert workload.query_sources.tolist() == data.sources[split_queries(data.patients, seed=3)].tolist()
    assert len(workload.query_patients) == 3 and len(workload.gallery_patients) == 5  # every other slice is gallery
    clean = workload.distorted[0]
    assert torch.equal(clean, torch.from_numpy(data.images[np.isin(data.sources, workload.query_sources)]))
    for step, alpha in ((1, 0.5), (2, 1.0)):
        expected = distort(clean[1].numpy(), alpha, "CT", int(workload.seeds[1]))
        np.testing.assert_allclose(workload.distorted[step, 1].numpy(), expected, atol=1e-3)
        assert not torch.equal(workload.distorted[step], clean)
    assert workload.relevant.sum(1).tolist() == [int(np.sum(workload.gallery_patients == p)) for p in workload.query_patients]


def test_workload_refuses_an_archive_without_queries_or_second_patient() -> None:
    with pytest.raises(ValueError, match="nothing to query"):
        build_workload(phantoms(["a", "b", "c"], "MR"), (0.0, 1.0), seed=0)
    with pytest.raises(ValueError, match="two patients"):
        build_workload(phantoms(["a"] * 4, "MR"), (0.0, 1.0), seed=0)


def test_learned_method_searches_through_faiss_and_tracks_with_the_documented_distance(tiny_checkpoint: Path) -> None:
    metric = DistortionAwareMetric.load(tiny_checkpoint, device="cpu")
    generator = torch.Generator().manual_seed(0)
    gallery, queries = torch.rand(12, 3, 64, 64, generator=generator), torch.rand(5, 3, 64, 64, generator=generator)
    method = LearnedMethod(metric)
    method.prepare(gallery)
    encoded = method.encode(queries)
    expected_anatomy = np.stack([metric.anatomy_distance(queries[i][None], gallery) for i in range(len(queries))])
    np.testing.assert_allclose(method.search(encoded), expected_anatomy, atol=1e-5)
    expected_tracking = np.stack([metric.distance(queries[i][None], gallery) for i in range(len(queries))])
    np.testing.assert_allclose(method.to_gallery(encoded), expected_tracking, atol=1e-5)
    np.testing.assert_allclose(method.paired(encoded, method.encode(gallery[:5])), metric.distance(queries, gallery[:5]), atol=1e-5)


def test_figures_follow_their_definitions_on_known_measurements() -> None:
    alphas = (0.0, 0.2, 0.4, 0.8)
    patients = np.array(["a", "a", "b", "c", "c", "d"])
    rng = np.random.default_rng(0)
    ap = np.clip(0.9 - np.outer(alphas, rng.uniform(0.1, 0.5, len(patients))), 0, 1)
    track = np.outer(alphas, rng.uniform(0.5, 1.5, len(patients)))  # grows with α for every query
    identity = rng.uniform(2.0, 3.0, len(patients))
    figures = summarise(MethodRun(ap, track, identity, 0.01, 1.0), alphas, patients, resamples=100, seed=0)
    assert figures["map"] == pytest.approx(ap.mean(1).tolist())
    assert figures["retention"] == pytest.approx((ap.mean(1) / ap[0].mean()).tolist())
    assert figures["retention"][0] == 1.0 and figures["ci"]["retention"][0] == [1.0, 1.0]
    assert figures["ratio"] == pytest.approx(track.mean() / identity.mean())
    pair_alpha = np.repeat(alphas, len(patients))
    assert figures["auc"] == pytest.approx(roc_auc_score(pair_alpha > 0.3, track.ravel()))
    assert figures["spearman"] == pytest.approx(stats.spearmanr(track.ravel(), pair_alpha).statistic)
    for name in ("spearman", "ratio", "identity_distance"):
        low, high = figures["ci"][name]
        assert low <= figures[name] <= high


def run_quick(archive: Path, checkpoint: Path, out: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`retrieval bench --quick` on the archive subset, in a fresh process, with an empty torch hub cache."""
    env = {**os.environ, "TORCH_HOME": str(tmp / "torch-home")}
    args = [*(str(archive / p) for p in SUBSET), "--manifest", str(archive / "manifest.csv"), "--checkpoint", str(checkpoint),
            "--out", str(out), "--quick", "--seed", "0"]
    return subprocess.run([sys.executable, "-m", "retrieval.cli", "bench", *args], capture_output=True, text=True, env=env, timeout=300)


def within(value: float, bounds: list[float]) -> bool:
    """The estimate lies inside its bootstrap interval."""
    return bounds[0] <= value <= bounds[1]


@pytest.mark.archive
def test_quick_bench_writes_aligned_figures_with_intervals_report_and_plots(archive: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = run_quick(archive, tiny_checkpoint, out, tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["alphas"] == list(QUICK_ALPHAS)
    assert results["command"].startswith("retrieval bench ") and "--quick" in results["command"]
    assert {"torch", "numpy", "faiss", "retrieval"} <= set(results["versions"])
    assert 0 < results["data"]["queries"] <= QUICK_MAX_QUERIES and results["data"]["patients"] == 7
    assert list(results["methods"]) == list(METHODS)
    assert results["methods"]["dino"] == {"status": "not run (no weights)"}
    for name, m in results["methods"].items():
        if name == "dino":
            continue
        for key in ("map", "retention", "distance"):
            assert len(m[key]) == len(m["ci"][key]) == len(QUICK_ALPHAS), (name, key)
            assert all(within(v, b) for v, b in zip(m[key], m["ci"][key])), (name, key, m[key], m["ci"][key])
        assert m["retention"][0] == 1.0
        assert all(0.0 <= v <= 1.0 for v in m["map"])
        assert m["distance"][0] == pytest.approx(0.0, abs=1e-5)  # α = 0 is the identity
        for key in ("spearman", "ratio", "auc", "identity_distance"):
            assert within(m[key], m["ci"][key]), (name, key)
        assert m["seconds_per_query"] > 0
    report = (out / "report.md").read_text()
    assert "dino | not run (no weights)" in report and "| paper: learned | 0.710 | 0.080 | 0.999 | 88.0% |" in report
    assert all(f"| {name} |" in report for name in METHODS)
    for plot in ("retrieval.png", "distance.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / plot).stat().st_size > 10_000
    assert "dino     not run (no weights)" in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alphas", "0.2,0.8"], "must include 0"),
        (["--alphas", "0,x"], "comma-separated numbers"),
        (["--methods", "learned,psnr"], "unknown method 'psnr'"),
        (["--dino-weights", "missing.pth", "--methods", "dino"], "DINO weights file not found"),
        ([], "no usable CT/MR slices"),
    ],
)
def test_bad_options_fail_with_one_line(tiny_checkpoint: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["bench", str(tmp_path), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_archive_or_checkpoint_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{tmp_path / 'nope'}: no such file or folder" in result.output
    result = CliRunner().invoke(app, ["bench", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "none.pt: checkpoint not found" in result.output
