"""Opening user images safely, and atomic, resumable checkpoints."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ddad_hub import ImageLoadError, open_image
from ddad_hub.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_broken_files_raise_clear_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="not an image"):
        open_image(b"hello, I am text")
    good = _png(Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)))
    with pytest.raises(ImageLoadError, match="damaged or truncated"):
        open_image(good[: len(good) // 2])
    with pytest.raises(ImageLoadError, match="too small"):
        open_image(_png(Image.new("RGB", (4, 4))))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match="too large"):
        open_image(bomb)
    assert time.perf_counter() - start < 2  # refused before decoding


def test_modes_are_converted_to_rgb8():
    deep = Image.fromarray(np.array([[0, 65535], [32768, 1000]] * 8, dtype=np.uint16).repeat(8, axis=1))
    rgb = open_image(deep)
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0, 0] == 0 and np.asarray(rgb)[0, 8, 0] == 255
    assert abs(int(np.asarray(rgb)[1, 0, 0]) - 128) <= 1
    rgba = Image.new("RGBA", (16, 16), (200, 100, 50, 0))
    assert np.asarray(open_image(rgba)).max() == 0  # fully transparent goes on black
    gray = Image.new("L", (16, 16), 77)
    assert np.asarray(open_image(gray)).tolist()[0][0] == [77, 77, 77]
    assert open_image(Image.new("P", (16, 16))).mode == "RGB"


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.05)
    _train(model, opt, 3, seed=1)
    save_checkpoint(tmp_path, 3, {"model": model, "extra": {"ema.w": torch.ones(2)}}, opt, {"elapsed": 1.5})

    resumed = torch.nn.Linear(3, 2)
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=0.1, weight_decay=0.05)
    state = load_checkpoint(latest_checkpoint(tmp_path), {"model": resumed}, resumed_opt)
    assert state == {"elapsed": 1.5, "step": 3}
    _train(model, opt, 2, seed=2)
    _train(resumed, resumed_opt, 2, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pruning_and_interrupted_writes(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, None, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    (tmp_path / ".tmp_step_00000004_123").mkdir()  # what a write killed half-way leaves
    (tmp_path / "step_00000005").mkdir()  # no state.json: incomplete, never renamed into place
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    with pytest.raises(FileNotFoundError, match="has no other.safetensors"):
        load_checkpoint(tmp_path / "step_00000003", {"other": model})
