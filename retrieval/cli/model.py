"""`retrieval train`: fit the distortion-aware metric on an archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import JsonOpt, ManifestOpt, ModalityOpt, PatientRegexOpt, fail, identity_options, require

def train(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to train on.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: last.pt (resume), best.pt, metrics.csv.")],
    backbone: Annotated[str, typer.Option(help="resnet18, resnet34 or resnet50.")] = "resnet18",
    size: Annotated[int, typer.Option(help="Network input side S (slices are resized to S×S).")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 100,
    batch_patients: Annotated[int, typer.Option(min=2, help="Distinct patients per step (5 views each).")] = 16,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for validation.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    pretrained: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet weights to start the encoder from.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder to cache the resized slices in between runs.")] = None,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the distortion-aware metric (seeded; rerun the same command to resume)."""
    import json

    from training.loop import TrainConfig
    from training.run import fit

    require(archive)
    identity = identity_options(manifest, patient_regex, modality)
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_patients=batch_patients,
                         lr=lr, seed=seed, val_fraction=val_fraction, device=device, pretrained=str(pretrained) if pretrained else None)
    try:
        summary = fit(archive, identity, out, config, cache, quiet=json_out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if json_out else f"done: {summary['epochs']} epochs, best checkpoint {out / 'best.pt'}; last epoch {summary['last']}")

