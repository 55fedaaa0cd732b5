"""The README's summary and the results page (docs/results.md), generated from a run folder
(never typed by hand).

``coin report --run-dir runs/quick`` reads the per-seed results JSON files
(``results/seed<s>/``), notebook timings and hardware of a finished run and rewrites the
part of ``docs/results.md`` between the markers ``<!-- results:start -->`` and
``<!-- results:end -->`` (:func:`results_markdown`), and the README's short summary between
``<!-- summary:start -->`` and ``<!-- summary:end -->`` (:func:`summary_markdown`). The
results page holds profile, seeds, hardware, timings, each classifier's AUC over seeds,
Tables 1-3 with the ordering checks under each (:mod:`coinlib.verdicts`), and "Reading the
run", prose generated from those verdicts; the summary, one table of the paper's orderings
with the paper's numbers, this run's and the verdicts. The same text is written to
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Profile
from .files import atomic_path, read_json
from .tables import markdown_table
from .verdicts import CONFIDENCE, MIN_SEEDS, RESAMPLED, Estimate, Verdict, seed_estimate

__all__ = ["END", "START", "markers", "export_notebooks", "publish_figures", "publish_tables", "reading_the_run",
           "results_markdown", "summary_markdown", "missing_from_run", "update_readme", "update_summary",
           "replace_block"]

START, END = "<!-- results:start -->", "<!-- results:end -->"  # the default block (markers())
# "classifier FD" is no FID: said under every table that shows it
CLASSIFIER_FD_NOTE = ("*classifier FD* is the Fréchet distance between f's penultimate-layer features of x and of "
                      "x_cf on the test slices: how far the counterfactuals move in f's own feature space. "
                      "It is not the paper's realism measure (FID, Inception features, shown where its weights are "
                      "present) and does not rank realism: a model that changes almost nothing (lambda_f = 0) "
                      "scores lowest.")
RELIABLE_AUC = 0.9  # below it, a track's claims explain a classifier that barely detects the lesion
TRACKS = ("synthetic", "tumour")


def _table_body(path: Path) -> str | None:
    """A table written by :func:`coinlib.tables.write_table`, without its title line."""
    if not path.is_file():
        return None
    text = path.read_text()
    return text[text.index("|"):] if "|" in text else None


def _source(results: Path) -> dict[str, Any] | None:
    """The lowest seed's COIN (else classifier) results: what produced the run."""
    for name in ("synthetic_coin.json", "classifier_synthetic.json", "classifier_tumour.json"):
        found = sorted(results.glob(f"seed*/{name}"), key=lambda p: int(p.parent.name.removeprefix("seed")))
        if found:
            return read_json(found[0])
    return None


def describe_hardware(hardware: dict[str, Any]) -> str:
    """'AMD EPYC (cpu family 26 model 2, AVX512-BF16, 2 cores, 1 thread, bf16, CPU only)' or
    'NVIDIA H200 (bf16; host CPU ...)'; family, model and bf16 instructions where recorded."""
    threads, precision = hardware.get("threads"), hardware.get("precision")
    cpu = [*([hardware["cpu_model_id"]] if hardware.get("cpu_model_id") else []),
           *[name.upper().replace("_", "-") for name in hardware.get("cpu_bf16") or []],
           f"{hardware['cpu_cores']} cores", *([f"{threads} thread{'s' if threads != 1 else ''}"] if threads else [])]
    if hardware.get("gpu"):
        return f"{hardware['gpu']} ({precision or 'GPU'}; host CPU {hardware['cpu']} ({', '.join(cpu)}))"
    return f"{hardware['cpu']} ({', '.join([*cpu, *([precision] if precision else []), 'CPU only'])})"


def classifier_results(run_dir: str | os.PathLike, profile: Profile, track: str) -> dict[int, dict] | None:
    """``{seed: classifier results}`` of the track over ``profile.seeds`` (None: no seed has one).

    A seed missing among others raises, naming its file.
    """
    from .pipeline import RunPaths

    paths = {seed: RunPaths(run_dir, seed).seed_results / f"classifier_{track}.json" for seed in profile.seeds}
    if not any(p.is_file() for p in paths.values()):
        return None
    return {seed: read_json(path) for seed, path in paths.items()}


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _weak_classifier(track: str, auc: Estimate) -> str | None:
    """The caveat sentence for a track whose classifier is below :data:`RELIABLE_AUC` on any seed."""
    weak = [seed for seed, value in zip(auc.seeds, auc.per_seed) if value < RELIABLE_AUC]
    if not weak:
        return None
    which = "every seed" if len(weak) == len(auc.seeds) else \
        f"seed{'s' if len(weak) > 1 else ''} {', '.join(map(str, weak))}"
    return (f"**Caveat:** the {track} track's classifier f has test AUC below {RELIABLE_AUC} on {which} "
            f"({auc.mean_sd()} over {_seeds(len(auc.seeds))}). A method can only explain what f "
            f"detects, so the {track}-track claims rest on a classifier that barely finds the lesions "
            f"and say little about the methods.")


