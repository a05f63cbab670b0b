"""`dicomweb:` sources against a real Orthanc PACS: the same slices and vectors as the files, incremental, and safe when it goes away."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pydicom
import pytest
import torch
from orthanc_server import Orthanc, available
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from indexer.directory import CATALOG_NAME, IndexDirectory
from indexer.manifest import new_manifest
from indexer.pipeline import build_index, index_archive
from retrieval.checkpoint import save_checkpoint
from retrieval.cli import app
from retrieval.io import DicomWeb, Identity, SourceUnavailable, read_archive
from retrieval.metric import DistortionAwareMetric
from retrieval.model import DisentangledSiamese

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

TCGA = "ct/tcga_lung/dicom_dir/ID_{:04d}_AGE_{:04d}_CONTRAST_{}_CT.dcm"
# Single-slice studies of four patients (TCGA-17-Z034 twice, 1983 and 1984).
STUDIES = [TCGA.format(0, 60, 1), TCGA.format(12, 61, 1), TCGA.format(1, 69, 1), TCGA.format(4, 56, 1)]
LATER = TCGA.format(5, 48, 1)  # TCGA-17-Z045, 1984
GE_SLICES = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained ResNet18 at 64²: what these tests check does not depend on the weights."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def ge_files(archive: Path) -> list[Path]:
    """12 of the GE head CT's 28 slices: one multi-slice series, small enough to keep the tests quick."""
    return sorted((archive / "ct/dcm_qa_ct/GE").glob("*.dcm"))[:GE_SLICES]


def link(archive: Path, folder: Path, files: list[Path]) -> Path:
    """Symlink files into a folder (nothing copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def rows(index_dir: Path) -> dict[tuple[str, str, int], tuple[np.ndarray, float]]:
    """(patient, series, slice index) → (anatomy vector, α) of every catalog row."""
    with sqlite3.connect(index_dir / CATALOG_NAME) as db:
        found = db.execute("SELECT patient_id, series_id, slice_index, vector, alpha FROM slices").fetchall()
    return {(p, s, i): (np.frombuffer(v, np.float32), a) for p, s, i, v, a in found}


def consistent(index_dir: Path) -> tuple[int, int]:
    """(slices, incomplete series) after checking that the FAISS file on disk holds exactly the catalog's ids."""
    with sqlite3.connect(index_dir / CATALOG_NAME) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM slices ORDER BY id")]
        incomplete = db.execute("SELECT count(*) FROM series WHERE NOT complete").fetchone()[0]
    stored = faiss.read_index(str(index_dir / "vectors.faiss"))  # keep it referenced: the downcast view does not own it
    assert faiss.vector_to_array(faiss.downcast_index(stored).id_map).tolist() == ids
    return len(ids), incomplete


def test_index_from_dicomweb_equals_index_from_the_files_and_a_rerun_fetches_nothing(archive, tmp_path, orthanc, checkpoint) -> None:
    files = ge_files(archive) + [archive / rel for rel in STUDIES]
    orthanc.upload(files)
    identity = Identity()  # no manifest: patients are the DICOM PatientIDs, as a PACS keys them
    build_index([link(archive, tmp_path / "files", files)], tmp_path / "from_files", identity, checkpoint=checkpoint, workers=1, show_progress=False)
    report = build_index([orthanc.source], tmp_path / "from_pacs", identity, checkpoint=checkpoint, workers=1, show_progress=False)
    expected, found = rows(tmp_path / "from_files"), rows(tmp_path / "from_pacs")
    assert report.series_indexed == 5 and report.slices_added == len(expected) >= GE_SLICES + 4
    assert set(found) == set(expected), "same patients, series and slice order"
    for key, (vector, alpha) in expected.items():
        np.testing.assert_allclose(found[key][0], vector, atol=1e-5)
        assert found[key][1] == pytest.approx(alpha, abs=1e-5)
    assert orthanc.series_retrieved() == 5 and consistent(tmp_path / "from_pacs") == (len(expected), 0)

    again = build_index([orthanc.source], tmp_path / "from_pacs", identity, checkpoint=checkpoint, workers=1, show_progress=False)
    assert (again.series_indexed, again.series_unchanged, again.slices_added) == (0, 5, 0)
    assert orthanc.series_retrieved() == 5, "an unchanged series (same UID, same instances) is not fetched again"

    study = pydicom.dcmread(archive / STUDIES[2], stop_before_pixels=True).StudyInstanceUID
    searches = [CliRunner().invoke(app, ["search", query, *options, "--index", str(tmp_path / "from_files"), "-k", "3", "--json"])
                for query, options in ((orthanc.source, ["--study", study]), (str(archive / STUDIES[2]), []))]
    assert all(done.exit_code == 0 for done in searches), [done.output for done in searches]
    remote, local = (json.loads(done.stdout)["results"] for done in searches)  # the PACS query is fetched in a reader process
    assert [(m["patient_id"], round(m["distance"], 5)) for m in remote] == [(m["patient_id"], round(m["distance"], 5)) for m in local]


