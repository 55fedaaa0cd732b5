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
from .tables import markdown_table

__all__ = ["results_markdown", "update_readme", "publish_figures", "START", "END"]

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def results_markdown(run_dir: str | os.PathLike) -> str:
    """Markdown summary of what the run produced: profile, hardware, timings, metrics."""
    run_dir = Path(run_dir)
    results = run_dir / "results"
    timings = _load(run_dir / "notebooks" / "timings.json")
    classifier = _load(results / "classifier_synthetic.json")
    coin = _load(results / "synthetic_coin.json")
    if coin is None and classifier is None:
        raise FileNotFoundError(f"no results in {results}; run the notebooks first (coin reproduce)")
    source = coin or classifier
    hardware = source["hardware"]
    device = hardware.get("gpu") or f"{hardware['cpu']} ({hardware['cpu_cores']} cores, CPU only)"
    lines = [
        f"Profile **{source['profile']}** on the embedded phantom, produced on {device} with torch "
        f"{hardware['torch']} (commit `{source.get('git_commit') or 'unknown'}`).",
        "",
    ]
    if timings:
        rows = [{"notebook": t["notebook"], "minutes": t["seconds"] / 60} for t in timings["notebooks"]]
        rows.append({"notebook": "total", "minutes": sum(t["seconds"] for t in timings["notebooks"]) / 60})
        lines += ["Wall-clock time of the notebooks in `make reproduce`:", "", markdown_table(rows, ["notebook", "minutes"], 1)]
    if classifier:
        lines += [
            f"Classifier f ({classifier['arch']}, synthetic track): test AUC **{classifier['test_auc']:.3f}**, "
            f"accuracy {classifier['test_accuracy']:.3f} on {classifier['test_slices']} test slices.",
            "",
        ]
    if coin:
        m = coin["metrics"]
        row = {
            "method": "COIN (this run)",
            "IoU": m["iou"]["iou"],
            "threshold (from val)": m.get("threshold_from_val"),
            "mean per-image IoU": m["iou"]["mean_per_image_iou"],
            "best test IoU (t)": f"{m['iou_best_on_test']:.3f} ({m['threshold_best_on_test']:.2f})",
            "CV": m["cv"],
            "FID": m.get("fid"),
            "classifier FD": m["classifier_fd"],
        }
        paper = {"method": "COIN (paper, Table 1)", "IoU": 0.646, "best test IoU (t)": "0.646 (best)",
                 "CV": 0.997, "FID": 0.003}
        lines += [
            "COIN on the synthetic track (test split; IoU accumulated over all abnormal slices at the "
            "threshold chosen on the validation split; paper row for comparison):",
            "",
            markdown_table([row, paper], list(row)),
        ]
        if m.get("fid") is None:
            lines += [f"FID: {m.get('fid_note', 'not computed')}", ""]
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
    copied = []
    for source in sorted((Path(run_dir) / "figures").glob("*.p[dn][fg]")):
        target = Path(figures_dir) / source.name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        copied.append(target)
    return copied
