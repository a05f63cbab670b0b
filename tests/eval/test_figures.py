"""Figures from per-query records: definitions, breakdowns that pool back, the JSON round trip, pooling, and the measuring loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from eval.figures import all_figures, summarise
from eval.measure import measure
from eval.methods import LearnedMethod, create_methods
from eval.metrics import RANKING, ranking_figures
from eval.protocol import VARIANTS, build_workload
from eval.records import Records, concat, dumps
from retrieval import BETA
from retrieval.metric import DistortionAwareMetric
from retrieval.preprocess import network_input

ALPHAS = [0.0, 0.2, 0.4, 0.8]
LEVELS = ["0", "0.4", "0.8", "mixed"]


def synthetic(seed: int = 0, count: int = 12) -> Records:
    """Records of one method with known per-query values: 6 patients of 2 datasets and 2 modalities."""
    rng = np.random.default_rng(seed)
    patients = np.array([f"p{seed}-{i // 2}" for i in range(count)])
    datasets = np.array(["alpha" if i < count // 2 else "beta" for i in range(count)])
    modalities = np.array(["CT" if i % 4 < 2 else "MR" for i in range(count)])

    def block(levels: int) -> dict[str, np.ndarray]:
        return {key: rng.uniform(0.2, 1.0, (levels, count)) for key in RANKING}

    query = block(len(ALPHAS))
    archive = block(len(LEVELS))
    for key in RANKING:
        archive[key][0] = query[key][0]  # level 0 of the archive is the clean query protocol
    record = {"query": query, "archive": archive, "variants": block(len(VARIANTS)),
              "track": np.outer(ALPHAS, rng.uniform(0.5, 1.5, count)), "identity": rng.uniform(2.0, 3.0, count),
              "alpha_hat": np.clip(np.asarray(ALPHAS)[:, None] + rng.normal(0, 0.1, (len(ALPHAS), count)), 0, 1)}
    queries = {"source": np.array([f"s{seed}-{i}" for i in range(count)]), "patient": patients, "dataset": datasets,
               "modality": modalities, "relevant": rng.integers(1, 9, count)}
    gallery = {"dataset": np.array(["alpha", "beta"] * 5), "modality": np.array(["CT", "MR"] * 5), "mixed_alpha": rng.random(10),
               "alpha_hat_clean": rng.random(10) * 0.2, "alpha_hat_mixed": rng.random(10)}
    return Records(ALPHAS, LEVELS, list(VARIANTS), queries, {"learned": record}, gallery)


def test_figures_follow_their_definitions_on_known_measurements() -> None:
    records = synthetic()
    m = records.methods["learned"]
    rows = np.arange(len(records))
    figures = summarise(records, "learned", rows, resamples=100, seed=0)
    assert figures["query"]["map"] == pytest.approx(m["query"]["ap"].mean(1).tolist())
    assert figures["query"]["p1"] == pytest.approx(m["query"]["p1"].mean(1).tolist())
    assert figures["archive"]["map_r"] == pytest.approx(m["archive"]["map_r"].mean(1).tolist())
    assert figures["variants"]["r_precision"] == pytest.approx(m["variants"]["r_precision"].mean(1).tolist())
    clean = m["query"]["ap"][0].mean()
    assert figures["query"]["retention"] == pytest.approx((m["query"]["ap"].mean(1) / clean).tolist())
    assert figures["archive"]["retention"] == pytest.approx((m["archive"]["ap"].mean(1) / clean).tolist())
    assert figures["variants"]["retention"] == pytest.approx((m["variants"]["ap"].mean(1) / clean).tolist())
    assert figures["query"]["retention"][0] == 1.0 and figures["query"]["ci"]["retention"][0] == [1.0, 1.0]
    assert figures["query"]["distance"] == pytest.approx(m["track"].mean(1).tolist())
    assert figures["ratio"] == pytest.approx(m["track"].mean() / m["identity"].mean())
    pair_alpha = np.repeat(ALPHAS, len(records))
    assert figures["auc"] == pytest.approx(roc_auc_score(pair_alpha > 0.3, m["track"].ravel()))
    assert figures["spearman"] == pytest.approx(stats.spearmanr(m["track"].ravel(), pair_alpha).statistic)
    assert figures["alpha_spearman"] == pytest.approx(stats.spearmanr(m["alpha_hat"].ravel(), pair_alpha).statistic)
    anatomy = m["track"] - BETA * np.abs(m["alpha_hat"] - m["alpha_hat"][0])  # the tracking distance less its α term
    assert figures["ratio_anatomy"] == pytest.approx(anatomy.mean() / m["identity"].mean())
    assert figures["ratio_anatomy"] < figures["ratio"]
    for value, (low, high) in zip(figures["query"]["map"], figures["query"]["ci"]["map"]):
        assert low <= value <= high


def test_breakdowns_pool_back_to_the_overall_figures() -> None:
    records = synthetic()
    figures = all_figures(records, resamples=20, seed=0)
    overall = figures["methods"]["learned"]
    for key in ("dataset", "modality"):
        groups = figures["breakdown"][key]
        assert sum(g["queries"] for g in groups.values()) == len(records)
        for protocol in ("query", "archive", "variants"):
            for figure in ("map", "p1", "map_r", "r_precision"):
                pooled = sum(np.asarray(g["methods"]["learned"][protocol][figure]) * g["queries"] for g in groups.values()) / len(records)
                np.testing.assert_allclose(pooled, overall[protocol][figure], atol=1e-12, err_msg=f"{key} {protocol} {figure}")
    assert set(figures["breakdown"]["dataset"]) == {"alpha", "beta"}
    calibration = figures["calibration"]
    assert set(calibration["by_modality"]) == {"CT", "MR"}
    clean = np.concatenate([records.methods["learned"]["alpha_hat"][0][records.queries["dataset"] == "alpha"],
                            records.gallery["alpha_hat_clean"][records.gallery["dataset"] == "alpha"]])
    assert calibration["clean_by_dataset"]["alpha"]["median_alpha_hat"] == pytest.approx(np.median(clean))


def test_records_survive_results_json_and_pool_by_concatenation() -> None:
    first, second = synthetic(0), synthetic(1, count=8)
    again = Records.from_json(json.loads(dumps({"per_query": first.to_json()}))["per_query"], ALPHAS, LEVELS, list(VARIANTS))
    np.testing.assert_allclose(again.methods["learned"]["archive"]["map_r"], first.methods["learned"]["archive"]["map_r"], atol=1e-6)
    assert again.queries["patient"].tolist() == first.queries["patient"].tolist()
    assert again.queries["relevant"].dtype.kind == "i"
    pooled = concat([first, second])
    assert len(pooled) == 20 and pooled.methods["learned"]["query"]["ap"].shape == (len(ALPHAS), 20)
    figures = summarise(pooled, "learned", np.arange(20), resamples=10, seed=0)
    expected = np.concatenate([first.methods["learned"]["query"]["ap"], second.methods["learned"]["query"]["ap"]], axis=1).mean(1)
    assert figures["query"]["map"] == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="differ in alphas"):
        concat([first, Records([0.0, 0.5], LEVELS, list(VARIANTS), first.queries, first.methods)])


def test_measuring_loop_gives_the_archive_protocol_at_gallery_alpha_zero_exactly_the_query_protocol_at_zero(
        make_phantoms: Callable, tiny_checkpoint: Path) -> None:
    """Recomputed from scratch on the level-0 archive gallery, the figures equal what the run reports for both protocols."""
    data = make_phantoms(["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"], "CT")
    workload = build_workload(data, (0.0, 0.8), seed=0)
    metric = DistortionAwareMetric.load(tiny_checkpoint, device="cpu")
    methods, _ = create_methods(("learned", "mse", "ssim"), metric, None)
    records = measure(methods, workload).records
    clean_gallery = network_input(torch.from_numpy(workload.gallery.images), workload.gallery.modalities)
    clean_queries = network_input(torch.from_numpy(workload.query.images), workload.query.modalities)
    for name in ("learned", "mse", "ssim"):
        fresh = create_methods((name,), metric, None)[0][0]
        fresh.prepare(clean_gallery)  # the query protocol at α = 0, built here from the slices
        query_zero = ranking_figures(fresh.search(fresh.encode(clean_queries)), workload.relevant)
        fresh.prepare(workload.gallery_inputs(0.0))  # the archive protocol's gallery at α = 0
        archive_zero = ranking_figures(fresh.search(fresh.encode(clean_queries)), workload.relevant)
        for key in RANKING:
            np.testing.assert_array_equal(archive_zero[key], query_zero[key], err_msg=f"{name} {key}")
            np.testing.assert_array_equal(records.methods[name]["archive"][key][0], archive_zero[key], err_msg=f"{name} {key}")
            np.testing.assert_array_equal(records.methods[name]["query"][key][0], query_zero[key], err_msg=f"{name} {key}")
        assert records.methods[name]["archive"]["ap"].shape == (3, len(workload.query))  # 0, 0.8 and mixed
    learned = records.methods["learned"]
    assert learned["alpha_hat"].shape == (2, len(workload.query)) and "alpha_hat" not in records.methods["mse"]
    assert len(records.gallery["alpha_hat_mixed"]) == len(workload.gallery)


def test_learned_method_searches_through_faiss_and_tracks_with_the_documented_distance(tiny_checkpoint: Path) -> None:
    metric = DistortionAwareMetric.load(tiny_checkpoint, device="cpu")
    generator = torch.Generator().manual_seed(0)
    gallery, queries = torch.rand(12, 3, 64, 64, generator=generator), torch.rand(5, 3, 64, 64, generator=generator)
    method = LearnedMethod(metric)
    assert len(method.prepare(gallery)) == 12
    encoded = method.encode(queries)
    expected_anatomy = np.stack([metric.anatomy_distance(queries[i][None], gallery) for i in range(len(queries))])
    np.testing.assert_allclose(method.search(encoded), expected_anatomy, atol=1e-5)
    expected_tracking = np.stack([metric.distance(queries[i][None], gallery) for i in range(len(queries))])
    np.testing.assert_allclose(method.to_gallery(encoded), expected_tracking, atol=1e-5)
    np.testing.assert_allclose(method.paired(encoded, method.encode(gallery[:5])), metric.distance(queries, gallery[:5]), atol=1e-5)
    np.testing.assert_array_equal(method.alpha_of(encoded), metric.embed(queries).alpha)
