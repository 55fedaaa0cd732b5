"""Tables as Markdown and CSV: the paper's Tables 1-3 from every seed, ours beside the paper's.

Each row reads one method's results JSON of every seed of the profile
(``results/seed<s>/...``, :func:`coinlib.pipeline.load_results`). In the Markdown, IoU and
CV are "mean ± sd" over seeds with the bootstrap interval of the seed mean over test
scans (or slices: ``eval.bootstrap_unit``) in the next column (:mod:`coinlib.verdicts`); the other measured columns (best
test IoU, t (val), FID, classifier FD, s / image) are seed means; "seeds" and "slices
scored" say what each row rests on; the paper's numbers sit in adjacent columns.

The CSV beside each Markdown table (:func:`write_table`) keeps every number: the
Markdown's columns, then for IoU and CV the mean, sd and interval as numbers ("IoU mean",
"IoU sd", "IoU CI low", "IoU CI high"), then every seed's value of each measured column
("IoU seed 0", "IoU seed 1", ..., "classifier FD seed 2"), one row per method.

The orderings the paper reports are checked by :func:`table1_claims`, :func:`table2_claims`
and :func:`table3_claims`, each a list of :class:`coinlib.verdicts.Verdict`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .config import Profile, SaliencyConfig, table3_profile
from .files import atomic_path, write_csv
from .verdicts import CONFIDENCE, Estimate, Verdict, collapsed, compare, cv_estimate, iou_estimate, not_checked

__all__ = [
    "format_value",
    "markdown_table",
    "write_table",
    "METHOD_NAMES",
    "TABLE1_METHODS",
    "TRACK_NAMES",
    "TABLE1_COLUMNS",
    "TABLE2_COLUMNS",
    "TABLE3_COLUMNS",
    "Scored",
    "scored_method",
    "table1_rows",
    "table2_rows",
    "table3_rows",
    "per_case_rows",
    "table1_claims",
    "table2_claims",
    "table3_claims",
    "claims_markdown",
    "claims_summary_markdown",
    "seed_range",
]


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


def seed_range(values: Sequence[float], digits: int = 3) -> str:
    """``mean [min, max]`` of ``values`` (one number per seed): the spread the benchmarks print."""
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.{digits}f} [{values.min():.{digits}f}, {values.max():.{digits}f}]"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts) in ``columns`` order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "",
    digits: int = 3, csv_columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``path``.md (``columns``, with an optional title line) and ``path``.csv, atomically.

    ``csv_columns``: the CSV's columns; by default ``columns`` and then every other key of
    the rows in order of appearance (for the tables here: the per-seed values).
    """
    path = Path(path)
    md_path, csv_path = path.with_suffix(".md"), path.with_suffix(".csv")
    text = (f"{title}\n\n" if title else "") + markdown_table(rows, columns, digits)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    if csv_columns is None:
        csv_columns = list(dict.fromkeys([*columns, *(key for row in rows for key in row)]))
    write_csv(csv_path, rows, list(csv_columns))
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
# the names the ordering checks use
CLAIM_NAMES = {"gradcam": "Grad-CAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM", "rise": "RISE",
               "singla": "Singla*", "coin": "COIN", "coin_no_idt": "lambda_idt = 0",
               "coin_no_f": "lambda_f = 0", "coin_no_tv": "lambda_tv = 0"}
SALIENCY = ("scorecam", "layercam", "rise", "gradcam")
TABLE1_METHODS = (*SALIENCY, "singla", "coin")
TRACK_NAMES = {"synthetic": "synthetic anomalies (TotalSegmentator layout)",
               "tumour": "tumours (KiTS23 layout)"}

IOU_CI, CV_CI = f"IoU {CONFIDENCE:.0%} CI", f"CV {CONFIDENCE:.0%} CI"
# Columns: ours, then the paper's value of the same quantity right beside it
METRIC_COLUMNS = ["IoU", IOU_CI, "paper IoU", "best test IoU", "t (val)", "CV", CV_CI, "paper CV", "FID",
                  "paper FID", "classifier FD"]
