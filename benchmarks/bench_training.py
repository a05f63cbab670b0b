"""Training throughput of the current recipe against the old one, in the same run on the same slices.

Run: python benchmarks/bench_training.py [--archive ../shared/data] [--size 64] [--steps 8] [--threads 2]
A step is what `retrieval train` does per step: sample triplets, build the five views (augmentation,
distortion, preprocessing), forward, the five losses, backward and AdamW. The old recipe is the shipped
model's before issue 9 (12 patients a step, no augmentation, no dataset balance, one view at inference);
the new one is the current TrainConfig default. Images/s counts network inputs per second of wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from retrieval.io import Identity
from retrieval.metric import autocast
from retrieval.model import DisentangledSiamese
from retrieval.slices import cached_slices
from training.loop import TrainConfig, loss_terms, make_optimizer, views
from training.sampler import TripletSampler

RECIPES = {
    "old (12 patients, no augmentation)": dict(batch_patients=12, augment="none", balance=0.0, instance=0.0, invariance="none"),
    "new (defaults)": {},
}


def images_per_second(config: TrainConfig, data, steps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(images/s of whole steps, share of a step spent building views) over `steps` steps after one warm-up step."""
    model = DisentangledSiamese(config.backbone, invariance=config.invariance).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    sampler = TripletSampler(data.patients, config.batch_patients, config.seed, data.datasets, config.balance, config.augment_config(), config.instance)
    device = torch.device("cpu")
    spent_views, images, started = 0.0, 0, 0.0
    for step in range(steps + 1):
        if step == 1:
            spent_views, images, started = 0.0, 0, time.perf_counter()
        tick = time.perf_counter()
        x, labels, alphas = views(data, sampler.batch(step))
        spent_views += time.perf_counter() - tick
        with autocast(device):
            outputs = model.forward_once(x.contiguous(memory_format=torch.channels_last))
        terms = loss_terms(outputs, labels, alphas, config)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        images += len(x)
    elapsed = time.perf_counter() - started
    return images / elapsed, spent_views / elapsed


def main() -> None:
    """Print images/s of both recipes and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--size", type=int, default=TrainConfig().size)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = cached_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), args.size, args.cache)
    print(f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, {args.size}², {args.steps} steps")
    rates = {}
    for name, overrides in RECIPES.items():
        config = TrainConfig(size=args.size, **overrides)
        rates[name], view_share = images_per_second(config, data, args.steps)
        print(f"{name}: {rates[name]:.1f} images/s ({config.batch_patients * 5} images a step, views {view_share:.0%} of the time)")
    old, new = rates.values()
    print(f"new / old: {new / old:.2f}")


if __name__ == "__main__":
    main()
