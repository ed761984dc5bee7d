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
