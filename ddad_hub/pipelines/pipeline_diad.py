"""DiADPipeline: one latent diffusion model for many product classes, steered by a semantic-guided network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DModel
from diffusers.image_processor import VaeImageProcessor

from ..anomaly_map import check_fusion_rule
from ..models.feature_encoder import FeatureEncoder
from ..models.feature_memory import FeatureMemory
from ..models.semantic_guided import SemanticGuidedNetwork, unet_forward_with_residuals
from ..schedulers.scheduling_ddad import DDADScheduler
from .pipeline_ddad import DDADPipeline, check_unet_and_vae


class DiADPipeline(DDADPipeline):
    """Anomaly detection with DiAD (He et al., AAAI 2024): reconstruct from full noise, guided by the input.

    The input's latent is noised to the scheduler's ``start_step`` (999: full noise) and rebuilt in DDIM steps of
    ``skip`` (100: ten steps; ``eta`` 0), while the SG network sees the input image and feeds the denoiser's skip
    connections. The map is the feature distance of input and reconstruction (``feature_encoder``'s stages, e.g.
    strides 4, 8 and 16), upsampled and blurred; ``v > 0`` would add the latent distance as in DDAD.

    It is a :class:`DDADPipeline` with one more component, so preprocessing, the autoencoder, the feature distance,
    the map, the output type, thresholds and checked safetensors loading are the same code. The model never sees
    a class label: one pipeline serves every category it was trained on.

    Modes: "diad" (the reconstruction map above) and, once ``ddad_hub.recipe.finalize_diad`` fitted it, "fused":
    DiAD's map and the feature memory's nearest-neighbour map, each normalised by nominal statistics, combined as
    in :class:`DDADPipeline` (``fused_base`` is "diad"). A memory that knows each bank entry's product also lets
    the pipeline judge each image by its recognised product's threshold (``category_thresholds``).

    Components:
        unet: the denoiser (``UNet2DModel``), its up path fine-tuned together with the SG network.
        sg_network: :class:`SemanticGuidedNetwork`.
        scheduler: :class:`DDADScheduler`; ``start_step``, ``skip``, ``eta`` (and ``w``, 0 in DiAD) of the run.
        feature_encoder: :class:`FeatureEncoder` for the map.
        vae: the ``AutoencoderKL`` whose latents are denoised (optional: without it the U-Net works on pixels).
        feature_memory: :class:`FeatureMemory` for fused mode (optional; its ``feature_strides`` pick the stages it
            reads from ``feature_encoder``, which computes them in the same pass as the map's).
    """

    model_cpu_offload_seq = "vae->sg_network->unet->feature_encoder"
    _optional_components = ["vae", "feature_memory"]

    def __init__(
        self,
        unet: UNet2DModel,
        sg_network: SemanticGuidedNetwork,
        scheduler: DDADScheduler,
        feature_encoder: FeatureEncoder,
        vae: AutoencoderKL | None = None,
        v: float = 0.0,
        blur_sigma: float = 4.0,
        map_size: int | None = None,
        pixel_weight: float | None = None,
        threshold: float | None = None,
        seed: int = 0,
        compute_dtype: str = "auto",
        mode: str = "diad",
        feature_memory: FeatureMemory | None = None,
        fused_base: str | None = None,
        fused_stats: dict | None = None,
        fused_rule: str = "sum",
        fused_weight: float = 0.5,
        fused_threshold: float | None = None,
        memory_at_map_size: bool = True,
        category_thresholds: dict | None = None,
    ):
        DiffusionPipeline.__init__(self)  # not DDADPipeline's: its D3AD components and settings do not apply
        for module in (unet, sg_network, feature_encoder, vae, feature_memory):
            if module is not None:
                module.eval()
        check_unet_and_vae(unet, vae)
        if mode not in ("diad", "fused"):
            raise ValueError(f"a DiADPipeline's modes are 'diad' and 'fused'; got {mode!r}")
        check_fusion_rule(fused_rule)
        self.register_modules(unet=unet, sg_network=sg_network, scheduler=scheduler, feature_encoder=feature_encoder,
                              vae=vae, feature_memory=feature_memory)
        self.register_to_config(v=v, blur_sigma=blur_sigma, map_size=map_size, pixel_weight=pixel_weight,
                                threshold=threshold, seed=seed, compute_dtype=compute_dtype, mode=mode,
                                fused_base=fused_base, fused_stats=fused_stats, fused_rule=fused_rule,
                                fused_weight=fused_weight, fused_threshold=fused_threshold,
                                memory_at_map_size=memory_at_map_size, category_thresholds=category_thresholds)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True)

    def hint_images(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The input images at the size the SG network's conv stack maps onto the latent grid."""
        size = tuple(s * self.sg_network.hint_scale() for s in latents.shape[-2:])
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def guidance(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The SG network sees the input image (at the size its conv stack maps onto the latent grid)."""
        return self.hint_images(images.to(self.device, torch.float32), latents)

    def denoising_steps(self, scheduler: DDADScheduler) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Unlike DDAD's schedule, the first step evaluates the model at ``start_step`` itself (the noise level the
        sample is at): 999, 899, ..., 99, then the clean estimate (previous step -1)."""
        steps = torch.arange(scheduler.start_step, -1, -scheduler.skip, device=self.device)
        last = torch.tensor(-1, device=self.device)
        return [(t, steps[i + 1] if i + 1 < len(steps) else last) for i, t in enumerate(steps)]

    def predict_noise(self, sample: torch.Tensor, timesteps: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise estimate with the SG network's residuals added."""
        if self.backend == "openvino":  # the SG network's stand-in is the whole guided denoiser, one compiled graph
            return self.sg_network(sample, timesteps, guidance)
        sample = sample.contiguous(memory_format=torch.channels_last)
        down, mid = self.sg_network(sample, timesteps, guidance)
        return unet_forward_with_residuals(self.unet, sample, timesteps, down, mid).sample

    def reconstruction_modes(self) -> list[str]:
        """DiAD's reconstruction map is its one: the base of fused mode."""
        return ["diad"]

    def available_modes(self) -> list[str]:
        """"diad", and "fused" once the recipe fitted it (what the app and ``evaluate.py`` offer)."""
        modes = ["diad"]
        if self.feature_memory is not None and self.config.fused_base == "diad" and self.config.fused_stats:
            modes.append("fused")
        return modes

    def check_mode(self, mode: str) -> None:
        """Accept "diad" (and "ddad", its synonym here) and a fitted "fused": :meth:`DDADPipeline.__call__` runs
        DiAD on its fixed-start-step path, whose ``reconstruct`` uses DiAD's hooks above (``start_steps`` in the
        output are all ``start_step``)."""
        if mode in ("diad", "ddad") or (mode == "fused" and mode in self.available_modes()):
            return
        if mode == "fused":
            raise ValueError("fused mode is not fitted in this DiAD pipeline (it needs a feature_memory and "
                             "fused_stats): finalise it with training/train_diad.py --resume on its run")
        raise ValueError(f"a DiADPipeline's modes are 'diad' and 'fused'; got {mode!r}")

    def resolve_mode(self, mode: str) -> str:
        """"ddad" runs as "diad", its synonym here, so per-product thresholds are found under "diad"."""
        self.check_mode(mode)
        return "diad" if mode == "ddad" else mode

    def threshold_for(self, mode: str | None = None) -> float | None:
        """The calibrated image-score threshold of ``mode`` (default ``config.mode``)."""
        mode = mode or self.config.mode
        return self.config.fused_threshold if mode == "fused" else self.config.threshold
