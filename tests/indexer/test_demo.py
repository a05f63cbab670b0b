"""`retrieval demo` on the images pydicom and nibabel ship (always runs; no archive needed)."""

from __future__ import annotations

import torch

from indexer.demo import QUERY, demo_sources, run_demo
from indexer.directory import IndexDirectory
from retrieval.checkpoint import save_checkpoint
from retrieval.model import DisentangledSiamese


def test_demo_indexes_packaged_images_and_finds_the_query_patient_first(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})
    run_demo(tmp_path / "idx", checkpoint)
    out = capsys.readouterr().out
    clean = out.split("\nquery ")[1]
    assert QUERY in clean.splitlines()[0] and "  1. 1CT1  distance 0.0000" in clean  # CT_small.dcm's PatientID is 1CT1
    distorted = out.split(f"{QUERY} distorted at α = 0.4")[1]
    ranked = [line.split() for line in distorted.splitlines() if line[:4].strip().rstrip(".").isdigit()]  # "1.", patient, "distance", d
    assert [r[1] for r in ranked][0] == "1CT1" and len({r[1] for r in ranked}) == len(ranked) == 3, distorted  # still its own patient first
    assert [float(r[3]) for r in ranked] == sorted(float(r[3]) for r in ranked)
    with IndexDirectory.open(tmp_path / "idx") as directory:
        counts = directory.catalog.counts("modality")
        paths = {row[0] for row in directory.catalog.table(["path"])}
    assert counts.get("CT", 0) > 0 and counts.get("MR", 0) > 0
    assert all(any(p.startswith(str(source)) for p in paths) for source in demo_sources()), "every package's images are indexed"
