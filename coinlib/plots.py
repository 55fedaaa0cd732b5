"""Plots the notebooks show: slice grids with mask overlays, outcome colours, curves.

Outcome colours keep the paper's Fig. 2 roles (true positive green, false positive red,
false negative yellow, ground truth outlined in sky blue on a black edge) in the colour-blind-safe Okabe-Ito palette:
:data:`OUTCOME_COLOURS` is the one place they are defined (``coinlib.widgets`` uses it too)
and :data:`OUTCOME_CAPTION` names them for captions. Every function returns the matplotlib
Figure and never writes files; :func:`save_figure` writes PNG and PDF atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .files import atomic_path

__all__ = [
    "OUTCOME_CAPTION",
    "OUTCOME_COLOURS",
    "TRUTH_EDGE",
    "outline_truth",
    "outline_body",
    "BODY_CAPTION",
    "outcome_masks",
    "outcome_rgba",
    "mask_rgba",
    "show_grid",
    "save_figure",
    "counterfactual_panel",
    "training_curves",
    "sweep_curves",
    "sweep_peak",
    "window_caption",
    "window_note",
    "method_grid",
    "lesion_crop",
    "outside_window",
    "variant_grid",
    "roc_curves",
    "scan_scores",
    "phase_hu_figure",
    "phantom_vs_real_figure",
]

# Okabe & Ito's colour-blind-safe palette: bluish green #009E73, vermillion #D55E00, yellow
# #F0E442. Of its 3-colour sets this one stays farthest apart (CIELAB) for protan, deutan and
# tritan viewers alike (tests/test_plots.py checks it with Machado et al.'s 2009 simulation).
OUTCOME_COLOURS = {
    "tp": (0.0, 158 / 255, 115 / 255),
    "fp": (213 / 255, 94 / 255, 0.0),
    "fn": (240 / 255, 228 / 255, 66 / 255),
    # Okabe-Ito sky blue, drawn over a black edge (TRUTH_EDGE): visible on a white synthetic blob,
    # on grey tissue and on black air alike, and apart from the three outcome colours
    "truth": (86 / 255, 180 / 255, 233 / 255),
}
TRUTH_EDGE = (0.0, 0.0, 0.0)
OUTCOME_CAPTION = ("TP bluish green, FP vermillion, FN yellow, ground truth outlined in sky blue on a black edge "
                   "(Okabe-Ito colours, readable with colour blindness)")


BODY_COLOUR = (0.8, 0.8, 0.8)
BODY_CAPTION = ("the patient's body outlined in dashed light grey (HU above -500 on the scan: on the model's "
                "window air and fat are both black); '% outside' is the share of |x - x_cf| in the air around it")


def mask_rgba(mask: np.ndarray, colour: Sequence[float], alpha: float = 0.45) -> np.ndarray:
    """(H, W) bool -> (H, W, 4) float RGBA, transparent outside the mask."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask.astype(bool)] = (*colour, alpha)
    return rgba


def outcome_masks(mask_pred: np.ndarray, mask_true: np.ndarray) -> dict[str, np.ndarray]:
    """``{"tp", "fp", "fn"}``: bool masks (same shape) of predicted-and-true, predicted-only, true-only."""
    pred, true = np.asarray(mask_pred).astype(bool), np.asarray(mask_true).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask_pred {pred.shape} and mask_true {true.shape} differ in shape")
    return {"tp": pred & true, "fp": pred & ~true, "fn": ~pred & true}


