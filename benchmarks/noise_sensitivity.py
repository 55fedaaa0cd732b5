"""How much f's score moves when a slice is noisier: the tumour track's f with and without noise jitter.

    python benchmarks/noise_sensitivity.py --run-dirs runs/quick                      # after `make reproduce`
    python benchmarks/noise_sensitivity.py --run-dirs runs/quick runs/jitter0 --sigmas 0 0.05 0.1 0.2

The phantom draws each scan's noise (``noise_hu``), as scanners and body sizes do; at 128 px a
tumour's heterogeneity is also texture, so a classifier trained from scratch on few scans can
call a noisy normal slice abnormal. For each run folder and each classifier seed, this adds
white Gaussian noise of a fixed std (``--sigmas``, on the [-1, 1] scale of the track's
intensity window; ``classifier_training.add_body_noise``, seeded by the slice's prepared row)
to every test slice of ``--track`` and prints, per noise level, the mean f(x) on normal and on
abnormal slices and the test AUC. A second run folder trained with another
``tumour_classifier.noise_jitter`` (e.g. ``coin train-classifier --track tumour --seed S --run-dir
runs/jitter0 --set tumour_classifier.noise_jitter=0`` on a copy of ``runs/quick/data``) gives the
comparison. Writes ``noise_sensitivity.json`` under ``--out``. A benchmark, not a test: numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


class NoisySlices(torch.utils.data.Dataset):
    """The items of ``dataset`` with noise of std ``sigma`` on the body, seeded by the prepared row."""

    def __init__(self, dataset: torch.utils.data.Dataset, sigma: float) -> None:
        self.dataset, self.sigma = dataset, float(sigma)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        from coinlib.classifier_training import add_body_noise

        item = dict(self.dataset[i])
        generator = torch.Generator().manual_seed(int(item["index"]))
        item["image"] = add_body_noise(item["image"][None], self.sigma, generator)[0]
        return item


def score_noise(run_dir: str, track: str, classifier_seed: int, sigmas: list[float]) -> dict:
    """Mean f(x) on normal and abnormal test slices and the test AUC at each added noise std."""
    from coinlib.classifier_training import load_classifier, predict, roc_auc
    from coinlib.config import with_seed
    from coinlib.data import evaluation_set
    from coinlib.files import read_json
    from coinlib.pipeline import RunPaths, prepare_track, track_settings
    from coinlib.provenance import run_profile

    model_dir = RunPaths(run_dir, classifier_seed).classifier(track)
    # the checkpoint's own noise jitter: a folder made with --set ...noise_jitter=V differs from the
    # named profile there (a checkpoint from before the field had none)
    noise_jitter = read_json(model_dir / "classifier.json")["classifier"].get("noise_jitter", 0.0)
    section = "tumour_classifier" if track == "tumour" else "classifier"
    profile = with_seed(run_profile(run_dir, {section: {"noise_jitter": noise_jitter}}), classifier_seed)
    _, anomaly = track_settings(profile, track)
    prepared = prepare_track(profile, run_dir, track, "phantom", progress=False)
    test = evaluation_set(prepared, "test", anomaly)
    classifier = load_classifier(model_dir, torch.device("cpu"))
    rows = []
    for sigma in sigmas:
        scores = predict(classifier, NoisySlices(test, sigma), batch_size=profile.eval.batch_size)
        p, label = scores["p_abnormal"], scores["label"].astype(bool)
        rows.append({"sigma": sigma, "p_normal": float(p[~label].mean()), "p_abnormal": float(p[label].mean()),
                     "auc": roc_auc(label, p)})
    return {"run_dir": run_dir, "classifier_seed": classifier_seed, "noise_jitter": noise_jitter,
            "normal_slices": int((~label).sum()), "abnormal_slices": int(label.sum()), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    from coinlib.files import write_json
    from coinlib.jobs import Job, run_jobs
    from coinlib.tables import seed_range

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dirs", type=Path, nargs="+", default=[Path("runs/quick")],
                        help="finished runs whose classifiers to score (each with its own data)")
    parser.add_argument("--track", choices=["synthetic", "tumour"], default="tumour")
    parser.add_argument("--classifier-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--out", type=Path, default=None, help="default: the first run folder")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.sigmas):
        parser.error(f"--sigmas must be >= 0, got {args.sigmas}")

    jobs = [Job(f"{run_dir} f seed {seed}", score_noise, (str(run_dir), args.track, seed, args.sigmas))
            for run_dir in args.run_dirs for seed in args.classifier_seeds]
    results = run_jobs(jobs, desc="noise sensitivity")
    write_json((args.out or args.run_dirs[0]) / "noise_sensitivity.json", {"track": args.track, "results": results})

    first = results[0]
    print(f"f on the {args.track} track's test slices ({first['normal_slices']} normal, {first['abnormal_slices']} "
          f"abnormal) with added noise of std sigma ([-1, 1] scale); mean over classifier seeds "
          f"{args.classifier_seeds} [min, max]")
    print("| run | noise_jitter | sigma | mean f(x), normal | mean f(x), abnormal | test AUC |")
    print("|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        mine = [r for r in results if r["run_dir"] == str(run_dir)]
        for k, sigma in enumerate(args.sigmas):
            cells = []
            for key in ("p_normal", "p_abnormal", "auc"):
                cells.append(seed_range([r["rows"][k][key] for r in mine]))
            print(f"| {run_dir} | {mine[0]['noise_jitter']} | {sigma} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
