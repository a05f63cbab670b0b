"""Fast inference: cold one-slice `retrieval search` and embedding throughput, ONNX Runtime against torch, in one run.

    python benchmarks/bench_inference.py [ARCHIVE] [--checkpoint PATH] [--runs 5] [--threads 1] [--batch-size 32]

Part 1 indexes one series of ARCHIVE (dcm_qa_ct, 28 CT slices) with the checkpoint (default: the shipped
one, copied first), times the one-off ONNX export, then runs `retrieval search` on one slice as a fresh process,
alternating `--backend onnx` and `--backend torch`, and reports median wall and CPU seconds and peak
memory of each. Part 2 embeds real preprocessed archive slices with ONNX Runtime (fp32), the torch
model in fp32 and in bf16 autocast, and the torch path as indexing runs it (`embed_model`: bf16 only on CPUs
with bf16 units, channels_last), at the same thread count: slices/s at --batch-size, one-slice latency, and how far
the embeddings are apart, and what share of a slice's time the α estimator takes; then whether each slice's 10 nearest neighbours among the others are the same with ONNX
queries against the vectors an index holds as with queries embedded like them. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.checkpoint import DEFAULT_CHECKPOINT

SERIES = "ct/dcm_qa_ct/GE"
QUERY = "ct/dcm_qa_ct/GE/12.dcm"
SAMPLE = ["ct/dcm_qa_ct/GE", "ct/udacity_ct", "mr/myops", "mr/open_ms/patient01"]  # real slices for part 2


def timed_process(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS in MiB of one fresh process, as GNU time reports them.

    (GNU time execs the command from its own small process; a child forked from this one would count the parent's
    pages in its peak RSS.)
    """
    run = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {run.stderr[-500:]}")
    wall, user, system, rss = run.stderr.split()[-4:]
    return float(wall), float(user) + float(system), int(rss) / 1024


def cold_search(archive: Path, checkpoint: Path, runs: int) -> None:
    """Index one series, export ONNX once, then time fresh `retrieval search` processes of both backends, interleaved."""
    from indexer.pipeline import build_index
    from indexer.manifest import read_manifest
    from retrieval.io import Identity
    from retrieval.runtime import ensure_model

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        index = Path(scratch) / "idx"
        report = build_index([archive / SERIES], index, Identity(manifest=archive / "manifest.csv"), checkpoint=checkpoint, show_progress=False)
        manifest = read_manifest(index)
        for made in index.glob("model-*.onnx"):  # indexing exports it on CPUs without bf16 units: time it again here
            made.unlink()
        start = time.perf_counter()
        ensure_model(index, manifest.checkpoint_path, manifest.checkpoint_sha256)
        export_s = time.perf_counter() - start
        command = [sys.executable, "-m", "retrieval.cli", "search", str(archive / QUERY), "--index", str(index), "-k", "5", "--backend"]
        imports = {name: [timed_process([sys.executable, "-c", f"import {name}"]) for _ in range(runs)] for name in ("onnxruntime", "torch, torchvision")}
        samples: dict[str, list[tuple[float, float, float]]] = {"onnx": [], "torch": []}
        for _ in range(runs):
            for backend in samples:
                samples[backend].append(timed_process([*command, backend]))
    print(f"index of {report.slices_added} slices; ONNX export of the checkpoint (once, torch loaded): {export_s:.1f} s\n")
    print("| process | median wall s | min wall s | median CPU s | peak MiB |")
    print("|---|---|---|---|---|")
    rows = [(f"`import {name}`", values) for name, values in imports.items()]
    rows += [(f"`retrieval search` one slice, --backend {backend}", values) for backend, values in samples.items()]
    for name, values in rows:
        walls, cpus, rss = zip(*values)
        print(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} | {max(rss):.0f} |")
    ratio = statistics.median(v[0] for v in samples["torch"]) / statistics.median(v[0] for v in samples["onnx"])
    print(f"\ncold search: ONNX {ratio:.1f}× faster than torch (median wall, same run)\n")


def real_slices(archive: Path, size: int, limit: int = 96) -> np.ndarray:
    """Up to `limit` non-empty preprocessed slices spread over CT and MR series of the archive."""
    from retrieval.io import Identity, Skipped, iter_slices
    from retrieval.preprocess import is_empty, prepare

    per_root, out = limit // len(SAMPLE), []
    for root in SAMPLE:
        taken = 0
        for item in iter_slices([archive / root], Identity(manifest=archive / "manifest.csv")):
            if taken < per_root and not isinstance(item, Skipped) and item.modality in ("CT", "MR") and not is_empty(item.pixels, item.modality):
                out.append(prepare(item.pixels, item.modality, size, item.spacing))
                taken += 1
    return np.stack(out)


