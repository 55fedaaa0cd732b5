"""Scoring a trained counterfactual GAN: weak masks, IoU, CV, FID (paper Sec. 4.2, 5).

Protocol (the paper and the authors' evaluation code):

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

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import EvalConfig, GANConfig, SaliencyConfig
from .counterfactual import generate_counterfactuals
from .masks import difference_map, outside_body_share, weak_mask
from .metrics import (
    IoUAccumulator,
    best_threshold,
    classifier_frechet_distance,
    compute_fid_or_reason,
    confusion_counts,
    counterfactual_validity,
    sweep_thresholds,
    threshold_sweep,
)
from .progress import tqdm
from .runtime import autocast

__all__ = [
    "config_mask",
    "iou_at",
    "sweep",
    "abnormal_maps",
    "per_slice_counts",
    "score_maps",
    "score_counterfactuals",
    "evaluate_counterfactual",
    "quick_validation",
    "abnormal_indices",
    "require_abnormal",
    "saliency_subset",
    "saliency_maps",
    "evaluate_saliency_method",
]


def config_mask(maps: np.ndarray, threshold: float, config: EvalConfig, postprocess: bool = True) -> np.ndarray:
    """:func:`coinlib.masks.weak_mask` with ``config``'s post-processing (Sec. 5: radii and
    ``morphology``): every weak mask that is scored is made here, so none can miss a setting."""
    return weak_mask(maps, threshold, postprocess, config.closing_radius, config.opening_radius, config.morphology)


def iou_at(maps: np.ndarray, masks_true: np.ndarray, threshold: float, config: EvalConfig,
           postprocess: bool = True) -> dict[str, float]:
    """IoU (accumulated and mean per image) of ``maps > threshold`` (abnormal slices only)."""
    accumulator = IoUAccumulator()
    if len(maps):
        accumulator.update(config_mask(maps, threshold, config, postprocess), masks_true)
    return accumulator.compute()


def per_slice_counts(maps: np.ndarray, masks_true: np.ndarray, threshold: float, config: EvalConfig,
                     postprocess: bool = True) -> dict[str, list[int]]:
    """Pixel TP, FP and FN of each slice's weak mask at ``threshold`` (Eq. 8's counts, unsummed).

    Summed over slices they give the accumulated IoU; kept per slice so that a bootstrap over
    test slices (:mod:`coinlib.verdicts`) can put an interval on it.
    """
    if not len(maps):
        return {"tp": [], "fp": [], "fn": []}
    pred = config_mask(maps, threshold, config, postprocess)
    tp, fp, fn = confusion_counts(pred, masks_true, per_image=True)
    return {"tp": tp.astype(int).tolist(), "fp": fp.astype(int).tolist(), "fn": fn.astype(int).tolist()}


def sweep(maps: np.ndarray, masks_true: np.ndarray, config: EvalConfig,
          postprocess: bool = True, thresholds: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, IoUs) over ``config.sweep_points`` thresholds in [0, 1] (Sec. 5), or over
    ``thresholds``; post-processed with ``config``'s settings as :func:`config_mask`."""
    thresholds = sweep_thresholds(config.sweep_points) if thresholds is None else np.asarray(thresholds)
    ious = threshold_sweep(maps, masks_true, thresholds, postprocess=postprocess,
                           closing_radius=config.closing_radius, opening_radius=config.opening_radius,
                           morphology=config.morphology)
    return thresholds, ious


