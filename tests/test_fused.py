"""Fused mode (reconstruction map + nearest-neighbour memory map) and the cross-fitted feature memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline

from ddad_hub import DDADPipeline
from ddad_hub.anomaly_map import fuse_maps, map_statistics, normalize_map
from ddad_hub.models.feature_memory import FeatureMemory, greedy_coreset
from ddad_hub.recipe import bootstrap_se, choose_within_noise, fit_d3ad, fit_fused

EMBEDDED_PIXEL = Path(__file__).resolve().parents[1] / "models" / "ddad-transistor-cpu"


def _nominal(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth grey parts with a little noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-0.6, 0.2, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (base + 0.03 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def fused_pipe():
    """A tiny pipeline through the recipe's memory, D3AD and fused fits (random networks, 64 px maps)."""
    pipe = make_tiny_pipeline(threshold=0.5)
    train, held = _nominal(8, seed=1), _nominal(6, seed=2)
    d3ad = fit_d3ad(pipe, train, held, coreset_ratio=0.2, t_max_grid=[80], folds=4)
    with pipe.feature_memory.leaving_out(d3ad["memory"]["held_out_ids"]):
        fused = fit_fused(pipe, held, d3ad["memory"]["stats"], weights=(0.3, 0.5))
    return pipe, d3ad, fused


def _copy(pipe: DDADPipeline) -> DDADPipeline:
    """Another pipeline on the same components, whose config a test may change."""
    config = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components}
    copy = DDADPipeline(**pipe.components, **config)
    copy.set_progress_bar_config(disable=True)
    return copy


def test_fused_map_of_agreeing_parts_equals_their_normalised_map(fused_pipe, monkeypatch):
    pipe = _copy(fused_pipe[0])
    pipe.register_to_config(fused_base="ddad")
    images = _nominal(2, seed=5)
    images[1, :, 20:36, 20:36] = 0.9
    recon = torch.from_numpy(pipe(images, output_type="np", mode="ddad").anomaly_maps)
    r_stats = map_statistics(recon)
    # a memory whose map is an affine copy of the reconstruction map: the same map in other units
    a, b = 3.0, 7.0
    monkeypatch.setattr(pipe, "memory_maps", lambda x, **_: (a * recon + b, (a * recon + b).flatten(1).amax(1)))
    stats = {**pipe.config.fused_stats, "ddad": r_stats, "memory": [a * r_stats[0] + b, a * r_stats[1]]}
    pipe.register_to_config(fused_stats=stats)
    expected = normalize_map(recon, r_stats)
    for rule, weight in (("sum", 0.5), ("sum", 0.2), ("max", 0.5)):
        pipe.register_to_config(fused_rule=rule, fused_weight=weight)
        fused = pipe(images, output_type="pt", mode="fused")
        torch.testing.assert_close(fused.anomaly_maps, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(fused.image_scores, fused.anomaly_maps.flatten(1).amax(1))


def test_fuse_maps_rules():
    r, m = torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[4.0, 0.0]]])
    assert torch.equal(fuse_maps(r, m, [0.0, 1.0], [0.0, 2.0], "sum", 0.25), torch.tensor([[[0.5, 1.5]]]))
    assert torch.equal(fuse_maps(r, m, [0.0, 1.0], [0.0, 2.0], "max"), torch.tensor([[[2.0, 2.0]]]))
    with pytest.raises(ValueError, match="rule"):
        fuse_maps(r, m, [0.0, 1.0], [0.0, 1.0], "product")


def _row(base: str, weight: float, objective: float, rule: str = "sum") -> dict:
    return {"base": base, "rule": rule, "memory_weight": weight, "objective": objective}


