"""What a Hugging Face Space reads: requirements.txt and the README's front matter (``.ci/space_check`` installs
them into a fresh venv and serves app.py; these checks are the fast part)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def _front_matter() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    block = text.split("---\n")[1]
    return dict(re.findall(r"^(\w+): *(.+?)\s*$", block, flags=re.M))


def test_requirements_match_the_package_and_demo_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [d for d in project["dependencies"] + project["optional-dependencies"]["demo"]
              if not d.startswith("gradio")]  # a Space installs gradio itself, at sdk_version
    lines = _requirement_lines(REPO / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines  # the CPU torch wheel on a Space
    assert sorted(line for line in lines if not line.startswith("-")) == sorted(wanted)


def test_front_matter_names_the_gradio_version_the_app_is_tested_with():
    gradio = pytest.importorskip("gradio")
    meta = _front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__
