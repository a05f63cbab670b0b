"""Indexing throughput against the model's forward-only throughput, and search latency, recall, memory at 100k–1M slices.

    python benchmarks/bench_index.py ARCHIVE [--checkpoint PATH] [--batch-size 32] [--workers 1]
           [--sizes 100000 300000 1000000] [--views 6] [--queries 200] [--threads 1] [--build-threads 2]
           [--embeddings FILE.npz] [--skip-indexing] [--skip-search] [--ef-sweep]

Part 1 indexes ARCHIVE (files on disk → index on disk: reading, hashing, preprocessing, embedding,
catalog transactions, FAISS save) into a temporary folder, then times the same model's forward pass
alone on preprocessed batches of the same size with the same thread count: the ratio is the
pipeline's efficiency (target ≥ 0.9). Without --checkpoint (and without the shipped one) an
untrained ResNet18 at --size is used: throughput does not depend on the weights.
Part 2 embeds every archive slice under --views seeded augmentations (geometry + distortion, see
`archive_embeddings`) with the checkpoint, synthesises up to the largest size on their manifold
(`synthesise`), and for each size builds exact, IVF-PQ (shortlist re-scored with exact vectors, as
`retrieval search` does with the catalog's) and HNSW (efSearch tuned to --target recall as `retrieval
index` does); it times single-query searches (after warm-up; also with half the ids filtered out, what
--max-alpha does) with queries that are held-out views of archive slices, not stored vectors, each
searched as `retrieval search` does (under its layout's 8 flips/turns when the checkpoint has one, the best view
of each id counting), and reports recall@10 against exact search, build time and bytes per vector, then extrapolates to 10M and
100M from the measured sizes. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.checkpoint import DEFAULT_CHECKPOINT


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
    from retrieval.checkpoint import save_checkpoint
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
    bench_ray(archive, identity, checkpoint, batch_size, workers, report.slices_per_s, forward)


def bench_ray(archive: Path, identity, checkpoint: Path, batch_size: int, workers: int, single: float, forward: float) -> None:  # type: ignore[no-untyped-def]
    """The same indexing run through a local 2-worker Ray cluster (--ray), against the single-process run and forward-only."""
    try:
        import ray
    except ImportError:
        print("Ray is not installed: the --ray row is skipped\n")
        return
    from indexer.pipeline import build_index

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-index-ray-") as scratch:
        report = build_index([archive], Path(scratch) / "index", identity, checkpoint=checkpoint, batch_size=batch_size, ray="auto", show_progress=False)
    ray.shutdown()
    print("| indexing path | slices/s | vs single process | vs forward-only |")
    print("|---|---|---|---|")
    print(f"| single process ({workers} reader worker(s), model in the main process) | {single:.1f} | 1 | {single / forward:.2f} |")
    print(f"| Ray Data, local cluster of 2 CPUs (2 model actors; start-up {started:.1f} s not counted) | {report.slices_per_s:.1f} | "
          f"{report.slices_per_s / single:.2f} | {report.slices_per_s / forward:.2f} |\n")


def archive_embeddings(archive: Path, checkpoint: Path | None, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy embeddings of every non-empty archive slice under `views` seeded augmentations, and each one's patient.

    A view is what another acquisition of the same anatomy looks like: a small rotation, anisotropic zoom and
    shift (training/augment.py, without its flips and quarter turns), then the project's distortion at
    α ~ U(0, 0.5) (low-dose CT, MR k-space corruption), embedded by the checkpoint as `retrieval index` does.
    """
    import dataclasses

    import torch

    from retrieval.distortions.core import distort_mixed
    from retrieval.io import Identity
    from retrieval.metric import DistortionAwareMetric
    from retrieval.preprocess import network_input
    from retrieval.slices import load_slices
    from training.augment import AugmentConfig, geometric, sample_params

    metric = DistortionAwareMetric.load(checkpoint, "cpu")
    slices = load_slices([archive], Identity(manifest=archive / "manifest.csv"), metric.size)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(views):
        params = sample_params(rng, len(slices), AugmentConfig(intensity=False))
        params = dataclasses.replace(params, d4=np.zeros(len(slices), dtype=np.int64))
        warped = geometric(torch.from_numpy(slices.images), params)
        distorted = distort_mixed(warped, slices.modalities, rng.uniform(0.0, 0.5, len(slices)), rng.integers(0, 2**31, len(slices)))
        out.append(metric.embed_tensor(network_input(distorted, slices.modalities)).anatomy)
    return np.concatenate(out), np.tile(slices.patients, views)


