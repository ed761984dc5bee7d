"""DiAD's semantic-guided (SG) network for a diffusers ``UNet2DModel``, and the U-Net forward that takes its output.

DiAD (He et al., AAAI 2024) steers a latent denoiser with a trainable copy of its down path and middle block that
also sees the input image (ControlNet-style). Its outputs pass through zero-initialised 1x1 convolutions and are
added to the denoiser's skip connections and middle block, so at initialisation the denoiser is unchanged. A
spatial-aware feature fusion (SFF) block adds strided, zero-initialised convolutions of the second-deepest level's
outputs to the deepest level's outputs, then applies SiLU.

Why not diffusers' ``ControlNetModel``: it is a copy of ``UNet2DConditionModel`` (cross-attention blocks, a text
context, ``from_unet`` only takes that class), while this project's denoiser is a ``UNet2DModel``; switching the
denoiser would change every saved DDAD model. This module builds the same structure from a ``UNet2DModel`` config.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Set a module's parameters to zero (ControlNet's trick: a new branch starts as a no-op)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def skip_channels_and_levels(unet_config) -> tuple[list[int], list[int]]:
    """Channels and resolution level (0 = full) of each skip connection a ``UNet2DModel`` collects on its way down.

    The order is the U-Net's: ``conv_in``'s output, then each down block's resnet outputs and its downsampler's.
    """
    widths = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    channels, levels = [widths[0]], [0]
    for i, width in enumerate(widths):
        channels += [width] * layers
        levels += [i] * layers
        if i < len(widths) - 1:  # every block but the last halves the resolution at its end
            channels.append(width)
            levels.append(i + 1)
    return channels, levels


class SemanticGuidedNetwork(ModelMixin, ConfigMixin):
    """DiAD's SG network: a copy of a ``UNet2DModel``'s down path and middle block that sees the input image.

    Args:
        unet_config: the denoiser's config (a dict of ``UNet2DModel``'s arguments); the copy has the same blocks.
        hint_channels: channels of the image's strided conv stack (DiAD: 16, 32, 96, 256).
        hint_strides: stride of each conv of that stack. DiAD's (1, 2, 2, 2) maps 8x larger images onto the latent
            grid of Stable Diffusion's autoencoder; with a 4x autoencoder, (1, 2, 2, 1).
        sff: use the spatial-aware feature fusion block on the deepest level's outputs.

    ``forward`` returns the residuals for the denoiser's skip connections (a tuple, in the U-Net's order) and its
    middle block; all are exactly zero at initialisation.
    """

    @register_to_config
    def __init__(
        self,
        unet_config: dict,
        hint_channels: tuple[int, ...] = (16, 32, 96, 256),
        hint_strides: tuple[int, ...] = (1, 2, 2, 2),
        sff: bool = True,
    ):
        super().__init__()
        if len(hint_channels) != len(hint_strides):
            raise ValueError(f"hint_channels {hint_channels} and hint_strides {hint_strides} differ in length")
        # the trainable copy: built from the config, weights copied from the denoiser by from_unet()
        source = UNet2DModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
        self.time_proj, self.time_embedding = source.time_proj, source.time_embedding
        self.conv_in, self.down_blocks, self.mid_block = source.conv_in, source.down_blocks, source.mid_block

        width = unet_config["block_out_channels"][0]
        stack, previous = [], 3
        for channels, stride in zip(hint_channels, hint_strides):
            stack += [nn.Conv2d(previous, channels, 3, stride=stride, padding=1), nn.SiLU()]
            previous = channels
        stack.append(zero_module(nn.Conv2d(previous, width, 3, padding=1)))
        self.hint_block = nn.Sequential(*stack)

        channels, levels = skip_channels_and_levels(unet_config)
        self.skip_levels = levels
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)
        mid_width = unet_config["block_out_channels"][-1]
        self.mid_zero_conv = zero_module(nn.Conv2d(mid_width, mid_width, 1))

        # SFF: the deepest level's i-th output gains a strided conv of the previous level's i-th output
        deepest = max(levels)
        self.deep_index = [i for i, lv in enumerate(levels) if lv == deepest]
        self.prev_index = [i for i, lv in enumerate(levels) if lv == deepest - 1][-len(self.deep_index):]
        if sff and deepest > 0 and len(self.prev_index) == len(self.deep_index):
            self.sff_convs = nn.ModuleList(
                zero_module(nn.Conv2d(channels[p], channels[d], 3, stride=2, padding=1))
                for p, d in zip(self.prev_index, self.deep_index)
            )
        else:
            self.sff_convs = None

    @classmethod
    def from_unet(cls, unet: UNet2DModel, **kwargs) -> SemanticGuidedNetwork:
        """An SG network whose copied blocks start from the denoiser's weights (as ControlNet starts from SD's)."""
        network = cls(unet_config=dict(unet.config), **kwargs)
        for name in ("time_proj", "time_embedding", "conv_in", "down_blocks", "mid_block"):
            getattr(network, name).load_state_dict(getattr(unet, name).state_dict())
        return network

    def hint_scale(self) -> int:
        """How many image pixels one latent pixel spans: the product of the hint stack's strides."""
        scale = 1
        for s in self.config.hint_strides:
            scale *= s
        return scale

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, image: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(skip residuals, middle residual) for the noisy ``sample`` at ``timestep``, guided by ``image`` in
        [-1, 1] at ``hint_scale()`` times the sample's size."""
        emb = self.time_embedding(self.time_proj(_batch_timesteps(timestep, sample)).to(dtype=self.dtype))
        h = self.conv_in(sample) + self.hint_block(image.to(dtype=sample.dtype))
        skips = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb)
            skips += list(res)
        h = self.mid_block(h, emb)
        outs = [conv(s) for conv, s in zip(self.zero_convs, skips)]
        if self.sff_convs is not None:
            for conv, p, d in zip(self.sff_convs, self.prev_index, self.deep_index):
                outs[d] = torch.nn.functional.silu(outs[d] + conv(outs[p]))
        return tuple(outs), self.mid_zero_conv(h)


