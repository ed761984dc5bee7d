from .loading import load_pipeline
from .pipeline_ddad import DDADPipeline, DDADPipelineOutput, check_pipeline_folder

__all__ = ["DDADPipeline", "DDADPipelineOutput", "check_pipeline_folder", "load_pipeline"]
