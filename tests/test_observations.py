"""coinlib.observations: sentences a run checks, and the measurements behind them, by hand."""

from __future__ import annotations

import math

import numpy as np

from coinlib.observations import (
    Observation,
    finite_mean,
    mass_fraction_inside,
    mean_change,
    observations_markdown,
    observe_order,
    peak_inside,
    region_count,
)


def test_an_observation_says_when_it_does_not_hold():
    holds = observe_order("λ_f = 0 changes the slice least", ("COIN", 0.031), ("λ_f = 0", 0.004))
    fails = observe_order("λ_tv = 0 is more speckled than COIN", ("λ_tv = 0", 1.0), ("COIN", 1.3), digits=1)
    assert holds == Observation("λ_f = 0 changes the slice least", True, "COIN: 0.031; λ_f = 0: 0.004")
    undefined = observe_order("CV is lower without λ_f", ("COIN", float("nan")), ("λ_f = 0", 0.2))
    assert undefined.holds is None and "cannot be checked on this run (COIN: nan; λ_f = 0: 0.200)" in undefined.markdown()
    text = observations_markdown([holds, fails])
    assert text.startswith("**What this run shows** (checked on this run's outputs):")
    assert "- λ_f = 0 changes the slice least: holds on this run (COIN: 0.031; λ_f = 0: 0.004)." in text
    assert "- λ_tv = 0 is more speckled than COIN: does **not** hold on this run (λ_tv = 0: 1.0; COIN: 1.3)." in text


def test_finite_mean_skips_what_is_undefined():
    assert math.isclose(finite_mean([0.2, None, float("nan"), 0.4]), 0.3)
    assert math.isnan(finite_mean([None, float("nan")]))


def test_measurements_by_hand():
    x = np.array([[-1.0, 1.0], [0.0, 0.0]])
    x_cf = np.array([[-1.0, -1.0], [0.0, 0.5]])
    assert mean_change(x, x_cf) == (0 + 1.0 + 0 + 0.25) / 4  # |x - x_cf| / 2: 0, 1, 0, 0.25
    speckle = np.zeros((2, 5, 5))
    speckle[0, 0, 0] = speckle[0, 0, 4] = speckle[0, 4, 0] = 1.0  # three separate pixels
    speckle[1, 1:4, 1:4] = 1.0  # one compact spot
    speckle[1, 0, 0] = 1.0  # touching diagonally: the same region (8-connected)
    assert region_count(speckle, 0.5) == (3 + 1) / 2
    assert region_count(speckle[1], 0.5) == 1.0
    maps = np.array([[[1.0, 3.0]], [[0.0, 4.0]]])
    masks = np.array([[[True, False]], [[False, True]]])
    assert mass_fraction_inside(maps, masks) == (1.0 + 4.0) / 8.0
    assert math.isnan(mass_fraction_inside(np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool)))
    peaks = np.zeros((3, 2, 2))
    peaks[0, 0, 0] = peaks[1, 1, 1] = peaks[2, 0, 1] = 1.0
    on = np.zeros((3, 2, 2), bool)
    on[0, 0, 0] = on[1, 0, 0] = True  # slice 0 peaks on its lesion, slice 1 beside it, slice 2 has none
    assert peak_inside(peaks, on) == 0.5
