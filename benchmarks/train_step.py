"""Training-step throughput of the counterfactual GAN (images per second).

    python benchmarks/train_step.py                              # quick profile on this machine's device
    python benchmarks/train_step.py --profile paper              # batches 16, 32, 64 (on a GPU)
    python benchmarks/train_step.py --profile paper --fast       # the same with torch.compile
    python benchmarks/train_step.py --profile paper --schedule   # also GFLOP per kind of step
    python benchmarks/train_step.py --precision both --batch-sizes 4 16   # CPU: fp32 against bf16 autocast
    python benchmarks/train_step.py --precision both --batch-sizes 4 --jobs 2   # two one-thread jobs side by side

Random inputs at the profile's image size, the profile's GAN and classifier, the real
training step (:func:`coinlib.counterfactual.counterfactual_step`) with the generator
updated every ``generator_every`` steps (paper Sec. 4.3 / implementation: 5), so the figure
is the schedule's average. ``--fast`` is the trainer's fast path
(``CounterfactualConfig.compile``: compiled losses, cuDNN autotuning, fused/foreach Adam);
its compilation happens in the warm-up, whose time is printed. Prints images/s, achieved
TFLOP/s (torch's FLOP counter on one D-only and one D+G step of the plain step), peak
memory on CUDA, and a comparison with the authors' implementation and the bf16 arithmetic
limit. ``--precision`` measures fp32 and/or bf16 autocast (``CounterfactualConfig.precision``,
:func:`coinlib.runtime.precision`; on the CPU bf16 pays only with AVX512-BF16 or AMX-BF16);
``--jobs N`` runs N one-thread measurements at once in worker processes and reports their
sum, the throughput the quick profile's parallel jobs (:mod:`coinlib.jobs`) get. On the CPU the
threads are ``COIN_THREADS`` (default 1, as every job of the pipeline). A benchmark, not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time

import torch
import torch._dynamo

from coinlib import counterfactual
from coinlib.classifier import build_classifier, freeze
from coinlib.config import get_profile
from coinlib.counterfactual import (
    PLAIN,
    build_networks,
    counterfactual_step,
    step_losses,
)
from coinlib.runtime import hardware_summary, pick_device, use_job_threads

# the public implementation measured on one H200, paper configuration, batch 16
AUTHORS_IMG_PER_S = {"fp32": 173.0, "bf16": 195.0, "fp32, batch 64": 206.0}
AUTHORS_GFLOP_PER_IMAGE = {"D+G step": 975.0, "D-only step": 333.0, "1-in-5 average": 461.0}
# dense bf16 matrix throughput, TFLOP/s (H200 about 790; H100 SXM 989)
BF16_PEAK_TFLOPS = {"H200": 790.0, "H100": 989.0}


def bf16_peak(device: torch.device) -> float | None:
    """Dense bf16 TFLOP/s of an H200 or H100 SXM; None for any other device."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:  # 756 dense: not the SXM figure
        return None
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def step_flops(step) -> float:
    """FLOPs of one call of ``step()``, counted by torch (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measure(profile_name: str, batch_size: int, steps: int, warmup: int, device: torch.device,
            fast: bool, precision: str = "auto") -> dict:
    return _measure(profile_name, batch_size, steps, warmup, device, fast, precision) | {"precision": precision}


def _measure(profile_name: str, batch_size: int, steps: int, warmup: int, device: torch.device,
             fast: bool, precision: str) -> dict:
    use_job_threads(device)
    profile = get_profile(profile_name)
    train = dataclasses.replace(profile.train, compile=fast, precision=precision)
    torch._dynamo.reset()  # each batch size compiles afresh, so warm-up times compare
    torch.manual_seed(0)
    classifier = freeze(build_classifier(profile.classifier))
    generator, discriminator, optimizers = build_networks(profile.gan, train, classifier, device)
    losses = step_losses(train, device)
    size = profile.data.image_size
    batch = {
        "image": torch.rand(batch_size, 1, size, size, device=device) * 2 - 1,
        "kidney_mask": (torch.rand(batch_size, 1, size, size, device=device) > 0.9).float(),
    }
    k = train.generator_every

    def step(update_generator: bool, step_losses=losses):
        return counterfactual_step(generator, discriminator, classifier, optimizers, batch, profile.gan,
                                   train, update_generator, device, step_losses)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for i in range(max(warmup, 2)):  # compiles the fast path's graphs
        step(i % k == 0)
    synchronize()
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(i % k == 0)
    synchronize()
    seconds = time.perf_counter() - start
    # FLOPs are the maths, counted on the plain step (the counter does not see compiled kernels)
    flops_g, flops_d = step_flops(lambda: step(True, PLAIN)), step_flops(lambda: step(False, PLAIN))
    flops_per_step = (flops_g + (k - 1) * flops_d) / k
    result = {
        "profile": profile_name,
        "mode": "fast" if fast else "plain",
        "image_size": size,
        "batch": batch_size,
        "generator_every": k,
        "img_per_s": batch_size * steps / seconds,
        "tflops": flops_per_step * steps / seconds / 1e12,
        "gflop_per_image": flops_per_step / batch_size / 1e9,
        "gflop_per_image_g_step": flops_g / batch_size / 1e9,
        "gflop_per_image_d_step": flops_d / batch_size / 1e9,
        "warmup_s": warmup_s,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def measure_jobs(jobs: int, *args) -> dict:
    """:func:`measure` in ``jobs`` worker processes at once: img/s and TFLOP/s summed."""
    if jobs <= 1:
        return measure(*args)
    from coinlib.jobs import Job, run_jobs

    with _env("COIN_JOBS", str(jobs)):
        done = run_jobs([Job(f"measurement {i}", measure, args) for i in range(jobs)], args[4], progress=False)
    return {**done[0], "img_per_s": sum(r["img_per_s"] for r in done), "tflops": sum(r["tflops"] for r in done)}


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name)
        else:
            os.environ[name] = old


def print_comparison(results: list[dict], device: torch.device) -> None:
    """The authors' img/s and the share of the bf16 arithmetic limit, per result."""
    peak = bf16_peak(device)
    authors = ", ".join(f"{name} {value:.0f}" for name, value in AUTHORS_IMG_PER_S.items())
    print(f"\nauthors' implementation, one H200, paper configuration, img/s: {authors}")
    print(f"bf16 arithmetic limit: {f'{peak:.0f} TFLOP/s' if peak else 'n/a (known for H200 and H100 SXM only)'}")
    if any(r["profile"] != "paper" for r in results):
        print("(profiles other than 'paper' are smaller models: the ratios compare unlike work)")
    print(f"{'mode':>6} {'batch':>5} {'img/s':>9} {'x authors bf16':>15} {'x authors fp32':>15} "
          f"{'% of bf16 limit':>16}")
    for r in results:
        share = f"{100 * r['tflops'] / peak:.1f}" if peak else "n/a"
        print(f"{r['mode']:>6} {r['batch']:>5} {r['img_per_s']:>9.1f} "
              f"{r['img_per_s'] / AUTHORS_IMG_PER_S['bf16']:>15.2f} "
              f"{r['img_per_s'] / AUTHORS_IMG_PER_S['fp32']:>15.2f} {share:>16}")


