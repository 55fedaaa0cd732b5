"""Scoring a trained counterfactual GAN: weak masks, IoU, CV, FID (paper Sec. 4.2, 5).

Protocol (FACTS "Evaluation"):

- weak mask = ``diff_map > threshold`` with ``diff_map = |x - x_cf|`` on the [0, 1] scale,
  then closing, opening and the largest connected component;
- IoU over all abnormal (label 1) test slices from one TP/FP/FN count (Eq. 8); the mean
  per-image IoU is reported beside it, labelled as such;
- CV with tau = 0.8 over slices with f(x) > tau;
- FID (Eq. 7) with pytorch-fid's 768-d Inception features between ALL test images and
  their counterfactuals; when the Inception weights are absent the result says how to
  provide them and the run goes on. Beside it, always, the Frechet distance in the frozen
  classifier's feature space (named ``classifier_fd``, never called FID).

The threshold is reported twice: the fixed ``EvalConfig.threshold`` and the one chosen on
the validation split by a sweep (Sec. 5); the best threshold on the test split itself is
given too, labelled as such, because the paper reports that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .classifier import classifier_features
from .config import EvalConfig, GANConfig
from .counterfactual import generate_counterfactuals
from .masks import difference_map, weak_mask
from .metrics import (
    IoUAccumulator,
    best_threshold,
    classifier_frechet_distance,
    compute_fid_or_reason,
    counterfactual_validity,
    sweep_thresholds,
    threshold_sweep,
)

__all__ = ["score_counterfactuals", "iou_at", "sweep", "evaluate_counterfactual", "quick_validation"]


def iou_at(arrays: dict[str, np.ndarray], threshold: float, config: EvalConfig) -> dict[str, float]:
    """IoU (accumulated and mean per image) of the weak masks at ``threshold`` (abnormal slices)."""
    abnormal = arrays["label"] > 0.5
    diff = difference_map(arrays["x"][abnormal], arrays["x_cf"][abnormal])
    accumulator = IoUAccumulator()
    if abnormal.any():
        accumulator.update(
            weak_mask(diff, threshold, True, config.closing_radius, config.opening_radius),
            arrays["lesion_mask"][abnormal],
        )
    return accumulator.compute()


def sweep(arrays: dict[str, np.ndarray], config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, IoUs) over ``config.sweep_points`` thresholds in [0, 1], post-processed."""
    abnormal = arrays["label"] > 0.5
    thresholds = sweep_thresholds(config.sweep_points)
    diff = difference_map(arrays["x"][abnormal], arrays["x_cf"][abnormal])
    ious = threshold_sweep(diff, arrays["lesion_mask"][abnormal], thresholds, postprocess=True,
                           closing_radius=config.closing_radius, opening_radius=config.opening_radius)
    return thresholds, ious


@torch.no_grad()
def _features(classifier: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    chunks = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).unsqueeze(1).to(device)
        chunks.append(classifier_features(classifier, x).float().cpu())
    return torch.cat(chunks).numpy()


def score_counterfactuals(
    test: dict[str, np.ndarray],
    config: EvalConfig,
    classifier: nn.Module,
    val: dict[str, np.ndarray] | None = None,
    fid: bool = True,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """All metrics of one method from the arrays of :func:`generate_counterfactuals`."""
    device = device or next(classifier.parameters()).device
    thresholds, test_ious = sweep(test, config)
    best_t, best_iou = best_threshold(thresholds, test_ious)
    cv, cv_count = counterfactual_validity(test["p_abnormal"], test["p_abnormal_cf"], config.cv_tau)
    metrics: dict[str, Any] = {
        "threshold_fixed": config.threshold,
        "iou_at_fixed": iou_at(test, config.threshold, config),
        "threshold_best_on_test": best_t,
        "iou_best_on_test": best_iou,
        "cv": cv,
        "cv_slices": cv_count,
        "test_slices": int(len(test["label"])),
        "abnormal_test_slices": int((test["label"] > 0.5).sum()),
    }
    if val is not None:
        _, val_ious = sweep(val, config)
        val_t, val_iou = best_threshold(thresholds, val_ious)
        metrics.update({"threshold_from_val": val_t, "val_iou_at_it": val_iou,
                        "iou": iou_at(test, val_t, config)})
    else:
        metrics["iou"] = metrics["iou_at_fixed"]
    metrics["classifier_fd"] = classifier_frechet_distance(
        _features(classifier, test["x"], config.batch_size, device),
        _features(classifier, test["x_cf"], config.batch_size, device),
    )
    if fid:
        value, message = compute_fid_or_reason(
            (test["x"][:, None] + 1) / 2, (test["x_cf"][:, None] + 1) / 2, dims=config.fid_dims,
            weights_path=config.fid_weights, batch_size=config.batch_size, device=device,
        )
        metrics.update({"fid": value, "fid_note": message})
    return {"metrics": metrics, "sweep": {"thresholds": thresholds.tolist(), "test_iou": test_ious.tolist()}}


def evaluate_counterfactual(
    generator: nn.Module,
    classifier: nn.Module,
    gan: GANConfig,
    config: EvalConfig,
    test_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset | None = None,
    fid: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate counterfactuals for the test (and validation) split and score them."""
    device = next(generator.parameters()).device
    test = generate_counterfactuals(generator, classifier, test_set, gan, config.batch_size, device, progress)
    val = (generate_counterfactuals(generator, classifier, val_set, gan, config.batch_size, device, progress)
           if val_set is not None else None)
    return score_counterfactuals(test, config, classifier, val, fid, device)


def quick_validation(
    classifier: nn.Module, gan: GANConfig, config: EvalConfig, val_set: torch.utils.data.Dataset
):
    """A callback for the training loop: best validation IoU over the threshold sweep, and CV.

    The best threshold moves during training (the difference maps sharpen), so a fixed
    threshold would hide progress; the sweep is the protocol of Sec. 5 on the val split.
    """

    def evaluate(generator: nn.Module, step: int) -> dict[str, float]:
        device = next(generator.parameters()).device
        arrays = generate_counterfactuals(generator, classifier, val_set, gan, config.batch_size, device)
        cv, _ = counterfactual_validity(arrays["p_abnormal"], arrays["p_abnormal_cf"], config.cv_tau)
        threshold, iou = best_threshold(*sweep(arrays, config))
        return {"val_iou": iou, "val_threshold": threshold, "val_cv": cv}

    return evaluate
