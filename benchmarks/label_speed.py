"""Labelling speed: slices per second for COIN vs RISE and Score-CAM (paper Sec. 5).

    python benchmarks/label_speed.py                      # quick profile on this machine's device
    python benchmarks/label_speed.py --profile paper      # on a GPU: the paper's sizes, RISE N = 6000

Sec. 5: saliency methods "do not have static inference times, requiring multiple forward
passes", while COIN "necessitates only a single forward pass". On random slices at the
profile's image size, with the profile's (untrained) classifier and generator:

- ``COIN f + G``: one classifier and one generator forward per slice (what a GPU does);
- ``COIN label``: :meth:`coinlib.label.LabelModel.label_slices`, the path ``coin label`` runs,
  with every slice called abnormal (the most work): f, G, then |x - x_cf|, threshold and the
  Sec. 5 post-processing on the CPU;
- ``RISE``, ``ScoreCAM``: :func:`coinlib.saliency.attribute` on the same classifier.

RISE costs N forward passes per slice. On the CPU, N defaults to a few hundred (the paper's
6000 would take minutes a slice) and the last column extrapolates to N = 6000 by the
forward-pass count, which is how its cost scales; it is labelled as such. A benchmark, not a
test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from coinlib.classifier import build_classifier, freeze
from coinlib.config import get_profile
from coinlib.gan import build_gan
from coinlib.label import LabelModel
from coinlib.runtime import autocast, hardware_summary, pick_device
from coinlib.saliency import RISEConfig, attribute, forward_passes

PAPER_RISE_MASKS = RISEConfig().n_masks


def timed(run: Callable[[], object], repeats: int, device: torch.device, warmup: bool) -> float:
    """Seconds per call of ``run``, after one untimed warm-up call when ``warmup`` (the
    saliency methods need none: one call is hundreds of forward passes)."""
    if warmup:
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()  # the one host sync: the end of the timed calls
    return (time.perf_counter() - start) / repeats


def build_models(profile_name: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    profile = get_profile(profile_name)
    torch.manual_seed(0)
    classifier = freeze(build_classifier(profile.classifier)).to(device)
    generator, _ = build_gan(profile.gan)
    generator = generator.to(device).eval()
    if device.type == "cuda":  # as coin label runs them
        classifier.to(memory_format=torch.channels_last)
        generator.to(memory_format=torch.channels_last)
    return classifier, generator, profile.data.image_size


def measure(profile_name: str, *, batch_size: int, saliency_batch: int, rise_masks: int, repeats: int,
            device: torch.device) -> list[dict]:
    """One row per method: slices per call, forward passes per slice, seconds, slices/s."""
    classifier, generator, size = build_models(profile_name, device)
    eval_config = get_profile(profile_name).eval
    x = torch.rand(batch_size, 1, size, size, device=device) * 2 - 1
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    x_saliency = x[:saliency_batch].contiguous()
    labeller = LabelModel(
        classifier=classifier, generator=generator, image_size=size, p_low=-1000.0, p_high=1000.0,
        classifier_threshold=0.0, mask_threshold=eval_config.threshold, threshold_source="benchmark",
        closing_radius=eval_config.closing_radius, opening_radius=eval_config.opening_radius,
        morphology=eval_config.morphology,
        device=device, settings={},
    )

    @torch.inference_mode()
    def coin_forward():
        inpaint = torch.zeros(batch_size, dtype=torch.long, device=device)
        with autocast(device):
            p_abnormal = torch.sigmoid(classifier(x).float())
        return p_abnormal, generator(x, inpaint)  # fp32, as coin label computes it

    # (method, slices per call, forward passes per slice, call, timed calls, warm-up, RISE N to extrapolate to)
    runs = [
        ("COIN f + G", batch_size, 2, coin_forward, repeats, True, None),
        ("COIN label", batch_size, 2, lambda: labeller.label_slices(x), repeats, True, None),
        ("ScoreCAM", saliency_batch, forward_passes("scorecam", classifier),
         lambda: attribute("scorecam", classifier, x_saliency), 1, False, None),
        (f"RISE N={rise_masks}", saliency_batch, rise_masks,
         lambda: attribute("rise", classifier, x_saliency, n_masks=rise_masks), 1, False, PAPER_RISE_MASKS),
    ]
    rows = []
    for name, slices, passes, run, calls, warmup, scale_to in runs:
        rate = slices / timed(run, calls, device, warmup)
        rows.append({
            "method": name, "slices": slices, "forward_per_slice": passes, "seconds": slices / rate,
            "slices_per_s": rate, "at_paper_n": rate * passes / scale_to if scale_to else None,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="default: quick on the CPU, paper on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="COIN slices per batch (CPU 16, CUDA 64)")
    parser.add_argument("--saliency-batch", type=int, default=None, help="slices per saliency call (CPU 1, CUDA 8)")
    parser.add_argument("--rise-masks", type=int, default=None, help=f"RISE N (CPU 200, CUDA {PAPER_RISE_MASKS})")
    parser.add_argument("--repeats", type=int, default=None, help="timed COIN batches (CPU 3, CUDA 20)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    profile = args.profile or ("paper" if cuda else "quick")
    rows = measure(
        profile,
        batch_size=args.batch_size or (64 if cuda else 16),
        saliency_batch=args.saliency_batch or (8 if cuda else 1),
        rise_masks=args.rise_masks or (PAPER_RISE_MASKS if cuda else 200),
        repeats=args.repeats or (20 if cuda else 3),
        device=device,
    )
    print(f"hardware: {hardware_summary(device)}")
    print(f"profile {profile}, image size {get_profile(profile).data.image_size}, untrained weights, random slices")
    print(f"{'method':<14} {'slices':>6} {'fwd/slice':>9} {'s/call':>8} {'slices/s':>9} "
          f"{f'slices/s at N={PAPER_RISE_MASKS}':>22}")
    for r in rows:
        extrapolated = f"{r['at_paper_n']:.4g} (extrapolated)" if r["at_paper_n"] is not None else "-"
        print(f"{r['method']:<14} {r['slices']:>6} {r['forward_per_slice']:>9} {r['seconds']:>8.3f} "
              f"{r['slices_per_s']:>9.4g} {extrapolated:>22}", flush=True)


if __name__ == "__main__":
    main()
