"""ONNX Runtime embedding: the query path without importing torch (about 0.2 s to import instead of 4–8 s).

The checkpoint's inference embedding (`DisentangledSiamese.embed`, D4 pooling included) is exported
once per checkpoint by `retrieval.onnx_export` (that step needs torch) into the index directory as
`model-<checkpoint sha256 prefix>-onnx<EXPORT_VERSION>.onnx`; `retrieval index` writes it, and a search
that finds it missing exports it once. It runs in fp32 and matches the torch model in fp32 to ~1e-6;
the torch path's bf16 autocast differs from both by ~1e-2 (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retrieval.alpha import AlphaEstimator
from retrieval.embeddings import Embeddings, layout_columns
from retrieval.preprocess import DEFAULT_SIZE, prepare

EXPORT_VERSION = 2  # bump when the exported graph changes, so cached exports are redone
BACKENDS = ("auto", "onnx", "torch")
OUTPUTS = ("anatomy", "noise", "alpha")


def model_file(directory: str | Path, checkpoint_sha256: str) -> Path:
    """Where DIR keeps the ONNX export of the checkpoint with this SHA-256."""
    return Path(directory) / f"model-{checkpoint_sha256[:16]}-onnx{EXPORT_VERSION}.onnx"


def ensure_model(directory: str | Path, checkpoint: str | Path, checkpoint_sha256: str) -> Path:
    """DIR's ONNX export of the checkpoint, exported now (imports torch, once per checkpoint) when missing."""
    path = model_file(directory, checkpoint_sha256)
    if not path.is_file():
        from retrieval.onnx_export import export_onnx

        export_onnx(checkpoint, path, checkpoint_sha256)
        for old in Path(directory).glob("model-*.onnx"):  # exports of an older EXPORT_VERSION
            if old != path:
                old.unlink(missing_ok=True)
    return path


def resolve_backend(backend: str, device: str) -> str:
    """'auto' → ONNX Runtime on CPU, torch when CUDA is asked for; 'onnx' and 'torch' as given."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnx" and device == "cuda":
        raise ValueError("the onnx backend runs on CPU; use --backend torch with --device cuda")
    if backend == "auto":
        return "torch" if device == "cuda" else "onnx"
    return backend


class OnnxMetric:
    """Embeds preprocessed 3×S×S slices with ONNX Runtime; the `embed`/`preprocess` interface of DistortionAwareMetric."""

    def __init__(self, path: str | Path, threads: int | None = None, throughput: bool = False,
                 checkpoint_hash: str | None = None, config: dict[str, Any] | None = None) -> None:
        """Start loading the model in the background (ONNX Runtime releases the GIL, so a search reads its query meanwhile).

        `throughput` applies ONNX Runtime's layout optimisations (0.2 s more to load, faster on batches of 32).
        Given the checkpoint's hash and config (an index manifest has them), nothing waits for the model until the
        first embedding, which then checks that the file was exported from that checkpoint.
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        options.graph_optimization_level = level.ORT_ENABLE_ALL if throughput else level.ORT_ENABLE_BASIC  # basic still fuses conv+BN
        options.intra_op_num_threads = threads or 0  # 0: one per physical core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path)
        loader = ThreadPoolExecutor(1, thread_name_prefix="onnx-load")
        self._loading = loader.submit(ort.InferenceSession, str(path), options, providers=["CPUExecutionProvider"])
        loader.shutdown(wait=False)
        if checkpoint_hash is None or config is None:
            meta = self._loading.result().get_modelmeta().custom_metadata_map
            checkpoint_hash, config = checkpoint_hash or meta["checkpoint_sha256"], config or json.loads(meta["config"])
        self.checkpoint_hash: str = checkpoint_hash
        self.config: dict[str, Any] = config
        self.estimator = AlphaEstimator.from_config(config)

    @cached_property
    def session(self) -> Any:
        """The loaded ONNX Runtime session, refused when the file was exported from another checkpoint."""
        session = self._loading.result()
        made_from = session.get_modelmeta().custom_metadata_map.get("checkpoint_sha256", "")
        if made_from != self.checkpoint_hash:
            raise ValueError(f"{self.path}: exported from checkpoint {made_from[:12]}, not {self.checkpoint_hash[:12]}; delete it to export again")
        return session

    @property
    def size(self) -> int:
        """Side of the square network input this checkpoint was trained on."""
        return int(self.config.get("size", DEFAULT_SIZE))

    def preprocess(self, pixels: np.ndarray, modality: str, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """One raw 2D slice in modality units → 3×S×S float32 network input."""
        return prepare(pixels, modality, self.size, spacing)

    def embed_tensor(self, batch: Any, batch_size: int = 64, factors: np.ndarray | None = None) -> Embeddings:
        """Embed a preprocessed (B, 3, S, S) array (or CPU tensor), `batch_size` images at a time; `factors`: the resize
        factors it was made with (`retrieval.preprocess.resize_factor`; None: unknown), which the α estimator reads."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"expected preprocessed (B, 3, {self.size}, {self.size}) slices, got shape {batch.shape}")
        parts = []
        for start in range(0, len(batch), batch_size):
            chunk = np.ascontiguousarray(batch[start : start + batch_size])
            anatomy, noise, alpha = self.session.run(list(OUTPUTS), {"pixels": chunk})
            alpha = alpha if self.estimator is None else self.estimator.estimate(chunk, None if factors is None else factors[start : start + batch_size])
            parts.append(Embeddings(anatomy, noise, alpha, layout=layout_columns(self.config)))
        return Embeddings.concat(parts)

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32, factors: Sequence[float] | None = None) -> Embeddings:
        """Embed preprocessed 3×S×S slices (from `preprocess`) in batches, with the resize `factors` they were made with
        (None: unknown)."""
        if not len(images):
            raise ValueError("no images to embed")
        if factors is not None and len(factors) != len(images):
            raise ValueError(f"{len(factors)} resize factors for {len(images)} images")
        return self.embed_tensor(np.stack([np.asarray(image, dtype=np.float32) for image in images]), batch_size,
                                 None if factors is None else np.asarray(factors, dtype=np.float64))