def _batch_timesteps(timestep: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=sample.device)
    return t.reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t


def unet_forward_with_residuals(
    unet: UNet2DModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    down_residuals: tuple[torch.Tensor, ...] | None = None,
    mid_residual: torch.Tensor | None = None,
) -> UNet2DOutput:
    """``UNet2DModel.forward`` with residuals added to its skip connections and to its middle block's output.

    ``UNet2DModel`` has no such arguments (``UNet2DConditionModel`` does), so its blocks are run here in the same
    order. Supports the plain (non-skip, non-Fourier, unconditional) U-Nets this project builds.
    """
    emb = unet.time_embedding(unet.time_proj(_batch_timesteps(timestep, sample)).to(dtype=unet.dtype))
    h = unet.conv_in(sample)
    skips = [h]
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += list(res)
    h = unet.mid_block(h, emb)
    if down_residuals is not None:
        if len(down_residuals) != len(skips):
            raise ValueError(f"got {len(down_residuals)} skip residuals for the U-Net's {len(skips)} skips")
        skips = [s + r for s, r in zip(skips, down_residuals)]
    if mid_residual is not None:
        h = h + mid_residual
    for block in unet.up_blocks:
        n = len(block.resnets)
        h = block(h, tuple(skips[-n:]), emb)
        skips = skips[:-n]
    h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
    return UNet2DOutput(sample=h)


class GuidedDenoiser(nn.Module):
    """The denoiser and its SG network as one module (what training wraps for distributed data parallel).

    ``forward(sample, timestep, image)`` returns a ``UNet2DOutput`` like the U-Net itself.
    """

    def __init__(self, unet: UNet2DModel, sg_network: SemanticGuidedNetwork):
        super().__init__()
        self.unet, self.sg_network = unet, sg_network

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, image: torch.Tensor) -> UNet2DOutput:
        down, mid = self.sg_network(sample, timestep, image)
        return unet_forward_with_residuals(self.unet, sample, timestep, down, mid)

    def freeze_encoder_half(self) -> list[nn.Parameter]:
        """DiAD's training split: freeze the denoiser's input, time embedding, down path and middle block; return
        the parameters that train (the SG network and the denoiser's up path and output layers)."""
        self.unet.requires_grad_(False)
        trainable = list(self.sg_network.parameters())
        for module in (self.unet.up_blocks, self.unet.conv_norm_out, self.unet.conv_out):
            module.requires_grad_(True)
            trainable += list(module.parameters())
        return trainable
