"""What each "paper or the authors' code" choice does to COIN's Table 1 IoU.

    python benchmarks/config_effects.py --baseline runs/quick            # after `make reproduce`
    python benchmarks/config_effects.py --baseline runs/quick --choices eval.morphology=implementation
    python benchmarks/config_effects.py --baseline runs/quick --track tumour --choices eval.morphology=implementation

The docs/protocol.md's "Where the authors' code differs from the paper" lists the choices, each a
config field with the paper's (or, where the paper is silent, the code's) value as default.
For each ``--choices`` entry (``SECTION.FIELD=VALUE``, the non-default value) this trains and
scores COIN on one track of Table 1 (``--track``, default synthetic) for every seed of the baseline's profile, in a
run folder of its own under ``--out``, and compares it with the baseline run's COIN by the
project's verdict rule (:func:`coinlib.verdicts.compare`: every seed and non-overlapping
bootstrap intervals over test scans, or slices: ``eval.bootstrap_unit``). What a choice
cannot change is copied from the baseline rather than rebuilt: the prepared data always, the
classifiers unless the choice is in :data:`CLASSIFIER_SECTIONS` (f itself, or the anomalies f
learns from, changes), the trained COIN too when the choice is an ``eval`` field (only the
scoring changes). ``--also singla rise`` scores those methods too in each choice's run folder (a GAN variant retrained,
a saliency method on the choice's f) and compares COIN with each there, as Table 1 does.
``--seeds 3 4 5`` checks the choices on replicates other than the baseline's (seeds no choice was
made on): the default configuration is then trained for those seeds too, f included, in a folder
of its own beside the choices' (the baseline's prepared data reused), and is what each choice is
compared with.
Prints a Markdown table and writes ``config_effects_<track>.json`` and ``.md`` under ``--out``.
Resumable: a second call reuses every finished model and result. A benchmark, not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

# a choice in these sections retrains f (the anomalies are what f learns from)
CLASSIFIER_SECTIONS = ("anomaly", "classifier", "tumour_classifier")
DEFAULT_CHOICES = ("anomaly.rule=continuous", "eval.morphology=implementation", "train.kl_target_normal=f(x)")


def _copy_missing(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` unless ``target`` already exists (a resumed call)."""
    if source.exists() and not target.exists():
        shutil.copytree(source, target, symlinks=True)


def seed_out(baseline: Path, out: Path, section: str, seeds: tuple[int, ...], track: str = "synthetic") -> None:
    """Copy into ``out`` what the choice of ``section`` leaves of ``track`` as the baseline built it."""
    from coinlib.pipeline import LAYOUT_OF_TRACK, RunPaths

    layout = LAYOUT_OF_TRACK[track]
    _copy_missing(baseline / "data" / "phantom" / layout, out / "data" / "phantom" / layout)
    for prepared in (baseline / "data" / "prepared").glob(f"phantom_{layout}_*"):
        _copy_missing(prepared, out / "data" / "prepared" / prepared.name)
    for seed in seeds:
        source, target = RunPaths(baseline, seed), RunPaths(out, seed)
        if section not in CLASSIFIER_SECTIONS:
            _copy_missing(source.classifier(track), target.classifier(track))
        if section == "eval":
            _copy_missing(source.counterfactual(track, "coin"), target.counterfactual(track, "coin"))


