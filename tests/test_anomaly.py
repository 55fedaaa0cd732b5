"""Tests for coinlib.anomaly: the synthetic Gaussian-blob anomaly (paper App. 7.2, the authors' code)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.measure import regionprops

from coinlib.anomaly import (
    AnomalyParams,
    _distortion_knots,
    _grid_source,
    _render_box,
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

IMPLEMENTATION = AnomalyConfig()  # the default rule
CONTINUOUS = AnomalyConfig(rule="continuous")
BOTH = pytest.mark.parametrize("config", [IMPLEMENTATION, CONTINUOUS], ids=["implementation", "continuous"])


def kidneys(size: int, extra_blob: bool = False) -> np.ndarray:
    """(size, size) bool: two kidney ellipses (left larger), optionally a small third blob."""
    mask = np.zeros((size, size), bool)
    mask[ellipse(0.55 * size, 0.30 * size, 0.12 * size, 0.07 * size, shape=mask.shape)] = True
    mask[ellipse(0.55 * size, 0.70 * size, 0.10 * size, 0.06 * size, shape=mask.shape)] = True
    if extra_blob:
        mask[ellipse(0.20 * size, 0.50 * size, 0.05 * size, 0.05 * size, shape=mask.shape)] = True
    return mask


def one_large_one_small(size: int) -> np.ndarray:
    """(size, size) bool: a kidney ellipse and a small second component (box 15 x 15 px at 256)."""
    mask = np.zeros((size, size), bool)
    mask[ellipse(0.55 * size, 0.30 * size, 0.12 * size, 0.07 * size, shape=mask.shape)] = True
    mask[ellipse(0.55 * size, 0.70 * size, 0.03 * size, 0.03 * size, shape=mask.shape)] = True
    return mask


def draws(mask: np.ndarray, count: int, seed: int = 0, config: AnomalyConfig = CONTINUOUS) -> list[AnomalyParams]:
    rng = np.random.default_rng(seed)
    sites = find_sites(mask, config)
    return [draw_anomaly(mask, config, rng, sites) for _ in range(count)]


# ------------------------------------------------------------ the authors' statistics
#
# Measured from the authors' rule (their generator with albumentations 1.3.0, 1000 draws at
# 256 px; the authors' configs and code) and, for the continuous
# rule, measured from 1000 draws of its own. Each tolerance is 3 standard
# deviations of the difference between two independent 1000-draw estimates (ours and the
# quoted one), plus the quote's rounding:
# - mean area: sd of a mean 21.3 / sqrt(1000) = 0.67 px, of a difference 0.95 -> 3 px
#   (continuous: 15.9 / sqrt(1000) = 0.50 -> 2.1, plus 0.5 for the rounded "95" -> 3 px);
# - sd of the area: a sample sd of 1000 draws varies by 0.46 px (bootstrap) -> 2 px;
# - 95th-percentile aspect: varies by 0.020 over 1000 draws (bootstrap of the
#   implementation's draws) -> 0.085; the continuous rule's tail is narrow (0.006) -> 0.03;
# - label rate: binomial sd sqrt(p (1 - p) / 1000) = 0.015, of a difference 0.021 -> 0.06.
AUTHORS = {"mean_area": 84.6, "sd_area": 21.3, "aspect_p95": 1.34, "rate_one_small": 0.32, "rate": 0.65}
CONTINUOUS_QUOTED = {"mean_area": 95.0, "aspect_p95": 1.06, "rate_one_small": 0.63, "rate": 0.65}
DRAWS = 1000


def shape_statistics(config: AnomalyConfig) -> dict[str, float]:
    """Mean and sd of the mask area and the 95th-percentile aspect ratio, 1000 draws at 256 px."""
    mask = kidneys(256)
    areas, aspects = [], []
    for params in draws(mask, DRAWS, seed=0, config=config):
        lesion = _render_box(params, mask.shape, config)[2]
        (region,) = regionprops(lesion.astype(np.uint8))  # one blob: every pixel is in one component
        areas.append(region.area)
        aspects.append(region.axis_major_length / region.axis_minor_length)
    return {"mean_area": np.mean(areas), "sd_area": np.std(areas), "aspect_p95": np.percentile(aspects, 95)}


def label_rate(mask: np.ndarray, config: AnomalyConfig) -> float:
    rng = np.random.default_rng(1)
    sites = find_sites(mask, config)
    return float(np.mean([draw_slice_anomaly(mask, config, rng, sites)[0] for _ in range(DRAWS)]))


def test_implementation_rule_matches_the_authors_statistics():
    stats = shape_statistics(IMPLEMENTATION)
    assert stats["mean_area"] == pytest.approx(AUTHORS["mean_area"], abs=3.0)
    assert stats["sd_area"] == pytest.approx(AUTHORS["sd_area"], abs=2.0)
    assert stats["aspect_p95"] == pytest.approx(AUTHORS["aspect_p95"], abs=0.085)
    assert label_rate(one_large_one_small(256), IMPLEMENTATION) == pytest.approx(AUTHORS["rate_one_small"], abs=0.06)
    assert label_rate(kidneys(256), IMPLEMENTATION) == pytest.approx(AUTHORS["rate"], abs=0.06)


def test_continuous_rule_keeps_its_own_statistics():
    stats = shape_statistics(CONTINUOUS)
    assert stats["mean_area"] == pytest.approx(CONTINUOUS_QUOTED["mean_area"], abs=3.0)
    assert stats["aspect_p95"] == pytest.approx(CONTINUOUS_QUOTED["aspect_p95"], abs=0.03)
    rate = label_rate(one_large_one_small(256), CONTINUOUS)
    assert rate == pytest.approx(CONTINUOUS_QUOTED["rate_one_small"], abs=0.06)
    assert label_rate(kidneys(256), CONTINUOUS) == pytest.approx(CONTINUOUS_QUOTED["rate"], abs=0.06)


# ------------------------------------------------------------------ the template


def test_template_is_a_13px_disc_at_256():
    template, mask = make_template(CONTINUOUS)
    assert template.shape == (20, 20) and mask.shape == (20, 20)
    assert template.max() <= 1.0 and template.min() > 0.0
    diameter = mask[9].sum()  # a row through the centre
    assert 12 <= diameter <= 14
    assert np.array_equal(mask, mask.T) and np.array_equal(mask, mask[::-1])
    assert mask.sum() == 120  # grid points at half-pixel offsets from the centre


@pytest.mark.parametrize("size, expected", [(256, 20), (128, 10), (64, 5), (32, 3), (8, 3)])
def test_template_grid_scales_with_image_size(size, expected):
    assert template_pixels(CONTINUOUS, size) == expected
    assert template_half_width(CONTINUOUS, size) == pytest.approx(9.5 * size / 256)


# ----------------------------------------------------------- the implementation rule


def placed(mask_patch: np.ndarray, centre: tuple[int, int], size: int = 256) -> np.ndarray:
    """A (size, size) mask with ``mask_patch`` (k, k) pasted, its pixel k // 2 on ``centre``."""
    out = np.zeros((size, size), bool)
    k = mask_patch.shape[0]
    top, left = centre[0] - k // 2, centre[1] - k // 2
    out[top : top + k, left : left + k] = mask_patch
    return out


