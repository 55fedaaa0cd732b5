"""coinlib.real_scan: f and COIN on a real scan's kidney slices, clean and with synthetic anomalies.

Stand-in models make the expected numbers known: a "classifier" that reads the brightest pixel
(the anomaly brightens the kidney, App. 7.2) and an "inpainter" that clips every pixel to the
kidney's intensity, so |x - x_cf| is the added blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.draw import ellipse
from torch import nn

from coinlib.config import AnomalyConfig
from coinlib.label import LabelModel
from coinlib.volumes import canonical, load_canonical
from coinlib.real_scan import kidney_slices, score_real_scan

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "real_ct" / "totalsegmentator" / "s0000"
KIDNEY_HU, P_LOW, P_HIGH = 40.0, -100.0, 300.0  # kidney at x = -0.3 on [-1, 1] (0.35 on [0, 1])


class Brightest(nn.Module):
    """Logit = 40 (max(x) - level): abnormal once anything is brighter than ``level``."""

    def __init__(self, level: float, sign: float = 1.0):
        super().__init__()
        self.level, self.sign = level, sign

    def forward(self, x):
        return self.sign * 40.0 * (x.amax(dim=(1, 2, 3)) - self.level)


class ClipTo(nn.Module):
    """x_cf = min(x, level): removes whatever was added above the tissue."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x, condition):
        return x.clamp(max=self.level)


def stand_in(classifier: nn.Module, size: int = 64, mask_threshold: float = 0.25) -> LabelModel:
    level = (KIDNEY_HU - P_LOW) / (P_HIGH - P_LOW) * 2 - 1
    return LabelModel(
        classifier=classifier, generator=ClipTo(level + 0.01), image_size=size, p_low=P_LOW, p_high=P_HIGH,
        classifier_threshold=0.5, mask_threshold=mask_threshold, threshold_source="test", closing_radius=0,
        opening_radius=0, device=torch.device("cpu"), settings={}, min_kidney_pixels=32,
    )


@pytest.fixture(scope="module")
def volume_and_kidney():
    """A flat soft-tissue volume (40 HU) with two elliptic kidneys on canonical slices 2..9 of 12."""
    shape = (80, 72, 12)
    kidney = np.zeros(shape, bool)
    for centre in (22, 58):
        rows, cols = ellipse(centre, 36, 9, 6, shape=shape[:2])
        kidney[rows, cols, 2:10] = True
    kidney[:3, :3, 10] = True  # 9 pixels: below the 32 of Sec. 4.3, not a kidney slice
    hu = np.full(shape, KIDNEY_HU, dtype=np.int16)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    return canonical(hu, affine, Path("flat.nii.gz")), kidney


def test_kidney_slices_are_the_training_rule_and_coin_labels_input(volume_and_kidney):
    volume, kidney = volume_and_kidney
    model = stand_in(Brightest(0.0))
    z, x, small = kidney_slices(volume, kidney, model)
    assert z.tolist() == list(range(2, 10))
    assert x.shape == small.shape == (8, 64, 64) and np.allclose(x, -0.3, atol=1e-6)
    assert small.any(axis=(1, 2)).all()


def test_a_perfect_stand_in_scores_auc_1_and_a_high_iou(volume_and_kidney):
    volume, kidney = volume_and_kidney
    anomaly = AnomalyConfig(probability=0.5)
    model = stand_in(Brightest(-0.2))  # tissue is -0.3: brighter means an anomaly
    check = score_real_scan(model, volume, kidney, anomaly, seed=3)
    m = check.metrics
    assert m["kidney_slices"] == 8 and m["false_positive_slices"] == 0 and m["false_positive_rate"] == 0.0
    assert 0 < m["anomaly_slices"] < 8 and m["unplaceable_slices"] == 0
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["true_positive_rate"] == 1.0
    # the weak mask is the blob's intensity > threshold, the true mask the rendered template's level set:
    # they agree up to the rendering (closer for the continuous rule than for the authors'), not exactly
    assert m["iou"]["iou"] > 0.6 and m["iou"]["n_images"] == m["anomaly_slices"]
    assert m["iou_flagged_only"]["iou"] == m["iou"]["iou"]  # f flags every anomaly slice
    assert check.mask_true[check.label == 1].any(axis=(1, 2)).all()
    assert not check.mask_pred[check.label == 0].any()
    # the same seed draws the same anomalies; another seed others
    again = score_real_scan(model, volume, kidney, anomaly, seed=3)
    assert np.array_equal(again.x_anomaly, check.x_anomaly) and again.metrics == m
    other = score_real_scan(model, volume, kidney, anomaly, seed=4)
    assert not np.array_equal(other.mask_true, check.mask_true)


def test_an_inverted_classifier_scores_auc_0_and_misses_every_slice(volume_and_kidney):
    volume, kidney = volume_and_kidney
    model = stand_in(Brightest(-0.2, sign=-1.0))  # calls every clean slice abnormal, every anomaly normal
    m = score_real_scan(model, volume, kidney, AnomalyConfig(probability=0.5), seed=3).metrics
    assert m["auc"] == 0.0 and m["false_positive_slices"] == 8 and m["true_positive_rate"] == 0.0
    assert m["iou"]["iou"] > 0.6 and m["iou_flagged_only"]["iou"] == 0.0  # coin label never inpaints them


def test_no_anomaly_slices_give_nan_not_a_number_made_up(volume_and_kidney):
    volume, kidney = volume_and_kidney
    m = score_real_scan(stand_in(Brightest(-0.2)), volume, kidney, AnomalyConfig(probability=0.0)).metrics
    assert m["anomaly_slices"] == 0 and np.isnan(m["auc"]) and np.isnan(m["iou"]["iou"])


def test_runs_on_the_bundled_real_subject():
    volume = load_canonical(SAMPLES / "ct.nii.gz")
    kidney = np.zeros(volume.data.shape, bool)
    for name in ("kidney_left", "kidney_right"):
        kidney |= load_canonical(SAMPLES / "segmentations" / f"{name}.nii.gz").data > 0
    check = score_real_scan(stand_in(Brightest(0.6), size=32), volume, kidney, AnomalyConfig())
    m = check.metrics
    assert m["kidney_slices"] == 21 == len(check.slice_index)  # the sample README's count
    assert 0 < m["anomaly_slices"] + m["unplaceable_slices"] <= 21 and check.x.shape == (21, 32, 32)
