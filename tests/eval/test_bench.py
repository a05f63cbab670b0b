"""`retrieval bench` end to end on a small real subset: both protocols, held-out data by default, breakdowns, redaction, pooling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eval.metrics import RANKING
from eval.pool import main as pool_main
from eval.protocol import QUICK_ALPHAS, QUICK_MAX_QUERIES, VARIANTS
from retrieval.cli import app

# A small real subset: three cardiac MR patients, one head CT volume, single-slice chest CTs (two patients with two).
SUBSET = (
    "mr/myops/101_C0.nii.gz", "mr/myops/101_DE.nii.gz", "mr/myops/101_T2.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/102_T2.nii.gz",
    "mr/myops/104_C0.nii.gz", "mr/myops/104_DE.nii.gz", "ct/dcm_qa_ct/GE",
    "ct/tcga_lung/dicom_dir/ID_0001_AGE_0069_CONTRAST_1_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0047_AGE_0069_CONTRAST_1_CT.dcm",
    "ct/tcga_lung/dicom_dir/ID_0054_AGE_0082_CONTRAST_0_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0083_AGE_0082_CONTRAST_0_CT.dcm",
    "ct/tcga_lung/dicom_dir/ID_0057_AGE_0049_CONTRAST_0_CT.dcm",
)
MYOPS = ("mr/myops/101_C0.nii.gz", "mr/myops/101_T2.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/102_T2.nii.gz", "mr/myops/104_C0.nii.gz",
         "mr/myops/104_DE.nii.gz")
SMALL = ["--methods", "mse,learned", "--alphas", "0,0.8", "--max-queries", "6"]


@pytest.fixture(scope="module")
def quick(archive: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """`retrieval bench --quick` on the subset with an empty torch hub cache: (out folder, results, output)."""
    tmp = tmp_path_factory.mktemp("quick")
    out = tmp / "bench"
    args = ["bench", *(str(archive / p) for p in SUBSET), "--manifest", str(archive / "manifest.csv"), "--checkpoint", str(tiny_checkpoint),
            "--out", str(out), "--quick", "--seed", "0"]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp / "torch-home"))
        result = CliRunner().invoke(app, args)
    torch.set_num_threads(threads)  # bench sets its own
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


@pytest.mark.archive
def test_quick_bench_leaves_training_patients_out_and_reports_both_protocols(quick: tuple[Path, dict[str, Any], str]) -> None:
    out, results, stdout = quick
    report = (out / "report.md").read_text()
    assert report.splitlines()[0] == "Held-out data: 1 training patient of the checkpoint left out (by its digests); 6 patients benchmarked."
    assert results["honesty"]["left_out"] == 1 and results["data"]["patients"] == 6
    assert results["alphas"] == list(QUICK_ALPHAS) and results["levels"] == ["0", "0.4", "0.8", "mixed"]
    assert results["variants"] == list(VARIANTS)
    assert 0 < results["data"]["queries"] <= QUICK_MAX_QUERIES
    assert results["methods"]["dino"] == {"status": "not run (no weights)"} and "dino     not run (no weights)" in stdout
    ran = {name: m for name, m in results["methods"].items() if "status" not in m}
    assert set(ran) == {"learned", "mse", "ssim", "ncc", "mi", "grad", "cwssim"}
    for name, m in ran.items():
        for protocol, length in (("query", 3), ("archive", 4), ("variants", 3)):
            for key in ("map", "p1", "map_r", "r_precision", "retention"):
                assert len(m[protocol][key]) == len(m[protocol]["ci"][key]) == length, (name, protocol, key)
                assert all(v is not None and 0.0 <= v <= (2.0 if key == "retention" else 1.0) for v in m[protocol][key]), (name, key)
        for key in ("map", "p1", "map_r", "r_precision"):
            assert m["archive"][key][0] == m["query"][key][0], (name, key)  # gallery α = 0 is the query protocol's α = 0
        assert m["query"]["retention"][0] == 1.0 and m["query"]["distance"][0] == pytest.approx(0.0, abs=1e-5)
        assert {"spearman", "ratio", "auc", "identity_distance"} <= set(m) and m["timing"]["archive_seconds"] > 0
    assert "alpha_spearman" in ran["learned"] and "alpha_spearman" not in ran["mse"]
    assert "| paper: learned | 0.710 | 0.080 | 0.999 | 88.0% |" in report and "## Archive protocol" in report and "## Query variants" in report
    for plot in ("retrieval.png", "distance.png", "calibration.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / plot).stat().st_size > 10_000


@pytest.mark.archive
def test_per_dataset_and_per_modality_figures_pool_back_to_the_overall_ones(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = quick
    assert set(results["breakdown"]["dataset"]) == {"myops", "dcm_qa_ct", "tcga_lung"}
    assert set(results["breakdown"]["modality"]) == {"CT", "MR"}
    for key in ("dataset", "modality"):
        groups = results["breakdown"][key].values()
        assert sum(g["queries"] for g in groups) == results["data"]["queries"]
        for name, overall in results["methods"].items():
            if "status" in overall:
                continue
            for protocol in ("query", "archive", "variants"):
                pooled = sum(np.asarray(g["methods"][name][protocol]["map"]) * g["queries"] for g in groups) / results["data"]["queries"]
                np.testing.assert_allclose(pooled, overall[protocol]["map"], atol=1e-9, err_msg=f"{key} {name} {protocol}")
    calibration = results["calibration"]
    assert set(calibration["by_modality"]) == {"CT", "MR"} and set(calibration["clean_by_dataset"]) == {"myops", "dcm_qa_ct", "tcga_lung"}


@pytest.mark.archive
def test_per_query_records_name_sources_relative_to_the_archive_and_pool_back_to_the_run(quick: tuple[Path, dict[str, Any], str],
                                                                                        tmp_path: Path) -> None:
    out, results, _ = quick
    queries = results["per_query"]["queries"]
    assert len(queries["source"]) == results["data"]["queries"] and all(not s.startswith("/") for s in queries["source"])
    assert any(s.startswith("mr/myops/10") for s in queries["source"])
    assert "/work" not in (out / "report.md").read_text() and str(Path.cwd()) not in json.dumps(results["per_query"])
    mse = results["per_query"]["methods"]["mse"]
    assert set(mse) == {"query", "archive", "variants", "track", "identity"} and set(mse["archive"]) == set(RANKING)
    assert np.asarray(mse["archive"]["ap"]).shape == (4, len(queries["source"]))
    assert pool_main([str(out), "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    for name, m in pooled["methods"].items():
        if "status" not in m:
            for protocol in ("query", "archive", "variants"):
                np.testing.assert_allclose(m[protocol]["map"], results["methods"][name][protocol]["map"], atol=1e-5)
    assert (tmp_path / "pooled" / "report.md").read_text().splitlines()[0].startswith("Held-out data: pooled from 1 runs")


def small_bench(archive: Path, checkpoint: Path, out: Path, *extra: str) -> Any:
    """bench in process on six cardiac MR volumes of three patients, two methods, two α."""
    args = ["bench", *(str(archive / p) for p in MYOPS), "--manifest", str(archive / "manifest.csv"), "--checkpoint", str(checkpoint),
            "--out", str(out), *SMALL, *extra]
    return CliRunner().invoke(app, args)


@pytest.mark.archive
def test_include_training_puts_them_back_and_says_so_first(archive: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = small_bench(archive, tiny_checkpoint, tmp_path / "out", "--include-training")
    assert result.exit_code == 0, result.output
    first = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert first.startswith("**Includes the checkpoint's training data (--include-training): 1 of these 3 patients")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["data"]["patients"] == 3


@pytest.mark.archive
def test_a_checkpoint_trained_on_every_patient_stops_with_one_line(archive: Path, make_checkpoint: Callable, tmp_path: Path) -> None:
    everyone = make_checkpoint("everyone", training=["myops-101", "myops-102", "myops-104"])
    result = small_bench(archive, everyone, tmp_path / "out")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "all 3 patients of this archive trained the checkpoint" in result.output and not (tmp_path / "out").exists()


@pytest.mark.archive
def test_redacted_outputs_name_no_file_and_no_patient(archive: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = small_bench(archive, tiny_checkpoint, tmp_path / "out", "--redact-paths", "--include-training")
    assert result.exit_code == 0, result.output
    for name in ("results.json", "report.md"):
        text = (tmp_path / "out" / name).read_text()
        assert not any(word in text for word in ("101_C0", "104_DE", "myops-101", "myops-104", str(archive))), name
    sources = json.loads((tmp_path / "out" / "results.json").read_text())["per_query"]["queries"]["source"]
    assert all(s.startswith("series:") for s in sources)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alphas", "0.2,0.8"], "must include 0"),
        (["--alphas", "0,x"], "comma-separated numbers"),
        (["--methods", "learned,psnr"], "unknown method 'psnr'"),
        (["--dino-weights", "missing.pth", "--methods", "dino"], "DINO weights file not found"),
        (["--group-regex", "("], "group regex '('"),
        ([], "no usable CT/MR slices"),
    ],
)
def test_bad_options_fail_with_one_line(tiny_checkpoint: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["bench", str(tmp_path), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.archive
def test_unknown_dataset_is_named_with_the_ones_there_are(archive: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = small_bench(archive, tiny_checkpoint, tmp_path / "out", "--datasets", "myops,lidc")
    assert result.exit_code == 2 and "unknown dataset 'lidc'; this archive has myops" in result.output


def test_missing_archive_or_checkpoint_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{tmp_path / 'nope'}: no such file or folder" in result.output
    result = CliRunner().invoke(app, ["bench", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "none.pt: checkpoint not found" in result.output


def test_pool_refuses_folders_without_per_query_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"alphas": [0.0], "methods": {}}))
    assert pool_main([str(tmp_path / "old"), "--out", str(tmp_path / "pooled")]) == 2
    assert "has no per-query records" in capsys.readouterr().err
    assert pool_main([str(tmp_path / "none"), "--out", str(tmp_path / "pooled")]) == 2
    assert "no results.json" in capsys.readouterr().err
