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
