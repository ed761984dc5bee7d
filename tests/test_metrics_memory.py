"""Metrics against scikit-learn and by construction; the feature memory; D3AD's start-step rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ddad_hub.dynamic_noise import dynamic_start_steps, score_bin_edges
from ddad_hub.metrics import aupro, image_auroc, paired_auroc_difference, pixel_auroc, summarize
from ddad_hub.models import FeatureEncoder
from ddad_hub.models.feature_memory import FeatureMemory, greedy_coreset


def _masks() -> np.ndarray:
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[0, 4:10, 4:10] = True  # two regions in one image
    masks[0, 20:30, 20:22] = True
    masks[1, 10:20, 10:20] = True
    return masks


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(50), rng.random(50) > 0.5
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    masks = _masks()
    maps = rng.random(masks.shape) + masks * 0.3
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_paired_auroc_difference_sign_spread_and_identity():
    rng = np.random.default_rng(2)
    labels = np.arange(200) >= 100
    signal = labels + rng.normal(0, 1.0, 200)
    strong, weak = signal + rng.normal(0, 0.1, 200), signal + rng.normal(0, 2.0, 200)
    out = paired_auroc_difference(strong, weak, labels, rounds=300)
    assert out["difference"] == pytest.approx(image_auroc(strong, labels) - image_auroc(weak, labels))
    assert out["difference"] > 0 and out["ci95"][0] > 0 and out["share_ahead"] > 0.97
    # the same scores twice: no difference in any round, so no spread
    same = paired_auroc_difference(strong, strong, labels, rounds=50)
    assert same["difference"] == 0 and same["se"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="nominal and defective"):
        paired_auroc_difference(strong, weak, np.ones(200, dtype=bool))


def test_aupro_perfect_random_and_region_weighting():
    masks = _masks()
    rng = np.random.default_rng(1)
    assert aupro(masks + rng.random(masks.shape) * 0.1, masks) == pytest.approx(1.0)
    # uninformative maps: PRO equals FPR on average, so the normalised area is about 0.15
    assert aupro(rng.random(masks.shape), masks) == pytest.approx(0.15, abs=0.04)
    # finding only the large region counts it as one region of three, however many pixels it has:
    # PRO = (1 + 2 FPR) / 3, whose normalised area up to FPR 0.3 is 1/3 + 2/3 * 0.15
    only_big = np.zeros(masks.shape)
    only_big[1, 10:20, 10:20] = 1
    assert aupro(only_big + rng.random(masks.shape) * 0.01, masks) == pytest.approx(1 / 3 + 0.1, abs=0.02)


def test_summarize_per_defect_type():
    masks = _masks()
    maps = masks.astype(float) + 0.01
    scores = maps.reshape(4, -1).max(1)
    out = summarize(scores, maps, masks, ["cut", "bent", "good", "good"])
    assert set(out) == {"all", "cut", "bent"}
    assert out["cut"]["n_images"] == 3 and out["all"]["image_auroc"] == 1.0


def test_summarize_without_masks_for_some_types():
    masks = _masks()
    maps = masks.astype(float) + 0.01
    scores = maps.reshape(4, -1).max(1)
    known = np.array([True, False, True, True])  # "bent" has image-level labels only
    out = summarize(scores, maps, np.where(known[:, None, None], masks, False), ["cut", "bent", "good", "good"],
                    pixel_labelled=known)
    assert out["bent"]["image_auroc"] == 1.0 and out["bent"]["pixel_auroc"] is None and out["bent"]["aupro"] is None
    assert "no masks" in out["bent"]["pixel_metrics"] and "pixel_metrics" not in out["cut"]
    assert out["all"]["pixel_auroc"] == pytest.approx(out["cut"]["pixel_auroc"])
    assert "bent" in out["all"]["pixel_metrics"]
    none = summarize(scores, maps, np.zeros_like(masks), ["cut", "bent", "good", "good"], np.array([0, 0, 1, 1]))
    assert none["all"]["pixel_auroc"] is None and "skipped" in none["all"]["pixel_metrics"]


def test_metrics_the_test_images_cannot_give_are_none_with_a_reason_not_nan():
    import json

    from ddad_hub.metrics import finite_json, format_metric

    masks = _masks()
    maps = masks.astype(float) + 0.01
    scores = maps.reshape(4, -1).max(1)
    good_only = summarize(scores[2:], maps[2:], masks[2:], ["good", "good"])["all"]
    assert good_only["image_auroc"] is None and "no defective test images" in good_only["image_metrics"]
    empty_masks = summarize(scores, maps, np.zeros_like(masks), ["cut", "bent", "good", "good"])["all"]
    assert empty_masks["image_auroc"] == 1.0 and empty_masks["pixel_auroc"] is None
    assert "mark no defect pixel" in empty_masks["pixel_metrics"]
    assert format_metric(None) == format_metric(float("nan")) == "n/a" and format_metric(0.98765) == "0.988"
    assert json.loads(json.dumps(finite_json({"a": [float("nan"), 1.0], "b": float("inf")}), allow_nan=False)) == {
        "a": [None, 1.0], "b": None}


def test_coreset_covers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(100, 2, generator=g) for c in centres])
    picked = points[greedy_coreset(points, 3)]
    assert torch.cdist(centres, picked).amin(dim=1).max() < 1.0  # one pick per cluster


def test_a_smaller_coreset_is_the_first_picks_of_a_larger_one():
    """benchmarks/bench_memory.py --bank-sizes relies on it: one fit measures every bank size."""
    points = torch.randn(500, 200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy_coreset(points, 40)[:15], greedy_coreset(points, 15))


@pytest.fixture(scope="module")
def encoder() -> FeatureEncoder:
    torch.manual_seed(0)
    return FeatureEncoder(backbone="efficientnet_lite0").eval()


def test_memory_flags_what_it_has_not_seen(encoder, tmp_path):
    g = torch.Generator().manual_seed(0)
    nominal = torch.full((6, 3, 64, 64), -0.5) + 0.05 * torch.randn(6, 3, 64, 64, generator=g)
    memory = FeatureMemory.fit(encoder, nominal, coreset_ratio=0.5, image_size=64)
    test = torch.full((2, 3, 64, 64), -0.5) + 0.05 * torch.randn(2, 3, 64, 64, generator=g)
    test[1, :, 20:40, 20:40] = 0.9
    maps, scores = memory.anomaly_maps(encoder, test)
    assert maps.shape == (2, 64, 64)
    assert scores[1] > 2 * scores[0]
    assert maps[1, 30, 30] > maps[1, 2, 2]
    memory.save_pretrained(tmp_path)
    again = FeatureMemory.from_pretrained(tmp_path)
    assert torch.equal(again.bank, memory.bank)


def test_start_step_rule_is_monotone_and_bounded():
    edges = score_bin_edges(torch.linspace(1.0, 2.0, 30))
    scores = torch.linspace(0.0, 5.0, 200)
    for t_max in (80, 200, 400):
        t_hat, skip = dynamic_start_steps(scores, edges, t_max)
        assert torch.all(t_hat[1:] >= t_hat[:-1])
        assert int(t_hat.max()) == t_max and int(t_hat.min()) == round(0.2 * t_max / 10) * 10
        assert torch.all(t_hat % 10 == 0) and torch.equal(skip, t_hat // 10)
    t_hat, _ = dynamic_start_steps(torch.tensor([1.05, 1.55, 1.95, 9.0]), edges, 80)
    assert t_hat.tolist() == [20, 50, 80, 80]  # bins 1 (clamped to 2), 6, 10 and past the last edge
    with pytest.raises(ValueError):
        dynamic_start_steps(scores, edges, 5)
