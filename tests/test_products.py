"""A multi-class pipeline recognises the product an image shows and judges it by that product's threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_pipeline, write_category
from PIL import Image

from ddad_hub import FeatureEncoder
from ddad_hub.data import (
    DatasetLayoutError,
    find_categories,
    list_test_items,
    load_images,
    split_categories,
    to_unit_range,
)
from ddad_hub.inspection import inspect_files, product_labels
from ddad_hub.model_info import PipelineFolderError
from ddad_hub.models.feature_memory import FeatureMemory
from ddad_hub.pipelines.loading import load_pipeline
from ddad_hub.presets import load_preset
from ddad_hub.recipe import finalize_run, fit_category_thresholds, per_category_maxima, recalibrate
from training.evaluate_multiclass import main as evaluate_multiclass


def _parts(n: int, level: float, seed: int, size: int = 64) -> torch.Tensor:
    """Flat parts of one grey level with a little noise, in [-1, 1]: a level is a product."""
    g = torch.Generator().manual_seed(seed)
    return (level + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return FeatureEncoder(backbone="efficientnet_lite0").eval()


def test_a_grouped_bank_recognises_products_and_keeps_them_through_save_and_load(encoder, tmp_path):
    images = torch.cat([_parts(3, -0.6, 0), _parts(2, 0.5, 1)])
    memory = FeatureMemory.fit(encoder, images, coreset_ratio=0.25, image_size=64, groups=[0, 0, 0, 1, 1],
                               group_names=["dark", "light"])
    assert memory.config.group_names == ("dark", "light")
    assert torch.equal(memory.bank_groups, (memory.bank_sources >= 3).long())  # each entry's product, by source
    test = torch.cat([_parts(2, -0.6, 5), _parts(1, 0.5, 6)])
    assert memory.infer_groups(encoder, test) == ["dark", "dark", "light"]
    maps, scores, groups, _ = memory.anomaly_maps(encoder, test, return_groups=True)
    torch.testing.assert_close(maps, memory.anomaly_maps(encoder, test)[0])  # the same search gives both
    assert groups == ["dark", "dark", "light"]
    # with every dark image left out, the nearest entries are light ones: indices map back into the whole bank
    with memory.leaving_out([0, 1, 2]):
        assert memory.infer_groups(encoder, test) == ["light"] * 3

    memory.save_pretrained(tmp_path)
    loaded = FeatureMemory.from_pretrained(tmp_path)
    assert torch.equal(loaded.bank_groups, memory.bank_groups) and loaded.has_groups
    assert loaded.infer_groups(encoder, test) == ["dark", "dark", "light"]

    single = FeatureMemory.fit(encoder, images[:3], coreset_ratio=0.25, image_size=64)
    assert not single.has_groups and "bank_groups" not in dict(single.named_buffers())
    with pytest.raises(ValueError, match="no groups"):
        single.infer_groups(encoder, test)
    with pytest.raises(ValueError, match="one name per distinct group"):
        FeatureMemory.fit(encoder, images, groups=[0, 0, 0, 1, 1], group_names=["dark"])


def test_per_category_maxima():
    assert per_category_maxima([1.0, 3.0, 2.0, 0.5], ["a", "a", "b", "b"]) == {"a": 3.0, "b": 2.0}
    with pytest.raises(ValueError, match="3 scores for 2"):
        per_category_maxima([1.0, 2.0, 3.0], ["a", "b"])


def test_each_image_is_judged_by_the_threshold_of_the_product_it_shows(encoder):
    pipe = make_tiny_pipeline(threshold=0.5)
    memory = FeatureMemory.fit(pipe.feature_encoder, torch.cat([_parts(3, -0.6, 0), _parts(3, 0.5, 1)]),
                               coreset_ratio=0.25, image_size=64, groups=[0, 0, 0, 1, 1, 1],
                               group_names=["dark", "light"])
    pipe.register_modules(feature_memory=memory)
    images = to_unit_range(torch.cat([_parts(1, -0.6, 7), _parts(1, 0.5, 8)]))
    plain = pipe(images, output_type="pt", mode="ddad")
    assert plain.categories is None  # no per-product thresholds yet: the shared one for every image
    assert torch.equal(plain.image_thresholds, torch.full((2,), 0.5))
    scores = plain.image_scores
    # thresholds on either side of each image's score: the verdicts show which threshold judged which image
    pipe.register_to_config(category_thresholds={"ddad": {"dark": float(scores[0]) + 1, "light": float(scores[1]) - 1}})
    out = pipe(images, output_type="pt", mode="ddad")
    assert out.categories == ["dark", "light"]
    torch.testing.assert_close(out.image_thresholds, torch.stack([scores[0] + 1, scores[1] - 1]))
    assert out.is_anomalous.tolist() == [False, True]
    assert torch.equal(out.masks, out.anomaly_maps > out.image_thresholds[:, None, None])
    assert out.threshold == 0.5 and torch.equal(out.image_scores, scores)  # scores do not depend on thresholds
    shared = pipe(images, output_type="pt", mode="ddad", per_category_thresholds=False)
    assert shared.categories is None and torch.equal(shared.is_anomalous, plain.is_anomalous)
    # a product without its own threshold falls back to the shared one
    pipe.register_to_config(category_thresholds={"ddad": {"dark": 99.0}})
    assert pipe(images, output_type="pt", mode="ddad").image_thresholds.tolist() == [99.0, 0.5]


def _grouped_pipe(threshold: float = 0.5):
    """A tiny pipeline whose memory knows two products (dark and light flat parts) and a fused mode on DDAD maps
    whose normalisation divides the memory's map (about a hundredth of the random U-Net's) by 0.01, so that a fused
    map is half the reconstruction map plus half the memory's, the two weighing alike."""
    pipe = make_tiny_pipeline(threshold=threshold)
    memory = FeatureMemory.fit(pipe.feature_encoder, torch.cat([_parts(3, -0.6, 0), _parts(3, 0.5, 1)]),
                               coreset_ratio=0.25, image_size=64, groups=[0, 0, 0, 1, 1, 1],
                               group_names=["dark", "light"])
    pipe.register_modules(feature_memory=memory)
    pipe.register_to_config(fused_base="ddad", fused_stats={"ddad": [0.0, 1.0], "memory": [0.0, 0.01]},
                            fused_rule="sum", fused_weight=0.5, fused_threshold=threshold)
    return pipe


