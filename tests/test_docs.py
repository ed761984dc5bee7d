"""The documentation's links and the set-up it promises: every relative link in README.md and docs/*.md names a
file of the repository (and, with ``#anchor``, a heading in it), and CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _without_fences(text: str) -> str:
    """Markdown outside fenced code blocks, whose ``#`` lines are shell comments, not headings."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _without_code(text: str) -> str:
    """Markdown outside fenced code blocks and inline code, where links are links."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())  # underscores stay, as in `fit_unknown_products`
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} +(.+?)\s*$", _without_fences(path.read_text()), flags=re.M)
    return {github_anchor(h) for h in headings}


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Multi-class: one model for four products") == "multi-class-one-model-for-four-products"
    assert github_anchor("The `paper` preset, in full") == "the-paper-preset-in-full"
    assert github_anchor("`fit_unknown_products.py`") == "fit_unknown_productspy"


def test_anchors_keep_inline_code_and_skip_fenced_comments(tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text("## The `paper` preset\n\n```bash\n# the tests\n```\n")
    assert anchors(doc) == {"the-paper-preset"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(_without_code(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no file {path_part}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^# the tests\n(.+)$", readme, flags=re.M).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]
