"""Indexing throughput against the model's forward-only throughput, and warm search latency at 10k–1M slices.

    python benchmarks/bench_index.py ARCHIVE [--checkpoint PATH] [--batch-size 32] [--workers 1]
           [--sizes 10000 100000 1000000] [--queries 200] [--threads 1]

Part 1 indexes ARCHIVE (files on disk → index on disk: reading, hashing, preprocessing, embedding,
catalog transactions, FAISS save) into a temporary folder, then times the same model's forward pass
alone on preprocessed batches of the same size with the same thread count: the ratio is the
pipeline's efficiency (target ≥ 0.9). Without --checkpoint (and without the shipped one) an
untrained ResNet18 at --size is used: throughput does not depend on the weights.
Part 2 times single-query searches (after warm-up) on synthetic clustered unit vectors, exact
and IVF-PQ (its shortlist re-scored with exact vectors, as `retrieval search` does with the
catalog's; here they are in memory), with recall@10 against exact search; and the same with half
the ids filtered out (what --max-alpha does). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered_unit_vectors(n: int, dim: int = 128, clusters: int = 2000, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` centres (slices of one patient cluster together), made in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, clusters, stop - start)] + spread * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latency_ms(search, queries: np.ndarray, warmup: int = 10) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """p50 and p99 of one-query-at-a-time search latency, after warm-up queries."""
    for q in queries[:warmup]:
        search(q[None])
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def forward_only(metric, batch_size: int, n: int, threads: int) -> float:  # type: ignore[no-untyped-def]
    """Slices/s of the model alone on one preprocessed batch, repeated to about n slices (after a warm-up)."""
    import torch

    torch.set_num_threads(threads)
    batch = torch.rand(batch_size, 3, metric.size, metric.size)
    metric.embed_tensor(batch)
    n_batches = max(3, n // batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        metric.embed_tensor(batch)
    return n_batches * batch_size / (time.perf_counter() - start)


def catalog_lookup_ms(index_dir: Path, n: int = 100, repeats: int = 50) -> float:
    """p50 ms to read n random vectors from the catalog: the cost IVF-PQ re-scoring adds to a search."""
    from indexer.directory import IndexDirectory

    with IndexDirectory.open(index_dir) as directory:
        ids = directory.catalog.ids()
        rng = np.random.default_rng(0)
        times = []
        for _ in range(repeats):
            wanted = np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))
            start = time.perf_counter()
            directory.catalog.vectors(wanted, directory.store.dim)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50))


def bench_indexing(archive: Path, checkpoint: Path | None, batch_size: int, workers: int | None, size: int) -> None:
    """Index the archive, then time forward-only at the same batch size and threads; print both and the ratio."""
    import torch

    from indexer.pipeline import build_index, default_workers, model_threads
    from retrieval.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
    from retrieval.io import Identity
    from retrieval.metric import DistortionAwareMetric
    from retrieval.model import DisentangledSiamese

    workers = default_workers() if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="bench-index-") as scratch:
        if checkpoint is None and DEFAULT_CHECKPOINT.is_file():
            checkpoint = DEFAULT_CHECKPOINT
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = save_checkpoint(Path(scratch) / "untrained.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": size})
        manifest = archive / "manifest.csv"
        identity = Identity(manifest=manifest if manifest.is_file() else None)
        metric = DistortionAwareMetric.load(checkpoint, "cpu")
        threads = model_threads(workers)
        forward_before = forward_only(metric, batch_size, 512, threads)
        report = build_index([archive], Path(scratch) / "index", identity, checkpoint=checkpoint, batch_size=batch_size, workers=workers, show_progress=False)
        on_disk = sum(p.stat().st_size for p in (Path(scratch) / "index").iterdir())
        forward_after = forward_only(metric, batch_size, report.slices_added, threads)
        lookup_ms = catalog_lookup_ms(Path(scratch) / "index")
        forward = (forward_before + forward_after) / 2
    config = metric.config
    print(f"checkpoint {config.get('backbone')} at {metric.size}² ({'shipped' if checkpoint == DEFAULT_CHECKPOINT else checkpoint.name}), "
          f"batch {batch_size}, {workers} reader worker(s), model on {threads} thread(s)\n")
    inside = report.slices_added / report.seconds_embedding
    print(f"forward-only measured before ({forward_before:.1f} slices/s) and after ({forward_after:.1f}) the run; the ratio uses their mean\n")
    print("| archive slices | index s | index slices/s | forward-only slices/s | ratio | model busy | forward inside the run, slices/s | index on disk |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {report.slices_added} | {report.seconds:.1f} | {report.slices_per_s:.1f} | {forward:.1f} | {report.slices_per_s / forward:.2f} "
          f"| {report.seconds_embedding / report.seconds:.0%} | {inside:.1f} | {on_disk / 2**20:.1f} MiB |\n")
    print(f"reading 100 vectors from this catalog (what IVF-PQ re-scoring adds to a search): {lookup_ms:.1f} ms p50\n")


def bench_search(sizes: list[int], n_queries: int) -> None:
    """Warm single-query latency (exact, IVF-PQ re-scored as search does, each also with half the ids filtered out) and recall@10."""
    from indexer.store import VectorStore, build_ivfpq, lookup, recall_at_k

    print("| slices | index | build s | p50 ms | p99 ms | p50 ms, half filtered | recall@10 | recall@10, PQ codes only |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        vectors = clustered_unit_vectors(n)
        ids = np.arange(1, n + 1, dtype=np.int64)
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(n, n_queries, replace=False)] + 0.05 * rng.standard_normal((n_queries, 128)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        allowed = ids[rng.random(n) < 0.5]
        exact_vectors = lookup(ids, vectors)
        start = time.perf_counter()
        exact = VectorStore.empty(128)
        exact.add(ids, vectors)
        rows = [("exact", exact, time.perf_counter() - start, "1 (reference)", "")]
        start = time.perf_counter()
        ivfpq = build_ivfpq(ids, vectors)
        build = time.perf_counter() - start
        recalls = [recall_at_k(ivfpq, ids, vectors, n_queries=min(n_queries, 200), refine=r) for r in (True, False)]
        rows.append((f"IVF-PQ (nprobe {ivfpq.nprobe}, ×10 re-scored)", ivfpq, build, f"{recalls[0]:.3f}", f"{recalls[1]:.3f}"))
        for name, store, seconds, recall, codes in rows:
            p50, p99 = latency_ms(lambda q: store.search(q, 10, vectors_of=exact_vectors), queries)
            filtered, _ = latency_ms(lambda q: store.search(q, 10, allowed=allowed, vectors_of=exact_vectors), queries[: n_queries // 2])
            print(f"| {n:,} | {name} | {seconds:.1f} | {p50:.2f} | {p99:.2f} | {filtered:.2f} | {recall} | {codes} |", flush=True)
        del vectors, exact, ivfpq, rows


def main() -> None:
    """Parse options and run both parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, nargs="?", default=os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=128, help="input side of the untrained stand-in model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="reader processes (default: as `retrieval index`)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads for the search part (1 is fastest on shared cores)")
    args = parser.parse_args()
    print(f"# bench_index, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    if args.archive:
        bench_indexing(Path(args.archive), args.checkpoint, args.batch_size, args.workers, args.size)
    else:
        print("no archive given (argument or RETRIEVAL_SAMPLE_ARCHIVE): indexing part skipped\n", file=sys.stderr)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"search: FAISS {faiss.__version__} on {args.threads} thread(s), {args.queries} single-vector queries per size\n")
    bench_search(args.sizes, args.queries)


if __name__ == "__main__":
    main()
