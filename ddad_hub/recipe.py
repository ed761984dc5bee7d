"""Turning a trained U-Net into a calibrated DDADPipeline folder (placeholder, filled in below)."""


def finalize_run(*args, **kwargs):
    raise NotImplementedError
