"""coinlib.image_quality: lesion CNR on hand-made slices, size bands, noise texture, HU stats."""

from __future__ import annotations

import numpy as np
import pytest

from coinlib import image_quality as Q


def _slice_with_lesion():
    """A 20x20 kidney at 0.5 with a 4x4 lesion at 0.0; the ring (2 px) alternates 0.4 / 0.6."""
    image = np.full((1, 40, 40), -1.0)
    kidney = np.zeros((1, 40, 40), np.uint8)
    lesion = np.zeros((1, 40, 40), np.uint8)
    kidney[0, 10:30, 10:30] = 1
    image[0, 10:30, 10:30] = 0.5
    image[0, 10:30, 10:30:2] = 0.4  # columns of 0.4 and 0.6: mean 0.5, std 0.1
    image[0, 10:30, 11:30:2] = 0.6
    lesion[0, 18:22, 18:22] = 1
    image[0, 18:22, 18:22] = 0.0
    return image, kidney, lesion


def test_lesion_cnr_by_hand():
    image, kidney, lesion = _slice_with_lesion()
    empty = np.zeros_like(lesion)  # a slice without lesion is left out
    r = Q.lesion_cnr(np.concatenate([image, image]), np.concatenate([kidney, kidney]),
                     np.concatenate([empty, lesion]), ring_px=2)
    assert r["index"].tolist() == [1] and r["area_px"].tolist() == [16.0]
    assert r["lesion_mean"][0] == pytest.approx(0.0)
    # the ring is the disc-dilated lesion minus the lesion, all inside the kidney
    assert r["background_mean"][0] == pytest.approx(0.5, abs=0.01)
    assert r["background_std"][0] == pytest.approx(0.1, abs=0.005)
    assert r["cnr"][0] == pytest.approx(5.0, rel=0.05)
    # outside the kidney nothing counts as background: NaN when the ring is empty
    none = Q.lesion_cnr(image, np.zeros_like(kidney), lesion)
    assert np.isnan(none["cnr"][0])
    with pytest.raises(ValueError, match="same"):
        Q.lesion_cnr(image, kidney[:, :20], lesion)


def test_cnr_by_size_bands():
    rows = Q.cnr_by_size([50, 60, 300, 5000, 120], [1.0, 3.0, 2.0, np.nan, 4.0], edges=(0, 100, 1000, np.inf))
    assert [r["band"] for r in rows] == ["0-100 mm2", "100-1000 mm2", ">= 1000 mm2"]
    assert [r["slices"] for r in rows] == [2, 2, 1] and [r["measured"] for r in rows] == [2, 2, 0]
    assert rows[0]["cnr_median"] == 2.0 and rows[1]["cnr_q1"] == 2.5 and np.isnan(rows[2]["cnr_median"])
    with pytest.raises(ValueError, match="increase"):
        Q.cnr_by_size([1], [1], edges=(0, 0))


def test_prepared_pixel_area():
    scan = {"shape": [40, 300, 300], "axial_axis": 0, "spacing_mm": [0.8, 0.8, 3.0]}
    assert Q.prepared_pixel_area_mm2(scan, 128) == pytest.approx(300 * 300 * 0.64 / 128 ** 2)


def test_noise_texture_of_white_and_correlated_noise():
    rng = np.random.default_rng(0)
    white = rng.normal(0, 10, (64, 64, 8))
    mask = np.ones(white.shape, bool)
    t = Q.noise_texture(white, mask, (1.0, 1.0, 1.0), patch_mm=16, erode=0)
    assert t["std"] == pytest.approx(10, rel=0.03) and abs(t["acf"][0]) < 0.05
    assert t["patches"] == 16 * 8
    # white noise: a flat NPS at variance x pixel area (ICRU 87)
    assert np.mean(t["nps"][1:]) == pytest.approx(100.0, rel=0.1)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(white, (1.5, 1.5, 0))
    s = Q.noise_texture(smooth, mask, (1.0, 1.0, 1.0), patch_mm=16, erode=0)
    assert s["acf"][0] > 0.7 and s["correlation_mm"] > t["correlation_mm"] + 1
    assert s["nps_mean_frequency"] < 0.6 * t["nps_mean_frequency"]  # coarser grain
    with pytest.raises(ValueError, match="erosion"):
        Q.noise_texture(white, np.zeros_like(mask), (1, 1, 1))


def test_hu_stats():
    volume = np.arange(27, dtype=float).reshape(3, 3, 3)
    mask = np.ones_like(volume, bool)
    stats = Q.hu_stats(volume, mask)
    assert stats["voxels"] == 27 and stats["median"] == 13 and stats["mean"] == 13
    assert Q.hu_stats(volume, mask, erode=1)["voxels"] == 1  # only the centre survives
    assert Q.hu_stats(volume, np.zeros_like(mask)) is None
