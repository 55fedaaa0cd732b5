"""The Sec. 5 threshold protocol shared by every method, and the saliency scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coinlib.classifier import build_classifier, freeze
from coinlib.config import ClassifierConfig, EvalConfig, SaliencyConfig, get_profile
from coinlib.evaluate import evaluate_saliency_method, saliency_subset, score_maps
from coinlib.variants import ablation_budget


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return freeze(build_classifier(ClassifierConfig()))


@pytest.fixture
def tiny_profile():
    return get_profile("smoke")


def _blobs(n: int, radius: int, level: float, seed: int):
    """Maps whose lesion pixels sit at ``level`` and background rises towards 0.5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    truth = np.stack([(yy - 12) ** 2 + (xx - 12) ** 2 <= radius**2 for _ in range(n)])
    maps = rng.uniform(0.0, 0.3, truth.shape).astype(np.float32)
    maps[truth] = level
    return maps, truth


def test_threshold_is_chosen_on_validation_and_test_iou_reported_at_it():
    config = EvalConfig(sweep_points=101)
    val = _blobs(4, 5, 0.5, 0)  # background < 0.3, lesions at 0.5: any t in [0.3, 0.5) is perfect
    test = _blobs(4, 5, 0.35, 1)  # lesions only at 0.35 here: t from val may miss them
    out = score_maps(test, config, val, postprocess=False)["metrics"]
    assert 0.3 <= out["threshold_from_val"] < 0.5 and out["val_iou_at_it"] == pytest.approx(1.0)
    assert out["iou_best_on_test"] == pytest.approx(1.0) and 0.3 <= out["threshold_best_on_test"] < 0.35
    expected = 1.0 if out["threshold_from_val"] < 0.35 else 0.0
    assert out["iou"]["iou"] == pytest.approx(expected)
    assert out["postprocessed"] is False and out["abnormal_test_slices"] == 4


def test_without_validation_the_fixed_threshold_is_used():
    out = score_maps(_blobs(2, 4, 0.9, 0), EvalConfig(threshold=0.25), None, postprocess=True)["metrics"]
    assert "threshold_from_val" not in out and out["iou"] == out["iou_at_fixed"]


def test_the_morphology_of_the_eval_config_reaches_every_mask():
    # 4 x 4 lesions: the paper's radius-2 disk opening erases them, the implementation's 3 x 3 keeps them
    maps = np.zeros((2, 16, 16), np.float32)
    maps[:, 6:10, 6:10] = 0.9
    truth = maps > 0.5
    paper = score_maps((maps, truth), EvalConfig(), None, postprocess=True)["metrics"]
    code = score_maps((maps, truth), EvalConfig(morphology="implementation"), None, postprocess=True)["metrics"]
    assert paper["iou"]["iou"] == 0.0 and paper["iou_best_on_test"] == 0.0
    assert code["iou"]["iou"] == pytest.approx(1.0) and code["iou_best_on_test"] == pytest.approx(1.0)
    # the per-slice counts behind the intervals and the per-case table are those of the same masks
    assert sum(paper["per_slice"]["tp"]) == 0 and sum(code["per_slice"]["tp"]) == int(truth.sum())
    assert sum(code["per_slice"]["fp"]) == 0 and sum(code["per_slice"]["fn"]) == 0


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, labels):
        self._labels = np.asarray(labels)
        self.rows = np.arange(len(labels)) + 100

    def labels(self):
        return self._labels

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        truth = torch.zeros(1, 32, 32)
        truth[:, 8:16, 8:16] = float(self._labels[i])
        image = truth * 2 - 1
        return {"image": image, "lesion_mask": truth, "label": torch.tensor(float(self._labels[i])),
                "index": int(self.rows[i])}


def test_saliency_subset_spreads_over_the_abnormal_slices():
    data = _Labelled([0, 1, 1, 0, 1, 1, 1, 0, 1])
    assert saliency_subset(data, None) == [1, 2, 4, 5, 6, 8]
    assert saliency_subset(data, 3) == [1, 4, 8]  # positions 0, 2.5 -> 2 (round half to even), 5
    assert saliency_subset(data, 100) == [1, 2, 4, 5, 6, 8]


def test_a_saliency_method_is_scored_with_its_cost(tiny_model):
    data = _Labelled([1, 0, 1, 1])
    out = evaluate_saliency_method("rise", tiny_model, SaliencyConfig(rise_masks=8, rise_batch_size=8, max_images=2),
                                   EvalConfig(sweep_points=11), data, data)
    assert out["cost"]["forward_passes"] == 8 and out["cost"]["seconds_per_image"] > 0
    assert out["metrics"]["subset"] == {"test": 2, "val": 2, "max_images": 2}
    assert out["test_index"] == [100, 103] and len(out["sweep"]["test_iou"]) == 11
    assert out["metrics"]["postprocessed"] is False and "iou_postprocessed" in out["metrics"]


def test_ablation_budget_applies_only_when_it_differs(tiny_profile):
    from dataclasses import replace

    from coinlib.config import AblationConfig

    assert ablation_budget(replace(tiny_profile, ablation=AblationConfig())) is None
    shorter = ablation_budget(replace(tiny_profile, ablation=AblationConfig(steps=3, batch_size=2)))
    assert (shorter.train.steps, shorter.train.batch_size) == (3, 2)
    assert shorter.gan == tiny_profile.gan


def test_counterfactual_scores_read_only_the_abnormal_validation_slices(tiny_prepared, tiny_model):
    """evaluate_counterfactual generates validation counterfactuals for abnormal slices only;
    every metric must equal the one computed from the whole validation split."""
    from coinlib.config import AnomalyConfig, GANConfig
    from coinlib.counterfactual import generate_counterfactuals
    from coinlib.data import evaluation_set
    from coinlib.evaluate import evaluate_counterfactual, score_counterfactuals
    from coinlib.gan import build_gan

    gan = GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32))
    torch.manual_seed(0)
    generator, _ = build_gan(gan)
    anomaly, config = AnomalyConfig(), EvalConfig(sweep_points=21)
    test_set, val_set = evaluation_set(tiny_prepared, "test", anomaly), evaluation_set(tiny_prepared, "val", anomaly)
    assert 0 < val_set.labels().sum() < len(val_set)  # the split has both kinds of slice
    fast = evaluate_counterfactual(generator, tiny_model, gan, config, test_set, val_set, fid=False)
    full = score_counterfactuals(generate_counterfactuals(generator, tiny_model, test_set, gan),
                                 config, tiny_model, generate_counterfactuals(generator, tiny_model, val_set, gan),
                                 fid=False)
    np.testing.assert_equal(fast["metrics"], full["metrics"])  # NaN (no confident slice) equals NaN
    assert fast["sweep"] == full["sweep"]


def test_a_split_without_abnormal_slices_is_named_before_anything_is_generated(tiny_prepared, tiny_model):
    from coinlib.config import AnomalyConfig, GANConfig
    from coinlib.data import evaluation_set
    from coinlib.evaluate import evaluate_counterfactual
    from coinlib.gan import build_gan

    gan = GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32))
    generator, _ = build_gan(gan)
    test_set = evaluation_set(tiny_prepared, "test", AnomalyConfig())
    normal_val = torch.utils.data.Subset(evaluation_set(tiny_prepared, "val", AnomalyConfig()), [])
    normal_val.labels = lambda: np.zeros(0, int)  # e.g. an area rule that keeps no validation lesion
    with pytest.raises(ValueError, match="the validation split holds no abnormal slice"):
        evaluate_counterfactual(generator, tiny_model, gan, EvalConfig(), test_set, normal_val, fid=False)
