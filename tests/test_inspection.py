"""ddad_hub.inspection: the file handling shared by the batch tab and predict.py (no model needed)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from ddad_hub import inspection


def _png(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_image_files_finds_nested_images_and_skips_hidden_ones(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.JPG")
    _png(tmp_path / ".hidden" / "c.png")
    _png(tmp_path / "__MACOSX" / "d.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in inspection.image_files(tmp_path)] == ["a.png", "sub/b.JPG"]


def test_extract_zip_keeps_images_and_refuses_escapes_and_bombs(tmp_path, monkeypatch):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.write(_png(tmp_path / "src" / "x.png"), "folder/x.png")
        zf.writestr("folder/readme.txt", "not extracted")
        zf.writestr("__MACOSX/folder/._x.png", "metadata")
        webp = tmp_path / "src" / "y.webp"
        Image.open(tmp_path / "src" / "x.png").save(webp)
        zf.write(webp, "folder/y.webp")
    found = inspection.extract_zip(good, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in found] == ["folder/x.png", "folder/y.webp"]
    assert inspection.skipped_members(good) == ["folder/readme.txt"]  # what the app tells its user it skipped

    # one path twice, and the name a renamed copy would take already a member of its own: no image is lost or
    # shown under another member's name
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for member, payload in (("part.png", b"first"), ("part.png", b"second"), ("part (2).png", b"own")):
            zf.writestr(member, payload)
    found = inspection.extract_zip(twice, tmp_path / "out_twice")
    assert {p.name: p.read_bytes() for p in found} == {"part.png": b"first", "part (3).png": b"second",
                                                        "part (2).png": b"own"}

    escape = tmp_path / "escape.zip"
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("../../evil.png", b"x")
    with pytest.raises(ValueError, match="outside the folder"):
        inspection.extract_zip(escape, tmp_path / "out2")
    assert not (tmp_path / "evil.png").exists()

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", bytes(5_000_000))
    monkeypatch.setattr(inspection, "MAX_ZIP_BYTES", 1_000_000)
    with pytest.raises(ValueError, match="would expand"):
        inspection.extract_zip(bomb, tmp_path / "out3")
    damaged = tmp_path / "damaged.zip"
    data = good.read_bytes()
    damaged.write_bytes(data[:40] + bytes(len(data) - 80) + data[-40:])  # members gone, directory kept
    with pytest.raises(ValueError, match="damaged zip"):
        inspection.extract_zip(damaged, tmp_path / "out5")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(_png(tmp_path / "fake.png").read_bytes())
    with pytest.raises(ValueError, match="not a zip archive"):
        inspection.extract_zip(fake, tmp_path / "out4")


def test_rows_verdicts_and_csv(tmp_path):
    assert inspection.verdict(0.6, 0.5) == "defective" and inspection.verdict(0.5, 0.5) == "good"
    assert inspection.verdict(9.0, None) == ""
    rows = [inspection.InspectionRow("a.png", 0.1234567, "good", 80, threshold=0.5, product="tire"),
            inspection.InspectionRow("b.png", error="bad")]
    text = inspection.write_csv(rows, tmp_path / "s.csv").read_text().splitlines()
    assert text == ["file,score,verdict,start_step,error,threshold,product", "a.png,0.123457,good,80,,0.500000,tire",
                    "b.png,,,,bad,,"]
    picture = inspection.anomaly_picture(Image.new("RGB", (8, 8)), np.eye(8, dtype=np.float32), 0.5)
    assert picture.size == (8, 8)
