"""The phantom held against real CT and the literature: figures/phantom_vs_real.png and
figures/phantom_phase_hu.png (PNG and PDF), and the numbers behind them printed.

- phantom_vs_real: a real TotalSegmentator-layout scan (default: the repository's sample,
  ``samples/real_ct/totalsegmentator/s0000``, a native scan) beside a phantom subject in the
  same phase: a slice at the largest kidney cross-section (W400/L40), the noise in the liver
  (std, autocorrelation, noise power spectrum), HU per structure, and the phantom slice in
  every contrast phase (``coinlib.realism.compare_with_real``).
- phantom_phase_hu: one phantom subject in every phase, median HU per structure beside the
  literature ranges the phantom draws from (``coinlib.realism.phase_hu``).

    python data_prep/compare_real_ct.py
    python data_prep/compare_real_ct.py --real ../shared/real-ct/totalsegmentator/s0000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coinlib import realism  # noqa: E402
from coinlib.plots import phantom_vs_real_figure, phase_hu_figure, save_figure  # noqa: E402
from coinlib.tables import markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=realism.REAL_CT_SAMPLE,
                        help="a TotalSegmentator-layout subject folder (ct.nii.gz, segmentations/)")
    parser.add_argument("--phase", default="native", help="the real scan's contrast phase (the sample: native)")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subject", type=int, default=0, help="phantom subject index")
    args = parser.parse_args(argv)
    if not (args.real / "ct.nii.gz").is_file():
        parser.error(f"no real CT at {args.real} (ct.nii.gz + segmentations/ expected); pass --real DIR")

    real = realism.compare_with_real(args.real, args.phase, args.seed, args.subject)
    fig = phantom_vs_real_figure(real["real_slice"], real["phantom_slice"], real["phase_slices"], real["real_stats"],
                                 real["phantom_stats"], real["noise"], noise_organ=real["noise_organ"],
                                 titles=(f"real, {args.phase}, {real['spacing'][0]:g} mm", f"phantom, {args.phase}"))
    print(*save_figure(fig, args.out / "phantom_vs_real", pdf=False), sep="\n")
    plt.close(fig)
    rows = [{"structure": n, "real_median": real["real_stats"][n]["median"], "phantom_median": s["median"],
             "real_std": real["real_stats"][n]["std"], "phantom_std": s["std"]}
            for n, s in real["phantom_stats"].items() if n in real["real_stats"]]
    print(markdown_table(rows, ["structure", "real_median", "phantom_median", "real_std", "phantom_std"], digits=1))
    print(markdown_table([{"scan": k, "noise_std_hu": v["std"], "acf_half_mm": v["correlation_mm"],
                           "nps_mean_frequency": v["nps_mean_frequency"], "patches": v["patches"]}
                          for k, v in real["noise"].items()],
                         ["scan", "noise_std_hu", "acf_half_mm", "nps_mean_frequency", "patches"], digits=3))

    measured, ranges = realism.phase_hu(args.seed, args.subject)
    fig = phase_hu_figure(measured, ranges)
    print(*save_figure(fig, args.out / "phantom_phase_hu", pdf=False), sep="\n")
    plt.close(fig)
    rows = [{"phase": ph, **{f"{n}": f"{v:.0f} ({ranges[ph][n][0]:.0f}-{ranges[ph][n][1]:.0f})" for n, v in m.items()}}
            for ph, m in measured.items()]
    print(markdown_table(rows, ["phase", *next(iter(measured.values()))]))


if __name__ == "__main__":
    main()