TABLE1_COLUMNS = ["data", "method", *METRIC_COLUMNS, "forward passes / image", "s / image", "seeds",
                  "slices scored"]
TABLE2_COLUMNS = ["ablation", *METRIC_COLUMNS, "steps x batch", "seeds", "slices scored"]
TABLE3_COLUMNS = ["row", "masks", "perturbations", "skips", "conditions", *METRIC_COLUMNS, "steps x batch",
                  "seeds", "slices scored"]
# measured columns shown as the seed mean; the CSV adds each seed's value
SEED_MEAN_METRICS = {"best test IoU": "iou_best_on_test", "t (val)": "threshold_from_val", "FID": "fid",
                     "classifier FD": "classifier_fd"}


@dataclass(frozen=True)
class Scored:
    """One method on one track over the profile's seeds: ``{seed: results JSON}`` and estimates.

    ``cv`` is None for saliency methods (no counterfactual, no CV).
    """

    results: dict[int, dict]
    iou: Estimate
    cv: Estimate | None

    def seed_values(self, key: str) -> dict[int, float | None]:
        """``metrics[key]`` of every seed."""
        return {seed: result["metrics"].get(key) for seed, result in self.results.items()}

    @property
    def collapsed_seeds(self) -> list[int]:
        """The seeds whose GAN training collapsed (:func:`coinlib.verdicts.collapsed` on the
        validation IoU at the chosen threshold); none for saliency methods, which train nothing."""
        if self.cv is None:
            return []
        return collapsed(self.seed_values("val_iou_at_it"))


def _per_slice(results: dict[int, dict], key: str, where: str) -> dict[int, dict]:
    """``metrics[key]`` of every seed; a results file without it is named in the error."""
    missing = [seed for seed, result in results.items() if key not in result["metrics"]]
    if missing:
        raise KeyError(f"results/seed{missing[0]} of {where} lack metrics.{key} (per-slice counts for the "
                       "bootstrap): evaluate it again with this commit")
    return {seed: result["metrics"][key] for seed, result in results.items()}


def _scans(profile: Profile, per_slice: dict[int, dict], where: str) -> dict[int, str] | None:
    """``{prepared row: scan}`` of every seed's slices where the profile bootstraps over scans
    (``eval.bootstrap_unit``), else None (slices drawn one by one)."""
    if profile.eval.bootstrap_unit == "slice":
        return None
    scan_of_row: dict[int, str] = {}
    for seed, counts in per_slice.items():
        if "scans" not in counts:
            raise KeyError(f"results/seed{seed} of {where} lack the scan of each slice (for the scan "
                           "bootstrap, eval.bootstrap_unit = 'scan'): evaluate it again with this commit")
        scan_of_row.update(zip(counts["rows"], counts["scans"]))
    return scan_of_row


def scored_method(
    run_dir: str | os.PathLike, profile: Profile, track: str, method: str, ablation: bool = False,
    name: str | None = None,
) -> Scored:
    """Read ``method``'s results of every seed in ``profile.seeds`` and estimate IoU and CV.

    Each seed's IoU and CV recomputed from its per-slice counts must equal what its
    results file reports (``metrics.iou.iou``, Eq. 8; ``metrics.cv``), or the counts
    belong to other masks.
    """
    from .pipeline import load_results
    from .variants import VARIANTS

    name = name or CLAIM_NAMES.get(method, method)
    where = f"{track} {method}{' (Table 2/3 run)' if ablation else ''} in {run_dir}"
    results = {seed: load_results(run_dir, track, method, ablation, seed=seed) for seed in profile.seeds}
    per_slice = _per_slice(results, "per_slice", where)
    iou = iou_estimate(name, per_slice, group_of_row=_scans(profile, per_slice, where))
    _agrees(iou, {seed: r["metrics"]["iou"]["iou"] for seed, r in results.items()}, where, "IoU")
    cv = None
    if method in VARIANTS:  # counterfactual methods; saliency methods have no CV
        per_slice_cv = _per_slice(results, "per_slice_cv", where)
        cv = cv_estimate(name, per_slice_cv, group_of_row=_scans(profile, per_slice_cv, where))
        _agrees(cv, {seed: r["metrics"]["cv"] for seed, r in results.items()}, where, "CV")
    return Scored(results, iou, cv)