def _classifier_line(track: str, results: dict[int, dict], auc: Estimate) -> str:
    first = next(iter(results.values()))
    accuracy = seed_estimate("accuracy", {seed: r["test_accuracy"] for seed, r in results.items()})
    each = ", ".join(f"seed {s}: {v:.3f}" for s, v in zip(auc.seeds, auc.per_seed))
    return (f"Classifier f, {track} track ({first['arch']}): test AUC **{auc.mean_sd()}** over "
            f"{_seeds(len(auc.seeds))} ({each}), accuracy "
            f"{accuracy.mean_sd()} on {first['test_slices']} test slices.")


def _mean_interval(estimate: Estimate) -> str:
    interval = estimate.interval()
    return f"{estimate.mean:.3f}" + ("" if interval == "-" else f" {interval}")


def _short(verdict: Verdict) -> str:
    """A verdict in the prose: the claim (without its track) and the means with their intervals."""
    claim = verdict.claim.removeprefix(f"{verdict.track}: ")
    if verdict.better is None or verdict.worse is None:
        return f"{claim} ({verdict.reason})"
    a, b = verdict.better, verdict.worse
    numbers = f"{_mean_interval(a)} against {_mean_interval(b)}"
    reason = f"; {verdict.reason}" if verdict.label == "not resolved at this budget" else ""
    return f"{claim} ({numbers}{reason})"


def reading_the_run(sections: Sequence[tuple[str, Sequence[Verdict], Sequence[str]]], unit: str = "scan") -> str:
    """'Reading the run': a paragraph per table, generated from its verdicts.

    ``sections``: (title, verdicts, extra sentences such as caveats and budgets). Each
    paragraph says which orderings hold, which do not and which are not resolved, with
    the means and intervals behind each.
    """
    lines = [f"**Reading the run** (generated from the verdicts above). An ordering holds only when it "
             f"holds on every seed and the {CONFIDENCE:.0%} bootstrap intervals over {RESAMPLED[unit]} do not "
             f"overlap, does not hold only when it fails the same way, and is otherwise not resolved at "
             f"this budget; with fewer than {MIN_SEEDS} seeds none is resolved.", ""]
    for title, verdicts, extra in sections:
        groups: dict[str, list[Verdict]] = {}
        for verdict in verdicts:
            groups.setdefault(verdict.label, []).append(verdict)
        order = ["holds", "does not hold", "not resolved at this budget"]
        labels = [*order, *sorted(set(groups) - {*order, "not checked"}), "not checked"]
        parts = [f"{label[0].upper()}{label[1:]} ({len(groups[label])} of {len(verdicts)}): "
                 + "; ".join(_short(v) for v in groups[label]) + "." for label in labels if label in groups]
        if "holds" not in groups:
            parts.insert(0, f"None of the {len(verdicts)} orderings holds.")
        lines += [f"*{title}.* " + " ".join([*parts, *extra]), ""]
    return "\n".join(lines)


def _budget(run_dir: Path, profile: Profile, ablation: bool) -> str:
    from .pipeline import load_results

    train = load_results(run_dir, "synthetic", "coin", ablation, seed=profile.seeds[0])["config"]["train"]
    return f"{train['steps']} steps of {train['batch_size']} slices"


