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
    with pytest.raises(ImageLoadError, match="damaged or truncated"):  # a lazily opened PIL image is decoded too
        open_image(Image.open(io.BytesIO(good[: len(good) // 2])))
    with pytest.raises(ImageLoadError, match="no such file"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        open_image(tmp_path)
    with pytest.raises(ImageLoadError, match="too small"):
        open_image(_png(Image.new("RGB", (4, 4))))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match="too large"):
        open_image(bomb)
    assert time.perf_counter() - start < 2  # refused before decoding


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_file_of_several_images_is_read_page_by_page_not_as_its_first(tmp_path):
    """A TIFF stack or an animation scored by its first page alone would pass the other pages unseen."""
    from ddad_hub.image_utils import count_pages

    rng = np.random.default_rng(0)
    pages = [Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    for name in ("stack.tif", "clip.gif"):
        path = tmp_path / name
        pages[0].save(path, save_all=True, append_images=pages[1:])
        assert count_pages(path) == 3
        with pytest.raises(ImageLoadError, match="holds 3 images"):
            open_image(path)
        with pytest.raises(ImageLoadError, match="has no page 3"):
            open_image(path, page=3)
        if name.endswith(".tif"):  # lossless: each page is the image saved there
            for k in range(3):
                assert np.array_equal(np.asarray(open_image(path, page=k)), np.asarray(pages[k]))
        else:
            assert not np.array_equal(np.asarray(open_image(path, page=1)), np.asarray(open_image(path, page=2)))
    single = tmp_path / "one.png"
    pages[0].save(single)
    assert count_pages(single) == 1 and open_image(single, page=0).size == (40, 32)
    # a camera JPEG with a second, preview picture (MPO) is one photo
    camera = tmp_path / "camera.jpg"
    pages[0].save(camera, format="MPO", save_all=True, append_images=[pages[1]])
    assert Image.open(camera).n_frames == 2 and count_pages(camera) == 1
    assert open_image(camera).size == (40, 32)
    # cut short anywhere, a stack is an ImageLoadError at worst, never another exception (a batch would stop)
    for name in ("stack.tif", "clip.gif"):
        data = (tmp_path / name).read_bytes()
        for cut in range(8, len(data), max(1, len(data) // 60)):
            short = tmp_path / f"short_{name}"
            short.write_bytes(data[:cut])
            for page in [None] + list(range(count_pages(short))):
                try:
                    open_image(short, page=page)
                except ImageLoadError:
                    pass
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really")
    assert count_pages(broken) == 1  # its error comes from open_image
    with pytest.raises(ImageLoadError):
        open_image(broken)


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


def test_a_camera_image_is_turned_upright_as_its_exif_says(tmp_path):
    rng = np.random.default_rng(1)
    upright = Image.fromarray((rng.random((40, 24, 3)) * 255).astype(np.uint8))  # 24 wide, 40 tall on screen
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores it: sideways, 40 wide
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif.tobytes())
    opened = open_image(path)
    assert opened.size == (24, 40)
    assert np.array_equal(np.asarray(opened), np.asarray(upright))
    assert open_image(Image.open(path)).size == (24, 40)  # a PIL image opened by the caller too


def test_deep_images_are_scaled_by_their_range_not_their_brightest_pixel():
    data = np.full((16, 16), 2000, dtype=np.int32)  # 12-bit camera data in a 32-bit container
    hot = data.copy()
    hot[0, 0] = 16000
    plain, with_hot = (np.asarray(open_image(Image.fromarray(a, mode="I")))[8, 8, 0] for a in (data, hot))
    assert plain == with_hot == round(2000 / 65535 * 255)
    assert np.asarray(open_image(Image.fromarray(data.astype(np.uint16))))[8, 8, 0] == plain  # as 16-bit, the same
    small = Image.fromarray(np.full((16, 16), 200, dtype=np.int32), mode="I")
    assert np.asarray(open_image(small))[0, 0, 0] == 200  # 8-bit data in a 32-bit container stays as it is
    unit = Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32), mode="F")
    assert np.asarray(open_image(unit))[0, 0, 0] == 128


def test_arrays_and_tensors_of_every_layout_become_rgb_tensors():
    from ddad_hub.image_utils import to_image_tensor

    rng = np.random.default_rng(2)
    rgb = (rng.random((3, 40, 3)) * 255).astype(np.uint8)  # numpy: channels last, even when 3 rows tall
    expected = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(to_image_tensor(rgb), expected)
    torch.testing.assert_close(to_image_tensor(rgb.astype(np.uint16) * 257), expected)  # 16-bit: same picture
    torch.testing.assert_close(to_image_tensor(expected[0]), expected)  # tensors: channels first
    torch.testing.assert_close(to_image_tensor(expected[0].to(torch.bfloat16)), expected, atol=4e-3, rtol=0)
    torch.testing.assert_close(to_image_tensor(expected * 2 - 1), expected)  # [-1, 1] is recognised
    grey = rgb[..., 0]
    assert torch.equal(to_image_tensor(grey), torch.from_numpy(grey)[None, None].float().div(255).expand(-1, 3, -1, -1))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)  # fully transparent goes on black
    assert to_image_tensor(rgba).shape == (1, 3, 3, 40) and to_image_tensor(rgba).max() == 0
    batch = np.stack([rgb, rgb])
    assert to_image_tensor(batch).shape == (2, 3, 3, 40)
    with pytest.raises(ValueError, match="1 \\(grey\\), 3 \\(RGB\\) or 4"):
        to_image_tensor(np.zeros((8, 8, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="8- or 16-bit"):
        to_image_tensor(np.zeros((8, 8, 3), dtype=np.int64))
    # 0-255 values as floats would be clamped to white: refused, with what to do
    with pytest.raises(ValueError, match="spans \\[255, 255\\].*as uint8, or divide them by 255"):
        to_image_tensor(np.full((8, 8, 3), 255.0, dtype=np.float32))
    assert to_image_tensor(np.full((8, 8, 3), 1.004, dtype=np.float32)).shape == (1, 3, 8, 8)  # rounding passes
    # and so below 0: one sample at -1e-6 (a resize's overshoot) must not turn a [0, 1] image into a [-1, 1] one
    unit = rgb.astype(np.float32) / 255
    overshoot = unit.copy()
    overshoot[0, 0, 0] = -1e-6
    clamped = expected.clone()
    clamped[0, 0, 0, 0] = 0
    torch.testing.assert_close(to_image_tensor(overshoot), clamped)
    assert to_image_tensor(np.full((8, 8, 3), 1.004, dtype=np.float32)).max() == 1  # clamped into [0, 1]
    overshoot[0, 0, 0] = -0.09  # a bicubic resize's undershoot at a hard edge, or a bright [-1, 1] image: said
    with pytest.warns(UserWarning, match="read as \\[-1, 1\\]; if it is a \\[0, 1\\] image"):
        to_image_tensor(overshoot)
    for bad, words in ((np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN or infinite"),
                       (np.zeros((0, 8, 8, 3), dtype=np.float32), "empty batch"), (None, "no image given")):
        with pytest.raises(ValueError, match=words):
            to_image_tensor(bad)


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
    extra = {"stale": torch.zeros(1)}  # a plain tensor dict (an EMA's weights) is refilled, as it was saved
    state = load_checkpoint(latest_checkpoint(tmp_path), {"model": resumed, "extra": extra}, resumed_opt)
    assert state == {"elapsed": 1.5, "step": 3}
    assert list(extra) == ["ema.w"] and torch.equal(extra["ema.w"], torch.ones(2))
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


def test_resume_refuses_other_runs_and_passes_over_a_damaged_checkpoint(tmp_path):
    from ddad_hub.checkpointing import resume

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    assert resume(tmp_path, {"model": model}, opt, resume_requested=False) is None  # an empty folder: a new run
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"model": model}, opt,
                        {"elapsed_seconds": float(step), "data": "/d/widget", "seed": 0})
    # a new run (no --resume) would delete its own checkpoints in favour of the earlier run's higher steps
    with pytest.raises(SystemExit, match="earlier run.*step_00000002.*--resume"):
        resume(tmp_path, {"model": model}, opt, resume_requested=False)
    with pytest.raises(SystemExit, match="run on /d/widget, this run is on /d/gadget"):
        resume(tmp_path, {"model": model}, opt, data="/d/gadget")
    with pytest.raises(SystemExit, match="another network"):
        resume(tmp_path, {"model": torch.nn.Linear(3, 2)}, None, data="/d/widget")
    # another --seed draws other held-out images: some of them were trained on
    with pytest.raises(SystemExit, match="--seed 0, this run has --seed 3: resume with the same --seed"):
        resume(tmp_path, {"model": model}, opt, data="/d/widget", seed=3)
    assert resume(tmp_path, {"model": model}, opt, log=lambda _: None, data="/d/widget", seed=0)[1].name.endswith("2")
    weights = tmp_path / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # the newest checkpoint damaged: the one before it is used
    said = []
    state, ckpt = resume(tmp_path, {"model": model}, opt, log=said.append, data="/d/widget")
    assert ckpt.name == "step_00000001" and state["step"] == 1
    assert "step_00000002 is damaged" in said[0] and "resumed from" in said[1]
    state_file = tmp_path / "step_00000001" / "state.json"
    state_file.write_text("{not json")
    with pytest.raises(SystemExit, match="every checkpoint"):
        resume(tmp_path, {"model": model}, opt, log=said.append)


def test_resume_passes_over_checkpoints_damaged_in_place_or_of_a_diverged_run(tmp_path):
    """A file still readable but not as written (bytes overwritten, NaN weights) would be resumed from, and pruning
    would then delete the good checkpoints behind it."""
    from ddad_hub.checkpointing import resume

    model = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters())
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": model}, opt, {"seed": 0}, keep=4)
    weights = tmp_path / "step_00000004" / "model.safetensors"  # same size, bytes changed inside the tensor data
    data = bytearray(weights.read_bytes())
    data[-256:] = b"\xff" * 256
    weights.write_bytes(bytes(data))
    nan = torch.nn.Linear(64, 64)
    with torch.no_grad():
        nan.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, 5, {"model": nan}, opt, {"seed": 0}, keep=5)  # a diverged run's last checkpoint
    (tmp_path / "step_00000003" / "state.json").write_text("[]")  # valid JSON, not a state
    said = []
    state, ckpt = resume(tmp_path, {"model": model}, opt, log=said.append)
    assert ckpt.name == "step_00000002" and state["step"] == 2
    assert "step_00000005 is damaged" in said[0] and "NaN or infinite" in said[0]
    assert "step_00000004 is damaged" in said[1] and "checksum" in said[1]
    assert "step_00000003 is damaged" in said[2]


def test_a_diverged_loss_ends_the_run_on_every_process_before_the_optimizer_step():
    """A NaN on one process reaches every process's weights through the summed gradients: all stop at once."""
    from ddad_hub.training import stop_if_diverged

    class Processes:  # accelerate's reduce over processes, the others' "not finite" flags given
        def __init__(self, others: float):
            self.others = others

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            return tensor + self.others

    stop_if_diverged(Processes(0.0), torch.tensor(0.5), step=3)  # all finite: trains on
    with pytest.raises(SystemExit, match="loss became nan at step 4: training diverged"):
        stop_if_diverged(Processes(0.0), torch.tensor(float("nan")), step=3)
    with pytest.raises(SystemExit, match="training diverged"):  # this process is fine, another is not
        stop_if_diverged(Processes(1.0), torch.tensor(0.5), step=3)
    with pytest.raises(SystemExit, match="loss became inf"):
        stop_if_diverged(Processes(0.0), torch.tensor(float("inf"), dtype=torch.bfloat16), step=3)


def test_resume_keeps_this_runs_learning_rate_and_the_checkpoints_moments(tmp_path):
    from ddad_hub.checkpointing import resume

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.05)
    _train(model, opt, 3, seed=1)
    save_checkpoint(tmp_path, 3, {"model": model}, opt, {"elapsed_seconds": 1.0})

    resumed = torch.nn.Linear(3, 2)
    lowered = torch.optim.Adam(resumed.parameters(), lr=0.01, weight_decay=0.05)  # --resume --learning-rate 0.01
    said = []
    resume(tmp_path, {"model": resumed}, lowered, log=said.append)
    assert lowered.param_groups[0]["lr"] == 0.01 and lowered.param_groups[0]["weight_decay"] == 0.05
    assert any("lr 0.01 (this run's setting) replaces the checkpoint's 0.1" in line for line in said)
    moments = [s["exp_avg"] for s in opt.state.values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, lowered.state.values()))
    # the same settings: nothing is said, and the run goes on exactly as the uninterrupted one
    same = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1, weight_decay=0.05)
    said.clear()
    resume(tmp_path, {"model": torch.nn.Linear(3, 2)}, same, log=said.append)
    assert not any("replaces" in line for line in said)


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    import subprocess
    import sys

    from ddad_hub.checkpointing import lock_run_folder

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ddad_hub.checkpointing import "
                               "lock_run_folder; lock_run_folder(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(60)", str(tmp_path / "ckpt")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=f"in use by another training run \\(pid {holder.pid}\\)"):
            lock_run_folder(tmp_path / "ckpt")
    finally:
        holder.kill()
        holder.wait()
    lock_run_folder(tmp_path / "ckpt")  # released when its process ended, however it ended
    lock_run_folder(tmp_path / "ckpt")  # and held again by this process, which may ask twice