def _agrees(estimate: Estimate, reported: dict[int, float | None], where: str, what: str) -> None:
    for seed, value in zip(estimate.seeds, estimate.per_seed):
        saved = float("nan") if reported[seed] is None else reported[seed]
        if not (math.isclose(value, saved, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(value) and math.isnan(saved))):
            raise ValueError(f"seed {seed} of {where}: per-slice counts give {what} {value:.6f}, "
                             f"the results file reports {saved:.6f}")


def _seed_mean(values: dict[int, float | None]) -> float | None:
    """Mean over seeds; None when any seed has no value (e.g. FID without its weights)."""
    if any(v is None for v in values.values()):
        return None
    return float(np.mean([float(v) for v in values.values()]))


def _spread_columns(column: str, estimate: Estimate) -> dict[str, float]:
    """The CSV's numbers behind a 'mean ± sd' cell and its interval, and every seed's value."""
    return {f"{column} mean": estimate.mean, f"{column} sd": estimate.sd, f"{column} CI low": estimate.low,
            f"{column} CI high": estimate.high,
            **{f"{column} seed {seed}": value for seed, value in zip(estimate.seeds, estimate.per_seed)}}


def _seeds_cell(scored: Scored) -> int | str:
    """The seed count, and the seeds whose training collapsed, so that a failed run is told
    from a weak method in the table itself."""
    failed = scored.collapsed_seeds
    if not failed:
        return len(scored.results)
    return f"{len(scored.results)} (collapsed: seed{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))})"


def metric_columns(scored: Scored, paper: dict[str, float | None]) -> dict[str, Any]:
    """Our metrics of one method over seeds next to the paper's (Sec. 5 protocol).

    ``IoU``: test IoU at the threshold chosen on the validation split; ``best test IoU``:
    the best threshold on the test set itself, which is what the paper reports.
    """
    row: dict[str, Any] = {
        "IoU": scored.iou.mean_sd(), IOU_CI: scored.iou.interval(), "paper IoU": paper["iou"],
        "CV": scored.cv.mean_sd() if scored.cv else None, CV_CI: scored.cv.interval() if scored.cv else None,
        "paper CV": paper["cv"], "paper FID": paper["fid"], "seeds": _seeds_cell(scored),
    }
    if scored.cv is not None and all(r["metrics"].get("cv_slices") == 0 for r in scored.results.values()):
        # CV (Sec. 4.2) is undefined without a slice f is confident about: say so, not just "-"
        row["CV"] = f"- (no test slice with f(x) > {_cv_tau(scored)})"
    per_seed: dict[str, Any] = {}
    for column, key in SEED_MEAN_METRICS.items():
        values = scored.seed_values(key)
        row[column] = _seed_mean(values)
        per_seed.update({f"{column} seed {seed}": value for seed, value in values.items()})
    row.update(_spread_columns("IoU", scored.iou))
    if scored.cv:
        row.update(_spread_columns("CV", scored.cv))
    return {**row, **per_seed}


def _cv_tau(scored: Scored) -> float:
    return next(iter(scored.results.values())).get("config", {}).get("eval", {}).get("cv_tau", 0.8)


def _budget(scored: Scored) -> str:
    train = next(iter(scored.results.values()))["config"]["train"]
    return f"{train['steps']} x {train['batch_size']}"


def _scored(saliency: SaliencyConfig, track: str, method: str) -> bool:
    """Whether the profile scores ``method`` on ``track`` (counterfactual methods always)."""
    return method not in SALIENCY or method in saliency.methods_for(track)


