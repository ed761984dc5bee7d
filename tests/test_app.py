"""The Gradio app served on localhost and called through gradio_client, as a Space's API users would."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402
from ddad_hub import inspection  # noqa: E402

pytestmark = pytest.mark.slow
EMBEDDED = app.DEFAULT_MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_pipeline_dir):
    """The app on a free localhost port, with the embedded model selected when present; "tiny" is a random one."""
    model = EMBEDDED if EMBEDDED.is_dir() else tiny_pipeline_dir
    sources = {"default": str(model), "tiny": str(tiny_pipeline_dir)}
    demo = app.build_demo(app.ModelShelf(sources, default="default"))
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


def own_d3ad_step(pipe, path) -> int:
    return int(pipe(str(path), mode="d3ad", output_type="np").start_steps[0])


def test_api_calls_get_the_chosen_models_own_settings_and_any_of_its_modes(tmp_path):
    """The API keeps the page's first state: the advanced settings an API call leaves out must be the chosen
    model's own (not the first model's), and the mode choice must accept the chosen model's modes."""
    import torch
    from conftest import make_tiny_pipeline

    from ddad_hub.dynamic_noise import score_bin_edges
    from ddad_hub.models.feature_memory import FeatureMemory

    make_tiny_pipeline(threshold=0.5).save_pretrained(tmp_path / "first")  # DDAD only; w 2, start 100, skip 50
    other = make_tiny_pipeline(threshold=0.5, w=1.0)
    other.scheduler.register_to_config(start_step=60, skip=20)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    memory = FeatureMemory.fit(other.feature_encoder, other.resize_to_map(images), coreset_ratio=0.5, image_size=64,
                               max_patches=500)
    other.register_modules(feature_memory=memory)
    memory.register_to_config(score_bins=score_bin_edges(other.first_estimate(images)))
    other.register_to_config(mode="d3ad")  # its own default mode, which the first model does not have
    other.save_pretrained(tmp_path / "other")
    assert app.Inspector(other).modes == ["ddad", "d3ad"]
    sources = {"first": str(tmp_path / "first"), "other": str(tmp_path / "other")}
    demo = app.build_demo(app.ModelShelf(sources, default="first"))
    demo.queue(default_concurrency_limit=1, max_size=32)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
        image = gradio_client.handle_file(str(tmp_path / "a.png"))
        own = client.predict(image, mode="ddad", model="other", api_name="/analyze")[5]
        explicit = client.predict(image, 1.0, 60, 20, "ddad", "other", api_name="/analyze")[5]
        firsts = client.predict(image, 2.0, 100, 50, "ddad", "other", api_name="/analyze")[5]
        assert own["start_step"] == explicit["start_step"] == 60 and own["score"] == explicit["score"]
        assert firsts["start_step"] == 100 and firsts["score"] != own["score"]
        assert client.predict(image, mode="ddad", model="first", api_name="/analyze")[5]["start_step"] == 100
        assert client.predict(image, model="other", api_name="/analyze")[5]["mode"] == "d3ad"  # its own default
        assert client.predict(image, api_name="/analyze")[5]["mode"] == "ddad"  # the first model's
        table, *_ = client.predict([image], model="other", api_name="/analyze_batch")
        assert table["data"][0][3] == own_d3ad_step(other, tmp_path / "a.png")
        table, *_ = client.predict([image], "d3ad", "other", api_name="/analyze_batch")  # a mode the first lacks
        row = dict(zip(table["headers"], table["data"][0]))
        assert row["score"] > 0 and not row["error"]
        with pytest.raises(Exception, match="D3AD mode is not available with this model; it offers DDAD"):
            client.predict([image], "d3ad", "first", api_name="/analyze_batch")
        # a product can be stated to a multi-class model only (the others here know one product)
        for endpoint, args in (("/analyze", (image, None, None, None, "ddad", "first")), ("/analyze_batch",
                                                                                      ([image], "ddad", "first"))):
            with pytest.raises(Exception, match="trained on one product; it cannot be told the images show 'bottle'"):
                client.predict(*args, "bottle", api_name=endpoint)
        assert client.predict(image, model="first", product=app.RECOGNISE, api_name="/analyze")[5]["score"] > 0
    finally:
        demo.close()


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
    stack = tmp_path / "stack.tif"  # two pages: one score would leave the second unseen
    Image.open(good_png).save(stack, save_all=True, append_images=[Image.open(good_png)])
    for bad, words in ((not_image, "not an image"), (truncated, "damaged or truncated"), (tiny, "too small"),
                       (bomb, "too large"), (stack, "holds 2 images")):
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
    phone = tmp_path / "phone.jpg"  # stored sideways (70 wide) with the EXIF tag that turns it upright (70 tall)
    stored = Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(phone, exif=exif.tobytes())
    for path, shown in ((gray, (70, 50)), (rgba, (64, 64)), (deep, (48, 64)), (jpeg, (30, 30)), (phone, (40, 70))):
        out = _call(client, path)
        pictures, details = out[:4], out[5]
        assert np.isfinite(details["score"]), path.name
        assert details["image_size"] == list(shown), path.name
        # the file as ddad_hub reads it, not as the upload widget would convert it (16-bit clipped to white)
        analysed = np.asarray(Image.open(pictures[0]).convert("RGB"), dtype=np.float64)
        assert abs(analysed.mean() - np.asarray(app.open_image(path), dtype=np.float64).mean()) < 3, path.name
        # every panel at the upload's own size and aspect, upright, as the batch tab shows it
        assert [Image.open(p).size for p in pictures] == [shown] * 4, path.name


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


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((48, 40 + 4 * i, 3)) * 255).astype(np.uint8)).save(folder / f"part_{i}.png")
    return sorted(folder.glob("*.png"))


