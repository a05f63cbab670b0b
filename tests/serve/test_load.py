"""`retrieval serve` under concurrent searches while `retrieval index` adds slices to the same DIR: no errors, new slices seen.

The small version of benchmarks/bench_serve.py (16 clients × 50 searches there, figures in docs/benchmarks.md).
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest
from serve_support import TCGA, TOKEN, cli_server, hammer, identity, link

pytestmark = pytest.mark.archive
ADDED = [TCGA.format("0005_AGE_0048"), TCGA.format("0007_AGE_0061"), "ct/ircadb/3Dircadb1.1/PATIENT_DICOM"]  # 45 slices of 3 new patients


def test_searches_while_an_index_run_adds_slices(archive, served_index, token_file, tmp_path) -> None:
    from indexer.pipeline import build_index

    index = tmp_path / "idx"
    shutil.copytree(served_index, index)
    more = link(archive, tmp_path / "more", ADDED)
    with cli_server("--index", str(index), "--token-file", str(token_file)) as url:
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        before = api.get("/api/info").json()["searched_slices"]
        finished, failures = threading.Event(), []

        def grow() -> None:
            try:
                build_index([more], index, identity(archive), workers=0, show_progress=False)
            except Exception as exc:  # noqa: BLE001 - reported by the test below
                failures.append(exc)
            finally:
                finished.set()

        grower = threading.Thread(target=grow)
        grower.start()
        load = hammer(url, TOKEN, archive / TCGA.format("0001_AGE_0069"), clients=4, searches=5, keep_going=lambda: not finished.is_set())
        grower.join()
        assert not failures
        assert load.errors == [] and len(load.latencies) >= 20

        deadline = time.monotonic() + 60
        while (info := api.get("/api/info").json())["searched_slices"] != info["slices"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert info["searched_slices"] == info["slices"] > before and info["patients"] == 10
        with (archive / TCGA.format("0007_AGE_0061")).open("rb") as handle:
            found = api.post("/api/search", files={"files": ("new.dcm", handle)}, data={"k": "1"}).json()
        assert found["results"][0]["patient_id"] == "tcga_lung-TCGA-17-Z021"
        assert found["results"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
        reloads = [line for line in api.get("/metrics").text.splitlines() if line.startswith("retrieval_index_reloads_total")]
        assert float(reloads[0].split()[-1]) >= 1
        api.close()