def test_implementation_scale_truncates_to_whole_template_pixels():
    template_mask = make_template(IMPLEMENTATION)[1]
    # s = 1: the 20 px template itself, its centre between pixels 9 and 10 of the patch
    full = render_anomaly(AnomalyParams(100, 100, 0, 1.0, 0.0, (), ()), (256, 256), IMPLEMENTATION)[1]
    np.testing.assert_array_equal(full, placed(template_mask, (100, 100)))
    # s = 0.87: int(17.4) = 17 px; OpenCV's nearest resize reads template pixel floor(p * 20 / 17)
    index = np.floor(np.arange(17) * 20 / 17).astype(int)
    for scale in (0.851, 0.87, 0.8999):
        small = render_anomaly(AnomalyParams(100, 100, 0, scale, 0.0, (), ()), (256, 256), IMPLEMENTATION)[1]
        np.testing.assert_array_equal(small, placed(template_mask[np.ix_(index, index)], (100, 100)))


def test_implementation_unnormalised_stretch_by_hand():
    # one step: output pixel q reads input q * f * k / (k - 1) on each axis, nearest neighbour
    np.testing.assert_allclose(_grid_source((1.2,), 20), np.linspace(0, 24, 20))
    # two cells of 9 // 2 = 4 px (0 -> 3.6, 3.6 -> 3.6 + 4.4), then the rest runs on to 9
    np.testing.assert_allclose(_grid_source((0.9, 1.1), 9), [0, 1.2, 2.4, 3.6, 3.6, 3.6 + 4.4 / 3, 3.6 + 8.8 / 3, 8, 8])
    template_mask = make_template(IMPLEMENTATION)[1]
    fx, fy = 1.15, 0.85
    cols = np.rint(np.arange(20) * fx * 20 / 19)
    rows = np.rint(np.arange(20) * fy * 20 / 19)
    expected = np.zeros((20, 20), bool)
    ok_r, ok_c = rows <= 19, cols <= 19
    expected[np.ix_(ok_r, ok_c)] = template_mask[np.ix_(rows[ok_r].astype(int), cols[ok_c].astype(int))]
    warped = render_anomaly(AnomalyParams(100, 100, 0, 1.0, 0.0, (fx,), (fy,)), (256, 256), IMPLEMENTATION)[1]
    np.testing.assert_array_equal(warped, placed(expected, (100, 100)))
    (region,) = regionprops(warped.astype(np.uint8))
    assert region.axis_major_length / region.axis_minor_length > 1.2  # an ellipse, taller than wide
    # stretched about the patch's first pixel: narrowed columns move left, widened rows down
    assert region.centroid[1] < 99.0 and region.centroid[0] > 100.0