def test_a_known_product_is_compared_with_its_own_good_patches_only():
    pipe = _grouped_pipe()
    memory = pipe.feature_memory
    image = _parts(1, -0.6, 7)
    image[:, :, 16:48, 16:48] = _parts(1, 0.5, 8)[:, :, 16:48, 16:48]  # a dark part with a light product's patch
    # the whole bank matches the patch to the light product's entries; the dark product's alone do not hold it
    everywhere = memory.anomaly_maps(pipe.feature_encoder, image)[0]
    dark_only = memory.anomaly_maps(pipe.feature_encoder, image, groups=["dark"])[0]
    assert (dark_only >= everywhere - 1e-5).all()
    assert dark_only[:, 24:40, 24:40].mean() > 2 * everywhere[:, 24:40, 24:40].mean()

    x = to_unit_range(image)
    recognised = pipe(x, output_type="pt", mode="fused")
    told = pipe(x, output_type="pt", mode="fused", category="dark")
    assert recognised.categories is None and told.categories == ["dark"]  # (no per-product thresholds here)
    gain = told.anomaly_maps - recognised.anomaly_maps  # the same reconstruction: only the memory's half moves
    lift = float((dark_only - everywhere)[:, 24:40, 24:40].mean())
    assert (gain >= -1e-4).all() and float(gain[:, 24:40, 24:40].mean()) > 0.25 * lift / 0.01
    assert told.image_scores[0] > recognised.image_scores[0]
    # D3AD's first estimate (the memory's image score) comes from the same restricted search
    told_maps, told_first, (names, _) = pipe.memory_for_categories(image, ["dark"])
    assert names == ["dark"] and told_first[0] > pipe.first_estimate(image)[0]
    torch.testing.assert_close(told_maps, pipe.memory_maps(image)[0] + (dark_only - everywhere), atol=1e-5, rtol=0)
    # the bank is whole again after the call
    assert memory._active is None
    torch.testing.assert_close(memory.anomaly_maps(pipe.feature_encoder, image)[0], everywhere)


