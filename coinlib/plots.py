"""Plots the notebooks show: slice grids with mask overlays, outcome colours, curves.

Colours follow the paper's Fig. 2: true positive green, false positive red, false
negative yellow, ground truth white. Every function returns the matplotlib Figure and
never writes files; :func:`save_figure` writes PNG and PDF atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .files import atomic_path

__all__ = [
    "OUTCOME_COLOURS",
    "outcome_rgba",
    "mask_rgba",
    "show_grid",
    "save_figure",
    "counterfactual_panel",
    "training_curves",
    "sweep_curves",
    "method_grid",
    "variant_grid",
    "phase_hu_figure",
    "phantom_vs_real_figure",
]

OUTCOME_COLOURS = {"tp": (0.1, 0.85, 0.1), "fp": (0.95, 0.1, 0.1), "fn": (1.0, 0.9, 0.0), "truth": (1, 1, 1)}


def mask_rgba(mask: np.ndarray, colour: Sequence[float], alpha: float = 0.45) -> np.ndarray:
    """(H, W) bool -> (H, W, 4) float RGBA, transparent outside the mask."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask.astype(bool)] = (*colour, alpha)
    return rgba


def outcome_rgba(mask_pred: np.ndarray, mask_true: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W) RGBA of TP (green), FP (red) and FN (yellow) pixels (paper Fig. 2)."""
    pred, true = mask_pred.astype(bool), mask_true.astype(bool)
    rgba = np.zeros((*pred.shape, 4), dtype=np.float32)
    for key, where in (("tp", pred & true), ("fp", pred & ~true), ("fn", ~pred & true)):
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


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """Write ``path`` as PNG and its PDF sibling, each atomically; returns both paths."""
    path = Path(path).with_suffix(".png")
    written = []
    for target in (path, path.with_suffix(".pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        written.append(target)
    return written


def counterfactual_panel(
    arrays: dict[str, np.ndarray], picks: Sequence[int], threshold: float,
    closing_radius: int = 2, opening_radius: int = 2,
) -> plt.Figure:
    """Rows of x, x_cf, |x - x_cf|, weak mask (TP green, FP red, FN yellow) and the truth.

    ``arrays`` as returned by :func:`coinlib.counterfactual.generate_counterfactuals`;
    ``picks`` index into them. The weak mask is ``diff_map > threshold`` post-processed as
    in the paper (Sec. 5).
    """
    from .masks import difference_map, weak_mask

    rows, overlays = [], []
    for i in picks:
        x, x_cf, truth = arrays["x"][i], arrays["x_cf"][i], arrays["lesion_mask"][i]
        diff = difference_map(x, x_cf)
        pred = weak_mask(diff, threshold, True, closing_radius, opening_radius)
        rows.append([x, x_cf, diff * 2 - 1, x, np.where(truth, 1.0, -1.0)])
        overlays.append([None, None, None, outcome_rgba(pred, truth), None])
    titles = ["x", "x_cf", "|x - x_cf|", f"weak mask (t={threshold:.2f})", "true mask"]
    return show_grid(rows, col_titles=titles, overlays=overlays)


def sweep_curves(
    curves: dict[str, dict[str, Sequence[float]]],
    ax: plt.Axes | None = None,
    title: str = "",
) -> plt.Figure:
    """IoU against the binarisation threshold, one line per method (Sec. 5 sweep).

    ``curves[name]`` holds ``thresholds`` and ``test_iou`` (a results JSON's ``sweep``) and
    optionally ``chosen`` (the threshold from the validation split, drawn as a dot).
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 3.6))
    for name, curve in curves.items():
        (line,) = ax.plot(curve["thresholds"], curve["test_iou"], label=name, lw=1.4)
        if curve.get("chosen") is not None:
            t = float(curve["chosen"])
            ax.plot([t], [np.interp(t, curve["thresholds"], curve["test_iou"])], "o", color=line.get_color(), ms=4)
    ax.set(xlabel="threshold", ylabel="test IoU", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def method_grid(
    examples: Sequence[dict], methods: Sequence[str], example_titles: Sequence[str] | None = None
) -> plt.Figure:
    """The paper's Fig. 2: per example slice, a row of maps and a row of thresholded masks.

    ``examples[i]`` holds ``image`` (H, W) in [-1, 1], ``truth`` (H, W) bool and, per method
    name, ``maps[name]`` (H, W) in [0, 1] and ``masks[name]`` (H, W) bool. Masks are drawn
    TP green, FP red, FN yellow; the last column is the ground truth in white.
    """
    rows, overlays, titles = [], [], []
    for i, ex in enumerate(examples):
        label = example_titles[i] if example_titles else f"slice {i}"
        rows.append([ex["image"], *[ex["maps"][m] * 2 - 1 for m in methods], None])
        overlays.append([None] * (len(methods) + 2))
        rows.append([ex["image"], *[ex["image"] for _ in methods], np.where(ex["truth"], 1.0, -1.0)])
        overlays.append([None, *[outcome_rgba(ex["masks"][m], ex["truth"]) for m in methods], None])
        titles += [f"{label}: map", f"{label}: mask"]
    return show_grid(rows, row_titles=titles, col_titles=["x", *methods, "ground truth"], overlays=overlays)


def variant_grid(
    x: np.ndarray, counterfactuals: dict[str, np.ndarray], truth: np.ndarray | None = None
) -> plt.Figure:
    """Counterfactuals of several variants for the same slices (Appendix A, Figs. 4-6).

    ``x`` (N, H, W) in [-1, 1]; ``counterfactuals[name]`` (N, H, W) the variant's x_cf.
    Per slice: x, then for each variant its x_cf and |x - x_cf| (the weak map), and the
    true mask when given.
    """
    from .masks import difference_map

    rows, titles = [], ["x"]
    for name in counterfactuals:
        titles += [f"{name}: x_cf", f"{name}: |x - x_cf|"]
    if truth is not None:
        titles.append("true mask")
    for i in range(len(x)):
        row = [x[i]]
        for x_cf in counterfactuals.values():
            row += [x_cf[i], difference_map(x[i], x_cf[i]) * 2 - 1]
        if truth is not None:
            row.append(np.where(truth[i], 1.0, -1.0))
        rows.append(row)
    return show_grid(rows, col_titles=titles)


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
