"""ddad-hub: diffusion-based visual anomaly detection (DDAD) as a diffusers pipeline."""

__version__ = "0.1.0"

from .image_utils import ImageLoadError, open_image
from .models import FeatureEncoder
from .models.feature_memory import FeatureMemory
from .pipelines import DDADPipeline, DDADPipelineOutput, DiADPipeline, load_pipeline
from .schedulers import DDADScheduler

__all__ = [
    "DDADPipeline",
    "DDADPipelineOutput",
    "DDADScheduler",
    "DiADPipeline",
    "FeatureEncoder",
    "FeatureMemory",
    "ImageLoadError",
    "load_pipeline",
    "open_image",
]
