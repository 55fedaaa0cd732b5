"""Verdicts with their uncertainty: hand-made numbers, hand-checked."""

import numpy as np
import pytest
from scipy import stats

from coinlib.verdicts import Estimate, compare, cv_estimate, iou_estimate, not_checked, seed_estimate


def _slices(tp, fp, fn, rows=None) -> dict:
    return {"rows": list(rows if rows is not None else range(len(tp))), "tp": tp, "fp": fp, "fn": fn}


def test_per_seed_iou_is_accumulated_over_slices():
    # seed 0: (2 + 1) / (4 + 2) = 0.5; seed 1: (3 + 1) / (4 + 4) = 0.5 ... and 1.0 with no FP / FN
    estimate = iou_estimate("COIN", {0: _slices([2, 1], [1, 1], [1, 0]), 1: _slices([3, 1], [1, 0], [0, 3]),
                                     2: _slices([3, 1], [0, 0], [0, 0])})
    assert estimate.per_seed == (0.5, 0.5, 1.0) and estimate.seeds == (0, 1, 2)
    assert estimate.mean == pytest.approx(2 / 3) and estimate.sd == pytest.approx(np.std([0.5, 0.5, 1], ddof=1))
    assert estimate.slices == 2


def test_identical_slices_give_a_zero_width_interval():
    # every slice has IoU 3 / 5: any resample gives 0.6 on each seed
    estimate = iou_estimate("COIN", {s: _slices([3] * 10, [1] * 10, [1] * 10) for s in range(3)})
    assert estimate.low == estimate.high == pytest.approx(0.6)
    assert estimate.summary() == "0.600 ± 0.000 [0.600, 0.600]"


