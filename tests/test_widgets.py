"""The notebooks' views: their maths by hand, the static figure, the live wiring, the detection."""

from __future__ import annotations

import types

import numpy as np
import pytest
from matplotlib.figure import Figure

from coinlib import widgets
from coinlib.config import EvalConfig
from coinlib.masks import weak_mask
from coinlib.metrics import iou_from_counts
from coinlib.widgets import rows_by_scan, set_iou, slice_score

NO_POSTPROCESS = EvalConfig(closing_radius=0, opening_radius=0)


def test_slice_score_counts_pixels_by_hand():
    diff = np.array([[0.9, 0.6, 0.1, 0.0],
                     [0.7, 0.2, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.8],
                     [0.0, 0.0, 0.0, 0.0]])
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 pixels: 0.9, 0.6, 0.7, 0.2
    score = slice_score(diff, truth, 0.5, postprocess=False)
    # > 0.5: 0.9, 0.6, 0.7 inside (TP 3), 0.8 outside (FP 1); 0.2 inside is missed (FN 1)
    assert (score.tp, score.fp, score.fn) == (3, 1, 1) and score.iou == pytest.approx(3 / 5)
    assert score.mask_pred.sum() == 4
    assert slice_score(diff, truth, 0.95, postprocess=False).iou == 0.0


def test_slice_score_post_processes_as_the_evaluation():
    rng = np.random.default_rng(0)
    diff = rng.uniform(0, 1, (24, 24))
    truth = np.zeros((24, 24), bool)
    truth[5:15, 6:16] = True
    score = slice_score(diff, truth, 0.6)
    assert np.array_equal(score.mask_pred, weak_mask(diff, 0.6, True, 2, 2))
    tp = int((score.mask_pred & truth).sum())
    assert score.tp == tp and score.fp == int(score.mask_pred.sum()) - tp and score.fn == int(truth.sum()) - tp


def test_slice_score_and_set_iou_follow_the_configs_morphology():
    # a 4 x 4 lesion: the paper's radius-2 opening erases it, the implementation's 3 x 3 keeps it
    diff = np.zeros((1, 16, 16))
    diff[0, 6:10, 6:10] = 0.9
    truth = diff > 0.5
    code = EvalConfig(morphology="implementation")
    assert slice_score(diff[0], truth[0], 0.5).iou == 0.0 and set_iou(diff, truth, 0.5) == 0.0
    assert slice_score(diff[0], truth[0], 0.5, code).iou == pytest.approx(1.0)
    assert set_iou(diff, truth, 0.5, code) == pytest.approx(1.0)


def test_set_iou_is_one_count_over_all_slices_not_a_mean():
    diff = np.zeros((2, 4, 4))
    truth = np.zeros((2, 4, 4), bool)
    truth[0, 0, :] = True  # slice 0: 4 true pixels, all found
    diff[0, 0, :] = 0.9
    truth[1, :, :3] = True  # slice 1: 12 true pixels, 3 found, 1 false positive
    diff[1, 0, :3] = 0.9
    diff[1, 3, 3] = 0.9
    # pooled: TP 4 + 3, FP 0 + 1, FN 0 + 9 -> 7 / 17; the mean of per-slice IoUs would be (1 + 3/13) / 2
    assert set_iou(diff, truth, 0.5, NO_POSTPROCESS, postprocess=False) == pytest.approx(7 / 17)
    assert iou_from_counts(7, 1, 9) == pytest.approx(7 / 17)
    assert set_iou(diff, truth, 0.5, NO_POSTPROCESS, postprocess=False) != pytest.approx((1 + 3 / 13) / 2)


def test_rows_by_scan_groups_and_orders_by_slice():
    groups = rows_by_scan(["b", "a", "b", "a", "b"], [7, 3, 2, 1, 5])
    assert list(groups) == ["b", "a"]  # order of first appearance
    assert groups == {"b": [2, 4, 0], "a": [3, 1]}
    with pytest.raises(ValueError, match="slice indices"):
        rows_by_scan(["a"], [1, 2])


def test_interactive_only_with_a_kernel_and_not_when_told_static(monkeypatch):
    import IPython

    monkeypatch.delenv(widgets.STATIC_ENV, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not widgets.widgets_interactive()  # plain Python: no kernel
    shell = types.SimpleNamespace(kernel=types.SimpleNamespace(comm_manager=object()))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert widgets.widgets_interactive()
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=None))  # terminal IPython
    assert not widgets.widgets_interactive()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setenv(widgets.STATIC_ENV, "1")  # papermill under coin reproduce
    assert not widgets.widgets_interactive()


@pytest.fixture(scope="module")
def slices():
    """Three 32 px slices: a bright square anomaly, and a counterfactual that removes most of it."""
    rng = np.random.default_rng(1)
    x = rng.normal(-0.2, 0.05, (3, 32, 32)).astype(np.float32)
    truth = np.zeros((3, 32, 32), bool)
    truth[:, 10:18, 12:20] = True
    x[truth] += 0.8
    x_cf = x.copy()
    x_cf[:, 10:18, 12:19] -= 0.8  # leaves the anomaly's last column: 8 false negatives per slice
    return x, x_cf, truth


