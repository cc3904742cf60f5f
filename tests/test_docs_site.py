"""The documentation site says one thing once: page titles in the sidebar are distinct,
the front page installs as the README does, and one measurement is quoted with one figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _toctree_pages() -> list[str]:
    index = (DOCS / "index.md").read_text()
    pages: list[str] = []
    for block in re.findall(r"```\{toctree\}\n(.*?)```", index, flags=re.S):
        pages += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")]
    return pages


def _title(page: str) -> str | None:
    for suffix in (".md", ".rst"):
        path = DOCS / f"{page}{suffix}"
        if path.exists():
            lines = path.read_text().splitlines()
            if suffix == ".md":
                return next((line[2:].strip() for line in lines if line.startswith("# ")), None)
            underlined = (i for i in range(len(lines) - 1) if re.fullmatch(r"=+", lines[i + 1].strip() or "x"))
            return next((lines[i].strip() for i in underlined), None)
    return None  # (a generated page: the gallery)


def test_the_sidebar_names_every_page_once() -> None:
    titles = [title for page in _toctree_pages() if (title := _title(page)) is not None]
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    assert not repeated, f"sidebar entries with the same name: {repeated}"


def _first_commands(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]


def test_the_front_page_installs_as_the_readme_does() -> None:
    assert _first_commands((DOCS / "index.md").read_text()) == _first_commands((ROOT / "README.md").read_text())


def test_one_figure_for_the_darts_speedup() -> None:
    """darts' ShapExplainer against rnnshap's drop-in: one measurement, one range wherever it is quoted."""
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in DOCS.glob("*.md"))]
    quoted = set()
    for text in texts:
        for line in text.splitlines():
            if "ShapExplainer" in line or "darts' default call" in line:
                quoted |= set(re.findall(r"(~?\d+(?:[-–]\d+)?)x faster", line))
                quoted |= set(re.findall(r"it is (\d+[-–]\d+)x faster", line))
    normalized = {q.replace("–", "-") for q in quoted}
    assert len(normalized) == 1, f"the darts speed-up is quoted as {sorted(quoted)}"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_faq_contents_list_every_section() -> None:
    text = (DOCS / "faq.md").read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    listed = re.findall(r"^- \[(.+?)\]\(#(.+?)\)$", text, flags=re.M)
    assert [title for title, _ in listed] == sections
    assert [anchor for _, anchor in listed] == [_slug(title) for title in sections]


def test_the_pages_read_as_documentation_not_as_a_journal() -> None:
    """The pages (and benchmarks/README.md) say what the library does and how to use it: no dated headings or lines,
    no words of how the work was done, no tracker numbers; the performance page, the README and the changelog's next
    release stay short."""
    pages = {path.name: path.read_text() for path in DOCS.glob("*.md")}
    pages["README.md"] = (ROOT / "README.md").read_text()
    pages["benchmarks/README.md"] = (ROOT / "benchmarks" / "README.md").read_text()
    journal = re.compile(r"\b20\d\d-\d\d-\d\d\b|this session|device time|\blent\b|this round|[Ii]ssues? #?\d+")
    found = {name: sorted(set(journal.findall(text))) for name, text in pages.items() if journal.search(text)}
    assert not found, found
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert not re.search(r"[Ii]ssues? #?\d+", changelog)
    unreleased = changelog.split("## [Unreleased]")[1].split("\n## [")[0]
    assert len(unreleased.strip().splitlines()) <= 60
    assert len(pages["performance.md"].splitlines()) <= 250
    assert len(pages["README.md"].splitlines()) <= 200


def test_the_refusals_page_names_every_error_and_every_advice_from_the_code() -> None:
    """docs/refusals.md is generated from rnnshap's error classes and advice when the site is built, so it cannot
    drift from the messages: every subclass of RnnShapError and every kind of advice is on it."""
    import importlib
    import sys

    pytest.importorskip("sphinx")
    from rnnshap import errors

    assert "```{rnnshap-refusals}" in (DOCS / "refusals.md").read_text()
    sys.path.insert(0, str(DOCS / "sphinxext"))
    try:
        refusals = importlib.import_module("refusals")
    finally:
        sys.path.remove(str(DOCS / "sphinxext"))
    text = "\n".join(refusals.refusals_text())
    classes, _ = refusals.error_classes()
    assert {errors.UnsupportedOperationError, errors.AdditivityError, errors.InputError} <= set(classes)
    assert all(f".{cls.__name__}`" in text for cls in classes)
    assert all(f"### `{kind}`" in text and advice.splitlines()[0] in text for kind, advice in errors.ADVICE.items())
