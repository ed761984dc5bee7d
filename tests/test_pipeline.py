"""DDADPipeline: save/load round trips, Hub-cache loading offline, damaged folders, batching, inputs, outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

from ddad_hub import DDADPipeline


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(threshold=0.5)


def _images(n: int = 3, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size + 7, 3)) * 255).astype(np.uint8)) for _ in range(n)]


def _gens(n: int, seed: int = 7) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_round_trip_is_bit_identical(pipe, tmp_path):
    images = _images()
    before = pipe(images, generator=_gens(3), output_type="np")
    pipe.save_pretrained(tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["feature_encoder/config.json", "feature_encoder/diffusion_pytorch_model.safetensors",
                     "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors"]
    loaded = DDADPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(images, generator=_gens(3), output_type="np")
    assert np.array_equal(before.anomaly_maps, after.anomaly_maps)
    assert np.array_equal(before.image_scores, after.image_scores)
    assert loaded.config.threshold == 0.5 and loaded.config.map_size == 64


def offline_hub_cache(tmp_path: Path, monkeypatch, folder: Path, repo_id: str) -> Path:
    """An offline Hugging Face cache holding ``folder`` as ``repo_id``'s main snapshot (returned), as a download
    leaves it, with the Hub switched offline."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return repo / "snapshots" / commit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_loads_repo_id_from_offline_hub_cache(pipe, tmp_path, monkeypatch, dtype):
    """Bit-identical in both precisions, on CPUs with and without native bf16 (the loaded weights are aligned
    copies, so the same kernels run for both pipelines)."""
    saved = tmp_path / "saved"
    pipe.save_pretrained(saved)
    offline_hub_cache(tmp_path, monkeypatch, saved, "acme/ddad-tiny")
    loaded = DDADPipeline.from_pretrained("acme/ddad-tiny")
    loaded.set_progress_bar_config(disable=True)
    images = _images(1)
    a = pipe(images, generator=_gens(1), output_type="np", autocast_dtype=dtype).image_scores
    b = loaded(images, generator=_gens(1), output_type="np", autocast_dtype=dtype).image_scores
    assert np.array_equal(a, b)
    with pytest.raises(Exception, match="(?i)offline|cache|local"):
        DDADPipeline.from_pretrained("acme/not-cached")


def test_subfolder_loads_one_of_several_pipelines_locally_and_from_the_offline_cache(pipe, tmp_path, monkeypatch):
    """One folder or Hub repo holding several pipelines, as diffusers users know ``subfolder=`` from components."""
    from ddad_hub import load_pipeline

    root = tmp_path / "line"
    pipe.save_pretrained(root / "transistor")
    shutil.copytree(root / "transistor", root / "nested" / "bottle")
    assert DDADPipeline.from_pretrained(root, subfolder="transistor").name_or_path == str(root / "transistor")
    assert load_pipeline(root, subfolder="nested/bottle/").name_or_path == str(root / "nested" / "bottle")
    with pytest.raises(FileNotFoundError, match="no subfolder 'tire'"):
        DDADPipeline.from_pretrained(root, subfolder="tire")
    for outside in ("../line/transistor", "/etc", ".", "./transistor", "nested//bottle"):
        with pytest.raises(ValueError, match="relative path inside"):
            DDADPipeline.from_pretrained(root, subfolder=outside)

    snapshot = offline_hub_cache(tmp_path, monkeypatch, root, "acme/line")
    with pytest.raises(FileNotFoundError, match="the Hub repo acme/line has no pipeline in subfolder 'tire'"):
        DDADPipeline.from_pretrained("acme/line", subfolder="tire")
    loaded = DDADPipeline.from_pretrained("acme/line", subfolder="nested/bottle")
    assert Path(loaded.name_or_path) == snapshot / "nested" / "bottle"
    loaded.set_progress_bar_config(disable=True)
    images = _images(1)
    assert np.array_equal(pipe(images, generator=_gens(1), output_type="np").image_scores,
                          loaded(images, generator=_gens(1), output_type="np").image_scores)


