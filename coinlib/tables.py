"""Tables as Markdown and CSV: the notebooks' summaries and the paper's tables side by side."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import SaliencyConfig
from .files import atomic_path, write_csv

__all__ = ["format_value", "markdown_table", "write_table"]


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to ``digits`` significant decimals; None and nan become '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts) in ``columns`` order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "",
    digits: int = 3,
) -> tuple[Path, Path]:
    """Write ``path``.md (with an optional title line) and ``path``.csv, each atomically."""
    path = Path(path)
    md_path, csv_path = path.with_suffix(".md"), path.with_suffix(".csv")
    text = (f"{title}\n\n" if title else "") + markdown_table(rows, columns, digits)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    write_csv(csv_path, rows, list(columns))
    return md_path, csv_path


# ------------------------------------------------------------ the paper's tables, regenerated

METHOD_NAMES = {
    "gradcam": "Grad-CAM (Captum; not in the paper)",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "rise": "RISE",
    "singla": "Singla et al.*",
    "coin": "COIN",
    "coin_no_idt": "COIN, lambda_idt = 0",
    "coin_no_f": "COIN, lambda_f = 0",
    "coin_no_tv": "COIN, lambda_tv = 0",
}
SALIENCY = ("scorecam", "layercam", "rise", "gradcam")
TABLE1_METHODS = (*SALIENCY, "singla", "coin")
TRACK_NAMES = {"synthetic": "synthetic anomalies (TotalSegmentator layout)",
               "tumour": "tumours (KiTS23 layout)"}

# Columns: ours, then the paper's value of the same quantity right beside it
METRIC_COLUMNS = ["IoU", "paper IoU", "best test IoU", "t (val)", "CV", "paper CV", "FID", "paper FID",
                  "classifier FD"]
TABLE1_COLUMNS = ["data", "method", *METRIC_COLUMNS, "forward passes / image", "s / image", "slices scored"]
TABLE2_COLUMNS = ["ablation", *METRIC_COLUMNS, "steps x batch"]
TABLE3_COLUMNS = ["row", "masks", "perturbations", "skips", "conditions", *METRIC_COLUMNS, "steps x batch"]


def metric_columns(result: dict[str, Any], paper: dict[str, float | None]) -> dict[str, Any]:
    """Our metrics of one method (a results JSON) next to the paper's (Sec. 5 protocol).

    ``IoU``: test IoU at the threshold chosen on the validation split; ``best test IoU``:
    the best threshold on the test set itself, which is what the paper reports.
    """
    m = result["metrics"]
    return {
        "IoU": m["iou"]["iou"],
        "paper IoU": paper["iou"],
        "best test IoU": m["iou_best_on_test"],
        "t (val)": m.get("threshold_from_val"),
        "CV": m.get("cv"),
        "paper CV": paper["cv"],
        "FID": m.get("fid"),
        "paper FID": paper["fid"],
        "classifier FD": m.get("classifier_fd"),
    }


def _budget(result: dict[str, Any]) -> str:
    train = result["config"]["train"]
    return f"{train['steps']} x {train['batch_size']}"


def _scored(saliency: SaliencyConfig | None, track: str, method: str) -> bool:
    """Whether the profile scores ``method`` on ``track`` (counterfactual methods always)."""
    return method not in SALIENCY or saliency is None or method in saliency.methods_for(track)


def table1_rows(
    run_dir: str | os.PathLike,
    saliency: SaliencyConfig | None = None,
    tracks: Sequence[str] = ("synthetic", "tumour"),
) -> list[dict]:
    """Table 1: saliency baselines, Singla* and COIN on both tracks, ours beside the paper's.

    ``saliency``: the profile's settings; a method it leaves out of a track gets a row that
    says so (``None``: every method is expected).
    """
    from .paper_numbers import TABLE1, paper_row
    from .pipeline import load_results

    rows = []
    for track in tracks:
        for method in TABLE1_METHODS:
            if not _scored(saliency, track, method):
                rows.append({"data": TRACK_NAMES[track], "method": METHOD_NAMES[method],
                             "paper IoU": paper_row(TABLE1, (track, method))["iou"],
                             "slices scored": "not run in this profile"})
                continue
            result = load_results(run_dir, track, method)
            row = {"data": TRACK_NAMES[track], "method": METHOD_NAMES[method],
                   **metric_columns(result, paper_row(TABLE1, (track, method)))}
            cost = result.get("cost", {})
            subset = result["metrics"].get("subset")
            row.update({"forward passes / image": cost.get("forward_passes", 1),
                        "s / image": cost.get("seconds_per_image"),
                        "slices scored": f"{subset['test']} (val {subset['val']})" if subset
                        else result["metrics"]["abnormal_test_slices"]})
            rows.append(row)
    return rows


def table2_rows(run_dir: str | os.PathLike) -> list[dict]:
    """Table 2: COIN with one loss term switched off (synthetic track)."""
    from .paper_numbers import TABLE2, paper_row
    from .pipeline import load_results
    from .variants import TABLE2_VARIANTS

    rows = []
    for variant in TABLE2_VARIANTS:
        result = load_results(run_dir, "synthetic", variant, ablation=True)
        rows.append({"ablation": METHOD_NAMES[variant], **metric_columns(result, paper_row(TABLE2, variant)),
                     "steps x batch": _budget(result)})
    return rows


def table3_rows(run_dir: str | os.PathLike) -> list[dict]:
    """Table 3 (Appendix A): masks, perturbations, skips and conditions (synthetic track)."""
    from .paper_numbers import TABLE3, TABLE3_LABELS, paper_row
    from .pipeline import load_results
    from .variants import TABLE3_VARIANTS

    rows = []
    for variant in TABLE3_VARIANTS:
        result = load_results(run_dir, "synthetic", variant, ablation=True)
        gan = result["config"]["gan"]
        rows.append({"row": TABLE3_LABELS[variant], "masks": gan["use_masks"], "perturbations": gan["perturbation"],
                     "skips": gan["skips"], "conditions": gan["conditions"],
                     **metric_columns(result, paper_row(TABLE3, variant)), "steps x batch": _budget(result)})
    return rows


def table1_claims(
    run_dir: str | os.PathLike, saliency: SaliencyConfig | None = None
) -> list[tuple[str, bool | None]]:
    """The orderings Table 1 shows, checked on our IoU at the validation-chosen threshold.

    Synthetic track: COIN > Singla* > RISE > ScoreCAM and LayerCAM; tumour track: COIN
    above every saliency method the profile scores there. Returns (claim, holds) pairs;
    ``None`` when a method of the claim was not run in this profile.
    """
    from .pipeline import load_results

    def iou(track: str, method: str) -> float:
        value = load_results(run_dir, track, method)["metrics"]["iou"]["iou"]
        return float("nan") if value is None else value  # JSON null: not defined (files.write_json)

    def check(track: str, better: str, worse: str) -> tuple[str, bool | None]:
        claim = f"{track}: {METHOD_NAMES[better]} > {METHOD_NAMES[worse]}"
        if not (_scored(saliency, track, better) and _scored(saliency, track, worse)):
            return claim, None
        a, b = iou(track, better), iou(track, worse)
        return f"{claim} ({a:.3f} against {b:.3f})", a > b

    tumour = [m for m in SALIENCY if _scored(saliency, "tumour", m)]
    coin, others = iou("tumour", "coin"), [iou("tumour", m) for m in tumour]
    return [
        check("synthetic", "coin", "singla"),
        check("synthetic", "singla", "rise"),
        check("synthetic", "rise", "scorecam"),
        check("synthetic", "rise", "layercam"),
        (f"tumour: COIN > every saliency method run ({', '.join(METHOD_NAMES[m].split(' (')[0] for m in tumour)})"
         f" ({coin:.3f} against at most {max(others, default=float('nan')):.3f})", all(coin > o for o in others)),
    ]


def claims_markdown(claims: Sequence[tuple[str, bool | None]]) -> str:
    """A Markdown list, each claim marked as holding, not holding or not checked."""
    verdict = {True: "holds", False: "does NOT hold", None: "not checked (a method was not run)"}
    return "\n".join(f"- {verdict[ok]}: {claim}" for claim, ok in claims) + "\n"