def test_implementation_rotation_is_about_the_patch_centre():
    warped = AnomalyParams(100, 100, 0, 1.0, 0.0, (1.15,), (0.85,))
    turned = AnomalyParams(100, 100, 0, 1.0, 90.0, (1.15,), (0.85,))
    before = render_anomaly(warped, (256, 256), IMPLEMENTATION)[1][90:110, 90:110]
    after = render_anomaly(turned, (256, 256), IMPLEMENTATION)[1][90:110, 90:110]
    # a quarter turn maps the 20 x 20 patch's pixel grid onto itself about its centre (9.5, 9.5)
    assert np.array_equal(after, np.rot90(before, 1)) or np.array_equal(after, np.rot90(before, -1))
    assert not np.array_equal(after, before)


def test_implementation_scales_with_image_size():
    areas = {}
    for size in (256, 128):
        mask = kidneys(size)
        masks = [render_anomaly(p, mask.shape, IMPLEMENTATION)[1] for p in draws(mask, 300, config=IMPLEMENTATION)]
        areas[size] = np.mean([m.sum() for m in masks])
    assert areas[128] / areas[256] == pytest.approx(0.25, abs=0.03)


def test_implementation_draws_warp_and_rotation_each_half_the_time():
    params = draws(kidneys(256), 2000, config=IMPLEMENTATION)
    warped = np.array([len(p.distort_x) > 0 for p in params])
    rotated = np.array([p.rotation_deg != 0.0 for p in params])
    assert warped.mean() == pytest.approx(0.5, abs=0.04) and rotated.mean() == pytest.approx(0.5, abs=0.04)
    assert all(len(p.distort_x) == len(p.distort_y) == IMPLEMENTATION.distort_steps
               for p, w in zip(params, warped) if w)
    assert abs(np.corrcoef(warped, rotated)[0, 1]) < 0.1  # independent coins


def test_implementation_centres_lie_strictly_inside_the_contour_within_a_5_percent_margin():
    mask = np.zeros((256, 256), bool)
    mask[100:119, 50:90] = True  # 19 x 40: margins int(0.1 * 19 / 2) = 0 rows, int(0.1 * 40 / 2) = 2 cols
    mask[110, 70] = False  # a hole: inside the outer contour all the same
    mask[20:40, 200:220] = True  # second component, box exactly 400 px: too small
    big, small = find_sites(mask, IMPLEMENTATION)
    assert (big.component, small.component) == (0, 1) and len(small) == 0
    # strictly inside: off the border rows 100 and 118 (no margin there), then 2 columns of margin
    assert (big.rows.min(), big.rows.max(), big.cols.min(), big.cols.max()) == (101, 117, 52, 87)
    assert len(big) == 17 * 36 and (110, 70) in set(zip(big.rows.tolist(), big.cols.tolist()))
    results = [draw_anomaly(mask, IMPLEMENTATION, np.random.default_rng(s)) for s in range(400)]
    hosted = [p for p in results if p is not None]
    assert all(p.component == 0 and 101 <= p.center_row <= 117 and 52 <= p.center_col <= 87 for p in hosted)
    assert len(hosted) == pytest.approx(200, abs=40)  # the small component is picked half the time
    # at 128 px the bound is 400 / 4 = 100 px: a 10 x 10 box is still too small ...
    assert len(find_sites(mask[::2, ::2], IMPLEMENTATION)[1]) == 0
    mask[40, 200:220] = True  # ... and at 256 px one more row (420 px) is enough
    assert len(find_sites(mask, IMPLEMENTATION)[1]) > 0
    # an ellipse: every candidate's four neighbours are kidney, every kidney pixel that has
    # all four (inside the margins) is a candidate
    oval = np.zeros((256, 256), bool)
    oval[ellipse(128, 128, 30, 18, shape=oval.shape)] = True
    (site, ) = find_sites(oval, IMPLEMENTATION)
    r, c = site.rows, site.cols
    assert np.all(oval[r - 1, c] & oval[r + 1, c] & oval[r, c - 1] & oval[r, c + 1])
    inner = oval[1:-1, 1:-1] & oval[:-2, 1:-1] & oval[2:, 1:-1] & oval[1:-1, :-2] & oval[1:-1, 2:]
    rows, cols = np.nonzero(np.pad(inner, 1))
    # box rows 99..157 (59: margin int(2.95) = 2), cols 111..145 (35: margin int(1.75) = 1)
    keep = (rows >= 101) & (rows <= 155) & (cols >= 112) & (cols <= 144)
    assert set(zip(rows[keep].tolist(), cols[keep].tolist())) == set(zip(r.tolist(), c.tolist()))