def table1_rows(
    run_dir: str | os.PathLike, profile: Profile, tracks: Sequence[str] = ("synthetic", "tumour"),
) -> list[dict]:
    """Table 1: saliency baselines, Singla* and COIN on both tracks, ours beside the paper's.

    A method the profile leaves out of a track gets a row that says so.
    """
    from .paper_numbers import TABLE1, paper_row

    rows = []
    for track in tracks:
        for method in TABLE1_METHODS:
            base = {"data": TRACK_NAMES[track], "method": METHOD_NAMES[method]}
            if not _scored(profile.saliency, track, method):
                rows.append({**base, "paper IoU": paper_row(TABLE1, (track, method))["iou"],
                             "slices scored": "not run in this profile"})
                continue
            scored = scored_method(run_dir, profile, track, method)
            first = next(iter(scored.results.values()))
            seconds = {seed: r.get("cost", {}).get("seconds_per_image") for seed, r in scored.results.items()}
            subset = first["metrics"].get("subset")
            rows.append({
                **base, **metric_columns(scored, paper_row(TABLE1, (track, method))),
                "forward passes / image": first.get("cost", {}).get("forward_passes", 1),
                "s / image": _seed_mean(seconds),
                "slices scored": f"{scored.iou.slices} (val {subset['val']})" if subset else scored.iou.slices,
                **{f"s / image seed {seed}": value for seed, value in seconds.items()},
            })
    return rows


def per_case_rows(
    run_dir: str | os.PathLike, profile: Profile, track: str, methods: Sequence[str],
    scan_of_row: Sequence[str], notes: dict[str, str] | None = None,
) -> list[dict]:
    """Table 1's accumulated test IoU broken down by scan: which cases it rests on.

    One row per test scan with an abnormal slice, largest lesion share first: its abnormal
    slices, its share of all lesion pixels (its weight in the accumulated IoU of Sec. 4.2;
    :func:`coinlib.metrics.grouped_iou`), each method's IoU on it as the mean over seeds
    with the lowest and highest seed (None where it scored none of the case's slices), and
    ``notes[scan]`` (e.g. the phantom's lesions) where given. ``scan_of_row[i]``: the scan of prepared row ``i`` (the prepared folder's
    ``index``). The scans' counts add up to each seed's Table 1 IoU.
    """
    from .metrics import grouped_iou

    per_method: dict[str, list[dict]] = {}
    for method in methods:
        scored = scored_method(run_dir, profile, track, method)
        per_method[method] = []
        for result in scored.results.values():
            counts = result["metrics"]["per_slice"]
            scans = [scan_of_row[row] for row in counts["rows"]]
            per_method[method].append(grouped_iou(scans, counts["tp"], counts["fp"], counts["fn"]))
    first = per_method[methods[0]][0]
    rows = []
    for scan in sorted(first, key=lambda s: -first[s]["share"]):
        row: dict[str, Any] = {"scan": scan, "abnormal slices": first[scan]["slices"],
                               "lesion share": first[scan]["share"]}
        for method in methods:
            # a method scored on a subset of the slices (SaliencyConfig.max_images) may miss a case
            values = [seed[scan]["iou"] for seed in per_method[method] if scan in seed]
            name = METHOD_NAMES[method].split(" (")[0]
            row[f"{name} IoU"] = float(np.mean(values)) if values else None
            row[f"{name} seeds"] = f"[{min(values):.3f}, {max(values):.3f}]" if values else None
        if notes is not None:
            row["lesions"] = notes.get(scan, "")
        rows.append(row)
    return rows


def table2_rows(run_dir: str | os.PathLike, profile: Profile) -> list[dict]:
    """Table 2: COIN with one loss term switched off (synthetic track)."""
    from .paper_numbers import TABLE2, paper_row
    from .variants import TABLE2_VARIANTS

    rows = []
    for variant in TABLE2_VARIANTS:
        scored = scored_method(run_dir, profile, "synthetic", variant, ablation=True)
        rows.append({"ablation": METHOD_NAMES[variant], **metric_columns(scored, paper_row(TABLE2, variant)),
                     "steps x batch": _budget(scored), "slices scored": scored.iou.slices})
    return rows


