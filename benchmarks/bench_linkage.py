"""Series queries and subject linkage on an indexed archive: the figures `search --by series` and `retrieval link` are judged by.

    retrieval index ../shared/data --manifest ../shared/data/manifest.csv --index idx
    python benchmarks/bench_linkage.py --index idx [--false-rate 0.001]

1. Series queries: every series of a patient with several series queries the index (its catalog vectors, which
   is what `retrieval search SERIES --by series` embeds) and its own series is left out: is the first series
   returned one of the same patient? Per query, per patient (all of its series right) and per dataset (the part
   of the id before the first '-').
2. Within the archive: `retrieval link --index idx` (duplicates, different-id pairs) and `--ignore-ids` (graded).
3. Two indexes holding different slices of the same subjects under new ids: every series is split into its even
   and odd slices (single-slice series stay in A), B's patients are renamed, and `link --index A --index B` runs
   with the threshold calibrated within them: recall over the subjects present in both, and false pairs.
Figures for the checkpoint's validation patients are given apart when the checkpoint names them.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from indexer.catalog import SeriesRecord, SliceRecord
from indexer.directory import IndexDirectory
from indexer.manifest import read_manifest
from retrieval.link import link
from retrieval.search import rank_groups


def dataset(patient: str) -> str:
    return patient.split("-", 1)[0]


def series_queries(directory: IndexDirectory, subset: set[str] | None) -> dict[str, tuple[int, int]]:
    """(hits, queries) overall, per dataset, and per patient ('patient:' keys) for the series of patients with several."""
    rows = list(directory.catalog.slices(directory.catalog.ids().tolist()).values())
    series: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        series[(r.patient_id, r.series_id)].append(r)
    count = defaultdict(int)
    for patient, _ in series:
        count[patient] += 1
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (patient, _), members in series.items():
        if count[patient] < 2 or (subset is not None and patient not in subset):
            continue
        query = directory.catalog.vectors([r.id for r in members], directory.store.dim)
        top = rank_groups(directory, query, k=1, by="series", own=members)
        hit = int(bool(top) and top[0].patient_id == patient)
        for key in ("all", dataset(patient), "patient:" + patient):
            tally[key][0] += hit
            tally[key][1] += 1
    return {key: (h, n) for key, (h, n) in tally.items()}


def print_series(tally: dict[str, tuple[int, int]], title: str) -> None:
    patients = {k: v for k, v in tally.items() if k.startswith("patient:")}
    whole = sum(h == n for h, n in patients.values())
    print(f"\n**{title}**: the first series returned is another series of the query's patient for "
          f"{tally['all'][0]} of {tally['all'][1]} series queries ({tally['all'][0] / tally['all'][1]:.1%}); "
          f"every series right for {whole} of {len(patients)} patients; at least half right for "
          f"{sum(2 * h >= n for h, n in patients.values())}.\n")
    print("| dataset | series queries | first is same patient |")
    print("|---|---|---|")
    for key in sorted(k for k in tally if k != "all" and not k.startswith("patient:")):
        h, n = tally[key]
        print(f"| {key} | {n} | {h} ({h / n:.0%}) |")


def split_index(source: IndexDirectory, target: Path, parity: int) -> dict[str, str]:
    """Write an index holding the even (0) or odd (1) slice positions of every series, patients renamed for B; return new → old ids."""
    catalog = source.catalog
    ids = catalog.ids()
    rows = catalog.slices(ids.tolist())
    vectors = dict(zip(ids.tolist(), catalog.vectors(ids, source.store.dim)))
    checksums = dict(catalog.table(["id", "file_checksum"]))
    by_series: dict[tuple[str, str], list] = defaultdict(list)
    for i in ids.tolist():
        by_series[(rows[i].patient_id, rows[i].series_id)].append(rows[i])
    rename = (lambda p: p) if parity == 0 else (lambda p: "subject-" + hashlib.sha256(p.encode()).hexdigest()[:8])
    names: dict[str, str] = {}
    with IndexDirectory.open(target, read_manifest(source.path), writable=True) as out:
        for (patient, series_id), members in by_series.items():
            members.sort(key=lambda r: r.slice_index)
            kept = members[parity::2] if len(members) > 1 else (members if parity == 0 else [])
            if not kept:
                continue
            names[rename(patient)] = patient
            record = SeriesRecord(f"{series_id}@{parity}", rename(patient), kept[0].study_id, series_id, kept[0].modality, kept[0].path, f"split{parity}")
            slices = [SliceRecord(record.key, r.slice_index, r.path, checksums[r.id], r.alpha, vectors[r.id]) for r in kept]
            new_ids = out.catalog.commit_batch([record], slices, [record.key], "split", "split")
            out.store.add(new_ids, np.stack([s.vector for s in slices]))
        out.save()
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index of the whole archive")
    parser.add_argument("--false-rate", type=float, default=0.001)
    args = parser.parse_args()
    with IndexDirectory.open(args.index) as directory:
        config = directory.manifest.checkpoint_config
        print(f"checkpoint {directory.manifest.checkpoint_sha256[:12]} ({config.get('backbone')}, {config.get('size')}²), "
              f"{len(directory.store)} slices")
        held_out = torch.load(directory.manifest.checkpoint_path, weights_only=True)["config"].get("validation_patients") or []
        validation = set(held_out) & directory.catalog.patients()  # empty when the checkpoint names them by keyed digests
        print_series(series_queries(directory, None), "All patients with several series")
        if validation:
            print_series(series_queries(directory, validation), f"Validation patients only ({len(validation)} not trained on)")

        within = link([directory], ["archive"], false_rate=args.false_rate)
        blind = link([directory], ["archive"], false_rate=args.false_rate, ignore_ids=True)
        looser = {rate: link([directory], ["archive"], false_rate=rate)["calibration"] for rate in (0.01, 0.05)}
    cal, grade = within["calibration"], blind["grading"]
    print(f"\n**Within the archive** (`retrieval link --index idx`): threshold {cal['threshold']:.4f} calibrated for a false-match rate "
          f"≤ {args.false_rate} on {cal['negatives']} different-patient series pairs (same modality): false-match rate "
          f"{cal['false_match_rate']:.4f}, recall {cal['recall']:.3f} on {cal['positives']} same-patient pairs. "
          f"{len(within['duplicates'])} duplicate file groups: "
          + "; ".join(" = ".join(Path(f["path"]).name for f in d["files"]) for d in within["duplicates"])
          + f". {len(within['pairs'])} pairs of different patients linked: "
          + ", ".join(f"{p['a']['patient_id']} ~ {p['b']['patient_id']} ({p['distance']:.4f})" for p in within["pairs"][:10])
          + ". Looser thresholds: " + "; ".join(f"false-match rate ≤ {rate}: threshold {c['threshold']:.4f}, recall {c['recall']:.3f}"
                                                 for rate, c in looser.items()) + ".")
    print(f"\n**Ids ignored** (`--ignore-ids`): {grade['pairs_found']} series pairs linked, {grade['true_pairs']} of one patient and "
          f"{grade['false_pairs']} of different patients; recall {grade['recall']:.3f} of the same-patient pairs, false-match rate "
          f"{grade['false_match_rate']:.4f}; {grade['patients_regrouped']} of {grade['patients_with_several_series']} patients with several "
          f"series regrouped whole, {grade['groups_mixing_patients']} groups mixing patients.")

    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp, IndexDirectory.open(args.index) as directory:
        split_index(directory, Path(tmp) / "a", 0)
        names_b = split_index(directory, Path(tmp) / "b", 1)
        with IndexDirectory.open(Path(tmp) / "a") as a, IndexDirectory.open(Path(tmp) / "b") as b:
            across = link([a, b], ["A", "B"], false_rate=args.false_rate)
            both = a.catalog.patients() & set(names_b.values())
    found = {(p["a"]["patient_id"], names_b[p["b"]["patient_id"]]) for p in across["pairs"]}
    true = {pair for pair in found if pair[0] == pair[1]}
    cal = across["calibration"]
    print(f"\n**Two indexes, different slices, new ids** (even slices in A, odd slices in B under new ids; threshold {cal['threshold']:.4f} "
          f"calibrated within them, false-match rate {cal['false_match_rate']:.4f}): {len(true)} of {len(both)} subjects present in both "
          f"paired (recall {len(true) / len(both):.3f}); {len(found) - len(true)} false pairs among {len(found)} reported.")


if __name__ == "__main__":
    main()