def test_an_ignored_ctrl_c_stays_ignored_and_sigterm_stops_cleanly():
    import os
    import signal

    from ddad_hub.training import StopOnInterrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a job in the background
    try:
        with StopOnInterrupt() as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert not stop.requested and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with StopOnInterrupt() as stop:  # such a job is still stopped cleanly by kill (SIGTERM), as a cluster does
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
        with pytest.raises(SystemExit) as at_once, StopOnInterrupt():  # a second SIGTERM ends the run at once
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        assert at_once.value.code == 143
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_out_images_are_checked_before_a_run_trains(tmp_path):
    from conftest import write_category

    from ddad_hub.data import DatasetLayoutError, check_held_out, find_categories, split_categories

    small = write_category(tmp_path, "small", n_train=4, seed=0)
    _, _, held = split_categories(find_categories([small]), holdout=0.1)
    with pytest.raises(DatasetLayoutError, match="small: holdout 0.1 leaves no held-out"):
        check_held_out(held, 0.1)
    eight = write_category(tmp_path, "eight", n_train=8, seed=1)  # 10% of 8: one image, and D3AD's bins need two
    _, _, held = split_categories(find_categories([eight]), holdout=0.1)
    assert len(held["eight"]) == 1
    with pytest.raises(DatasetLayoutError, match="leaves 1 held-out nominal image.*at least 2"):
        check_held_out(held, 0.1)
    _, _, held = split_categories(find_categories([small]), holdout=0.5)
    check_held_out(held, 0.5)
    held["small"][0].write_bytes(b"junk")  # read only at finalisation otherwise, after the whole training
    with pytest.raises(ImageLoadError):
        check_held_out(held, 0.5)


def test_a_file_system_without_locks_warns_and_trains_on(tmp_path, monkeypatch):
    import errno
    import fcntl

    from ddad_hub.checkpointing import lock_run_folder

    def no_locks(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot be locked"):
        lock_run_folder(tmp_path / "lustre")
