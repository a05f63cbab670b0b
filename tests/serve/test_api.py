"""The JSON API against a real uvicorn server on loopback: search equals the CLI, tokens, limits, errors, pseudonyms."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file
from serve_support import TCGA, TOKEN, running
from typer.testing import CliRunner

from retrieval.checkpoint import patient_digest
from retrieval.cli import app as cli_app
from retrieval.serve import ServeConfig, create_app
from retrieval.serve.config import KEY_NAME

pytestmark = pytest.mark.archive
QUERIES = [  # (archive file, form fields, the same as CLI options)
    (TCGA.format("0001_AGE_0069"), {"k": "4", "thumbnail": "1"}, ["-k", "4"]),
    ("ct/dcm_qa_ct/GE/12.dcm", {"k": "3", "max_alpha": "0.3", "exclude_patient": "tcga_lung-TCGA-17-Z011"},
     ["-k", "3", "--max-alpha", "0.3", "--exclude-patient", "tcga_lung-TCGA-17-Z011"]),
    ("mr/myops/102_C0.nii.gz", {"k": "5", "modality": "MR", "slice": "2", "by": "slice"}, ["-k", "5", "--modality", "MR", "--slice", "2", "--by", "slice"]),
]


@pytest.fixture(scope="module")
def url(served_index: Path, token_file: Path):
    with running(create_app(ServeConfig(index=str(served_index), token_file=str(token_file)))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str):
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as session:
        yield session


def upload(client: httpx.Client, path: Path, fields: dict[str, str] | None = None) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post("/api/search", files={"files": (path.name, handle)}, data=fields or {})


def cli(*args: str) -> dict:
    result = CliRunner().invoke(cli_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def upload_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("retrieval-upload-*"))


@pytest.mark.parametrize(("relative", "fields", "options"), QUERIES, ids=["ct-slice", "ct-filters", "mr-volume-slice"])
def test_search_by_upload_equals_the_cli(archive, served_index, client, relative, fields, options) -> None:
    api = upload(client, archive / relative, fields)
    assert api.status_code == 200, api.text
    assert float(api.headers["Server-Timing"].split("dur=")[1]) > 0
    got, expected = api.json(), cli("search", str(archive / relative), "--index", str(served_index), *options)
    assert got["query"]["path"] == Path(relative).name and got["query"]["files"] == [Path(relative).name]
    assert got["query"]["thumbnail"].startswith("data:image/png;base64,") if "thumbnail" in fields else "thumbnail" not in got["query"]
    for name in ("n_slices", "tau", "distorted"):
        assert got["query"][name] == expected["query"][name]
    assert got["query"]["alpha"] == pytest.approx(expected["query"]["alpha"], abs=2e-3)
    assert [r["patient_id"] for r in got["results"]] == [r["patient_id"] for r in expected["results"]]
    assert len(got["results"]) == len(expected["results"]) > 0
    for mine, theirs in zip(got["results"], expected["results"]):
        assert mine["distance"] == pytest.approx(theirs["distance"], abs=2e-3)
        assert [(s["path"], s["slice_index"], s["series_id"], s["modality"]) for s in mine["slices"]] == \
               [(s["path"], s["slice_index"], s["series_id"], s["modality"]) for s in theirs["slices"]]
        for s in mine["slices"]:
            picture = client.get(s["thumbnail"])
            assert s["thumbnail"] == f"/api/slices/{s['id']}/thumbnail.png"
            assert picture.status_code == 200 and picture.headers["content-type"] == "image/png" and picture.content[:4] == b"\x89PNG"
    if "exclude_patient" in fields:
        assert fields["exclude_patient"] not in {r["patient_id"] for r in got["results"]}
    if "max_alpha" in fields:
        assert all(s["alpha"] <= 0.3 for r in got["results"] for s in r["slices"])


@pytest.mark.parametrize("route", ["/api/info", "/api/qc", "/api/patients/myops-101", "/api/slices/1/thumbnail.png", "/metrics", "/static/app.js"])
def test_every_route_but_healthz_needs_the_token(url, route) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.get(url + route, headers=headers)
        assert answer.status_code == 401, (route, headers)
        assert "token" in answer.json()["error"] and answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}


def test_search_without_the_token_is_refused_before_the_upload_is_read(archive, url) -> None:
    before = upload_folders()
    with httpx.Client(base_url=url) as anonymous:
        answer = upload(anonymous, archive / TCGA.format("0001_AGE_0069"))
    assert answer.status_code == 401 and "token" in answer.json()["error"]
    assert upload_folders() == before


def test_the_page_asks_for_the_token_then_keeps_a_session(url) -> None:
    with httpx.Client(base_url=url) as browser:
        form = browser.get("/")
        assert form.status_code == 401 and 'name="token"' in form.text and "/static/app.js" not in form.text
        assert browser.post("/login", data={"token": "wrong"}).status_code == 401
        signed_in = browser.post("/login", data={"token": TOKEN}, follow_redirects=True)
        assert signed_in.status_code == 200 and "/static/app.js" in signed_in.text
        assert browser.get("/api/info").status_code == 200 and browser.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("path", ["/api/slices/..%2F..%2Fetc%2Fpasswd/thumbnail.png", "/api/slices/../../etc/passwd/thumbnail.png",
                                  "/api/slices/%2Fetc%2Fpasswd/thumbnail.png", "/static/..%2F..%2F__init__.py", "/static/index.html",
                                  "/api/slices/999999/thumbnail.png", "/api/slices/-1/thumbnail.png"])
def test_no_route_reads_a_path_from_the_request(url, path) -> None:
    answer = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert set(answer.json()) == {"error"} and "root:" not in answer.text


def test_an_unreadable_upload_is_422_with_the_readers_reason_and_leaves_nothing_behind(archive, client, tmp_path) -> None:
    whole = (archive / TCGA.format("0001_AGE_0069")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "notes.dcm").write_text("patient,slice\n1,2\n")
    before = upload_folders()
    cut, text = upload(client, tmp_path / "cut.dcm"), upload(client, tmp_path / "notes.dcm")
    assert cut.status_code == 422 and cut.json()["error"].startswith("cut.dcm: truncated")
    assert text.status_code == 422 and "named .dcm" in text.json()["error"]
    assert tempfile.gettempdir() not in cut.text + text.text
    assert upload_folders() == before


@pytest.mark.parametrize(("fields", "reason"), [({"k": "0"}, "k must be"), ({"max_alpha": "2"}, "max_alpha must be"), ({"modality": "PET"}, "modality must be"),
                                                ({"by": "hospital"}, "by must be one of")])
def test_bad_search_fields_are_422_naming_the_field(archive, client, fields, reason) -> None:
    answer = upload(client, archive / TCGA.format("0001_AGE_0069"), fields)
    assert answer.status_code == 422 and answer.json()["error"].startswith(reason)
    empty = client.post("/api/search", files={"k": (None, "3")})
    assert empty.status_code == 422 and "no file" in empty.json()["error"]


def test_uploads_over_the_limit_are_refused(archive, served_index, token_file) -> None:
    """Over --max-upload-mb: 413 before or while the body streams in. Within it but over a reading limit
    (--max-slices-per-file here): 422 naming the option."""
    query = archive / TCGA.format("0001_AGE_0069")  # 0.50 MiB
    config = ServeConfig(index=str(served_index), token_file=str(token_file), max_upload_mb=0.4, max_slices_per_file=2)
    before = upload_folders()
    with running(create_app(config)) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as session:
        declared = upload(session, query)
        assert declared.status_code == 413 and "over the limit of 0.4 MiB" in declared.json()["error"]
        body = httpx.Request("POST", "/", files={"files": (query.name, query.read_bytes())})
        body.read()

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield from (body.content[i : i + 65536] for i in range(0, len(body.content), 65536))

        streamed = session.post("/api/search", content=chunks(), headers={"Content-Type": body.headers["Content-Type"]})
        assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
        volume = upload(session, archive / "mr/myops/102_C0.nii.gz", {"modality": "MR"})  # 0.33 MiB, 3 slices
        assert volume.status_code == 422 and volume.json()["error"] == "102_C0.nii.gz: 3 slices in one file, above --max-slices-per-file 2"
        small = upload(session, Path(get_testdata_file("CT_small.dcm")))  # 38 KiB, 1 slice: under both
        assert small.status_code == 200, small.text
    assert upload_folders() == before


def test_info_qc_and_patients_match_the_cli(served_index, client) -> None:
    info, expected = client.get("/api/info").json(), cli("info", "--index", str(served_index))
    for name in ("slices", "patients", "series", "by_modality", "by_patient", "alpha_histogram"):
        assert info[name] == expected[name]
    assert info["searched_slices"] == info["slices"] == 45
    # a threshold under the index's highest â, so the list is not empty whatever the estimator reads clean slices as
    above = round(cli("qc", "--index", str(served_index), "--above", "0")["series"][0]["max_alpha"] / 2, 4)
    qc, expected_qc = client.get("/api/qc", params={"above": above}).json(), cli("qc", "--index", str(served_index), "--above", str(above))
    assert [s["series_id"] for s in qc["series"]] == [s["series_id"] for s in expected_qc["series"]]
    assert [s["max_alpha"] for s in qc["series"]] == sorted((s["max_alpha"] for s in qc["series"]), reverse=True)
    assert qc["slices"] == expected_qc["slices"] > 0 and all(s["thumbnail"] for e in qc["series"] for s in e["slices"])
    relative = client.get("/api/qc", params={"above": 0.01, "relative": "true"}).json()
    expected_relative = cli("qc", "--index", str(served_index), "--above", "0.01", "--relative")
    assert relative["relative"] and relative["slices"] == expected_relative["slices"]
    assert [s["series_id"] for s in relative["series"]] == [s["series_id"] for s in expected_relative["series"]]
    assert client.get("/api/qc", params={"above": "x"}).json()["error"].startswith("above:")
    for patient, n in info["by_patient"].items():
        detail = client.get(f"/api/patients/{patient}").json()
        assert detail["patient_id"] == patient and detail["n_slices"] == n == sum(len(s["slices"]) for s in detail["series"])
    missing = client.get("/api/patients/nobody")
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]


def test_metrics_count_requests_and_report_the_index_size(archive, client) -> None:
    upload(client, archive / TCGA.format("0000_AGE_0060"))
    text = client.get("/metrics").text
    assert 'retrieval_http_requests_total{method="POST",route="/api/search",status="200"}' in text
    assert 'retrieval_http_request_duration_seconds_bucket{le="0.5",route="/api/search"}' in text
    assert "retrieval_search_duration_seconds_count" in text
    assert "retrieval_index_slices 45.0" in text and "retrieval_index_patients 7.0" in text


def test_pseudonymised_ids_everywhere(archive, served_index, token_file) -> None:
    config = ServeConfig(index=str(served_index), token_file=str(token_file), pseudonymise=True)
    query = archive / TCGA.format("0001_AGE_0069")
    with running(create_app(config)) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as session:
        key = (token_file.parent / KEY_NAME).read_text().strip()
        real = "tcga_lung-TCGA-17-Z011"
        shown = patient_digest(real, key)
        found = upload(session, query)
        texts = [found.text, session.get("/api/info").text, session.get("/api/qc", params={"above": 0}).text, session.get(f"/api/patients/{shown}").text]
        assert found.json()["results"][0]["patient_id"] == shown
        assert all(s["path"] is None for r in found.json()["results"] for s in r["slices"])
        for text in texts:
            assert "tcga_lung" not in text and "myops" not in text and "dcm_qa_ct" not in text and str(archive) not in text
        assert session.get(f"/api/patients/{real}").status_code == 404
        assert shown not in {r["patient_id"] for r in upload(session, query, {"exclude_patient": shown}).json()["results"]}


def test_serve_refuses_a_public_host_without_a_token(served_index, token_file) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(served_index), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token-file" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(cli_app, ["serve", "--index", str(served_index), "--pseudonymise"])
    assert missing.exit_code == 2 and "--pseudonymise needs --token-file" in missing.output
    nothing = CliRunner().invoke(cli_app, ["serve", "--index", str(served_index.parent / "none"), "--token-file", str(token_file)])
    assert nothing.exit_code == 2 and "no index here" in nothing.output
