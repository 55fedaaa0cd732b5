"""How a variant's validation IoU grows with training steps, over seeds (to choose the steps).

    python benchmarks/learning_curve.py                                   # quick: COIN and row F, 3 seeds
    python benchmarks/learning_curve.py --variants coin singla --steps 600 --every 50
    python benchmarks/learning_curve.py --profile quick --set train.lr=5e-4 --out runs/curves
    python benchmarks/learning_curve.py --track tumour --variants coin --steps 1500 --every 150 --out runs

Trains each variant of ``--variants`` on ``--track`` (default synthetic; tumour with its
protocol's settings, :func:`coinlib.config.track_profile`) for ``--steps`` steps, once per seed
of ``--seeds`` (each seed with its own classifier, as the pipeline does), and scores the
generator on the validation split every ``--every`` steps: the best IoU of the threshold sweep
and the IoU at the threshold a longer run would choose are both stochastic, so the curve is the
sweep's best, the protocol of Sec. 5 on the validation split (what the in-training validation of
:func:`coinlib.evaluate.quick_validation` records). Prints a table (steps x variant: mean and range
over seeds) and writes ``learning_curve.png`` and ``learning_curve.json`` under ``--out``. The
training runs live in ``--out`` too (a run folder of the profile), so a second call with more
steps resumes them; ``--out runs`` reuses a reproduce run's data and classifiers. A benchmark,
not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def train_one(profile, run_dir: str, prepared: str, variant: str, steps: int, every: int,
              track: str = "synthetic") -> list[dict]:
    """One seed's run of ``variant`` for ``steps`` steps, validated every ``every``: its history."""
    from coinlib.classifier_training import load_classifier
    from coinlib.counterfactual import history, train_counterfactual
    from coinlib.data import evaluation_set
    from coinlib.evaluate import quick_validation
    from coinlib.config import track_profile
    from coinlib.pipeline import RunPaths, ensure_classifier, track_settings
    from coinlib.variants import apply_variant

    paths = RunPaths(run_dir, profile.seed)
    classifier_path = ensure_classifier(profile, run_dir, track, prepared, progress=False)
    configured = apply_variant(track_profile(profile, track), variant)
    train = dataclasses.replace(configured.train, steps=steps, eval_every=every, checkpoint_every=every)
    config, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track))
    out = paths.root / "curves" / f"seed{profile.seed}" / (variant if track == "synthetic" else f"{track}_{variant}")
    validate = quick_validation(classifier, configured.gan, configured.eval, evaluation_set(prepared, "val", anomaly))
    train_counterfactual(prepared, configured.gan, train, anomaly, classifier, classifier_path, out,
                         progress=False, evaluate=validate, classifier_threshold=config.threshold)
    return [h for h in history(out) if "val_iou" in h]


def main(argv: list[str] | None = None) -> None:
    from coinlib.cli import parse_overrides
    from coinlib.config import get_profile, with_seed
    from coinlib.jobs import Job, run_jobs
    from coinlib.pipeline import prepare_track
    from coinlib.tables import seed_range

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="synthetic")
    parser.add_argument("--variants", nargs="+", default=["coin", "table3_f"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the profile's seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/learning_curve"))
    args = parser.parse_args(argv)

    profile = get_profile(args.profile, parse_overrides(args.overrides))
    seeds = args.seeds or list(profile.seeds)
    run_dir = args.out / profile.name
    prepared = str(prepare_track(profile, run_dir, args.track, "phantom"))
    jobs = [Job(f"{variant}, seed {seed}", train_one,
                (with_seed(profile, seed), str(run_dir), prepared, variant, args.steps, args.every, args.track))
            for variant in args.variants for seed in seeds]
    histories = run_jobs(jobs, desc="learning curves")

    curves: dict[str, dict] = {}
    for i, variant in enumerate(args.variants):
        runs = histories[i * len(seeds):(i + 1) * len(seeds)]
        steps = [h["step"] for h in runs[0]]
        ious = np.array([[h["val_iou"] for h in run] for run in runs])
        curves[variant] = {"steps": steps, "val_iou": ious.tolist(), "seeds": seeds}
    stem = "learning_curve" if args.track == "synthetic" else f"learning_curve_{args.track}"
    write = run_dir / f"{stem}.json"
    write.write_text(json.dumps({"profile": profile.name, "track": args.track, "overrides": args.overrides,
                                 "curves": curves}, indent=1))

    print(f"validation IoU (best threshold of the sweep) by step; mean [min, max] over seeds {seeds}")
    header = "| step | " + " | ".join(curves) + " |"
    print(header + "\n|" + "---|" * (len(curves) + 1))
    for k, step in enumerate(next(iter(curves.values()))["steps"]):
        cells = []
        for curve in curves.values():
            cells.append(seed_range(np.array(curve["val_iou"])[:, k]))
        print(f"| {step} | " + " | ".join(cells) + " |")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for variant, curve in curves.items():
        ious = np.array(curve["val_iou"])
        (line,) = ax.plot(curve["steps"], ious.mean(axis=0), "o-", ms=3, label=variant)
        ax.fill_between(curve["steps"], ious.min(axis=0), ious.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="training step", ylabel="validation IoU (best t)", ylim=(0, 1),
           title=f"learning curves, {args.track} track, profile {profile.name}, {len(seeds)} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / f"{stem}.png", dpi=110)
    print(f"wrote {write} and {run_dir / f'{stem}.png'}")


if __name__ == "__main__":
    main()