def print_schedule(results: list[dict]) -> None:
    """The schedule (generator every k steps) and the work of each kind of step."""
    print(f"\nschedule: generator updated every {results[0]['generator_every']} steps "
          f"(profile {results[0]['profile']!r}); img/s and TFLOP/s average over it")
    facts = ", ".join(f"{name} {value:.0f}" for name, value in AUTHORS_GFLOP_PER_IMAGE.items())
    print(f"GFLOP per image, paper configuration: {facts}")
    for r in results:
        print(f"  batch {r['batch']:>3} ({r['mode']}): D+G step {r['gflop_per_image_g_step']:.1f}, "
              f"D-only step {r['gflop_per_image_d_step']:.1f}, average {r['gflop_per_image']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="default: quick on the CPU, paper on CUDA")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 16 32 64 for the paper profile, else 16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (a multiple of generator_every)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--fast", "--compile", action="store_true",
                        help="the trainer's fast path (CounterfactualConfig.compile)")
    parser.add_argument("--both", action="store_true", help="measure plain and fast")
    parser.add_argument("--compile-backend", default=counterfactual.COMPILE_BACKEND,
                        help="torch.compile backend of the fast path (aot_eager: capture only, quick to build)")
    parser.add_argument("--schedule", action="store_true", help="print the schedule and GFLOP per kind of step")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "both"],
                        help="autocast precision (both: fp32, then bf16)")
    parser.add_argument("--jobs", type=int, default=1, help="measurements at once, one worker process each")
    args = parser.parse_args()
    device = pick_device(args.device)
    profile = args.profile or ("paper" if device.type == "cuda" else "quick")
    batch_sizes = args.batch_sizes or ([16, 32, 64] if profile == "paper" else [16])
    steps = args.steps or (50 if device.type == "cuda" else 10)
    modes = [False, True] if args.both else [args.fast]
    counterfactual.COMPILE_BACKEND = args.compile_backend
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    use_job_threads(device)
    print(f"hardware: {hardware_summary(device)}; {args.jobs} job(s) at once")
    print(f"{'profile':>8} {'mode':>6} {'prec.':>5} {'size':>5} {'batch':>5} {'img/s':>9} {'TFLOP/s':>8} "
          f"{'GFLOP/img':>10} {'peak GiB':>9} {'warm-up s':>10}")
    results = []
    for fast in modes:
        for precision in precisions:
            for batch_size in batch_sizes:
                r = measure_jobs(args.jobs, profile, batch_size, steps, args.warmup, device, fast, precision)
                results.append(r)
                print(f"{r['profile']:>8} {r['mode']:>6} {r['precision']:>5} {r['image_size']:>5} {r['batch']:>5} "
                      f"{r['img_per_s']:>9.1f} {r['tflops']:>8.3f} {r['gflop_per_image']:>10.1f} "
                      f"{r.get('peak_memory_gib', float('nan')):>9.2f} {r['warmup_s']:>10.1f}", flush=True)
    print_comparison(results, device)
    if args.schedule:
        print_schedule(results)


if __name__ == "__main__":
    main()