def test_scripts_take_a_pipeline_in_a_subfolder_of_a_folder_or_hub_repo(pipe, tmp_path, monkeypatch):
    from conftest import write_category

    from training.evaluate import main as evaluate
    from training.evaluate_multiclass import main as evaluate_multiclass
    from training.predict import main as predict

    root = tmp_path / "line"
    pipe.save_pretrained(root / "transistor")
    data = write_category(tmp_path / "data", "transistor")
    files = ["--input-dir", str(data / "test" / "good"), "--output-dir"]
    out = predict(["--pipeline", str(root), "--subfolder", "transistor", *files, str(tmp_path / "pred")])
    assert len((out / "scores.csv").read_text().splitlines()) > 1
    with pytest.raises(FileNotFoundError, match="has no subfolder 'tire'"):
        predict(["--pipeline", str(root), "--subfolder", "tire", *files, str(tmp_path / "p2")])
    with pytest.raises(SystemExit, match="--subfolder: .*relative path inside"):
        predict(["--pipeline", str(root), "--subfolder", "../line", *files, str(tmp_path / "p3")])
    with pytest.raises(SystemExit, match="give --pipeline too"):
        evaluate_multiclass(["--subfolder", "transistor", "--memory", "--data", str(data), "--output-dir",
                             str(tmp_path / "mc")])

    offline_hub_cache(tmp_path, monkeypatch, root, "acme/line")
    monkeypatch.chdir(tmp_path)
    results = evaluate(["--pipeline", "acme/line", "--subfolder", "transistor", "--data", str(data), "--no-memory"])
    written = tmp_path / "evaluation" / "acme--line--transistor" / "results.json"
    assert json.loads(written.read_text())["ddad"] == results["ddad"]


def test_a_saved_folder_names_its_version_and_a_newer_one_warns(pipe, tmp_path):
    import warnings

    from ddad_hub import __version__, load_pipeline

    pipe.save_pretrained(tmp_path / "now")
    index = tmp_path / "now" / "model_index.json"
    assert json.loads(index.read_text())["_ddad_hub_version"] == __version__
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the installed version's own folder loads without a warning
        DDADPipeline.from_pretrained(tmp_path / "now")

    future = shutil.copytree(tmp_path / "now", tmp_path / "future")
    values = json.loads((future / "model_index.json").read_text())
    values["_ddad_hub_version"] = "99.0.0"
    (future / "model_index.json").write_text(json.dumps(values))
    with pytest.warns(UserWarning, match=r"saved by ddad-hub 99\.0\.0, newer than the installed"):
        loaded = DDADPipeline.from_pretrained(future)
    assert "_ddad_hub_version" not in loaded.config  # a marker of the folder, not a setting
    loaded.save_pretrained(tmp_path / "again")  # saving again stamps the version that wrote it
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["_ddad_hub_version"] == __version__

    (future / "model_index.json").write_text("[1, 2]")
    for load in (DDADPipeline.from_pretrained, load_pipeline):
        with pytest.raises(ValueError, match="no JSON object"):
            load(future)