def label_rules_line(run_dir: str | os.PathLike, profile: Profile) -> str | None:
    """The tumour track's COIN under both label rules (the authors' area rule, the paper text's
    "contains a lesion"), from ``results/seed<s>/tumour_coin[_any_lesion].json``; None when the run
    did not score the second rule."""
    from .pipeline import load_results

    try:
        rules = {rule: [load_results(run_dir, "tumour", "coin" + suffix, seed=s) for s in profile.seeds]
                 for rule, suffix in (("authors", ""), ("any", "_any_lesion"))}
    except FileNotFoundError:
        return None
    parts = []
    for rule, per_seed in rules.items():
        estimate = seed_estimate("IoU", {s: r["metrics"]["iou"]["iou"] for s, r in zip(profile.seeds, per_seed)})
        parts.append(f"{per_seed[0].get('label_rule', rule)}: IoU {estimate.mean_sd()} on "
                     f"{per_seed[0]['metrics']['abnormal_test_slices']} abnormal test slices")
    return ("COIN on the tumour track under both label rules (the same models, threshold chosen on validation "
            "alike): " + "; ".join(parts) + ".")


TUMOUR_CASES_CAPTION = (
    "**Table 1, tumour track, by test case** (notebook 07): each test case with an abnormal slice, its share of "
    "the lesion pixels (its weight in the accumulated IoU) and each method's IoU on it, mean over seeds with the "
    "lowest and highest seed; on the phantom, the masses the case was drawn with.")


def results_markdown(run_dir: str | os.PathLike) -> str:
    """Markdown summary of what the run produced: profile, hardware, timings, Tables 1-3, verdicts."""
    from .pipeline import load_results
    from .provenance import run_profile
    from .tables import claims_markdown, table1_claims, table2_claims, table3_claims

    run_dir = Path(run_dir)
    source = _source(run_dir / "results")
    if source is None:
        raise FileNotFoundError(f"no results in {run_dir / 'results'}; run the notebooks first (coin reproduce)")
    profile = run_profile(run_dir)
    data = "the embedded phantom" if "phantom" in str(source.get("data", "phantom")) else f"`{source['data']}`"
    seeds = ", ".join(map(str, profile.seeds))
    lines = [
        f"Profile **{profile.name}**, seed{'s' if len(profile.seeds) != 1 else ''} {seeds}, on {data}, produced "
        f"on {describe_hardware(source['hardware'])} with torch {source['hardware']['torch']} "
        f"(commit `{source.get('git_commit') or 'unknown'}`). Precision: the GAN's training step "
        f"{profile.train.precision} (`train.precision`), f and the saliency maps "
        f"{source['hardware'].get('precision') or 'fp32'} (`COIN_PRECISION`).",
        "",
    ]
    timings_path = run_dir / "notebooks" / "timings.json"
    if timings_path.is_file():
        recorded = read_json(timings_path)
        timings = recorded["notebooks"]
        # fixed tenths: a notebook of seconds reads 0.1, not in scientific notation
        rows = [{"notebook": t["notebook"], "minutes": f"{t['seconds'] / 60:.1f}"} for t in timings]
        rows.append({"notebook": "total", "minutes": f"{sum(t['seconds'] for t in timings) / 60:.1f}"})
        lines += ["Wall-clock time of the notebooks in `make reproduce`:", "",
                  markdown_table(rows, ["notebook", "minutes"], 1)]
        if recorded.get("note"):  # how the run differed from one uninterrupted `make reproduce`
            lines += [f"Timing note: {recorded['note']}.", ""]
    caveats: dict[str, str] = {}
    for track in TRACKS:
        if (classifiers := classifier_results(run_dir, profile, track)) is None:
            continue
        auc = seed_estimate("AUC", {seed: r["test_auc"] for seed, r in classifiers.items()})
        lines += [_classifier_line(track, classifiers, auc), ""]
        if (caveat := _weak_classifier(track, auc)) is not None:
            caveats[track] = caveat
            lines += [caveat, ""]

    tables = run_dir / "tables"
    interval = f"its {CONFIDENCE:.0%} bootstrap interval over {RESAMPLED[profile.eval.bootstrap_unit]}"
    captions = {
        "table1": (f"**Table 1.** IoU at the threshold chosen on the validation split, mean ± sd over seeds and "
                   f"{interval} beside it; the paper's protocol (best threshold on the test set) and the paper's "
                   "numbers in adjacent columns. Saliency methods are scored on the slices counted in the last "
                   "column. `tables/table1.csv` holds every seed's value. " + CLASSIFIER_FD_NOTE),
        "table2": (f"**Table 2.** COIN's loss ablation (synthetic track), mean ± sd over seeds and {interval}. "
                   "*classifier FD*: as in Table 1."),
        "table3": (f"**Table 3.** Appendix A: masks, perturbations, skips, conditions (synthetic track), mean ± sd "
                   f"over seeds and {interval}. *classifier FD*: as in Table 1."),
    }
    checks = {"table1": table1_claims, "table2": table2_claims, "table3": table3_claims}
    sections: list[tuple[str, list[Verdict], list[str]]] = []
    for name, caption in captions.items():
        if (body := _table_body(tables / f"{name}.md")) is None:
            continue
        verdicts = checks[name](run_dir, profile)
        rest_on = [caveats[t] for t in TRACKS if t in caveats and any(v.track == t for v in verdicts)]
        lines += [caption, "", body, "Orderings the paper reports, checked on this run:", "",
                  claims_markdown(verdicts), *(f"{c}\n" for c in rest_on)]
        if name == "table1":
            for track in TRACKS:
                sections.append((f"Table 1, {track} track", [v for v in verdicts if v.track == track],
                                 [caveats[track]] if track in caveats else []))
            coin = load_results(run_dir, "synthetic", "coin", seed=profile.seeds[0])["metrics"]
            if coin.get("fid") is None:
                lines += [f"FID: {coin.get('fid_note', 'not computed')}", ""]
            if (rules := label_rules_line(run_dir, profile)) is not None:
                lines += [rules, ""]
            if (cases := _table_body(tables / "table1_tumour_cases.md")) is not None:
                lines += [TUMOUR_CASES_CAPTION, "", cases]
        else:
            budget = (f"Every row trained {_budget(run_dir, profile, True)} on each seed (Table 1's COIN: "
                      f"{_budget(run_dir, profile, False)}); these verdicts are about runs of that length.")
            sections.append((name.replace("table", "Table "), verdicts,
                             [budget, *([caveats["synthetic"]] if "synthetic" in caveats else [])]))
    if sections:
        lines += [reading_the_run(sections, profile.eval.bootstrap_unit)]
    return "\n".join(lines).rstrip() + "\n"


