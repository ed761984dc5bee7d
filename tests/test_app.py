"""The Gradio app served on localhost and called through gradio_client, as a Space's API users would."""

from __future__ import annotations

import io
import socket
import threading

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402

pytestmark = pytest.mark.slow
EMBEDDED = app.DEFAULT_MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_pipeline_dir):
    """The app on a free localhost port, with the embedded model when present (else a tiny random one)."""
    model = EMBEDDED if EMBEDDED.is_dir() else tiny_pipeline_dir
    demo = app.build_demo(app.Inspector(app.load_pipeline(model)))
    demo.queue(default_concurrency_limit=1, max_size=32)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size=app.MAX_UPLOAD)
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, model
    demo.close()


def _call(client, path, mode="ddad"):
    return client.predict(gradio_client.handle_file(str(path)), 4, 250, 25, mode, api_name="/analyze")


def test_api_is_documented(server):
    client, _ = server
    info = client.view_api(return_format="dict", print_info=False)
    assert "/analyze" in info["named_endpoints"]


@pytest.mark.skipif(not EMBEDDED.is_dir(), reason="the embedded model is not in this checkout")
def test_defective_example_scores_above_good_ones(server):
    client, _ = server
    good = [_call(client, app.HERE / "examples" / f"good_{i}.png")[5]["score"] for i in (1, 2)]
    for kind in ("misplaced", "damaged_case"):
        details = _call(client, app.HERE / "examples" / f"{kind}.png")[5]
        assert details["score"] > max(good), (kind, details, good)
        assert details["verdict"] == "DEFECTIVE"


def test_bad_files_get_a_message_and_the_app_keeps_serving(server, tmp_path):
    client, _ = server
    good_png = tmp_path / "ok.png"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(good_png)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good_png.read_bytes()[:200])
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"this is text, not a picture")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (3, 3)).save(tiny)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 M pixels, a few kB on disk
    for bad, words in ((not_image, "not an image"), (truncated, "damaged or truncated"), (tiny, "too small"),
                       (bomb, "too large")):
        with pytest.raises(Exception, match=words):
            _call(client, bad)
        assert np.isfinite(_call(client, good_png)[5]["score"])  # the next request still succeeds


def test_odd_modes_and_depths_are_accepted(server, tmp_path):
    client, _ = server
    rng = np.random.default_rng(1)
    gray = tmp_path / "gray.png"
    Image.fromarray((rng.random((50, 70)) * 255).astype(np.uint8), mode="L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray((rng.random((64, 64, 4)) * 255).astype(np.uint8), mode="RGBA").save(rgba)
    deep = tmp_path / "sixteen.png"
    Image.fromarray((rng.random((64, 48)) * 65535).astype(np.uint16)).save(deep)
    jpeg = tmp_path / "photo.jpg"
    buf = io.BytesIO()
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    jpeg.write_bytes(buf.getvalue())
    for path in (gray, rgba, deep, jpeg):
        details = _call(client, path)[5]
        assert np.isfinite(details["score"]), path.name


def test_two_users_at_once_both_get_answers(server):
    client, model = server
    example = next(iter(sorted((app.HERE / "examples").glob("*.png"))), None)
    if example is None:
        pytest.skip("no example images")
    results, errors = [], []

    def user():
        try:
            c = gradio_client.Client(client.src, verbose=False)
            results.append(_call(c, example)[5]["score"])
        except Exception as err:  # noqa: BLE001 - collected and reported below
            errors.append(err)

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 2
    assert results[0] == pytest.approx(results[1])  # the same image gets the same score


def test_missing_default_model_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="embedded model is missing"):
        app.load_pipeline(tmp_path / "nowhere")
