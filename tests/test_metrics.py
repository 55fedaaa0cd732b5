"""coinlib.metrics: IoU (Eq. 8), CV, threshold sweeps, Frechet distance (Eq. 7), FID."""

import os
import warnings

import numpy as np
import pytest
import torch
from pytorch_fid import inception as fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance

from coinlib import metrics
from coinlib.masks import weak_mask
from coinlib.metrics import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    FIDWeightsUnavailable,
    IoUAccumulator,
    best_threshold,
    classifier_frechet_distance,
    compute_fid_or_reason,
    confusion_counts,
    counterfactual_validity,
    fid_weights_path,
    frechet_distance,
    frechet_distance_from_features,
    grouped_iou,
    inception_features,
    iou_from_counts,
    mask_location,
    sweep_thresholds,
    threshold_sweep,
)

# ------------------------------------------------------------------------------- IoU


def test_confusion_counts_and_iou_on_a_2x2_case():
    pred = np.array([[1, 1], [0, 0]], dtype=bool)
    true = np.array([[1, 0], [1, 0]], dtype=bool)
    assert confusion_counts(pred, true) == (1, 1, 1)
    assert iou_from_counts(1, 1, 1) == pytest.approx(1 / 3)
    batch = torch.from_numpy(pred)[None, None], torch.from_numpy(true)[None, None]  # (1, 1, 2, 2)
    assert confusion_counts(*batch) == (1, 1, 1)


def test_iou_of_empty_prediction_and_truth_is_the_documented_value():
    assert iou_from_counts(0, 0, 0) == 1.0
    assert np.isnan(iou_from_counts(0, 0, 0, empty=np.nan))
    per_image = iou_from_counts(np.array([2, 0]), np.array([2, 0]), np.array([0, 0]))
    np.testing.assert_allclose(per_image, [0.5, 1.0])


def test_accumulated_iou_differs_from_the_mean_of_per_image_ious():
    # Image 1 (3x3): truth = prediction = one pixel -> IoU 1.
    # Image 2 (3x3): truth 3 pixels, prediction 1 of them -> IoU 1/3.
    pred = np.zeros((2, 1, 3, 3), dtype=bool)
    true = np.zeros((2, 1, 3, 3), dtype=bool)
    pred[0, 0, 1, 1] = true[0, 0, 1, 1] = True
    true[1, 0, 0, :] = True
    pred[1, 0, 0, 0] = True
    acc = IoUAccumulator()
    assert np.isnan(acc.iou()) and np.isnan(acc.mean_per_image_iou())
    acc.update(pred[:1], true[:1])
    acc.update(torch.from_numpy(pred[1:]), torch.from_numpy(true[1:]))
    result = acc.compute()
    assert result["iou"] == pytest.approx(2 / 4)  # TP 2, FP 0, FN 2 over both images
    assert result["mean_per_image_iou"] == pytest.approx((1 + 1 / 3) / 2)
    assert (result["n_images"], result["tp"], result["fp"], result["fn"]) == (2, 2, 0, 2)
    acc.reset()
    assert acc.n_images == 0


def test_grouped_iou_sums_counts_per_group_and_weights_by_lesion_share():
    # case a: two slices (TP 3 FP 1 FN 0, TP 1 FP 0 FN 3) -> 4 / 8; case b: one slice missed (FN 8)
    rows = grouped_iou(["a", "b", "a"], tp=[3, 0, 1], fp=[1, 0, 0], fn=[0, 8, 3])
    assert list(rows) == ["a", "b"]
    assert rows["a"] == {"tp": 4, "fp": 1, "fn": 3, "slices": 2, "iou": pytest.approx(0.5), "share": 7 / 15}
    assert rows["b"]["iou"] == 0.0 and rows["b"]["share"] == pytest.approx(8 / 15)
    # the groups' counts add up to the accumulated IoU of every slice
    total = {k: sum(r[k] for r in rows.values()) for k in ("tp", "fp", "fn")}
    assert iou_from_counts(**total) == pytest.approx(4 / 16)
    with pytest.raises(ValueError, match="one entry per slice"):
        grouped_iou(["a"], tp=[1, 2], fp=[0, 0], fn=[0, 0])


