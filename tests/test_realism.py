"""coinlib.realism: the phantom per phase against the literature, and against a 'real' folder.

The real sample is not needed: a phantom subject written in the TotalSegmentator layout
stands in for it, so the measurement path is the one a real scan takes.
"""

from __future__ import annotations

import numpy as np
import pytest

from coinlib import phantom as P
from coinlib import realism


def test_phase_hu_inside_the_literature_ranges():
    measured, ranges = realism.phase_hu(seed=0, index=3, spacing_mm=3.0, z_extent_mm=90.0,
                                        structures=("liver", "aorta", "spleen"))
    assert list(measured) == list(P.PHASES)
    for phase in P.PHASES:
        for name, (lo, hi) in ranges[phase].items():
            assert lo - 20 <= measured[phase][name] <= hi + 15, (phase, name)


def test_compare_with_real_on_a_layout_folder(tmp_path):
    folder = P.generate_totalsegmentator(tmp_path, 1, 5, spacing_mm=3.0, z_extent_mm=90.0, phases="native")
    result = realism.compare_with_real(folder / "s0000", phase="native", seed=0, index=1, fine_mm=2.5)
    assert result["spacing"] == pytest.approx((3.0, 3.0, 3.0))
    assert set(result["phase_slices"]) == set(P.PHASES) and result["phantom_slice"].ndim == 2
    assert {"liver", "aorta", "kidney_left"} <= set(result["real_stats"]) <= set(result["phantom_stats"])
    assert result["real_stats"]["liver"]["median"] < 80  # native
    noise = result["noise"]
    assert list(noise) == ["real (3 mm)", "phantom (3 mm)", "phantom (2.5 mm)"]
    assert all(5 < n["std"] < 40 and n["patches"] > 0 for n in noise.values())
    # the 'real' folder is a phantom subject at 3 mm: its noise resembles the 3 mm rendering
    assert noise["real (3 mm)"]["std"] == pytest.approx(noise["phantom (3 mm)"]["std"], rel=0.5)
    assert np.median(result["real_slice"]) < 0 < result["real_slice"].max()
    import matplotlib

    matplotlib.use("Agg")
    from coinlib.plots import phantom_vs_real_figure

    fig = phantom_vs_real_figure(result["real_slice"], result["phantom_slice"], result["phase_slices"],
                                 result["real_stats"], result["phantom_stats"], noise)
    assert len(fig.axes) == 2 + 1 + len(P.PHASES) + 1


def test_missing_sample_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no real CT sample"):
        realism.load_subject(tmp_path / "absent")


def test_compare_with_only_kidney_masks(tmp_path):
    """The repository's sample ships only its kidney masks: the noise is then measured there."""
    folder = P.generate_totalsegmentator(tmp_path, 1, 5, spacing_mm=3.0, z_extent_mm=90.0, phases="native")
    for path in (folder / "s0000" / "segmentations").glob("*.nii.gz"):
        if not path.name.startswith("kidney_"):
            path.unlink()
    result = realism.compare_with_real(folder / "s0000", seed=0, index=1, fine_mm=2.5)
    assert result["noise_organ"] == "kidney_left" and set(result["real_stats"]) == {"kidney_left", "kidney_right"}
