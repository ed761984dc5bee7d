"""Test folders whose defect types have image-level labels only (no masks), evaluated end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_pipeline
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _part(rng, defect: str | None = None) -> tuple[Image.Image, Image.Image]:
    """A textured grey part; "scratch" paints a white bar, "dent" a dark blob. Returns the image and its mask."""
    image = (110 + rng.normal(0, 12, (32, 32, 3))).clip(0, 255)
    mask = np.zeros((32, 32), np.uint8)
    if defect == "scratch":
        mask[14:18, 4:28] = 255
    elif defect == "dent":
        mask[8:20, 8:20] = 255
    image[mask > 0] = 250 if defect == "scratch" else 10
    return Image.fromarray(image.astype(np.uint8)), Image.fromarray(mask)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """good + scratch (with masks) + dent (no ground_truth folder: image-level labels only)."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for split, kind, n in (("train", "good", 6), ("test", "good", 4), ("test", "scratch", 3), ("test", "dent", 3)):
        (root / split / kind).mkdir(parents=True)
        for i in range(n):
            image, mask = _part(rng, None if kind == "good" else kind)
            image.save(root / split / kind / f"{i:03d}.png")
            if kind == "scratch":
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                mask.save(root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    make_tiny_pipeline(threshold=0.5).save_pretrained(folder)
    (folder / "training_info.json").write_text(json.dumps({"held_out_nominal": ["000.png", "001.png"]}))
    return folder


def _run(args: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_evaluate_reports_maskless_types_by_image_metrics(mixed_folder, tiny_model, tmp_path):
    out = _run(["training/evaluate.py", "--pipeline", str(tiny_model), "--data", str(mixed_folder), "--output-dir",
                str(tmp_path), "--threads", "1", "--memory-coreset", "0.5", "--batch-size", "8"])
    assert "no masks for dent" in out and "flagged at threshold" in out
    results = json.loads((tmp_path / "results.json").read_text())
    for detector in ("ddad", "feature_memory"):
        r = results[detector]
        assert 0 <= r["dent"]["image_auroc"] <= 1 and r["dent"]["pixel_auroc"] is None and r["dent"]["aupro"] is None
        assert "no masks" in r["dent"]["pixel_metrics"]
        assert 0 <= r["scratch"]["pixel_auroc"] <= 1 and 0 <= r["scratch"]["aupro"] <= 1
        assert 0 <= r["all"]["pixel_auroc"] <= 1 and "dent" in r["all"]["pixel_metrics"]
        assert r["all"]["n_images"] == 10 and r["dent"]["n_images"] == 7
    # the memory sees the dark blobs, which a random U-Net cannot: a check that dent's labels are used, not dropped
    assert results["feature_memory"]["dent"]["image_auroc"] > 0.9
    rates = results["at_threshold"]["ddad"]["flagged_rate"]
    assert set(rates) == {"good", "scratch", "dent"} and all(0 <= v <= 1 for v in rates.values())
    assert (tmp_path / "evaluation.png").is_file()


def test_a_folder_without_any_masks_is_evaluated_and_validated(mixed_folder, tiny_model, tmp_path):
    data = tmp_path / "data"
    for split, kind in (("train", "good"), ("test", "good"), ("test", "dent")):
        (data / split / kind).mkdir(parents=True)
        for f in (mixed_folder / split / kind).iterdir():
            (data / split / kind / f.name).write_bytes(f.read_bytes())
    out = _run(["training/evaluate.py", "--pipeline", str(tiny_model), "--data", str(data), "--output-dir",
                str(tmp_path / "eval"), "--threads", "1", "--no-memory"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["ddad"]["all"]["pixel_auroc"] is None and "skipped" in results["ddad"]["all"]["pixel_metrics"]
    assert 0 <= results["ddad"]["all"]["image_auroc"] <= 1 and "pixel AUROC n/a" in out
    # validate.py scores held-out good training images and synthetic defects: it never needs the test masks
    out = _run(["training/validate.py", "--data", str(data), "--pipelines", str(tiny_model)])
    assert "image AUROC" in out


def test_a_test_set_of_good_images_only_gives_no_auroc_and_valid_json(mixed_folder, tiny_model, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        (data / split / "good").mkdir(parents=True)
        for f in (mixed_folder / split / "good").iterdir():
            (data / split / "good" / f.name).write_bytes(f.read_bytes())
    out = _run(["training/evaluate.py", "--pipeline", str(tiny_model), "--data", str(data), "--output-dir",
                str(tmp_path / "eval"), "--threads", "1", "--no-memory"])
    assert "image AUROC n/a" in out and "no defective test images" in out
    text = (tmp_path / "eval" / "results.json").read_text()
    assert "NaN" not in text  # JSON has no NaN: strict parsers (browsers, Node) refuse the file
    results = json.loads(text)
    assert results["ddad"]["all"]["image_auroc"] is None
    assert results["at_threshold"]["ddad"]["true_positive_rate"] is None


def test_evaluate_multiclass_leaves_maskless_types_out_of_pixel_metrics(mixed_folder, tiny_model, tmp_path):
    """As evaluate.py: a type with image labels only gets image AUROC, and its pixels are not counted as nominal."""
    import shutil

    from training.evaluate_multiclass import main as evaluate

    data = tmp_path / "line"
    shutil.copytree(mixed_folder, data / "part")
    results = evaluate(["--pipeline", str(tiny_model), "--data", str(data / "part"), "--output-dir",
                        str(tmp_path / "eval"), "--modes", "ddad", "--threads", "1"])
    r = results["per_category"]["part"]["ddad"]
    assert r["dent"]["pixel_auroc"] is None and "no masks" in r["dent"]["pixel_metrics"]
    assert 0 <= r["dent"]["image_auroc"] <= 1 and "dent" in r["all"]["pixel_metrics"]
    # "all" pixel metrics are those of the good and scratch images, which is what scratch's own row scores
    assert r["all"]["pixel_auroc"] == pytest.approx(r["scratch"]["pixel_auroc"])
    assert "NaN" not in (tmp_path / "eval" / "results.json").read_text()
    # a second product without any masks: the pixel mean is over the first only, and the tables say so
    shutil.copytree(mixed_folder, data / "plain", ignore=shutil.ignore_patterns("ground_truth"))
    both = evaluate(["--pipeline", str(tiny_model), "--data", str(data / "part"), str(data / "plain"),
                     "--output-dir", str(tmp_path / "eval2"), "--modes", "ddad", "--threads", "1"])
    mean = both["mean_over_categories"]["ddad"]
    assert mean["pixel_auroc"] == pytest.approx(both["per_category"]["part"]["ddad"]["all"]["pixel_auroc"])
    assert mean["pixel_auroc_of"] == ["part"] and "image_auroc_of" not in mean
    table = (tmp_path / "eval2" / "table.md").read_text()
    assert f"{mean['pixel_auroc']:.3f}*" in table
    assert "mean over the categories that have the metric only (part)" in table