def _title(fig: Figure) -> str:
    return fig._suptitle.get_text()


def test_threshold_slider_static_figure_and_live_threshold(slices):
    x, x_cf, truth = slices
    fig = widgets.threshold_slider(x, x_cf, truth, threshold=0.2, index=1, config=NO_POSTPROCESS,
                                   interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # 5 panels and the difference map's colour bar
    # every slice: 8 x 7 pixels found, the anomaly's last column (8) missed -> 56 / 64 alone and pooled
    assert _title(fig) == "slice 2 of 3: IoU 0.875; the set of 3 slices: IoU 0.875 at t = 0.20"
    assert "TP 56, FP 0, FN 8" in fig.axes[3].get_title()
    with_postprocessing = widgets.threshold_slider(x, x_cf, truth, threshold=0.2, index=1, interactive=False)
    score = slice_score(np.abs(x[1] - x_cf[1]) / 2, truth[1], 0.2)  # opening rounds the corners off
    assert score.tp < 56 and f"slice 2 of 3: IoU {score.iou:.3f}" in _title(with_postprocessing)

    box = widgets.threshold_slider(x, x_cf, truth, threshold=0.2, config=NO_POSTPROCESS, interactive=True)
    threshold, index = box.children[0].children
    assert box.figure is not fig and "at t = 0.20" in _title(box.figure)
    threshold.value = 0.5  # the change (0.4) is 0.4 on the [0, 1] scale: nothing passes 0.5
    assert "IoU 0.000" in _title(box.figure) and "at t = 0.50" in _title(box.figure)
    index.value = 2
    assert _title(box.figure).startswith("slice 3 of 3")


def test_slice_picker_spreads_static_slices_and_tracks_the_live_pick(slices):
    x, x_cf, truth = slices
    truth = truth.copy()
    truth[0] = False  # scan "a": slice 0 has no lesion, slice 1 has
    fig = widgets.slice_picker(x, ["a", "a", "b"], [4, 5, 9], truth, x_cf, interactive=False)
    assert len(fig.axes) == 3 * 2 + 2  # 3 rows x 2 scans, and 2 colour bars
    assert "scan a, slice 5" in fig.axes[0].get_title()  # scan a's largest lesion
    box = widgets.slice_picker(x, ["a", "a", "b"], [4, 5, 9], truth, x_cf, interactive=True)
    scan, slider = box.children[0].children
    assert box.position == 1  # the middle of scan a's two slices
    scan.value = "b"
    assert box.position == 2 and slider.max == 0 and "scan b" in _title(box.figure)


def test_compare_methods_scores_each_method_at_its_threshold(slices):
    x, x_cf, truth = slices
    maps = {"COIN": np.abs(x - x_cf) / 2, "RISE": truth.astype(float) * 0.7}
    fig = widgets.compare_methods(x, truth, maps, {"COIN": 0.2, "RISE": 0.6}, postprocess={"COIN"},
                                  config=NO_POSTPROCESS, interactive=False)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("COIN, t = 0.20\nIoU 0.875") for t in titles)  # 56 / (56 + 8)
    assert any(t.startswith("RISE, t = 0.60\nIoU 1.000") for t in titles)
    box = widgets.compare_methods(x, truth, maps, {"COIN": 0.2, "RISE": 0.6}, postprocess={"COIN"},
                                  config=NO_POSTPROCESS, interactive=True)
    controls = {c.description: c for c in box.children[0].children}
    controls["RISE"].value = 0.8
    assert any(t.startswith("RISE, t = 0.80\nIoU 0.000") for t in (ax.get_title() for ax in box.figure.axes))
    with pytest.raises(KeyError, match="RISE"):
        widgets.compare_methods(x, truth, maps, {"COIN": 0.2}, interactive=False)


def test_ablation_switch_loads_each_model_once_and_shows_all_when_static(slices):
    x, x_cf, truth = slices
    calls = []

    def load(name):
        calls.append(name)
        return x_cf if name == "coin" else x  # "no change": an empty mask

    fig = widgets.ablation_switch(x, truth, load, names=["coin", "coin_no_tv"], interactive=False)
    assert calls == ["coin", "coin_no_tv"] and len(fig.axes) == 2 * 4 + 2  # a row per model, 2 colour bars
    calls.clear()
    box = widgets.ablation_switch(x, truth, load, names=["coin", "coin_no_tv"], thresholds={"coin": 0.2,
                                  "coin_no_tv": 0.3}, config=NO_POSTPROCESS, interactive=True)
    assert calls == ["coin"]
    model, index = box.children[0].children
    model.value = "coin_no_tv"
    index.value = 1
    model.value = "coin"
    assert calls == ["coin", "coin_no_tv"]  # cached after the first load
    assert "IoU 0.875" in box.figure.axes[3].get_title() and "t = 0.20" in box.figure.axes[3].get_title()
    with pytest.raises(ValueError, match="names"):
        widgets.ablation_switch(x, truth, load, interactive=False)
