"""Distortion throughput (slices/s per modality) next to the model's training-step throughput, same run.

Run: python benchmarks/bench_distortions.py [--sizes 128 256] [--batch 32] [--repeats 3] [--threads 1]
Slices are pydicom's CT_small and MR_small test images resized to the working grid; α ~ U(0.05, 1)
with one seed per slice, as in training. A training step is forward + backward + AdamW step of
DisentangledSiamese(resnet18) on a batch of the same size, bf16 autocast and channels_last. A training
step of the loop distorts 3 of its 5 views, so distortion adds (3/5) · train_rate / distort_rate of a
step's time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import timeit
from collections.abc import Callable

import numpy as np
import torch
from pydicom.data import get_testdata_file

from retrieval.distortions import distort_batch
from retrieval.io import read_path
from retrieval.model import DisentangledSiamese
from retrieval.preprocess import resize_square

DISTORTED_SHARE = 3 / 5  # views per training triplet that are distorted


def best_of(repeats: int, call: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls, in seconds."""
    return min(timeit.repeat(call, number=1, repeat=repeats))


def batch_of(modality: str, size: int, batch: int) -> torch.Tensor:
    """(batch, size, size) copies of pydicom's small CT or MR slice in modality units, flipped and rolled."""
    item = read_path(get_testdata_file(f"{modality}_small.dcm"))[0]
    image = torch.from_numpy(resize_square(item.pixels, size, item.spacing))
    return torch.stack([torch.roll(image.flip(1) if i % 2 else image, 3 * i, dims=0) for i in range(batch)])


def distortion_rate(modality: str, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """(first call in s, including cached geometry; slices/s of the best later call)."""
    images = batch_of(modality, size, batch)
    alphas = torch.from_numpy(np.random.default_rng(0).uniform(0.05, 1.0, batch).astype(np.float32))
    seeds = list(range(batch))
    start = time.perf_counter()
    distort_batch(images, alphas, modality, seeds)
    first = time.perf_counter() - start
    return first, batch / best_of(repeats, lambda: distort_batch(images, alphas, modality, seeds))


def training_rate(size: int, batch: int, repeats: int) -> float:
    """Images/s of forward + backward + optimiser step (resnet18, bf16 autocast, channels_last)."""
    torch.manual_seed(0)
    model = DisentangledSiamese(backbone="resnet18").to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_anat, z_noise, a_hat = model.forward_once(x)
        loss = (z_anat[1:] * z_anat[:-1]).sum() + z_noise.pow(2).mean() + a_hat.mean()
        loss.backward()
        optimiser.step()

    step()
    return batch / best_of(repeats, step)


def main() -> None:
    """Print the machine, then one row per working-grid size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, best of {args.repeats}")
    print("| grid | CT slices/s | MR slices/s | CT first call s | MR first call s | training step img/s | CT / train | MR / train | distortion share of a step (CT, MR) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        ct_first, ct_rate = distortion_rate("CT", size, args.batch, args.repeats)
        mr_first, mr_rate = distortion_rate("MR", size, args.batch, args.repeats)
        train = training_rate(size, args.batch, args.repeats)
        share = [DISTORTED_SHARE * train / rate for rate in (ct_rate, mr_rate)]
        print(f"| {size}² | {ct_rate:.0f} | {mr_rate:.0f} | {ct_first:.2f} | {mr_first:.2f} | {train:.1f} | "
              f"{ct_rate / train:.1f}× | {mr_rate / train:.1f}× | {share[0]:.0%}, {share[1]:.0%} |")


if __name__ == "__main__":
    main()
