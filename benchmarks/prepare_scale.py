"""Data preparation at dataset scale: wall time and peak memory of `coin prepare` against the
number of scans, and what that projects to for the whole public datasets.

    python benchmarks/prepare_scale.py                         # KiTS23 layout, 8 and 24 cases, the cores
    python benchmarks/prepare_scale.py --cases 8 24 48 --workers 1 2

For each case count, KiTS23-layout phantom cases at the real dataset's resolution (0.7-0.9 mm
in-plane, up to 512 px, 2.5 or 3 mm slices; :func:`coinlib.phantom.generate_kits23`, cached under
``--out``) are prepared at ``--image-size`` by `coin prepare` in a fresh process, and the memory of
that process and of its worker processes is sampled from ``/proc`` every 0.1 s: the peak of their
sum of private (anonymous) memory is what the machine must hold; the output arrays, written in
place through a memory map, are file pages the kernel can write out and drop, so they do not
count. Prints cases, kept slices, seconds, peak memory (MB) and, from
a straight line through (kept slices, peak memory), the memory each kept slice adds; then the
projection for KiTS23 (489 cases) at the slices per case measured here. A benchmark, not a test:
numbers depend on the machine (named in the output). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KITS23_CASES = 489


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def _resident_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def measure(src: Path, out: Path, image_size: int, workers: int | None) -> dict:
    """Prepare ``src`` into ``out`` in a fresh process; seconds and the peak of the tree's memory."""
    command = [sys.executable, "-m", "coinlib.cli", "prepare", "--layout", "kits23", "--src", str(src),
               "--out", str(out), "--image-size", str(image_size), "--force"]
    if workers is not None:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _resident_mb(_tree(process.pid)))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"coin prepare failed: {process.stderr.read()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"cases": len(manifest["scans"]), "slices": manifest["slices"], "seconds": round(seconds, 1),
            "peak_mb": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--workers", type=int, nargs="+", default=[None],
                        help="worker counts to measure (default: coin prepare's, one per core)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs") / "prepare_scale")
    args = parser.parse_args()

    import numpy as np

    from coinlib.phantom import generate_kits23
    from coinlib.runtime import hardware_summary, pick_device

    hardware = hardware_summary(pick_device("cpu"))
    print(f"coin prepare, KiTS23 layout phantom, image size {args.image_size}; {hardware.get('cpu')} "
          f"({hardware.get('cpu_model_id')}), {os.cpu_count()} cores")
    print(f"{'cases':>6} {'workers':>8} {'slices':>7} {'seconds':>8} {'peak MB':>8}")
    rows = []
    for cases in args.cases:
        src = generate_kits23(args.out / f"kits23_{cases}", cases, seed=0)
        for workers in args.workers:
            row = measure(src, args.out / f"prepared_{cases}_{workers or 'auto'}", args.image_size, workers)
            row["workers"] = workers or "auto"
            rows.append(row)
            print(f"{row['cases']:>6} {row['workers']!s:>8} {row['slices']:>7} {row['seconds']:>8} {row['peak_mb']:>8}")
    for workers in args.workers:
        mine = [r for r in rows if r["workers"] == (workers or "auto")]
        if len(mine) < 2:
            continue
        slices = np.array([r["slices"] for r in mine], float)
        peak = np.array([r["peak_mb"] for r in mine], float)
        seconds = np.array([r["seconds"] for r in mine], float)
        per_slice_mb, _ = np.polyfit(slices, peak, 1)
        per_slice_s, _ = np.polyfit(slices, seconds, 1)
        slices_per_case = slices.sum() / sum(r["cases"] for r in mine)
        total = KITS23_CASES * slices_per_case
        print(f"workers {workers or 'auto'}: +{per_slice_mb * 1024:.0f} KB of peak memory and {per_slice_s * 1000:.0f} ms "
              f"per kept slice; KiTS23 ({KITS23_CASES} cases at {slices_per_case:.0f} kept slices each, "
              f"{total:.0f} slices): about {peak.max() + per_slice_mb * (total - slices.max()):.0f} MB peak and "
              f"{seconds.max() + per_slice_s * (total - slices.max()):.0f} s (a straight-line projection)")


if __name__ == "__main__":
    main()
