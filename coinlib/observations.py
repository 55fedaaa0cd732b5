"""Sentences about a run that the run itself checks.

A notebook that tells its reader what a figure shows ("without λ_tv the difference map is
speckled") is only right when the run agrees. Here each such sentence is an
:class:`Observation`: the claim, whether it holds on this run, and the numbers that decide it,
computed from the run's own outputs. :func:`observations_markdown` renders them under the
figure, saying plainly when a claim does *not* hold, so the text cannot contradict the figure
beside it. Timeless teaching text (what a method does, why) stays prose; outcomes go through here.

The measurements the notebooks check are small pure functions on the arrays they already hold:
:func:`mean_change` (how much x_cf changes x), :func:`region_count` (how scattered a
thresholded difference map is), :func:`mass_fraction_inside` (how much of a map lies on the
lesion), :func:`peak_inside` (how often a map points at the lesion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.measure import label

__all__ = ["Observation", "observe_order", "observations_markdown", "finite_mean", "mean_change", "region_count",
           "mass_fraction_inside", "peak_inside"]


@dataclass(frozen=True)
class Observation:
    """``claim`` (a sentence without its verdict), whether it ``holds`` on this run (None: the
    run cannot tell, e.g. a number is undefined), and the ``evidence`` it was decided on."""

    claim: str
    holds: bool | None
    evidence: str

    def markdown(self) -> str:
        verdict = ("cannot be checked on this run" if self.holds is None else
                   "holds on this run" if self.holds else "does **not** hold on this run")
        return f"- {self.claim}: {verdict} ({self.evidence})."


def observe_order(claim: str, larger: tuple[str, float], smaller: tuple[str, float], digits: int = 3) -> Observation:
    """The observation "``larger`` > ``smaller``", each a (name, value) pair, with both numbers;
    undecided (``holds`` None) when either value is NaN."""
    (a_name, a), (b_name, b) = larger, smaller
    holds = None if np.isnan(a) or np.isnan(b) else bool(a > b)
    return Observation(claim, holds, f"{a_name}: {a:.{digits}f}; {b_name}: {b:.{digits}f}")


def finite_mean(values: Sequence[float | None]) -> float:
    """The mean of the finite values (NaN when there are none, without a warning)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def observations_markdown(observations: Sequence[Observation], heading: str = "What this run shows") -> str:
    """A Markdown block: the heading, then one line per observation."""
    return f"**{heading}** (checked on this run's outputs):\n\n" + "\n".join(o.markdown() for o in observations) + "\n"


def mean_change(x: np.ndarray, x_cf: np.ndarray) -> float:
    """Mean |x - x_cf| on the [0, 1] scale (the difference map's mean; x, x_cf in [-1, 1], any shape)."""
    return float(np.mean(np.abs(np.asarray(x, float) - np.asarray(x_cf, float)) / 2.0))


def region_count(diff_maps: np.ndarray, threshold: float) -> float:
    """Mean number of separate regions (8-connected) of ``diff_maps > threshold`` per slice:
    1 for one compact spot, many for speckle. ``diff_maps``: (N, H, W) or (H, W) in [0, 1]."""
    maps = np.asarray(diff_maps)
    maps = maps[None] if maps.ndim == 2 else maps
    return float(np.mean([label(m > threshold, connectivity=2).max() for m in maps]))


def mass_fraction_inside(maps: np.ndarray, masks: np.ndarray) -> float:
    """The share of a map's total mass that lies on the mask, pooled over slices (1: all of it on
    the lesion, 0: none). ``maps`` (N, H, W) >= 0, ``masks`` (N, H, W) bool; NaN for all-zero maps."""
    maps, masks = np.asarray(maps, float), np.asarray(masks, bool)
    total = maps.sum()
    return float(maps[masks].sum() / total) if total > 0 else float("nan")


def peak_inside(maps: np.ndarray, masks: np.ndarray) -> float:
    """The share of slices whose map peaks (its largest value) on the mask: where a method points.
    ``maps`` (N, H, W), ``masks`` (N, H, W) bool; slices with an empty mask are left out."""
    maps, masks = np.asarray(maps, float), np.asarray(masks, bool)
    hits = [m.reshape(-1)[int(np.argmax(v))] for v, m in zip(maps, masks) if m.any()]
    return float(np.mean(hits)) if hits else float("nan")
