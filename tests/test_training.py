"""Training, adaptation, evaluation and prediction scripts, end to end on a tiny synthetic MVTec-layout folder."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = {
    "name": "tiny",
    "resolution": 32,
    "unet": {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    "batch_size": 4,
    "learning_rate": 3e-4,
    "weight_decay": 0.05,
    "ema_decay": 0.99,
    "max_train_timestep": 500,
    "shift_pixels": 1,
    "mixed_precision": "no",
    "max_minutes": None,
    "epochs": None,
    "checkpoint_every": 2,
    "holdout": 0.25,
    "feature_backbone": "efficientnet_lite0",
    "feature_strides": [8, 16],
    "map_size": 64,
    "start_step": 100,
    "skip": 50,
    "eta": 1.0,
    "w": None,
    "selection_grid": {"w": [0, 2], "start_step": [100]},
    "d3ad": {"coreset_ratio": 0.2, "t_max": [40, 80]},
}

TINY_VAE_SPEC = {"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
                 "crop": 32, "batch_size": 8, "learning_rate": 2e-3, "kl_weight": 1e-6, "max_minutes": None,
                 "checkpoint_every": 2}

pytestmark = pytest.mark.slow


def _part(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A 'nominal part': a bright disc on a dark background with a little noise."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    img = np.where(disc[..., None], [200, 180, 60], [30, 30, 40]).astype(np.float64)
    img += rng.normal(0, 4, img.shape)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "widget"
    rng = np.random.default_rng(0)
    (root / "train" / "good").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "scratch").mkdir(parents=True)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(_part(rng)).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        Image.fromarray(_part(rng)).save(root / "test" / "good" / f"{i:03d}.png")
        img = _part(rng)
        mask = np.zeros(img.shape[:2], dtype=np.uint8)
        mask[20:24, 8:40] = 255
        img[mask > 0] = [255, 255, 255]
        Image.fromarray(img).save(root / "test" / "scratch" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def preset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "tiny.json"
    path.write_text(json.dumps(TINY_PRESET))
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    return env


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _refusal(args: list[str], monkeypatch, capsys) -> str:
    """A script run in this process as its ``__main__`` runs it (``ddad_hub.cli.run(main)``) that must refuse with
    exit code 2: its stderr. A refusal comes before any real work, so this saves a process start (10 s on a slow CPU)
    per check; every script's own ``__main__`` is run as a process by the tests that succeed. An exception other
    than the refusal (what a traceback would show) fails the ``raises``; torch's thread count is put back, so a
    script that sets it before refusing leaves the rest of the suite as it was."""
    import torch
    from conftest import load_script

    from ddad_hub.cli import run

    script, *rest = args
    module = load_script(Path(script).stem)
    monkeypatch.setattr(sys, "argv", [script, *rest])  # the name the messages start with
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            run(lambda: module.main(rest))
    finally:
        torch.set_num_threads(threads)
    stderr = capsys.readouterr().err
    assert stop.value.code == 2, stderr[-2000:]
    return stderr


def _train_args(data: Path, out: Path, preset: Path, steps: int) -> list[str]:
    return ["training/train_unet.py", "--data", str(data), "--output-dir", str(out), "--preset", str(preset),
            "--max-steps", str(steps), "--threads", "1", "--no-finalize"]


def _final_weights(out: Path) -> dict:
    last = sorted((out / "checkpoints").glob("step_*"))[-1]
    return {"unet": load_file(str(last / "unet.safetensors")), "ema": load_file(str(last / "ema.safetensors")),
            "state": json.loads((last / "state.json").read_text())}


@pytest.fixture(scope="module")
def trained_run(dataset, preset_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_a")
    _run(_train_args(dataset, out, preset_file, 8))
    return out


def test_resume_after_sigkill_matches_uninterrupted_run(dataset, preset_file, trained_run, tmp_path):
    out = tmp_path / "run_b"
    proc = subprocess.Popen([sys.executable, *_train_args(dataset, out, preset_file, 100_000)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step_00000004").exists():
            assert proc.poll() is None, "training exited early"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps_at_kill = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")]
    assert max(steps_at_kill) < 8, "the run was not interrupted before the end"

    resumed = _run(_train_args(dataset, out, preset_file, 8) + ["--resume"])
    assert f"at step {max(steps_at_kill)}" in resumed.stdout + resumed.stderr
    a, b = _final_weights(trained_run), _final_weights(out)
    assert b["state"]["step"] == a["state"]["step"] == 8
    for part in ("unet", "ema"):
        for key, value in a[part].items():
            np.testing.assert_allclose(b[part][key].numpy(), value.numpy(), rtol=0, atol=1e-6, err_msg=key)


def test_ctrl_c_writes_a_checkpoint_of_the_step_reached(dataset, preset_file, tmp_path):
    out = tmp_path / "run_c"
    args = _train_args(dataset, out, preset_file, 100_000) + ["--checkpoint-every", "100000"]
    # The script with SIGINT at its default action: a suite started in the background (nohup ... &) passes SIGINT
    # on ignored, and the script rightly leaves a signal it was started ignoring ignored. (A wrapper, not preexec_fn,
    # which is unsafe in a process with threads, as an xdist worker is.)
    wrapper = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); sys.argv = sys.argv[1:]; "
               "sys.path.insert(0, 'training'); runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "train_log.jsonl").exists():  # written at step 50: well past any checkpoint (none is due)
            assert proc.poll() is None, "training exited early"
            assert time.time() < deadline, "training made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a failed wait must not leave a 100000-step run behind, slowing every later test
        proc.wait()
    assert proc.returncode == 130, output[-3000:]
    (ckpt,) = (out / "checkpoints").glob("step_*")
    step = json.loads((ckpt / "state.json").read_text())["step"]
    assert step >= 50 and f"interrupted at step {step}" in output and "--resume" in output
    assert "Traceback" not in output and not (out / "pipeline").exists()


def test_two_processes_with_accelerate(dataset, preset_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *_train_args(dataset, out, preset_file, 4), "--snapshot-minutes", "0.001"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = _final_weights(out)["state"]
    assert state["processes"] == 2 and state["step"] == 4
    # snapshots are decided on the main process and taken by both together (no deadlock), and all kept
    assert len(list((out / "snapshots").glob("step_*"))) >= 2

    # the autoencoder's script too: its whole pass is one forward of the wrapped module, as DDP needs
    latent_preset = tmp_path / "tiny_latent.json"
    latent_preset.write_text(json.dumps({**TINY_PRESET, "name": "tiny_latent", "vae": TINY_VAE_SPEC}))
    cmd = [*cmd[: cmd.index("training/train_unet.py")], "training/train_vae.py", "--data", str(dataset),
           "--output-dir", str(tmp_path / "vae"), "--preset", str(latent_preset), "--max-steps", "4", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "vae" / "vae" / "training_info.json").read_text())["steps"] == 4


def test_finalize_evaluate_predict_and_adapt(dataset, trained_run, tmp_path, monkeypatch, capsys):
    from conftest import write_category

    _run(["training/finalize.py", "--run-dir", str(trained_run), "--data", str(dataset)])
    folder = trained_run / "pipeline"
    info = json.loads((folder / "training_info.json").read_text())
    assert info["selection"]["best"]["w"] in (0, 2)
    assert {row["pixel_weight_mode"] for row in info["selection"]["table"]} == {"per_image", "calibrated"}
    index = json.loads((folder / "model_index.json").read_text())
    assert index["threshold"] == pytest.approx(max(info["calibration"]["nominal_scores"]))
    assert index["d3ad_threshold"] == pytest.approx(info["d3ad"]["threshold"])
    objectives = info["mode"]["objectives"]
    assert index["mode"] == info["mode"]["chosen"] == max(objectives, key=objectives.get)

    _run(["training/evaluate.py", "--pipeline", str(folder), "--data", str(dataset), "--threads", "1",
          "--memory-coreset", "0.5"])
    results = json.loads((folder / "results.json").read_text())
    assert info["d3ad"]["best"]["t_max"] in (40, 80) and len(info["d3ad"]["score_bins"]) == 11
    for detector in ("ddad", "d3ad", "fused", "feature_memory"):
        for subset in ("all", "scratch"):
            for metric in ("image_auroc", "pixel_auroc", "aupro"):
                assert 0.0 <= results[detector][subset][metric] <= 1.0
    # The white bar is obvious to ImageNet features: the memory must find it.
    assert results["feature_memory"]["all"]["image_auroc"] > 0.9
    # fused mode against each of its parts, the same images resampled for both
    vs = results["fused_vs_parts"]
    assert set(vs) == {"feature_memory", "ddad", "d3ad"}
    for name, d in vs.items():
        own = results[name]["all"]["image_auroc"]
        assert d["difference"] == pytest.approx(results["fused"]["all"]["image_auroc"] - own)
        assert d["ci95"][0] <= d["ci95"][1] and d["se"] >= 0
    assert (folder / "evaluation.png").stat().st_size > 10_000
    card = (folder / "README.md").read_text()
    assert "model-index" in card and "image_auroc" in card and "D3AD mode" in card
    assert "non-commercial" not in card  # synthetic data: no data set licence to pass on
    assert f"the feature memory {vs['feature_memory']['difference']:+.4f}" in card
    assert 20 <= results["d3ad"]["all"]["mean_start_step"] <= info["d3ad"]["best"]["t_max"]
    assert set(results["at_threshold"]) == {"ddad", "d3ad", "fused"}
    assert results["at_threshold"]["d3ad"]["threshold"] == pytest.approx(index["d3ad_threshold"])
    assert index["fused_threshold"] == pytest.approx(info["fused"]["threshold"])
    assert index["fused_base"] in ("ddad", "d3ad") and set(objectives) == {"ddad", "d3ad", "fused"}
    # the memory took every training image, the held-out ones too
    assert info["d3ad"]["memory"]["images"] == len(list((dataset / "train" / "good").iterdir()))

    # recalibrate.py on the unchanged pipeline gets back its own calibration, and drops the results of the old one;
    # fit_d3ad.py refits the memory with the run's preset (the same bank size)
    import shutil

    copy = shutil.copytree(folder, tmp_path / "recalibrated" / "pipeline")
    _run(["training/recalibrate.py", "--pipeline", str(copy), "--data", str(dataset)])
    recalibrated = json.loads((copy / "model_index.json").read_text())
    assert recalibrated["threshold"] == index["threshold"]
    assert recalibrated["pixel_weight"] == index["pixel_weight"]
    assert not (copy / "results.json").exists() and not (copy / "evaluation.png").exists()
    _run(["training/fit_d3ad.py", "--pipeline", str(copy), "--data", str(dataset)])
    bank = load_file(str(folder / "feature_memory" / "diffusion_pytorch_model.safetensors"))["bank"]
    refitted = load_file(str(copy / "feature_memory" / "diffusion_pytorch_model.safetensors"))["bank"]
    assert refitted.shape == bank.shape
    from ddad_hub.recipe import fused_mode_objectives

    refit = json.loads((copy / "training_info.json").read_text())  # its default mode chosen again, as finalisation does
    assert refit["mode"]["objectives"] == fused_mode_objectives(refit["fused"])
    assert json.loads((copy / "model_index.json").read_text())["mode"] == refit["mode"]["chosen"]

    # another product's folder, a run folder for its pipeline, an output over the source: one line, exit 2
    other = write_category(tmp_path / "other", "gadget", n_train=12)
    for args, said in (
        (["training/recalibrate.py", "--pipeline", str(copy), "--data", str(other)], "trained on widget, not on"),
        (["training/fit_d3ad.py", "--pipeline", str(copy), "--data", str(other)], "trained on widget, not on"),
        (["training/evaluate.py", "--pipeline", str(trained_run), "--data", str(dataset)], "its pipeline is"),
        (["training/train_unet.py", "--data", str(dataset / "test"), "--output-dir", str(tmp_path / "x")],
         "train/good"),
        (["training/train_unet.py", "--data", str(dataset), "--output-dir", str(tmp_path / "x"), "--preset", "cpux"],
         "unknown preset"),
    ):
        stderr = _refusal(args, monkeypatch, capsys)
        assert said in stderr, stderr[-2000:]
    stderr = _refusal(["training/finalize.py", "--pipeline", str(copy), "--output-dir", str(copy.parent)],
                      monkeypatch, capsys)
    assert stderr.startswith("finalize.py: error: --output-dir") and "would write over" in stderr, stderr[-2000:]

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for p in sorted((dataset / "test" / "scratch").glob("*.png"))[:2]:
        (inputs / p.name).write_bytes(p.read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image at all")
    first = sorted(inputs.glob("*.png"))[0]
    Image.open(first).save(inputs / f"{first.stem}.bmp")  # same name, other suffix: its map must not overwrite
    (inputs / "sub").mkdir()
    Image.open(first).save(inputs / "sub" / "x.png")
    Image.open(first).save(inputs / "sub__x.png")  # flattened, sub/x.png would take the same map name
    preds = tmp_path / "preds"
    for script, flag, out in (("predict.py", "--mode", ["--input-dir", str(inputs)]),
                              ("evaluate.py", "--modes", ["--data", str(dataset)])):  # a mode the model lacks
        stderr = _refusal([f"training/{script}", "--pipeline", str(folder), *out, "--output-dir",
                           str(tmp_path / "wrong_mode"), flag, "diad"], monkeypatch, capsys)
        assert f"{script}: error: {flag} diad:" in stderr, stderr[-2000:]
        assert "this model offers ddad" in stderr and not (tmp_path / "wrong_mode").exists()
    _run(["training/predict.py", "--pipeline", str(folder), "--input-dir", str(inputs), "--output-dir", str(preds)])
    rows = list(csv.DictReader(open(preds / "scores.csv")))
    assert len(rows) == 6
    broken = [r for r in rows if r["file"].endswith("broken.png")][0]
    assert "not an image" in broken["error"]
    assert len(list(preds.glob("*_map.png"))) == 5  # one heat-map per scored file

    adapted = tmp_path / "adapted"
    _run(["training/adapt_encoder.py", "--pipeline", str(folder), "--data", str(dataset), "--output-dir",
          str(adapted), "--epochs", "1", "--batch-size", "4", "--threads", "1"])
    from ddad_hub import DDADPipeline

    before = DDADPipeline.from_pretrained(folder).feature_encoder.state_dict()
    after = DDADPipeline.from_pretrained(adapted / "pipeline").feature_encoder.state_dict()
    changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert changed, "adaptation did not change the encoder"
    # the adapted pipeline's memory is refitted with the run's preset, as training fitted it
    original, adapted_memory = (DDADPipeline.from_pretrained(f).feature_memory for f in (folder, adapted / "pipeline"))
    assert adapted_memory.bank.shape == original.bank.shape
    for key in ("input_norm", "pooling_pad", "normalization", "cross_fitted"):
        assert adapted_memory.config[key] == original.config[key], key
    # resuming a finished adaptation does no more epochs and still writes the pipeline
    again = _run(["training/adapt_encoder.py", "--pipeline", str(folder), "--data", str(dataset), "--output-dir",
                  str(adapted), "--epochs", "1", "--batch-size", "4", "--threads", "1", "--resume"])
    assert "resumed from" in again.stdout + again.stderr


def test_a_run_ends_in_a_loadable_pipeline_with_a_card(dataset, preset_file, tmp_path):
    out = tmp_path / "run"
    args = [a for a in _train_args(dataset, out, preset_file, 2) if a != "--no-finalize"]
    _run(args)
    from ddad_hub import DDADPipeline

    pipe = DDADPipeline.from_pretrained(out / "pipeline")
    assert pipe.feature_memory is not None and pipe.config.threshold is not None
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert info["training"]["steps"] == 2 and "selection" in info and "d3ad" in info
    assert info["training"]["seed"] == 0  # finalize.py --pipeline draws a multi-class split again from it
    assert "Not evaluated yet" in (out / "pipeline" / "README.md").read_text()


def test_latent_run_autoencoder_resume_and_pipeline(dataset, tmp_path):
    """train_vae.py learns to round-trip the part, resumes to the same weights, and train_unet.py --vae ends in a
    latent pipeline that loads and scores."""
    import torch

    from ddad_hub import DDADPipeline
    from ddad_hub.data import list_train_images, load_images
    from ddad_hub.models.autoencoder import build_vae, encode_images, load_vae

    preset = tmp_path / "tiny_latent.json"
    preset.write_text(json.dumps({**TINY_PRESET, "name": "tiny_latent", "vae": TINY_VAE_SPEC, "shift_pixels": 0}))

    def vae_args(out: Path, steps: int) -> list[str]:
        return ["training/train_vae.py", "--data", str(dataset), "--output-dir", str(out), "--preset", str(preset),
                "--max-steps", str(steps), "--threads", "1"]

    full, half = tmp_path / "vae_full", tmp_path / "vae_half"
    _run(vae_args(full, 200))
    _run(vae_args(half, 100))
    resumed = _run(vae_args(half, 200) + ["--resume"])
    assert "at step 100" in resumed.stdout + resumed.stderr
    a = load_file(str(full / "vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(half / "vae" / "diffusion_pytorch_model.safetensors"))
    for key, value in a.items():
        np.testing.assert_allclose(b[key].numpy(), value.numpy(), rtol=0, atol=1e-6, err_msg=key)

    # the latent round trip: the trained autoencoder reproduces whole nominal images it never saw as a whole
    images = load_images(list_train_images(dataset), 32)
    vae = load_vae(str(full / "vae"))
    torch.manual_seed(0)
    untrained = build_vae({"resolution": 32, "vae": TINY_VAE_SPEC}).eval()
    with torch.no_grad():
        error = (vae.decode(encode_images(vae, images, scaled=False)).sample - images).abs().mean().item()
        error_before = (untrained.decode(encode_images(untrained, images, scaled=False)).sample
                        - images).abs().mean().item()
    assert error < 0.1 < error_before, (error, error_before)
    scaled = encode_images(vae, images)
    assert 0.8 < scaled.std().item() < 1.25  # the fitted scaling factor gives unit-variance latents

    out = tmp_path / "latent_run"
    args = [a for a in _train_args(dataset, out, preset, 2) if a != "--no-finalize"] + ["--vae", str(full / "vae")]
    _run(args)
    pipe = DDADPipeline.from_pretrained(out / "pipeline")
    assert pipe.vae is not None and pipe.unet.config.in_channels == 4 and pipe.unet.config.sample_size == 16
    assert pipe.config.threshold is not None and pipe.feature_memory is not None
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert "selection" in info and "d3ad" in info
    assert info["autoencoder"]["training"]["steps"] == 200  # the card says how the latent space was made
    assert "autoencoder trained 200 steps" in (out / "pipeline" / "README.md").read_text()
    # re-finalising the saved pipeline keeps that record (the pipeline's own vae/ folder has none)
    _run(["training/finalize.py", "--pipeline", str(out / "pipeline"), "--output-dir", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "pipeline" / "training_info.json").read_text())
    assert again["autoencoder"]["training"] == info["autoencoder"]["training"]
    assert "autoencoder trained 200 steps" in (tmp_path / "again" / "pipeline" / "README.md").read_text()

    # domain adaptation reconstructs through the same latent path
    _run(["training/adapt_encoder.py", "--pipeline", str(out / "pipeline"), "--data", str(dataset), "--output-dir",
          str(tmp_path / "adapted"), "--epochs", "1", "--batch-size", "4", "--threads", "1"])
    adapted = DDADPipeline.from_pretrained(tmp_path / "adapted" / "pipeline")
    assert adapted.vae is not None and adapted.config.d3ad_threshold is not None

    refused = subprocess.run([sys.executable, *_train_args(dataset, tmp_path / "x", preset, 2)], cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "train_vae.py" in refused.stderr


def test_adapt_encoder_stopped_mid_epoch_resumes_exactly(tiny_pipeline_dir, tmp_path):
    """A Ctrl-C mid-epoch keeps the steps taken (checkpoint, exit 130); --resume then ends where an uninterrupted
    run ends. The stop request is counted in-process, so it lands at a known step."""
    from conftest import load_script, write_category

    from ddad_hub.training import StopOnInterrupt

    script = load_script("adapt_encoder")
    data = write_category(tmp_path, "widget", n_train=10)  # batch 2: five steps an epoch

    def args(out: Path) -> list[str]:
        return ["--pipeline", str(tiny_pipeline_dir), "--data", str(data), "--output-dir", str(out), "--epochs", "2",
                "--batch-size", "2", "--threads", "1", "--mixed-precision", "no"]

    def stop_at_check(n: int) -> type:
        """A StopOnInterrupt whose stop request comes true at its n-th reading (one at each step's start)."""

        class Stop(StopOnInterrupt):
            checks = 0

            @property
            def requested(self) -> bool:
                Stop.checks += 1
                return Stop.checks >= n

            @requested.setter
            def requested(self, value: bool) -> None:
                pass

        return Stop

    script.main(args(tmp_path / "whole"))
    script.StopOnInterrupt = stop_at_check(8)  # before the eighth step: epoch 2's third
    with pytest.raises(SystemExit) as stopped:
        script.main(args(tmp_path / "stopped"))
    assert stopped.value.code == 130
    ckpts = sorted((tmp_path / "stopped" / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_00000005", "step_00000007"]  # epoch 1's end, and the step reached
    state = json.loads((ckpts[-1] / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    script.StopOnInterrupt = StopOnInterrupt
    script.main(args(tmp_path / "stopped") + ["--resume"])

    script.StopOnInterrupt = stop_at_check(11)  # after the tenth, last step: the check that follows the epochs
    with pytest.raises(SystemExit) as stopped:  # a Ctrl-C in the very last step: exit, not a pipeline
        script.main(args(tmp_path / "last"))
    script.StopOnInterrupt = StopOnInterrupt
    assert stopped.value.code == 130 and not (tmp_path / "last" / "pipeline").exists()
    assert sorted(p.name for p in (tmp_path / "last" / "checkpoints").glob("step_*"))[-1] == "step_00000010"
    whole = load_file(str(tmp_path / "whole" / "pipeline" / "feature_encoder" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "stopped" / "pipeline" / "feature_encoder" /
                            "diffusion_pytorch_model.safetensors"))
    for key, value in whole.items():
        np.testing.assert_allclose(resumed[key].numpy(), value.numpy(), rtol=0, atol=1e-6, err_msg=key)
    history = [json.loads((tmp_path / run / "pipeline" / "training_info.json").read_text())["adaptation"]["history"]
               for run in ("whole", "stopped")]
    assert [h["mean_loss"] for h in history[0]] == pytest.approx([h["mean_loss"] for h in history[1]])


def test_evaluate_a_hub_model_writes_beside_the_user_not_into_the_cache(tiny_pipeline_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as constants
    from conftest import load_script, write_category

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--ddad-tiny"
    shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    data = write_category(tmp_path / "data", "widget")
    monkeypatch.chdir(tmp_path)
    script = load_script("evaluate")
    script.main(["--pipeline", "acme/ddad-tiny", "--data", str(data), "--threads", "1", "--no-memory"])
    assert (tmp_path / "evaluation" / "acme--ddad-tiny" / "results.json").is_file()
    assert not (tmp_path / "acme").exists()
    assert sorted(p.name for p in (repo / "snapshots" / commit).iterdir()) == sorted(
        p.name for p in tiny_pipeline_dir.iterdir())