def summary_markdown(run_dir: str | os.PathLike, results_page: str = "docs/results.md") -> str:
    """The README's short block: which run, how long, and each of the paper's orderings with the
    paper's numbers, this run's and the three-way verdict (:func:`coinlib.tables.claims_summary_markdown`);
    then the limits this run shows, counted from the same verdicts. ``results_page``: where the
    full block (:func:`results_markdown`) is, for the link."""
    from .provenance import run_profile
    from .tables import claims_summary_markdown, table1_claims, table2_claims, table3_claims

    run_dir = Path(run_dir)
    source = _source(run_dir / "results")
    if source is None:
        raise FileNotFoundError(f"no results in {run_dir / 'results'}; run the notebooks first (coin reproduce)")
    profile = run_profile(run_dir)
    timings_path = run_dir / "notebooks" / "timings.json"
    minutes = ""
    if timings_path.is_file():
        total = sum(t["seconds"] for t in read_json(timings_path)["notebooks"]) / 60
        minutes = f" The notebooks took {total:.0f} minutes."
    claims = {"table1": table1_claims(run_dir, profile), "table2": table2_claims(run_dir, profile),
              "table3": table3_claims(run_dir, profile)}
    lines = [
        f"Profile **{profile.name}** ({_seeds(len(profile.seeds))}), on "
        f"{describe_hardware(source['hardware'])}, the GAN's training step in {profile.train.precision}, "
        f"commit `{(source.get('git_commit') or 'unknown')[:10]}`."
        f"{minutes} Full tables, intervals and every verdict line: [{results_page}]({results_page}).",
        "",
        claims_summary_markdown(claims),
    ]
    counts: dict[str, int] = {}
    for verdict in (v for verdicts in claims.values() for v in verdicts):
        key = "not resolved" if verdict.outcome == "not resolved" else verdict.outcome
        counts[key] = counts.get(key, 0) + 1
    plural = {"holds": "hold", "does not hold": "do not hold"}
    lines.append(f"Of the paper's {sum(counts.values())} orderings here: "
                 + ", ".join(f"{n} {plural.get(name, name) if n != 1 else name}" for name, n in sorted(counts.items()))
                 + ".")
    caveats = []
    for track in TRACKS:
        classifiers = classifier_results(run_dir, profile, track)
        if classifiers is not None:
            auc = seed_estimate("AUC", {seed: r["test_auc"] for seed, r in classifiers.items()})
            if (caveat := _weak_classifier(track, auc)) is not None:
                caveats.append(caveat)
    lines += ["", *caveats]
    return "\n".join(lines).rstrip() + "\n"