def table3_rows(run_dir: str | os.PathLike, profile: Profile) -> list[dict]:
    """Table 3 (Appendix A): masks, perturbations, skips and conditions (synthetic track)."""
    from .paper_numbers import TABLE3, TABLE3_LABELS, paper_row
    from .variants import TABLE3_VARIANTS

    rows = []
    profile = table3_profile(profile)
    for variant in TABLE3_VARIANTS:
        if not profile.seeds:  # AblationConfig.table3_seeds = (): the profile does not train Table 3
            rows.append({"row": TABLE3_LABELS[variant], "paper IoU": paper_row(TABLE3, variant)["iou"],
                         "paper CV": paper_row(TABLE3, variant)["cv"], "seeds": 0,
                         "slices scored": f"not trained in profile {profile.name}"})
            continue
        scored = scored_method(run_dir, profile, "synthetic", variant, ablation=True)
        gan = next(iter(scored.results.values()))["config"]["gan"]
        rows.append({"row": TABLE3_LABELS[variant], "masks": gan["use_masks"], "perturbations": gan["perturbation"],
                     "skips": gan["skips"], "conditions": gan["conditions"],
                     **metric_columns(scored, paper_row(TABLE3, variant)), "steps x batch": _budget(scored),
                     "slices scored": scored.iou.slices})
    return rows


# ------------------------------------------------------------ the orderings the paper reports


def _checker(run_dir: str | os.PathLike, profile: Profile, ablation: bool = False,
             names: dict[str, str] | None = None) -> Callable[..., Verdict]:
    """``check(claim, track, better, worse, metric="iou")``: one verdict, each method read once."""

    @cache
    def scored(track: str, method: str) -> Scored:
        return scored_method(run_dir, profile, track, method, ablation, (names or {}).get(method))

    def check(claim: str, track: str, better: str, worse: str, metric: str = "iou") -> Verdict:
        missing = [CLAIM_NAMES.get(m, m) for m in (better, worse) if not _scored(profile.saliency, track, m)]
        if missing:
            verdict = not_checked(claim, f"{' and '.join(missing)} not run on the {track} track in profile "
                                         f"{profile.name}", track)
        else:
            verdict = compare(claim, getattr(scored(track, better), metric), getattr(scored(track, worse), metric),
                              track)
            failed = [f"{CLAIM_NAMES.get(m, m)} collapsed on seed{'s' if len(c) > 1 else ''} {', '.join(map(str, c))}"
                      for m in (better, worse) if (c := scored(track, m).collapsed_seeds)]
            verdict = replace(verdict, notes="; ".join(failed))
        return replace(verdict, methods=(better, worse), metric=metric)

    return check


def table1_claims(run_dir: str | os.PathLike, profile: Profile) -> list[Verdict]:
    """The orderings Table 1 shows, on the IoU at the validation-chosen threshold (Sec. 5).

    Synthetic track: COIN > Singla* > RISE > ScoreCAM and LayerCAM. Tumour track: COIN >
    Singla* > each saliency method, and COIN > each (the paper's three; Grad-CAM too when
    the profile scores it). A method the profile did not run makes its claim "not checked".
    """
    check = _checker(run_dir, profile)

    def ordering(track: str, better: str, worse: str) -> Verdict:
        return check(f"{track}: {CLAIM_NAMES[better]} > {CLAIM_NAMES[worse]}", track, better, worse)

    tumour_saliency = [m for m in SALIENCY if m != "gradcam" or _scored(profile.saliency, "tumour", m)]
    return [
        ordering("synthetic", "coin", "singla"),
        ordering("synthetic", "singla", "rise"),
        ordering("synthetic", "rise", "scorecam"),
        ordering("synthetic", "rise", "layercam"),
        ordering("tumour", "coin", "singla"),
        *(ordering("tumour", "singla", m) for m in tumour_saliency),
        *(ordering("tumour", "coin", m) for m in tumour_saliency),
    ]