def test_fused_setting_moves_from_the_stronger_part_only_as_far_as_the_held_out_noise_allows():
    table = [_row("ddad", 0.5, 0.990), _row("ddad", 0.7, 0.994), _row("d3ad", 0.8, 0.993), _row("ddad", 0.9, 0.985),
             _row("ddad", 0.5, 0.9945, rule="max")]
    memory_strong = {"memory": {"objective": 0.992}, "ddad": {"objective": 0.95}, "d3ad": {"objective": 0.96}}
    recon_strong = {"memory": {"objective": 0.95}, "ddad": {"objective": 0.992}, "d3ad": {"objective": 0.96}}
    # no noise: the best row, whatever its rule
    assert choose_within_noise(table, memory_strong, 0.0)["rule"] == "max"
    # within 0.002 of the best: 0.7 and 0.8 (and max); the memory is stronger alone, so the higher weight
    assert choose_within_noise(table, memory_strong, 0.002) == table[2]
    # the reconstruction is stronger alone: the lowest memory weight within the noise
    assert choose_within_noise(table, recon_strong, 0.002) == table[1]
    assert choose_within_noise(table, recon_strong, 0.01) == table[0]
    # equal weights: the reconstruction mode stronger alone, even where the noise puts the other a little higher
    tied = [_row("ddad", 0.8, 0.992), _row("d3ad", 0.8, 0.991)]
    assert choose_within_noise(tied, memory_strong, 0.01) == tied[1]  # D3AD 0.96 alone against DDAD 0.95
    # equally strong alone: the higher objective
    even = {**memory_strong, "ddad": {"objective": 0.96}}
    assert choose_within_noise(tied, even, 0.01) == tied[0]


def test_bootstrap_error_is_zero_for_a_perfect_map_and_shrinks_with_more_images():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(20)]
    masks = np.zeros((40, 16, 16), dtype=bool)
    masks[20:, 4:8, 4:8] = True
    perfect = masks.astype(np.float32)
    assert bootstrap_se(perfect.reshape(40, -1).max(1), perfect, labels, masks, pixel_stride=1) == 0.0
    noisy = perfect + rng.normal(0, 0.7, perfect.shape).astype(np.float32)
    scores = noisy.reshape(40, -1).max(1)
    few = bootstrap_se(scores, noisy, labels, masks, rounds=200, pixel_stride=1)
    # the same images four times over: the same objective, measured on four times as many images
    many = bootstrap_se(np.tile(scores, 4), np.tile(noisy, (4, 1, 1)), np.tile(labels, 4), np.tile(masks, (4, 1, 1)),
                        rounds=200, pixel_stride=1)
    assert 0.0 < many < 0.7 * few


def test_recipe_fits_fused_and_the_statistics_round_trip(fused_pipe, tmp_path):
    pipe, d3ad, fused = fused_pipe
    pipe = _copy(pipe)
    assert pipe.available_modes() == ["ddad", "d3ad", "fused"]
    assert fused["best"]["base"] in ("ddad", "d3ad") and pipe.config.fused_threshold is not None
    assert set(pipe.config.fused_stats) == {"ddad", "d3ad", "memory"}
    assert d3ad["memory"]["images"] == 14 and pipe.feature_memory.config.cross_fitted  # held-out images in the bank
    images = _nominal(2, seed=9)
    images[0, :, 10:30, 30:50] = -1.0
    before = pipe(images, output_type="np", mode="fused")
    pipe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "model_index.json").read_text())
    assert saved["fused_stats"] == {k: list(v) for k, v in pipe.config.fused_stats.items()}
    loaded = DDADPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for key in ("fused_base", "fused_rule", "fused_weight", "fused_threshold", "memory_at_map_size"):
        assert loaded.config[key] == pipe.config[key], key
    assert {k: list(v) for k, v in loaded.config.fused_stats.items()} == saved["fused_stats"]
    after = loaded(images, output_type="np", mode="fused")
    np.testing.assert_array_equal(before.anomaly_maps, after.anomaly_maps)
    assert after.threshold == pipe.config.fused_threshold
    # the fused map is the fusion of its two parts' maps, as evaluate.py computes it
    base = loaded(images, output_type="pt", mode=loaded.config.fused_base).anomaly_maps
    memory = loaded.memory_maps(loaded.resize_to_map(images))[0]
    torch.testing.assert_close(torch.from_numpy(after.anomaly_maps), loaded.fuse(base, memory), rtol=0, atol=1e-6)


