"""Committed reports (docs/bench*/) name no patient of the sample archive, and no doc names a file whose name
carries a patient's age (the TCGA-lung file names)."""

from __future__ import annotations

import csv
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_reports_hold_no_patient_ids_or_source_file_names(archive: Path) -> None:
    with open(archive / "manifest.csv", newline="") as handle:
        ids = {row["patient_id"] for row in csv.DictReader(handle)}
    names = {p for p in ids | {p.split("-", 1)[1] for p in ids} if len(p) >= 8}  # '101' alone occurs in any number
    aged = {f.name.split(".")[0] for f in archive.rglob("*_AGE_*")}
    docs = [p for p in DOCS.rglob("*") if p.suffix in (".md", ".json")]
    reports = [p for p in docs if p.parent != DOCS and p.relative_to(DOCS).parts[0].startswith("bench-")]
    assert aged and len(reports) >= 4, "the archive's TCGA files and the committed bench reports are where this test expects them"
    leaked = {str(p.relative_to(DOCS)): hits for p in reports if (hits := sorted(n for n in names | aged if n in p.read_text()))}
    leaked |= {str(p.relative_to(DOCS)): hits for p in docs if (hits := sorted(n for n in aged if n in p.read_text()))}
    assert not leaked, f"patient ids or age-bearing file names in committed docs: {leaked}"