def test_implementation_never_picks_beyond_the_two_largest_components():
    mask = kidneys(256, extra_blob=True)
    params = draws(mask, 300, config=IMPLEMENTATION)
    components = [p.component for p in params]
    assert set(components) == {0, 1} and 0.35 < np.mean(components) < 0.65
    assert all(mask[p.center_row, p.center_col] and p.center_row > 0.4 * 256 for p in params)  # blob at 0.2


# ----------------------------------------------------------------- the continuous rule


def test_distortion_knots_by_hand():
    # cells of equal destination width; source widths 2 * f / sum(f): 0.8 -> 0.8, 1.2 -> 1.2
    dest, source = _distortion_knots((0.8, 1.2))
    assert dest == [-1.0, 0.0, 1.0]
    assert source == pytest.approx([-1.0, -0.2, 1.0])
    assert _distortion_knots((1.0, 1.0))[1] == pytest.approx([-1.0, 0.0, 1.0])


def test_undistorted_unrotated_anomaly_is_the_template_disc():
    params = AnomalyParams(40, 40, 0, 1.0, 0.0, (1.0, 1.0), (1.0, 1.0))
    intensity, mask = render_anomaly(params, (256, 256), CONTINUOUS)
    crop = mask[30:51, 30:51]
    assert np.array_equal(crop, crop.T) and np.array_equal(crop, crop[::-1])
    assert intensity[40, 40] == pytest.approx(1.0)
    # radius where exp(-r^2 / (2 0.4^2)) = 0.25 is 0.666 template units = 6.33 px at 256
    radius = 0.4 * math.sqrt(2 * math.log(4)) * 9.5
    assert mask.sum() == pytest.approx(math.pi * radius**2, rel=0.1)
    # lopsided distortion: more of the blob on one side of the centre column
    skewed = AnomalyParams(40, 40, 0, 1.0, 0.0, (0.8, 1.2), (1.0, 1.0))
    left_right = render_anomaly(skewed, (256, 256), CONTINUOUS)[1]
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
        lesion = render_anomaly(params, mask.shape, CONTINUOUS)[1]
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
        masks = [render_anomaly(p, mask.shape, CONTINUOUS)[1] for p in draws(mask, 300)]
        areas[size] = np.array([m.sum() for m in masks])
    # disc of radius 6.33 px scaled by [0.75, 1]: about 71 .. 126 px^2 (+- distortion, pixels)
    assert 55 <= areas[256].min() and areas[256].max() <= 145
    assert 80 <= areas[256].mean() <= 110
    diameter = {s: 2 * np.sqrt(a.mean() / np.pi) for s, a in areas.items()}
    assert diameter[128] / diameter[256] == pytest.approx(0.5, abs=0.06)