def markers(block: str = "results") -> tuple[str, str]:
    """The README markers of a results block: ``<!-- results:start -->`` ... for the default,
    ``<!-- results-cpu-full:start -->`` ... for another (one block per reported profile)."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


def missing_from_run(run_dir: str | os.PathLike) -> list[str]:
    """What a finished run of the profile its results name holds and ``run_dir`` lacks (paths
    relative to it): for every seed of the profile, the Table 1 results (classifiers and
    every scored method) that its first seed holds. Empty for a finished run."""
    from .provenance import run_profile

    run_dir = Path(run_dir)
    if _source(run_dir / "results") is None:
        return ["results/ (no results at all)"]
    seeds = run_profile(run_dir).seeds
    first = run_dir / "results" / f"seed{seeds[0]}"
    names = sorted(p.name for p in first.glob("*.json") if not p.name.startswith("ablation_"))
    missing = [] if names else [f"results/seed{seeds[0]}/"]
    missing += [f"results/seed{seed}/{name}" for seed in seeds[1:] for name in names
                if not (run_dir / "results" / f"seed{seed}" / name).is_file()]
    return missing


def update_readme(run_dir: str | os.PathLike, readme: str | os.PathLike, block: str = "results",
                  partial: bool = False) -> str:
    """Replace the README's ``block`` (:func:`markers`) with :func:`results_markdown`; returns the text.

    An unfinished run (:func:`missing_from_run`) is refused, naming what it lacks, unless
    ``partial``: then the block opens with a line that says it is partial and what is missing.
    """
    missing = missing_from_run(run_dir)
    if missing and not partial:
        raise ValueError(f"{run_dir} is an unfinished run: it lacks {len(missing)} file(s) a finished run holds "
                         f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); finish it "
                         "(coin reproduce resumes), or pass --partial to publish it marked as partial")
    body = results_markdown(run_dir)
    if missing:
        body = (f"**Partial run:** {run_dir.name if isinstance(run_dir, Path) else Path(run_dir).name} lacks "
                f"{len(missing)} file(s) a finished run holds ({', '.join(missing[:8])}"
                f"{' ...' if len(missing) > 8 else ''}); the seeds and tables below are those it has.\n\n" + body)
    replace_block(readme, block, body)
    return body


def update_summary(run_dir: str | os.PathLike, readme: str | os.PathLike, results_page: str | os.PathLike,
                   block: str = "summary") -> str:
    """Replace the README's ``block`` with :func:`summary_markdown` (its link to ``results_page``
    relative to the README); an unfinished run's summary opens with the partial-run line."""
    readme = Path(readme)
    link = Path(os.path.relpath(Path(results_page).resolve(), readme.resolve().parent)).as_posix()
    if missing := missing_from_run(run_dir):  # verdicts need every seed: say what there is instead
        body = (f"**Partial run:** it lacks {len(missing)} file(s) a finished run holds "
                f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}), so no ordering is "
                f"judged here; [{link}]({link}) shows what it has.\n")
    else:
        body = summary_markdown(run_dir, link)
    replace_block(readme, block, body)
    return body


def replace_block(path: str | os.PathLike, block: str, body: str) -> None:
    """Put ``body`` between ``path``'s markers of ``block`` (:func:`markers`), atomically."""
    path = Path(path)
    text = path.read_text()
    start, end = markers(block)
    if start not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {start} ... {end}")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: f"{start}\n{body}{end}", text)
    with atomic_path(path) as tmp:
        tmp.write_text(new)


def publish_figures(run_dir: str | os.PathLike, figures_dir: str | os.PathLike) -> list[Path]:
    """Copy the run's figures into the repository's ``figures/`` folder: PNG only.

    The repository keeps each image once; the PDFs stay in the run folder.
    """
    return _publish(Path(run_dir) / "figures", "*.png", figures_dir)


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
            for mime in [m for m in data if m.startswith("text/")]:  # plain, markdown, html alike
                data[mime] = portable(data[mime])  # nbformat.read joins multi-line text
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
    # a run folder outside this checkout (another clone) is shown where `make reproduce` puts it
    shown_run = os.path.relpath(run_dir, repository) if run_dir.is_relative_to(repository) else f"runs/{run_dir.name}"
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
