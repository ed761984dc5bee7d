"""Inference backends other than PyTorch. Each is optional; importing this package never imports one."""

from __future__ import annotations

BACKENDS = ("pytorch", "openvino")
OPENVINO_OPTIONS = ("cache_dir", "int8_weights", "properties")


def pop_backend(kwargs: dict) -> tuple[str, dict]:
    """The ``backend`` of a ``from_pretrained`` call and its ``openvino_*`` options, removed from ``kwargs`` (the
    rest goes to diffusers). Options come back without their prefix, as ``to_openvino`` takes them."""
    backend = kwargs.pop("backend", "pytorch")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend, {key: kwargs.pop(f"openvino_{key}") for key in OPENVINO_OPTIONS if f"openvino_{key}" in kwargs}
