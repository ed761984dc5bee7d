"""Inference backends other than PyTorch. Each is optional; importing this package never imports one."""

BACKENDS = ("pytorch", "openvino")
