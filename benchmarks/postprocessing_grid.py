"""Would other post-processing radii lift the counterfactual masks? A grid over Sec. 5's clean-up.

    python benchmarks/postprocessing_grid.py --run-dir runs/quick                 # after `make reproduce`
    python benchmarks/postprocessing_grid.py --run-dir runs/quick --track synthetic --closing 0 2 4

Sec. 5 cleans each thresholded |x - x_cf| with a closing and an opening (disk radius 2 in
every profile, ``EvalConfig.closing_radius`` / ``opening_radius``) and keeps the largest
component. On the tumour track COIN's masks look like rings (the rim removed, the necrotic
centre kept), so a wider closing might join the arcs. For each seed and each counterfactual
variant of a finished run, this generates the validation and test counterfactuals once, then
scores every (closing, opening) radius pair and the authors' ``morphology="implementation"``
by the protocol of Sec. 5 (threshold chosen on validation, test IoU at it;
:func:`coinlib.evaluate.score_maps`). It prints per setting the validation IoU (what a
validation-chosen radius would pick by) and the test IoU, each as mean [min, max] over seeds.
Writes ``postprocessing_grid_<track>.json`` under ``--out``. A benchmark, not a test: numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

IMPLEMENTATION = "implementation"


def settings_grid(closing: list[int], opening: list[int]) -> list[dict]:
    """Every (closing, opening) pair of the paper's order, then the authors' code's order."""
    grid = [{"morphology": "paper", "closing_radius": c, "opening_radius": o} for c in closing for o in opening]
    return grid + [{"morphology": IMPLEMENTATION}]


def label(setting: dict) -> str:
    if setting["morphology"] == IMPLEMENTATION:
        return "authors' code (open, then close, 3x3)"
    return f"close r={setting['closing_radius']}, open r={setting['opening_radius']}"


def score_grid(run_dir: str, track: str, variant: str, seed: int, grid: list[dict]) -> dict:
    """Validation and test IoU of ``variant``'s seed-``seed`` model under each post-processing setting."""
    from coinlib.evaluate import abnormal_maps, score_maps
    from coinlib.pipeline import abnormal_counterfactuals

    arrays, eval_config = abnormal_counterfactuals(run_dir, track, variant, seed)
    maps = {split: abnormal_maps(values) for split, values in arrays.items()}
    rows = []
    for setting in grid:
        metrics = score_maps(maps["test"], replace(eval_config, **setting), maps["val"])["metrics"]
        rows.append({**setting, "val_iou": metrics["val_iou_at_it"], "test_iou": metrics["iou"]["iou"],
                     "threshold": metrics["threshold_from_val"]})
    return {"variant": variant, "seed": seed, "abnormal_test_slices": int(len(maps["test"][0])),
            "abnormal_val_slices": int(len(maps["val"][0])), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    from coinlib.files import write_json
    from coinlib.jobs import Job, run_jobs
    from coinlib.tables import seed_range

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quick"), help="a finished run")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="tumour")
    parser.add_argument("--variants", nargs="+", default=["coin", "singla"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--closing", type=int, nargs="+", default=[0, 2, 4, 6, 8], help="closing radii (px)")
    parser.add_argument("--opening", type=int, nargs="+", default=[2], help="opening radii (px)")
    parser.add_argument("--out", type=Path, default=None, help="default: the run folder")
    args = parser.parse_args(argv)
    for name in ("closing", "opening"):
        if any(r < 0 for r in getattr(args, name)):
            parser.error(f"--{name} radii must be >= 0, got {getattr(args, name)}")
    if not (args.run_dir / "run.json").is_file():
        parser.error(f"--run-dir {args.run_dir} holds no run.json: run `make reproduce` (or `coin run`) first")

    grid = settings_grid(args.closing, args.opening)
    jobs = [Job(f"{args.track} {variant} seed {seed}", score_grid, (str(args.run_dir), args.track, variant, seed, grid))
            for variant in args.variants for seed in args.seeds]
    results = run_jobs(jobs, desc="post-processing grid")
    write_json((args.out or args.run_dir) / f"postprocessing_grid_{args.track}.json",
               {"track": args.track, "grid": grid, "results": results})

    first = results[0]
    print(f"{args.track} track, {first['abnormal_val_slices']} abnormal validation / {first['abnormal_test_slices']} "
          f"abnormal test slices; threshold chosen on validation per setting; mean [min, max] over seeds {args.seeds}")
    print("| variant | post-processing | validation IoU | test IoU |")
    print("|---|---|---|---|")
    for variant in args.variants:
        mine = [r for r in results if r["variant"] == variant]
        for k, setting in enumerate(grid):
            val = [r["rows"][k]["val_iou"] for r in mine]
            test = [r["rows"][k]["test_iou"] for r in mine]
            print(f"| {variant} | {label(setting)} | {seed_range(val)} | {seed_range(test)} |")


if __name__ == "__main__":
    main()