def test_mask_location_splits_predicted_pixels_into_lesion_organ_and_elsewhere():
    # one 6x6 slice: lesion 2x2, kidney 4x4 around it; the mask covers the lesion's top row (2),
    # 4 kidney pixels outside the lesion, 2 pixels outside the kidney
    lesion = np.zeros((1, 6, 6), bool)
    lesion[0, 2:4, 2:4] = True
    kidney = np.zeros_like(lesion)
    kidney[0, 1:5, 1:5] = True
    pred = np.zeros_like(lesion)
    pred[0, 2, 2:4] = True
    pred[0, 1, 1:5] = True
    pred[0, 5, 0:2] = True
    where = mask_location(pred, lesion, kidney)
    assert where == {"on_lesion": 0.25, "on_organ": 0.5, "elsewhere": 0.25, "recall": 0.5,
                     "predicted": 8, "lesion": 4}
    # summed over the stack: an empty second slice changes nothing, a second mask adds its pixels
    assert mask_location(np.concatenate([pred, np.zeros_like(pred)]), np.concatenate([lesion, lesion]),
                         np.concatenate([kidney, kidney]))["recall"] == 0.25
    assert np.isnan(mask_location(np.zeros_like(pred), lesion, kidney)["on_lesion"])
    with pytest.raises(ValueError, match="one shape"):
        mask_location(pred, lesion, kidney[0, :5])


# ------------------------------------------------------------------------------- CV


def test_counterfactual_validity_by_hand():
    p_x = np.array([0.95, 0.9, 0.85, 0.5, 0.1])
    p_x_cf = np.array([0.05, 0.5, 0.0, 0.0, 0.9])
    # Qualifying (f(x) > 0.8): the first three; flips > 0.8: 0.90 and 0.85 -> 2 of 3.
    cv, n = counterfactual_validity(p_x, p_x_cf, tau=0.8)
    assert (cv, n) == (pytest.approx(2 / 3), 3)
    cv, n = counterfactual_validity(torch.tensor(p_x)[:, None], torch.tensor(p_x_cf)[:, None])
    assert (cv, n) == (pytest.approx(2 / 3), 3)


def test_counterfactual_validity_without_a_qualifying_slice_is_nan():
    cv, n = counterfactual_validity(np.array([0.8, 0.3]), np.array([0.0, 0.0]), tau=0.8)
    assert np.isnan(cv) and n == 0


# -------------------------------------------------------------------- threshold sweep


