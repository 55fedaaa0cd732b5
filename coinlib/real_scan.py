"""The phantom-to-real gap, measured on one real scan: f and COIN on its kidney slices,
as they are and with synthetic anomalies added (paper App. 7.2; Sec. 4.2 metrics).

A real scan with no known lesion has no ground truth of its own, so two things are measured:

1. **False positives.** Every kidney slice (>= ``min_kidney_pixels`` kidney pixels on the
   native slice, Sec. 4.3) is normal as far as anyone knows; each one f calls abnormal
   (``p_abnormal >= t``) is a false positive.
2. **Synthetic anomalies.** The same slices, prepared exactly as ``coin label`` prepares
   them (HU normalised with the training fingerprint, resized to the run's size), get the
   App. 7.2 Gaussian-blob anomaly with the run's ``AnomalyConfig`` (probability, size,
   intensity), placed in the resized kidney mask as the phantom's test split places them.
   The draw of slice ``k`` (its index along the file's axial axis) comes from
   ``np.random.default_rng([seed, k])``, so it is fixed and does not depend on which other
   slices are scored. Then, as the evaluation does on the phantom's test split: the AUC of
   f over all kidney slices (anomaly = positive), and the IoU of COIN's weak masks over all
   anomaly slices, accumulated (one TP/FP/FN count, Eq. 8) at the run's mask threshold;
   beside it the IoU ``coin label`` would give, where only the slices f flags are inpainted.

Set beside the phantom's own test AUC and IoU (``results/seed0/classifier_synthetic.json``,
``results/seed0/synthetic_coin.json``), the difference is the gap between the phantom the models
were trained on and real CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .anomaly import apply_anomaly, draw_slice_anomaly
from .classifier_training import roc_auc
from .config import AnomalyConfig
from .label import LabelModel
from .metrics import IoUAccumulator
from .prepare import kidney_slice_indices, normalise_hu, resize_slices
from .volumes import CanonicalVolume

__all__ = ["RealScanCheck", "kidney_slices", "score_real_scan"]


@dataclass(frozen=True)
class RealScanCheck:
    """What :func:`score_real_scan` measured; ``metrics`` is JSON-ready, the arrays are for figures.

    Arrays, n = kidney slices, S = the run's image size: ``slice_index`` (n,) along the file's
    axial axis; ``x`` and ``x_anomaly`` (n, S, S) in [-1, 1]; ``label`` (n,) 1 where an
    anomaly was added; ``mask_true`` and ``mask_pred`` (n, S, S) bool (prediction on every
    anomaly slice, empty elsewhere); ``p_clean``, ``p_anomaly`` (n,) f's outputs.
    """

    metrics: dict[str, Any]
    slice_index: np.ndarray = field(repr=False)
    x: np.ndarray = field(repr=False)
    x_anomaly: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    mask_true: np.ndarray = field(repr=False)
    mask_pred: np.ndarray = field(repr=False)
    p_clean: np.ndarray = field(repr=False)
    p_anomaly: np.ndarray = field(repr=False)


def kidney_slices(
    volume: CanonicalVolume, kidney: np.ndarray, model: LabelModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, x, kidney_small)``: canonical z of the slices with >= ``model.min_kidney_pixels``
    kidney pixels (Sec. 4.3), those slices as ``coin label`` feeds them to f ((n, S, S) in
    [-1, 1]) and their kidney masks resized alike ((n, S, S) bool, nearest).
    ``kidney``: bool, ``volume.data.shape`` (canonical)."""
    if kidney.shape != volume.data.shape:
        raise ValueError(f"kidney mask shape {kidney.shape} differs from the volume's {volume.data.shape}")
    z, _ = kidney_slice_indices(kidney, model.min_kidney_pixels)
    hu = volume.radiological(z)
    x = resize_slices(normalise_hu(hu, model.p_low, model.p_high), model.image_size, "image")
    masks = replace(volume, data=kidney.astype(np.float32)).radiological(z)
    return z, x, resize_slices(masks, model.image_size, "mask") > 0.5


def _batched(function, x: np.ndarray, batch_size: int) -> list:
    return [function(torch.from_numpy(x[i:i + batch_size])[:, None]) for i in range(0, len(x), batch_size)]


def score_real_scan(
    model: LabelModel,
    volume: CanonicalVolume,
    kidney: np.ndarray,
    anomaly: AnomalyConfig,
    seed: int | None = None,
    batch_size: int = 32,
) -> RealScanCheck:
    """False positives of f on a real scan's kidney slices, then AUC of f and IoU of COIN
    with App. 7.2 anomalies added to them (module doc).

    ``volume``: the scan's RAS+ canonical HU; ``kidney``: its kidney mask (bool, same
    shape, e.g. TotalSegmentator's); ``anomaly``: the run's anomaly settings; ``seed``:
    the draw's seed (default ``anomaly.seed``, the phantom test split's). AUC is nan when
    every slice (or none) got an anomaly; IoU is nan without anomaly slices.
    """
    seed = anomaly.seed if seed is None else seed
    z, x, kidney_small = kidney_slices(volume, kidney, model)
    slice_index = np.array([volume.original_slice_index(k) for k in z], dtype=np.int64)
    x_anomaly = x.copy()
    label = np.zeros(len(z), dtype=np.int64)
    mask_true = np.zeros(x.shape, dtype=bool)
    unplaceable = 0
    for i, k in enumerate(slice_index):
        has, params, status = draw_slice_anomaly(kidney_small[i], anomaly, np.random.default_rng([seed, int(k)]))
        unplaceable += status == "unplaceable"
        if has:
            label[i] = 1
            x_anomaly[i], mask_true[i] = apply_anomaly(x[i], params, anomaly)

    def p_of(images: np.ndarray) -> np.ndarray:
        parts = _batched(lambda b: model.p_abnormal(b).cpu().numpy(), images, batch_size)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    p_clean, p_anomaly = p_of(x), p_of(x_anomaly)
    t = model.classifier_threshold
    positive = label == 1
    mask_pred = np.zeros(x.shape, dtype=bool)
    if positive.any():
        mask_pred[positive] = np.concatenate(_batched(model.weak_masks, x_anomaly[positive], batch_size))
    every, flagged_only = IoUAccumulator(), IoUAccumulator()
    if positive.any():
        every.update(mask_pred[positive], mask_true[positive])
        flagged = (p_anomaly >= t)[positive]
        flagged_only.update(mask_pred[positive] & flagged[:, None, None], mask_true[positive])
    n = len(z)
    metrics = {
        "kidney_slices": int(n),
        "min_kidney_pixels": model.min_kidney_pixels,
        "classifier_threshold": t,
        "mask_threshold": model.mask_threshold,
        "false_positive_slices": int((p_clean >= t).sum()),
        "false_positive_rate": float((p_clean >= t).mean()) if n else float("nan"),
        "anomaly_seed": int(seed),
        "anomaly_slices": int(positive.sum()),
        "unplaceable_slices": int(unplaceable),
        "auc": roc_auc(positive, p_anomaly),
        "accuracy": float(((p_anomaly >= t) == positive).mean()) if n else float("nan"),
        "true_positive_rate": float((p_anomaly[positive] >= t).mean()) if positive.any() else float("nan"),
        "iou": every.compute(),
        "iou_flagged_only": flagged_only.compute(),
    }
    return RealScanCheck(metrics=metrics, slice_index=slice_index, x=x, x_anomaly=x_anomaly, label=label,
                         mask_true=mask_true, mask_pred=mask_pred, p_clean=p_clean, p_anomaly=p_anomaly)
