"""The README's results section, generated from a run folder (never typed by hand).

``coin report --run-dir runs/quick`` reads the results JSON files, notebook timings and
hardware of a finished run and rewrites the part of README.md between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``. The same text is written to
``<run_dir>/results/summary.md``, which ``coin reproduce`` prints at the end.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from .files import atomic_path, read_json
from .tables import format_value, markdown_table

__all__ = ["END", "START", "publish_figures", "publish_tables", "results_markdown", "update_readme"]

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
            lines += [f"Classifier f, {track} track ({classifier['arch']}): test AUC "
                      f"**{format_value(classifier['test_auc'])}**, accuracy {format_value(classifier['test_accuracy'])} "
                      f"on {classifier['test_slices']} test slices.", ""]
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