def _blob_maps(n=6, size=24, seed=0):
    """Maps falling off linearly from each blob's centre; truth = disk of radius 5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps, truth = [], []
    for _ in range(n):
        cy, cx = rng.integers(8, size - 8, size=2)
        dist = np.hypot(yy - cy, xx - cx)
        maps.append(np.clip(1 - dist / 10, 0, 1) + rng.uniform(0, 0.02, size=(size, size)))
        truth.append(dist <= 5)
    return np.clip(np.stack(maps), 0, 1).astype(np.float32)[:, None], np.stack(truth)[:, None]


@pytest.mark.parametrize("postprocess, morphology", [(False, "paper"), (True, "paper"), (True, "implementation")])
def test_threshold_sweep_equals_thresholding_each_image(postprocess, morphology):
    maps, truth = _blob_maps()
    thresholds = np.linspace(0, 1, 11)
    ious = threshold_sweep(maps, truth, thresholds, postprocess=postprocess, morphology=morphology)
    for t, iou in zip(thresholds, ious):
        acc = IoUAccumulator()
        acc.update(weak_mask(maps, float(t), postprocess=postprocess, morphology=morphology), truth)
        assert iou == pytest.approx(acc.iou())


def test_threshold_sweep_rises_to_the_blob_boundary_then_falls():
    maps, truth = _blob_maps()
    thresholds = sweep_thresholds(101)
    ious = threshold_sweep(torch.from_numpy(maps), torch.from_numpy(truth), thresholds)
    assert ious.shape == (101,)
    t_best, iou_best = best_threshold(thresholds, ious)
    assert 0.45 <= t_best <= 0.55 and iou_best > 0.9  # truth is where 1 - dist / 10 >= 0.5
    k = int(np.argmax(ious))
    assert (np.diff(ious[: k + 1]) >= -1e-12).all() and (np.diff(ious[k:]) <= 1e-12).all()
    assert ious[-1] == 0.0  # nothing exceeds 1
    assert ious[0] == pytest.approx(truth.sum() / truth.size, rel=0.05)  # ~everything > 0


# ------------------------------------------------------------------ Frechet distance


def test_frechet_distance_closed_forms():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 with standard deviations s: 1 + (2 - 1)^2.
    one_d = frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]]))
    assert one_d == pytest.approx(2.0)
    # Diagonal: sum over dims of (mu1 - mu2)^2 + (sqrt(v1) - sqrt(v2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)
    # A common rotation changes nothing.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert rotated == pytest.approx(expected)


def test_frechet_distance_agrees_with_pytorch_fid():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.3
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False) on SciPy >= 1.16
        reference = calculate_frechet_distance(*stats)
    assert frechet_distance(*stats) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance_from_features(a, b) == pytest.approx(reference, rel=1e-9)


def test_frechet_distance_from_features_shift_and_singular_covariances():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(4, 32))  # fewer samples than dims: rank-3 covariance
    shift = rng.normal(size=32)
    assert abs(frechet_distance_from_features(feats, feats)) < 1e-10
    assert frechet_distance_from_features(feats, feats + shift) == pytest.approx(shift @ shift)
    assert classifier_frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift)
    with pytest.raises(ValueError):
        frechet_distance_from_features(feats[:1], feats)


# ------------------------------------------------------------------------------- FID


@pytest.fixture(scope="module")
def fid_setup(tmp_path_factory):
    """FID Inception weights made here (random, conv weights He-scaled so features are
    O(1)), placed in a fresh torch hub cache; the extractor is built from that cache with
    every download path disabled."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    weights = torch_home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = metrics._fid_inception_v3_architecture()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), weights)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.setattr(torch.hub, "load_state_dict_from_url", no_download)
        mp.setattr(fid_inception, "load_state_dict_from_url", no_download)
        assert fid_weights_path() == weights
        extractor = metrics.inception_feature_extractor(dims=768)
    return weights, extractor


def test_fid_weights_are_found_at_weights_path_file_or_folder(fid_setup):
    weights, _ = fid_setup
    assert fid_weights_path(weights) == weights
    assert fid_weights_path(weights.parent) == weights


def test_fid_of_a_set_with_itself_is_zero_and_of_different_sets_positive(fid_setup):
    _, extractor = fid_setup
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 32, 32, generator=g)  # 2 < 768 samples: singular covariances
    b = (torch.rand(2, 1, 32, 32, generator=g) * 0.5).numpy()
    # Inception on CPU costs ~1 s per image here: 6 forward passes in all.
    feats_a = inception_features(a, extractor)
    assert feats_a.shape == (2, 768) and np.isfinite(feats_a).all()
    assert abs(frechet_distance_from_features(feats_a, feats_a)) < 1e-9  # FID(a, a)
    value, message = compute_fid_or_reason(a, b, extractor=extractor, batch_size=1)
    assert value > 1e-3 and message.startswith("FID (768-d")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(a * 2 - 1, extractor)


def test_fid_unavailable_says_how_to_provide_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    value, message = compute_fid_or_reason(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    assert value is None and message.startswith("FID unavailable: ")
    hub_file = os.path.join(str(tmp_path), "hub", "checkpoints", FID_WEIGHTS_FILE)
    for needed in (FID_WEIGHTS_FILE, FID_WEIGHTS_URL, hub_file, "EvalConfig.fid_weights"):
        assert needed in message
    with pytest.raises(FIDWeightsUnavailable, match="missing.pth"):
        fid_weights_path(tmp_path / "missing.pth")
