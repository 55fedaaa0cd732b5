"""Where each method's weak masks lie: on the lesion, on the kidney around it, or elsewhere.

    python benchmarks/mask_location.py --run-dir runs/quick                       # after `make reproduce`
    python benchmarks/mask_location.py --run-dir runs/quick --methods coin rise --seeds 0
    python benchmarks/mask_location.py --run-dir runs/quick --methods coin --case case_00224

Eq. (8) counts every false-positive pixel alike. On the tumour track it matters where they
are: a counterfactual that flips f by erasing the kidney's enhancement marks the kidney, one
that follows f's shortcuts elsewhere marks the bowel or the vessels. For each seed of a
finished run this remakes each method's test masks at the threshold its results file chose on
validation (counterfactual methods: x_cf generated again, Sec. 5's post-processing; saliency
methods: the maps notebook 05 kept, no post-processing, as scored) and splits the predicted
pixels of the abnormal test slices by place (:func:`coinlib.metrics.mask_location`). For the
counterfactual methods it adds the mean signed change x_cf - x (on [-1, 1]) on the lesion
and on the kidney outside it (negative is darker), and f on those slices: how many it calls
abnormal, its mean f(x) and f(x_cf). ``--case`` keeps one test scan's slices. Prints mean
[min, max] over seeds; writes
``mask_location_<track>.json`` under ``--out``. A benchmark, not a test: numbers depend on
the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def locate(run_dir: str, track: str, method: str, seed: int, overrides: dict | None = None,
           case: str | None = None) -> dict:
    """``mask_location`` of ``method``'s seed-``seed`` test masks (and, for a GAN, its mean change)."""
    import numpy as np

    from coinlib.config import track_profile
    from coinlib.data import evaluation_set
    from coinlib.evaluate import abnormal_maps, config_mask
    from coinlib.metrics import mask_location
    from coinlib.prepared import open_prepared
    from coinlib.pipeline import (abnormal_counterfactuals, load_results, load_saliency_maps, prepare_track,
                                  track_settings)
    from coinlib.provenance import run_profile
    from coinlib.variants import VARIANTS

    threshold = load_results(run_dir, track, method, seed=seed)["metrics"]["threshold_from_val"]
    profile = run_profile(run_dir, overrides)
    prepared = prepare_track(profile, run_dir, track, "phantom", progress=False)
    scan_of_row = [row["scan_id"] for row in open_prepared(prepared).index]

    def kept(rows) -> np.ndarray:
        return np.asarray([case is None or scan_of_row[int(row)] == case for row in rows], dtype=bool)

    if method in VARIANTS:
        arrays, eval_config = abnormal_counterfactuals(run_dir, track, method, seed, splits=("test",),
                                                       prepared=prepared, overrides=overrides)
        test = {key: value[kept(arrays["test"]["index"])] for key, value in arrays["test"].items()}
        maps, lesion = abnormal_maps(test)
        kidney = test["kidney_mask"]
        masks = config_mask(maps, threshold, eval_config)
        change = test["x_cf"] - test["x"]
        classifier_threshold = track_settings(profile, track)[0].threshold
        extra = {"change_on_lesion": float(change[lesion].mean()),
                 "change_on_kidney": float(change[kidney & ~lesion].mean()),
                 "f_abnormal": int((test["p_abnormal"] >= classifier_threshold).sum()),
                 "f_x": float(test["p_abnormal"].mean()), "f_x_cf": float(test["p_abnormal_cf"].mean())}
    else:
        eval_config = track_profile(profile, track).eval
        saved = load_saliency_maps(run_dir, track, method, seed)
        saved = {row: m for row, m, keep in zip(saved, saved.values(), kept(saved)) if keep}
        dataset = evaluation_set(prepared, "test", track_settings(profile, track)[1])
        position = {int(row): i for i, row in enumerate(dataset.rows)}
        items = [dataset[position[row]] for row in saved]
        lesion = np.stack([item["lesion_mask"][0].numpy().astype(bool) for item in items])
        kidney = np.stack([item["kidney_mask"][0].numpy().astype(bool) for item in items])
        masks = config_mask(np.stack(list(saved.values())), threshold, eval_config, postprocess=False)
        extra = {}
    where = mask_location(masks, lesion, kidney | lesion)
    hit = where["recall"] * where["lesion"]
    # the IoU of these masks must be the one the results file reports, or they are other masks
    extra["iou"] = hit / (where["predicted"] + where["lesion"] - hit)
    if case is None:  # a case's IoU is its own, not the results file's
        extra["iou_reported"] = load_results(run_dir, track, method, seed=seed)["metrics"]["iou"]["iou"]
    return {"method": method, "seed": seed, "threshold": threshold, "slices": int(len(masks)), **where, **extra}


def main(argv: list[str] | None = None) -> None:
    from coinlib.cli import parse_overrides
    from coinlib.files import write_json
    from coinlib.jobs import Job, run_jobs
    from coinlib.tables import seed_range

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quick"), help="a finished run")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="tumour")
    parser.add_argument("--methods", nargs="+", default=["coin", "singla", "rise"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="the settings the run folder was made with beyond its profile (e.g. a config_effects run)")
    parser.add_argument("--case", default=None, metavar="SCAN", help="only this test scan's slices (e.g. case_00224)")
    parser.add_argument("--out", type=Path, default=None, help="default: the run folder")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides) or None
    if not (args.run_dir / "run.json").is_file():
        parser.error(f"--run-dir {args.run_dir} holds no run.json: run `make reproduce` (or `coin run`) first")

    jobs = [Job(f"{args.track} {method} seed {seed}", locate, (str(args.run_dir), args.track, method, seed, overrides, args.case))
            for method in args.methods for seed in args.seeds]
    results = run_jobs(jobs, desc="mask locations")
    name = f"mask_location_{args.track}{'_' + args.case if args.case else ''}.json"
    write_json((args.out or args.run_dir) / name, {"track": args.track, "case": args.case, "results": results})

    for r in results:
        if "iou_reported" in r and abs(r["iou"] - r["iou_reported"]) > 1e-3:
            raise SystemExit(f"{r['method']} seed {r['seed']}: these masks give IoU {r['iou']:.4f}, its results file "
                             f"{r['iou_reported']:.4f}; the run's settings or files changed since it was scored")
    if not results[0]["slices"]:
        raise SystemExit(f"--case {args.case}: no abnormal test slice of that scan")
    columns = ("iou", "on_lesion", "on_organ", "elsewhere", "recall", "change_on_lesion", "change_on_kidney",
               "f_abnormal", "f_x", "f_x_cf")
    print(f"{args.track} track, abnormal test slices{' of ' + args.case if args.case else ''}, masks at the validation-chosen threshold; share of the "
          f"predicted pixels by place; mean [min, max] over seeds {args.seeds}")
    print("| method | slices | IoU | on the lesion | on the kidney around it | elsewhere | lesion recall | "
          "x_cf - x on the lesion | x_cf - x on the kidney | f calls abnormal | mean f(x) | mean f(x_cf) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        mine = [r for r in results if r["method"] == method]
        cells = [seed_range([r[c] for r in mine]) if c in mine[0] else "-" for c in columns]
        print(f"| {method} | {mine[0]['slices']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