def _strip_fused_keys(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    for key in ("fused_base", "fused_stats", "fused_rule", "fused_weight", "fused_threshold", "memory_at_map_size"):
        index.pop(key, None)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_a_pipeline_saved_before_fused_mode_loads_runs_and_says_fused_is_unavailable(fused_pipe, tmp_path):
    pipe, _, _ = fused_pipe
    pipe.save_pretrained(tmp_path)
    _strip_fused_keys(tmp_path)  # model_index.json as it was written before fused mode existed
    old = DDADPipeline.from_pretrained(tmp_path)
    old.set_progress_bar_config(disable=True)
    assert old.available_modes() == ["ddad", "d3ad"] and old.config.memory_at_map_size is False
    out = old(_nominal(1), output_type="np", mode="d3ad")
    assert np.isfinite(out.anomaly_maps).all()
    with pytest.raises(ValueError, match="fused mode is not fitted"):
        old(_nominal(1), mode="fused")


@pytest.mark.skipif(not EMBEDDED_PIXEL.is_dir(), reason="the embedded pixel model is not in this checkout")
def test_the_embedded_pixel_model_as_saved_still_loads_and_runs(tmp_path):
    folder = shutil.copytree(EMBEDDED_PIXEL, tmp_path / "old")
    _strip_fused_keys(folder)
    pipe = DDADPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert "fused" not in pipe.available_modes()
    out = pipe(_nominal(1, size=64), output_type="np", mode=pipe.available_modes()[-1])
    assert out.anomaly_maps.shape[0] == 1 and np.isfinite(out.image_scores).all()
    with pytest.raises(ValueError, match="finalize.py"):
        pipe(_nominal(1, size=64), mode="fused")


def test_cross_fitting_leaves_each_image_out_of_the_bank_it_is_scored_against():
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = _nominal(6, seed=3)
    images[4, :, 16:48, 16:48] = 0.95  # seen by the bank only through image 4
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=1.0, image_size=64)
    assert memory.bank_sources.tolist() == sorted(memory.bank_sources.tolist())  # every patch, in image order
    maps, folds = memory.out_of_fold_maps(encoder, images, folds=3)
    assert [f.tolist() for f in folds] == [[0, 3], [1, 4], [2, 5]]
    in_bank, _ = memory.anomaly_maps(encoder, images)
    assert float(in_bank.abs().max()) < 1e-2  # scored against a bank holding its own patches: ~0
    assert float(maps[4, 24:40, 24:40].mean()) > 10 * float(maps[[0, 1, 2, 3, 5]].mean())
    with memory.leaving_out([1, 4]):  # what out_of_fold_maps did for image 4's fold
        assert not torch.isin(memory.bank_sources[memory._active], torch.tensor([1, 4])).any()
        torch.testing.assert_close(memory.anomaly_maps(encoder, images[[4]])[0][0], maps[4])
    assert memory._active is None
    with pytest.raises(ValueError, match="empty"), memory.leaving_out(range(6)):
        pass


def test_fast_coreset_picks_what_the_plain_greedy_rule_picks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    picked = greedy_coreset(x, 20).tolist()
    expected = [picked[0]]
    for _ in range(19):  # farthest point from those already picked, by exact distances
        expected.append(int(torch.cdist(x, x[expected]).amin(1).argmax()))
    assert picked == expected


def test_capped_candidates_keep_bank_sources_right():
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder
    from ddad_hub.models.feature_memory import patch_features

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = _nominal(4, seed=6)
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.25, image_size=64, max_candidates=100)
    assert memory.bank.shape[0] == 64  # 25% of 4 x 8 x 8 patches, picked among 100 random candidates
    feats = patch_features(encoder, images).permute(0, 2, 3, 1).reshape(4, 64, -1)
    for entry, source in zip(memory.bank, memory.bank_sources.tolist()):
        assert torch.cdist(entry[None], feats[source]).min() < 1e-4  # the entry is a patch of its source image