def main(argv: list[str] | None = None) -> None:
    from coinlib.cli import parse_overrides
    from coinlib.config import get_profile, to_dict, track_profile
    from coinlib.files import atomic_path, read_json, write_json
    from coinlib.pipeline import ensure_results_all, evaluate_saliency_all, prepare_track
    from coinlib.variants import VARIANTS
    from coinlib.provenance import claim_run_folder
    from coinlib.tables import scored_method
    from coinlib.verdicts import RESAMPLED, compare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a finished run folder (its run.json's profile)")
    parser.add_argument("--choices", nargs="+", default=list(DEFAULT_CHOICES), metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="synthetic")
    parser.add_argument("--also", nargs="*", default=[], metavar="METHOD",
                        help="other methods to score in each choice's run folder (e.g. singla rise)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="replicates other than the baseline's: the default is trained for them too")
    parser.add_argument("--out", type=Path, default=Path("runs/config_effects"))
    args = parser.parse_args(argv)
    if args.track == "tumour" and any(choice.startswith("anomaly.") for choice in args.choices):
        parser.error("--choices anomaly.*: the synthetic anomalies do not reach the tumour track")

    claim = args.baseline / "run.json"
    if not claim.is_file():
        raise SystemExit(f"--baseline {args.baseline}: no run.json; give a finished run folder (make reproduce)")
    base_profile = get_profile(read_json(claim)["profile"])
    claim_run_folder(base_profile, args.baseline)  # refuses a baseline run with --set overrides
    seeds = tuple(base_profile.seeds) if args.seeds is None else tuple(args.seeds)
    out_root = args.out / base_profile.name
    reference = args.baseline
    if args.seeds is not None:
        # the default retrained, f too, on seeds the baseline does not have: choices compare with it
        base_profile = replace(base_profile, seeds=seeds)
        out_root = out_root / ("seeds_" + "-".join(map(str, seeds)))
        reference = out_root / "default"
        seed_out(args.baseline, reference, "classifier", seeds, args.track)  # a classifier section: data only, f retrained
        prepared = prepare_track(base_profile, reference, args.track, "phantom", progress=False)
        ensure_results_all(base_profile, reference, {args.track: prepared}, ("coin",), progress=True)

    def estimate(run_dir: Path, name: str, method: str = "coin"):
        return scored_method(run_dir, base_profile, args.track, method, name=name).iou

    others = []

    default = estimate(reference, "default")
    rows = []
    for choice in args.choices:
        overrides = parse_overrides([choice])
        (section, values), = overrides.items()
        (field, value), = values.items()
        profile = replace(get_profile(base_profile.name, overrides), seeds=seeds)
        default_value = to_dict(getattr(base_profile, section))[field]
        if to_dict(getattr(profile, section))[field] == default_value:
            raise SystemExit(f"--choices {choice}: that is the default of profile {base_profile.name}")
        if track_profile(profile, args.track) == track_profile(base_profile, args.track):
            raise SystemExit(f"--choices {choice}: does not reach the {args.track} track, which takes that "
                             f"setting from tumour_protocol or tumour_classifier (coinlib.config.track_profile)")
        run_dir = out_root / choice.replace("/", "_")
        seed_out(reference, run_dir, section, seeds, args.track)
        prepared = prepare_track(profile, run_dir, args.track, "phantom", progress=False)
        ensure_results_all(profile, run_dir, {args.track: prepared}, ("coin",), progress=True)
        other = estimate(run_dir, choice)
        gans = tuple(m for m in args.also if m in VARIANTS)
        if gans:
            ensure_results_all(profile, run_dir, {args.track: prepared}, gans, progress=True)
        saliency = tuple(m for m in args.also if m not in VARIANTS)
        if saliency:
            evaluate_saliency_all(profile, run_dir, {args.track: prepared}, progress=True, methods=saliency)
        for method in args.also:
            there = estimate(run_dir, f"{method}, {choice}", method)
            coin_above = compare(f"COIN > {method}, {choice}", other, there)
            others.append({"choice": choice, "method": method, "iou": there.summary(),
                           "per_seed": list(there.per_seed), "coin_above": coin_above.outcome,
                           "reason": coin_above.reason})
        higher, lower = compare(f"{choice} above the default", other, default), compare(
            f"{choice} below the default", default, other)
        verdict = ("higher" if higher.outcome == "holds" else "lower" if lower.outcome == "holds"
                   else f"not resolved ({higher.reason})")
        rows.append({"field": f"{section}.{field}", "default": default_value, "other": value,
                     "iou_default": default.summary(), "iou_other": other.summary(),
                     "per_seed_default": list(default.per_seed), "per_seed_other": list(other.per_seed),
                     "slices": other.slices, "verdict": verdict})

    lines = [f"COIN, {args.track} track, profile {base_profile.name}, seeds {list(seeds)}: test IoU at the "
             f"validation-chosen threshold, mean ± sd over seeds [95 % bootstrap interval over "
             f"{RESAMPLED[base_profile.eval.bootstrap_unit]}]",
             "", "| field | default | IoU, default | other value | IoU, other | the other value's IoU |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `{r['field']}` | `{r['default']}` | {r['iou_default']} | `{r['other']}` | {r['iou_other']} | "
              f"{r['verdict']} |" for r in rows]
    if others:
        lines += ["", "Other methods in each choice's run folder, and COIN against them there:", "",
                  "| choice | method | IoU | per seed | COIN above it |", "|---|---|---|---|---|"]
        lines += [f"| `{o['choice']}` | {o['method']} | {o['iou']} | "
                  f"{' / '.join(f'{v:.3f}' for v in o['per_seed'])} | {o['coin_above']} ({o['reason']}) |"
                  for o in others]
    text = "\n".join(lines)
    print(text)
    report_dir = args.out if args.seeds is None else out_root
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(report_dir / f"config_effects_{args.track}.json",
               {"baseline": str(reference), "track": args.track, "seeds": list(seeds), "rows": rows,
                "others": others})
    with atomic_path(report_dir / f"config_effects_{args.track}.md") as tmp:
        tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
