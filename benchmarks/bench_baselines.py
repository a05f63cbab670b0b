"""Time each retrieval baseline: ms per 1,000 query–gallery comparisons at 128² and 256², against the libraries.

Run: python benchmarks/bench_baselines.py [--gallery 128] [--queries 4] [--repeats 3] [--threads N]
Gallery statistics are prepared once (timed separately, per image); the comparison time is the best of
`repeats` runs of score(queries, gallery). Reference libraries are timed pair by pair on a few pairs in the
same run, so the speed-up column is a ratio measured under the same load.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import piq
import torch
from skimage import data, metrics, transform

from eval.baselines import BaselineUnavailable, create

METHODS = ("mse", "ncc", "ssim", "mi", "grad", "cwssim", "dino")
REFERENCES: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    "mse": ("skimage", metrics.mean_squared_error),
    "ssim": (
        "skimage",
        lambda x, y: metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0),
    ),
    "mi": ("skimage", lambda x, y: metrics.normalized_mutual_information(x, y, bins=100)),
    "grad": ("piq", lambda x, y: float(piq.gmsd(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]))),
}


def images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, size, size) in [0, 1]: scikit-image's greyscale photographs with seeded noise and shifts."""
    sources = [data.camera(), data.moon(), data.coins(), data.grass(), data.brick(), data.gravel(), data.page(), data.text()]
    base = [transform.resize(s, (size, size), anti_aliasing=True) for s in sources]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = np.roll(base[i % len(base)], rng.integers(-8, 9), axis=1) + rng.normal(0, 0.03, (size, size))
        out.append(np.clip(image, 0, 1))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def best_of(repeats: int, call: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_ms(name: str, queries: torch.Tensor, gallery: torch.Tensor, pairs: int = 8) -> float:
    """ms per 1,000 comparisons of the reference library, pair by pair."""
    reference = REFERENCES[name][1]
    q, g = queries.numpy(), gallery.numpy()
    start = time.perf_counter()
    for i in range(pairs):
        reference(q[i % len(q)], g[i % len(g)])
    return (time.perf_counter() - start) / pairs * 1e6


def main() -> None:
    """Print one markdown table row per method and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=128)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"# {args.queries} queries × {args.gallery} gallery images, best of {args.repeats}\n")
    print("| method | size | prepare ms/image | ms per 1,000 comparisons | reference | reference ms per 1,000 | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size in (128, 256):
        gallery_images, query_images = images(args.gallery, size), images(args.queries, size, seed=1)
        for name in METHODS:
            try:
                baseline = create(name)
            except BaselineUnavailable as exc:
                print(f"| {name} | {size}² | {exc} | | | | |")
                continue
            prepare_s = best_of(1, lambda: baseline.prepare_gallery(gallery_images))
            gallery = baseline.prepare_gallery(gallery_images)
            score_s = best_of(args.repeats, lambda: baseline.score(query_images, gallery))
            ours = score_s / (args.queries * args.gallery) * 1e6
            cells = f"| {name} | {size}² | {prepare_s / args.gallery * 1e3:.2f} | {ours:.0f} |"
            if name in REFERENCES:
                theirs = reference_ms(name, query_images, gallery_images)
                cells += f" {REFERENCES[name][0]} | {theirs:.0f} | {theirs / ours:.0f}× |"
            else:
                cells += " | | |"
            print(cells, flush=True)


if __name__ == "__main__":
    main()