def test_a_stated_product_picks_the_threshold_and_flags_an_image_unlike_it():
    pipe = _grouped_pipe()
    memory = pipe.feature_memory
    good = {"dark": _parts(2, -0.6, 9), "light": _parts(2, 0.5, 10)}
    limits = {name: float(memory.recognise(pipe.feature_encoder, x)[1].max()) for name, x in good.items()}
    memory.register_to_config(group_limits=limits, unknown_margin=1.5)
    pipe.register_to_config(category_thresholds={"ddad": {"dark": 10.0, "light": 20.0}})
    light = to_unit_range(_parts(2, 0.5, 11))
    recognised = pipe(light, output_type="pt", mode="ddad")
    assert recognised.categories == ["light", "light"] and recognised.image_thresholds.tolist() == [20.0, 20.0]
    assert not recognised.unknown_category.any()
    # said to be dark (one name for all, or one per image): judged by dark's threshold, and flagged as unlike it
    for stated in ("dark", ["dark", "light"]):
        out = pipe(light, output_type="pt", mode="ddad", category=stated)
        names = [stated] * 2 if isinstance(stated, str) else stated
        assert out.categories == names
        assert out.image_thresholds.tolist() == [{"dark": 10.0, "light": 20.0}[n] for n in names]
        assert out.unknown_category.tolist() == [n == "dark" for n in names]
        torch.testing.assert_close(out.image_scores, recognised.image_scores)  # DDAD's map reads no memory
    # with the shared threshold, the stated product still names the row and restricts the memory
    shared = pipe(light, output_type="pt", mode="ddad", category="light", per_category_thresholds=False)
    assert shared.categories == ["light", "light"] and shared.image_thresholds.tolist() == [0.5, 0.5]
    rows = [item.row for item in inspect_files(pipe, [Image.new("RGB", (64, 64), (200, 200, 200))] * 2,
                                               mode="ddad", category="dark")]
    assert [r.product for r in rows] == ["dark (stated, but unlike its good parts)"] * 2
    assert [r.verdict for r in rows] == ["unknown product"] * 2 and [r.threshold for r in rows] == [10.0, 10.0]
    with pytest.raises(ValueError, match="one product for all files"):
        next(inspect_files(pipe, ["a.png"], category=["dark"]))


def test_a_stated_product_is_checked():
    pipe = _grouped_pipe()
    image = to_unit_range(_parts(2, -0.6, 12))
    with pytest.raises(ValueError, match=r"unknown product\(s\) \['metal'\].*\['dark', 'light'\]"):
        pipe(image, category="metal")
    with pytest.raises(ValueError, match="3 categories for 2 images"):
        pipe(image, category=["dark", "dark", "light"])
    with pytest.raises(ValueError, match="knows no products"):
        make_tiny_pipeline()(image, category="dark")
    single = make_tiny_pipeline()
    single.register_modules(feature_memory=FeatureMemory.fit(single.feature_encoder, _parts(3, -0.6, 0),
                                                             coreset_ratio=0.25, image_size=64))
    with pytest.raises(ValueError, match="knows no products"):
        single(image, category="dark")
    with pytest.raises(ValueError, match="no groups"):
        single.feature_memory.anomaly_maps(single.feature_encoder, image, groups=["dark"])
    with pytest.raises(ValueError, match="no product"):
        pipe.feature_memory.anomaly_maps(pipe.feature_encoder, image, groups=["metal"])


