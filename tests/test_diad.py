"""DiAD: the semantic-guided network, the pipeline, its training script, and several categories read as one set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline, write_category
from PIL import Image

from ddad_hub.data import (
    DatasetLayoutError,
    category_of,
    find_categories,
    held_out_split,
    nominal_id,
    split_categories,
)
from ddad_hub.models.semantic_guided import GuidedDenoiser, SemanticGuidedNetwork, unet_forward_with_residuals

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _tiny_unet():
    return make_tiny_pipeline(latent=True).unet


# ---------------------------------------------------------------------------- the SG network
def test_zero_initialised_sg_outputs_leave_the_denoiser_unchanged():
    unet = _tiny_unet().eval()
    sg = SemanticGuidedNetwork.from_unet(unet, hint_channels=(4, 8), hint_strides=(1, 2))
    torch.manual_seed(1)
    x, image, t = torch.randn(2, 4, 16, 16), torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 700])
    down, mid = sg(x, t, image)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
    plain = unet(x, t).sample
    assert torch.equal(unet_forward_with_residuals(unet, x, t).sample, plain)
    assert torch.equal(GuidedDenoiser(unet, sg)(x, t, image).sample, plain)


def test_residuals_reach_every_skip_and_the_middle_block():
    """Once the zero convs are not zero, each residual changes the prediction (none is silently dropped)."""
    unet = _tiny_unet().eval()
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([10])
    plain = unet(x, t).sample
    skips = [unet.conv_in(x)]  # shapes of the skips, from a plain run of the down path
    emb = unet.time_embedding(unet.time_proj(t))
    h = skips[0]
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += list(res)
    mid = unet.mid_block(h, emb)
    for i in range(len(skips)):
        residuals = [torch.zeros_like(s) for s in skips]
        residuals[i] = torch.ones_like(skips[i])
        out = unet_forward_with_residuals(unet, x, t, tuple(residuals), None).sample
        assert not torch.allclose(out, plain), f"skip {i} had no effect"
    out = unet_forward_with_residuals(unet, x, t, None, torch.ones_like(mid)).sample
    assert not torch.allclose(out, plain)
    with pytest.raises(ValueError, match="skip residuals"):
        unet_forward_with_residuals(unet, x, t, tuple(skips[:-1]), None)


def test_sff_mixes_the_previous_level_into_the_deepest_outputs():
    sg = SemanticGuidedNetwork.from_unet(_tiny_unet(), hint_channels=(4, 8), hint_strides=(1, 2))
    assert sg.sff_convs is not None and len(sg.sff_convs) == len(sg.deep_index)
    for conv in sg.sff_convs:  # make the SFF path non-zero, everything else stays zero-initialised
        torch.nn.init.normal_(conv.weight)
    for conv in sg.zero_convs:
        torch.nn.init.normal_(conv.weight)
    down, _ = sg(torch.randn(1, 4, 16, 16), torch.tensor([5]), torch.rand(1, 3, 32, 32))
    assert all((down[d] >= -0.2785).all() for d in sg.deep_index)  # SiLU's minimum: the fused outputs went through it


# ---------------------------------------------------------------------------- pipeline, training, save/load
def test_corrupt_guidance_defects_the_given_share_of_images_reproducibly():
    from training.train_diad import corrupt_guidance

    images = torch.rand(64, 3, 16, 16) * 2 - 1
    assert corrupt_guidance(images, 0.0, seed=1) is images
    every = corrupt_guidance(images, 1.0, seed=1)
    assert all(not torch.equal(a, b) for a, b in zip(every, images)), "share 1: every guidance image is defective"
    half = corrupt_guidance(images, 0.5, seed=3)
    changed = sum(not torch.equal(a, b) for a, b in zip(half, images))
    assert 16 <= changed <= 48
    assert torch.equal(half, corrupt_guidance(images, 0.5, seed=3))


def test_a_tiny_diad_trains_and_round_trips_bit_identically(tmp_path):
    from ddad_hub.pipelines.loading import load_pipeline
    from ddad_hub.pipelines.pipeline_ddad import DDADPipelineOutput
    from ddad_hub.pipelines.pipeline_diad import DiADPipeline
    from training.train_diad import main as train_diad

    cats = [write_category(tmp_path / "data", name, seed=i) for i, name in enumerate(("alpha", "beta"))]
    make_tiny_pipeline(latent=True).save_pretrained(tmp_path / "base")
    preset = {"name": "tiny_diad", "resolution": 32, "holdout": 0.34, "mixed_precision": "no", "map_size": 64,
              "feature_backbone": "efficientnet_lite0",
              "diad": {"sg_hint_channels": [4, 8], "sg_hint_strides": [1, 2], "learning_rate": 1e-3, "batch_size": 2,
                       "checkpoint_every": 2, "start_step": 999, "skip": 100, "feature_strides": [4, 8, 16]}}
    (tmp_path / "wrong_size.json").write_text(json.dumps({**preset, "resolution": 64}))
    with pytest.raises(SystemExit, match="trains at 64 px, but .* works at 32 px"):  # before any training
        train_diad(["--pipeline", str(tmp_path / "base"), "--data", *map(str, cats), "--output-dir",
                    str(tmp_path / "wrong"), "--preset", str(tmp_path / "wrong_size.json"), "--threads", "1"])
    listed = load_pipeline(tmp_path / "base")  # a U-Net whose sample_size is (height, width)
    for side, said in (([16, 16], "works at 32 px"), ([16, 24], "works at 32x48 px.*square")):
        listed.unet.register_to_config(sample_size=side)
        listed.save_pretrained(tmp_path / "listed")
        with pytest.raises(SystemExit, match=f"trains at 64 px, but .* {said}"):
            train_diad(["--pipeline", str(tmp_path / "listed"), "--data", *map(str, cats), "--output-dir",
                        str(tmp_path / "wrong2"), "--preset", str(tmp_path / "wrong_size.json"), "--threads", "1"])
    (tmp_path / "tiny_diad.json").write_text(json.dumps(preset))
    base = load_pipeline(tmp_path / "base")
    frozen = {k: v.clone() for k, v in base.unet.state_dict().items() if not k.startswith(("up_blocks", "conv_out",
                                                                                            "conv_norm_out"))}
    args = ["--pipeline", str(tmp_path / "base"), "--data", *map(str, cats), "--output-dir", str(tmp_path / "run"),
            "--preset", str(tmp_path / "tiny_diad.json"), "--threads", "1"]
    folder = train_diad([*args, "--max-steps", "3"])
    pipe = load_pipeline(folder)
    assert isinstance(pipe, DiADPipeline)
    import ddad_hub  # the class is where DDADPipeline is, so DiADPipeline.from_pretrained works as users write it

    assert ddad_hub.DiADPipeline is DiADPipeline
    assert type(ddad_hub.DiADPipeline.from_pretrained(folder)) is DiADPipeline
    trained = pipe.unet.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in frozen.items()), "the denoiser's down path must stay frozen"
    assert any(not torch.equal(trained[k], base.unet.state_dict()[k]) for k in trained if k.startswith("up_blocks"))
    assert any(torch.count_nonzero(p) for p in pipe.sg_network.zero_convs.parameters()), "the SG network trained"
    info = json.loads((folder / "training_info.json").read_text())
    per_category = info["calibration"]["per_category"]
    assert set(per_category) == {"alpha", "beta"}
    assert max(v["threshold"] for v in per_category.values()) == pipe.config.threshold
    assert pipe.config.threshold == pytest.approx(max(info["calibration"]["nominal_scores"]))
    card = (folder / "README.md").read_text()
    assert "DiADPipeline" in card and "alpha, beta" in card and "Not evaluated yet" in card
    from training.evaluate_multiclass import main as evaluate

    with pytest.raises(SystemExit, match="trained on alpha, beta; its results and card"):  # one product: elsewhere
        evaluate(["--pipeline", str(folder), "--data", str(cats[0]), "--output-dir", str(folder)])
    with pytest.raises(SystemExit, match="--modes d3ad"):  # a mode DiAD does not have, before any work
        evaluate(["--pipeline", str(folder), "--data", *map(str, cats), "--output-dir", str(tmp_path / "e"),
                  "--modes", "d3ad"])
    from ddad_hub.model_info import trained_on

    assert trained_on(folder).startswith("alpha, beta")  # its record maps names to folders
    evaluate(["--pipeline", str(folder), "--data", *map(str, cats), "--output-dir", str(folder), "--holdout", "0.34"])
    from huggingface_hub import ModelCard

    results = ModelCard.load(folder / "README.md").data.eval_results  # the model-index: 3 metrics per category
    assert sorted((r.dataset_name, r.metric_type) for r in results) == sorted(
        (c, m) for c in ("alpha", "beta") for m in ("image_auroc", "pixel_auroc", "aupro"))

    # resuming continues from the newest checkpoint (step 3 was written at the end); the extra step sees
    # defective guidance images, and the run records the share
    assert train_diad([*args, "--max-steps", "4", "--resume", "--guidance-defects", "0.5"]) == folder
    resumed = json.loads((folder / "training_info.json").read_text())["training"]
    assert resumed["steps"] == 4 and resumed["guidance_defects"] == 0.5

    pipe.set_progress_bar_config(disable=True)
    x = torch.rand(3, 3, 40, 40)
    out = pipe(x, output_type="pt", autocast_dtype=torch.float32)
    assert isinstance(out, DDADPipelineOutput)
    assert out.anomaly_maps.shape == (3, 64, 64) and out.image_scores.shape == (3,)
    assert out.is_anomalous is not None and out.masks is not None and out.threshold == pipe.config.threshold
    assert out.start_steps.tolist() == [999] * 3
    assert out.anomaly_maps_input_size[0].shape == (40, 40)
    pipe.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").rglob("*.bin"))
    again = load_pipeline(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    out2 = again(x, output_type="pt", autocast_dtype=torch.float32)
    assert torch.equal(out.anomaly_maps, out2.anomaly_maps)
    assert torch.equal(out.reconstructions, out2.reconstructions)
    with pytest.raises(ValueError, match="modes are 'diad' and 'fused'"):
        pipe(x, mode="d3ad")
    assert pipe.available_modes() == ["diad"]  # this preset fits no memory: no fused mode
    with pytest.raises(ValueError, match="fused mode is not fitted"):
        pipe(x, mode="fused")


def test_diad_fused_mode_is_fitted_without_test_images_and_round_trips(tmp_path):
    """finalize_diad fits the memory on the map encoder's stride 8 and 16 stages, fused mode (DiAD map + memory),
    the default mode and per-product thresholds; the pipeline recognises the product and saves/loads exactly."""
    from ddad_hub import DDADScheduler
    from ddad_hub.pipelines.loading import load_pipeline
    from ddad_hub.pipelines.pipeline_diad import DiADPipeline
    from ddad_hub.recipe import finalize_diad

    cats = [write_category(tmp_path / "data", name, n_train=8, seed=i) for i, name in enumerate(("alpha", "beta"))]
    train_paths, held_out, _ = split_categories(find_categories(cats), 0.5, seed=0)
    base = make_tiny_pipeline(latent=True)
    encoder = type(base.feature_encoder).from_imagenet("efficientnet_lite0", (4, 8, 16))
    sg = SemanticGuidedNetwork.from_unet(base.unet, hint_channels=(4, 8), hint_strides=(1, 2))
    scheduler = DDADScheduler(start_step=999, skip=100, eta=0.0, w=0.0)
    with pytest.raises(ValueError, match="needs the autoencoder"):  # as DDADPipeline: at once, not at a call
        DiADPipeline(base.unet, sg, scheduler, encoder, vae=None, map_size=64)
    pipe = DiADPipeline(base.unet, sg, scheduler, encoder, vae=base.vae, map_size=64)
    pipe.set_progress_bar_config(disable=True)
    preset = {"memory": {"coreset_ratio": 0.5, "folds": 2, "feature_strides": [8, 16]},
              "category_threshold_min_images": 2}
    info = finalize_diad(pipe, train_paths, held_out, preset)

    memory = pipe.feature_memory
    assert list(memory.config.feature_strides) == [8, 16]
    assert memory.bank.shape[1] == sum(encoder.channels[1:])  # the bank holds strides 8 and 16, not 4
    assert pipe.available_modes() == ["diad", "fused"] and pipe.config.fused_base == "diad"
    assert set(pipe.config.fused_stats) == {"diad", "memory"}
    assert pipe.config.mode == info["mode"]["chosen"] and set(info["mode"]["objectives"]) == {"diad", "fused"}
    assert pipe.config.fused_threshold == pytest.approx(max(info["fused"]["nominal_scores"]))
    assert set(pipe.config.category_thresholds) == {"diad", "fused"}
    assert set(pipe.config.category_thresholds["fused"]) == {"alpha", "beta"}

    x = [Image.open(p) for p in held_out]
    out = pipe(x, output_type="pt", mode="fused", autocast_dtype=torch.float32)
    assert sorted(set(out.categories)) == ["alpha", "beta"]
    own = pipe.config.category_thresholds["fused"]
    assert out.image_thresholds.tolist() == pytest.approx([own[c] for c in out.categories])
    plain = pipe(x, output_type="pt", mode="diad", autocast_dtype=torch.float32, per_category_thresholds=False)
    alias = pipe(x, output_type="pt", mode="ddad", autocast_dtype=torch.float32)  # "ddad" is DiAD's synonym
    assert alias.categories == out.categories
    assert alias.image_thresholds.tolist() == pytest.approx([pipe.config.category_thresholds["diad"][c]
                                                             for c in alias.categories])
    memory_maps = pipe.memory_maps(pipe.preprocess(x, size=pipe.map_hw)[0])[0]
    assert torch.allclose(out.anomaly_maps, pipe.fuse(plain.anomaly_maps, memory_maps), atol=1e-5)
    # a DiAD pipeline takes the product stated too: the memory's half can only grow, the products' thresholds judge
    stated = pipe(x, output_type="pt", mode="fused", autocast_dtype=torch.float32, category=out.categories)
    assert stated.categories == out.categories and torch.equal(stated.image_thresholds, out.image_thresholds)
    assert (stated.anomaly_maps >= out.anomaly_maps - 1e-5).all()

    pipe.save_pretrained(tmp_path / "saved")
    again = load_pipeline(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, DiADPipeline) and again.available_modes() == ["diad", "fused"]
    out2 = again(x, output_type="pt", mode="fused", autocast_dtype=torch.float32)
    assert torch.equal(out.anomaly_maps, out2.anomaly_maps) and out.categories == out2.categories

    from ddad_hub.model_card import write_diad_model_card

    run = {"preset": {"name": "tiny_diad", "resolution": 32, "diad": {"batch_size": 2}},
           "categories": {"alpha": "a", "beta": "b"}, "training": {"steps": 0, "minutes": 0}, **info}
    (tmp_path / "saved" / "training_info.json").write_text(json.dumps(run, default=str))
    card = write_diad_model_card(tmp_path / "saved").read_text()
    assert "DiAD map and memory map" in card and "recognises (nearest neighbours" in card


def test_diad_runs_ten_ddim_steps_from_full_noise(monkeypatch):
    from ddad_hub import DDADScheduler
    from ddad_hub.pipelines.pipeline_diad import DiADPipeline

    base = make_tiny_pipeline(latent=True)
    sg = SemanticGuidedNetwork.from_unet(base.unet, hint_channels=(4, 8), hint_strides=(1, 2))
    pipe = DiADPipeline(base.unet, sg, DDADScheduler(start_step=999, skip=100, eta=0.0, w=0.0),
                        base.feature_encoder, vae=base.vae, map_size=64)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    original = pipe.predict_noise
    monkeypatch.setattr(pipe, "predict_noise", lambda s, t, h: seen.append(int(t[0])) or original(s, t, h))
    pipe(torch.rand(1, 3, 32, 32), output_type="pt")
    assert seen == list(range(999, 0, -100))


# ---------------------------------------------------------------------------- several categories as one set
def test_a_folder_of_categories_is_read_as_one_set(tmp_path):
    write_category(tmp_path, "alpha", n_train=5)
    write_category(tmp_path, "beta", n_train=7)
    (tmp_path / "license.txt").write_text("files beside the categories are ignored")
    found = find_categories(tmp_path)
    assert list(found) == ["alpha", "beta"]
    train, held, by_category = split_categories(found, holdout=0.2)
    assert len(train) + len(held) == 12
    assert set(by_category) == {"alpha", "beta"} and all(by_category.values())
    assert {p.parent.parent.parent.name for p in train} == {"alpha", "beta"}
    # category folders and parents mix; the order given is kept
    mixed = find_categories([tmp_path / "beta", tmp_path / "alpha"])
    assert list(mixed) == ["beta", "alpha"]


def test_a_category_with_its_own_validation_split_is_held_out_by_it(tmp_path):
    alpha = write_category(tmp_path, "alpha", n_train=6)
    beta = write_category(tmp_path, "beta", n_train=6, seed=1)
    (beta / "validation" / "good").mkdir(parents=True)
    for name in ("000.png", "001.png"):  # the same file names as train/good's, as in MVTec 3D-AD
        shutil.copy(beta / "test" / "good" / name, beta / "validation" / "good" / name)
    train, held, by_category = split_categories(find_categories(tmp_path), holdout=0.5)
    assert [p.relative_to(beta).as_posix() for p in by_category["beta"]] == ["validation/good/000.png",
                                                                             "validation/good/001.png"]
    assert sum(category_of(p) == "beta" for p in train) == 6  # all of train/good trains
    assert len(by_category["alpha"]) == 3 and sum(category_of(p) == "alpha" for p in train) == 3
    assert {category_of(p) for p in held} == {"alpha", "beta"}
    # the ids a run records bring the same split back, though the file names repeat across the two splits
    ids = [nominal_id(p) for p in by_category["beta"]]
    assert ids == ["validation/good/000.png", "validation/good/001.png"]
    assert held_out_split(beta, ids) == ([p for p in train if category_of(p) == "beta"], by_category["beta"])
    alpha_ids = [nominal_id(p) for p in by_category["alpha"]]  # plain file names, as every earlier run recorded
    assert all("/" not in i for i in alpha_ids)
    assert held_out_split(alpha, alpha_ids) == ([p for p in train if category_of(p) == "alpha"], by_category["alpha"])
    # opting out splits train/good as before
    _, held_split, by_split = split_categories(find_categories(tmp_path), holdout=0.5, use_validation=False)
    assert len(by_split["beta"]) == 3 and not any("validation" in p.parts for p in held_split)


def test_a_broken_category_folder_is_named(tmp_path):
    write_category(tmp_path, "alpha")
    (tmp_path / "gamma" / "train").mkdir(parents=True)  # no train/good
    with pytest.raises(DatasetLayoutError, match="category 'gamma'"):
        find_categories(tmp_path)
    write_category(tmp_path / "other", "alpha")
    with pytest.raises(DatasetLayoutError, match="two categories are named 'alpha'"):
        find_categories([tmp_path / "alpha", tmp_path / "other"])
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        find_categories(tmp_path / "missing")


@pytest.mark.skipif(not DATA.is_dir(), reason="the shared real data (../shared/data) is not here")
def test_the_four_shared_categories_are_one_set():
    found = find_categories([DATA / "mvtec_ad_256" / "transistor", DATA / "mvtec_ad_256" / "bottle",
                             DATA / "mvtec3d_256" / "tire", DATA / "mtd" / "magnetic_tile"])
    train, held, by_category = split_categories(found, holdout=0.1)
    assert list(found) == ["transistor", "bottle", "tire", "magnetic_tile"]
    assert len(train) + len(held) == 213 + 209 + (210 + 29) + 762  # tire holds out its own validation/good
    assert all(len(v) > 0 for v in by_category.values())
    assert len(by_category["tire"]) == 29 and all("validation" in p.parts for p in by_category["tire"])


def test_multiclass_evaluation_reports_each_category_and_their_mean(tmp_path, tiny_pipeline_dir):
    from training.evaluate_multiclass import main as evaluate

    cats = [write_category(tmp_path / "data", name, seed=i) for i, name in enumerate(("alpha", "beta"))]
    results = evaluate(["--pipeline", str(tiny_pipeline_dir), "--data", str(tmp_path / "data"), "--output-dir",
                        str(tmp_path / "eval"), "--memory", "--memory-patches", "50", "--memory-size", "64"])
    assert list(results["per_category"]) == [c.name for c in cats]
    for detector in ("ddad", "feature_memory"):
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            values = [results["per_category"][c.name][detector]["all"][metric] for c in cats]
            assert results["mean_over_categories"][detector][metric] == pytest.approx(np.mean(values))
    rates = results["per_category"]["alpha"]["ddad"]["at_threshold"]
    assert rates["one_threshold"]["threshold"] == 0.5 and "per_category_threshold" in rates
    assert (tmp_path / "eval" / "table.md").is_file()


def test_test_subsets_keep_every_defect_type_in_proportion():
    from ddad_hub.data import TestItem
    from training.evaluate_multiclass import subsample_items

    items = [TestItem(Path(f"{k}{i}.png"), k, None) for k, n in (("good", 60), ("crack", 30), ("hole", 3))
             for i in range(n)]
    kept = subsample_items(items, 31)
    counts = {k: sum(it.defect_type == k for it in kept) for k in ("good", "crack", "hole")}
    assert counts == {"good": 20, "crack": 10, "hole": 1}
    assert subsample_items(items, 1000) == items


def test_multiclass_ddad_card_has_a_model_index_per_category(tmp_path, tiny_pipeline_dir):
    import shutil

    from huggingface_hub import ModelCard

    from ddad_hub.presets import load_preset
    from training.evaluate_multiclass import main as evaluate

    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline_dir, folder)
    cats = [write_category(tmp_path / "data", name, seed=i) for i, name in enumerate(("alpha", "beta"))]
    info = {"preset": load_preset("cpu"), "category": "multiclass-2", "data": ", ".join(map(str, cats)),
            "training": {"steps": 1, "minutes": 0.1}}
    (folder / "training_info.json").write_text(json.dumps(info))
    evaluate(["--pipeline", str(folder), "--data", *map(str, cats), "--output-dir", str(folder)])
    card = ModelCard.load(folder / "README.md")
    assert sorted((r.dataset_name, r.metric_type) for r in card.data.eval_results) == sorted(
        (c, m) for c in ("alpha", "beta") for m in ("image_auroc", "pixel_auroc", "aupro"))
    assert "| **mean** | ddad |" in card.text and "never told the category" in card.text
    # named for what it is, not for the data's label "multiclass-2"
    assert card.data.model_name == "ddad-multiclass-cpu" and "multiclass-2" not in card.text
    assert "anomaly detection on **alpha and beta** images" in card.text
    # data with terms the Hub has no id for: the card names them and links the file that states them
    assert (card.data.license, card.data.license_name, card.data.license_link) == (
        "other", "training-data-terms", "LICENSE.md")
    terms = (folder / "LICENSE.md").read_text()
    assert "`alpha`: its terms were not recorded" in terms and "`beta`" in terms
    assert "non-commercial" not in terms + card.text  # no terms claimed for data sets it does not know
    (folder / "LICENSE.md").write_text("Proprietary: ACME's own parts.\n")  # the user's own terms stay, linked
    from ddad_hub.model_card import write_card

    write_card(folder)
    assert (folder / "LICENSE.md").read_text() == "Proprietary: ACME's own parts.\n"
    assert ModelCard.load(folder / "README.md").data.license_link == "LICENSE.md"


def test_evaluations_write_into_a_pipeline_folder_only_its_own_products(tmp_path, tiny_pipeline_dir):
    """A one-product folder's results and card are of its product; a multi-class folder's of all its products."""
    import shutil

    from training.evaluate import main as evaluate_one
    from training.evaluate_multiclass import main as evaluate_many

    alpha, beta = (write_category(tmp_path / "data", name, seed=i) for i, name in enumerate(("alpha", "beta")))
    single = shutil.copytree(tiny_pipeline_dir, tmp_path / "single")
    (single / "training_info.json").write_text(json.dumps({"category": "alpha", "data": str(alpha)}))
    with pytest.raises(SystemExit, match="trained on alpha; its results and card"):
        evaluate_many(["--pipeline", str(single), "--data", str(beta), "--output-dir", str(single)])
    (single / "training_info.json").write_text(json.dumps({"category": "alpha"}))  # a record naming no folder
    with pytest.raises(SystemExit, match="trained on alpha; its results and card"):
        evaluate_many(["--pipeline", str(single), "--data", str(beta), "--output-dir", str(single)])
    multi = shutil.copytree(tiny_pipeline_dir, tmp_path / "multi")
    (multi / "training_info.json").write_text(json.dumps({"categories": ["alpha", "beta"],
                                                          "data": f"{alpha}, {beta}"}))
    with pytest.raises(SystemExit, match="multi-class or DiAD pipeline"):  # named as its output folder, too
        evaluate_one(["--pipeline", str(multi), "--data", str(alpha), "--output-dir", str(multi)])
    assert not (single / "results.json").exists() and not (multi / "results.json").exists()