def outcome_rgba(mask_pred: np.ndarray, mask_true: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W) RGBA of TP, FP and FN pixels in :data:`OUTCOME_COLOURS` (paper Fig. 2); others transparent."""
    outcomes = outcome_masks(mask_pred, mask_true)
    rgba = np.zeros((*outcomes["tp"].shape, 4), dtype=np.float32)
    for key, where in outcomes.items():
        rgba[where] = (*OUTCOME_COLOURS[key], alpha)
    return rgba


def show_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    overlays: Sequence[Sequence[np.ndarray | None]] | None = None,
    cmap: str = "gray",
    vrange: tuple[float, float] = (-1.0, 1.0),
    cell: float = 1.9,
) -> plt.Figure:
    """A grid of images; ``rows[r][c]`` is (H, W) scalar or (H, W, 3|4) colour, or None (blank).

    ``overlays[r][c]`` (H, W, 4) RGBA, when given, is drawn over the image.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = row[c] if c < len(row) else None
            if image is None:
                continue
            if image.ndim == 2:
                ax.imshow(image, cmap=cmap, vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            if overlays is not None and overlays[r][c] is not None:
                ax.imshow(overlays[r][c], interpolation="nearest")
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110, pdf: bool = True) -> list[Path]:
    """Write ``path`` as PNG and (``pdf``) its PDF sibling, each atomically; returns the paths.

    Run folders keep both; the repository's ``figures/`` keeps PNG only (images once)."""
    path = Path(path).with_suffix(".png")
    written = []
    for target in (path, path.with_suffix(".pdf")) if pdf else (path,):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        written.append(target)
    return written


def counterfactual_panel(
    arrays: dict[str, np.ndarray], picks: Sequence[int], threshold: float,
    closing_radius: int = 2, opening_radius: int = 2, morphology: str = "paper",
) -> plt.Figure:
    """Rows of x, x_cf, |x - x_cf|, weak mask (TP, FP, FN in :data:`OUTCOME_COLOURS`) and the truth.

    ``arrays`` as returned by :func:`coinlib.counterfactual.generate_counterfactuals`;
    ``picks`` index into them. The weak mask is ``diff_map > threshold`` post-processed as
    in Sec. 5 (``closing_radius``, ``opening_radius``, ``morphology``: ``EvalConfig``'s). The
    body is outlined on x_cf and |x - x_cf|, with the share of the change outside it
    (:data:`BODY_CAPTION`).
    """
    from .masks import difference_map, weak_mask

    rows, overlays, diffs = [], [], []
    for i in picks:
        x, x_cf, truth = arrays["x"][i], arrays["x_cf"][i], arrays["lesion_mask"][i]
        diff = difference_map(x, x_cf)
        pred = weak_mask(diff, threshold, True, closing_radius, opening_radius, morphology)
        rows.append([x, x_cf, diff * 2 - 1, x, np.where(truth, 1.0, -1.0)])
        overlays.append([None, None, None, outcome_rgba(pred, truth), None])
        diffs.append(diff)
    titles = ["x", "x_cf", "|x - x_cf|", f"weak mask (t={threshold:.2f})", "true mask"]
    fig = show_grid(rows, col_titles=titles, overlays=overlays)
    axes = np.asarray(fig.axes).reshape(len(rows), -1)
    for r, (i, diff) in enumerate(zip(picks, diffs)):
        outline_body(axes[r, 1], arrays["body_mask"][i])
        outline_body(axes[r, 2], arrays["body_mask"][i], diff)
    fig.supxlabel(BODY_CAPTION, fontsize=7)
    return fig


