"""`retrieval index --ray`: reading, preprocessing and embedding as a Ray Data pipeline; the driver commits as on one machine.

Series are the unit of work. The driver plans the run as `retrieval index` does (headers, checksums,
what changed), then maps a Ray Dataset of the series to do through a pool of model actors: each
actor loads the checkpoint once (one GPU per actor where the cluster has GPUs, else one CPU), and
reads, preprocesses and embeds whole series with the pipeline's own per-series function. The
driver receives each series' embedded chunks and commits them through the same loop as the
single-process path (indexer/pipeline.py: batch transactions, a series complete with its last
slice, FAISS a cache of the catalog), so the catalog rows and vectors are the same (embeddings do
not depend on batch composition), reruns are incremental, and a killed worker or driver loses and
duplicates nothing: Ray restarts a dead actor and reruns its series, whose result reaches the driver
once, and a killed driver's rerun redoes the series it had not committed.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INSTALL = 'pip install -e ".[ray]"'


def connect(address: str) -> None:
    """Join the Ray cluster at ADDRESS ('auto': the one on this machine, else a new local one), once per process."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False, configure_logging=False)


class SeriesEmbedder:
    """A Ray Data actor: the checkpoint loaded once, then whole series read, preprocessed and embedded."""

    def __init__(self, checkpoint: str, checkpoint_sha256: str, device: str, size: int, chunk: int) -> None:
        import torch

        from retrieval.metric import DistortionAwareMetric

        torch.set_num_threads(1)  # one core per CPU actor: torch's pool would wait on the other actors' cores
        self.metric = DistortionAwareMetric.load(checkpoint, device)
        if self.metric.checkpoint_hash != checkpoint_sha256:
            raise ValueError(f"{checkpoint}: changed on this node (SHA-256 {self.metric.checkpoint_hash[:12]}, not {checkpoint_sha256[:12]})")
        self.size, self.chunk = size, chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pickled Jobs in, pickled embedded Chunks out (pixels replaced by [anatomy | α] rows), in series order."""
        import torch

        from indexer.chunks import series_chunks

        out = []
        for blob in batch["job"]:
            for chunk in series_chunks(pickle.loads(blob), self.size, self.chunk):
                values = np.zeros((0, 0), np.float32)
                if chunk.indices:
                    embedded = self.metric.embed_tensor(chunk.pixels, factors=np.array(chunk.factors))
                    values = np.hstack([embedded.anatomy, embedded.alpha[:, None]]).astype(np.float32)
                out.append(pickle.dumps(dataclasses.replace(chunk, pixels=torch.from_numpy(values), embedded=True)))
        return {"chunk": np.array(out, dtype=object)}


@dataclass(frozen=True)
class RaySource:
    """Where and with what the series are embedded: a Ray cluster address and the checkpoint every actor loads."""

    address: str
    checkpoint: Path
    checkpoint_sha256: str
    device: str = "auto"
    actors: int | None = None  # default: one per GPU, else one per CPU of the cluster

    def chunks(self, jobs: Sequence[Any], size: int, batch_size: int) -> Iterator[Any]:
        """Embedded chunks of every job's series, as actors finish them (a series' chunks in order)."""
        if not jobs:
            return
        connect(self.address)
        import ray
        from ray import cloudpickle

        ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI has its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset execution on stderr
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if self.device != "cpu" else 0
        actors = min(len(jobs), self.actors or gpus or max(1, int(resources.get("CPU", 1))))
        dataset = ray.data.from_items([{"job": cloudpickle.dumps(job)} for job in jobs], override_num_blocks=len(jobs))
        embedded = dataset.map_batches(
            SeriesEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, num_gpus=1 if gpus else 0,
            fn_constructor_kwargs={"checkpoint": str(self.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
                                   "device": "cuda" if gpus else "cpu", "size": size, "chunk": batch_size},
        )  # Ray Data restarts a dead actor and retries its series until they are done (its default for actor pools)
        for row in embedded.iter_rows():
            yield pickle.loads(row["chunk"])
