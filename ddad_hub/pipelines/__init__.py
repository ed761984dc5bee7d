from .loading import load_pipeline
from .pipeline_ddad import DDADPipeline, DDADPipelineOutput, check_pipeline_folder
from .pipeline_diad import DiADPipeline

__all__ = ["DDADPipeline", "DDADPipelineOutput", "DiADPipeline", "check_pipeline_folder", "load_pipeline"]