def _batch(client, paths, model="tiny", mode="ddad"):
    return client.predict([gradio_client.handle_file(str(p)) for p in paths], mode, model, api_name="/analyze_batch")


def test_batch_api_scores_images_and_zips_and_lists_bad_files(server, tmp_path):
    client, _ = server
    images = _images(tmp_path / "parts", 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    archive = tmp_path / "folder.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in images[:2]:
            zf.write(p, f"line_a/{p.name}")
        zf.writestr("line_a/readme.txt", "ignored")
    notes = tmp_path / "notes.txt"  # not an image by its name either: a row for it, not a refused batch
    notes.write_text("lot 7, shift 2")
    table, gallery, csv_file, summary = _batch(client, [*images, broken, archive, notes])
    rows = {r[0]: r for r in table["data"]}
    assert set(rows) == {"part_0.png", "part_1.png", "part_2.png", "broken.png", "folder.zip/line_a/part_0.png",
                         "folder.zip/line_a/part_1.png", "folder.zip/line_a/readme.txt", "notes.txt"}
    for name in ("broken.png", "notes.txt"):
        assert "not an image" in rows[name][4] and rows[name][1] in (None, "")
    assert rows["folder.zip/line_a/readme.txt"][4].startswith("skipped: not an image file")  # not silently dropped
    for name in ("part_0.png", "folder.zip/line_a/part_0.png"):  # score, verdict, start step, error, threshold...
        assert np.isfinite(rows[name][1]) and rows[name][2] in ("good", "defective") and rows[name][3] > 0
        assert rows[name][5] == pytest.approx(0.5) and rows[name][6] == ""  # one-product model: its one threshold
    assert rows["part_0.png"][1] == pytest.approx(rows["folder.zip/line_a/part_0.png"][1])  # same file, same score
    assert len(gallery) == sum(r[2] == "defective" for r in table["data"])
    with open(csv_file) as handle:
        written = list(csv.DictReader(handle))
    assert [r["file"] for r in written] == [r[0] for r in table["data"]]
    assert "5 image(s) scored" in summary and "could not be read" in summary
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK not really")
    table, gallery, _, summary = _batch(client, [fake])
    assert table["data"][0][0] == "fake.zip" and "not a zip archive" in table["data"][0][4] and not gallery
    with pytest.raises(Exception, match="Upload one or more images"):
        _batch(client, [])


def test_predict_cli_and_batch_tab_give_the_same_scores(server, tiny_pipeline_dir, tmp_path):
    """training/predict.py and the batch tab score through ddad_hub.inspection: the same files, the same scores."""
    client, _ = server
    folder = tmp_path / "parts"
    images = _images(folder, 12, seed=3)  # more than one batch of either
    stack = folder / "stack.tif"  # and a file of two pages: a row and a heat-map each
    Image.open(images[0]).save(stack, save_all=True, append_images=[Image.open(images[1])])
    images.append(stack)
    out = tmp_path / "pred"
    subprocess.run([sys.executable, "training/predict.py", "--pipeline", str(tiny_pipeline_dir), "--input-dir",
                    str(folder), "--output-dir", str(out), "--mode", "ddad", "--threads", "1"],
                   cwd=app.HERE, check=True, capture_output=True, timeout=600)
    with open(out / "scores.csv") as handle:
        cli = {r["file"].split("/")[-1]: r for r in csv.DictReader(handle)}
    table, _, batch_csv, _ = _batch(client, images)
    with open(batch_csv) as handle:
        tab = {r["file"]: r for r in csv.DictReader(handle)}
    assert len(cli) == len(tab) == len(table["data"]) == 14
    assert {"stack.tif [page 1 of 2]", "stack.tif [page 2 of 2]"} <= set(tab)
    for name, row in tab.items():  # the CSVs agree to the last written digit
        assert {k: row[k] for k in inspection.CSV_FIELDS[1:]} == {k: cli[name][k] for k in inspection.CSV_FIELDS[1:]}
    for name, score, *_ in table["data"]:  # and the table shows those scores
        assert score == pytest.approx(float(tab[name]["score"]), abs=1e-4)
    maps = {p.name for p in (tmp_path / "pred").glob("*_map.png")}
    assert len(maps) == 14 and {"stack_page1_map.png", "stack_page2_map.png"} <= maps


def test_model_dropdown_offers_embedded_models_and_passed_ones(tiny_pipeline_dir, monkeypatch):
    shelf = app.ModelShelf.from_args([str(tiny_pipeline_dir)])
    embedded = {p.parent.name for p in app.MODELS_DIR.glob("*/model_index.json")}
    assert embedded | {tiny_pipeline_dir.name} == set(shelf.sources)
    assert shelf.default == tiny_pipeline_dir.name
    if "ddad-transistor-cpu-latent" in embedded:
        text = shelf.describe("ddad-transistor-cpu-latent")
        folder = app.MODELS_DIR / "ddad-transistor-cpu-latent"
        mode = json.loads((folder / "model_index.json").read_text())["mode"]
        auroc = json.loads((folder / "results.json").read_text())[mode]["all"]["image_auroc"]
        assert "transistor" in text and f"{mode}: image AUROC {auroc:.3f}" in text
    loads = []
    monkeypatch.setattr(app, "load_pipeline", lambda source, backend: loads.append((source, backend)) or
                        app.ddad_hub.load_pipeline(source))
    first = shelf.get(tiny_pipeline_dir.name)
    assert shelf.get(tiny_pipeline_dir.name) is first and len(loads) == 1  # loaded once, then kept
    assert first.modes == ["ddad"]  # no feature memory, no available_modes(): DDAD only


def test_backend_is_passed_only_when_not_pytorch(monkeypatch):
    calls = []
    monkeypatch.setattr(app.ddad_hub, "load_pipeline", lambda model, **kw: calls.append(kw))
    app.load_pipeline("some/model", "openvino")
    app.load_pipeline("some/model", "pytorch")
    assert calls == [{"backend": "openvino"}, {}]


def test_missing_default_model_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="embedded model is missing"):
        app.load_pipeline(tmp_path / "nowhere")