def test_interval_on_two_slices_by_hand():
    # slice 0: IoU 1 (tp 1), slice 1: IoU 0 (fn 1). Two draws: both 0 -> 1.0 (p 1/4), one of
    # each -> 0.5 (p 1/2), both 1 -> 0.0 (p 1/4). A 95 % interval spans [0, 1]; a 40 % one
    # (30th to 70th percentile) lies inside the middle half: [0.5, 0.5].
    counts = {0: _slices([1, 0], [0, 0], [0, 1])}
    wide = iou_estimate("m", counts)
    assert (wide.low, wide.high) == (0.0, 1.0) and wide.per_seed == (0.5,)
    narrow = iou_estimate("m", counts, confidence=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_every_seed_is_scored_on_the_same_resampled_slices():
    rng = np.random.default_rng(3)
    one = _slices(*(rng.integers(0, 20, 30).tolist() for _ in range(3)))
    alone = iou_estimate("m", {0: one})
    twice = iou_estimate("m", {0: one, 1: one})  # independent resamples per seed would narrow it
    assert (twice.low, twice.high) == (alone.low, alone.high)
    assert iou_estimate("m", {0: one}).low == alone.low  # a fixed RNG seed: deterministic


def test_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(0)
    tp, fp, fn = (rng.integers(0, 60, 40) for _ in range(3))
    ours = iou_estimate("m", {0: _slices(tp.tolist(), fp.tolist(), fn.tolist())})
    theirs = stats.bootstrap((tp, tp + fp + fn), lambda t, u, axis=-1: t.sum(axis) / u.sum(axis), paired=True,
                             vectorized=True, n_resamples=4000, method="percentile",
                             rng=np.random.default_rng(1)).confidence_interval
    assert ours.low == pytest.approx(theirs.low, abs=0.01) and ours.high == pytest.approx(theirs.high, abs=0.01)


def test_scan_bootstrap_is_the_slice_bootstrap_of_each_scans_totals():
    # drawing whole scans is drawing one item per scan with the scan's summed counts: with the
    # same RNG seed both draw the same multinomial counts, so the intervals are equal
    rng = np.random.default_rng(4)
    tp, fp, fn = (rng.integers(0, 40, 24) for _ in range(3))
    scan = np.repeat(np.arange(6), 4)[rng.permutation(24)]  # 6 scans of 4 slices, interleaved rows
    group_of_row = {row: f"case_{s}" for row, s in enumerate(scan)}
    ours = iou_estimate("m", {0: _slices(tp.tolist(), fp.tolist(), fn.tolist())}, group_of_row=group_of_row)
    totals = [np.bincount(scan, weights=v).tolist() for v in (tp, fp, fn)]
    by_scan = iou_estimate("m", {0: _slices(*totals)})
    assert (ours.low, ours.high) == pytest.approx((by_scan.low, by_scan.high))
    assert ours.per_seed == pytest.approx(by_scan.per_seed) and (ours.slices, ours.scans) == (24, 6)


def test_scan_bootstrap_is_wider_when_a_scans_slices_move_together():
    # 4 scans of 10 slices each; within a scan every slice has the same IoU (1, 0.5, 0.5, 0)
    per_scan = [(4, 0, 0), (2, 1, 1), (2, 1, 1), (0, 2, 2)]
    tp, fp, fn = (np.repeat([c[i] for c in per_scan], 10).tolist() for i in range(3))
    counts = {0: _slices(tp, fp, fn)}
    by_slice = iou_estimate("m", counts)
    by_scan = iou_estimate("m", counts, group_of_row=[f"s{i // 10}" for i in range(40)])
    assert by_scan.high - by_scan.low > 2 * (by_slice.high - by_slice.low)
    assert by_slice.scans == 0 and by_scan.scans == 4
    with pytest.raises(ValueError, match="row 39 has no scan"):
        iou_estimate("m", counts, group_of_row=[f"s{i // 10}" for i in range(39)])


def test_cv_resamples_the_union_of_each_seeds_slices():
    # seed 0 sees rows 1-3 (2 of 3 flipped), seed 1 rows 2-5 (3 of 4): its own classifier
    estimate = cv_estimate("COIN", {0: {"rows": [1, 2, 3], "flipped": [1, 1, 0]},
                                    1: {"rows": [2, 3, 4, 5], "flipped": [1, 0, 1, 1]}})
    assert estimate.per_seed == pytest.approx((2 / 3, 3 / 4)) and estimate.slices == 5
    assert 0 <= estimate.low <= estimate.high <= 1
    assert estimate.undefined_resamples > 0  # some resamples miss seed 0's rows entirely


def test_seeds_that_scored_different_slices_are_refused():
    with pytest.raises(ValueError, match="different abnormal test slices"):
        iou_estimate("m", {0: _slices([1], [0], [0], rows=[4]), 1: _slices([1], [0], [0], rows=[5])})


def _estimate(name, per_seed, low, high, slices=287):
    return Estimate(name, tuple(range(len(per_seed))), tuple(per_seed), low, high, slices)


COIN = _estimate("COIN", [0.60, 0.62, 0.59], 0.58, 0.63)
SINGLA = _estimate("Singla*", [0.37, 0.39, 0.35], 0.34, 0.40)


def test_an_ordering_that_holds():
    verdict = compare("synthetic: COIN > Singla*", COIN, SINGLA, "synthetic")
    assert verdict.outcome == "holds" and verdict.track == "synthetic"
    assert verdict.text() == ("holds: synthetic: COIN > Singla* (0.603 ± 0.015 [0.580, 0.630] against "
                              "0.370 ± 0.020 [0.340, 0.400]; 3 seeds, 287 slices)")


def test_an_ordering_that_goes_the_other_way():
    verdict = compare("synthetic: Singla* > COIN", SINGLA, COIN)
    assert verdict.outcome == "does not hold" and verdict.text().startswith("does not hold: synthetic: Singla*")


def test_overlapping_intervals_are_not_resolved():
    close = _estimate("Singla*", [0.55, 0.56, 0.54], 0.52, 0.59)  # below COIN on every seed
    verdict = compare("COIN > Singla*", COIN, close)
    assert verdict.outcome == "not resolved" and verdict.reason == "intervals overlap"
    assert verdict.text().startswith("not resolved at this budget: COIN > Singla* (0.603")


def test_one_seed_disagreeing_is_not_resolved():
    # intervals apart, but on seed 2 the "worse" method is ahead
    odd = _estimate("Singla*", [0.37, 0.39, 0.61], 0.40, 0.45)
    verdict = compare("COIN > Singla*", COIN, odd)
    assert verdict.outcome == "not resolved" and verdict.reason == "COIN higher on 2 of 3 seeds"
    assert compare("Singla* > COIN", odd, COIN).outcome == "not resolved"


def test_fewer_than_three_seeds_never_resolve():
    two = (_estimate("A", [0.9, 0.9], 0.85, 0.95), _estimate("B", [0.1, 0.1], 0.05, 0.15))
    verdict = compare("A > B", *two)
    assert verdict.outcome == "not resolved"
    assert verdict.text().startswith("not resolved: 2 seed(s), a verdict needs 3: A > B (0.900 ± 0.000")


def test_unpaired_seeds_and_unchecked_claims():
    with pytest.raises(ValueError, match="pairs them seed by seed"):
        compare("A > B", COIN, Estimate("B", (0, 1, 5), (0.1, 0.1, 0.1), 0.0, 0.2))
    assert not_checked("tumour: COIN > RISE", "RISE was not run").text() == \
        "not checked: tumour: COIN > RISE (RISE was not run)"
    auc = seed_estimate("AUC", {1: 0.8, 0: 0.9})
    assert auc.per_seed == (0.9, 0.8) and auc.interval() == "-" and auc.summary() == "0.850 ± 0.071"


def test_a_collapsed_training_lies_below_a_third_of_the_median():
    from coinlib.verdicts import collapsed

    # the Singla* seeds of a bf16 run that failed on two of three seeds: median 0.202, floor 0.067
    assert collapsed({0: 0.202, 1: 0.425, 2: 0.015}) == [2]
    assert collapsed({0: 0.401, 1: 0.402, 2: 0.399}) == []
    assert collapsed({("fp32", 0): 0.4, ("bf16", 0): 0.1, ("fp32", 1): 0.45, ("bf16", 1): 0.5}) == [("bf16", 0)]
    assert collapsed({0: 0.5, 1: 0.0}) == []  # two values: no median to judge by
    assert collapsed({0: 0.5, 1: float("nan"), 2: 0.6, 3: 0.01}) == [3]  # NaN left out