def test_missing_or_damaged_components_name_the_file(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / "ok")

    missing = shutil.copytree(tmp_path / "ok", tmp_path / "missing")
    (missing / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="unet"):
        DDADPipeline.from_pretrained(missing)

    truncated = shutil.copytree(tmp_path / "ok", tmp_path / "truncated")
    weights = truncated / "feature_encoder" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        DDADPipeline.from_pretrained(truncated)

    garbage = shutil.copytree(tmp_path / "ok", tmp_path / "garbage")
    (garbage / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="unet"):
        DDADPipeline.from_pretrained(garbage)

    bad_json = shutil.copytree(tmp_path / "ok", tmp_path / "bad_json")
    (bad_json / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="scheduler_config.json"):
        DDADPipeline.from_pretrained(bad_json)

    with pytest.raises(FileNotFoundError, match="model_index.json"):
        DDADPipeline.from_pretrained(tmp_path / "missing" / "unet")

    # a readable weights file that lacks some of the component's tensors (diffusers alone would only warn)
    from safetensors.torch import load_file, save_file

    partial = shutil.copytree(tmp_path / "ok", tmp_path / "partial")
    weights = partial / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, weights)
    with pytest.raises(ValueError, match=f"'unet'.*lacks 1 of its tensors \\({dropped}\\)"):
        DDADPipeline.from_pretrained(partial)
    # a full copy lying beside it (a variant, a backup) is not loaded, so it does not stand in for the lost tensor
    save_file(tensors, partial / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(ValueError, match=f"'unet'.*lacks 1 of its tensors \\({dropped}\\)"):
        DDADPipeline.from_pretrained(partial)
    loaded = DDADPipeline.from_pretrained(partial, variant="fp16")  # asked for, the variant is what loads
    assert torch.equal(dict(loaded.unet.state_dict())[dropped], tensors[dropped])

    # a folder saved from another pipeline class is not loaded as this one (its other components would be lost)
    other = shutil.copytree(tmp_path / "ok", tmp_path / "other")
    index = json.loads((other / "model_index.json").read_text())
    for name in ("DiADPipeline", "FooPipeline"):
        (other / "model_index.json").write_text(json.dumps({**index, "_class_name": name}))
        with pytest.raises(ValueError, match=f"holds a {name}, not a DDADPipeline.*load_pipeline"):
            DDADPipeline.from_pretrained(other)

    # a local path that does not exist is not sent to the Hub as a repo id
    with pytest.raises(FileNotFoundError, match="no pipeline folder"):
        DDADPipeline.from_pretrained(str(tmp_path / "no" / "such" / "folder"))
    # nor is a typo in "models/<name>" when models/ is a folder here (it has a repo id's form)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no pipeline folder at other/typo .other/ is a local folder"):
        DDADPipeline.from_pretrained("other/typo")


def test_weights_stay_float32_and_bad_calls_are_named(pipe, tmp_path):
    with pytest.raises(ValueError, match="keep float32 weights.*compute_dtype"):
        pipe.to(torch.bfloat16)
    with pytest.raises(ValueError, match="keep float32 weights"):
        pipe.to("cpu", dtype=torch.float16)
    assert pipe.to("cpu") is pipe and pipe.to(torch.float32) is pipe
    pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="keep float32 weights"):
        DDADPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="keep float32 weights"):  # diffusers' per-component form is read too
        DDADPipeline.from_pretrained(tmp_path, torch_dtype={"default": torch.float32, "unet": torch.bfloat16})
    assert DDADPipeline.from_pretrained(tmp_path, torch_dtype={"default": torch.float32}).unet.dtype == torch.float32
    with pytest.raises(ValueError, match="no images"):
        pipe([])
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            pipe(_images(1), batch_size=size)


def test_score_does_not_depend_on_the_batch(pipe):
    images = _images(4)
    alone = [float(pipe(img, output_type="np").image_scores[0]) for img in images]
    together = pipe(images, output_type="np", batch_size=4).image_scores
    chunked = pipe(images, output_type="np", batch_size=3).image_scores
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    np.testing.assert_allclose(chunked, alone, rtol=1e-5)
    # changing one image changes only its own score (maps are normalised per image)
    brighter = images.copy()
    brighter[0] = Image.fromarray(np.clip(np.asarray(images[0]) * 1.5, 0, 255).astype(np.uint8))
    changed = pipe(brighter, output_type="np", batch_size=4).image_scores
    np.testing.assert_allclose(changed[1:], together[1:], rtol=1e-5)
    assert not np.isclose(changed[0], together[0])