def test_recalibration_leaves_held_out_images_out_or_keeps_the_memory_thresholds(fused_pipe, tmp_path):
    from ddad_hub.recipe import recalibrate

    pipe, d3ad, _ = fused_pipe
    held = _nominal(6, seed=2)  # the fixture's held-out images, in the bank as images 8..13
    fresh = recalibrate(_copy(pipe), held, d3ad["memory"]["held_out_ids"])
    assert fresh["d3ad_threshold"] == pytest.approx(pipe.config.d3ad_threshold)  # the same scores as the fit's
    assert fresh["fused_threshold"] == pytest.approx(pipe.config.fused_threshold)
    pipe.save_pretrained(tmp_path)
    loaded = DDADPipeline.from_pretrained(tmp_path)  # the bank's sources are gone: in-bank scores would be too low
    loaded.set_progress_bar_config(disable=True)
    kept = recalibrate(loaded, held)
    assert "memory_modes" in kept and "fused_threshold" not in kept
    assert loaded.config.fused_threshold == pipe.config.fused_threshold


def test_l2_normalised_memory_has_unit_stage_vectors_and_round_trips(tmp_path):
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = _nominal(3, seed=8)
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.5, image_size=64, normalization="l2")
    split = encoder.channels[0]
    finest, coarse = memory.bank[:, :split].norm(dim=1), memory.bank[:, split:].norm(dim=1)
    torch.testing.assert_close(finest, torch.ones(len(finest)), rtol=1e-4, atol=1e-4)
    # the stride-16 stage is normalised before it is upsampled: interpolated unit vectors are at most unit length
    assert bool((coarse <= 1 + 1e-5).all()) and bool((coarse > 0.5).all()) and float(coarse.mean()) > 0.9
    memory.save_pretrained(tmp_path)
    again = FeatureMemory.from_pretrained(tmp_path)
    assert again.config.normalization == "l2"
    torch.testing.assert_close(again.anomaly_maps(encoder, images)[0], memory.anomaly_maps(encoder, images)[0])
    with pytest.raises(ValueError, match="normalization"):
        FeatureMemory.fit(encoder, images, normalization="zscore")


def test_pooling_pad_zeros_in_new_fits_and_exclude_in_memories_saved_before_it(tmp_path):
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder
    from ddad_hub.models.feature_memory import patch_features

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = _nominal(3, seed=9)
    zeros, exclude = patch_features(encoder, images, pooling_pad="zeros"), patch_features(encoder, images,
                                                                                        pooling_pad="exclude")
    torch.testing.assert_close(zeros[..., 1:-1, 1:-1], exclude[..., 1:-1, 1:-1])  # inside, the same average
    # a corner averages 4 of 9 positions: zero padding gives 4/9 of the inside-only mean
    torch.testing.assert_close(zeros[..., 0, 0], exclude[..., 0, 0] * 4 / 9, rtol=1e-4, atol=1e-5)
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.5, image_size=64)
    assert memory.config.pooling_pad == "zeros"
    memory.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["pooling_pad"]  # as a memory saved before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = FeatureMemory.from_pretrained(tmp_path)
    assert old.config.pooling_pad == "exclude"
    flat = exclude.permute(0, 2, 3, 1).reshape(-1, exclude.shape[1])
    expected = torch.cdist(flat, old.bank).amin(dim=1).view(3, *exclude.shape[-2:])
    torch.testing.assert_close(old.patch_distances(encoder, images), expected)
    with pytest.raises(ValueError, match="pooling_pad"):
        FeatureMemory.fit(encoder, images, pooling_pad="reflect")