def test_a_series_added_is_picked_up_and_a_changed_one_redone(archive, tmp_path, orthanc, checkpoint) -> None:
    ids = orthanc.upload(ge_files(archive)[:6] + [archive / STUDIES[0]])
    source = DicomWeb.parse(orthanc.source)
    build_index([source], tmp_path / "idx", Identity(), checkpoint=checkpoint, workers=0, show_progress=False)
    orthanc.upload([archive / LATER])
    added = build_index([source], tmp_path / "idx", Identity(), checkpoint=checkpoint, workers=0, show_progress=False)
    assert (added.series_indexed, added.series_unchanged, orthanc.series_retrieved()) == (1, 2, 3)
    assert ("TCGA-17-Z045", 0) in {(p, i) for p, _, i in rows(tmp_path / "idx")}
    orthanc.delete_instance(ids[0])  # the GE series now has 5 instances
    changed = build_index([source], tmp_path / "idx", Identity(), checkpoint=checkpoint, workers=0, show_progress=False)
    assert (changed.series_indexed, changed.series_unchanged) == (1, 2)
    counts = {}
    for patient, _, _ in rows(tmp_path / "idx"):
        counts[patient] = counts.get(patient, 0) + 1
    assert counts["QMNx85rKkkg"] == 5 and consistent(tmp_path / "idx") == (sum(counts.values()), 0)


def test_a_series_of_localizers_is_skipped_from_the_listing_and_never_fetched(archive, tmp_path, orthanc, checkpoint) -> None:
    """A scout series (ImageType LOCALIZER) is reported with its reason from the QIDO-RS listing alone."""
    scout = pydicom.dcmread(archive / STUDIES[1])
    scout.ImageType, scout.SeriesInstanceUID, scout.SOPInstanceUID = ["ORIGINAL", "PRIMARY", "LOCALIZER"], generate_uid(), generate_uid()
    scout.save_as(tmp_path / "scout.dcm")
    orthanc.upload([archive / STUDIES[0], tmp_path / "scout.dcm"])
    report = build_index([orthanc.source], tmp_path / "idx", Identity(), checkpoint=checkpoint, workers=0, show_progress=False)
    assert report.series_indexed == 1 and orthanc.series_retrieved() == 1
    assert [s.path.rsplit("/", 1)[-1] for s in report.skipped] == [scout.SOPInstanceUID] and "localizer" in report.skipped[0].reason


def test_orthanc_stopped_mid_run_gives_one_line_error_and_an_index_the_rerun_completes(archive, tmp_path, orthanc, checkpoint) -> None:
    orthanc.upload(ge_files(archive) + [archive / rel for rel in STUDIES])
    source = DicomWeb.parse(orthanc.source, retries=1, backoff=0.05)
    metric = DistortionAwareMetric.load(checkpoint, "cpu")
    expected = new_manifest(metric.checkpoint_hash, checkpoint, metric.config, metric.size, "flat")

    def stop_after_first_batch(total: int):
        def advance(n: int) -> None:
            if n and orthanc.process is not None:
                orthanc.stop()
        return advance

    with IndexDirectory.open(tmp_path / "idx", expected, writable=True) as directory:
        with pytest.raises(SourceUnavailable) as failure:
            index_archive([source], directory, metric, Identity(), batch_size=1, workers=0, progress=stop_after_first_batch)
    message = str(failure.value)
    assert message.startswith(orthanc.source) and "cannot connect" in message and "WADO-RS" in message and "\n" not in message
    done, incomplete = consistent(tmp_path / "idx")
    assert 0 < done and incomplete <= 1, "committed batches are kept, the interrupted series is marked incomplete"

    orthanc.start()
    rerun = build_index([source], tmp_path / "idx", Identity(), checkpoint=checkpoint, workers=0, show_progress=False)
    assert rerun.series_indexed + rerun.series_unchanged == 5 and consistent(tmp_path / "idx") == (GE_SLICES + 4, 0)
    assert len(rows(tmp_path / "idx")) == GE_SLICES + 4, "nothing lost, nothing duplicated"


def test_studies_since_and_credentials(archive, tmp_path, checkpoint) -> None:
    server = Orthanc(tmp_path / "orthanc", users={"alice": "s3cret"}).start()
    try:
        server.upload([archive / rel for rel in STUDIES] + [archive / LATER])
        (tmp_path / "good").write_text("s3cret\n")
        (tmp_path / "bad").write_text("guess\n")
        login = ["--user", "alice", "--password-file"]

        def scan(*args: str) -> dict:
            result = CliRunner().invoke(app, ["scan", server.source, "--headers-only", "--json", *args])
            assert result.exit_code == 0, result.output
            import json
            return json.loads(result.stdout)

        everything = scan(*login, str(tmp_path / "good"))
        assert {p["patient_id"] for p in everything["patients"]} == {"TCGA-17-Z034", "TCGA-17-Z011", "TCGA-17-Z039", "TCGA-17-Z045"}
        assert everything["totals"]["series"] == 5
        later = scan(*login, str(tmp_path / "good"), "--since", "1984-01-01")
        assert later["totals"]["series"] == 3, "the 1984 studies only (TCGA-17-Z034's second, Z039, Z045)"
        study = next(s["study_id"] for p in everything["patients"] if p["patient_id"] == "TCGA-17-Z011" for s in p["series"])
        one = scan(*login, str(tmp_path / "good"), "--study", study)
        assert [p["patient_id"] for p in one["patients"]] == ["TCGA-17-Z011"]

        refused = CliRunner().invoke(app, ["scan", server.source, *login, str(tmp_path / "bad")])
        assert refused.exit_code == 2
        line = refused.output.strip()
        assert line.startswith(f"error: {server.source}: HTTP 401") and "--password-file" in line and "\n" not in line and "guess" not in line
        stale = DicomWeb.parse(server.source, retries=1, backoff=0.05)
        server.stop()
        with pytest.raises(SourceUnavailable, match=r"cannot connect .* on QIDO-RS /studies"):
            list(read_archive([stale], Identity()))
    finally:
        server.stop()
