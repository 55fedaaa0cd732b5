"""The README's results section, generated from a run folder (never typed by hand).

``coin report --run-dir runs/quick`` reads the results JSON files, notebook timings and
hardware of a finished run and rewrites the part of README.md between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``. The same text is written to
``<run_dir>/results/summary.md``, which ``coin reproduce`` prints at the end.

:func:`export_notebooks` turns the run's executed notebooks (``<run_dir>/notebooks/``, written
by ``coin reproduce``) into Markdown pages with their images as PNG files under
``docs/notebooks/``, so a reader on a repository viewer sees every notebook with its outputs
without running anything. Each image is stored once (PNG, 256 colours); progress-bar text is
reduced to each bar's final line, long text outputs are cut, and machine paths are made relative.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from .files import atomic_path, read_json
from .tables import markdown_table

__all__ = ["END", "START", "export_notebooks", "publish_figures", "publish_tables", "results_markdown",
           "update_readme"]

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def _table_body(path: Path) -> str | None:
    """A table written by :func:`coinlib.tables.write_table`, without its title line."""
    if not path.is_file():
        return None
    text = path.read_text()
    return text[text.index("|"):] if "|" in text else None


def results_markdown(run_dir: str | os.PathLike) -> str:
    """Markdown summary of what the run produced: profile, hardware, timings, Tables 1-3."""
    from .config import get_profile
    from .tables import claims_markdown, table1_claims

    run_dir = Path(run_dir)
    results = run_dir / "results"
    timings = _load(run_dir / "notebooks" / "timings.json")
    classifiers = {t: _load(results / f"classifier_{t}.json") for t in ("synthetic", "tumour")}
    coin = _load(results / "synthetic_coin.json")
    source = coin or classifiers["synthetic"]
    if source is None:
        raise FileNotFoundError(f"no results in {results}; run the notebooks first (coin reproduce)")
    hardware = source["hardware"]
    device = hardware.get("gpu") or f"{hardware['cpu']} ({hardware['cpu_cores']} cores, CPU only)"
    data = "the embedded phantom" if "phantom" in str(source.get("data", "phantom")) else f"`{source['data']}`"
    lines = [
        f"Profile **{source['profile']}** on {data}, produced on {device} with torch "
        f"{hardware['torch']} (commit `{source.get('git_commit') or 'unknown'}`).",
        "",
    ]
    if timings:
        rows = [{"notebook": t["notebook"], "minutes": t["seconds"] / 60} for t in timings["notebooks"]]
        rows.append({"notebook": "total", "minutes": sum(t["seconds"] for t in timings["notebooks"]) / 60})
        lines += ["Wall-clock time of the notebooks in `make reproduce`:", "",
                  markdown_table(rows, ["notebook", "minutes"], 1)]
    for track, classifier in classifiers.items():
        if classifier:
            lines += [f"Classifier f, {track} track ({classifier['arch']}): test AUC **{classifier['test_auc']:.3f}**, "
                      f"accuracy {classifier['test_accuracy']:.3f} on {classifier['test_slices']} test slices.", ""]
    tables = run_dir / "tables"
    if (table1 := _table_body(tables / "table1.md")) is not None:
        lines += [
            "**Table 1.** IoU at the threshold chosen on the validation split, the paper's protocol "
            "(best threshold on the test set) beside it, and the paper's numbers in the adjacent "
            "columns. Saliency methods are scored on the slices counted in the last column.",
            "", table1, "Orderings the paper reports, checked on this run:", "",
            claims_markdown(table1_claims(run_dir, get_profile(source["profile"]).saliency)),
        ]
    if coin is not None and coin["metrics"].get("fid") is None:
        lines += [f"FID: {coin['metrics'].get('fid_note', 'not computed')}", ""]
    for name, caption in (("table2", "**Table 2.** COIN's loss ablation (synthetic track)."),
                          ("table3", "**Table 3.** Appendix A: masks, perturbations, skips, conditions "
                                     "(synthetic track).")):
        if (body := _table_body(tables / f"{name}.md")) is not None:
            lines += [caption, "", body]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(run_dir: str | os.PathLike, readme: str | os.PathLike) -> str:
    """Replace the README's results block with :func:`results_markdown`; returns the block."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {START} ... {END}")
    block = results_markdown(run_dir)
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _: f"{START}\n{block}{END}", text)
    with atomic_path(readme) as tmp:
        tmp.write_text(new)
    return block


def publish_figures(run_dir: str | os.PathLike, figures_dir: str | os.PathLike) -> list[Path]:
    """Copy the run's figures (PNG and PDF) into the repository's ``figures/`` folder."""
    return _publish(Path(run_dir) / "figures", "*.p[dn][fg]", figures_dir)


def publish_tables(run_dir: str | os.PathLike, tables_dir: str | os.PathLike) -> list[Path]:
    """Copy the run's tables (Markdown and CSV) into the repository's ``tables/`` folder."""
    return _publish(Path(run_dir) / "tables", "*.[mc][ds]*", tables_dir)


def _publish(source_dir: Path, pattern: str, target_dir: str | os.PathLike) -> list[Path]:
    copied = []
    for source in sorted(source_dir.glob(pattern)):
        target = Path(target_dir) / source.name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        copied.append(target)
    return copied