def synthesise(real: np.ndarray, n: int, seed: int = 0, neighbours: int = 10, noise: float = 0.5) -> np.ndarray:
    """n unit vectors on the real embeddings' manifold: the real ones, then SMOTE-style interpolations between neighbours.

    Each synthetic vector is a + λ(b − a) + ε, renormalised: a a real embedding, b one of its `neighbours` nearest
    real embeddings, λ ~ U(0, 1), ε isotropic Gaussian whose norm is about `noise` × a's distance to its nearest
    real neighbour. It stays where real embeddings are (along a patient's slices and views, and between similar
    patients) instead of filling the sphere like isotropic blobs.
    """
    import faiss

    rng = np.random.default_rng(seed)
    real = np.ascontiguousarray(real, dtype=np.float32)
    scores, table = faiss.knn(real, real, neighbours + 1, metric=faiss.METRIC_INNER_PRODUCT)
    local = np.sqrt(np.maximum(2.0 - 2.0 * scores[:, 1], 1e-12)).astype(np.float32)  # distance to the nearest other real vector
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    out[: min(n, len(real))] = real[:n]
    for start in range(len(real), n, 100_000):
        stop = min(n, start + 100_000)
        a = rng.integers(0, len(real), stop - start)
        b = table[a, rng.integers(1, neighbours + 1, stop - start)]
        lam = rng.random((stop - start, 1), dtype=np.float32)
        eps = rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32) * (noise * local[a] / np.sqrt(real.shape[1]))[:, None]
        block = real[a] + lam * (real[b] - real[a]) + eps
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def stored_bytes(store) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the store as saved (vectors, codes, graph, ids): about what it holds in memory."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
        store.save(Path(scratch) / "store.faiss")
        return (Path(scratch) / "store.faiss").stat().st_size


