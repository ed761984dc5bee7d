"""D3AD's latent space: a DDADPipeline with an AutoencoderKL denoises latents, maps with the latent distance,
and saves and loads like any other pipeline."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline

from ddad_hub import DDADPipeline
from ddad_hub.anomaly_map import latent_distance
from ddad_hub.dynamic_noise import score_bin_edges
from ddad_hub.models.feature_memory import FeatureMemory


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipe():
    """A tiny latent pipeline with a feature memory, so both modes run."""
    pipe = make_tiny_pipeline(latent=True, threshold=0.5)
    memory = FeatureMemory.fit(pipe.feature_encoder, pipe.resize_to_map(_images(4, seed=1) * 2 - 1),
                               coreset_ratio=0.5, image_size=64, max_patches=500)
    pipe.register_modules(feature_memory=memory)
    memory.register_to_config(score_bins=score_bin_edges(pipe.first_estimate(_images(4, seed=2) * 2 - 1)))
    return pipe


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(11 + i) for i in range(n)]


def test_the_unet_sees_latents_and_the_output_is_an_image(pipe, monkeypatch):
    seen = []
    forward = pipe.unet.forward

    def spy(sample, t, *args, **kwargs):
        seen.append(tuple(sample.shape))
        return forward(sample, t, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    out = pipe(_images(2, size=48), output_type="pt")
    assert seen and set(seen) == {(2, 4, 16, 16)}  # 32 px images -> (4, 16, 16) latents of the 2x autoencoder
    assert out.reconstructions.shape == (2, 3, 32, 32) and out.anomaly_maps.shape == (2, 64, 64)
    assert [m.shape for m in out.anomaly_maps_input_size] == [(48, 48)] * 2
    assert pipe.sample_size == (32, 32)


@pytest.mark.parametrize("noise_free", [False, True])
@pytest.mark.parametrize("w", [0.0, 4.0])
def test_oracle_denoiser_returns_the_latents(pipe, monkeypatch, noise_free, w):
    """With a denoiser that knows the clean latents, the latent reconstruction is exact: the latent distance
    vanishes and the image is the autoencoder's decoding of the input's latents."""
    x = _images(2) * 2 - 1
    z_star = pipe.encode(x)

    def oracle(sample, t, *args, **kwargs):
        a = pipe.scheduler._abar(t, sample)
        return SimpleNamespace(sample=(sample - a.sqrt() * z_star) / (1 - a).sqrt())

    monkeypatch.setattr(pipe.unet, "forward", oracle)
    r, (z, z_r) = pipe.reconstruct(x, w=w, start_step=200, skip=20, eta=1.0, noise_free_start=noise_free,
                                   generator=_gens(2), show_progress=False, return_latents=True)
    torch.testing.assert_close(z, z_star)
    torch.testing.assert_close(z_r, z_star, atol=1e-4, rtol=0)
    torch.testing.assert_close(r, pipe.decode(z_star), atol=1e-3, rtol=0)
    _, d_latent = pipe.compute_distances(x, r, latents=(z, z_r))
    assert d_latent.shape == (2, 64, 64) and d_latent.abs().max() < 1e-3


def test_latent_distance_is_the_channel_mean_upsampled():
    z = torch.zeros(1, 4, 2, 2)
    z_r = z.clone()
    z_r[0, :, 0, 0] = torch.tensor([1.0, -1.0, 2.0, 0.0])  # mean |difference| = 1 in the top-left latent pixel
    d = latent_distance(z, z_r, (8, 8))
    assert d.shape == (1, 8, 8)
    assert d[0, 0, 0] == pytest.approx(1.0) and d[0, -1, -1] == pytest.approx(0.0)
    assert d[0, :4, :4].mean() > d[0, 4:, 4:].mean()


def test_round_trip_with_vae_and_memory_is_bit_identical(pipe, tmp_path):
    images = _images(3, seed=3)
    before = {m: pipe(images, generator=_gens(3), output_type="np", mode=m) for m in ("ddad", "d3ad")}
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt*"))
    loaded = DDADPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vae is not None and loaded.vae.config.latent_channels == 4
    for mode, out in before.items():
        again = loaded(images, generator=_gens(3), output_type="np", mode=mode)
        assert np.array_equal(out.anomaly_maps, again.anomaly_maps), mode
        assert np.array_equal(out.image_scores, again.image_scores), mode
    assert set(before["d3ad"].start_steps.tolist()) <= set(range(10, 81, 10))


def test_each_mode_judges_with_its_own_threshold(pipe):
    images = _images(2, seed=5)
    ddad = pipe(images, output_type="np", mode="ddad")
    assert ddad.threshold == 0.5 and ddad.is_anomalous.tolist() == (ddad.image_scores > 0.5).tolist()
    assert pipe.config.d3ad_threshold is None
    d3ad = pipe(images, output_type="np", mode="d3ad")
    assert d3ad.threshold is None and d3ad.is_anomalous is None  # never judged by DDAD's threshold
    cut = float(np.sort(d3ad.image_scores)[0])  # between the two scores: one image above, one not
    pipe.register_to_config(d3ad_threshold=cut)
    try:
        again = pipe(images, output_type="np", mode="d3ad")
        assert again.threshold == cut and again.is_anomalous.sum() == 1
    finally:
        pipe.register_to_config(d3ad_threshold=None)


def test_mismatched_vae_and_unet_are_refused(pipe):
    with pytest.raises(ValueError, match="latent channels"):
        DDADPipeline(unet=make_tiny_pipeline().unet, scheduler=pipe.scheduler, feature_encoder=pipe.feature_encoder,
                     vae=pipe.vae)


def test_a_hub_autoencoder_loads_from_the_offline_cache(tmp_path, monkeypatch):
    """``train_unet.py --vae <repo id>`` takes a pretrained autoencoder from the Hub (here: an offline cache holding
    a tiny 8x one, as Stable Diffusion's is); the U-Net's latent side follows from its depth."""
    import huggingface_hub.constants as constants

    from ddad_hub.models.autoencoder import build_vae, latent_factor, load_vae

    spec = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-vae"
    build_vae({"resolution": 64, "vae": spec}).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    vae = load_vae("acme/tiny-vae")
    assert latent_factor(vae.config) == 8 and not vae.training
    assert not any(p.requires_grad for p in vae.parameters())
    z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)


def test_shift_factor_of_hub_autoencoders_is_applied_both_ways():
    """Some Hub autoencoders also shift their latents; training latents and the pipeline use one definition."""
    from ddad_hub.models.autoencoder import encode_images

    pipe = make_tiny_pipeline(latent=True)
    x = _images(2) * 2 - 1
    plain_z, plain_r = pipe.encode(x, torch.float32), pipe.decode(pipe.encode(x, torch.float32), torch.float32)
    pipe.vae.register_to_config(shift_factor=0.5)
    z = pipe.encode(x, torch.float32)
    torch.testing.assert_close(z, plain_z - 0.5 * pipe.vae.config.scaling_factor)
    torch.testing.assert_close(pipe.decode(z, torch.float32), plain_r)
    torch.testing.assert_close(encode_images(pipe.vae, x), z)


def test_a_missing_autoencoder_folder_is_named(tmp_path):
    from ddad_hub.models.autoencoder import load_vae

    with pytest.raises(FileNotFoundError, match="train_vae.py"):
        load_vae(tmp_path / "runs" / "vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vae(str(tmp_path / "empty"))


def test_load_vae_reads_a_training_folder_and_refuses_other_models(tmp_path):
    from diffusers import UNet2DModel

    from ddad_hub.models.autoencoder import build_vae, load_vae

    spec = {"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8}
    build_vae({"resolution": 32, "vae": spec}).save_pretrained(tmp_path / "run" / "vae")
    assert load_vae(tmp_path / "run").config.latent_channels == 4  # train_vae.py's --output-dir itself
    UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="holds a UNet2DModel, not an AutoencoderKL"):
        load_vae(tmp_path / "unet")


def test_a_resolution_the_unet_cannot_halve_is_refused_before_training():
    from ddad_hub.models.unet import build_unet, check_resolution
    from ddad_hub.presets import load_preset

    with pytest.raises(ValueError, match="resolution 100 does not fit.*multiple of 8, e.g. 96 or 104"):
        build_unet(load_preset("cpu", resolution=100))
    check_resolution(load_preset("cpu", resolution=72))
    latent = load_preset("cpu_latent", resolution=100)
    with pytest.raises(ValueError, match="latents 4x smaller.*multiple of 32"):
        check_resolution(latent, latent_factor=4)


def test_the_two_step_api_gives_a_calls_maps_with_the_reconstructions_latents(pipe):
    x = _images(2, seed=4)
    called = pipe(x, generator=_gens(2), output_type="pt", mode="ddad", autocast_dtype=torch.float32)
    images = pipe.preprocess(x)[0]
    r, latents = pipe.reconstruct(images, generator=_gens(2), autocast_dtype=torch.float32, return_latents=True)
    maps = pipe.compute_anomaly_maps(images, r, torch.float32, latents=latents)
    torch.testing.assert_close(maps, called.anomaly_maps, rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="encodes the reconstructions again"):
        pipe.compute_anomaly_maps(images, r, torch.float32)
