"""A PostgreSQL catalog (`--catalog postgresql://…`) on a real server started here: same results as SQLite, schema check, many writers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.catalog import Catalog, SeriesRecord, SliceRecord
from retrieval.cli import app

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
TCGA = [f"ct/tcga_lung/dicom_dir/ID_000{i}_AGE_00{age}_CONTRAST_1_CT.dcm" for i, age in ((0, 60), (1, 69), (4, 56))]
SUBSET = ["ct/dcm_qa_ct/GE", *TCGA, "mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz"]


def _as_postgres(*command: str) -> None:
    """Run a PostgreSQL tool as the postgres user when we are root (the server refuses root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def server() -> str:
    """A throwaway PostgreSQL server on a free loopback port; yields its admin URL."""
    if not PG_BIN:
        pytest.skip("PostgreSQL is not installed (scripts/setup_test_env.sh installs it)")
    bin_dir = PG_BIN[-1].parent
    root = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def database(server: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def cli(*args: str, code: int = 0) -> dict | str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 and "--json" in args else result.output


@pytest.fixture(scope="module")
def indexes(archive: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, list[str]]:
    """The same archive subset indexed twice: SQLite catalog, PostgreSQL catalog."""
    root = tmp_path_factory.mktemp("pg")
    (root / "archive").mkdir()
    for rel in SUBSET:
        (root / "archive" / Path(rel).name).symlink_to(archive / rel)
    identity = ["--manifest", str(archive / "manifest.csv")]
    url = database(server, "catalog")
    for name, extra in (("sqlite", []), ("postgres", ["--catalog", url])):
        cli("index", str(root / "archive"), "--index", str(root / name), "--workers", "0", "--json", *identity, *extra)
    return root / "sqlite", root / "postgres", url, identity


@pytest.mark.parametrize(("relative", "extra"), [("ct/dcm_qa_ct/GE/12.dcm", []), (TCGA[1], ["--by", "slice"]),
                                                 ("mr/myops/102_C0.nii.gz", ["--slice", "2", "--max-alpha", "0.2"]),
                                                 ("mr/myops/104_C0.nii.gz", ["--modality", "MR"])])
def test_sqlite_and_postgresql_catalogs_give_identical_search_results(archive: Path, indexes, relative: str, extra: list[str]) -> None:  # type: ignore[no-untyped-def]
    sqlite, postgres, _, identity = indexes
    results = [cli("search", str(archive / relative), "--index", str(index), "-k", "5", "--json", *identity, *extra) for index in (sqlite, postgres)]
    assert results[0] == results[1] and results[0]["results"]


def test_the_index_keeps_its_catalog_and_checks_its_schema(indexes, server: str) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    sqlite, postgres, url, _ = indexes
    manifest = json.loads((postgres / "manifest.json").read_text())
    assert manifest["catalog"] == url and not (postgres / "catalog.sqlite").exists()
    summaries = [{k: v for k, v in cli("info", "--index", str(index), "--json").items() if k not in ("index", "size_bytes")} for index in (sqlite, postgres)]
    assert summaries[0] == summaries[1] and summaries[0]["slices"]
    other = database(server, "other")
    assert "its catalog is" in cli("info", "--index", str(postgres), "--catalog", other, code=2)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE catalog_meta SET value = '99' WHERE key = 'schema_version'")
    try:
        message = cli("info", "--index", str(postgres), code=2)
        assert "catalog schema version 99" in message and "upgrade medretrieval" in message and "Traceback" not in message
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("UPDATE catalog_meta SET value = '1' WHERE key = 'schema_version'")


def test_many_writers_at_once(server: str) -> None:
    url = database(server, "writers")
    Catalog(url).close()  # creates the tables once, as `retrieval index` does before its writers start

    def write(writer: int) -> np.ndarray:
        catalog = Catalog(url)
        try:
            ids = []
            for batch in range(10):
                key = f"series-{writer}-{batch}"
                record = SeriesRecord(key, f"p{writer}", None, key, "CT", f"/a/{key}", "sum")
                slices = [SliceRecord(key, i, f"/a/{key}/{i}.dcm", "sum", 0.1, np.full(4, writer, np.float32)) for i in range(5)]
                ids.append(catalog.commit_batch([record], slices, [key], "model", "0"))
            return np.concatenate(ids)
        finally:
            catalog.close()

    with ThreadPoolExecutor(6) as pool:
        written = np.concatenate(list(pool.map(write, range(6))))
    catalog = Catalog(url, readonly=True)
    try:
        assert len(np.unique(written)) == len(written) == 6 * 10 * 5
        np.testing.assert_array_equal(catalog.ids(), np.sort(written))
        assert catalog.series_count() == (60, 60)
        np.testing.assert_array_equal(catalog.vectors(written[-5:], 4), np.full((5, 4), 5, np.float32))
    finally:
        catalog.close()