def rate(embed, batch: np.ndarray, repeats: int = 4) -> float:  # type: ignore[no-untyped-def]
    """Slices/s of `embed` on a batch after one warm-up call."""
    embed(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        embed(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def latency_ms(embed, one: np.ndarray, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    """Median ms to embed one slice (after a warm-up call)."""
    embed(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embed(one)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def throughput(archive: Path, checkpoint: Path, threads: int, batch_size: int) -> None:
    """Embedding slices/s, one-slice latency and agreement of ONNX Runtime, torch fp32, torch bf16 and the indexing path at the same threads."""
    import faiss
    import torch

    from retrieval.checkpoint import file_sha256
    from retrieval.metric import DistortionAwareMetric, bf16_is_fast, embed_model
    from retrieval.runtime import OnnxMetric, ensure_model

    torch.set_num_threads(threads)
    metric = DistortionAwareMetric.load(checkpoint, "cpu")
    slices = real_slices(archive, metric.size)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        onnx = OnnxMetric(ensure_model(scratch, checkpoint, file_sha256(checkpoint)), threads=threads, throughput=True)
    model, device = metric.model, torch.device("cpu")

    def torch_embed(x: np.ndarray, bf16: bool) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.embed(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))[0].float().numpy()

    indexing = f"indexing path ({'bf16' if bf16_is_fast(device) else 'fp32: this CPU has no bf16 units'})"
    paths = {"ONNX Runtime fp32": lambda x: onnx.embed_tensor(x).anatomy, "torch fp32": lambda x: torch_embed(x, False),
             "torch bf16 autocast": lambda x: torch_embed(x, True),
             indexing: lambda x: embed_model(model, torch.from_numpy(x), device).anatomy}
    batch = np.concatenate([slices] * (batch_size // len(slices) + 1))[:batch_size]
    vectors = {name: np.concatenate([embed(slices[i : i + batch_size]) for i in range(0, len(slices), batch_size)]) for name, embed in paths.items()}
    print(f"{metric.config.get('backbone')} at {metric.size}², invariance {metric.config.get('invariance', 'none')}, {threads} thread(s), "
          f"batch {batch_size}, {len(slices)} real slices\n")
    print("| path | slices/s | one slice ms | max abs Δ anatomy vs ONNX |")
    print("|---|---|---|---|")
    for name, embed in paths.items():
        delta = np.abs(vectors[name] - vectors["ONNX Runtime fp32"]).max()
        print(f"| {name} | {rate(embed, batch):.1f} | {latency_ms(embed, slices[:1]):.1f} | {delta:.1e} |", flush=True)
    if metric.estimator is not None:  # part of the ONNX and indexing paths above; measured alone on the same batch
        alone, onnx_rate = rate(metric.estimator.estimate, batch), rate(paths["ONNX Runtime fp32"], batch)
        print(f"\nα estimator alone (statistics + trees): {alone:.0f} slices/s, {onnx_rate / alone:.1%} of the ONNX path's time per slice")
    stored = vectors[indexing]
    same = []
    for name in ("ONNX Runtime fp32", indexing):
        _, ids = faiss.knn(vectors[name], stored, 11, metric=faiss.METRIC_INNER_PRODUCT)
        same.append([set(row[row != i][:10]) for i, row in enumerate(ids)])
    agree = np.mean([a == b for a, b in zip(*same)])
    print(f"\nqueries whose 10 nearest stored slices (indexing-path vectors, self excluded) are the same set with ONNX and indexing-path queries: {agree:.0%}\n")


def main() -> None:
    """Parse options and run both parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, nargs="?", default=os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per backend (and per import)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes in part 2")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.archive is None:
        parser.error("give ARCHIVE or set RETRIEVAL_SAMPLE_ARCHIVE")
    archive = Path(args.archive).resolve()
    print(f"# bench_inference, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:  # a copy: the run measures one checkpoint throughout
        checkpoint = Path(shutil.copy(args.checkpoint or DEFAULT_CHECKPOINT, Path(scratch) / "checkpoint.pt"))
        cold_search(archive, checkpoint, args.runs)
        throughput(archive, checkpoint, args.threads, args.batch_size)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
