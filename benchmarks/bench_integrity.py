"""What the index's self-check costs on open: the bounded FAISS read and the content digest, against plain faiss.read_index.

Every open reads vectors.faiss with its lengths bounded by the file's size (VectorStore.load) and hashes the store's
content to compare it with the digest manifest.json recorded at the last save (indexer/integrity.py). This times the
three in the same run on exact stores of random unit vectors (128-d), median of --repeats, and prints a markdown table.

    python benchmarks/bench_integrity.py --sizes 100000,1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexer.store import VectorStore


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n: int, repeats: int, folder: Path) -> str:
    """One table row: plain read, bounded load, digest and their ratios for an exact store of n vectors."""
    vectors = np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = VectorStore.empty(128)
    store.add(np.arange(n), vectors)
    path = folder / f"vectors-{n}.faiss"
    store.save(path)
    del store, vectors
    plain = median_seconds(lambda: faiss.read_index(str(path)), repeats)
    bounded = median_seconds(lambda: VectorStore.load(path, 128), repeats)
    loaded = VectorStore.load(path, 128)
    digest = median_seconds(loaded.digest, repeats)
    size = path.stat().st_size / 2**20
    return f"| {n:,} | {size:,.0f} | {plain:.3f} | {bounded:.3f} | {digest:.3f} | {bounded / plain:.2f} | {(bounded + digest) / plain:.2f} |"


def main() -> None:
    """Parse the sizes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated store sizes (vectors)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    print("| vectors | MiB | faiss.read_index s | bounded load s | digest s | load / read | (load + digest) / read |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for n in (int(s) for s in args.sizes.split(",")):
            print(measure(n, args.repeats, Path(scratch)), flush=True)


if __name__ == "__main__":
    main()
