"""`retrieval train`: fit the distortion-aware metric on an archive, or run leave-one-dataset-out folds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.cli.common import CacheOpt, CheckpointOpt, GroupRegexOpt, JsonOpt, ManifestOpt, ModalityOpt, PatientRegexOpt, fail, file_path, folder_path, identity_options, require


def train(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files to train on.")],
    out: Annotated[Path, typer.Option("--out", callback=folder_path, help="Run directory: last.pt (resume), final.pt, metrics.csv (with --folds: one per fold).")],
    backbone: Annotated[str, typer.Option(help="resnet18, resnet34 or resnet50.")] = "resnet18",
    size: Annotated[int, typer.Option(min=8, max=1024, help="Network input side S (slices are resized to S×S).")] = 64,
    epochs: Annotated[int, typer.Option(min=1, max=10_000)] = 10,
    steps_per_epoch: Annotated[int, typer.Option(min=1, max=1_000_000)] = 60,
    batch_patients: Annotated[int, typer.Option(min=2, max=4096, help="Distinct patients per step (5 views each).")] = 16,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for validation (0: train on every patient).")] = 0.2,
    hold_out_dataset: Annotated[Optional[list[str]], typer.Option("--hold-out-dataset", help="Validate on this whole dataset, which never trains (repeatable; replaces --val-fraction).")] = None,
    folds: Annotated[bool, typer.Option("--folds", help="Leave-one-dataset-out: one run per dataset into OUT/<dataset>/, and OUT/folds.json.")] = False,
    augment: Annotated[str, typer.Option(help="Training augmentation: all, geometric (D4, rotation, zoom, shift), d4 (flips and 90° turns only), intensity or none.")] = "d4",
    balance: Annotated[float, typer.Option(min=0.0, max=1.0, help="Dataset balance of patient draws: 0 uniform over patients, 1 equal per dataset.")] = 0.0,
    instance: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of anchors that are the positive slice itself under another augmentation.")] = 0.0,
    neighbour: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of positives drawn within two slices of the anchor in its series.")] = 0.0,
    structure_weight: Annotated[float, typer.Option("--structure-weight", min=0.0, max=100.0, help="Weight of the structural distillation term (0: off).")] = 0.0,
    invariance: Annotated[str, typer.Option(help="d4: embeddings pooled over flips and 90° turns (orientation-free search); none: one view.")] = "d4",
    pooling: Annotated[str, typer.Option(help="Encoder map to the heads: avg (global average) or grid (2×2, keeps coarse layout).")] = "avg",
    layout: Annotated[float, typer.Option(min=0.0, max=0.95, help="Weight of the slice's 16×16 layout in the anatomy cosine (0: the learned code alone).")] = 0.5,
    layout_map: Annotated[str, typer.Option(help="What the layout is: silhouette (where the slice has signal) or intensity (its 16×16 thumbnail).")] = "silhouette",
    fused_infonce: Annotated[bool, typer.Option("--fused-infonce", help="InfoNCE on the code and layout similarity at the layout weight, as search scores (tried; off).")] = False,
    memory: Annotated[int, typer.Option(min=0, max=1_000_000, help="Past anatomy codes kept as extra InfoNCE negatives and positives (cross-batch memory; 0: off).")] = 0,
    ssl_epochs: Annotated[int, typer.Option("--ssl-epochs", min=0, help="First epochs label-free (instance positives, full augmentation) before the patient-contrastive ones.")] = 0,
    validate_every: Annotated[int, typer.Option(min=1, help="Epochs between validations (the last epoch always validates).")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    pretrained: Annotated[Optional[Path], typer.Option(callback=file_path, help="Local torchvision ResNet weights to start the encoder from.")] = None,
    cache: CacheOpt = None,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    group_regex: GroupRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the distortion-aware metric (seeded; rerun the same command to resume)."""
    import json

    from training.loop import TrainConfig
    from training.run import fit, fit_folds

    require(archive)
    if folds and hold_out_dataset:
        fail("--folds chooses the held-out datasets itself; drop --hold-out-dataset")
    identity = identity_options(manifest, patient_regex, modality, group_regex)
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_patients=batch_patients,
                         lr=lr, seed=seed, val_fraction=val_fraction, device=device, pretrained=str(pretrained) if pretrained else None,
                         augment=augment, balance=balance, instance=instance, neighbour=neighbour, invariance=invariance, pooling=pooling, layout=layout, layout_map=layout_map, fused_infonce=fused_infonce, held_out_datasets=tuple(hold_out_dataset or ()),
                         memory=memory, ssl_epochs=ssl_epochs, validate_every=validate_every)
    config.weights["structure"] = structure_weight
    try:
        config.check()
    except ValueError as exc:  # its messages start with the field name, which is the option's
        fail(f"--{exc}")
    try:
        summary = (fit_folds if folds else fit)(archive, identity, out, config, cache, quiet=json_out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    elif folds:
        for row in summary["folds"]:
            typer.echo(f"{row['fold']}: {row['held_out_patients']} held-out patients, mAP(0) {row.get('map_0', float('nan')):.3f}, "
                       f"mAP(0.8) {row.get('map_0.8', float('nan')):.3f}, Spearman(â, α) {row.get('spearman_alpha', float('nan')):.3f}")
        typer.echo(f"wrote {out / 'folds.json'}")
    else:
        typer.echo(f"done: {summary['epochs']} epochs, checkpoint {out / 'final.pt'}; last epoch {summary['last']}")


def calibrate(
    archive: Annotated[list[Path], typer.Argument(help="Archive folders or files whose slices the estimator is fitted on.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint with the estimator (never the input file).")],
    checkpoint: CheckpointOpt = None,
    every_patient: Annotated[bool, typer.Option("--every-patient", help="Fit on every slice given, not only the checkpoint's training patients (e.g. a user's own clean archive).")] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    cache: CacheOpt = None,
    manifest: ManifestOpt = None,
    patient_regex: PatientRegexOpt = None,
    group_regex: GroupRegexOpt = None,
    modality: ModalityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fit the α estimator (â from distortion statistics, docs/training.md) on clean slices and seeded distortions of them."""
    import json

    import numpy as np
    from rich.console import Console

    from retrieval.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, trained_on
    from retrieval.io import Skipped
    from retrieval.slices import cached_slices
    from training.alpha_fit import calibrate_checkpoint

    require(archive)
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if out.resolve() == checkpoint.resolve():
        fail(f"--out {out}: give a new file; the input checkpoint is kept as it is")
    identity = identity_options(manifest, patient_regex, modality, group_regex)
    console = Console(stderr=True, quiet=json_out)  # status lines on a terminal, nothing beside --json
    skipped: list[Skipped] = []
    try:
        model, config = load_checkpoint(checkpoint)
        size = int(config.get("size", 256))
        with console.status(f"reading slices at {size}²…"):
            data = cached_slices(archive, identity, size, cache, skipped.append)
        if not every_patient:
            data = data.subset(np.isin(data.patients, sorted(trained_on(config, set(data.patients.tolist())))))
            if not len(data):
                fail(f"{checkpoint}: none of its training patients is in the archive given; pass --every-patient to fit on these slices")
        with console.status(f"fitting the α estimator on {len(data)} slices, clean and distorted…"):
            summary = calibrate_checkpoint(model, config, data, out, seed)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    summary["skipped"] = [{"path": str(item.path), "reason": item.reason} for item in skipped]
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"wrote {out}: α estimator fitted on {summary['slices']} slices of {summary['patients']} patients")
    for item in skipped[:5]:
        typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    if len(skipped) > 5:
        typer.echo(f"… and {len(skipped) - 5} more skipped files (--json lists all)", err=True)
