"""Every verdict with its uncertainty: seeds, bootstrap intervals, three-way orderings.

Issue 12, section 1: one run on one machine cannot tell a result from chance (the same
commit on a second machine reversed every Table 2 ordering). So every trained thing is
replicated over seeds, each seed a full replicate (its own classifier, GANs and saliency
maps; the test set is the same for all), and each number comes with two spreads:

- over seeds: the per-seed values, their mean and sample standard deviation (ddof 1);
- over the test set: a percentile bootstrap interval for the seed mean. The abnormal test
  slices are resampled with replacement, the *same* resample for every seed; each seed's
  accumulated IoU (Eq. 8: one TP / (TP + FP + FN) over the drawn slices, each drawn slice
  counted as often as it is drawn) is recomputed and the seeds averaged. CV (Sec. 4.2) is
  bootstrapped alike over the slices with f(x) > tau. Given each slice's scan
  (``group_of_row``), whole scans are drawn instead (a cluster bootstrap): neighbouring
  slices of one scan show the same lesion and anatomy, so they are not independent draws,
  and a slice bootstrap over a test set of 13 scans would understate the uncertainty.

An ordering "A > B" then gets one of three verdicts (:func:`compare`): **holds** only when
A > B on every seed (paired by seed) and A's interval lies wholly above B's; **does not
hold** only when A < B on every seed and A's interval lies wholly below B's; otherwise
**not resolved** at this budget. With fewer than :data:`MIN_SEEDS` seeds no ordering is
resolved. Pure functions of numpy arrays; reading results files is :mod:`coinlib.tables`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "MIN_SEEDS",
    "CONFIDENCE",
    "RESAMPLED",
    "RESAMPLES",
    "Estimate",
    "Verdict",
    "ratio_estimate",
    "iou_estimate",
    "cv_estimate",
    "seed_estimate",
    "compare",
    "not_checked",
    "COLLAPSE_FRACTION",
    "collapsed",
]

MIN_SEEDS = 3  # at least 3 seeds for the rows a verdict rests on
# A GAN training collapsed (failed to learn, rather than learned a weak method) when its
# validation IoU lies below this fraction of the median over the trainings it is compared with.
COLLAPSE_FRACTION = 1 / 3
CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed, so an interval is the same every time it is computed
# what an interval resamples, by ``EvalConfig.bootstrap_unit``, in the words of a caption
RESAMPLED = {"scan": "test scans", "slice": "test slices"}

Outcome = Literal["holds", "does not hold", "not resolved", "not checked"]


@dataclass(frozen=True)
class Estimate:
    """One quantity of one method over seeds, with a bootstrap interval for the seed mean.

    ``per_seed[i]`` belongs to ``seeds[i]``; ``low`` / ``high``: the ``confidence`` percentile
    interval over resampled test slices (nan when not bootstrapped, e.g. a classifier's AUC);
    ``slices``: how many test slices were resampled (0: none); ``scans``: how many scans
    they belong to when whole scans were resampled (0: slices were drawn one by one);
    ``undefined_resamples``: resamples in which some seed had no slice to score (left out of
    the interval).
    """

    name: str
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    low: float = float("nan")
    high: float = float("nan")
    slices: int = 0
    confidence: float = CONFIDENCE
    undefined_resamples: int = 0
    scans: int = 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))

    @property
    def sd(self) -> float:
        """Sample standard deviation over seeds; nan with one seed."""
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else float("nan")

    def mean_sd(self, digits: int = 3) -> str:
        """'0.607 ± 0.012' (mean ± sd over seeds), or '0.607 (one seed)'."""
        if len(self.per_seed) == 1:
            return f"{self.mean:.{digits}f} (one seed)"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"

    def interval(self, digits: int = 3) -> str:
        """'[0.580, 0.630]', or '-' when there is no interval."""
        if np.isnan(self.low) or np.isnan(self.high):
            return "-"
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def summary(self, digits: int = 3) -> str:
        """'0.607 ± 0.012 [0.580, 0.630]': the seed spread and the slice interval together."""
        interval = self.interval(digits)
        return self.mean_sd(digits) + ("" if interval == "-" else f" {interval}")


def _aligned(rows: Sequence[Sequence[int]], values: Sequence[Sequence[float]], what: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """(union of rows (N,), values (S, N) with 0 where a seed has no such row)."""
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    for seed_rows, seed_values in zip(rows, values):
        if len(seed_rows) != len(seed_values):
            raise ValueError(f"{what}: {len(seed_rows)} rows but {len(seed_values)} values")
        if np.any(np.diff(seed_rows) <= 0):
            raise ValueError(f"{what}: rows must be strictly ascending (one entry per slice)")
    union = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    table = np.zeros((len(rows), len(union)))
    for i, (seed_rows, seed_values) in enumerate(zip(rows, values)):
        table[i, np.searchsorted(union, seed_rows)] = seed_values
    return union, table


def ratio_estimate(
    name: str,
    seeds: Sequence[int],
    rows: Sequence[Sequence[int]],
    numerators: Sequence[Sequence[float]],
    denominators: Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
    group_of_row: Mapping[int, str] | Sequence[str] | None = None,
) -> Estimate:
    """The seed mean of sum(numerator) / sum(denominator), bootstrapped over the test set.

    Per seed ``i``: ``rows[i]`` the prepared rows of its slices (ascending), and per slice a
    numerator and a denominator (IoU: TP and TP + FP + FN; CV: flipped and 1). A slice is
    one prepared row of the shared test set: one resample of rows serves every seed, and a
    seed that did not score a drawn row (CV: f(x) <= tau on that seed) gets nothing from it.
    A resample in which a seed's denominator is 0 is left out and counted.
    ``group_of_row[r]``: the scan of prepared row ``r``; given, each resample draws as many
    scans as there are, with replacement, and counts every slice of a drawn scan as often as
    its scan is drawn (cluster bootstrap); None: slices are drawn one by one.
    """
    if not seeds or len({len(seeds), len(rows), len(numerators), len(denominators)}) != 1:
        raise ValueError(f"{name}: need one rows / numerators / denominators entry per seed, "
                         f"got {len(seeds)} seeds, {len(rows)}, {len(numerators)}, {len(denominators)}")
    union, num = _aligned(rows, numerators, name)
    _, den = _aligned(rows, denominators, name)
    totals = den.sum(axis=1)
    per_seed = np.divide(num.sum(axis=1), totals, out=np.full(len(seeds), np.nan), where=totals > 0)
    if len(union) == 0:
        return Estimate(name, tuple(seeds), tuple(per_seed.tolist()), confidence=confidence)
    rng = np.random.default_rng(rng_seed)
    n, scans = len(union), 0
    if group_of_row is None:
        # draws[b, j]: how often slice j is drawn in resample b (n draws with replacement)
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    else:
        scan_names = []
        for row in union.tolist():
            try:
                scan_names.append(str(group_of_row[row]))
            except (KeyError, IndexError):
                raise ValueError(f"{name}: row {row} has no scan in group_of_row") from None
        _, scan_of_slice = np.unique(np.asarray(scan_names), return_inverse=True)
        scans = int(scan_of_slice.max()) + 1
        drawn_scans = rng.multinomial(scans, np.full(scans, 1.0 / scans), size=resamples).astype(np.float64)
        draws = drawn_scans[:, scan_of_slice]  # a slice is drawn as often as its scan
    drawn_num, drawn_den = draws @ num.T, draws @ den.T  # (resamples, seeds)
    ratios = np.divide(drawn_num, drawn_den, out=np.full(drawn_num.shape, np.nan), where=drawn_den > 0)
    seed_mean = ratios.mean(axis=1)  # nan where some seed had nothing to score
    defined = seed_mean[~np.isnan(seed_mean)]
    low = high = float("nan")
    if len(defined):
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(defined, [tail, 100 - tail]))
    return Estimate(name, tuple(seeds), tuple(per_seed.tolist()), low, high, n, confidence,
                    resamples - len(defined), scans)


def iou_estimate(name: str, per_slice: Mapping[int, Mapping[str, Sequence]], **bootstrap) -> Estimate:
    """Accumulated IoU (Eq. 8) over seeds from each seed's ``metrics["per_slice"]``.

    ``per_slice``: ``{seed: {"rows": [...], "tp": [...], "fp": [...], "fn": [...]}}``, pixel
    counts of the weak mask at the validation-chosen threshold, one entry per abnormal test
    slice. The abnormal test slices are the same on every seed, so their rows must agree.
    ``bootstrap``: ``confidence``, ``resamples``, ``rng_seed``, ``group_of_row`` of
    :func:`ratio_estimate`.
    """
    seeds = sorted(per_slice)
    rows = [list(per_slice[s]["rows"]) for s in seeds]
    if any(r != rows[0] for r in rows[1:]):
        raise ValueError(f"{name}: the seeds scored different abnormal test slices "
                         f"({[len(r) for r in rows]} rows); the test set must be the same for all")
    tp = [np.asarray(per_slice[s]["tp"], dtype=np.float64) for s in seeds]
    union = [t + np.asarray(per_slice[s]["fp"]) + np.asarray(per_slice[s]["fn"]) for t, s in zip(tp, seeds)]
    return ratio_estimate(name, seeds, rows, tp, union, **bootstrap)


def cv_estimate(name: str, per_slice_cv: Mapping[int, Mapping[str, Sequence]], **bootstrap) -> Estimate:
    """CV (Sec. 4.2) over seeds from each seed's ``metrics["per_slice_cv"]``.

    ``per_slice_cv``: ``{seed: {"rows": [...], "flipped": [0/1, ...]}}`` over the test slices
    with f(x) > tau. Each seed has its own classifier, so the slices may differ by seed;
    the bootstrap resamples the union of their rows (:func:`ratio_estimate`).
    """
    seeds = sorted(per_slice_cv)
    rows = [per_slice_cv[s]["rows"] for s in seeds]
    flipped = [np.asarray(per_slice_cv[s]["flipped"], dtype=np.float64) for s in seeds]
    return ratio_estimate(name, seeds, rows, flipped, [np.ones(len(f)) for f in flipped], **bootstrap)


def seed_estimate(name: str, per_seed: Mapping[int, float]) -> Estimate:
    """A quantity with a spread over seeds only (e.g. a classifier's test AUC)."""
    seeds = sorted(per_seed)
    return Estimate(name, tuple(seeds), tuple(float(per_seed[s]) for s in seeds))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one ordering check, with the numbers behind it.

    ``track``: the track whose classifier the claim rests on ("synthetic" or "tumour");
    ``reason``: why it is not resolved or not checked ("" when it holds or does not).
    """

    claim: str
    outcome: Outcome
    better: Estimate | None = None
    worse: Estimate | None = None
    reason: str = ""
    track: str = ""
    too_few_seeds: bool = False
    methods: tuple[str, ...] = ()  # (better, worse): the method names the claim compares, where known
    metric: str = "iou"
    notes: str = ""  # e.g. which seeds of either side collapsed: said on the verdict's line

    @property
    def label(self) -> str:
        """'holds', 'does not hold', 'not resolved at this budget', 'not resolved: 2 seed(s), ...'."""
        if self.outcome == "not resolved":
            return f"not resolved: {self.reason}" if self.too_few_seeds else "not resolved at this budget"
        return self.outcome

    def numbers(self, digits: int = 3) -> str:
        """'0.607 ± 0.012 [0.580, 0.630] against 0.369 ± ...; 3 seeds, 287 slices'."""
        if self.better is None or self.worse is None:
            return ""
        a, b = self.better, self.worse
        slices = f"{a.slices} slices" if a.slices == b.slices else f"{a.slices} and {b.slices} slices"
        if a.scans or b.scans:
            slices += f" of {a.scans} scans" if a.scans == b.scans else f" of {a.scans} and {b.scans} scans"
        return (f"{a.summary(digits)} against {b.summary(digits)}; "
                f"{len(a.seeds)} seed{'s' if len(a.seeds) != 1 else ''}, {slices}")

    def text(self, digits: int = 3) -> str:
        """One line: verdict, claim, numbers (and why, when it is not resolved or not checked)."""
        if self.outcome == "not checked":
            return f"not checked: {self.claim} ({self.reason})"
        detail = self.numbers(digits)
        if self.outcome == "not resolved" and not self.too_few_seeds:
            detail += f"; {self.reason}"
        if self.notes:
            detail += f"; {self.notes}"
        return f"{self.label}: {self.claim} ({detail})"


def compare(claim: str, better: Estimate, worse: Estimate, track: str = "",
            min_seeds: int = MIN_SEEDS) -> Verdict:
    """The three-way verdict on "``better`` > ``worse``".

    Seeds are paired: both estimates must cover the same seeds. "holds": better > worse on
    every seed and ``better.low > worse.high``; "does not hold": better < worse on every
    seed and ``better.high < worse.low``; else "not resolved" (touching intervals overlap).
    Fewer than ``min_seeds`` seeds: never resolved.
    """
    if better.seeds != worse.seeds:
        raise ValueError(f"{claim}: {better.name} has seeds {better.seeds}, {worse.name} {worse.seeds}; "
                         "a comparison pairs them seed by seed")
    n = len(better.seeds)
    if n < min_seeds:
        return Verdict(claim, "not resolved", better, worse, f"{n} seed(s), a verdict needs {min_seeds}", track,
                       too_few_seeds=True)
    a, b = np.asarray(better.per_seed), np.asarray(worse.per_seed)
    above, below = int(np.sum(a > b)), int(np.sum(a < b))
    apart_up, apart_down = better.low > worse.high, better.high < worse.low  # False with a nan
    if above == n and apart_up:
        return Verdict(claim, "holds", better, worse, track=track)
    if below == n and apart_down:
        return Verdict(claim, "does not hold", better, worse, track=track)
    reasons = []
    if above != n and below != n:
        reasons.append(f"{better.name} higher on {above} of {n} seeds")
    if np.isnan([better.low, better.high, worse.low, worse.high]).any():
        reasons.append("no interval to compare")
    elif not (apart_up or apart_down):
        reasons.append("intervals overlap")
    return Verdict(claim, "not resolved", better, worse,
                   ", ".join(reasons) or "the seeds and the intervals point different ways", track)


def not_checked(claim: str, reason: str, track: str = "") -> Verdict:
    """A claim this run cannot check, e.g. because a method was not run in the profile."""
    return Verdict(claim, "not checked", reason=reason, track=track)


def collapsed(val_iou: Mapping[Any, float], fraction: float = COLLAPSE_FRACTION) -> list[Any]:
    """The keys (seeds, or (precision, seed) pairs) of the trainings that collapsed: validation
    IoU (at the threshold chosen on validation, Sec. 5) below ``fraction`` of the median over
    all of ``val_iou``, in the keys' order. NaN values are left out; fewer than 3 values (no
    median to speak of) give none. A collapsed seed is a failed run, not a weak method."""
    values = {key: float(v) for key, v in val_iou.items() if v is not None and math.isfinite(float(v))}
    if len(values) < 3:
        return []
    floor = fraction * float(np.median(list(values.values())))
    return [key for key, v in values.items() if v < floor]
