"""DDADPipeline: reconstruct an image with a conditioned diffusion model and map where it differs from the input."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..anomaly_map import (
    check_fusion_rule,
    combine_maps,
    feature_distance,
    fuse_maps,
    image_scores,
    latent_distance,
    pixel_distance,
    resize_maps,
)
from ..backends import pop_backend
from ..backends.openvino import OpenVINOMixin
from ..dynamic_noise import dynamic_start_steps
from ..hardware import has_native_bf16
from ..image_utils import open_image, resize_images, to_image_tensor
from ..model_info import PipelineFolderError, newer_version_note, stamp_version, weights_fingerprint
from ..models.autoencoder import from_latents, latent_factor, to_latents
from ..models.feature_encoder import FeatureEncoder
from ..models.feature_memory import FeatureMemory
from ..schedulers.scheduling_ddad import DDADScheduler
from .hub import push_pipeline
from .loading import check_class, pipeline_folder

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
MODES = ("ddad", "d3ad", "fused")  # DDAD's fixed-step reconstruction, D3AD's per-image step, either fused with memory


@dataclass
class DDADPipelineOutput(BaseOutput):
    """What :class:`DDADPipeline` returns.

    Args:
        anomaly_maps: (B, H, W) maps at the pipeline's map resolution; higher means more anomalous.
        anomaly_maps_input_size: one map per image at that image's own size.
        image_scores: (B,) image scores, the maximum of each map.
        reconstructions: the defect-free reconstructions, in ``output_type``.
        is_anomalous: (B,) booleans, ``image_scores > image_thresholds``; ``None`` when the pipeline has no threshold.
        masks: (B, H, W) booleans at map resolution, ``anomaly_maps >`` the image's threshold; ``None`` without one.
        start_steps: (B,) the noise level each image started from (differs per image in D3AD mode; in fused mode,
            its reconstruction mode's).
        threshold: the threshold the call's mode was calibrated with (``None`` if it was not); with per-product
            thresholds, the one shared by all products, and ``image_thresholds`` holds what each image was judged by.
        categories: (B,) the product each image was recognised as, by a multi-class pipeline's feature memory
            (nearest neighbours; no label is given); ``None`` when per-product thresholds are not in use.
        image_thresholds: (B,) the threshold each image's verdict and mask used: its product's when ``categories``
            is set, else ``threshold``; ``None`` without a threshold.
        category_distances: (B,) how far each image lies from the product it was recognised as, relative to that
            product's held-out good images (1.0: as far as the farthest of them); ``None`` unless ``categories`` is
            set and the memory's limits were fitted (``ddad_hub.recipe.fit_unknown_products``).
        unknown_category: (B,) booleans, ``category_distances`` above the memory's ``unknown_margin``: the image
            looks like none of the trained products, and ``categories`` names only the nearest one. The verdict
            (``is_anomalous``) does not depend on it.
    """

    anomaly_maps: np.ndarray | torch.Tensor
    anomaly_maps_input_size: list
    image_scores: np.ndarray | torch.Tensor
    reconstructions: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    is_anomalous: np.ndarray | torch.Tensor | None = None
    masks: np.ndarray | torch.Tensor | None = None
    start_steps: np.ndarray | torch.Tensor | None = None
    threshold: float | None = None
    categories: list[str] | None = None
    image_thresholds: np.ndarray | torch.Tensor | None = None
    category_distances: np.ndarray | torch.Tensor | None = None
    unknown_category: np.ndarray | torch.Tensor | None = None


class DDADPipeline(OpenVINOMixin, DiffusionPipeline):
    """Anomaly detection by conditioned diffusion reconstruction (DDAD).

    Components:
        unet: a diffusers ``UNet2DModel`` trained for epsilon prediction on nominal images (or their latents).
        scheduler: :class:`DDADScheduler`; its config holds the default ``w``, ``start_step``, ``skip`` and ``eta``.
        feature_encoder: :class:`FeatureEncoder`, the (domain-adapted) ImageNet CNN for the feature distance.

    Settings saved in ``model_index.json``:
        v: weight of the pixel distance (the latent distance, with a ``vae``) in the combined map.
        blur_sigma: Gaussian blur of the combined map, in map pixels.
        map_size: side of the square map; input and reconstruction are resized to it before comparing them.
            ``None`` uses the U-Net's resolution.
        pixel_weight: fixed ``max D_f / max D_p`` ratio calibrated on nominal images; ``None`` takes each image's.
        threshold: image-score threshold of DDAD mode, calibrated on nominal images only; ``None`` if not calibrated.
        d3ad_threshold: the same for D3AD mode, whose maps differ (other start steps, no noise).
        seed: seed of the per-image noise when no generator is passed, so a given image always gets the same score.
        mode: "ddad" (fixed start step, noised start), "d3ad" (per-image start step from the feature memory's
            first estimate, noise-free scaled start; needs ``feature_memory``) or "fused" (the reconstruction map
            of ``fused_base`` and the feature memory's nearest-neighbour map, each normalised, then combined).
        d3ad_t_max / d3ad_w / d3ad_eta: D3AD's largest start step, conditioning weight and stochasticity.
        fused_base: the reconstruction mode ("ddad" or "d3ad"; "diad" in a DiAD pipeline) whose map fused mode
            uses; ``None``: fused mode is not fitted (pipelines saved before it existed).
        fused_stats: nominal ``[mean, std]`` of the maps, per source ("ddad", "d3ad", "memory"), that fused mode
            normalises them with; measured on held-out nominal images (the memory's cross-fitted).
        fused_rule / fused_weight: how the two normalised maps combine (``ddad_hub.anomaly_map.fuse_maps``).
        fused_threshold: the calibrated image-score threshold of fused mode.
        category_thresholds: per mode, per product, the threshold calibrated on that product's held-out nominal
            images (``{"fused": {"tire": 2.1, ...}, ...}``); a multi-class pipeline whose memory knows each bank
            entry's product judges each image by the threshold of the product it recognises. ``None``: one
            threshold per mode.
        memory_at_map_size: the feature memory reads each input resized to the map size, rather than the U-Net's
            input upsampled (which loses a latent pipeline's detail). ``False`` in pipelines saved before it existed,
            whose D3AD score bins were fitted that way.
        compute_dtype: "auto" (bf16 autocast where the hardware is fast at it, else fp32), "float32" or
            "bfloat16". The scheduler's arithmetic and the maps are always fp32.

    Optional components:
        feature_memory: :class:`FeatureMemory` with ``score_bins``, D3AD's first estimate.
        vae: a diffusers ``AutoencoderKL``. With it the diffusion runs on its scaled latents (D3AD's latent space):
            the input is encoded (the posterior mean times ``scaling_factor``), the latents are noised and denoised
            conditioned on themselves and decoded; the pixel distance ``D_p`` is replaced by the latent distance
            (mean over channels of ``|z - z_r|``, upsampled), and ``D_f`` compares the input with the decoded
            reconstruction.
    """

    model_cpu_offload_seq = "vae->unet->feature_encoder"
    _optional_components = ["feature_memory", "vae"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDADScheduler,
        feature_encoder: FeatureEncoder,
        v: float = 1.0,
        blur_sigma: float = 4.0,
        map_size: int | None = None,
        pixel_weight: float | None = None,
        threshold: float | None = None,
        seed: int = 0,
        feature_memory: FeatureMemory | None = None,
        mode: str = "ddad",
        d3ad_t_max: int = 80,
        d3ad_w: float = 4.0,
        d3ad_eta: float = 0.0,
        compute_dtype: str = "auto",
        vae: AutoencoderKL | None = None,
        d3ad_threshold: float | None = None,
        fused_base: str | None = None,
        fused_stats: dict | None = None,
        fused_rule: str = "sum",
        fused_weight: float = 0.5,
        fused_threshold: float | None = None,
        memory_at_map_size: bool = False,
        category_thresholds: dict | None = None,
    ):
        super().__init__()
        unet.eval()  # inference only: a pipeline never trains its components
        feature_encoder.eval()
        if vae is not None:
            vae.eval()
        check_unet_and_vae(unet, vae)
        # a folder's config is checked as it loads, not at the first call
        if mode not in MODES:
            raise ValueError(f"mode must be 'ddad', 'd3ad' or 'fused', got {mode!r}")
        check_fusion_rule(fused_rule)
        self.register_modules(
            unet=unet, scheduler=scheduler, feature_encoder=feature_encoder, feature_memory=feature_memory, vae=vae
        )
        self.register_to_config(
            v=v, blur_sigma=blur_sigma, map_size=map_size, pixel_weight=pixel_weight, threshold=threshold, seed=seed,
            mode=mode, d3ad_t_max=d3ad_t_max, d3ad_w=d3ad_w, d3ad_eta=d3ad_eta, compute_dtype=compute_dtype,
            d3ad_threshold=d3ad_threshold, fused_base=fused_base, fused_stats=fused_stats, fused_rule=fused_rule,
            fused_weight=fused_weight, fused_threshold=fused_threshold, memory_at_map_size=memory_at_map_size,
            category_thresholds=category_thresholds,
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True)

    def threshold_for(self, mode: str | None = None) -> float | None:
        """The calibrated image-score threshold of ``mode`` (default ``config.mode``); ``None`` if uncalibrated."""
        mode = mode or self.config.mode
        thresholds = {"d3ad": self.config.d3ad_threshold, "fused": self.config.fused_threshold}
        return thresholds.get(mode, self.config.threshold)

    def category_thresholds_for(self, mode: str | None = None) -> dict[str, float] | None:
        """Per-product thresholds of ``mode`` when this pipeline can use them (a memory that recognises the
        product, thresholds calibrated for the mode); ``None`` otherwise."""
        mode = mode or self.config.mode
        memory = getattr(self, "feature_memory", None)
        if memory is None or not memory.has_groups:
            return None
        return (self.config.category_thresholds or {}).get(mode)

    def available_modes(self) -> list[str]:
        """The modes this pipeline can run: "ddad" always, "d3ad" and "fused" once the recipe fitted them."""
        modes = ["ddad"]
        memory = self.feature_memory
        if memory is not None and memory.config.score_bins:
            modes.append("d3ad")
        if memory is not None and self.config.fused_base in modes and self.config.fused_stats:
            modes.append("fused")
        return modes

    def reconstruction_modes(self) -> list[str]:
        """The available modes whose map is a reconstruction's (the candidates for fused mode's ``fused_base``)."""
        return [m for m in self.available_modes() if m in ("ddad", "d3ad")]

    def resolve_mode(self, mode: str) -> str:
        """The mode a call runs for the ``mode`` asked for: checked by :meth:`check_mode` (a subclass maps its
        synonyms here, so thresholds are looked up under the mode's own name)."""
        self.check_mode(mode)
        return mode

    def check_mode(self, mode: str) -> None:
        """Raise a ``ValueError`` that says why ``mode`` cannot run on this pipeline."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'ddad', 'd3ad' or 'fused', got {mode!r}")
        if mode in self.available_modes():
            return
        if mode == "d3ad":
            raise ValueError("D3AD mode needs a fitted feature_memory with score_bins; see ddad_hub.recipe.fit_d3ad")
        raise ValueError("fused mode is not fitted in this pipeline (it needs a feature_memory, fused_base and "
                         "fused_stats; pipelines saved before fused mode existed lack them): re-run the recipe with "
                         "training/finalize.py --pipeline <folder> --output-dir <new folder>")

    # ------------------------------------------------------------------ sizes
    @property
    def sample_size(self) -> tuple[int, int]:
        """(height, width) of the images the pipeline works on: the U-Net's; with a vae, the image size whose latents
        are the U-Net's size (a Hub autoencoder's own ``sample_size``, 512 say, says nothing about this U-Net)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        factor = latent_factor(self.vae.config) if self.vae is not None else 1
        return h * factor, w * factor

    @property
    def map_hw(self) -> tuple[int, int]:
        return (self.config.map_size,) * 2 if self.config.map_size else self.sample_size

    @property
    def read_hw(self) -> tuple[int, int]:
        """(height, width) every input is first resized to, the larger of :attr:`sample_size` and :attr:`map_hw`;
        each part takes the image from there. The training scripts and the recipe read images at this size
        (``data.load_images``), so an upload of any size is scored as the thresholds were calibrated."""
        return tuple(max(a, b) for a, b in zip(self.sample_size, self.map_hw))

    # ------------------------------------------------------------------ pre-processing
    def preprocess(
        self, images: ImageInput, size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images of any size and mode -> a (B, 3, H, W) tensor in [-1, 1] at the U-Net's resolution (or ``size``).

        Returns the tensor and each input's original (height, width). Every kind of input (path, PIL image, array,
        tensor; see :func:`to_image_tensor`) is resized the same way, the way the thresholds were calibrated
        (bilinear with antialiasing, to :attr:`read_hw` first, then to ``size``), so a file and its pixels as a
        tensor score the same, and so do an upload and the same image read by the training scripts.
        """
        if not isinstance(images, list):
            images = [images] if not isinstance(images, tuple) else list(images)
        tensors, sizes = [], []
        h, w = size or self.sample_size
        for image in images:
            if isinstance(image, str | os.PathLike | bytes):
                image = open_image(image)
            item = to_image_tensor(image)
            sizes.extend([tuple(item.shape[-2:])] * item.shape[0])
            tensors.append(resize_images(resize_images(item * 2 - 1, self.read_hw), (h, w)))
        return torch.cat(tensors), sizes

    # ------------------------------------------------------------------ the two stages
    def default_autocast_dtype(self) -> torch.dtype | None:
        """The networks' compute type when a call names none: ``config.compute_dtype``, where "auto" means bf16
        on hardware with fast bf16 (CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it), else fp32."""
        policy = self.config.compute_dtype
        if policy == "float32":
            return None
        if policy == "bfloat16":
            return torch.bfloat16
        if policy != "auto":
            raise ValueError(f"compute_dtype must be 'auto', 'float32' or 'bfloat16', got {policy!r}")
        return torch.bfloat16 if has_native_bf16(self.device) else None

    def _autocast(self, dtype: torch.dtype | None):
        dtype = self.default_autocast_dtype() if dtype is None else dtype
        if dtype == torch.float32 or dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _generators(self, generator, batch: int) -> list[torch.Generator] | torch.Generator:
        if generator is not None:
            return generator
        return [torch.Generator(device="cpu").manual_seed(self.config.seed) for _ in range(batch)]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> the space the U-Net denoises: the images themselves, or the scaled latents."""
        images = images.to(self.device, torch.float32)
        if self.vae is None:
            return images
        with self._autocast(autocast_dtype):
            return to_latents(self.vae, images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The inverse of :meth:`encode`: images in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        with self._autocast(autocast_dtype):
            return from_latents(self.vae, latents)

    @torch.no_grad()
    def reconstruct(
        self,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
        w: float | None = None,
        start_step: int | None = None,
        skip: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise_free_start: bool = False,
        autocast_dtype: torch.dtype | None = None,
        show_progress: bool = True,
        return_latents: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Noise ``images`` (in [-1, 1]) to ``start_step`` and denoise them, conditioned on ``target``.

        ``target`` defaults to the images themselves (DDAD); domain adaptation passes other nominal images.
        ``noise_free_start`` starts from ``sqrt(abar) x`` (D3AD) instead of adding noise. With a ``vae`` all of it
        happens on latents and the result is decoded. ``return_latents`` also returns ``(z, z_r)``, the input's
        and the reconstruction's latents (the images themselves without a vae).
        """
        # a copy holds this call's schedule: calls from several threads (a Space's requests) share the pipeline
        scheduler = copy.copy(self.scheduler)
        scheduler.set_timesteps(start_step=start_step, skip=skip, device=self.device)
        w = scheduler.config.w if w is None else w
        eta = scheduler.config.eta if eta is None else eta
        x0 = self.encode(images, autocast_dtype)
        target = x0 if target is None else self.encode(target, autocast_dtype)
        generator = self._generators(generator, x0.shape[0])
        if noise_free_start:
            sample = scheduler.scale_noise_free(x0, scheduler.start_step)
        else:
            noise = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
            sample = scheduler.add_noise(x0, noise, scheduler.start_step)
        reconstruction = sample
        guidance = self.guidance(images, x0)
        steps = self.denoising_steps(scheduler)
        for t, prev in self.progress_bar(steps) if show_progress else steps:
            with self._autocast(autocast_dtype):
                eps = self.predict_noise(sample, t.expand(sample.shape[0]).to(self.device), guidance)
            sample, reconstruction = scheduler.step(eps.float(), t, sample, target=target, w=w, eta=eta,
                                                    prev_timestep=prev, generator=generator, return_dict=False)
        images_out = self.decode(reconstruction, autocast_dtype)
        if return_latents:
            return images_out, (x0, reconstruction if self.vae is not None else images_out)
        return images_out

    def denoising_steps(self, scheduler: DDADScheduler) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(t, previous t) of each denoising step of ``scheduler`` (after its ``set_timesteps``); ``None`` means
        ``t - skip``."""
        return [(t, None) for t in scheduler.timesteps]

    def guidance(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
        """What the denoiser sees besides the noisy sample: nothing in DDAD (DiAD passes the input image)."""
        return None

    def predict_noise(self, sample: torch.Tensor, timesteps: torch.Tensor, guidance: torch.Tensor | None):
        """The U-Net's noise estimate at ``sample``; call it under the autocast context of the run."""
        # channels-last inputs take oneDNN's faster convolution paths (weights stay contiguous for saving)
        return self.unet(sample.contiguous(memory_format=torch.channels_last), timesteps).sample

    @property
    def memory_encoder(self):
        """The encoder the feature memory reads with: the feature encoder in full precision, as its bank was made
        (an OpenVINO pipeline in bf16 keeps an fp32 compilation of it for this)."""
        return getattr(self.feature_encoder, "full_precision", None) or self.feature_encoder

    @torch.no_grad()
    def memory_maps(self, images: torch.Tensor, return_categories: bool = False, categories: list[str] | None = None):
        """The feature memory's (maps at map resolution, image scores) for images in [-1, 1]; with
        ``return_categories``, also the product each image shows (a multi-class memory's nearest neighbours).
        ``categories`` (product names) searches those products' bank entries only."""
        out = self.feature_memory.anomaly_maps(self.memory_encoder, self.resize_to_map(images), self.map_hw,
                                               return_groups=return_categories, groups=categories)
        return (out[0].float().cpu(), out[1].float().cpu(), *out[2:])

    def check_categories(self, category: str | list[str] | None, num_images: int) -> list[str] | None:
        """``category`` as one product name per image (``None`` stays ``None``), refused unless this is a
        multi-class pipeline that knows every name."""
        if category is None:
            return None
        if self.feature_memory is None or not self.feature_memory.has_groups:
            raise ValueError("category= names each image's product for a multi-class pipeline; this pipeline's "
                             "memory knows no products (it was fitted on one product, or has no memory)")
        names = [category] * num_images if isinstance(category, str) else list(category)
        if len(names) != num_images:
            raise ValueError(f"got {len(names)} categories for {num_images} images (give one name, or one per image)")
        known = list(self.feature_memory.config.group_names)
        unknown = sorted({str(c) for c in names if c not in known})
        if unknown:
            raise ValueError(f"unknown product(s) {unknown}: this pipeline knows {known}")
        return names

    @torch.no_grad()
    def memory_for_categories(
        self, images: torch.Tensor, categories: list[str], with_maps: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[list[str], torch.Tensor]]:
        """For images in [-1, 1] of known products: the memory's maps and scores (``None`` without ``with_maps``),
        and ``(categories, distances)``, each image searched among its own product's bank entries only."""
        n = images.shape[0]
        maps, scores, distances = None, None, torch.zeros(n)
        for name in dict.fromkeys(categories):
            rows = torch.tensor([i for i, c in enumerate(categories) if c == name])
            if with_maps:
                m, s, _, d = self.memory_maps(images[rows], return_categories=True, categories=[name])
                if maps is None:
                    maps, scores = m.new_zeros((n, *m.shape[1:])), s.new_zeros(n)
                maps[rows], scores[rows] = m, s
            else:
                d = self.feature_memory.recognise(self.memory_encoder, self.resize_to_map(images[rows]),
                                                  groups=[name])[1]
            distances[rows] = d.float()
        return maps, scores, (list(categories), distances)

    @torch.no_grad()
    def infer_categories(self, images: torch.Tensor, batch_size: int = 16) -> list[str]:
        """The product each image in [-1, 1] shows, as a multi-class pipeline's feature memory recognises it."""
        return self.recognise_categories(images, batch_size)[0]

    @torch.no_grad()
    def recognise_categories(self, images: torch.Tensor, batch_size: int = 16) -> tuple[list[str], torch.Tensor]:
        """:meth:`infer_categories` and each image's distance from the bank (``FeatureMemory.recognise``), searched
        ``batch_size`` images at a time."""
        found = [self.feature_memory.recognise(self.memory_encoder, self.resize_to_map(images[s : s + batch_size]))
                 for s in range(0, images.shape[0], batch_size)]
        return [name for names, _ in found for name in names], torch.cat([d for _, d in found])

    def memory_inputs(self, image: ImageInput) -> torch.Tensor:
        """``image`` (any input a call takes) as a call hands it to the feature memory, in [-1, 1]: at map size,
        or at the U-Net's size for pipelines saved before ``memory_at_map_size``."""
        return self.preprocess(image, size=self.map_hw if self.config.memory_at_map_size else None)[0]

    @torch.no_grad()
    def recognise_products(
        self, image: ImageInput, batch_size: int = 16
    ) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
        """Which product each image shows, without reconstructing it: a multi-class pipeline's ``categories``,
        ``category_distances`` and ``unknown_category`` as its calls report them (the last two ``None`` when the
        memory's limits were not fitted). Images are read as calls read them for the memory."""
        if self.feature_memory is None or not self.feature_memory.has_groups:
            raise ValueError("only a multi-class pipeline (a feature memory that knows its products) recognises them")
        names, distances = self.recognise_categories(self.memory_inputs(image), batch_size)
        return names, *self.feature_memory.unknown_products(names, distances)

    @torch.no_grad()
    def first_estimate(self, images: torch.Tensor) -> torch.Tensor:
        """D3AD's cheap anomaly estimate: the feature memory's image score of each image (in [-1, 1])."""
        return self.memory_maps(images)[1]

    @torch.no_grad()
    def reconstruct_dynamic(
        self,
        images: torch.Tensor,
        generator=None,
        autocast_dtype: torch.dtype | None = None,
        first_estimate: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """D3AD: each image starts, without noise, from the step its first estimate's histogram bin picks.

        Returns the reconstructions, the start steps and ``(z, z_r)`` as :meth:`reconstruct` does. Images sharing
        a start step are denoised together. ``first_estimate`` passes scores already computed (fused mode).
        """
        scores = self.first_estimate(images) if first_estimate is None else first_estimate
        t_hat, skips = dynamic_start_steps(scores, self.feature_memory.config.score_bins, self.config.d3ad_t_max)
        generators = self._generators(generator, images.shape[0])
        out = torch.empty_like(images, dtype=torch.float32)
        latents, recon_latents = None, None
        for t in torch.unique(t_hat).tolist():
            idx = (t_hat == t).nonzero().flatten()
            gen = [generators[i] for i in idx.tolist()] if isinstance(generators, list) else generators
            r, (z, z_r) = self.reconstruct(
                images[idx], w=self.config.d3ad_w, start_step=int(t), skip=int(skips[idx[0]]),
                eta=self.config.d3ad_eta, generator=gen, noise_free_start=True, autocast_dtype=autocast_dtype,
                show_progress=False, return_latents=True,
            )
            if latents is None:
                latents = z.new_empty((images.shape[0], *z.shape[1:]))
                recon_latents = torch.empty_like(latents)
            out[idx], latents[idx], recon_latents[idx] = r, z, z_r
        return out, t_hat, (latents, recon_latents)

    def resize_to_map(self, images: torch.Tensor) -> torch.Tensor:
        """Bilinear resize to the map resolution, where inputs and reconstructions are compared."""
        if tuple(images.shape[-2:]) == tuple(self.map_hw):
            return images.float()
        return torch.nn.functional.interpolate(images.float(), size=self.map_hw, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def compute_distances(
        self,
        images: torch.Tensor,
        reconstructions: torch.Tensor,
        autocast_dtype: torch.dtype | None = None,
        latents: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D_f, D_p)``, each (B, H, W) at map resolution, for inputs and reconstructions in [-1, 1].

        With a ``vae``, ``D_p`` is the latent distance between ``latents = (z, z_r)`` (as :meth:`reconstruct`
        returns them; encoded from the images when not given).
        """
        size = self.map_hw
        x, r = self.resize_to_map(images), self.resize_to_map(reconstructions)
        with self._autocast(autocast_dtype):
            both = torch.cat([x, r]).to(self.device).contiguous(memory_format=torch.channels_last)
            feats = self.feature_encoder(both)
        fx = [f[: x.shape[0]] for f in feats]
        fr = [f[x.shape[0] :] for f in feats]
        d_f = feature_distance(fx, fr, size)
        if self.vae is None:
            return d_f, pixel_distance(x, r).to(d_f.device)
        if latents is None:
            latents = (self.encode(images, autocast_dtype), self.encode(reconstructions, autocast_dtype))
        return d_f, latent_distance(*latents, size).to(d_f.device)

    def combine(self, d_feature: torch.Tensor, d_pixel: torch.Tensor) -> torch.Tensor:
        """The blurred combined map from the two distances, with this pipeline's ``v`` and calibration."""
        return combine_maps(d_feature, d_pixel, self.config.v, self.config.pixel_weight, self.config.blur_sigma)

    def fuse(self, recon_maps: torch.Tensor, memory_maps: torch.Tensor, base: str | None = None,
             rule: str | None = None, memory_weight: float | None = None) -> torch.Tensor:
        """Fused mode's map from maps of reconstruction mode ``base`` and of the memory, with this pipeline's
        nominal statistics and (unless given) its rule and weight."""
        stats = self.config.fused_stats
        base = base or self.config.fused_base
        return fuse_maps(recon_maps, memory_maps, stats[base], stats["memory"], rule or self.config.fused_rule,
                         self.config.fused_weight if memory_weight is None else memory_weight)

    @torch.no_grad()
    def compute_anomaly_maps(
        self,
        images: torch.Tensor,
        reconstructions: torch.Tensor,
        autocast_dtype: torch.dtype | None = None,
        latents: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Combined anomaly maps (B, H, W) at map resolution for inputs and reconstructions in [-1, 1].

        With a ``vae``, pass the ``latents`` that ``reconstruct(..., return_latents=True)`` returned, as a call
        does: encoding the decoded reconstruction again gives other maps than the thresholds were calibrated on.
        """
        if self.vae is not None and latents is None:
            warnings.warn("compute_anomaly_maps of a latent pipeline without latents= encodes the reconstructions "
                          "again, so its maps differ from a call's (and from its calibrated thresholds): pass the "
                          "latents reconstruct(..., return_latents=True) returns", stacklevel=2)
        return self.combine(*self.compute_distances(images, reconstructions, autocast_dtype, latents))

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        w: float | None = None,
        start_step: int | None = None,
        skip: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
        autocast_dtype: torch.dtype | None = None,
        mode: str | None = None,
        per_category_thresholds: bool = True,
        category: str | list[str] | None = None,
    ) -> DDADPipelineOutput | tuple:
        """Score images for anomalies.

        Args:
            image: a PIL image, path, array or tensor, or a list of them; any size and mode. Tensors are read as
                [0, 1] (or [-1, 1] if they hold values below -0.01).
            w, start_step, skip, eta: reconstruction settings; ``None`` takes the scheduler config's.
            generator: noise source; one per image keeps scores independent of batching (in float32, to about
                1e-6; under bf16 autocast, which ``compute_dtype="auto"`` picks on CPUs with native bf16, the
                batch's shape changes the kernels' rounding and a score can move by up to about 0.02). ``None``
                gives each image its own generator seeded with ``config.seed`` (repeatable scores).
            batch_size: images reconstructed at once.
            output_type: "pil", "np" or "pt" for the reconstructions ("np" and "pt" in [0, 1]); maps and scores
                are numpy unless "pt".
            return_dict: ``False`` returns a tuple of :class:`DDADPipelineOutput`'s fields, in its order.
            autocast_dtype: the networks' compute type for this call (``torch.float32`` forces full precision);
                ``None`` follows ``config.compute_dtype``.
            mode: "ddad", "d3ad" or "fused" (see :meth:`available_modes`); ``None`` takes ``config.mode``. In D3AD
                mode ``w``, ``start_step``, ``skip`` and ``eta`` are ignored: each image's start step comes from the
                feature memory. Fused mode runs its ``fused_base`` mode and the memory and fuses their maps.
            per_category_thresholds: a multi-class pipeline with per-product thresholds judges each image by the
                threshold of the product its memory recognises (``categories`` in the output); ``False`` applies
                the one shared threshold to every image.
            category: the product each image shows, when the inspector knows it (one name for all images, or one
                per image), for a multi-class pipeline (see ``feature_memory.config.group_names``). The memory then
                compares each image with its own product's nominal patches only, instead of recognising the product
                from its nearest neighbours; the image is judged by that product's threshold, and
                ``unknown_category`` flags an image that does not look like the product it was said to show.
        """
        mode = self.resolve_mode(mode or self.config.mode)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(image, list | tuple) and not image:
            raise ValueError("no images given (an empty list)")
        x, sizes = self.preprocess(image)
        given = self.check_categories(category, x.shape[0])
        uses_memory = mode in ("d3ad", "fused")  # other modes (ddad, a subclass's) reconstruct from a fixed step
        own_thresholds = self.category_thresholds_for(mode) if per_category_thresholds else None
        x_map = x
        names_products = own_thresholds is not None or given is not None  # the output reports each image's product
        reads_memory = uses_memory or names_products
        if reads_memory and self.config.memory_at_map_size and self.map_hw != self.sample_size:
            x_map = self.preprocess(image, size=self.map_hw)[0]
        if isinstance(generator, list) and len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {x.shape[0]} images")
        generators = self._generators(generator, x.shape[0])

        maps, recons, starts, categories, distances = [], [], [], [], []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            gen = generators[start : start + batch_size] if isinstance(generators, list) else generators
            recon_mode = self.config.fused_base if mode == "fused" else mode
            memory_maps, first, found = None, None, ([], torch.zeros(0))
            if given is not None:  # each image searched among its own product's entries
                memory_maps, first, found = self.memory_for_categories(x_map[start : start + batch_size],
                                                                       given[start : start + batch_size],
                                                                       with_maps=uses_memory)
            elif uses_memory:  # one nearest-neighbour search gives the memory's map, score, product and distance
                memory_maps, first, *recognised = self.memory_maps(x_map[start : start + batch_size],
                                                                   return_categories=own_thresholds is not None)
                found = recognised or found
            elif own_thresholds is not None:
                found = self.recognise_categories(x_map[start : start + batch_size])
            categories += found[0]
            distances.append(found[1])
            if recon_mode == "d3ad":
                r, t_hat, latents = self.reconstruct_dynamic(chunk, gen, autocast_dtype, first_estimate=first)
            else:
                r, latents = self.reconstruct(chunk, w=w, start_step=start_step, skip=skip, eta=eta, generator=gen,
                                              autocast_dtype=autocast_dtype, return_latents=True)
                t_hat = torch.full((chunk.shape[0],), self.scheduler.config.start_step if start_step is None
                                   else int(start_step))
            chunk_maps = self.combine(*self.compute_distances(chunk, r, autocast_dtype, latents)).float().cpu()
            maps.append(self.fuse(chunk_maps, memory_maps) if mode == "fused" else chunk_maps)
            recons.append(r)
            starts.append(t_hat)
        start_steps = torch.cat(starts)
        maps_t = torch.cat(maps).float().cpu()
        recon_t = torch.cat(recons).cpu()
        scores = image_scores(maps_t)
        full = [resize_maps(m[None], size)[0] for m, size in zip(maps_t, sizes)]

        threshold = self.threshold_for(mode)
        per_image = None
        if own_thresholds is not None:  # a product without its own threshold falls back to the shared one
            chosen = [own_thresholds.get(c, threshold) for c in categories]
            if None in chosen:
                missing = sorted({c for c, t in zip(categories, chosen) if t is None})
                raise ValueError(f"no threshold for product(s) {missing} in mode {mode!r}, and no shared one")
            per_image = torch.tensor(chosen, dtype=torch.float32)
        elif threshold is not None:
            per_image = torch.full_like(scores, threshold, dtype=torch.float32)
        flags = scores > per_image if per_image is not None else None
        relative, unknown = None, None
        if names_products:
            relative, unknown = self.feature_memory.unknown_products(categories, torch.cat(distances))
        failed = torch.isnan(scores)
        if failed.any():  # a broken network gives NaN maps; an inspection must not pass those parts as good
            warnings.warn(f"{int(failed.sum())} image(s) got a NaN anomaly score (a network computed NaN: damaged "
                          "weights?); they are judged defective, the whole image marked", RuntimeWarning, stacklevel=3)
            flags = flags | failed if flags is not None else None
        masks = maps_t > per_image[:, None, None] if per_image is not None else None
        if masks is not None and failed.any():
            masks[failed] = True
        if output_type == "pt":
            reconstructions = self.image_processor.postprocess(recon_t, output_type="pt")  # [0, 1], as diffusers
        else:
            full = [m.numpy() for m in full]
            maps_t, scores = maps_t.numpy(), scores.numpy()
            flags = flags.numpy() if flags is not None else None
            masks = masks.numpy() if masks is not None else None
            start_steps = start_steps.numpy()
            per_image = per_image.numpy() if per_image is not None else None
            relative = relative.numpy() if relative is not None else None
            unknown = unknown.numpy() if unknown is not None else None
            reconstructions = self.image_processor.postprocess(recon_t, output_type=output_type)
        self.maybe_free_model_hooks()
        output = DDADPipelineOutput(
            anomaly_maps=maps_t,
            anomaly_maps_input_size=full,
            image_scores=scores,
            reconstructions=reconstructions,
            is_anomalous=flags,
            masks=masks,
            start_steps=start_steps,
            threshold=threshold,
            categories=categories if names_products else None,
            image_thresholds=per_image,
            category_distances=relative,
            unknown_category=unknown,
        )
        if not return_dict:  # every field in the output's order, ``None`` kept, so positions never shift
            return tuple(getattr(output, field.name) for field in dataclasses.fields(output))
        return output

    # ------------------------------------------------------------------ loading
    def to(self, *args, **kwargs):
        """Diffusers' ``to`` (a device), refusing a lower-precision weight type (see :func:`check_weights_dtype`)."""
        for value in (*args, kwargs.get("dtype"), kwargs.get("torch_dtype")):
            if isinstance(value, torch.dtype):
                check_weights_dtype(value)
        # diffusers warns that float16 cannot run on the CPU when it sees a float16 feature-memory bank; the
        # bank is scored in float32, and float16 weights are refused above, so the warning would only mislead
        kwargs.setdefault("silence_dtype_warnings", True)
        return super().to(*args, **kwargs)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, card_folder: str | os.PathLike | None = None,
                    **kwargs) -> str:
        """Upload to the Hub with this project's model card (licence of the training data, test metrics, how to
        load it) rendered from ``card_folder`` (default: the folder it was loaded from); see
        :func:`ddad_hub.pipelines.hub.push_pipeline`. Returns the commit's URL."""
        if kwargs:
            raise TypeError(f"push_to_hub() got unexpected arguments {sorted(kwargs)}")
        return push_pipeline(self, repo_id, card_folder, commit_message, private, token, create_pr)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """diffusers' ``save_pretrained``; with ``push_to_hub=True`` the upload goes through :meth:`push_to_hub`,
        so it carries the model's own card (diffusers' would write a generic one over the folder's README):
        ``card_folder``'s, else ``save_directory``'s training record if this save left the folder's weights as they
        were (the record describes them), else that of the folder the pipeline was loaded from."""
        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "private", "token", "create_pr", "card_folder")
               if k in kwargs}
        if kwargs.get("safe_serialization") is False:
            raise ValueError("ddad-hub saves weights as safetensors only (from_pretrained reads nothing else): "
                             "drop safe_serialization=False")
        before = weights_fingerprint(save_directory) if push_to_hub and os.path.isdir(save_directory) else None
        super().save_pretrained(save_directory, *args, **kwargs)
        stamp_version(save_directory)
        if push_to_hub:
            repo_id = hub.pop("repo_id", None) or Path(save_directory).name
            if hub.get("card_folder") is None:
                here = Path(save_directory) if (Path(save_directory) / "training_info.json").is_file() else None
                if here is not None and before != weights_fingerprint(save_directory):
                    here = None  # the record there describes the networks this save replaced
                own = getattr(self, "name_or_path", None)
                hub["card_folder"] = here or (own if own and (Path(own) / "training_info.json").is_file() else None)
            self.push_to_hub(repo_id, **hub)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DDADPipeline:
        """Load from a local folder or a Hub repo id (downloaded, or read from the cache when offline).

        The folder is checked first, so a missing or damaged component fails with an error naming the file.
        Weights are read from safetensors only.

        ``backend="openvino"`` runs the networks with OpenVINO (see :meth:`to_openvino`): the folder's IR files
        from :meth:`export_openvino`, or IR exported into a cache on first use. ``openvino_cache_dir``,
        ``openvino_int8_weights`` and ``openvino_properties`` go to :meth:`to_openvino`.
        """
        backend, openvino_options = pop_backend(kwargs)
        for key in ("torch_dtype", "dtype"):
            check_weights_dtype(kwargs.get(key))
        path = pipeline_folder(pretrained_model_name_or_path, kwargs, backend)
        stored = check_pipeline_folder(path, variant=kwargs.get("variant"))
        check_class(path, cls)
        kwargs.setdefault("use_safetensors", True)
        pipe = super().from_pretrained(path, **kwargs)
        check_loaded_weights(pipe, stored, path)
        own_aligned_weights(pipe)
        if backend == "openvino":
            pipe.to_openvino(path, **openvino_options)
        return pipe


def check_unet_and_vae(unet: UNet2DModel, vae: AutoencoderKL | None) -> None:
    """Refuse a U-Net and autoencoder that do not fit together (a latent U-Net without its autoencoder, or latent
    channels that differ) when the pipeline is built, not with a convolution's error at its first call."""
    if vae is not None:
        if vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(f"the vae's {vae.config.latent_channels} latent channels do not match the unet's "
                             f"{unet.config.in_channels} input channels")
    elif unet.config.in_channels != 3:
        raise ValueError(f"the unet denoises {unet.config.in_channels}-channel latents, so it needs the "
                         "autoencoder (vae) it was trained with; got vae=None")


def check_weights_dtype(dtype) -> None:
    """Weights stay float32: the thresholds, score bins and nominal statistics were calibrated with them. Lower
    precision is a compute type, chosen per call or by ``compute_dtype`` (bf16 autocast where the CPU has it)."""
    if isinstance(dtype, dict):  # diffusers' per-component form, {"default": torch.float32, "unet": ...}
        for value in dtype.values():
            check_weights_dtype(value)
        return
    if dtype is not None and dtype != torch.float32:
        raise ValueError(f"ddad-hub pipelines keep float32 weights (got {dtype}): for bf16 compute pass "
                         "compute_dtype='bfloat16' to from_pretrained or autocast_dtype=torch.bfloat16 to the call; "
                         "the default, 'auto', uses bf16 where the CPU has native bf16")


def check_loaded_weights(pipe: DiffusionPipeline, stored: dict[str, set[str]], path: str | os.PathLike) -> None:
    """Refuse a component whose weights files (``stored``: their tensor names, as :func:`check_pipeline_folder`
    read them) lack tensors the component has: diffusers would only warn and leave them at random (or zero)
    values, and the pipeline would score nonsense."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module) or name not in stored:
            continue
        folder = os.path.join(path, name)
        missing = sorted(set(component.state_dict()) - stored[name])
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PipelineFolderError(f"component '{name}': {folder} lacks {len(missing)} of its tensors ({shown}); "
                                      "the file is not this component's weights")


def own_aligned_weights(pipe: DiffusionPipeline) -> None:
    """Give every component's weights their own freshly allocated memory.

    Weights read from safetensors can be views into the file's buffer at addresses that are not 64-byte aligned.
    CPU matrix kernels then take other code paths than for the aligned tensors of the model that was saved, so
    fp32 results differed in the last bits (1e-7) between a pipeline and its reloaded copy. Copies restore
    bit-identical results (and the faster aligned kernels).
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                tensor.data = tensor.data.clone()


def weight_files(folder: str | os.PathLike, variant: str | None = None) -> list[str]:
    """The ``.safetensors`` files of a component folder that diffusers loads: the shards its index lists, or its one
    weights file (``variant``'s, else the plain one), or, named otherwise, every ``.safetensors`` file there. A
    variant or a backup lying beside the loaded file is not counted: its tensors would not be loaded."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    from diffusers.utils.hub_utils import _add_variant

    present = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    for kind in ([variant] if variant else []) + [None]:
        index = os.path.join(folder, _add_variant(SAFE_WEIGHTS_INDEX_NAME, kind))
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    return sorted(set(json.load(f)["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise PipelineFolderError(f"{index} is damaged ({err!r})") from err
        single = _add_variant(SAFETENSORS_WEIGHTS_NAME, kind)
        if single in present:
            return [single]
    return present


def check_pipeline_folder(path: str | os.PathLike, variant: str | None = None) -> dict[str, set[str]]:
    """Raise a clear error if a saved pipeline folder lacks a file or holds an unreadable one; return the tensor
    names each component's weights files (:func:`weight_files`) hold."""
    from safetensors import safe_open

    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{path} is not a saved pipeline: model_index.json is missing")
    try:
        with open(index) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise PipelineFolderError(f"{index} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise PipelineFolderError(f"{index} holds no JSON object: it is not a pipeline's index")
    note = newer_version_note(config, path)
    if note:
        warnings.warn(note, stacklevel=3)
    stored: dict[str, set[str]] = {}
    for name, value in config.items():
        if not (isinstance(value, list) and len(value) == 2) or value[0] is None:
            continue
        folder = os.path.join(path, name)
        configs = [f for f in ("config.json", "scheduler_config.json") if os.path.isfile(os.path.join(folder, f))]
        if not configs:
            raise FileNotFoundError(f"component '{name}': {folder}/config.json (or scheduler_config.json) is missing")
        for cfg in configs:
            try:
                with open(os.path.join(folder, cfg)) as f:
                    json.load(f)
            except json.JSONDecodeError as err:
                raise PipelineFolderError(f"component '{name}': {os.path.join(folder, cfg)} is not valid JSON: "
                                          f"{err}") from err
        if "scheduler_config.json" in configs:
            continue
        weights = weight_files(folder, variant)
        if not weights:
            raise FileNotFoundError(f"component '{name}': no .safetensors weights in {folder}")
        missing = [w for w in weights if not os.path.isfile(os.path.join(folder, w))]
        if missing:
            raise FileNotFoundError(f"component '{name}': {folder} lacks {', '.join(missing)}, which its shard index "
                                    "lists")
        stored[name] = set()
        for weight in weights:
            file = os.path.join(folder, weight)
            try:
                with safe_open(file, framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
                        stored[name].add(key)
            except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
                raise PipelineFolderError(f"component '{name}': {file} is damaged or not a safetensors file "
                                          f"({err})") from err
    return stored
