"""Export a checkpoint's inference embedding to ONNX (needs torch; `retrieval.runtime` runs the result without it).

The exported module's forward is `DisentangledSiamese.embed`, so the graph pools over the 8 flips and
rotations when the checkpoint's config says invariance "d4", exactly as the torch path does. It uses
torch's TorchScript exporter (the dynamo exporter needs onnxscript, which is not a dependency); that
exporter lacks `aten::rot90`, so a symbolic for it (transpose + reversed slices) is registered here.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.onnx import symbolic_helper

from retrieval.checkpoint import file_sha256, load_checkpoint
from retrieval.runtime import EXPORT_VERSION, OUTPUTS

OPSET = 17
INT64_MIN = -(2**63)


def _flip(g, x, axis: int):  # type: ignore[no-untyped-def]
    """ONNX Slice that reverses one axis."""
    constant = lambda v: g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))  # noqa: E731
    return g.op("Slice", x, constant(-1), constant(INT64_MIN), constant(axis), constant(-1))


@symbolic_helper.parse_args("v", "i", "is")
def _rot90(g, x, k: int, dims: list[int]):  # type: ignore[no-untyped-def]
    """aten::rot90 as torch computes it: k=1 flips dims[1] then swaps, k=2 flips both, k=3 flips dims[0] then swaps."""
    rank = symbolic_helper._get_tensor_rank(x)
    first, second = (d % rank for d in dims)
    perm = list(range(rank))
    perm[first], perm[second] = second, first
    k %= 4
    if k == 0:
        return x
    if k == 2:
        return _flip(g, _flip(g, x, first), second)
    return g.op("Transpose", _flip(g, x, second if k == 1 else first), perm_i=perm)


class InferenceEmbedding(nn.Module):
    """The module exported: forward is the model's inference `embed` → (anatomy, noise, alpha)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.embed(pixels)


def export_onnx(checkpoint: str | Path, out: str | Path, checkpoint_sha256: str) -> Path:
    """Write the checkpoint's inference embedding as ONNX to `out` atomically, with its config and SHA-256 as metadata."""
    import onnx

    checkpoint, out = Path(checkpoint), Path(out)
    if file_sha256(checkpoint) != checkpoint_sha256:
        raise ValueError(f"{checkpoint}: its SHA-256 is not {checkpoint_sha256[:12]}; it changed since the index was built")
    model, config = load_checkpoint(checkpoint)
    size = int(config.get("size", 256))
    torch.onnx.register_custom_op_symbolic("aten::rot90", _rot90, OPSET)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(InferenceEmbedding(model).eval(), (torch.zeros(2, 3, size, size),), str(tmp), input_names=["pixels"],
                              output_names=list(OUTPUTS), dynamic_axes={name: {0: "batch"} for name in ("pixels", *OUTPUTS)},
                              opset_version=OPSET, dynamo=False)
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {"checkpoint_sha256": checkpoint_sha256, "config": json.dumps(config),
                                            "export_version": str(EXPORT_VERSION), "source": checkpoint.name})
        onnx.save(graph, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