def test_a_float16_bank_halves_the_file_and_scores_as_the_float32_bank(tmp_path):
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = _nominal(3, seed=12)
    full = FeatureMemory.fit(encoder, images, coreset_ratio=0.5, image_size=64)
    half = FeatureMemory.fit(encoder, images, coreset_ratio=0.5, image_size=64, bank_dtype="float16")
    assert full.bank.dtype == torch.float32 and half.bank.dtype == torch.float16
    assert torch.equal(half.bank_sources, full.bank_sources)  # the same coreset, picked in float32
    full.save_pretrained(tmp_path / "full")
    half.save_pretrained(tmp_path / "half")
    size = {k: (tmp_path / k / "diffusion_pytorch_model.safetensors").stat().st_size for k in ("full", "half")}
    assert size["half"] < 0.55 * size["full"]
    again = FeatureMemory.from_pretrained(tmp_path / "half")
    assert again.config.bank_dtype == "float16" and again.bank.dtype == torch.float16
    assert torch.equal(again.bank, half.bank)
    test = _nominal(2, seed=13)
    torch.testing.assert_close(again.patch_distances(encoder, test), full.patch_distances(encoder, test),
                               rtol=2e-3, atol=2e-3)
    again.to(torch.float32)  # what pipe.to(torch.float32) does to it: the bank keeps its stored type
    assert again.bank.dtype == torch.float16 and full.float().bank.dtype == torch.float32
    with pytest.raises(ValueError, match="bank_dtype"):
        FeatureMemory.fit(encoder, images, bank_dtype="int8")


def test_the_memory_reads_cpu_inputs_on_the_device_it_lives_on(caplog):
    """After pipe.to("cuda") the pipeline hands its memory CPU tensors; the meta device stands in for a GPU."""
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    memory = FeatureMemory.fit(encoder, _nominal(2, seed=3), coreset_ratio=0.5, image_size=64, bank_dtype="float16")
    distances, nearest = memory.to("meta").nearest_patches(encoder.to("meta"), _nominal(1, seed=4))
    assert distances.device.type == "meta" and nearest.device.type == "meta"

    pipe = make_tiny_pipeline()
    pipe.register_modules(feature_memory=FeatureMemory.fit(pipe.feature_encoder, _nominal(2, seed=3),
                                                           coreset_ratio=0.5, image_size=64, bank_dtype="float16"))
    with caplog.at_level("WARNING"):
        pipe.to("cpu")  # diffusers' float16-on-CPU warning misread the bank's storage type as the weights'
    assert "float16" not in caplog.text and pipe.feature_memory.bank.dtype == torch.float16


def test_grouped_memory_keeps_a_coreset_per_group():
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = torch.cat([_nominal(3, seed=10), -_nominal(2, seed=11)])  # two "products"
    groups = [0, 0, 0, 1, 1]
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.25, image_size=64, groups=groups, max_patches=40)
    sources = memory.bank_sources
    assert int((sources < 3).sum()) == 40  # 25% of 192 patches, capped at 40
    assert int((sources >= 3).sum()) == 32  # 25% of 128 patches
    assert memory.bank.shape[0] == 72
    with pytest.raises(ValueError, match="one id per image"):
        FeatureMemory.fit(encoder, images, groups=[0, 1])


def test_bank_shares_split_a_total_in_proportion_and_pass_on_what_a_group_cannot_use():
    from ddad_hub.models.feature_memory import bank_shares

    patches = [1000, 1000, 4000]
    assert bank_shares(patches, 0.5) == [500, 500, 2000]  # no caps: the ratio
    assert bank_shares(patches, 0.5, max_patches=800) == [500, 500, 800]
    assert bank_shares(patches, 0.5, max_total=1200) == [200, 200, 800]  # in proportion, 1 : 1 : 4
    # the large group's proportional share (2000 of 3000) exceeds its cap (800): the rest goes to the others
    assert bank_shares(patches, 0.5, max_patches=800, max_total=1600) == [400, 400, 800]
    assert bank_shares(patches, 0.5, max_patches=800, max_total=5000) == [500, 500, 800]  # the total does not bind
    with pytest.raises(ValueError, match="max_total_patches"):
        bank_shares(patches, 0.5, max_total=2)
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    images = torch.cat([_nominal(1, seed=14), -_nominal(3, seed=15)])  # 64 and 192 patches
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.5, image_size=64, groups=[0, 1, 1, 1],
                               max_total_patches=64)
    assert int((memory.bank_sources < 1).sum()) == 16 and int((memory.bank_sources >= 1).sum()) == 48


