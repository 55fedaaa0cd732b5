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


def _block(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert start in text and end in text, f"no {name} block"
    return text[text.index(start) + len(start):text.index(end)]


def _table_means(path: Path, key: str) -> dict[str, dict[str, str]]:
    from coinlib.tables import TRACK_NAMES

    track_of = {name: track for track, name in TRACK_NAMES.items()}
    with open(path, newline="") as handle:
        return {row[key] if key != "data+method" else f"{track_of[row['data']]}:{row['method']}": row
                for row in csv.DictReader(handle)}


def test_the_generated_blocks_agree_with_the_committed_tables():
    """The README's summary and the results page are regenerated with the tables (`coin report`): a
    block older than the tables it sits beside, or hand-edited, fails here."""
    from coinlib.tables import CLAIM_NAMES

    summary = _block((ROOT / "README.md").read_text(), "summary")
    rows = re.findall(r"^\| Table ([12]) \| (IoU|CV): (?:(synthetic|tumour): )?(.+?) > (.+?) \| [^|]* \| "
                      r"([0-9.]+) vs ([0-9.]+) \|", summary, flags=re.M)
    assert len(rows) >= 10, f"the README's summary block holds {len(rows)} Table 1/2 rows; run `coin report`"
    table1 = _table_means(ROOT / "tables" / "table1.csv", "data+method")
    table2 = _table_means(ROOT / "tables" / "table2.csv", "ablation")
    display = {name: key for key, name in CLAIM_NAMES.items()}

    def table1_row(track: str, name: str) -> dict[str, str]:
        wanted = {"Singla*": "Singla et al.*", "Grad-CAM": "Grad-CAM (Captum; not in the paper)"}.get(name, name)
        return table1[f"{track}:{wanted}"]

    def table2_row(name: str) -> dict[str, str]:
        return table2["COIN" if name == "COIN" else f"COIN, {name}"]

    for table, metric, track, better, worse, ours_better, ours_worse in rows:
        assert better in display and worse in display, (better, worse)
        for name, shown in ((better, ours_better), (worse, ours_worse)):
            row = table1_row(track, name) if table == "1" else table2_row(name)
            assert f"{float(row[f'{metric} mean']):.3f}" == shown, (table, metric, track, name, shown)
    results_page = _block((ROOT / "docs" / "results.md").read_text(), "results")
    table1_md = (ROOT / "tables" / "table1.md").read_text()
    assert table1_md[table1_md.index("|"):].strip() in results_page, "docs/results.md's Table 1 is not tables/table1.md"
    commits = set(re.findall(r"commit `([0-9a-f]{7,40})`", summary + results_page[:600]))
    assert len({c[:7] for c in commits}) == 1, f"the summary and the results page name different runs: {commits}"
