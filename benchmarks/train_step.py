"""Training-step throughput of the counterfactual GAN (images per second).

    python benchmarks/train_step.py                      # quick profile on this machine's device
    python benchmarks/train_step.py --profile paper --batch-sizes 16 32 64   # on a GPU

Random inputs at the profile's image size, the profile's GAN and classifier, the real
training step (:func:`coinlib.counterfactual.counterfactual_step`) with the generator
updated every ``generator_every`` steps, so the figure is the schedule's average. Prints
images/s, achieved TFLOP/s (from torch's FLOP counter on one D-only and one D+G step)
and, on CUDA, peak memory. A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from coinlib.classifier import build_classifier, freeze
from coinlib.config import get_profile
from coinlib.counterfactual import build_optimizers, counterfactual_step
from coinlib.gan import build_gan
from coinlib.runtime import hardware_summary, pick_device


def step_flops(step, batch) -> float:
    """FLOPs of one call of ``step(batch)``, counted by torch (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def measure(profile_name: str, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    profile = get_profile(profile_name)
    torch.manual_seed(0)
    generator, discriminator = build_gan(profile.gan)
    generator.to(device)
    discriminator.to(device)
    classifier = freeze(build_classifier(profile.classifier)).to(device)
    for module in (generator, discriminator, classifier):  # as train_counterfactual does
        module.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizers = build_optimizers(generator, discriminator, profile.train, device)
    size = profile.data.image_size
    batch = {
        "image": torch.rand(batch_size, 1, size, size, device=device) * 2 - 1,
        "kidney_mask": (torch.rand(batch_size, 1, size, size, device=device) > 0.9).float(),
    }

    def step(i: int):
        return counterfactual_step(generator, discriminator, classifier, optimizers, batch, profile.gan,
                                   profile.train, i % profile.train.generator_every == 0, device)

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    k = profile.train.generator_every
    flops_per_step = (step_flops(lambda b: step(0), batch) + (k - 1) * step_flops(lambda b: step(1), batch)) / k
    result = {
        "profile": profile_name,
        "image_size": size,
        "batch": batch_size,
        "img_per_s": batch_size * steps / seconds,
        "tflops": flops_per_step * steps / seconds / 1e12,
        "gflop_per_image": flops_per_step / batch_size / 1e9,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="default: quick on the CPU, paper on CUDA")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (a multiple of generator_every)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    profile = args.profile or ("paper" if device.type == "cuda" else "quick")
    batch_sizes = args.batch_sizes or ([16, 32, 64] if device.type == "cuda" else [16])
    steps = args.steps or (50 if device.type == "cuda" else 10)
    print(f"hardware: {hardware_summary(device)}")
    print(f"{'profile':>8} {'size':>5} {'batch':>5} {'img/s':>9} {'TFLOP/s':>8} {'GFLOP/img':>10} {'peak GiB':>9}")
    for batch_size in batch_sizes:
        r = measure(profile, batch_size, steps, args.warmup, device)
        print(f"{r['profile']:>8} {r['image_size']:>5} {r['batch']:>5} {r['img_per_s']:>9.1f} {r['tflops']:>8.3f} "
              f"{r['gflop_per_image']:>10.1f} {r.get('peak_memory_gib', float('nan')):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