MULTICLASS_MODEL = app.MODELS_DIR / "ddad-multiclass-cpu-latent"


@pytest.mark.skipif(not MULTICLASS_MODEL.is_dir() or not app.MULTICLASS_EXAMPLES,
                    reason="the embedded multi-class model or its examples are not in this checkout")
def test_multiclass_model_names_the_product_it_recognised(tmp_path):
    """The page shows which product the multi-class model recognised and judges by that product's threshold."""
    inspector = app.Inspector(app.ddad_hub.load_pipeline(MULTICLASS_MODEL))
    own = inspector.pipe.config.category_thresholds[inspector.default_mode]
    products = [next(name for name in own if p.name.startswith(name)) for p in app.MULTICLASS_EXAMPLES]
    for path, product in zip(app.MULTICLASS_EXAMPLES, products):
        *_, summary, details = inspector.analyze(str(path), 4, 250, 25, mode=inspector.default_mode)
        assert details["product"] == product and f"recognised as **{product}**" in summary
        assert details["threshold"] == pytest.approx(own[product])
    table, flagged, _, summary = inspector.analyze_batch([str(p) for p in app.MULTICLASS_EXAMPLES],
                                                         inspector.default_mode)
    assert [row[6] for row in table] == products and [row[5] for row in table] == pytest.approx(
        [round(own[p], 4) for p in products])
    assert "each by the threshold of the product it was recognised as" in summary
    assert "look like none of the trained products" not in summary
    tally = summary.split("per product (flagged: not passed as good): ")[1]  # a mixed batch: how each fared
    assert all(f"{p} {int(row[2] == 'defective')} of 1 flagged" in tally for p, row in zip(products, table))
    # an image of none of its products: named only as the nearest one, and said so on the page and in the table
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    noise.save(tmp_path / "noise.png")
    *_, summary, details = inspector.analyze(str(tmp_path / "noise.png"), 4, 250, 25, mode=inspector.default_mode)
    assert details["product"].startswith("unknown (nearest: ") and details["product_distance"] > 1
    assert "looks like none of the products this model was trained on" in summary
    assert summary.startswith("### UNKNOWN PRODUCT (as a ") and details["verdict"].startswith("UNKNOWN PRODUCT")
    table, *_, summary = inspector.analyze_batch([str(tmp_path / "noise.png"), str(app.MULTICLASS_EXAMPLES[0])],
                                                 inspector.default_mode)
    assert table[0][6].startswith("unknown (nearest: ") and table[1][6] == products[0]
    assert table[0][2] == "unknown product" and table[1][2] in ("good", "defective")  # no verdict as another product
    assert "1 image(s) look like none of the trained products" in summary
    # the inspector states the product: judged as that one, and an image unlike it is said to be so
    path, product = app.MULTICLASS_EXAMPLES[0], products[0]
    wrong = next(p for p in inspector.products if p != product)
    *_, summary, details = inspector.analyze(str(path), None, None, None, inspector.default_mode, product)
    assert details["product"] == product and details["product_stated"] and f"stated **{product}**" in summary
    assert details["threshold"] == pytest.approx(own[product])
    *_, summary, details = inspector.analyze(str(path), None, None, None, inspector.default_mode, wrong)
    assert details["threshold"] == pytest.approx(own[wrong]) and details["product_distance"] > 1
    assert summary.startswith(f"### NOT A {wrong.upper()}? (as one: ") and f"does not look like a {wrong}" in summary
    table, *_, summary = inspector.analyze_batch([str(path)] * 2, inspector.default_mode, product=wrong)
    assert [row[6] for row in table] == [f"{wrong} (stated, but unlike its good parts)"] * 2
    assert [row[2] for row in table] == ["unknown product"] * 2
    assert f"all stated to be {wrong}" in summary and f"2 image(s) do not look like a {wrong}" in summary
    with pytest.raises(app.gr.Error, match="knows no product 'gear'"):
        inspector.analyze(str(path), None, None, None, inspector.default_mode, "gear")