def test_inputs_of_any_kind_and_outputs(pipe):
    rng = np.random.default_rng(3)
    inputs = [
        Image.fromarray((rng.random((30, 50)) * 255).astype(np.uint8), mode="L"),
        Image.fromarray((rng.random((33, 33, 4)) * 255).astype(np.uint8), mode="RGBA"),
        Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16)),
        (rng.random((45, 21, 3)) * 255).astype(np.uint8),  # HWC uint8 array
        torch.rand(3, 28, 28),  # CHW float in [0, 1]
    ]
    out = pipe(inputs, output_type="pil")
    assert [m.shape for m in out.anomaly_maps_input_size] == [(30, 50), (33, 33), (20, 24), (45, 21), (28, 28)]
    assert out.anomaly_maps.shape == (5, 64, 64) and out.image_scores.shape == (5,)
    assert all(isinstance(r, Image.Image) and r.size == (32, 32) for r in out.reconstructions)
    np.testing.assert_allclose(out.image_scores, out.anomaly_maps.reshape(5, -1).max(1))
    assert out.is_anomalous.tolist() == (out.image_scores > 0.5).tolist()
    assert out.masks.shape == (5, 64, 64) and out.start_steps.tolist() == [100] * 5

    x = torch.rand(2, 3, 32, 32)
    pt = pipe(x, generator=_gens(2), output_type="pt")
    assert isinstance(pt.anomaly_maps, torch.Tensor) and pt.reconstructions.shape == (2, 3, 32, 32)
    arr = pipe(x, generator=_gens(2), output_type="np").reconstructions
    assert arr.shape == (2, 32, 32, 3)
    # "pt" and "np" are the same [0, 1] images, in diffusers' layouts
    np.testing.assert_allclose(pt.reconstructions.permute(0, 2, 3, 1).numpy(), arr, rtol=0, atol=1e-6)
    assert pt.reconstructions.min() >= 0 and pt.reconstructions.max() <= 1
    # return_dict=False: every field in DDADPipelineOutput's order, None included
    as_tuple = pipe(x, generator=_gens(2), output_type="pt", return_dict=False)
    assert len(as_tuple) == 12 and as_tuple[8] is None  # categories: a one-product pipeline recognises none
    assert as_tuple[10:] == (None, None)  # nor tells an unknown product (category_distances, unknown_category)
    assert torch.equal(as_tuple[0], pt.anomaly_maps) and torch.equal(as_tuple[2], pt.image_scores)
    with pytest.raises(ValueError, match="output_type"):
        pipe(inputs[0], output_type="latent")
    with pytest.raises(ValueError, match="generators"):
        pipe(_images(2), generator=_gens(3))
    with pytest.raises(ValueError, match="D3AD mode needs"):
        pipe(inputs[0], mode="d3ad")


def test_a_file_and_its_pixels_as_a_tensor_score_the_same(pipe, tmp_path):
    """Thresholds are calibrated on tensors; a PIL image or a file must be resized the same way, not differently."""
    image = _images(1, size=90)[0]
    image.save(tmp_path / "part.png")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    scores = [float(pipe(x, output_type="np").image_scores[0]) for x in (image, tmp_path / "part.png", pixels)]
    assert scores[0] == scores[1] == pytest.approx(scores[2], abs=1e-6)