def test_sites_are_the_component_pixels_inside_the_shrunk_box():
    mask = np.zeros((256, 256), bool)
    mask[100:150, 50:90] = True  # 50 x 40 kidney: 10 % margins are 5 rows and 4 columns
    mask[10:12, 10:12] = True  # a second, tiny component: not larger than the template
    (site,) = find_sites(mask, CONTINUOUS)
    assert site.component == 0 and len(site) == 40 * 32
    assert (site.rows.min(), site.rows.max()) == (105, 144)
    assert (site.cols.min(), site.cols.max()) == (54, 85)
    assert site.offsets.dtype == np.uint16
    centres = {(p.center_row, p.center_col) for p in draws(mask, 200)}
    assert all(105 <= r <= 144 and 54 <= c <= 85 for r, c in centres)
    assert len(centres) > 150  # spread over the candidates, not stuck on a few


# ----------------------------------------------------------------------- both rules


@BOTH
def test_intensity_added_on_01_scale_and_clipped(config):
    rng = np.random.default_rng(1)
    mask = kidneys(128)
    image = rng.uniform(-1.0, 0.5, mask.shape).astype(np.float32)
    for params in draws(mask, 20, seed=2, config=config):
        out, lesion = apply_anomaly(image, params, config)
        intensity, lesion2 = render_anomaly(params, mask.shape, config)
        assert out.dtype == np.float32 and lesion.dtype == bool
        assert np.array_equal(lesion, lesion2) and lesion.any()
        assert np.all(out[lesion] > image[lesion])
        untouched = intensity == 0
        assert np.array_equal(out[untouched], image[untouched])  # bit-identical outside
        expected = np.clip((image + 1) / 2 + config.alpha * intensity, 0, 1) * 2 - 1
        np.testing.assert_allclose(out, expected, atol=1e-6)
    bright = np.full(mask.shape, 0.9, np.float32)
    out, lesion = apply_anomaly(bright, params, config)
    assert out.max() == 1.0 and out.min() >= -1.0 and np.all(out[lesion] == 1.0)
    assert np.array_equal(bright, np.full(mask.shape, 0.9, np.float32))  # input not modified


@BOTH
def test_label_probability_is_p(config):
    mask = kidneys(64)
    rng = np.random.default_rng(3)
    sites = find_sites(mask, config)
    results = [draw_slice_anomaly(mask, config, rng, sites) for _ in range(3000)]
    statuses = [status for _, _, status in results]
    assert set(statuses) == {"anomaly", "normal"}
    assert np.mean([s == "anomaly" for s in statuses]) == pytest.approx(0.65, abs=0.03)
    for label, params, status in results:
        assert label == (status == "anomaly") and (params is not None) == (status == "anomaly")


@BOTH
def test_replay_from_json_is_identical(config):
    mask = kidneys(128)
    image = np.random.default_rng(4).uniform(-1, 1, mask.shape).astype(np.float32)
    for params in draws(mask, 8, seed=5, config=config):  # warped or not, rotated or not
        replayed = AnomalyParams.from_dict(json.loads(json.dumps(params.to_dict())))
        assert replayed == params
        out1, m1 = apply_anomaly(image, params, config)
        out2, m2 = apply_anomaly(image, replayed, config)
        assert np.array_equal(out1, out2) and np.array_equal(m1, m2)
    with pytest.raises(KeyError):
        AnomalyParams.from_dict({**params.to_dict(), "sigma": 0.4})


@BOTH
def test_same_seed_same_draws_other_seed_differs(config):
    mask = kidneys(64)
    assert draws(mask, 5, seed=7, config=config) == draws(mask, 5, seed=7, config=config)
    assert draws(mask, 5, seed=7, config=config) != draws(mask, 5, seed=8, config=config)


@BOTH
def test_unplaceable_slices_are_reported_not_mislabelled(config):
    tiny = np.zeros((256, 256), bool)
    tiny[100:112, 100:115] = True  # box 12 x 15 px: below the 20 px template and 400 px
    assert not can_host_anomaly(tiny, config)
    assert draw_anomaly(tiny, config, np.random.default_rng(0)) is None
    assert draw_anomaly(np.zeros((64, 64), bool), config, np.random.default_rng(0)) is None
    rng = np.random.default_rng(6)
    results = [draw_slice_anomaly(tiny, config, rng) for _ in range(1000)]
    assert all(label == 0 and params is None for label, params, _ in results)
    unplaceable = sum(status == "unplaceable" for _, _, status in results)
    assert unplaceable == pytest.approx(650, abs=60)  # every "anomaly" coin flip is counted
    # the same kidney, big enough once the sizes are judged at 128 px
    assert can_host_anomaly(tiny, config, image_size=128)
    assert can_host_anomaly(kidneys(64), config)