def table2_claims(run_dir: str | os.PathLike, profile: Profile) -> list[Verdict]:
    """Table 2: switching off lambda_idt, lambda_f or lambda_tv lowers IoU; lambda_f = 0 lowers CV."""
    check = _checker(run_dir, profile, ablation=True)
    return [
        *(check(f"IoU: COIN > {CLAIM_NAMES[v]}", "synthetic", "coin", v)
          for v in ("coin_no_idt", "coin_no_f", "coin_no_tv")),
        check("CV: COIN > lambda_f = 0", "synthetic", "coin", "coin_no_f", metric="cv"),
    ]


def table3_claims(run_dir: str | os.PathLike, profile: Profile) -> list[Verdict]:
    """Table 3 (Appendix A): what each ingredient adds, on IoU (rows as in the paper)."""
    from .paper_numbers import TABLE3_LABELS

    rows_profile = table3_profile(profile)
    check = _checker(run_dir, rows_profile, ablation=True, names=TABLE3_LABELS)
    if not rows_profile.seeds:
        check = lambda claim, track, better, worse: replace(not_checked(  # noqa: E731
            claim, f"profile {profile.name} does not train the Table 3 rows (AblationConfig.table3_seeds)", track),
            methods=(better, worse))
    return [
        check("perturbation helps with masks: B > A", "synthetic", "table3_b", "table3_a"),
        check("one skip beats none: C > B", "synthetic", "table3_c", "table3_b"),
        check("four skips beat one: F > C", "synthetic", "table3_f", "table3_c"),
        check("perturbation helps without masks: G > H (H = Singla*)", "synthetic", "table3_g", "singla"),
        check("one condition beats two: COIN > G", "synthetic", "coin", "table3_g"),
    ]


def _paper_value(table: str, track: str, method: str, metric: str) -> float | None:
    from .paper_numbers import TABLE1, TABLE2, TABLE3

    row = (TABLE1.get((track, method)) if table == "table1" else
           TABLE2.get(method) if table == "table2" else TABLE3.get(method))
    return None if row is None else row.get(metric)


def claims_summary_markdown(claims: dict[str, Sequence[Verdict]]) -> str:
    """One short table of the paper's orderings, ``{table name: verdicts}``: each claim with the
    paper's two numbers, this run's two seed means, and the verdict (the README's "what
    reproduced"; the full verdict lines with intervals are in the results page)."""
    lines = ["| table | the paper's ordering | paper | this run (mean over seeds) | verdict |",
             "|---|---|---|---|---|"]
    for table, verdicts in claims.items():
        for verdict in verdicts:
            metric = "IoU" if verdict.metric == "iou" else "CV"
            paper = "-"
            if len(verdict.methods) == 2:
                values = [_paper_value(table, verdict.track, m, verdict.metric) for m in verdict.methods]
                if None not in values:
                    paper = f"{values[0]:.3f} vs {values[1]:.3f}"
            ours = ("-" if verdict.better is None or verdict.worse is None else
                    f"{verdict.better.mean:.3f} vs {verdict.worse.mean:.3f}")
            outcome = "not checked" if verdict.outcome == "not checked" else verdict.label
            if verdict.notes:
                outcome += f" ({verdict.notes})"
            claim = verdict.claim if verdict.claim.startswith(("IoU", "CV")) else f"{metric}: {verdict.claim}"
            lines.append(f"| {table.replace('table', 'Table ')} | {claim} | {paper} | {ours} | {outcome} |")
    return "\n".join(lines) + "\n"


def claims_markdown(claims: Sequence[Verdict]) -> str:
    """A Markdown list, one verdict a line with the numbers behind it."""
    return "\n".join(f"- {verdict.text()}" for verdict in claims) + "\n"