def test_a_file_is_scored_as_the_training_scripts_read_it_whatever_its_size(tmp_path):
    """Thresholds and test metrics come from ``data.load_images``; an upload of another size (Magnetic Tile's tiles
    are of many sizes) must be resized as it was, or its score moves against the calibrated threshold."""
    from ddad_hub.data import load_images, to_unit_range

    pipe = make_tiny_pipeline(size=32, map_size=64, threshold=0.5)  # the U-Net at 32 px, the map at 64
    assert pipe.read_hw == (64, 64)
    image = Image.fromarray((np.random.default_rng(3).random((71, 113, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "tile.png")
    read = load_images([tmp_path / "tile.png"], 64)  # as evaluate.py and the recipe read (at map size)
    unet_size = load_images([tmp_path / "tile.png"], 32, read_size=64)  # as the training scripts read
    assert torch.equal(unet_size, pipe.preprocess(tmp_path / "tile.png")[0])
    assert torch.equal(read, pipe.preprocess(tmp_path / "tile.png", size=(64, 64))[0])
    scores = [float(pipe(x, output_type="np").image_scores[0]) for x in (tmp_path / "tile.png", to_unit_range(read))]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_call_settings_override_the_scheduler_config(pipe):
    img = _images(1)
    base = pipe(img, output_type="np").image_scores
    other = pipe(img, w=0.0, start_step=300, skip=30, eta=0.0, output_type="np")
    assert other.start_steps.tolist() == [300] and not np.isclose(base, other.image_scores).all()
    again = pipe(img, output_type="np").image_scores
    np.testing.assert_array_equal(base, again)  # the call did not change the stored defaults


def test_model_index_records_components(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDADPipeline"
    assert index["feature_encoder"] == ["ddad_hub.models.feature_encoder", "FeatureEncoder"]
    assert index["feature_memory"] == [None, None]


def test_a_nan_score_is_judged_defective_with_a_warning(pipe, monkeypatch):
    """A broken network (damaged weights) computes NaN; NaN > threshold is False, which would pass the part."""
    original = pipe.predict_noise
    monkeypatch.setattr(pipe, "predict_noise", lambda *a, **k: original(*a, **k) * float("nan"))
    with pytest.warns(RuntimeWarning, match="NaN anomaly score"):
        out = pipe(_images(2), generator=_gens(2), output_type="np")
    assert np.isnan(out.image_scores).all() and out.is_anomalous.tolist() == [True, True]
    assert out.masks.all()  # where is unknown: the whole image is marked
    from ddad_hub.inspection import inspect_files  # the batch tab's and predict.py's verdicts agree

    with pytest.warns(RuntimeWarning):
        rows = [item.row for item in inspect_files(pipe, _images(2), batch_size=2)]
    assert [row.verdict for row in rows] == ["defective", "defective"]


def test_a_call_running_between_another_calls_steps_leaves_its_schedule_alone(pipe, monkeypatch):
    """A Space serves requests from several threads on one pipeline: each call keeps its own schedule. Here a
    second call runs inside the first one's denoising loop, deterministically, where a thread could."""
    x = _images(1)
    alone = pipe(x, generator=_gens(1), output_type="np", start_step=100, skip=50)
    original, nested = pipe.predict_noise, []

    def with_another_request(*args, **kwargs):
        if not nested:
            nested.append(None)
            nested.append(pipe(x, generator=_gens(1), output_type="np", start_step=60, skip=20))
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe, "predict_noise", with_another_request)
    interrupted = pipe(x, generator=_gens(1), output_type="np", start_step=100, skip=50)
    assert np.array_equal(interrupted.anomaly_maps, alone.anomaly_maps)
    assert interrupted.start_steps.tolist() == [100] and nested[1].start_steps.tolist() == [60]


EMBEDDED_LATENT = Path(__file__).resolve().parents[1] / "models" / "ddad-transistor-cpu-latent"


@pytest.mark.skipif(not EMBEDDED_LATENT.is_dir(), reason="the embedded latent model is not here")
def test_push_to_hub_uploads_the_projects_card_and_record_without_local_paths(tmp_path, monkeypatch):
    """No network: the Hub calls are stood in for, and what would be uploaded is kept for the checks."""
    import shutil

    import huggingface_hub
    from huggingface_hub import ModelCard

    calls = []

    class Repo:
        repo_id = "me/transistor"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(repo_id) or Repo())

    def upload_folder(repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    pipe = DDADPipeline.from_pretrained(EMBEDDED_LATENT)
    assert pipe.push_to_hub("me/transistor").endswith("/commit/0") and calls == ["me/transistor"]
    up = tmp_path / "uploaded"
    card = ModelCard.load(up / "README.md")
    assert card.data.license == "cc-by-nc-sa-4.0" and card.data.eval_results  # the data's licence, the metrics
    assert '"me/transistor"' in card.text  # the usage snippet names the repository it is in
    assert (up / "training_info.json").is_file() and (up / "results.json").is_file()
    # the records keep folder names, not the paths of the machine that trained and tested the model
    record = json.loads((up / "training_info.json").read_text())
    local = json.loads((EMBEDDED_LATENT / "training_info.json").read_text())["data"]
    assert record["data"] == "transistor" and local.endswith("/transistor") and local != "transistor"
    from ddad_hub.model_info import trained_products

    assert "transistor" in trained_products(record)
    for name in ("training_info.json", "results.json"):
        text = (up / name).read_text()
        assert not any(marker in text for marker in ('"/', '"../', '"./', '"~')), name
    assert not (up / "LICENSE.md").exists()  # a Hub licence id needs no terms file
    assert "_name_or_path" not in (up / "model_index.json").read_text()  # no path of the uploading machine
    assert not any("_name_or_path" in p.read_text() for p in up.glob("*/config.json"))
    assert DDADPipeline.from_pretrained(up).config.mode == pipe.config.mode
    pipe.save_pretrained(tmp_path / "copy")  # a plain save writes no card over anything
    assert not (tmp_path / "copy" / "README.md").exists()
    built = make_tiny_pipeline()  # made in memory: nothing says what it was trained on, and a warning says so
    shutil.rmtree(tmp_path / "uploaded")
    with pytest.warns(UserWarning, match="the pipeline has no folder, so the upload has no model card"):
        built.push_to_hub("me/tiny")
    assert not (tmp_path / "uploaded" / "README.md").exists()
    # saved and pushed into a folder that held another model's record: the upload carries this model's own
    other = tmp_path / "other"
    other.mkdir()
    (other / "training_info.json").write_text(json.dumps({**json.loads(
        (EMBEDDED_LATENT / "training_info.json").read_text()), "data": "/data/bottle", "category": "bottle"}))
    shutil.rmtree(tmp_path / "uploaded")
    pipe.save_pretrained(other, push_to_hub=True, repo_id="me/transistor")
    assert json.loads((tmp_path / "uploaded" / "training_info.json").read_text())["data"] == "transistor"
    # saved again over the same weights, the folder's own (newer) record is this model's: it goes up
    (other / "training_info.json").write_text(json.dumps({**json.loads(
        (EMBEDDED_LATENT / "training_info.json").read_text()), "data": "/data/refit/transistor", "refit": True}))
    shutil.rmtree(tmp_path / "uploaded")
    pipe.save_pretrained(other, push_to_hub=True, repo_id="me/transistor")
    assert json.loads((tmp_path / "uploaded" / "training_info.json").read_text()).get("refit") is True
    with pytest.raises(ValueError, match="safetensors only"):
        pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_a_config_that_cannot_run_is_refused_as_it_loads_not_at_the_first_call(tmp_path):
    make_tiny_pipeline(latent=True).save_pretrained(tmp_path / "latent")
    with pytest.raises(ValueError, match="needs the autoencoder"):
        DDADPipeline.from_pretrained(tmp_path / "latent", vae=None)
    index = json.loads((tmp_path / "latent" / "model_index.json").read_text())
    for key, value, words in (("mode", "memory", "mode must be"), ("fused_rule", "median", "fusion rule must be")):
        (tmp_path / "latent" / "model_index.json").write_text(json.dumps({**index, key: value}))
        with pytest.raises(ValueError, match=words):
            DDADPipeline.from_pretrained(tmp_path / "latent")
