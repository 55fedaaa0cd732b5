"""Does bf16 autocast change what the GAN learns? COIN and Singla* trained under fp32 and under
bf16 on the same data, the same classifier f and the same seeds, scored alike.

    python benchmarks/precision_parity.py --baseline runs/quick                    # after `make reproduce`
    python benchmarks/precision_parity.py --baseline runs/quick --seeds 0 1 2 3 4 5 --variants singla coin \\
        --tracks synthetic tumour

For every track, seed and variant, the GAN is trained twice in run folders of their own under
``--out`` (``fp32/`` and ``bf16/``, ``CounterfactualConfig.precision``), each from the
baseline's prepared data and the same f: the baseline's for the seeds it trained, else one f
trained here (under this machine's default precision) and shared by both arms, so the only
difference between the arms is the precision of the GAN's training step. Both are scored alike,
with counterfactuals computed in fp32 (``coin evaluate``'s protocol: the threshold chosen on validation, Sec. 5), so the scoring
is not what differs either.

A training **collapsed** when its validation IoU at the chosen threshold is below a third of
the median over every training of that track and variant (both precisions, every seed;
:func:`coinlib.verdicts.collapsed`): a failed run, not a weak method. Prints, per track and variant, each precision's IoU and CV per
seed, mean ± sd, the collapsed seeds and the mean wall time of one training (one thread; the
jobs run side by side, one per core), and the paired difference fp32 - bf16 on each seed (parity:
differences of either sign, within the seeds' spread). Writes ``precision_parity.json``
and ``.md`` under ``--out``; resumable (finished models and results are reused). A benchmark,
not a test: numbers depend on the machine, which the output names (CPU family, model and bf16
instructions).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coinlib.config import Profile

PRECISIONS = ("fp32", "bf16")


def _copy_missing(source: Path, target: Path) -> None:
    import shutil

    if source.exists() and not target.exists():
        shutil.copytree(source, target, symlinks=True)


def _classifier_job(baseline: Profile, seed: int, shared: Path, track: str, source: str) -> str:
    """f for ``seed`` in ``shared`` (trained here when the baseline had none for that seed)."""
    from coinlib.config import with_seed
    from coinlib.pipeline import ensure_classifier, prepare_track

    profile = with_seed(baseline, seed)
    prepared = prepare_track(profile, shared, track, source, progress=False)
    return str(ensure_classifier(profile, shared, track, prepared, progress=False))


def _gan_job(baseline: Profile, seed: int, run: Path, track: str, source: str, variant: str,
             precision: str) -> dict:
    """Train ``variant`` under ``precision`` in ``run``, score it in fp32; the metrics and the seconds."""
    from coinlib.config import with_seed
    from coinlib.pipeline import ensure_counterfactual, evaluate_variant, prepare_track
    profile = with_seed(baseline, seed)
    profile = replace(profile, train=replace(profile.train, precision=precision))
    prepared = prepare_track(profile, run, track, source, progress=False)
    start = time.perf_counter()
    ensure_counterfactual(profile, run, track, prepared, variant, progress=False)
    seconds = time.perf_counter() - start
    results = evaluate_variant(profile, run, track, prepared, variant, fid=False, progress=False)
    metrics = results["metrics"]
    return {"track": track, "variant": variant, "seed": seed, "precision": precision,
            "iou": metrics["iou"]["iou"] if isinstance(metrics["iou"], dict) else metrics["iou"],
            "val_iou": metrics.get("val_iou_at_it"), "cv": metrics.get("cv"), "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a finished run folder (its data and f)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--variants", nargs="+", default=["singla", "coin"])
    parser.add_argument("--tracks", nargs="+", default=["synthetic"], choices=["synthetic", "tumour"])
    parser.add_argument("--out", type=Path, default=Path("runs") / "precision_parity")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="as coin train --set (e.g. train.steps=20 for a dry run)")
    args = parser.parse_args()

    from coinlib.cli import parse_overrides
    from coinlib.files import atomic_path, write_json
    from coinlib.jobs import Job, run_jobs
    from coinlib.pipeline import LAYOUT_OF_TRACK, RunPaths
    from coinlib.provenance import run_profile
    from coinlib.runtime import cpu_bf16_instructions, hardware_summary, pick_device
    from coinlib.tables import seed_range
    from coinlib.verdicts import collapsed, seed_estimate

    # the baseline's recorded settings (a `coin reproduce --set` is kept), then this command's --set
    baseline = run_profile(args.baseline, parse_overrides(args.overrides))
    profile_name = baseline.name
    shared = args.out / "shared"
    for folder in (shared, *(args.out / p for p in PRECISIONS)):
        for track in args.tracks:
            layout = LAYOUT_OF_TRACK[track]
            _copy_missing(args.baseline / "data" / "phantom" / layout, folder / "data" / "phantom" / layout)
            for prepared in (args.baseline / "data" / "prepared").glob(f"phantom_{layout}_*"):
                _copy_missing(prepared, folder / "data" / "prepared" / prepared.name)
            for seed in args.seeds:
                _copy_missing(RunPaths(args.baseline, seed).classifier(track), RunPaths(shared, seed).classifier(track))
    classifiers = [Job(f"f {track} seed {seed}", _classifier_job,
                       (baseline, seed, shared, track, "phantom"))
                   for track in args.tracks for seed in args.seeds]
    run_jobs(classifiers, "cpu", desc="classifiers")
    for precision in PRECISIONS:
        for track in args.tracks:
            for seed in args.seeds:
                _copy_missing(RunPaths(shared, seed).classifier(track),
                              RunPaths(args.out / precision, seed).classifier(track))
    jobs = [Job(f"{variant} {track} seed {seed} {precision}", _gan_job,
                (baseline, seed, args.out / precision, track, "phantom", variant, precision))
            for track in args.tracks for variant in args.variants for seed in args.seeds for precision in PRECISIONS]
    rows = run_jobs(jobs, "cpu", desc="GANs")

    hardware = hardware_summary(pick_device("cpu"))
    lines = [f"Precision parity, profile {profile_name}{' with ' + ' '.join(args.overrides) if args.overrides else ''}, "
             f"seeds {', '.join(map(str, args.seeds))}; {hardware.get('cpu')} ({hardware.get('cpu_model_id')}), "
             f"bf16 instructions: {', '.join(cpu_bf16_instructions()) or 'none (bf16 is emulated)'}.", "",
             f"| track | variant | precision | IoU per seed ({' / '.join(map(str, args.seeds))}) | IoU mean ± sd | CV mean [min, max] | collapsed seeds | "
             "s / training |", "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for track in args.tracks:
        for variant in args.variants:
            group = [r for r in rows if r["track"] == track and r["variant"] == variant]
            failed = set(collapsed({(r["precision"], r["seed"]): r["val_iou"] for r in group}))
            estimates = {}
            for precision in PRECISIONS:
                mine = sorted((r for r in group if r["precision"] == precision), key=lambda r: r["seed"])
                iou = {r["seed"]: r["iou"] for r in mine}
                estimates[precision] = seed_estimate("IoU", iou)
                cv = [r["cv"] for r in mine if r["cv"] is not None and math.isfinite(r["cv"])]
                names = [str(s) for p, s in sorted(failed) if p == precision]
                lines.append(
                    f"| {track} | {variant} | {precision} | {' / '.join(f'{v:.3f}' for v in iou.values())} | "
                    f"{estimates[precision].mean_sd()} | {seed_range(cv) if cv else '-'} | "
                    f"{', '.join(names) or 'none'} | {statistics.mean(r['train_seconds'] for r in mine):.0f} |")
            verdicts.append(f"{track} {variant}: fp32 - bf16 per seed "
                            + " / ".join(f"{a - b:+.3f}" for a, b in zip(estimates['fp32'].per_seed,
                                                                         estimates['bf16'].per_seed)))
    lines += ["", "A training collapsed when its validation IoU is below a third of the median over every "
              "training of its track and variant.", "", *(f"- {v}" for v in verdicts)]
    text = "\n".join(lines) + "\n"
    print(text)
    write_json(args.out / "precision_parity.json", {"profile": profile_name, "overrides": args.overrides,
                                                    "hardware": hardware, "rows": rows})
    with atomic_path(args.out / "precision_parity.md") as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