# ------------------------------------------------------------ executed notebooks as Markdown

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_TEXT_LINES = 40  # longer text outputs keep their first and last lines
_PROGRESS_LINE = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\d+/\d+ \[\d+:\d+")


def _terminal_text(text: str) -> str:
    """What a terminal shows: each line's text after its last carriage return (a progress bar
    redrawn in place leaves its final state), progress lines of one bar kept once, long
    outputs cut in the middle."""
    kept: list[str] = []
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1]
        if "\r" in raw and not line.strip():
            continue  # a bar that cleared itself (leave=False)
        if kept and _PROGRESS_LINE.search(line) and _PROGRESS_LINE.search(kept[-1]) \
                and line.split(":")[0] == kept[-1].split(":")[0]:
            kept[-1] = line  # the same bar printed again (text mode): keep its latest state
        else:
            kept.append(line)
    if len(kept) > MAX_TEXT_LINES:
        head, tail = kept[:10], kept[-(MAX_TEXT_LINES - 11):]
        kept = [*head, f"... ({len(kept) - len(head) - len(tail)} lines left out) ...", *tail]
    return "\n".join(kept)


def _clean_notebook(notebook, replacements: dict[str, str]) -> None:
    """In place: no execution metadata, no widget views, terminal-like text, portable paths."""

    def portable(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    notebook.metadata.pop("papermill", None)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for key in ("execution", "papermill"):
            cell.metadata.pop(key, None)
        cell.source = portable(cell.source)
        if cell.cell_type != "code":
            continue
        merged = []  # papermill keeps every chunk a kernel wrote as an output of its own
        for output in cell.get("outputs", []):
            if (output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1]["name"] == output["name"]):
                merged[-1]["text"] += output["text"]
            else:
                merged.append(output)
        outputs = []
        for output in merged:
            if output.get("output_type") == "stream":
                output["text"] = portable(_terminal_text(output["text"]))
                if not output["text"].strip():
                    continue
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                continue  # a live widget: nothing to show without a kernel
            if "text/plain" in data:
                data["text/plain"] = portable(data["text/plain"])
            outputs.append(output)
        cell.outputs = outputs
        cell.execution_count = None


def _small_png(data: bytes) -> bytes:
    """A PNG with at most 256 colours (Pillow, which matplotlib requires): a grey CT slice
    beside a colour map needs no more, and the file is 2-4 times smaller."""
    import io

    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, "PNG", optimize=True)
    return out.getvalue()


def export_notebooks(run_dir: str | os.PathLike, docs_dir: str | os.PathLike,
                     repository: str | os.PathLike | None = None) -> list[Path]:
    """Write each executed notebook of ``run_dir`` as ``docs_dir/<name>.md`` plus its images.

    Reads ``<run_dir>/notebooks/NN_*.ipynb`` (``coin reproduce`` writes them), exports them
    with nbconvert's ``MarkdownExporter``, images extracted to ``docs_dir/<name>_files/``
    (each once; PNGs reduced to 256 colours), and writes ``docs_dir/README.md`` linking them. Pages of notebooks
    that are no longer in the run are removed. Absolute paths of the run folder and of
    ``repository`` (default: the current folder) become relative ones. Returns the files
    written (pages, images, index); none when the run has no executed notebooks.
    """
    import nbformat
    from nbconvert import MarkdownExporter

    run_dir, docs_dir = Path(run_dir).resolve(), Path(docs_dir)
    repository = Path(repository or Path.cwd()).resolve()
    notebooks = sorted((run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        return []
    shown_run = os.path.relpath(run_dir, repository) if run_dir.is_relative_to(repository) else run_dir.name
    replacements = {str(run_dir): shown_run, str(repository): "."}
    written, pages = [], []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        _clean_notebook(notebook, replacements)
        stem = path.stem
        body, resources = MarkdownExporter().from_notebook_node(
            notebook, resources={"unique_key": stem, "output_files_dir": f"{stem}_files"})
        shutil.rmtree(docs_dir / f"{stem}_files", ignore_errors=True)
        for name, data in sorted(resources.get("outputs", {}).items()):
            with atomic_path(docs_dir / name) as tmp:
                tmp.write_bytes(_small_png(data) if name.endswith(".png") else data)
            written.append(docs_dir / name)
        with atomic_path(docs_dir / f"{stem}.md") as tmp:
            tmp.write_text(body)
        written.append(docs_dir / f"{stem}.md")
        title = next((line.lstrip("# ").strip() for c in notebook.cells if c.cell_type == "markdown"
                      for line in c.source.splitlines() if line.startswith("# ")), stem)
        pages.append((stem, title))
    current = {stem for stem, _ in pages}
    for stale in docs_dir.glob("[0-9][0-9]_*"):
        if stale.name.removesuffix(".md").removesuffix("_files") not in current:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    lines = [f"# The notebooks of `{shown_run}`, executed", "",
             f"Each page is a notebook as `coin reproduce` ran it in `{shown_run}`, with its outputs; "
             f"widgets appear as their static figures. Regenerate with `coin report --run-dir {shown_run}`.", ""]
    lines += [f"- [{stem}]({stem}.md): {title}" for stem, title in pages]
    with atomic_path(docs_dir / "README.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    written.append(docs_dir / "README.md")
    return written
