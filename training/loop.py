"""The seeded, resumable training loop: views → five losses → AdamW; validation and checkpoints per epoch."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import spearmanr

from retrieval import TAU
from retrieval.alpha import AlphaEstimator
from retrieval.checkpoint import new_patient_key, save_checkpoint
from retrieval.distortions import distort_mixed
from retrieval.embeddings import best_cosine
from retrieval.metric import autocast, embed_model, resolve_device
from retrieval.model import DisentangledSiamese, anatomical_distance
from retrieval.preprocess import network_input
from retrieval.checkpoint import patient_record
from retrieval.slices import SliceSet
from training import losses
from training.alpha_fit import fit_alpha_estimator, with_estimator
from training.augment import AugmentConfig, AugmentParams, ct_intensity, geometric, mr_intensity
from training.sampler import TripletBatch, TripletSampler

VAL_QUERIES_PER_PATIENT = 8


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint."""

    backbone: str = "resnet18"
    size: int = 64
    epochs: int = 10
    steps_per_epoch: int = 60
    batch_patients: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    temperature: float = losses.TEMPERATURE
    k: float = losses.K
    d_max: float = losses.D_MAX
    weights: dict[str, float] = field(default_factory=lambda: losses.LossWeights().as_dict())
    device: str = "auto"
    pretrained: str | None = None
    augment: str = "d4"  # none | d4 | geometric | intensity | all (training/augment.py); d4 won on the folds
    balance: float = 0.0  # dataset balance of the patient draws (training/sampler.py); 0.5 did not help on the folds
    instance: float = 0.0  # share of anchors that are the positive slice under another augmentation; 0.5 did not help
    neighbour: float = 0.0  # share of positives drawn within two slices of the anchor in its series (training/sampler.py)
    invariance: str = "d4"  # inference pooling over flips and 90° turns (retrieval/model.py)
    pooling: str = "avg"  # encoder map → heads: global average or a 2×2 grid (retrieval/model.py)
    layout: float = 0.5  # weight of the slice's 16×16 layout in the anatomy cosine (retrieval/model.py; chosen on the folds)
    layout_map: str = "silhouette"  # what the layout is: the slice's silhouette or its intensity thumbnail (retrieval/model.py; chosen on the folds)
    fused_infonce: bool = False  # InfoNCE on the fused similarity (code and layout at that weight): the code learns the rest
    held_out_datasets: tuple[str, ...] = ()  # whole datasets that validate and never train (leave-one-dataset-out)
    memory: int = 0  # past anatomy codes kept as extra InfoNCE negatives and positives (cross-batch memory; 0: off)
    ssl_epochs: int = 0  # first epochs label-free: instance positives under the full augmentation (SimCLR-style stage)
    validate_every: int = 1  # epochs between validations (the last epoch always validates)

    def check(self) -> None:
        """Refuse an unknown recipe choice in one line, before any data is read (messages start with the field name)."""
        from retrieval.model import INVARIANCES, LAYOUT_MAPS, POOLINGS

        for name, value, choices in (("augment", self.augment, AUGMENT_CHOICES), ("invariance", self.invariance, INVARIANCES),
                                     ("pooling", self.pooling, tuple(POOLINGS)), ("layout_map", self.layout_map, tuple(LAYOUT_MAPS))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if not 0.0 <= self.layout < 1.0:
            raise ValueError(f"layout must be in [0, 1), got {self.layout}")
        if not 0 <= self.ssl_epochs < self.epochs:
            raise ValueError(f"ssl_epochs must be in [0, epochs), got {self.ssl_epochs}")
        if 0 < self.memory < 5 * self.batch_patients:
            raise ValueError(f"memory must be 0 or hold at least one step's {5 * self.batch_patients} codes, got {self.memory}")
        if self.memory and self.fused_infonce:
            raise ValueError("memory holds codes without their layouts, so it cannot score the fused similarity: drop fused_infonce")

    def augment_config(self) -> AugmentConfig | None:
        """The augmentation families this run uses."""
        self.check()
        if self.augment == "none":
            return None
        if self.augment == "d4":  # only the flips and 90° turns that the inference pooling averages over
            return AugmentConfig(intensity=False, max_rotation_deg=0.0, zoom=(1.0, 1.0), aspect=0.0, max_shift=0.0)
        return AugmentConfig(geometric=self.augment in ("all", "geometric"), intensity=self.augment in ("all", "intensity"))

    def checkpoint_config(self, data_summary: dict[str, Any], training: list[str], held_out: list[str], key: str) -> dict[str, Any]:
        """The JSON config saved next to the weights: patients only as keyed digests, never their ids."""
        return {
            **asdict(self), "tau": TAU, "anatomy_dim": 128, "noise_dim": 64,
            "preprocessing": {"size": self.size, "order": "resize_square then intensity"},
            "training_data": data_summary, "patients": patient_record(key, training, held_out),
        }


AUGMENT_CHOICES = ("none", "d4", "geometric", "intensity", "all")


def augmented_input(raw: torch.Tensor, modalities: np.ndarray, params: AugmentParams) -> torch.Tensor:
    """Network input of (B, S, S) slices in modality units with each view's intensity transform (CT in HU, MR after normalising)."""
    is_ct = torch.as_tensor(modalities == "CT")
    if is_ct.any():
        raw = torch.where(is_ct.view(-1, 1, 1), ct_intensity(raw, params), raw)
    x = network_input(raw, modalities)
    is_mr = torch.as_tensor(modalities != "CT")
    if is_mr.any():
        x = torch.where(is_mr.view(-1, 1, 1, 1), mr_intensity(x, params), x)
    return x


def views(data: SliceSet, batch: TripletBatch, by_slice: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Five views per triplet (anchor, positive clean, positive@α1, positive@α2, negative@α3), their integer labels and α.

    A label is the view's patient (its index among the sampler's patients) or, `by_slice` (the label-free stage), its
    slice (number of slices + row), so that labels of the two stages never meet in a cross-batch memory."""
    images = torch.from_numpy(data.images)
    zeros = np.zeros(len(batch.anchor))
    anchor = geometric(images[batch.anchor], batch.augment_anchor)
    positive = geometric(images[batch.positive], batch.augment_positive)  # one warp for its clean and distorted views
    negative = geometric(images[batch.negative], batch.augment_negative)
    parts = [
        (batch.anchor, anchor, zeros, None, batch.augment_anchor),
        (batch.positive, positive, zeros, None, batch.augment_positive),
        (batch.positive, positive, batch.alpha_1, batch.seeds[:, 0], batch.augment_positive),
        (batch.positive, positive, batch.alpha_2, batch.seeds[:, 1], batch.augment_positive),
        (batch.negative, negative, batch.alpha_negative, batch.seeds[:, 2], batch.augment_negative),
    ]
    tensors, alphas = [], []
    for index, raw, alpha, seeds, params in parts:
        if seeds is not None:
            raw = distort_mixed(raw, data.modalities[index], alpha, seeds)
        tensors.append(augmented_input(raw, data.modalities[index], params))
        alphas.append(alpha)
    index_all = np.concatenate([p[0] for p in parts])
    labels = len(data) + index_all if by_slice else np.concatenate([batch.patient] * 4 + [batch.negative_patient])
    return torch.cat(tensors), labels, np.concatenate(alphas).astype(np.float32)


def loss_terms(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: np.ndarray, alphas: np.ndarray, config: TrainConfig,
    inputs: torch.Tensor | None = None, memory: losses.PatientMemory | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms (in fp32) and their weighted total for the model outputs on one batch of views (`labels` from
    `views`; `inputs` feed the structure term; with a `memory`, InfoNCE also counts its past codes)."""
    z_anat, z_noise, a_hat = (t.float() for t in outputs)
    labels_t = torch.as_tensor(labels, device=z_anat.device)
    alpha_t = torch.as_tensor(alphas, device=z_anat.device)
    b = z_anat.shape[0] // 5
    clean, d1, d2 = z_anat[b : 2 * b], z_anat[2 * b : 3 * b], z_anat[3 * b : 4 * b]
    a1, a2 = alpha_t[2 * b : 3 * b], alpha_t[3 * b : 4 * b]
    distil, fused = config.weights.get("structure", 0.0) > 0.0, config.fused_infonce and config.layout > 0.0
    # the layout similarity (best over flips/turns), once: the structure term's teacher and the fused InfoNCE's prior
    layouts = losses.structure_similarity(inputs.to(z_anat.device), config.layout_map) if (distil or fused) and inputs is not None else None
    terms = {
        "infonce": memory(z_anat, labels_t) if memory is not None else losses.info_nce(z_anat, labels_t, config.temperature, layouts if fused else None, config.layout),
        "distortion": 0.5 * (losses.distortion_regression(clean, d1, a1, config.d_max, config.k) + losses.distortion_regression(clean, d2, a2, config.d_max, config.k)),
        "ordering": losses.ordering(anatomical_distance(clean, d1), anatomical_distance(clean, d2), a1, a2),
        "alpha": losses.alpha_regression(a_hat, alpha_t),
        "orthogonality": losses.orthogonality(z_anat, z_noise),
    }
    if distil and layouts is not None:
        terms["structure"] = losses.structure_distillation(z_anat, layouts, labels_t, config.temperature)
    terms["total"] = sum(config.weights[name] * value for name, value in terms.items())
    return terms


def validation_queries(patients: np.ndarray, seed: int, per_patient: int = VAL_QUERIES_PER_PATIENT) -> np.ndarray:
    """At most `per_patient` query slices per patient (seeded), so large volumes do not dominate the mean."""
    rng = np.random.default_rng([seed, 1])
    chosen = [rng.permutation(np.flatnonzero(patients == p))[:per_patient] for p in np.unique(patients)]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class ValidationSet:
    """Fixed validation inputs: clean gallery, query indices into it, and the distorted query views."""

    gallery: torch.Tensor  # (N, 3, S, S) clean network input
    queries: np.ndarray  # (Q,) gallery rows used as queries
    relevant: np.ndarray  # (Q, N) same patient, own slice excluded
    at_08: torch.Tensor  # (Q, 3, S, S) queries at α = 0.8
    spread: torch.Tensor  # (Q, 3, S, S) queries at the α of `spread_alpha`
    spread_alpha: np.ndarray  # (Q,) seeded uniform α for the Spearman of â
    estimated: tuple[np.ndarray, np.ndarray] | None = None  # the α estimator's â of `gallery` and `spread` (fixed inputs, fixed trees)


def validation_set(data: SliceSet, seed: int, estimator: AlphaEstimator | None = None) -> ValidationSet:
    """Build the validation inputs once per run (deterministic in seed), with the `estimator`'s â of them when the
    checkpoint reports one: the trees are fitted before training and never change, so every epoch reads the same â."""
    images = torch.from_numpy(data.images)
    queries = validation_queries(data.patients, seed)
    relevant = data.patients[queries][:, None] == data.patients[None, :]
    relevant[np.arange(len(queries)), queries] = False
    rng = np.random.default_rng([seed, 2])
    seeds = rng.integers(0, 2**31 - 1, size=len(queries))
    spread = rng.uniform(0.0, 1.0, size=len(queries)).astype(np.float32)
    modalities = data.modalities[queries]

    def distorted_queries(levels: np.ndarray) -> torch.Tensor:
        return network_input(distort_mixed(images[queries], modalities, levels, seeds), modalities)

    gallery, spread_views = network_input(images, data.modalities), distorted_queries(spread)
    factors = (None, None) if data.factors is None else (data.factors, data.factors[queries])
    estimated = None if estimator is None else (estimator.estimate(gallery.numpy(), factors[0]), estimator.estimate(spread_views.numpy(), factors[1]))
    return ValidationSet(gallery, queries, relevant, distorted_queries(np.full(len(queries), 0.8, np.float32)), spread_views, spread, estimated)


def query_distances(queries: np.ndarray, gallery: np.ndarray, own: np.ndarray, layout: int = 0) -> np.ndarray:
    """Anatomical distances (Q, N) of unit embeddings (the best over a query's layout flips/turns, as search does);
    each query's own clean slice is ranked last (as if removed)."""
    distances = 0.5 * (1.0 - best_cosine(queries, gallery, layout))
    distances[np.arange(len(own)), own] = 10.0
    return distances


def query_precision(vset: ValidationSet, queries: np.ndarray, gallery: np.ndarray, layout: int = 0) -> np.ndarray:
    """Per-query anatomy AP of unit query vectors against the unit gallery of `vset` (same patient = relevant; the
    best over the query's layout flips/turns, each query's own slice left out)."""
    from eval.metrics import average_precision

    return average_precision(query_distances(queries, gallery, vset.queries, layout), vset.relevant)


def validate(model: DisentangledSiamese, vset: ValidationSet, datasets: np.ndarray, device: torch.device,
             turned: bool = True) -> dict[str, float]:
    """Held-out figures: anatomy mAP (same patient = relevant) at α = 0 and 0.8, overall and per dataset; mAP of
    flipped and 90°-turned clean queries (unless `turned` is False: a third of the embedding work); Spearman of â
    against α and the median â of the clean slices, for the â the checkpoint reports (the α estimator's, when `vset`
    holds it) and for the network's α head."""
    model.eval()
    gallery = embed_model(model, vset.gallery, device)
    at_08 = embed_model(model, vset.at_08, device)
    spread = embed_model(model, vset.spread, device)
    true_alpha = np.concatenate([np.zeros(len(vset.queries)), vset.spread_alpha])
    head = np.concatenate([gallery.alpha[vset.queries], spread.alpha])
    clean_alpha, spread_alpha = vset.estimated or (gallery.alpha, spread.alpha)
    predicted = np.concatenate([clean_alpha[vset.queries], spread_alpha])

    def precision(queries: np.ndarray) -> np.ndarray:
        return query_precision(vset, queries, gallery.anatomy, gallery.layout)

    ap_0 = precision(gallery.anatomy[vset.queries])
    figures = {
        "map_0": float(np.nanmean(ap_0)), "map_0.8": float(np.nanmean(precision(at_08.anatomy))),
        "spearman_alpha": float(spearmanr(true_alpha, predicted).statistic),
        "alpha_clean_median": float(np.median(clean_alpha)),
        "spearman_alpha_head": float(spearmanr(true_alpha, head).statistic),
        "alpha_clean_median_head": float(np.median(gallery.alpha)),
    }
    if turned:
        clean = vset.gallery[vset.queries]
        for key, view in (("map_0_flip", clean.flip(-1)), ("map_0_rot90", torch.rot90(clean, 1, dims=(-2, -1)))):
            figures[key] = float(np.nanmean(precision(embed_model(model, view, device).anatomy)))
    query_datasets = datasets[vset.queries]
    for name in np.unique(query_datasets):
        figures[f"map_0[{name}]"] = float(np.nanmean(ap_0[query_datasets == name]))
    return figures


# options added after runs were saved, at the value that earlier runs behaved as (layout_map's default changed later)
PREDATED_OPTIONS: dict[str, Any] = {"layout_map": "intensity", "memory": 0, "ssl_epochs": 0}


def check_same_run(stored: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    """Refuse to resume a run whose configuration differs from this one, naming the options that differ. An option
    the stored run predates (PREDATED_OPTIONS) counts at the value that run behaved as."""
    stored = PREDATED_OPTIONS | stored
    differ = sorted(key for key in stored.keys() | current.keys() if stored.get(key) != current.get(key))
    if differ:
        shown = ", ".join(f"{key}: {stored.get(key)!r} there, {current.get(key)!r} here" for key in differ)
        raise ValueError(f"{out_dir}: holds a run with another configuration ({shown}); use a new --out or the same options")


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """The recipe's AdamW, fused: one kernel over every parameter instead of a loop of small ops (ResNet-18 on one
    CPU thread: 0.08 → 0.03 s a step)."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def warmup_cosine(step: int, total: int, warmup_share: float = 0.05) -> float:
    """Learning-rate factor: linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warmup = max(1, round(total * warmup_share))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    config: TrainConfig,
    train_data: SliceSet,
    val_data: SliceSet,
    out_dir: Path,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume from out_dir/last.pt) to out_dir/final.pt, validating on val_data when it has slices.

    The kept model is the last epoch's (a fixed schedule): choosing an epoch by its held-out figures would
    make those figures optimistic. metrics.csv logs every validation.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = DisentangledSiamese(config.backbone, pretrained=config.pretrained, invariance=config.invariance, pooling=config.pooling,
                                layout=config.layout, layout_map=config.layout_map)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps))
    sampler = TripletSampler(train_data.patients, config.batch_patients, config.seed, train_data.datasets, config.balance,
                             config.augment_config(), config.instance, train_data.series, config.neighbour)
    # the label-free stage: every anchor is its positive slice under another full augmentation (SimCLR-style)
    ssl_sampler = TripletSampler(train_data.patients, config.batch_patients, config.seed + 1, augment=AugmentConfig(),
                                 instance=1.0) if config.ssl_epochs else sampler
    memory = losses.PatientMemory(config.memory, config.temperature) if config.memory else None
    saved = json.loads(json.dumps(asdict(config) | {"device": None}))  # as it reads back from last.pt
    state: dict[str, Any] = {"epoch": 0, "history": [], "patient_key": new_patient_key()}
    last = out_dir / "last.pt"
    if last.is_file():
        blob = torch.load(last, map_location="cpu", weights_only=True)
        check_same_run(json.loads(blob["config"]), saved, out_dir)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        state = json.loads(blob["state"])
        if memory is not None:
            memory.restore(blob["memory"])
    estimator = fit_alpha_estimator(train_data, config.seed)
    checkpoint_config = with_estimator(config.checkpoint_config(train_data.summary(), sorted(set(train_data.patients.tolist())),
                                                                sorted(set(val_data.patients.tolist())), state["patient_key"]),
                                       estimator, len(train_data))
    log = out_dir / "metrics.csv"
    vset = validation_set(val_data, config.seed, estimator) if len(val_data) else None
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        for step in range(config.steps_per_epoch):
            global_step = epoch * config.steps_per_epoch + step
            ssl = epoch < config.ssl_epochs
            x, labels, alphas = views(train_data, (ssl_sampler if ssl else sampler).batch(global_step), by_slice=ssl)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device):
                outputs = model.forward_once(x)
            terms = loss_terms(outputs, labels, alphas, config, x, memory)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            if on_step is not None:
                on_step(global_step + 1, total_steps, {n: v.item() for n, v in terms.items()})
        row: dict[str, Any] = {"epoch": epoch + 1, **{n: v / config.steps_per_epoch for n, v in sums.items()}}
        row["seconds"] = time.perf_counter() - started
        final = epoch + 1 == config.epochs
        if vset is not None and (final or (epoch + 1) % config.validate_every == 0):
            row |= validate(model, vset, val_data.datasets, device)
        state["history"].append(row)
        if final:
            save_checkpoint(out_dir / "final.pt", model, checkpoint_config | {"epoch": epoch + 1, "validation": row}, half=True)
        fieldnames = list(dict.fromkeys(key for past in state["history"] for key in past))
        with open(log, "w", newline="") as handle:  # rewritten whole, so a resumed run never duplicates rows
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(state["history"])
        state["epoch"] = epoch + 1
        tmp = last.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "config": json.dumps(saved), "state": json.dumps(state), "memory": memory.state() if memory else None}, tmp)
        os.replace(tmp, last)
    return state
