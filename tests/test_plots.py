"""coinlib.plots: the outcome overlay by hand, and a palette colour-blind viewers can tell apart."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.figure import Figure
from skimage.color import rgb2lab

from coinlib.plots import (
    BODY_CAPTION,
    OUTCOME_CAPTION,
    OUTCOME_COLOURS,
    TRUTH_EDGE,
    counterfactual_panel,
    outcome_masks,
    outcome_rgba,
    method_grid,
    outline_truth,
    outside_window,
    sweep_curves,
    sweep_peak,
    variant_grid,
    window_note,
)

# Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB
DICHROMACY = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
    "typical": np.eye(3),
}


def test_outcome_overlay_by_hand():
    pred = np.array([[1, 1], [0, 0]], bool)
    true = np.array([[1, 0], [1, 0]], bool)
    outcomes = outcome_masks(pred, true)
    assert outcomes["tp"].tolist() == [[True, False], [False, False]]
    assert outcomes["fp"].tolist() == [[False, True], [False, False]]
    assert outcomes["fn"].tolist() == [[False, False], [True, False]]
    rgba = outcome_rgba(pred, true, alpha=0.5)
    assert np.allclose(rgba[0, 0], (*OUTCOME_COLOURS["tp"], 0.5)) and np.allclose(rgba[0, 1], (*OUTCOME_COLOURS["fp"], 0.5))
    assert np.allclose(rgba[1, 0], (*OUTCOME_COLOURS["fn"], 0.5)) and np.all(rgba[1, 1] == 0)  # TN: transparent


def _lab(rgb, matrix):
    rgb = np.asarray(rgb, float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    seen = np.clip(np.asarray(matrix) @ linear, 0, 1)
    srgb = np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)
    return rgb2lab(srgb[None, None])[0, 0]


def test_tp_fp_fn_stay_distinct_for_colour_blind_viewers():
    for vision, matrix in DICHROMACY.items():
        for a, b in itertools.combinations(("tp", "fp", "fn"), 2):
            delta_e = np.linalg.norm(_lab(OUTCOME_COLOURS[a], matrix) - _lab(OUTCOME_COLOURS[b], matrix))
            assert delta_e > 30, (vision, a, b, delta_e)  # CIELAB distance; ~2.3 is just noticeable
    assert "Okabe-Ito" in OUTCOME_CAPTION and all(word in OUTCOME_CAPTION for word in ("TP", "FP", "FN"))


def test_the_truth_outline_shows_on_a_white_blob_and_on_black_air():
    """Sky blue shows on black air and grey tissue, its black edge on a white synthetic blob; and
    the outline stays apart from TP, FP and FN for every viewer."""
    white, black = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    for vision, matrix in DICHROMACY.items():
        truth = _lab(OUTCOME_COLOURS["truth"], matrix)
        assert np.linalg.norm(truth - _lab(black, matrix)) > 30, vision
        assert np.linalg.norm(_lab(TRUTH_EDGE, matrix) - _lab(white, matrix)) > 90, vision
        for outcome in ("tp", "fp", "fn"):
            assert np.linalg.norm(truth - _lab(OUTCOME_COLOURS[outcome], matrix)) > 15, (vision, outcome)
    ax = Figure().subplots()
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    ax.imshow(np.where(mask, 1.0, -1.0), cmap="gray", vmin=-1, vmax=1)
    outline_truth(ax, mask)
    (contour,) = [c for c in ax.get_children() if hasattr(c, "get_path_effects") and c.get_path_effects()]
    edges = [e for e in contour.get_path_effects() if hasattr(e, "_gc")]
    assert any(e._gc.get("foreground") == TRUTH_EDGE for e in edges)
    outline_truth(ax, np.zeros((20, 20), bool))  # an empty mask draws nothing, and does not fail


def test_sweeps_draw_each_seed_and_name_the_mean_of_their_peaks():
    """Two seeds peaking at different thresholds: their mean curve tops at 0.45, the mean of
    their peaks (Table 1's best test IoU) is 0.6, and that is what the legend says."""
    thresholds = [0.1, 0.2, 0.3]
    per_seed = [[0.6, 0.3, 0.0], [0.0, 0.3, 0.6]]
    assert sweep_peak(per_seed) == 0.6 and float(np.max(np.mean(per_seed, axis=0))) == 0.3
    ax = Figure().subplots()
    sweep_curves({"COIN": {"thresholds": thresholds, "test_iou": per_seed, "chosen": [0.1, 0.3]}}, ax=ax)
    lines = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
    assert len(lines) == 2 and [list(line.get_ydata()) for line in lines] == per_seed
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["COIN (peak 0.60)"]
    assert lines[0].get_color() == lines[1].get_color()
    assert ax.get_ylim() == (0, 1)
    near_zero = Figure().subplots()  # the CAMs' curves, on an axis fitted to them
    sweep_curves({"CAM": {"thresholds": thresholds, "test_iou": [[0.01, 0.004, 0.0]]}}, ax=near_zero, ymax=None)
    assert near_zero.get_ylim() == (0, 0.02)
    sweep_curves({"CAM": {"thresholds": thresholds, "test_iou": [[0.04, 0.0, 0.0]]}}, ax=near_zero, ymax=None)
    assert near_zero.get_ylim()[1] == pytest.approx(0.046)


def test_every_ct_panel_can_say_its_window_in_hu():
    fig = Figure()
    caption = window_note(fig, {"p_low": -5.0, "p_high": 224.0, "percentiles": [0.5, 99.5]})
    assert caption == ("CT panels: model input, black = -5 HU, white = 224 HU (0.5th-99.5th percentiles of the "
                       "training scans' foreground); HU outside the window clipped")
    assert [t.get_text() for t in fig.texts] == [caption]


def test_a_zoomed_mask_panel_counts_the_false_positives_its_zoom_hides():
    truth = np.zeros((64, 64), bool)
    truth[30:34, 30:34] = True
    far = truth.copy()
    far[2:5, 2:5] = True  # 9 false-positive pixels far from the lesion (the spine, say)
    assert outside_window(far, truth, (slice(20, 44), slice(20, 44))) == 9
    assert outside_window(truth, truth, (slice(20, 44), slice(20, 44))) == 0
    example = {"image": np.zeros((64, 64)), "truth": truth, "maps": {"A": np.zeros((64, 64)), "B": np.zeros((64, 64))},
               "masks": {"A": far, "B": truth}}
    fig = method_grid([example], ["A", "B"], counterfactual=())
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert labels == ["+9 FP px off-window", "no FP off-window"]


def test_counterfactual_panels_outline_the_body_and_say_how_much_change_lies_outside_it():
    x = -np.ones((1, 32, 32), np.float32)
    body = np.zeros((1, 32, 32), bool)
    body[0, 8:24, 8:24] = True
    x[0][body[0]] = 0.0
    x_cf = x.copy()
    x_cf[0, 0:2, 0:8] += 1.0  # 16 px lifted in the air
    x_cf[0, 12:14, 12:20] += 0.5  # 16 px changed half as much inside the body
    arrays = {"x": x, "x_cf": x_cf, "lesion_mask": np.zeros_like(body), "body_mask": body}
    fig = counterfactual_panel(arrays, [0], threshold=0.2)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert labels == ["67% outside the body"]
    assert fig._supxlabel.get_text() == BODY_CAPTION
    grid = variant_grid(x, {"A": x_cf}, body=body)
    assert [ax.get_xlabel() for ax in grid.axes if ax.get_xlabel()] == ["67% outside the body"]