def test_concurrent_calls_stating_different_products_do_not_mix():
    """The app serves calls from several threads with one pipeline: a product one call states must never reach
    another call's search (as a shared restriction of the memory did: errors, wrong products, a stuck bank)."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = _grouped_pipe()
    pipe.register_to_config(compute_dtype="float32")
    image = _parts(2, -0.6, 7)
    image[:, :, 16:48, 16:48] = _parts(2, 0.5, 8)[:, :, 16:48, 16:48]
    x = to_unit_range(image)

    def call(category):
        out = pipe(x, output_type="pt", mode="fused", category=category)
        return out.anomaly_maps, out.categories

    expected = {c: call(c) for c in (None, "dark", "light")}
    assert not torch.equal(expected["dark"][0], expected["light"][0])
    asked = [None, "dark", "light"] * 8
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(call, asked))
    for category, (maps, names) in zip(asked, answers):
        torch.testing.assert_close(maps, expected[category][0], rtol=1e-5, atol=1e-6)
        assert names == expected[category][1]
    assert pipe.feature_memory._active is None


def test_a_multiclass_run_ends_with_per_product_thresholds(tmp_path):
    cats = [write_category(tmp_path / "data", name, n_train=8, seed=i) for i, name in enumerate(("alpha", "beta"))]
    train, held, _ = split_categories(find_categories(cats), holdout=0.25)
    tiny = make_tiny_pipeline()
    preset = load_preset("cpu", resolution=32, map_size=64, start_step=100, skip=50, w=2.0, holdout=0.25,
                         d3ad={"coreset_ratio": 0.2, "t_max": [80]}, memory={"coreset_ratio": 0.2, "folds": 2},
                         category_threshold_min_images=2)
    folder = finalize_run(tmp_path / "run", tiny.unet, preset, tmp_path / "data", held, {"steps": 0},
                          encoder=tiny.feature_encoder, train_paths=train)
    pipe = load_pipeline(folder)
    info = json.loads((folder / "training_info.json").read_text())
    own = pipe.config.category_thresholds
    assert set(own) == {"ddad", "d3ad", "fused"} and all(set(v) == {"alpha", "beta"} for v in own.values())
    for mode in own:  # the shared threshold is the highest over all held-out images, so the highest of the products'
        assert max(own[mode].values()) == pytest.approx(pipe.threshold_for(mode))
    assert info["category_thresholds"]["held_out_recognition_accuracy"] == 1.0
    assert list(pipe.feature_memory.config.group_names) == ["alpha", "beta"]
    card = (folder / "README.md").read_text()
    assert "100.0% of held-out nominal images recognised correctly" in card
    assert f"alpha {own[pipe.config.mode]['alpha']:.4f}" in card
    assert 'states it (`pipe(image, category="alpha")`)' in card
    for cat in cats:
        items = list_test_items(cat)
        out = pipe([it.image for it in items], output_type="np")
        assert out.categories == [cat.name] * len(items)
        assert out.image_thresholds.tolist() == pytest.approx([own[pipe.config.mode][cat.name]] * len(items))
        # the batch inspection (app, predict.py) shows the product and the threshold that judged each file
        rows = [item.row for item in inspect_files(pipe, [it.image for it in items], batch_size=3)]
        # (the product's name, or "unknown (nearest: <name>)" for an image unlike any held-out good one: these
        # tiny products hold out two images each, so their limits are tight and defects may pass them)
        assert [r.product for r in rows] == product_labels(out) and all(cat.name in r.product for r in rows)
        assert [r.threshold for r in rows] == pytest.approx([own[pipe.config.mode][cat.name]] * len(items))
        unknown = out.unknown_category if out.unknown_category is not None else [False] * len(items)
        assert [r.verdict for r in rows] == ["unknown product" if u else "defective" if f else "good"
                                             for f, u in zip(out.is_anomalous, unknown)]
    results = evaluate_multiclass(["--pipeline", str(folder), "--data", *map(str, cats), "--output-dir",
                                   str(tmp_path / "eval"), "--modes", "fused", "--holdout", "0.25"])
    for cat in cats:
        at = results["per_category"][cat.name]["fused"]["at_threshold"]
        assert at["recognised_product_threshold"]["recognised"] == 1.0
        assert at["per_category_threshold"]["threshold"] == own["fused"][cat.name]  # the pipeline's own, measurable
    # the product stated instead of recognised: each image searched among its own product's entries only
    stated = evaluate_multiclass(["--pipeline", str(folder), "--data", *map(str, cats), "--output-dir",
                                  str(tmp_path / "stated"), "--modes", "fused", "--holdout", "0.25",
                                  "--stated-category"])
    assert stated["stated_category"] and "product stated" in stated["protocol"]
    for cat in cats:
        at = stated["per_category"][cat.name]["fused"]["at_threshold"]
        assert at["stated_product_threshold"]["recognised_as"] == {cat.name: len(list_test_items(cat))}
    with pytest.raises(SystemExit, match=r"not among its products \['alpha', 'beta'\]"):
        evaluate_multiclass(["--pipeline", str(folder), "--data", str(cats[0]),
                             str(write_category(tmp_path / "unseen", "gamma", n_train=4, seed=5)),
                             "--output-dir", str(tmp_path / "x"), "--stated-category"])
    from training.predict import main as predict

    inputs = tmp_path / "station"
    inputs.mkdir()
    for item in list_test_items(cats[1])[:2]:
        shutil.copy2(item.image, inputs / Path(item.image).name)
    csv_rows = (predict(["--pipeline", str(folder), "--input-dir", str(inputs), "--output-dir",
                         str(tmp_path / "predicted"), "--category", "beta"]) / "scores.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and all(",beta" in row for row in csv_rows[1:])
    with pytest.raises(SystemExit, match=r"--category: unknown product\(s\) \['gamma'\]"):
        predict(["--pipeline", str(folder), "--input-dir", str(inputs), "--output-dir", str(tmp_path / "p2"),
                 "--category", "gamma"])
    assert not (tmp_path / "p2").exists()  # refused before any output

    # finalize.py --pipeline re-finalises it from the saved networks: the split is drawn again from the run's seed
    # and must name the recorded held-out images, or the held-out images might have been trained on
    from training.finalize import main as finalize

    again = finalize(["--pipeline", str(folder), "--output-dir", str(tmp_path / "again")])
    redone = json.loads((again / "training_info.json").read_text())
    assert redone["held_out_nominal"] == info["held_out_nominal"] and redone["categories"] == info["categories"]
    assert redone["category"] == "multiclass-2"
    assert set(load_pipeline(again).config.category_thresholds["fused"]) == {"alpha", "beta"}
    # the limits for unknown products, fitted by finalisation or again (the bank refitted equal) by the script
    fitted = info["unknown_products"]
    assert set(fitted["limits"]) == {"alpha", "beta"} and fitted["margin"] >= fitted["highest_known_ratio"]
    assert pipe.feature_memory.config.unknown_margin == pytest.approx(fitted["margin"])
    from training.fit_unknown_products import main as fit_unknown

    pipe.feature_memory.register_to_config(group_limits=None, unknown_margin=None)  # as a model finalised before
    pipe.save_pretrained(tmp_path / "older")
    old_record = {k: v for k, v in info.items() if k != "unknown_products"}
    (tmp_path / "older" / "training_info.json").write_text(json.dumps(old_record))
    shutil.copy2(folder / "README.md", tmp_path / "older" / "README.md")
    assert load_pipeline(tmp_path / "older")(list_test_items(cats[0])[0].image).unknown_category is None
    refitted = fit_unknown(["--pipeline", str(tmp_path / "older"), "--output-dir", str(tmp_path / "unknown")])
    redone = json.loads((refitted / "training_info.json").read_text())["unknown_products"]
    assert redone["limits"] == pytest.approx(fitted["limits"]) and redone["margin"] == pytest.approx(fitted["margin"])
    assert load_pipeline(refitted).feature_memory.config.unknown_margin == pytest.approx(fitted["margin"])
    with pytest.raises(PipelineFolderError, match="would write over"):
        fit_unknown(["--pipeline", str(refitted), "--output-dir", str(tmp_path / "unknown")])

    with pytest.raises(PipelineFolderError, match="does not give the held-out images it records"):
        finalize(["--pipeline", str(folder), "--output-dir", str(tmp_path / "other"), "--set", "holdout=0.5"])
    assert not (tmp_path / "other").exists()

    # evaluate.py (one category at a time) judges each test image by its recognised product's threshold
    from training.evaluate import main as evaluate

    other = write_category(tmp_path / "more", "gamma", n_train=4, seed=5)
    with pytest.raises(DatasetLayoutError, match="trained on alpha, beta.*, not on gamma: pass --output-dir"):
        evaluate(["--pipeline", str(folder), "--data", str(other)])  # would write gamma's numbers into its card
    with pytest.raises(SystemExit, match="multi-class or DiAD pipeline, whose folder keeps evaluate_multiclass.py"):
        evaluate(["--pipeline", str(folder), "--data", str(cats[1])])  # one product's numbers over all products'

    for modes in (["fused"], ["ddad", "d3ad", "fused"]):  # the product from its own search, or from fused's
        single = evaluate(["--pipeline", str(folder), "--data", str(cats[1]), "--output-dir", str(tmp_path / "ev1"),
                           "--modes", *modes, "--no-memory"])
        assert single["recognised_products"] == {"beta": len(list_test_items(cats[1]))}
        for mode in modes:
            assert single["at_threshold"][mode]["thresholds_used"] == pytest.approx([own[mode]["beta"]], abs=1e-6)

    # recalibrating without product names drops the per-product thresholds it cannot refresh...
    nominal = load_images(held, 64)
    names = [p.parent.parent.parent.name for p in held]
    before = dict(own)
    result = recalibrate(pipe, nominal)
    assert "ddad" not in pipe.config.category_thresholds
    assert pipe.config.category_thresholds["fused"] == before["fused"]  # kept, as the shared fused threshold is
    assert "memory_modes" in result
    # ...and with them, refreshes them from the same scores as the shared threshold
    recalibrate(pipe, nominal, categories=names, min_images=1)
    assert pipe.config.category_thresholds["ddad"] == per_category_maxima(result["nominal_scores"], names)
    recalibrate(pipe, nominal, categories=names, min_images=len(names))  # as finalisation: too few images, no own
    assert pipe.config.category_thresholds["ddad"] == {}
    # a product with fewer held-out images than the minimum keeps the shared threshold
    fitted = fit_category_thresholds(pipe, nominal, ["alpha", "alpha", "alpha", "beta"], {"ddad": [1.0, 2.0, 3.0, 9.0]},
                                     min_images=3)
    assert fitted["thresholds"] == {"ddad": {"alpha": 3.0}} and fitted["held_out_images"] == {"alpha": 3, "beta": 1}


def test_a_multiclass_pipeline_tells_an_image_of_no_trained_product_from_its_products(tmp_path):
    """Limits per product and a margin from held-out images alone; an image of neither product is flagged."""
    from ddad_hub.recipe import fit_unknown_products

    pipe = make_tiny_pipeline(threshold=0.5)
    train, held = torch.cat([_parts(4, -0.6, 0), _parts(4, 0.5, 1)]), torch.cat([_parts(3, -0.6, 2), _parts(3, 0.5, 3)])
    memory = FeatureMemory.fit(pipe.feature_encoder, torch.cat([train, held]), coreset_ratio=0.25, image_size=64,
                               groups=[0] * 4 + [1] * 4 + [0] * 3 + [1] * 3, group_names=["dark", "light"])
    pipe.register_modules(feature_memory=memory)
    pipe.register_to_config(category_thresholds={"ddad": {"dark": 1.0, "light": 1.0}})
    checker = ((torch.arange(64)[:, None] // 8 + torch.arange(64)[None] // 8) % 2).float() * 1.6 - 0.8
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    images = to_unit_range(torch.cat([_parts(1, -0.6, 7), _parts(1, 0.5, 8), checker.expand(1, 3, 64, 64),
                                      noise[None]]))
    before = pipe(images, output_type="pt", mode="ddad")
    assert before.categories is not None and before.category_distances is None and before.unknown_category is None

    info = fit_unknown_products(pipe, held, ["dark"] * 3 + ["light"] * 3, held_out_ids=list(range(8, 14)))
    assert info["separated"] and info["highest_known_ratio"] < info["margin"] < info["lowest_unknown_ratio"]
    assert max(info["known_ratios"]["nominal"]) == pytest.approx(1.0)  # the limit is the farthest held-out image
    assert pipe.feature_memory.config.unknown_margin == info["margin"]
    out = pipe(images, output_type="pt", mode="ddad")
    assert out.unknown_category.tolist() == [False, False, True, True]
    assert out.categories[:2] == ["dark", "light"] and torch.equal(out.is_anomalous, before.is_anomalous)
    assert (out.category_distances[:2] < 1.5).all() and (out.category_distances[2:] > info["margin"]).all()
    assert pipe(images, output_type="pt", mode="ddad", per_category_thresholds=False).unknown_category is None
    # a batch gives an image of no product the verdict "unknown product", whatever its score says as another one
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(paths[-1])
    pipe.register_to_config(category_thresholds={"ddad": {"dark": 1e9, "light": 1e9}})  # every score passes
    rows = [item.row for item in inspect_files(pipe, paths, batch_size=2, mode="ddad")]
    assert [r.verdict for r in rows] == ["good", "good", "unknown product", "unknown product"]
    assert rows[2].product.startswith("unknown (nearest: ")
    pipe.register_to_config(category_thresholds={"ddad": {"dark": 1.0, "light": 1.0}})
    names, distances, unknown = pipe.recognise_products(images)  # the same, without reconstructing the images
    assert names == out.categories and torch.equal(unknown, out.unknown_category)
    torch.testing.assert_close(distances, out.category_distances)

    pipe.save_pretrained(tmp_path / "p")  # the limits and the margin are part of the memory's config
    loaded = load_pipeline(tmp_path / "p")
    assert loaded.feature_memory.config.group_limits == pytest.approx(info["limits"])
    assert loaded(images, output_type="np", mode="ddad").unknown_category.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="no product"):
        with pipe.feature_memory.without_groups(["grey"]):
            pass
    with pytest.raises(ValueError, match="would empty the bank"):
        with pipe.feature_memory.without_groups(["dark", "light"]):
            pass


def test_a_mixed_batch_is_tallied_per_product():
    from ddad_hub.inspection import InspectionRow, product_tally, tally_text

    rows = [InspectionRow("a", 1.0, "defective", product="bottle"), InspectionRow("b", 0.1, "good", product="bottle"),
            InspectionRow("c", error="could not read"),
            InspectionRow("d", 0.2, "unknown product", product="unknown (nearest: tire)")]  # judged good as a tire
    assert product_tally(rows) == {"bottle": (1, 2), "unknown (nearest: tire)": (1, 1)}  # not passed as good
    assert tally_text(rows) == "bottle 1 of 2 flagged, unknown (nearest: tire) 1 of 1 flagged"
    assert tally_text([InspectionRow("a", 1.0, "good")]) == ""  # a one-product model names no product
