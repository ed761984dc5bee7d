"""Shared fixtures: tiny random components, one torch thread (the suite runs beside other work)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


TINY_VAE = {"resolution": 32, "vae": {"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4,
                                      "norm_num_groups": 8}}


def load_script(name: str):
    """``training/<name>.py`` as a module, so a test can call its ``main(argv)`` in this process."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_pipeline(
    size: int = 32, map_size: int = 64, w: float = 2.0, threshold: float | None = None, latent: bool = False
):
    """A DDADPipeline with a small random U-Net and a random EfficientNet-Lite0 encoder (no weights needed).

    ``latent=True`` adds a tiny random 2x autoencoder: the U-Net then works on (4, size / 2, size / 2) latents.
    """
    from diffusers import UNet2DModel

    from ddad_hub import DDADPipeline, DDADScheduler, FeatureEncoder
    from ddad_hub.models.autoencoder import build_vae

    torch.manual_seed(0)
    vae = build_vae({**TINY_VAE, "resolution": size}) if latent else None
    channels, unet_size = (4, size // 2) if latent else (3, size)
    unet = UNet2DModel(
        sample_size=unet_size, in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    encoder = FeatureEncoder(backbone="efficientnet_lite0", padding="same")  # new encoders pad as the weights do
    scheduler = DDADScheduler(start_step=100, skip=50, w=w)
    pipe = DDADPipeline(unet=unet, scheduler=scheduler, feature_encoder=encoder, map_size=map_size,
                        threshold=threshold, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline(threshold=0.5).save_pretrained(folder)
    return folder


def write_category(root: Path, name: str, n_train: int = 6, size: int = 32, seed: int = 0) -> Path:
    """A tiny MVTec-layout category of smooth random images, one defect type with masks."""
    rng = np.random.default_rng(seed)
    folder = root / name
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (folder / sub).mkdir(parents=True)
    base = rng.integers(40, 200, size=3)
    for i in range(n_train):
        img = np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        img = np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "test" / "good" / f"{i:03d}.png")
        img[8:14, 4:28] = 255
        Image.fromarray(img).save(folder / "test" / "scratch" / f"{i:03d}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[8:14, 4:28] = 255
        Image.fromarray(mask).save(folder / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return folder


# Files that take longest, in the order they should start. pyproject's addopts run the suite on two workers, one file
# each at a time, handing files out in collection order: these two start first, on separate workers, and the
# shorter files fill in around them. Serial runs (-n 0) are not affected beyond the order.
LONGEST_FIRST = ("test_training.py", "test_openvino.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
