"""The README and the pages under docs/: links that resolve, the project's own words only, and
generated blocks that agree with the committed tables (a block older than the tables fails)."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "notebooks" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INTERNAL = re.compile(r"issue [0-9]+|FACTS|stop [0-9]+")


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = [target for target in links(page)
              if target.split("#")[0] and not (page.parent / target.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.split("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_is_short_and_opens_with_the_two_commands_results_and_limits():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines"
    head = "\n".join(lines[:120])
    for needed in ("make reproduce", "make test", "## What reproduced and what did not", "## Limitations"):
        assert needed in head, f"{needed!r} is not in the README's first 120 lines"


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)))]
    return [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]


def test_the_project_speaks_in_its_own_words():
    found = []
    texts = [(p, p.read_text()) for p in [*PAGES, *sorted((ROOT / "docs" / "notebooks").glob("*.md"))]]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        texts.append((notebook, "\n".join("".join(c["source"]) for c in cells)))
    for module in sorted((ROOT / "coinlib").glob("*.py")):
        texts.append((module, "\n".join(_docstrings(module))))
    for path, text in texts:
        found += [f"{path.relative_to(ROOT)}: {m.group(0)!r}" for m in INTERNAL.finditer(text)]
    assert not found, "internal words: " + "; ".join(found[:10])