def sweep_curves(
    curves: dict[str, dict],
    ax: plt.Axes | None = None,
    title: str = "",
    ymax: float | None = 1.0,
) -> plt.Figure:
    """IoU against the binarisation threshold, one line per method and seed (Sec. 5 sweep).

    ``curves[name]`` holds ``thresholds`` and ``test_iou`` (a results JSON's ``sweep``: one
    curve, or one per seed as a 2-D list), optionally ``chosen`` (the threshold(s) from the
    validation split, drawn as dots), ``style`` (a matplotlib line style) and ``colour`` (to
    pair a method's solid and dashed curves). Each seed is drawn on its own, so each seed's
    peak shows where it is: a mean over seeds of curves that peak at different thresholds
    would flatten the peaks below the best test IoU that Table 1 reports, which is the seeds'
    mean of :func:`sweep_peak`, the number each legend entry gives. ``ymax``: the IoU axis's
    top; ``None`` fits it to the highest curve (at least 0.02), so curves near zero (the CAMs')
    can be read on a panel of their own.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 3.6))
    if ymax is None:
        ymax = max([0.02, *(1.15 * float(np.max(curve["test_iou"])) for curve in curves.values())])
    for name, curve in curves.items():
        thresholds = np.asarray(curve["thresholds"], float)
        ious = np.atleast_2d(np.asarray(curve["test_iou"], float))
        label = f"{name} (peak {sweep_peak(ious):.2f})"
        line = None
        for k, row in enumerate(ious):
            (line,) = ax.plot(thresholds, row, label=label if k == 0 else None, lw=1.1 if len(ious) > 1 else 1.4,
                              alpha=0.8, ls=curve.get("style", "-"),
                              color=curve.get("colour") if line is None else line.get_color())
        chosen = curve.get("chosen")
        if chosen is not None:
            for row, t in zip(ious, np.atleast_1d(np.asarray(chosen, float))):
                ax.plot([t], [np.interp(t, thresholds, row)], "o", color=line.get_color(), ms=3.5)
    ax.set(xlabel="threshold", ylabel="test IoU", xlim=(0, 1), ylim=(0, ymax), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def sweep_peak(test_iou: np.ndarray | Sequence) -> float:
    """The mean over seeds of each seed's best IoU on the sweep (``test_iou``: one curve, or one
    per seed): Table 1's "best test IoU", the paper's protocol. NaN points are skipped."""
    curves = np.atleast_2d(np.asarray(test_iou, float))
    return float(np.mean(np.nanmax(curves, axis=1)))


def window_caption(fingerprint: dict) -> str:
    """What the grey scale of a model-input panel means in HU: x in [-1, 1] maps linearly from the
    training fingerprint's ``p_low`` (black) to ``p_high`` (white), values beyond clipped
    (:func:`coinlib.prepare.normalise_hu`)."""
    low, high = fingerprint["percentiles"] if "percentiles" in fingerprint else (None, None)
    where = f" ({low:g}th-{high:g}th percentiles of the training scans' foreground)" if low is not None else ""
    return (f"CT panels: model input, black = {fingerprint['p_low']:.0f} HU, white = {fingerprint['p_high']:.0f} HU"
            f"{where}; HU outside the window clipped")


def window_note(fig: plt.Figure, fingerprint: dict) -> str:
    """:func:`window_caption` written under ``fig`` (small, centred); returns it."""
    caption = window_caption(fingerprint)
    fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=7)
    return caption


def lesion_crop(truth: np.ndarray, factor: float = 3.0, minimum: int = 24) -> tuple[slice, slice]:
    """A square window around a lesion: ``factor`` x its larger side (at least ``minimum`` px),
    centred on it and kept inside the image. ``truth`` (H, W) bool; the whole image when empty."""
    h, w = truth.shape
    ys, xs = np.nonzero(truth)
    if not len(ys):
        return slice(0, h), slice(0, w)
    side = int(min(max(h, w), max(minimum, factor * max(np.ptp(ys) + 1, np.ptp(xs) + 1))))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    y0 = int(np.clip(cy - side // 2, 0, max(0, h - side)))
    x0 = int(np.clip(cx - side // 2, 0, max(0, w - side)))
    return slice(y0, min(h, y0 + side)), slice(x0, min(w, x0 + side))


def outside_window(mask: np.ndarray, truth: np.ndarray, window: tuple[slice, slice]) -> int:
    """Pixels of ``mask`` outside ``window`` that ``truth`` does not hold: the false positives a
    zoomed panel hides (all of them when the window holds the whole lesion, as :func:`lesion_crop`'s does)."""
    false_positive = np.asarray(mask, bool) & ~np.asarray(truth, bool)
    inside = np.zeros_like(false_positive)
    inside[window] = True
    return int((false_positive & ~inside).sum())


def outline_body(ax: plt.Axes, body: np.ndarray | None, diff: np.ndarray | None = None) -> None:
    """The patient's body outline (:data:`BODY_CAPTION`), dashed; with ``diff``, the share of
    |x - x_cf| outside it (:func:`coinlib.masks.outside_body_share`) under the panel."""
    if body is None or not np.any(body):
        return
    ax.contour(np.asarray(body, float), levels=[0.5], colors=[BODY_COLOUR], linewidths=0.6, linestyles="--")
    if diff is not None:
        from .masks import outside_body_share

        ax.set_xlabel(f"{100 * outside_body_share(diff, body):.0f}% outside the body", fontsize=6)


def outline_truth(ax: plt.Axes, truth: np.ndarray | None, linewidth: float = 0.9) -> None:
    """The ground-truth mask's outline (:data:`OUTCOME_CAPTION`): sky blue over a black edge
    twice as wide, so that it shows on any background; nothing when ``truth`` is empty."""
    if truth is not None and np.any(truth):
        from matplotlib import patheffects

        contour = ax.contour(np.asarray(truth, float), levels=[0.5], colors=[OUTCOME_COLOURS["truth"]],
                             linewidths=linewidth)
        contour.set(path_effects=[patheffects.Stroke(linewidth=2.4 * linewidth, foreground=TRUTH_EDGE),
                                  patheffects.Normal()])


def method_grid(
    examples: Sequence[dict], methods: Sequence[str], example_titles: Sequence[str] | None = None,
    counterfactual: Sequence[str] = ("COIN", "Singla et al.*"), diff_vmax: float = 0.5, zoom: bool = True,
) -> plt.Figure:
    """The paper's Fig. 2: per example slice, a row of maps and a row of thresholded masks.

    ``examples[i]`` holds ``image`` (H, W) in [-1, 1], ``truth`` (H, W) bool and, per method
    name, ``maps[name]`` (H, W) in [0, 1] and ``masks[name]`` (H, W) bool. The first column is
    the whole slice with the zoomed window marked (``zoom``: every other panel shows that window,
    as the paper's figure does); the last, the ground truth. Methods named in
    ``counterfactual`` show |x - x_cf| on one absolute scale [0, ``diff_vmax``], the others their
    min-max normalised [0, 1] maps, each with its colour bar, so the two kinds are not read as
    one scale. Masks in :data:`OUTCOME_COLOURS` (:data:`OUTCOME_CAPTION`), ground truth outlined
    on every mask panel; under each zoomed mask panel, the false-positive pixels the zoom hides
    (:func:`outside_window`).
    """
    from matplotlib.patches import Rectangle

    cols = len(methods) + 2
    fig, axes = plt.subplots(2 * len(examples), cols, figsize=(1.75 * cols + 0.8, 3.5 * len(examples) + 0.5),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, ex in enumerate(examples):
        label = example_titles[i] if example_titles else f"slice {i}"
        top, bottom = axes[2 * i], axes[2 * i + 1]
        window = lesion_crop(ex["truth"]) if zoom else (slice(None), slice(None))
        top[0].imshow(ex["image"], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        if zoom:
            ys, xs = window
            top[0].add_patch(Rectangle((xs.start - 0.5, ys.start - 0.5), xs.stop - xs.start, ys.stop - ys.start,
                                       fill=False, edgecolor="cyan", lw=1))
        top[0].set_ylabel(f"{label}: map", fontsize=8)
        bottom[0].imshow(ex["image"][window], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        outline_truth(bottom[0], ex["truth"][window])
        bottom[0].set_ylabel(f"{label}: mask", fontsize=8)
        for k, method in enumerate(methods, start=1):
            vmax = diff_vmax if method in counterfactual else 1.0
            im = top[k].imshow(ex["maps"][method][window], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            bar = fig.colorbar(im, ax=top[k], fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            bottom[k].imshow(ex["image"][window], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            bottom[k].imshow(outcome_rgba(ex["masks"][method][window], ex["truth"][window]), interpolation="nearest")
            outline_truth(bottom[k], ex["truth"][window])
            if zoom:  # what the zoom hides, so a panel without red is not read as a mask without FP
                hidden = outside_window(ex["masks"][method], ex["truth"], window)
                bottom[k].set_xlabel(f"+{hidden} FP px off-window" if hidden else "no FP off-window", fontsize=6,
                                     color=OUTCOME_COLOURS["fp"] if hidden else "black")
        truth = np.where(ex["truth"][window], 1.0, -1.0)
        top[-1].imshow(truth, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        bottom[-1].axis("off")
        if i == 0:
            titles = ["x (window in cyan)" if zoom else "x",
                      *[f"{m}\n|x - x_cf|" if m in counterfactual else f"{m}\nnormalised map" for m in methods],
                      "ground truth"]
            for ax, title in zip(top, titles):
                ax.set_title(title, fontsize=8)
    fig.supxlabel(OUTCOME_CAPTION, fontsize=7)
    return fig


def variant_grid(
    x: np.ndarray, counterfactuals: dict[str, np.ndarray], truth: np.ndarray | None = None,
    diff_vmax: float = 0.5, show_counterfactuals: bool = True, body: np.ndarray | None = None,
) -> plt.Figure:
    """Counterfactuals of several variants for the same slices (Appendix A, Figs. 4-6).

    ``x`` (N, H, W) in [-1, 1]; ``counterfactuals[name]`` (N, H, W) the variant's x_cf, the
    name saying what the column is (e.g. "0 skips"). Per slice: x (the true mask outlined),
    then for each variant its x_cf (unless not ``show_counterfactuals``: narrower, for many
    variants) and |x - x_cf| on one absolute scale [0, ``diff_vmax``] with a colour bar (the weak
    map), so the columns compare directly. ``body`` (N, H, W), the slices' body masks: outlined
    on every |x - x_cf| with the share of the change outside it (:data:`BODY_CAPTION`).
    """
    from .masks import difference_map

    names = list(counterfactuals)
    per = 2 if show_counterfactuals else 1
    cols = 1 + per * len(names)
    fig, axes = plt.subplots(len(x), cols, figsize=(1.6 * cols + 0.6, 1.75 * len(x) + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(len(x)):
        axes[i, 0].imshow(x[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        if truth is not None:
            outline_truth(axes[i, 0], truth[i])
        for k, name in enumerate(names):
            x_cf = counterfactuals[name][i]
            column = 1 + per * k
            if show_counterfactuals:
                axes[i, column].imshow(x_cf, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                if i == 0:
                    axes[0, column].set_title(f"{name}\nx_cf", fontsize=8)
            diff = difference_map(x[i], x_cf)
            im = axes[i, column + per - 1].imshow(diff, cmap="magma", vmin=0, vmax=diff_vmax, interpolation="nearest")
            if body is not None:
                outline_body(axes[i, column + per - 1], body[i], diff)
            if i == 0:
                axes[0, column + per - 1].set_title(f"{name}\n|x - x_cf|", fontsize=8)
    axes[0, 0].set_title("x (true mask outlined)" if truth is not None else "x", fontsize=8)
    bar = fig.colorbar(im, ax=axes[:, -1], fraction=0.05, pad=0.02, label="|x - x_cf| on [0, 1]")
    bar.ax.tick_params(labelsize=6)
    if body is not None:
        fig.supxlabel(BODY_CAPTION, fontsize=7)
    return fig


def training_curves(log: Sequence[dict], title: str = "") -> plt.Figure:
    """A counterfactual GAN's history: adversarial terms (Eq. 2), weighted generator terms
    (Eq. 1, 3-6) and the validation IoU / CV logged during training."""
    losses = [h for h in log if "d_adv" in h]
    evals = [h for h in log if "val_iou" in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, keys, name in ((axes[0], ("d_adv", "g_adv"), "adversarial terms (Eq. 2)"),
                           (axes[1], ("g_f", "g_idt", "g_tv"), "weighted generator terms (Eq. 1, 3-6)")):
        for key in keys:
            points = [(h["step"], h[key]) for h in losses if key in h]
            if points:
                ax.plot(*zip(*points), label=key)
        ax.set(title=name, xlabel="step")
        ax.legend()
    axes[1].set_yscale("log")
    axes[2].plot([h["step"] for h in evals], [h["val_iou"] for h in evals], "o-", label="val IoU (best t)")
    axes[2].plot([h["step"] for h in evals], [h["val_cv"] for h in evals], "s-", label="val CV")
    axes[2].set(title="validation", xlabel="step", ylim=(0, 1.02))
    axes[2].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], ax: plt.Axes | None = None,
               title: str = "") -> plt.Figure:
    """ROC curves, one per label (e.g. per seed): ``curves[label] = (fpr, tpr)``."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.2, 3.6))
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=1.3, label=label)
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def scan_scores(p_abnormal: np.ndarray, label: np.ndarray, scan: Sequence[str], threshold: float,
                ax: plt.Axes | None = None, title: str = "", other: np.ndarray | None = None,
                other_label: str = "") -> plt.Figure:
    """f(x) of every test slice, one column per scan: does f read the lesion or the scan?

    Abnormal slices are drawn as red dots, normal ones as grey crosses, ``other`` (a bool mask,
    e.g. slices with a cyst, labelled normal) as blue diamonds; the line is the decision
    threshold. A scan whose slices all sit high (or low) whatever their label shows that f
    learnt the scan's appearance rather than the lesion.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(9, 3.2))
    scans = sorted(set(scan))
    column = np.array([scans.index(s) for s in scan], dtype=float)
    jitter = (np.random.default_rng(0).random(len(column)) - 0.5) * 0.5
    positive = np.asarray(label) > 0.5
    special = np.zeros(len(column), bool) if other is None else np.asarray(other, bool) & ~positive
    plain = ~positive & ~special
    ax.scatter(column[plain] + jitter[plain], p_abnormal[plain], marker="x", s=10, color="0.55", lw=0.8,
               label="normal slice")
    if special.any():
        ax.scatter(column[special] + jitter[special], p_abnormal[special], marker="D", s=12, color="tab:blue",
                   label=other_label or "other")
    ax.scatter(column[positive] + jitter[positive], p_abnormal[positive], s=10, color="tab:red",
               label="abnormal slice")
    ax.axhline(threshold, ls=":", color="k", lw=1)
    ax.set(xticks=range(len(scans)), xlim=(-0.6, len(scans) - 0.4), ylim=(-0.02, 1.02), ylabel="f(x)",
           title=title)
    ax.set_xticklabels(scans, rotation=60, fontsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


PHASE_COLOURS = {"native": "#666666", "arterial": "#d62728", "portal_venous": "#1f77b4",
                 "nephrographic": "#2ca02c", "delayed": "#9467bd"}


def phase_hu_figure(measured: dict[str, dict[str, float]], ranges: dict[str, dict[str, tuple[float, float]]],
                    title: str = "") -> plt.Figure:
    """HU per structure and contrast phase: the literature range (bar) and a measured median (dot).

    ``measured[phase][structure]``: median HU; ``ranges[phase][structure]``: (low, high) HU.
    Structures in the order of the first phase's dict; one colour per phase.
    """
    phases = list(measured)
    structures = list(next(iter(measured.values())))
    fig, ax = plt.subplots(figsize=(1.2 * len(structures) + 2, 3.8))
    width = 0.8 / max(len(phases), 1)
    for j, phase in enumerate(phases):
        colour = PHASE_COLOURS.get(phase, None)
        for i, name in enumerate(structures):
            x = i - 0.4 + (j + 0.5) * width
            lo, hi = ranges[phase][name]
            ax.plot([x, x], [lo, hi], color=colour, lw=5, alpha=0.35, solid_capstyle="butt")
            ax.plot([x], [measured[phase][name]], "o", color=colour, ms=4, label=phase if i == 0 else None)
    ax.set_xticks(range(len(structures)), [n.replace("_", " ") for n in structures], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("HU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(phases), loc="upper left")
    ax.set_title(title or "HU per structure and phase: literature range (bar), phantom median (dot)", fontsize=9)
    fig.tight_layout()
    return fig


def phantom_vs_real_figure(real_slice: np.ndarray, phantom_slice: np.ndarray, phase_slices: dict[str, np.ndarray],
                           real_stats: dict[str, dict], phantom_stats: dict[str, dict], noise: dict[str, dict],
                           window: tuple[float, float] = (-160.0, 240.0), titles: Sequence[str] = ("real", "phantom"),
                           noise_organ: str = "a uniform organ") -> plt.Figure:
    """The phantom held against a real scan.

    Top: ``real_slice`` and ``phantom_slice`` ((H, W) HU, radiological view) in ``window``, and
    the noise power spectra of ``noise`` (label -> :func:`coinlib.image_quality.noise_texture`
    result, std and correlation length in the legend) measured in ``noise_organ``. Middle: the phantom slice in each phase
    of ``phase_slices``. Bottom: HU per structure, median and 5th-95th percentile, real
    (``real_stats``) beside phantom (``phantom_stats``; :func:`coinlib.image_quality.hu_stats`).
    """
    n = max(len(phase_slices), 3)
    fig = plt.figure(figsize=(3.0 * n, 9.5))
    grid = fig.add_gridspec(3, n, height_ratios=[1.2, 0.9, 0.9], hspace=0.35, wspace=0.15)
    for col, (image, title) in enumerate(zip((real_slice, phantom_slice), titles)):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
        ax.set_title(f"{title} (W{window[1] - window[0]:.0f}/L{(window[0] + window[1]) / 2:.0f})", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[0, 2:])
    ax.yaxis.tick_right()
    ax.yaxis.set_label_position("right")
    for label, t in noise.items():
        if t.get("nps"):
            ax.semilogy(t["nps_frequency"][1:], t["nps"][1:], label=f"{label}: std {t['std']:.1f} HU, "
                        f"ACF 0.5 at {t['correlation_mm']:.1f} mm, mean f {t['nps_mean_frequency']:.2f}/mm")
    ax.set(xlabel="spatial frequency [cycles/mm]", ylabel="NPS [HU$^2$ mm$^2$]",
           title=f"noise power spectrum in the {noise_organ.replace('_', ' ')} (axial patches)")
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no 24 mm patch fits inside the {noise_organ.replace('_', ' ')}", ha="center",
                transform=ax.transAxes, fontsize=8)
    ax.grid(alpha=0.3)
    for col, (phase, image) in enumerate(phase_slices.items()):
        ax = fig.add_subplot(grid[1, col])
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
        ax.set_title(f"phantom, {phase.replace('_', ' ')}", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[2, :])
    names = [name for name in real_stats if name in phantom_stats]
    for offset, stats, colour, label in ((-0.18, real_stats, "k", titles[0]), (0.18, phantom_stats, "tab:orange",
                                                                            titles[1])):
        for i, name in enumerate(names):
            st = stats[name]
            ax.plot([i + offset] * 2, [st["p5"], st["p95"]], color=colour, lw=1.5)
            ax.plot([i + offset], [st["median"]], "o", color=colour, ms=5, label=label if i == 0 else None)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="HU", title="HU per structure: median and 5th-95th percentile")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