def bench_search(vectors: np.ndarray, queries: np.ndarray, sizes: list[int], target: float, threads: int, build_threads: int,
                 layout: int, ef_sweep: bool = False) -> list[dict]:
    """For each size: build exact, IVF-PQ (re-scored) and HNSW (efSearch tuned to the target); time, memory, recall on
    held-out queries searched under their views (`layout`: the vectors' trailing layout columns)."""
    import faiss

    from indexer.ann import RecallProbe, build_hnsw, overlap, tune_hnsw
    from indexer.store import VectorStore, build_ivfpq, lookup
    from retrieval.embeddings import orientations

    print("| slices | index | build s | bytes / vector | p50 ms | p99 ms | p50 ms, half filtered | recall@10 (held-out queries) | recall@10 (manifest) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        base = vectors[:n]
        ids = np.arange(1, n + 1, dtype=np.int64)
        faiss.omp_set_num_threads(build_threads)
        allowed = ids[np.random.default_rng(1).random(n) < 0.5]
        views = orientations(queries, layout)
        exact = VectorStore.empty(base.shape[1])
        exact.add(ids, base)
        truth = exact.search_views(views, 10)[1]
        exact = None
        full = lookup(ids, base)
        probe = RecallProbe(ids, base, n_queries=200)
        builders = {
            "exact": lambda: VectorStore.empty(base.shape[1]),
            "IVF-PQ": lambda: build_ivfpq(ids, base),
            "HNSW": lambda: build_hnsw(ids, base),
        }
        for name, build in builders.items():
            faiss.omp_set_num_threads(build_threads)
            start = time.perf_counter()
            store = build()
            if name == "exact":
                store.add(ids, base)
            built = time.perf_counter() - start
            setting, manifest = "", ""
            if name == "HNSW":
                tuned = tune_hnsw(store, probe, target)
                setting, manifest = f" (M {tuned['m']}, efSearch {tuned['ef_search']})", f"{tuned['recall_at_10']:.3f}"
            elif name == "IVF-PQ":
                setting, manifest = f" (nprobe {store.nprobe}, ×10 re-scored)", f"{probe.recall(store, vectors_of=full):.3f}"
            faiss.omp_set_num_threads(threads)
            _, found = store.search_views(views, 10, vectors_of=full)
            recall = overlap(found, truth)
            p50, p99 = latency_ms(lambda q: store.search_views(orientations(q, layout), 10, vectors_of=full), queries)
            filtered, _ = latency_ms(lambda q: store.search_views(orientations(q, layout), 10, allowed=allowed, vectors_of=full), queries[: len(queries) // 2])
            row = {"n": n, "index": name, "build_s": built, "bytes": stored_bytes(store) / n, "p50": p50, "p99": p99, "recall": recall}
            rows.append(row)
            print(f"| {n:,} | {name}{setting} | {built:.1f} | {row['bytes']:.0f} | {p50:.2f} | {p99:.2f} | {filtered:.2f} | {recall:.3f} | {manifest} |", flush=True)
            if name == "HNSW" and ef_sweep:
                sweep_ef(store, views, truth, queries, layout, probe)
            store = None  # free it before the next build
    return rows


def sweep_ef(store, views: np.ndarray, truth: np.ndarray, queries: np.ndarray, layout: int, probe) -> None:  # type: ignore[no-untyped-def]
    """Recall@10 of the held-out queries, p50 and the manifest probe's recall at every efSearch of the ladder (then the tuned one again)."""
    from indexer.ann import EF_LADDER, overlap
    from retrieval.embeddings import orientations

    tuned = store.ef_search
    for ef in EF_LADDER:
        store.ef_search = ef
        p50, _ = latency_ms(lambda q: store.search_views(orientations(q, layout), 10), queries)
        print(f"|   | efSearch {ef} |  |  | {p50:.2f} |  |  | {overlap(store.search_views(views, 10)[1], truth):.3f} | {probe.recall(store):.3f} |", flush=True)
    store.ef_search = tuned


def estimates(rows: list[dict], targets: tuple[int, ...] = (10_000_000, 100_000_000)) -> None:
    """Extrapolate build time (power law in n), memory (bytes per vector at the largest size) and p50 (linear in log n; exact: linear in n)."""
    print("\n| index | slices | build s (estimate) | memory GiB | p50 ms (estimate) |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(r["index"] for r in rows):
        measured = [r for r in rows if r["index"] == name]
        if len(measured) < 2:
            continue
        n = np.array([r["n"] for r in measured], dtype=float)
        build = np.array([max(r["build_s"], 1e-3) for r in measured])
        p50 = np.array([r["p50"] for r in measured])
        exponent, scale = np.polyfit(np.log(n), np.log(build), 1)
        for target in targets:
            latency = np.polyval(np.polyfit(n, p50, 1), target) if name == "exact" else np.polyval(np.polyfit(np.log(n), p50, 1), np.log(target))
            print(f"| {name} | {target:,} | {np.exp(scale) * target ** exponent:,.0f} (∝ n^{exponent:.2f}) | {measured[-1]['bytes'] * target / 2**30:,.1f} "
                  f"| {latency:.2f} |")


def main() -> None:
    """Parse options and run both parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, nargs="?", default=os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=128, help="input side of the untrained stand-in model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="reader processes (default: as `retrieval index`)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--views", type=int, default=6, help="augmented views of each archive slice embedded for part 2")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target", type=float, help="probe recall@10 HNSW's efSearch is tuned to (default: as `retrieval index` tunes)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while searching (1: the one-core figures)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count(), help="FAISS threads while building and for exact ground truth")
    parser.add_argument("--embeddings", type=Path, help="an .npz keeping part 2's archive embeddings between runs (made when missing)")
    parser.add_argument("--skip-indexing", action="store_true")
    parser.add_argument("--ef-sweep", action="store_true", help="also print HNSW recall, p50 and probe recall at every efSearch of the ladder")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    if args.archive is None:
        parser.error("give ARCHIVE or set RETRIEVAL_SAMPLE_ARCHIVE")
    archive = Path(args.archive).resolve()
    snapshot = tempfile.TemporaryDirectory(prefix="bench-index-")  # a copy: the whole run measures one checkpoint
    if args.checkpoint is not None or DEFAULT_CHECKPOINT.is_file():
        args.checkpoint = Path(shutil.copy(args.checkpoint or DEFAULT_CHECKPOINT, Path(snapshot.name) / "checkpoint.pt"))
    print(f"# bench_index, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    if not args.skip_indexing:
        bench_indexing(archive, args.checkpoint, args.batch_size, args.workers, args.size)
    if args.skip_search:
        return
    import faiss

    start = time.perf_counter()
    if args.embeddings and args.embeddings.is_file():  # a rerun of the search part with the same checkpoint and views
        with np.load(args.embeddings) as saved:
            real, held_out = saved["real"], saved["held_out"]
    else:
        real, _ = archive_embeddings(archive, args.checkpoint, args.views, seed=0)
        held_out, _ = archive_embeddings(archive, args.checkpoint, 1, seed=1)
        if args.embeddings:
            np.savez(args.embeddings, real=real, held_out=held_out)
    queries = held_out[np.random.default_rng(2).choice(len(held_out), min(args.queries, len(held_out)), replace=False)]
    vectors = synthesise(real, max(args.sizes))
    print(f"search: {len(real):,} real embeddings ({args.views} views of each archive slice) synthesised to {len(vectors):,} "
          f"in {time.perf_counter() - start:.0f} s; {len(queries)} held-out views as queries; FAISS {faiss.__version__}, "
          f"{args.threads} thread(s) searching, {args.build_threads} building\n")
    from retrieval.checkpoint import load_checkpoint
    from retrieval.embeddings import layout_columns

    from indexer.ann import probe_target

    layout = layout_columns(load_checkpoint(args.checkpoint)[1]) if args.checkpoint else 0
    args.target = args.target or probe_target(8 if layout else 1)
    print(f"vectors: {vectors.shape[1]}-d ({layout} layout columns: each query searches {8 if layout else 1} view(s))\n")
    rows = bench_search(vectors, queries, args.sizes, args.target, args.threads, args.build_threads, layout, args.ef_sweep)
    estimates(rows)


if __name__ == "__main__":
    main()