def test_category_ids_follow_the_category_folders():
    from ddad_hub.recipe import category_ids

    paths = [Path(f"d/{c}/train/good/{i}.png") for c, i in [("a", 0), ("b", 0), ("a", 1), ("c", 0)]]
    assert category_ids(paths) == [0, 1, 0, 2]


def test_an_image_standardised_memory_ignores_lighting_and_loads_as_saved(tmp_path):
    torch.manual_seed(0)
    from ddad_hub import FeatureEncoder

    encoder = FeatureEncoder(backbone="efficientnet_lite0").eval()
    train, test = _nominal(4, seed=10), _nominal(1, seed=11)
    test[:, :, 20:30, 20:30] = 0.1
    dim = 0.5 * test - 0.3  # the same part under weaker light: darker, less contrast, nothing clipped
    memory = FeatureMemory.fit(encoder, train, coreset_ratio=0.5, image_size=64, input_norm="image")
    plain = FeatureMemory.fit(encoder, train, coreset_ratio=0.5, image_size=64)
    assert plain.config.input_norm == "none"
    torch.testing.assert_close(memory.anomaly_maps(encoder, dim)[0], memory.anomaly_maps(encoder, test)[0],
                               rtol=1e-3, atol=1e-3)
    # without it the dimmed part moves away from the bank: its score rises by a third
    assert float(plain.anomaly_maps(encoder, dim)[1]) > 1.3 * float(plain.anomaly_maps(encoder, test)[1])
    memory.save_pretrained(tmp_path / "new")
    again = FeatureMemory.from_pretrained(tmp_path / "new")
    assert again.config.input_norm == "image"
    torch.testing.assert_close(again.anomaly_maps(encoder, dim)[0], memory.anomaly_maps(encoder, dim)[0])
    plain.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["input_norm"]  # as a memory saved before the option existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = FeatureMemory.from_pretrained(tmp_path / "old")
    assert old.config.input_norm == "none"
    torch.testing.assert_close(old.anomaly_maps(encoder, test)[0], plain.anomaly_maps(encoder, test)[0])
    with pytest.raises(ValueError, match="input_norm"):
        FeatureMemory.fit(encoder, train, input_norm="zscore")


def test_the_recipe_keeps_the_input_norm_whose_held_out_objective_is_higher(monkeypatch):
    from ddad_hub import recipe

    pipe = make_tiny_pipeline(threshold=0.5)
    train, held = _nominal(6, seed=12), _nominal(4, seed=13)
    seen = []

    def objective(pipe, nominal, seed=0):  # a stand-in that prefers "image", and checks the held-out images are out
        memory = pipe.feature_memory
        assert memory._active is not None and int((~memory._active).sum()) > 0
        seen.append(memory.config.input_norm)
        value = 0.9 if memory.config.input_norm == "image" else 0.8
        return {"image_auroc": value, "pixel_auroc": value, "objective": value}

    monkeypatch.setattr(recipe, "memory_objective", objective)
    info = recipe.fit_memory(pipe, train, held, coreset_ratio=0.2, folds=3, input_norm=["none", "image"])
    assert seen == ["none", "image"]
    assert pipe.feature_memory.config.input_norm == "image" and info["input_norm"] == "image"
    assert [row["input_norm"] for row in info["input_norm_selection"]] == ["none", "image"]
    monkeypatch.setattr(recipe, "memory_objective", lambda *a, **k: {"objective": 0.8})  # a tie: the first stays
    assert recipe.fit_memory(pipe, train, held, coreset_ratio=0.2, folds=3,
                             input_norm=["none", "image"])["input_norm"] == "none"
    single = recipe.fit_memory(pipe, train, held, coreset_ratio=0.2, folds=3, input_norm="image")
    assert single["input_norm"] == "image" and "input_norm_selection" not in single