def _patched_zip(path, members: dict[str, bytes], offset: int, value: int) -> None:
    """A zip whose central directory says something zipfile cannot read: bit 0 of the flags (offset 8) marks a
    password-protected member, method 9 (offset 10) Deflate64, as Windows writes large folders."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        data[at + offset : at + offset + 2] = value.to_bytes(2, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def test_batch_rows_keep_upload_order_with_unique_names_and_odd_zips_get_a_row(tiny_pipeline_dir, tmp_path):
    inspector = app.Inspector(app.ddad_hub.load_pipeline(tiny_pipeline_dir))
    first, second = tmp_path / "lot_a", tmp_path / "lot_b"
    a, b = _images(first, 2, seed=1), _images(second, 2, seed=2)  # both folders hold part_0.png, part_1.png
    png = a[0].read_bytes()
    locked, deflate64 = tmp_path / "locked.zip", tmp_path / "big.zip"
    _patched_zip(locked, {"part_9.png": png}, 8, 1)
    _patched_zip(deflate64, {"part_9.png": png}, 10, 9)
    notes = tmp_path / "notes.zip"
    with zipfile.ZipFile(notes, "w") as zf:
        zf.writestr("notes.txt", "no images here")
    lot = tmp_path / "lot.zip"
    with zipfile.ZipFile(lot, "w") as zf:
        zf.write(a[1], "part_1.png")
    lot_again = tmp_path / "again" / "lot.zip"
    lot_again.parent.mkdir()
    lot_again.write_bytes(lot.read_bytes())
    literal = tmp_path / "part_0.png (2)"  # a file really named as the second part_0.png would be shown
    literal.write_bytes(png)
    uploads = [a[0], literal, locked, b[0], notes, lot, deflate64, a[1], lot_again, b[1]]
    table, _, csv_file, summary = inspector.analyze_batch([str(p) for p in uploads], "ddad")
    names = [row[0] for row in table]
    assert names == ["part_0.png", "part_0.png (2)", "locked.zip", "part_0.png (3)", "notes.zip/notes.txt",
                     "lot.zip/part_1.png", "big.zip", "part_1.png", "lot.zip (2)/part_1.png", "part_1.png (2)"]
    errors = dict(zip(names, (row[4] for row in table)))
    assert "password-protected" in errors["locked.zip"] and "compression method" in errors["big.zip"]
    scores = dict(zip(names, (row[1] for row in table)))
    assert scores["lot.zip/part_1.png"] == scores["lot.zip (2)/part_1.png"] == scores["part_1.png"]
    with open(csv_file) as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == names
    assert "7 image(s) scored" in summary and "2 file(s) could not be read" in summary
    big = tmp_path / "big.png"  # a large photo's flagged picture is kept at gallery size
    Image.fromarray(np.full((1200, 1600, 3), 255, np.uint8)).save(big)
    inspector.pipe.register_to_config(threshold=-1.0)  # everything flagged
    try:
        _, gallery, _, _ = inspector.analyze_batch([str(big)], "ddad")
    finally:
        inspector.pipe.register_to_config(threshold=0.5)
    assert max(gallery[0][0].size) == app.GALLERY_SIDE
    assert "1 file(s) in zips skipped" in summary


def test_batch_scores_every_page_of_a_stack_and_every_copy_of_a_zip_path(tiny_pipeline_dir, tmp_path):
    """A TIFF stack's second page, or a zip's second member of the same path, is a part to inspect too."""
    inspector = app.Inspector(app.ddad_hub.load_pipeline(tiny_pipeline_dir))
    first, second = _images(tmp_path / "parts", 2, seed=4)
    stack = tmp_path / "stack.tif"
    Image.open(first).save(stack, save_all=True, append_images=[Image.open(second)])
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.write(first, "lot/part.png")
        zf.write(second, "lot/part.png")
    empty = tmp_path / "skipped_01.png"  # an unreadable file whose name starts like a skipped zip member's row
    empty.write_bytes(b"")
    table, _, csv_file, summary = inspector.analyze_batch([str(p) for p in (first, second, stack, dup, empty)],
                                                          "ddad")
    names = [row[0] for row in table]
    assert names == ["part_0.png", "part_1.png", "stack.tif [page 1 of 2]", "stack.tif [page 2 of 2]",
                     "dup.zip/lot/part (2).png", "dup.zip/lot/part.png", "skipped_01.png"]
    scores = dict(zip(names, (row[1] for row in table)))
    assert scores["stack.tif [page 1 of 2]"] == pytest.approx(scores["part_0.png"], abs=1e-4)
    assert scores["stack.tif [page 2 of 2]"] == pytest.approx(scores["part_1.png"], abs=1e-4)
    assert scores["dup.zip/lot/part.png"] == pytest.approx(scores["part_0.png"], abs=1e-4)
    assert scores["dup.zip/lot/part (2).png"] == pytest.approx(scores["part_1.png"], abs=1e-4)
    with open(csv_file) as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == names
    assert "6 image(s) scored" in summary and "1 file(s) could not be read" in summary
    assert "skipped" not in summary


def test_models_in_folders_of_the_same_name_are_all_offered(tmp_path):
    for product in ("tire", "bottle"):
        (tmp_path / "runs" / product / "pipeline").mkdir(parents=True)
    shelf = app.ModelShelf.from_args([str(tmp_path / "runs" / "tire" / "pipeline"),
                                      str(tmp_path / "runs" / "bottle" / "pipeline")])
    assert shelf.sources["tire/pipeline"].endswith("tire/pipeline")
    assert shelf.sources["bottle/pipeline"].endswith("bottle/pipeline")
    assert shelf.default == "tire/pipeline"  # the first --model, as --help says
    if app.DEFAULT_MODEL.is_dir():  # an embedded model passed again by its path keeps its one entry
        again = app.ModelShelf.from_args([str(app.DEFAULT_MODEL)])
        assert again.default == app.DEFAULT_MODEL.name and len(again.sources) == len(shelf.sources) - 2
