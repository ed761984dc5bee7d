"""ddad_hub.model_info: what the demo's drop-down says about each model, from the files in its folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ddad_hub.model_info import card_metrics, describe, find_pipelines, trained_on

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "ddad-transistor-cpu-latent"


def test_metrics_from_results_json_or_the_card(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert find_pipelines(tmp_path) == [folder]
    assert "not recorded" in trained_on(folder) and "no test metrics" in describe(folder)
    (folder / "training_info.json").write_text(json.dumps(
        {"categories": ["bottle", "cable"], "data": "/data/mvtec_ad/", "training": {"minutes": 40}}))
    (folder / "results.json").write_text(json.dumps(
        {"ddad": {"all": {"image_auroc": 0.9, "pixel_auroc": None, "aupro": 0.5}}, "protocol": "x"}))
    assert trained_on(folder).startswith("bottle, cable") and "40 min" in trained_on(folder)
    assert card_metrics(folder) == {"ddad": {"image_auroc": 0.9, "aupro": 0.5}}  # no pixel metric: not shown
    assert "ddad: image AUROC 0.900, AUPRO 0.500" in describe(folder)
    if EMBEDDED.is_dir():  # a card's model-index alone, as a Hub snapshot without results.json has
        (folder / "results.json").unlink()
        shutil.copy(EMBEDDED / "README.md", folder / "README.md")
        # the card states the default mode's test metrics, which the model's results.json holds too
        mode = json.loads((EMBEDDED / "model_index.json").read_text())["mode"]
        r = json.loads((EMBEDDED / "results.json").read_text())[mode]["all"]
        expected = (f"model card: image AUROC {r['image_auroc']:.3f}, pixel AUROC {r['pixel_auroc']:.3f}, "
                    f"AUPRO {r['aupro']:.3f}")
        assert expected in describe(folder)


def test_multiclass_results_show_the_mean_over_categories(tmp_path):
    (tmp_path / "training_info.json").write_text(json.dumps(
        {"categories": ["transistor", "tire"], "data": "/d/transistor, /d/tire", "training": {"minutes": 62}}))
    (tmp_path / "results.json").write_text(json.dumps({
        "categories": {"transistor": "/d/transistor", "tire": "/d/tire"},
        "per_category": {"transistor": {"fused": {"all": {"image_auroc": 1.0}}}},
        "mean_over_categories": {"fused": {"image_auroc": 0.91, "pixel_auroc": 0.95, "aupro": 0.8}}}))
    assert trained_on(tmp_path) == "transistor, tire 62 min of training"  # no folder path for several categories
    assert "fused (mean over categories): image AUROC 0.910, pixel AUROC 0.950, AUPRO 0.800" in describe(tmp_path)


def test_damaged_metadata_does_not_stop_the_description(tmp_path):
    """The app describes every model at start-up: a damaged record gives less text, not a crash."""
    (tmp_path / "training_info.json").write_text(json.dumps({"categories": "tire", "training": {"minutes": "12"}}))
    for results in (b"\xff\xfe{", b"[1, 2]", json.dumps({"mean_over_categories": {"ddad": 0.9}}).encode()):
        (tmp_path / "results.json").write_bytes(results)
        text = describe(tmp_path)
        assert "tire" in text and "min of training" not in text and "no test metrics" in text
    (tmp_path / "training_info.json").write_bytes(b"\x00\xff")
    assert "not recorded" in describe(tmp_path)


def test_a_pipeline_is_refitted_only_with_its_own_products_data(tmp_path):
    import pytest

    from ddad_hub.data import DatasetLayoutError
    from ddad_hub.model_info import PipelineFolderError, check_same_product, is_multiclass, training_record

    folder = tmp_path / "run" / "pipeline"
    folder.mkdir(parents=True)
    store = tmp_path / "store" / "transistor_v2"
    store.mkdir(parents=True)
    (tmp_path / "transistor").symlink_to(store)
    record = {"data": str(tmp_path / "transistor"), "category": "transistor", "held_out_nominal": []}
    (folder / "training_info.json").write_text(json.dumps(record))
    check_same_product(folder, tmp_path / "transistor")  # the path it was trained with, a link: its own name counts
    check_same_product(folder, str(tmp_path / "transistor") + "/")
    with pytest.raises(DatasetLayoutError, match="trained on transistor, not on bottle"):
        check_same_product(folder, tmp_path / "bottle")
    # a model trained on Windows; --category (the paper's name for the product) does not make it multi-class
    record = {"data": "C:\\data\\my_screws", "category": "screw", "held_out_nominal": []}
    (folder / "training_info.json").write_text(json.dumps(record))
    check_same_product(folder, tmp_path / "my_screws")
    assert not is_multiclass(record) and is_multiclass({"categories": ["a", "b"]})
    assert not is_multiclass({"category": "alpha", "data": "/data/My data, 256px/alpha"})  # a comma in one path
    assert is_multiclass({"category": "multiclass-2", "data": "/d/alpha, /d/beta"})  # a record without categories
    # the run folder given for its pipeline, and a damaged record, are named
    with pytest.raises(FileNotFoundError, match="training run's folder: its pipeline is"):
        training_record(tmp_path / "run")
    (folder / "training_info.json").write_text("{broken")
    with pytest.raises(PipelineFolderError, match="training_info.json is damaged"):
        training_record(folder)


def test_a_latent_pipelines_image_size_follows_its_unet_not_the_autoencoders_config():
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline(latent=True)  # 16 x 16 latents of a 2x autoencoder: 32 px images
    assert pipe.sample_size == (32, 32)
    pipe.vae.register_to_config(sample_size=512)  # a Hub autoencoder states the size it was trained at
    assert pipe.sample_size == (32, 32)



def test_scripts_that_refit_one_product_refuse_a_multiclass_pipeline_before_loading_it(tmp_path):
    import pytest
    from conftest import load_script

    from ddad_hub.model_info import PipelineFolderError

    folder = tmp_path / "pipeline"  # a record alone: the scripts must refuse before they load any weights
    folder.mkdir()
    (folder / "training_info.json").write_text(json.dumps(
        {"categories": ["bottle", "tire"], "data": "/d/bottle, /d/tire", "held_out_nominal": ["000.png"]}))
    (tmp_path / "bottle").mkdir()
    for script, flags, instead in [
        ("fit_d3ad", ["--pipeline"], "refit it with training/finalize.py --pipeline"),
        ("validate", ["--pipelines"], "compare it with evaluate_multiclass.py's held-out thresholds"),
        ("adapt_encoder", ["--output-dir", str(tmp_path / "out"), "--pipeline"], "adapt_encoder.py adapts one"),
        ("recalibrate", ["--pipeline"], "its held-out images are named by file name.*training/finalize.py --pipeline"),
    ]:
        module = load_script(script)
        with pytest.raises(PipelineFolderError, match=f"{folder} is a multi-class pipeline: {instead}"):
            module.main([*flags, str(folder), "--data", str(tmp_path / "bottle")])
    assert not (tmp_path / "out").exists()


def test_the_embedded_models_cards_are_what_the_card_writer_renders(tmp_path):
    """A card edited by hand, or left behind by a change of the writer, would state what the model is not."""
    from ddad_hub.model_card import write_card

    models = [p for p in sorted((EMBEDDED.parent).glob("*")) if (p / "training_info.json").is_file()]
    if not models:
        import pytest

        pytest.skip("no embedded models in this checkout")
    for model in models:
        copy = shutil.copytree(model, tmp_path / model.name, ignore=shutil.ignore_patterns("*.safetensors"))
        write_card(copy)
        for name in ("README.md", "LICENSE.md"):
            if (model / name).is_file() or (copy / name).is_file():
                assert (copy / name).read_text() == (model / name).read_text(), f"{model.name}/{name}"