def abnormal_maps(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The difference maps |x - x_cf| and true masks of the abnormal slices of ``arrays``."""
    abnormal = arrays["label"] > 0.5
    return difference_map(arrays["x"][abnormal], arrays["x_cf"][abnormal]), arrays["lesion_mask"][abnormal]


def abnormal_indices(dataset: torch.utils.data.Dataset) -> np.ndarray:
    """Positions of the abnormal (label 1) items of ``dataset``, in order."""
    return np.flatnonzero(dataset.labels() == 1)


def require_abnormal(dataset: torch.utils.data.Dataset, split: str) -> None:
    """A ``ValueError`` naming ``split`` when it holds no abnormal slice: the weak masks are
    scored on the test split's and the threshold is chosen on the validation split's (Sec. 5)."""
    if not len(abnormal_indices(dataset)):
        raise ValueError(
            f"the {split} split holds no abnormal slice, so there is nothing to score the weak masks on "
            "(or to choose the threshold on, Sec. 5): more scans, or a slice-label rule that keeps more "
            "lesions (DataConfig.min_lesion_area_mm2), give it some")


def score_maps(
    test: tuple[np.ndarray, np.ndarray],
    config: EvalConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    postprocess: bool = True,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """The threshold protocol of Sec. 5 for any method's maps in [0, 1].

    ``test`` and ``val`` are (maps, true masks) of abnormal slices. The threshold is chosen
    on ``val`` by a sweep and test IoU reported at it (``iou``); beside it, labelled, the
    fixed ``config.threshold`` and the best threshold on the test set itself (what the
    paper reports). ``metrics["per_slice"]``: each test slice's TP/FP/FN at the reported
    threshold, with its prepared row (``rows``; positions when not given). Returns
    ``{"metrics": ..., "sweep": {"thresholds", "test_iou", "val_iou"}}``.
    """
    thresholds, test_ious = sweep(*test, config, postprocess)
    best_t, best_iou = best_threshold(thresholds, test_ious)
    metrics: dict[str, Any] = {
        "threshold_fixed": config.threshold,
        "iou_at_fixed": iou_at(*test, config.threshold, config, postprocess),
        "threshold_best_on_test": best_t,
        "iou_best_on_test": best_iou,
        "postprocessed": postprocess,
        "abnormal_test_slices": int(len(test[0])),
    }
    curves = {"thresholds": thresholds.tolist(), "test_iou": test_ious.tolist()}
    if val is not None:
        _, val_ious = sweep(*val, config, postprocess)
        val_t, val_iou = best_threshold(thresholds, val_ious)
        metrics.update({"threshold_from_val": val_t, "val_iou_at_it": val_iou,
                        "iou": iou_at(*test, val_t, config, postprocess)})
        curves["val_iou"] = val_ious.tolist()
    else:
        metrics["iou"] = metrics["iou_at_fixed"]
    reported = metrics.get("threshold_from_val", config.threshold)
    rows = np.arange(len(test[0])) if rows is None else np.asarray(rows)
    metrics["per_slice"] = {"rows": rows.astype(int).tolist(),
                            **per_slice_counts(*test, reported, config, postprocess)}
    return {"metrics": metrics, "sweep": curves}


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
    rows = test["index"][test["label"] > 0.5]
    scored = score_maps(abnormal_maps(test), config, abnormal_maps(val) if val is not None else None, rows=rows)
    metrics = scored["metrics"]
    cv, cv_count = counterfactual_validity(test["p_abnormal"], test["p_abnormal_cf"], config.cv_tau)
    confident = test["p_abnormal"] > config.cv_tau
    flipped = np.abs(test["p_abnormal"] - test["p_abnormal_cf"]) > config.cv_tau
    metrics.update({"cv": cv, "cv_slices": cv_count, "test_slices": int(len(test["label"])),
                    "per_slice_cv": {"rows": test["index"][confident].astype(int).tolist(),
                                     "flipped": flipped[confident].astype(int).tolist()}})
    metrics["classifier_fd"] = classifier_frechet_distance(test["features"], test["features_cf"])
    # where the change went that no lesion explains: the air around the patient (abnormal slices, pooled)
    abnormal = test["label"] > 0.5
    metrics["outside_body_share"] = outside_body_share(abnormal_maps(test)[0], test["body_mask"][abnormal])
    if fid:
        value, message = compute_fid_or_reason(
            (test["x"][:, None] + 1) / 2, (test["x_cf"][:, None] + 1) / 2, dims=config.fid_dims,
            weights_path=config.fid_weights, batch_size=config.batch_size, device=device,
        )
        metrics.update({"fid": value, "fid_note": message})
    return scored


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
    """Generate counterfactuals for the test (and validation) split and score them.

    Every test slice is generated (CV and the Frechet distances use them all); of the
    validation split only the abnormal slices, the only ones the threshold choice reads.
    """
    device = next(generator.parameters()).device
    require_abnormal(test_set, "test")
    if val_set is not None:
        require_abnormal(val_set, "validation")
    start = time.perf_counter()
    test = generate_counterfactuals(generator, classifier, test_set, gan, config.batch_size, device, progress)
    seconds = (time.perf_counter() - start) / max(1, len(test["x"]))
    val = None
    if val_set is not None:
        abnormal_val = torch.utils.data.Subset(val_set, abnormal_indices(val_set).tolist())
        val = generate_counterfactuals(generator, classifier, abnormal_val, gan, config.batch_size, device, progress)
    scored = score_counterfactuals(test, config, classifier, val, fid, device)
    # one generator pass makes the mask; the time also holds loading and f(x), f(x_cf)
    scored["cost"] = {"forward_passes": 1, "seconds_per_image": seconds, "device": str(device)}
    return scored


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
        threshold, iou = best_threshold(*sweep(*abnormal_maps(arrays), config))
        return {"val_iou": iou, "val_threshold": threshold, "val_cv": cv}

    return evaluate


# ------------------------------------------------------------------ saliency baselines


def saliency_subset(dataset: torch.utils.data.Dataset, max_images: int | None) -> list[int]:
    """Indices of the abnormal items of ``dataset``: all, or ``max_images`` spread evenly.

    Saliency maps are scored on abnormal slices only (Sec. 5). Spreading the subset over
    the whole split keeps every scan represented; the choice depends on nothing random.
    """
    abnormal = abnormal_indices(dataset)
    if max_images is None or max_images >= len(abnormal):
        return abnormal.tolist()
    return abnormal[np.linspace(0, len(abnormal) - 1, max_images).round().astype(int)].tolist()


def method_options(method: str, config: SaliencyConfig) -> dict[str, Any]:
    """The keyword options of :func:`coinlib.saliency.attribute` that ``config`` sets."""
    if method == "rise":
        return {"n_masks": config.rise_masks, "grid": config.rise_grid, "p1": config.rise_p1,
                "batch_size": config.rise_batch_size, "seed": config.seed, "mask_sets": config.rise_mask_sets}
    if method == "scorecam":
        return {"batch_size": config.scorecam_batch_size}
    return {}


def saliency_maps(
    method: str,
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    indices: list[int],
    config: SaliencyConfig,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(maps (N, H, W) in [0, 1], true masks (N, H, W) bool, seconds per image) of ``method``.

    The seconds are wall-clock time of :func:`coinlib.saliency.attribute` alone (data
    loading excluded, the device synchronised), the cost Sec. 5 compares with COIN's one
    forward pass.
    """
    from .saliency import attribute

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size)
    maps, masks, seconds = [], [], 0.0
    for batch in tqdm(loader, desc=method, disable=not progress, leave=False):
        x = batch["image"].to(device)
        # RISE's per-image mask sets are keyed by the prepared row, so a map is the same in any batch
        keys = {"image_keys": batch["index"].tolist()} if method == "rise" else {}
        start = time.perf_counter()
        with autocast(device):
            maps.append(attribute(method, model, x, **method_options(method, config), **keys).float().cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        masks.append(batch["lesion_mask"][:, 0].bool())
    if not maps:
        raise ValueError(f"no abnormal slices to explain with {method}")
    return torch.cat(maps).numpy(), torch.cat(masks).numpy(), seconds / max(1, len(indices))


def evaluate_saliency_method(
    method: str,
    model: nn.Module,
    saliency: SaliencyConfig,
    config: EvalConfig,
    test_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one saliency method like the counterfactual methods (Sec. 5, Table 1).

    Maps are min-max normalised and thresholded without post-processing, as the paper does
    for attribution methods; the threshold is chosen on the validation split. The same
    sweep with the counterfactual post-processing is kept beside it (``sweep_postprocessed``)
    to show it would not close the gap. ``cost`` holds forward passes and seconds per image;
    ``test_maps`` (N, H, W) float16 and ``test_index`` (prepared rows) the maps scored.
    """
    from .saliency import forward_passes

    test_idx = saliency_subset(test_set, saliency.max_images)
    val_idx = saliency_subset(val_set, saliency.max_images)
    test_maps, test_true, seconds = saliency_maps(method, model, test_set, test_idx, saliency, progress=progress)
    val_maps, val_true, _ = saliency_maps(method, model, val_set, val_idx, saliency, progress=progress)
    rows = np.asarray([int(test_set.rows[i]) for i in test_idx], dtype=int)
    scored = score_maps((test_maps, test_true), config, (val_maps, val_true), postprocess=False, rows=rows)
    post = score_maps((test_maps, test_true), config, (val_maps, val_true), postprocess=True, rows=rows)
    options = {k: v for k, v in method_options(method, saliency).items() if k == "n_masks"}
    scored["metrics"].update({
        "iou_postprocessed": post["metrics"]["iou"],
        "iou_best_on_test_postprocessed": post["metrics"]["iou_best_on_test"],
        "subset": {"test": len(test_idx), "val": len(val_idx), "max_images": saliency.max_images},
    })
    scored["sweep_postprocessed"] = post["sweep"]
    scored["cost"] = {"forward_passes": forward_passes(method, model, **options),
                      "seconds_per_image": seconds, "device": str(next(model.parameters()).device)}
    scored["test_index"] = rows.tolist()
    scored["test_maps"] = test_maps.astype(np.float16)
    return scored
