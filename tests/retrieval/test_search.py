"""`retrieval search` / `remove` / `info` / `qc` on an index of a real archive subset."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nibabel.testing import data_path as nibabel_data
from typer.testing import CliRunner

from indexer.directory import IndexDirectory
from indexer.pipeline import build_index
from retrieval.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from retrieval.cli import app
from retrieval.io import Identity, read_path
from retrieval.model import DisentangledSiamese
from retrieval.search import rank, search_path

TCGA = sorted(f"ct/tcga_lung/dicom_dir/{name}" for name in ["ID_0000_AGE_0060_CONTRAST_1_CT.dcm", "ID_0001_AGE_0069_CONTRAST_1_CT.dcm", "ID_0004_AGE_0056_CONTRAST_1_CT.dcm"])
SUBSET = ["ct/dcm_qa_ct/GE", *TCGA, "mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz", "mr/myops/104_C0.nii.gz"]


def index_subset(archive: Path, root: Path, checkpoint: Path | None, relative: list[str]) -> Path:
    """Symlink archive entries under root/archive and index them into root/idx."""
    (root / "archive").mkdir(parents=True)
    for rel in relative:
        (root / "archive" / Path(rel).name).symlink_to(archive / rel)
    build_index([root / "archive"], root / "idx", Identity(manifest=archive / "manifest.csv"), checkpoint=checkpoint, workers=1, show_progress=False)
    return root / "idx"


@pytest.fixture(scope="module")
def index_dir(archive, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})
    return index_subset(archive, root, checkpoint, SUBSET)


@pytest.fixture()
def directory(index_dir):
    with IndexDirectory.open(index_dir) as opened:
        yield opened


def cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(("relative", "patient", "slice_index"), [("ct/dcm_qa_ct/GE/12.dcm", "dcm_qa_ct-QMNx85rKkkg", None), (TCGA[1], None, None), ("mr/myops/102_C0.nii.gz", "myops-102", 2)])
def test_an_indexed_slice_finds_its_patient_first(archive, directory, relative, patient, slice_index) -> None:
    # Structural check with an untrained model (the same slice, undistorted); the α = 0.2 test below needs the trained checkpoint.
    identity = Identity(manifest=archive / "manifest.csv")
    query = read_path(archive / relative, identity)
    result = search_path(directory, directory.metric(), archive / relative, identity, slice_index=slice_index, k=3)
    assert result.results[0].patient_id == (patient or query[0].patient_id)
    best = result.results[0].slices[0]
    assert best.distance < 1e-3 and Path(best.path).resolve() == (archive / relative).resolve()
    assert slice_index is None or best.slice_index == slice_index
    assert result.n_slices == 1 and 0.0 <= result.alpha <= 1.0


MYOPS = [f"mr/myops/{n}_C0.nii.gz" for n in (101, 102, 104, 105, 106, 107, 108, 109, 110, 111)]


@pytest.fixture(scope="module")
def shipped_index(archive, tmp_path_factory) -> Path:
    """An index built with the shipped checkpoint (a missing checkpoint fails here: it is part of the product)."""
    assert DEFAULT_CHECKPOINT.is_file(), f"{DEFAULT_CHECKPOINT}: the shipped checkpoint is missing"
    return index_subset(archive, tmp_path_factory.mktemp("shipped"), None, SUBSET[:4] + MYOPS)


def test_slice_distorted_at_alpha_02_finds_its_patient_first(archive, shipped_index) -> None:
    from retrieval.distortions import distort

    identity = Identity(manifest=archive / "manifest.csv")
    with IndexDirectory.open(shipped_index) as directory:
        metric = directory.metric()
        for relative, position in [("ct/dcm_qa_ct/GE", 14), (TCGA[0], 0), (MYOPS[3], 2), (MYOPS[7], 1)]:
            query = read_path(archive / relative, identity)[position]
            noisy = distort(query.pixels, 0.2, query.modality, seed=position, spacing=query.spacing[0])
            anatomy = metric.embed([metric.preprocess(noisy, query.modality, query.spacing)]).anatomy
            assert rank(directory, anatomy, k=3)[0].patient_id == query.patient_id, relative


def test_a_flipped_or_turned_query_ranks_what_the_original_ranks(archive, shipped_index) -> None:
    """The shipped vectors end in a layout that moves with the slice; search compares a query under its flips/turns,
    so slices, patients and series come back in the same order at the same distances."""
    from retrieval.search import rank_groups

    identity = Identity(manifest=archive / "manifest.csv")
    with IndexDirectory.open(shipped_index) as directory:
        assert directory.layout > 0 and directory.store.dim == 128 + directory.layout
        assert cli("info", "--index", str(shipped_index))["vectors"] == {"dim": 128 + directory.layout, "layout_columns": directory.layout, "query_views": 8}
        metric = directory.metric()
        for relative, position in [(MYOPS[2], 3), (TCGA[1], 0)]:
            query = read_path(archive / relative, identity)[position]

            def found(pixels: np.ndarray) -> tuple[list, list]:
                anatomy = metric.embed([metric.preprocess(np.ascontiguousarray(pixels), query.modality, query.spacing)]).anatomy
                slices = [(s.path, s.slice_index, s.distance) for m in rank(directory, anatomy, k=8, by="slice") for s in m.slices]
                series = [(m.series_id, m.distance) for m in rank_groups(directory, anatomy, k=4, by="series")]
                return slices, series

            (slices, series) = found(query.pixels)
            assert slices[0][2] < 1e-3  # itself
            for turned in (np.fliplr(query.pixels), np.rot90(query.pixels), np.rot90(query.pixels, 2).T):
                other_slices, other_series = found(turned)
                assert [s[:2] for s in other_slices] == [s[:2] for s in slices], relative
                assert np.allclose([s[2] for s in other_slices], [s[2] for s in slices], atol=2e-3)
                assert [s[0] for s in other_series] == [s[0] for s in series]
                assert np.allclose([s[1] for s in other_series], [s[1] for s in series], atol=2e-3)


def exact_top(directory: IndexDirectory, query: np.ndarray, eligible: np.ndarray, k: int) -> list[int]:
    """Brute-force top-k catalog ids among eligible rows (the reference for the filtered search)."""
    vectors = directory.catalog.vectors(eligible, 128)
    return eligible[np.argsort(-(vectors @ query), kind="stable")[:k]].tolist()


def test_max_alpha_is_applied_inside_the_search_and_k_still_come_back(directory) -> None:
    ids = directory.catalog.ids()
    rows = directory.catalog.slices(ids)
    alphas = np.array([rows[i].alpha for i in ids])
    threshold = float(np.median(alphas))
    eligible = ids[alphas <= threshold]
    query = directory.catalog.vectors(ids[alphas > threshold][:1], 128)  # a high-α slice: its own series is excluded
    matches = rank(directory, query, k=10, by="slice", max_alpha=threshold)
    found = [m.slices[0] for m in matches]
    assert len(found) == 10 and all(s.alpha <= threshold for s in found)
    by_path = {(rows[i].path, rows[i].slice_index): i for i in ids}
    top = exact_top(directory, query[0], eligible, 10)
    assert [by_path[(s.path, s.slice_index)] for s in found] == top
    patients = {rows[i].patient_id for i in eligible}
    ranked = rank(directory, query, k=len(patients), by="patient", max_alpha=threshold)
    assert {m.patient_id for m in ranked} == patients, "every eligible patient comes back when k asks for all"
    assert all(s.alpha <= threshold for m in ranked for s in m.slices)


def test_modality_and_excluded_patients_are_filters(directory) -> None:
    ids = directory.catalog.ids()
    query = directory.catalog.vectors(ids[:1], 128)
    assert {s.modality for m in rank(directory, query, k=50, by="slice", modality="MR") for s in m.slices} == {"MR"}
    kept = rank(directory, query, k=50, exclude_patients=["myops-101", "dcm_qa_ct-QMNx85rKkkg"])
    assert len(kept) == len(directory.catalog.patients()) - 2 and not {"myops-101", "dcm_qa_ct-QMNx85rKkkg"} & {m.patient_id for m in kept}


def test_a_distorted_query_is_flagged_above_tau(archive, shipped_index, tmp_path) -> None:
    """The README's TAU rule: the query's mean predicted α above TAU = 0.3 gives `distorted` and a warning on stderr."""
    import nibabel as nib

    from retrieval import TAU
    from retrieval.distortions import distort

    clean = archive / MYOPS[3]
    volume = nib.load(clean)
    pixels = np.asarray(volume.dataobj, dtype=np.float32)
    noisy = np.stack([distort(pixels[..., i], 0.9, "MR", seed=i) for i in range(pixels.shape[-1])], -1)
    nib.save(nib.Nifti1Image(noisy, volume.affine), tmp_path / "noisy.nii.gz")
    runner = CliRunner()
    for query, distorted in ((clean, False), (tmp_path / "noisy.nii.gz", True)):
        as_json = json.loads(runner.invoke(app, ["search", str(query), "--index", str(shipped_index), "--modality", "MR", "--json"]).stdout)["query"]
        assert as_json["tau"] == TAU == 0.3 and as_json["distorted"] is distorted and (as_json["alpha"] > TAU) is distorted, as_json
        text = runner.invoke(app, ["search", str(query), "--index", str(shipped_index), "--modality", "MR"])
        printed = re.search(r"predicted α (\d\.\d{3})", text.stdout)  # the JSON keeps 4 decimals, the text 3
        assert text.exit_code == 0 and printed and abs(float(printed.group(1)) - as_json["alpha"]) <= 5.5e-4 + 1e-9, (text.stdout, as_json)
        warned = [line for line in text.stderr.splitlines() if "above TAU = 0.3" in line]
        assert len(warned) == int(distorted), text.stderr


def test_a_clean_small_query_is_not_flagged(shipped_index) -> None:
    """pydicom's MR_small.dcm (64 × 64, a clean crop at native scale) keeps the scanner's noise that a whole slice's
    resize averages away; the small-image trees read it below TAU (the whole-slice trees alone read 0.38)."""
    from pydicom.data import get_testdata_file

    from retrieval import TAU

    runner = CliRunner()
    query = get_testdata_file("MR_small.dcm")
    as_json = json.loads(runner.invoke(app, ["search", query, "--index", str(shipped_index), "--json"]).stdout)["query"]
    text = runner.invoke(app, ["search", query, "--index", str(shipped_index)])
    assert not as_json["distorted"] and as_json["alpha"] < TAU and text.exit_code == 0, as_json
    assert "above TAU" not in text.stderr, text.stderr


def test_search_json_shape_and_order(archive, index_dir) -> None:
    out = cli("search", str(archive / "mr/myops/101_C0.nii.gz"), "--index", str(index_dir), "-k", "4", "--manifest", str(archive / "manifest.csv"))
    assert {"path", "n_slices", "alpha", "tau", "distorted"} <= set(out["query"]) and out["query"]["n_slices"] == 5
    assert out["query"]["distorted"] == (out["query"]["alpha"] > out["query"]["tau"])
    assert len(out["results"]) == 4 and out["results"][0]["patient_id"] == "myops-101"
    distances = [r["distance"] for r in out["results"]]
    assert distances == sorted(distances)
    for result in out["results"]:
        assert {"patient_id", "distance", "slices"} <= set(result) and result["distance"] == result["slices"][0]["distance"]
        for s in result["slices"]:
            assert {"path", "slice_index", "distance", "alpha", "modality", "series_id"} <= set(s) and s["series_id"]
    by_slice = cli("search", str(archive / TCGA[2]), "--index", str(index_dir), "-k", "5", "--by", "slice", "--modality", "CT")
    assert len(by_slice["results"]) == 5 and all(r["slices"][0]["modality"] == "CT" for r in by_slice["results"])


def test_printed_matches_name_the_volume_of_a_4d_file(tmp_path) -> None:
    """The slices of a 4D file's volumes share its path and slice numbers: the printed line names the volume (#tK)."""
    example = Path(nibabel_data) / "example4d.nii.gz"
    build_index([example], tmp_path / "idx", Identity(modality="MR"), workers=0, show_progress=False)
    result = CliRunner().invoke(app, ["search", str(example), "--modality", "MR", "--slice", "12", "--by", "slice", "-k", "2", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    lines = sorted(line.split("/")[-1] for line in result.stdout.splitlines() if "[slice " in line)
    assert lines == ["example4d.nii.gz#t0 [slice 12]", "example4d.nii.gz#t1 [slice 12]"], result.stdout


def test_remove_patient_then_it_never_appears(archive, index_dir, tmp_path) -> None:
    copy = shutil.copytree(index_dir, tmp_path / "idx")
    before = cli("info", "--index", str(copy))
    n = before["by_patient"]["myops-102"]
    assert {"slices", "patients", "by_modality"} <= set(before) and n > 0
    assert before["vectors"] == {"dim": 128, "layout_columns": 0, "query_views": 1}  # a checkpoint without a layout
    assert cli("remove", "--index", str(copy), "--patient", "myops-102") == {"patient_id": "myops-102", "slices_removed": n}
    after = cli("info", "--index", str(copy))
    assert after["patients"] == before["patients"] - 1 and after["slices"] == before["slices"] - n and "myops-102" not in after["by_patient"]
    out = cli("search", str(archive / "mr/myops/102_C0.nii.gz"), "--index", str(copy), "-k", "100", "--manifest", str(archive / "manifest.csv"))
    assert len(out["results"]) == after["patients"] and "myops-102" not in {r["patient_id"] for r in out["results"]}
    again = CliRunner().invoke(app, ["remove", "--index", str(copy), "--patient", "myops-102"])
    assert again.exit_code == 1 and "no slices" in again.output


def test_qc_lists_exactly_the_slices_above_the_threshold(directory, index_dir) -> None:
    alphas = sorted(r.alpha for r in directory.catalog.slices(directory.catalog.ids()).values())
    threshold = alphas[len(alphas) * 3 // 4]
    report = cli("qc", "--index", str(index_dir), "--above", str(threshold))
    flagged = [s["alpha"] for series in report["series"] for s in series["slices"]]
    assert report["slices"] == len(flagged) == sum(a > threshold for a in alphas) > 0
    assert all(a > threshold - 1e-4 for a in flagged)
    assert [s["max_alpha"] for s in report["series"]] == sorted((s["max_alpha"] for s in report["series"]), reverse=True)


def test_relative_qc_flags_slices_above_their_own_series_median(directory, index_dir) -> None:
    """--relative compares each slice with the median α of its series (recomputed here from the catalog)."""
    rows = directory.catalog.table(["series_id", "alpha"])
    by_series: dict[str, list[float]] = {}
    for series_id, alpha in rows:
        by_series.setdefault(series_id, []).append(alpha)
    excess = sorted(a - np.median(values) for values in by_series.values() for a in values)
    cut = len(excess) * 3 // 4  # about a quarter of the slices lie further above their series' median
    margin = float(excess[cut - 1] + excess[cut]) / 2
    expected = sorted((sid, round(a, 4)) for sid, values in by_series.items() for a in values if a - np.median(values) > margin)
    report = cli("qc", "--index", str(index_dir), "--above", str(margin), "--relative")
    got = sorted((series["series_id"], s["alpha"]) for series in report["series"] for s in series["slices"])
    assert report["relative"] and got == expected and 0 < report["slices"] == len(expected) < len(rows)
    for series in report["series"]:
        assert series["median_alpha"] == pytest.approx(np.median(by_series[series["series_id"]]), abs=1e-4)
        assert all(s["excess"] > margin for s in series["slices"])
    assert [s["max_excess"] for s in report["series"]] == sorted((s["max_excess"] for s in report["series"]), reverse=True)


def test_a_mismatched_checkpoint_is_refused_in_one_line(archive, index_dir, tmp_path) -> None:
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})
    result = CliRunner().invoke(app, ["search", str(archive / TCGA[0]), "--index", str(index_dir), "--checkpoint", str(other)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "built with checkpoint" in lines[0] and str(other) in lines[0], result.output


def test_an_index_on_read_only_storage_answers_like_the_original(archive, index_dir, read_only_copy) -> None:
    frozen = read_only_copy(index_dir)
    query = ["search", str(archive / "mr/myops/104_C0.nii.gz"), "-k", "5", "--manifest", str(archive / "manifest.csv")]
    assert cli(*query, "--index", str(frozen))["results"] == cli(*query, "--index", str(index_dir))["results"]
    assert cli("qc", "--index", str(frozen), "--above", "0.2") == cli("qc", "--index", str(index_dir), "--above", "0.2")


def test_search_reads_the_query_under_the_limit_options(shipped_index) -> None:
    """The query file is read under `scan`'s limit options: one over them is refused in one line naming the option."""
    from pydicom.data import get_testdata_file

    query = get_testdata_file("CT_small.dcm")
    base = ["search", query, "--index", str(shipped_index)]
    refused = CliRunner().invoke(app, [*base, "--max-slice-pixels", "16383"])
    assert refused.exit_code == 2 and refused.stderr == f"error: {query}: slices of 128×128 = 16,384 pixels, above --max-slice-pixels 16,383\n"
    assert CliRunner().invoke(app, [*base, "--max-slice-pixels", "16384"]).exit_code == 0
