"""`retrieval demo`: index the real images PyPI packages ship (pydicom, pydicom-data, nibabel) and search them.

Runs with nothing but the installed packages and the shipped checkpoint: it indexes into a
temporary folder (or --index DIR), queries with pydicom's CT_small.dcm as it is and distorted
at α = 0.4 (above TAU), and prints what `retrieval search` would print for each.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import entry_points
from pathlib import Path

QUERY = "CT_small.dcm"
QUERY_ALPHA = 0.4
# nibabel's test volumes carry no patient id: name the patient after the file
NIBABEL_PATIENT = r"/nibabel/tests/data/([A-Za-z0-9_-]+)"


def demo_sources() -> list[Path]:
    """Folders of real test images installed with pydicom, pydicom-data (when installed) and nibabel."""
    import nibabel
    import pydicom.data

    folders = [Path(pydicom.data.__file__).parent / "test_files"]
    for entry in entry_points(group="pydicom.data.external_sources"):  # pydicom-data registers itself here
        folders.append(Path(entry.load()().data_path))
    folders.append(Path(nibabel.__file__).parent / "tests" / "data")
    return [folder for folder in folders if folder.is_dir()]


def run_demo(index_dir: str | Path | None = None, checkpoint: str | Path | None = None, device: str = "auto", k: int = 3) -> None:
    """Index the packaged images, then search with a clean and a distorted query; print both rankings."""
    from indexer.directory import IndexDirectory
    from indexer.console import print_report
    from indexer.pipeline import build_index
    from retrieval.distortions import distort
    from retrieval.io import Identity, read_path
    from retrieval.preprocess import intensity, to_grid
    from retrieval.search import SearchResult, print_result, rank, search_path

    sources = demo_sources()
    identity = Identity(patient_regex=NIBABEL_PATIENT, modality="MR")
    with tempfile.TemporaryDirectory(prefix="retrieval-demo-") as scratch:
        target = Path(index_dir) if index_dir is not None else Path(scratch) / "index"
        print(f"indexing {', '.join(str(s) for s in sources)} into {target}")
        print_report(build_index(sources, target, identity, checkpoint=checkpoint, device=device), shown=3)
        query_path = sources[0] / QUERY
        with IndexDirectory.open(target) as directory:
            metric = directory.metric(checkpoint, device)
            print()
            print_result(search_path(directory, metric, query_path, identity, k=k))
            query = read_path(query_path, identity)[0]
            grid, factor = to_grid(query.pixels, metric.size, query.spacing)  # distort on the working grid, as training and bench do
            noisy = distort(grid, QUERY_ALPHA, query.modality, seed=0)
            embedded = metric.embed([intensity(noisy, query.modality)], factors=[factor])
            print()
            print_result(SearchResult(f"{query_path} distorted at α = {QUERY_ALPHA}", 1, float(embedded.alpha[0]), rank(directory, embedded.anatomy, k)))
        if index_dir is None:
            print("\n(the index was temporary; `retrieval demo --index DIR` keeps it for `retrieval search QUERY --index DIR`)")
