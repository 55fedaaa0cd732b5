"""How much of RISE's IoU spread is its mask set: one set for every slice, or one per slice.

    python benchmarks/rise_mask_sets.py --run-dir runs/quick                 # after `make reproduce`
    python benchmarks/rise_mask_sets.py --run-dir runs/quick --classifier-seeds 0 1 2 --mask-seeds 0 1

RISE (paper Sec. 5, [29]) estimates each pixel's saliency from N random masks. The RISE code
draws one set of N masks and uses it for every image (``SaliencyConfig.rise_mask_sets =
"shared"``); this project's default draws an independent set per slice (``"per_image"``,
seeded by the slice's prepared row). Both estimate the same expectation per slice; with few
masks (``quick``: 250) a shared set gives every slice of the split the same Monte Carlo error.
For each classifier seed of a finished run (its trained f, its prepared data) and each mask
seed, this scores RISE on every abnormal validation and test slice of ``--track`` both ways,
with the protocol of Table 1 (threshold chosen on validation, pooled test IoU), and prints
a Markdown table of the IoU per mask seed and its spread over mask seeds. Writes
``rise_mask_sets.json`` under ``--out``. A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np


def score_rise(run_dir: str, prepared: str, profile_name: str, track: str, classifier_seed: int,
               mask_sets: str, mask_seed: int) -> dict:
    """Table 1's RISE IoU of classifier seed ``classifier_seed`` with the given mask sets and seed."""
    import torch

    from coinlib.classifier_training import load_classifier
    from coinlib.config import get_profile, with_seed
    from coinlib.data import evaluation_set
    from coinlib.evaluate import evaluate_saliency_method
    from coinlib.pipeline import RunPaths, track_settings

    profile = with_seed(get_profile(profile_name), classifier_seed)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(RunPaths(run_dir, classifier_seed).classifier(track), torch.device("cpu"))
    saliency = replace(profile.saliency, seed=mask_seed, rise_mask_sets=mask_sets)
    scored = evaluate_saliency_method("rise", classifier, saliency, profile.eval,
                                      evaluation_set(prepared, "test", anomaly), evaluation_set(prepared, "val", anomaly))
    metrics = scored["metrics"]
    return {"classifier_seed": classifier_seed, "mask_sets": mask_sets, "mask_seed": mask_seed,
            "iou": metrics["iou"]["iou"], "threshold": metrics["threshold_from_val"],
            "slices": {"test": metrics["subset"]["test"], "val": metrics["subset"]["val"]},
            "seconds_per_slice": scored["cost"]["seconds_per_image"]}


def main(argv: list[str] | None = None) -> None:
    from coinlib.config import get_profile
    from coinlib.files import write_json
    from coinlib.jobs import Job, run_jobs
    from coinlib.pipeline import prepare_track
    from coinlib.provenance import recorded_profile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quick"), help="a finished reproduce run")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="synthetic")
    parser.add_argument("--classifier-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--mask-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--mask-sets", nargs="+", default=["shared", "per_image"], choices=["shared", "per_image"])
    parser.add_argument("--out", type=Path, default=None, help="default: the run folder")
    args = parser.parse_args(argv)

    profile_name = recorded_profile(args.run_dir)
    # the embedded phantom's prepared slices of the run (reused, as the notebooks made them)
    prepared = str(prepare_track(get_profile(profile_name), args.run_dir, args.track, "phantom", progress=False))
    plan = [(c, kind, m) for c in args.classifier_seeds for kind in args.mask_sets for m in args.mask_seeds]
    jobs = [Job(f"f seed {c}, {kind} masks, seed {m}", score_rise,
                (str(args.run_dir), prepared, profile_name, args.track, c, kind, m))
            for c, kind, m in plan]
    rows = run_jobs(jobs, desc="RISE mask sets")
    out = args.out or args.run_dir
    write_json(out / "rise_mask_sets.json", {"run_dir": str(args.run_dir), "track": args.track, "rows": rows})

    slices = rows[0]["slices"]
    print(f"RISE IoU, {args.track} track, profile {profile_name}, {slices['test']} test and {slices['val']} val "
          f"abnormal slices; columns: mask seeds")
    print("| f seed | mask sets | " + " | ".join(str(m) for m in args.mask_seeds) + " | mean ± sd |")
    print("|---|---|" + "---|" * (len(args.mask_seeds) + 1))
    for c in args.classifier_seeds:
        for kind in args.mask_sets:
            ious = np.array([r["iou"] for r in rows if r["classifier_seed"] == c and r["mask_sets"] == kind])
            cells = " | ".join(f"{v:.3f}" for v in ious)
            print(f"| {c} | {kind} | {cells} | {ious.mean():.3f} ± {ious.std(ddof=1) if len(ious) > 1 else 0:.3f} |")
    print(f"wrote {out / 'rise_mask_sets.json'}")


if __name__ == "__main__":
    main()
