"""The device time a profile's ``make reproduce`` needs, from its settings and throughputs.

    python benchmarks/profile_budget.py --profile paper                        # the authors' implementation's H200 figure
    python benchmarks/profile_budget.py --profile paper --gan-img-per-s 800    # your train_step.py figure
    python benchmarks/profile_budget.py --profile quick --gan-img-per-s 16 --tflops 0.1 --workers 2

Counts the work notebooks 00-09 do with the profile's settings:

- GAN images: COIN and Singla* on both tracks (Table 1) and every Table 2 / Table 3 row
  (``Profile.ablation``; when that budget is Table 1's, the rows reuse its COIN and Singla*),
  each on every seed of ``Profile.seeds`` (the Table 3 rows on ``ablation.table3_seeds``);
- classifier training images (the early-stopping maximum) and saliency forward passes on the
  abnormal validation and test slices (RISE: N masks; ScoreCAM: 1 + channels; the CAMs: a
  forward and a backward), turned into FLOPs with torch's counter on one image;

and turns them into time: GAN steps at ``--gan-img-per-s`` (measure it with
``benchmarks/train_step.py``; the default is the plain compiled step on one H200, as measured for the authors' implementation
"Speed"), classifier work at ``--tflops`` achieved. Slice counts come from prepared folders
when given, else from the rates of the phantom. Data preparation (CPU) is not counted.
``--workers``: jobs run side by side (``coinlib.jobs``; on 2 CPU cores, 2 one-thread jobs), so
each throughput is one job's and the total is divided by the workers. An estimate for sizing a
profile, not a measurement.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from coinlib.classifier import build_classifier, target_layer_channels
from coinlib.config import get_profile, table3_profile
from coinlib.pipeline import track_settings
from coinlib.prepared import open_prepared
from coinlib.variants import (
    TABLE1_VARIANTS,
    TABLE2_VARIANTS,
    TABLE3_VARIANTS,
    ablation_budget,
)

# measured: a plain modern PyTorch step, torch.compile, batch 16, one H200
DEFAULT_GAN_IMG_PER_S = 492.0
# slices per scan and abnormal share, measured on the phantom (quick run: 3118 slices from 40
# TotalSegmentator-layout subjects; 1753 from 40 KiTS-layout cases, 266 with tumour)
PHANTOM_SLICES_PER_SCAN = {"synthetic": 78.0, "tumour": 43.8}
TUMOUR_SHARE = 321 / 1746  # any tumour pixel; the authors' area rule keeps fewer (give --tumour-data)


def forward_flops(arch_config, image_size: int) -> float:
    """FLOPs of one classifier forward pass on one image (torch's counter)."""
    model = build_classifier(arch_config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, image_size, image_size))
    return float(counter.get_total_flops())


def slice_counts(profile, track: str, prepared: str | None) -> dict[str, float]:
    """Training slices and abnormal validation + test slices of a track."""
    if prepared:
        splits = {row["split"]: row for row in open_prepared(prepared).split_summary()}
        held_out = [splits["val"], splits["test"]]
        if track == "tumour":
            abnormal = sum(row["lesion_slices"] for row in held_out)
        else:
            abnormal = sum(row["slices"] for row in held_out) * profile.anomaly.probability
        return {"train": splits["train"]["slices"], "abnormal_held_out": abnormal}
    scans = profile.phantom.subjects if track == "synthetic" else profile.phantom.kits_cases
    slices = scans * PHANTOM_SLICES_PER_SCAN[track]
    held_out = slices * (profile.data.test_fraction + (1 - profile.data.test_fraction) * profile.data.val_fraction)
    share = profile.anomaly.probability if track == "synthetic" else TUMOUR_SHARE
    return {"train": slices - held_out, "abnormal_held_out": held_out * share}


def saliency_passes(profile, track: str, config, abnormal: float) -> float:
    """Forward-pass equivalents of every saliency method on a track (a backward counts 2)."""
    saliency = profile.saliency
    per_image = {"gradcam": 3, "layercam": 3, "scorecam": 1 + target_layer_channels(config),
                 "rise": saliency.rise_masks}
    images = abnormal if saliency.max_images is None else min(abnormal, 2 * saliency.max_images)
    return images * sum(per_image[m] for m in saliency.methods_for(track))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--gan-img-per-s", type=float, default=DEFAULT_GAN_IMG_PER_S,
                        help="training-step throughput at the profile's batch (benchmarks/train_step.py)")
    parser.add_argument("--tflops", type=float, default=200.0,
                        help="achieved TFLOP/s of classifier training and inference (default: a quarter "
                             "of an H200's bf16 limit)")
    parser.add_argument("--synthetic-data", default=None, help="a prepared folder (else phantom rates)")
    parser.add_argument("--tumour-data", default=None, help="a prepared folder (else phantom rates)")
    parser.add_argument("--workers", type=int, default=1, help="jobs side by side (CPU: one per core)")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    size = profile.data.image_size

    rows = []  # (what, amount, seconds)
    seeds, table3_seeds = len(profile.seeds), len(table3_profile(profile).seeds)
    shorter = ablation_budget(profile)
    main_images = profile.train.steps * profile.train.batch_size
    rows.append((f"Table 1 GANs (COIN, Singla*; 2 tracks; {seeds} seeds)", f"{4 * seeds} x {main_images:,} img",
                 4 * seeds * main_images / args.gan_img_per_s))
    row_images = main_images if shorter is None else shorter.train.steps * shorter.train.batch_size
    for table, variants, count in (("Table 2", TABLE2_VARIANTS, seeds), ("Table 3", TABLE3_VARIANTS, table3_seeds)):
        trained = [v for v in variants if shorter is not None or v not in TABLE1_VARIANTS]
        rows.append((f"{table} rows ({len(trained)} GANs x {count} seeds)", f"{len(trained) * count} x {row_images:,} img",
                     len(trained) * count * row_images / args.gan_img_per_s))
    for track, prepared in (("synthetic", args.synthetic_data), ("tumour", args.tumour_data)):
        config, _ = track_settings(profile, track)
        flops = forward_flops(config, size)
        counts = slice_counts(profile, track, prepared)
        per_epoch = (config.steps_per_epoch * config.batch_size if config.steps_per_epoch else counts["train"])
        train_images = config.max_epochs * per_epoch
        rows.append((f"classifier {config.arch} ({track}, {seeds} seeds), at most", f"{seeds * train_images:,.0f} img",
                     3 * seeds * flops * train_images / (args.tflops * 1e12)))
        passes = seeds * saliency_passes(profile, track, config, counts["abnormal_held_out"])
        rows.append((f"saliency ({track}, {counts['abnormal_held_out']:.0f} abnormal val+test slices, {seeds} seeds)",
                     f"{passes:,.0f} passes", flops * passes / (args.tflops * 1e12)))
    rows = [(what, amount, seconds / max(1, args.workers)) for what, amount, seconds in rows]

    print(f"profile {profile.name!r}, {size} px; GAN {args.gan_img_per_s:g} img/s; classifier {args.tflops:g} TFLOP/s; "
          f"{args.workers} worker(s)")
    width = max(len(r[0]) for r in rows)
    for what, amount, seconds in rows:
        print(f"  {what:<{width}}  {amount:>22}  {seconds / 60:8.1f} min")
    total = sum(r[2] for r in rows)
    print(f"  {'total (data preparation not counted)':<{width}}  {'':>22}  {total / 60:8.1f} min")


if __name__ == "__main__":
    main()
