"""Tests for coinlib.anomaly: the synthetic Gaussian-blob anomaly (paper App. 7.2, FACTS)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.draw import ellipse

from coinlib.anomaly import (
    AnomalyParams,
    _distortion_knots,
    apply_anomaly,
    can_host_anomaly,
    draw_anomaly,
    draw_slice_anomaly,
    find_sites,
    make_template,
    render_anomaly,
    template_half_width,
    template_pixels,
)
from coinlib.config import AnomalyConfig

CONFIG = AnomalyConfig()


def kidneys(size: int, extra_blob: bool = False) -> np.ndarray:
    """(size, size) bool: two kidney ellipses (left larger), optionally a small third blob."""
    mask = np.zeros((size, size), bool)
    mask[ellipse(0.55 * size, 0.30 * size, 0.12 * size, 0.07 * size, shape=mask.shape)] = True
    mask[ellipse(0.55 * size, 0.70 * size, 0.10 * size, 0.06 * size, shape=mask.shape)] = True
    if extra_blob:
        mask[ellipse(0.20 * size, 0.50 * size, 0.05 * size, 0.05 * size, shape=mask.shape)] = True
    return mask


def draws(mask: np.ndarray, count: int, seed: int = 0) -> list[AnomalyParams]:
    rng = np.random.default_rng(seed)
    sites = find_sites(mask, CONFIG)
    return [draw_anomaly(mask, CONFIG, rng, sites) for _ in range(count)]


def test_template_is_a_13px_disc_at_256():
    template, mask = make_template(CONFIG)
    assert template.shape == (20, 20) and mask.shape == (20, 20)
    assert template.max() <= 1.0 and template.min() > 0.0
    diameter = mask[9].sum()  # a row through the centre
    assert 12 <= diameter <= 14
    assert np.array_equal(mask, mask.T) and np.array_equal(mask, mask[::-1])


@pytest.mark.parametrize("size, expected", [(256, 20), (128, 10), (64, 5), (32, 3), (8, 3)])
def test_template_grid_scales_with_image_size(size, expected):
    assert template_pixels(CONFIG, size) == expected
    assert template_half_width(CONFIG, size) == pytest.approx(9.5 * size / 256)


def test_distortion_knots_by_hand():
    # cells of equal destination width; source widths 2 * f / sum(f): 0.8 -> 0.8, 1.2 -> 1.2
    dest, source = _distortion_knots((0.8, 1.2))
    assert dest == [-1.0, 0.0, 1.0]
    assert source == pytest.approx([-1.0, -0.2, 1.0])
    assert _distortion_knots((1.0, 1.0))[1] == pytest.approx([-1.0, 0.0, 1.0])


def test_undistorted_unrotated_anomaly_is_the_template_disc():
    params = AnomalyParams(40, 40, 0, 1.0, 0.0, (1.0, 1.0), (1.0, 1.0))
    intensity, mask = render_anomaly(params, (256, 256), CONFIG)
    crop = mask[30:51, 30:51]
    assert np.array_equal(crop, crop.T) and np.array_equal(crop, crop[::-1])
    assert intensity[40, 40] == pytest.approx(1.0)
    # radius where exp(-r^2 / (2 0.4^2)) = 0.25 is 0.666 template units = 6.33 px at 256
    radius = 0.4 * math.sqrt(2 * math.log(4)) * 9.5
    assert mask.sum() == pytest.approx(math.pi * radius**2, rel=0.1)
    # lopsided distortion: more of the blob on one side of the centre column
    skewed = AnomalyParams(40, 40, 0, 1.0, 0.0, (0.8, 1.2), (1.0, 1.0))
    left_right = render_anomaly(skewed, (256, 256), CONFIG)[1]
    assert left_right[:, :40].sum() != left_right[:, 41:].sum()


def test_centre_in_kidney_within_margin_and_mask_mostly_in_bbox():
    mask = kidneys(256, extra_blob=True)
    two = kidneys(256)  # the same kidneys without the third blob, to measure their boxes
    labels = []
    inside = []
    for params in draws(mask, 300):
        assert mask[params.center_row, params.center_col]
        labels.append(params.component)
        side = slice(0, 128) if params.component == 0 else slice(128, 256)  # left is larger
        rr, cc = np.nonzero(two[:, side])
        cc = cc + side.start
        h, w = rr.max() - rr.min() + 1, cc.max() - cc.min() + 1
        assert rr.min() + 0.1 * h <= params.center_row <= rr.max() - 0.1 * h
        assert cc.min() + 0.1 * w <= params.center_col <= cc.max() - 0.1 * w
        lesion = render_anomaly(params, mask.shape, CONFIG)[1]
        box = np.zeros_like(mask)
        box[rr.min() : rr.max() + 1, cc.min() : cc.max() + 1] = True
        inside.append((lesion & box).sum() / lesion.sum())
    assert set(labels) == {0, 1}  # both kidneys host anomalies, the small third blob never
    assert 0.35 < np.mean(labels) < 0.65  # uniform among the two eligible components
    assert np.mean(inside) > 0.95 and min(inside) > 0.7


def test_size_distribution_at_256_and_half_at_128():
    areas = {}
    for size in (256, 128):
        mask = kidneys(size)
        masks = [render_anomaly(p, mask.shape, CONFIG)[1] for p in draws(mask, 300)]
        areas[size] = np.array([m.sum() for m in masks])
    # disc of radius 6.33 px scaled by [0.75, 1]: about 71 .. 126 px^2 (+- distortion, pixels)
    assert 55 <= areas[256].min() and areas[256].max() <= 145
    assert 80 <= areas[256].mean() <= 110
    diameter = {s: 2 * np.sqrt(a.mean() / np.pi) for s, a in areas.items()}
    assert diameter[128] / diameter[256] == pytest.approx(0.5, abs=0.06)


def test_intensity_added_on_01_scale_and_clipped():
    rng = np.random.default_rng(1)
    mask = kidneys(128)
    image = rng.uniform(-1.0, 0.5, mask.shape).astype(np.float32)
    for params in draws(mask, 20, seed=2):
        out, lesion = apply_anomaly(image, params, CONFIG)
        intensity, lesion2 = render_anomaly(params, mask.shape, CONFIG)
        assert out.dtype == np.float32 and lesion.dtype == bool
        assert np.array_equal(lesion, lesion2) and lesion.any()
        assert np.all(out[lesion] > image[lesion])
        untouched = intensity == 0
        assert np.array_equal(out[untouched], image[untouched])  # bit-identical outside
        expected = np.clip((image + 1) / 2 + CONFIG.alpha * intensity, 0, 1) * 2 - 1
        np.testing.assert_allclose(out, expected, atol=1e-6)
    bright = np.full(mask.shape, 0.9, np.float32)
    out, lesion = apply_anomaly(bright, params, CONFIG)
    assert out.max() == 1.0 and out.min() >= -1.0 and np.all(out[lesion] == 1.0)
    assert np.array_equal(bright, np.full(mask.shape, 0.9, np.float32))  # input not modified


def test_label_probability_is_p():
    mask = kidneys(64)
    rng = np.random.default_rng(3)
    sites = find_sites(mask, CONFIG)
    results = [draw_slice_anomaly(mask, CONFIG, rng, sites) for _ in range(3000)]
    statuses = [status for _, _, status in results]
    assert set(statuses) == {"anomaly", "normal"}
    assert np.mean([s == "anomaly" for s in statuses]) == pytest.approx(0.65, abs=0.03)
    for label, params, status in results:
        assert label == (status == "anomaly") and (params is not None) == (status == "anomaly")


def test_replay_from_json_is_identical():
    mask = kidneys(128)
    image = np.random.default_rng(4).uniform(-1, 1, mask.shape).astype(np.float32)
    params = draws(mask, 1, seed=5)[0]
    replayed = AnomalyParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert replayed == params
    out1, m1 = apply_anomaly(image, params, CONFIG)
    out2, m2 = apply_anomaly(image, replayed, CONFIG)
    assert np.array_equal(out1, out2) and np.array_equal(m1, m2)
    with pytest.raises(KeyError):
        AnomalyParams.from_dict({**params.to_dict(), "sigma": 0.4})


def test_same_seed_same_draws_other_seed_differs():
    mask = kidneys(64)
    assert draws(mask, 5, seed=7) == draws(mask, 5, seed=7)
    assert draws(mask, 5, seed=7) != draws(mask, 5, seed=8)


def test_unplaceable_slices_are_reported_not_mislabelled():
    tiny = np.zeros((256, 256), bool)
    tiny[100:112, 100:115] = True  # bbox 12 px high: not larger than the 20 px template
    assert find_sites(tiny, CONFIG) == [] and not can_host_anomaly(tiny, CONFIG)
    assert draw_anomaly(tiny, CONFIG, np.random.default_rng(0)) is None
    assert draw_anomaly(np.zeros((64, 64), bool), CONFIG, np.random.default_rng(0)) is None
    rng = np.random.default_rng(6)
    results = [draw_slice_anomaly(tiny, CONFIG, rng) for _ in range(1000)]
    assert all(label == 0 and params is None for label, params, _ in results)
    unplaceable = sum(status == "unplaceable" for _, _, status in results)
    assert unplaceable == pytest.approx(650, abs=60)  # every "anomaly" coin flip is counted
    # the same kidney, big enough at 256 px once the template is judged at 128 px (10 px)
    assert can_host_anomaly(tiny, CONFIG, image_size=128)
    assert can_host_anomaly(kidneys(64), CONFIG)


def test_sites_are_the_component_pixels_inside_the_shrunk_box():
    mask = np.zeros((256, 256), bool)
    mask[100:150, 50:90] = True  # 50 x 40 kidney: 10 % margins are 5 rows and 4 columns
    mask[10:12, 10:12] = True  # a second, tiny component: not larger than the template
    (site,) = find_sites(mask, CONFIG)
    assert site.component == 0 and len(site) == 40 * 32
    assert (site.rows.min(), site.rows.max()) == (105, 144)
    assert (site.cols.min(), site.cols.max()) == (54, 85)
    assert site.offsets.dtype == np.uint16
    centres = {(p.center_row, p.center_col) for p in draws(mask, 200)}
    assert all(105 <= r <= 144 and 54 <= c <= 85 for r, c in centres)
    assert len(centres) > 150  # spread over the candidates, not stuck on a few
