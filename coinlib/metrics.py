"""Metrics of paper Sec. 4.2: IoU (Eq. 8), counterfactual validity, FID (Eq. 7).

Pure functions on arrays plus one small accumulator (``IoUAccumulator``). Inputs may be
numpy arrays or torch tensors; masks are bool (or {0, 1}) with images along the leading
axes and (H, W) last: (H, W), (B, H, W) or (B, 1, H, W).

Protocol (the authors' implementation):

- IoU is scored on abnormal (label 1) test slices only, with ONE TP/FP/FN count
  accumulated over all of them (not a mean of per-image IoUs); the accumulator also keeps
  the per-image IoUs so the mean per-image IoU can be reported beside it, labelled so.
- CV: among slices with f(x) > tau, the fraction with |f(x) - f(x_cf)| > tau (tau = 0.8).
- FID: ALL test images against their counterfactuals, 768-d features of pytorch-fid's
  Inception (block ``Mixed_6e``, spatially averaged), images in [0, 1] bilinearly resized
  to 299 and repeated to 3 channels. Its weights are never downloaded here: see
  :func:`fid_weights_path`.
- Beside FID, always: the Frechet distance in the frozen classifier's feature space
  (:func:`classifier_frechet_distance`), which needs no external weights. It is not FID.
"""

from __future__ import annotations

import os
import unittest.mock
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_fid import inception as fid_inception
from torch import nn

from coinlib.masks import Morphology, postprocess_masks

__all__ = [
    "confusion_counts",
    "iou_from_counts",
    "grouped_iou",
    "mask_location",
    "IoUAccumulator",
    "counterfactual_validity",
    "sweep_thresholds",
    "threshold_sweep",
    "best_threshold",
    "frechet_distance",
    "frechet_distance_from_features",
    "classifier_frechet_distance",
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "FIDWeightsUnavailable",
    "fid_weights_path",
    "inception_feature_extractor",
    "inception_features",
    "fid_score",
    "compute_fid_or_reason",
]


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _image_stack(mask) -> np.ndarray:
    """(..., H, W) -> bool (N, H, W); (H, W) is one image, a singleton channel is dropped."""
    m = _numpy(mask).astype(bool, copy=False)
    return m.reshape(-1, *m.shape[-2:])


# ---------------------------------------------------------------------------- IoU (Eq. 8)


def confusion_counts(mask_pred, mask_true, per_image: bool = False):
    """TP, FP, FN pixel counts of ``mask_pred`` against ``mask_true`` (same shape).

    Returns three ints summed over the whole batch, or with ``per_image=True`` three int64
    arrays of shape (N,), one entry per (H, W) image.
    """
    pred, true = _image_stack(mask_pred), _image_stack(mask_true)
    if pred.shape != true.shape:
        raise ValueError(f"mask_pred {np.shape(mask_pred)} and mask_true {np.shape(mask_true)} differ")
    tp = np.count_nonzero(pred & true, axis=(1, 2))
    fp = np.count_nonzero(pred & ~true, axis=(1, 2))
    fn = np.count_nonzero(~pred & true, axis=(1, 2))
    if per_image:
        return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)
    return int(tp.sum()), int(fp.sum()), int(fn.sum())


def iou_from_counts(tp, fp, fn, empty: float = 1.0):
    """Eq. (8): TP / (TP + FP + FN); ``empty`` where the union is empty (both masks empty).

    Scalars give a float, arrays an array. The default 1.0 scores "nothing predicted where
    there is nothing" as a perfect match; the Sec. 4.2 protocol scores only abnormal slices
    (non-empty truth), so the union is never empty there.
    """
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    union = tp + fp + fn
    iou = np.divide(tp, union, out=np.full(union.shape, float(empty)), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def mask_location(mask_pred, lesion, organ) -> dict[str, float]:
    """Where a weak mask's pixels lie: on the lesion, on the organ around it, or elsewhere.

    Eq. (8) counts every false-positive pixel alike; this splits them by place, summed over
    the stack as Eq. (8) sums its counts. ``mask_pred``, ``lesion`` and ``organ`` (the kidney
    mask, which may include the lesion) have the same (..., H, W) shape. Returns the
    fractions of the predicted pixels ``on_lesion`` (TP), ``on_organ`` (organ outside the
    lesion) and ``elsewhere`` (they add up to 1; NaN when nothing is predicted), ``recall``
    (TP over lesion pixels) and the ``predicted`` and ``lesion`` pixel counts.
    """
    pred, true, around = _image_stack(mask_pred), _image_stack(lesion), _image_stack(organ)
    if not pred.shape == true.shape == around.shape:
        raise ValueError(f"mask_pred {np.shape(mask_pred)}, lesion {np.shape(lesion)} and organ "
                         f"{np.shape(organ)} must have one shape")
    predicted, lesion_pixels = int(pred.sum()), int(true.sum())
    on_lesion = int((pred & true).sum())
    on_organ = int((pred & around & ~true).sum())

    def share(count: int, total: int) -> float:
        return count / total if total else float("nan")

    return {"on_lesion": share(on_lesion, predicted), "on_organ": share(on_organ, predicted),
            "elsewhere": share(predicted - on_lesion - on_organ, predicted),
            "recall": share(on_lesion, lesion_pixels), "predicted": predicted, "lesion": lesion_pixels}


def grouped_iou(groups: Sequence, tp, fp, fn) -> dict:
    """Eq. (8) accumulated within each group of slices (one scan, one case): ``{group: row}``.

    ``groups[i]`` names the group of slice ``i`` and ``tp``, ``fp``, ``fn`` are its pixel
    counts (:func:`coinlib.evaluate.per_slice_counts`). Each row holds the group's summed
    ``tp``, ``fp``, ``fn``, its ``iou``, its ``slices`` and ``share``: its fraction of all
    lesion pixels (``tp + fn``), which is how much it weighs in the accumulated IoU of Sec.
    4.2. Groups come in order of first appearance. The pooled IoU rests on few groups when
    few have most of the share: this is what shows it.
    """
    tp, fp, fn = (np.asarray(v, dtype=np.int64).reshape(-1) for v in (tp, fp, fn))
    if not len(groups) == len(tp) == len(fp) == len(fn):
        raise ValueError(f"grouped_iou: groups ({len(groups)}), tp ({len(tp)}), fp ({len(fp)}) and fn "
                         f"({len(fn)}) must have one entry per slice")
    totals: dict = {}
    for group, t, p, n in zip(groups, tp.tolist(), fp.tolist(), fn.tolist()):
        row = totals.setdefault(group, {"tp": 0, "fp": 0, "fn": 0, "slices": 0})
        row["tp"] += t
        row["fp"] += p
        row["fn"] += n
        row["slices"] += 1
    lesion = max(int(tp.sum() + fn.sum()), 1)
    for row in totals.values():
        row["iou"] = iou_from_counts(row["tp"], row["fp"], row["fn"])
        row["share"] = (row["tp"] + row["fn"]) / lesion
    return totals


class IoUAccumulator:
    """Accumulates IoU over batches of abnormal slices (Sec. 4.2).

    ``update(mask_pred, mask_true)`` with (B, H, W) or (B, 1, H, W) masks; feed abnormal
    (label 1) slices only. ``iou()`` is the paper's number: one TP/FP/FN count over every
    pixel seen. ``mean_per_image_iou()`` is the mean of per-image IoUs, reported beside it
    and labelled as such (an image with both masks empty counts 1.0 there). Both are nan
    before any image is seen.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = 0
        self._per_image: list[np.ndarray] = []

    def update(self, mask_pred, mask_true) -> None:
        tp, fp, fn = confusion_counts(mask_pred, mask_true, per_image=True)
        self.tp += int(tp.sum())
        self.fp += int(fp.sum())
        self.fn += int(fn.sum())
        self._per_image.append(iou_from_counts(tp, fp, fn))

    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self._per_image)

    def per_image_ious(self) -> np.ndarray:
        return np.concatenate(self._per_image) if self._per_image else np.zeros(0)

    def iou(self) -> float:
        """Accumulated IoU (the paper's protocol)."""
        return iou_from_counts(self.tp, self.fp, self.fn) if self.n_images else float("nan")

    def mean_per_image_iou(self) -> float:
        return float(self.per_image_ious().mean()) if self.n_images else float("nan")

    def compute(self) -> dict[str, float | int]:
        return {
            "iou": self.iou(),
            "mean_per_image_iou": self.mean_per_image_iou(),
            "n_images": self.n_images,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


# ------------------------------------------------------------------- counterfactual validity


def counterfactual_validity(p_x, p_x_cf, tau: float = 0.8) -> tuple[float, int]:
    """CV (Sec. 4.2): among slices with f(x) > tau, the fraction with |f(x) - f(x_cf)| > tau.

    ``p_x``, ``p_x_cf``: (B,) or (B, 1) probabilities f(x) and f(x_cf) in [0, 1]. Returns
    ``(cv, n)``, n the number of qualifying slices; cv is nan when n == 0 (no slice is
    confidently abnormal, so validity is undefined, not 0).
    """
    p, p_cf = _numpy(p_x).astype(np.float64).ravel(), _numpy(p_x_cf).astype(np.float64).ravel()
    if p.shape != p_cf.shape:
        raise ValueError(f"p_x has {p.size} values, p_x_cf {p_cf.size}")
    qualifying = p > tau
    n = int(qualifying.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.mean(np.abs(p - p_cf)[qualifying] > tau)), n


# ------------------------------------------------------------- threshold sweep (Sec. 5)


def sweep_thresholds(points: int = 101) -> np.ndarray:
    """``points`` evenly spaced binarisation thresholds over [0, 1] (``EvalConfig.sweep_points``)."""
    return np.linspace(0.0, 1.0, points)


def threshold_sweep(
    maps,
    masks_true,
    thresholds: Sequence[float] | np.ndarray | None = None,
    postprocess: bool = False,
    closing_radius: int = 2,
    opening_radius: int = 2,
    chunk_pixels: int = 1 << 20,
    morphology: Morphology = "paper",
) -> np.ndarray:
    """Accumulated IoU of ``maps > t`` for every threshold t (Sec. 5, "0-1 range sweep").

    ``maps``: (N, H, W) or (N, 1, H, W) in [0, 1] (difference maps, or saliency maps after
    :func:`coinlib.masks.normalise_saliency`); ``masks_true``: same shape, bool; pass the
    abnormal slices only. ``thresholds`` default to :func:`sweep_thresholds` (101 points).
    Returns (T,) IoUs, each from one TP/FP/FN count over all images (as ``IoUAccumulator``).

    Without ``postprocess`` (saliency maps) the counts for every threshold come from one
    sort of the map values. With it (counterfactual methods) the morphology (``morphology``,
    as :func:`coinlib.masks.postprocess_masks`) and the largest component run at every
    threshold, on about ``chunk_pixels`` pixels at a time (small chunks stay in cache);
    that is the whole cost of a sweep.
    """
    values = _numpy(maps)
    values = values.reshape(-1, *values.shape[-2:])
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float32)
    true = _image_stack(masks_true)
    if values.shape != true.shape:
        raise ValueError(f"maps {np.shape(maps)} and masks_true {np.shape(masks_true)} differ")
    # Compare in the maps' dtype, exactly as ``maps > t`` in weak_mask does.
    t = (sweep_thresholds() if thresholds is None else np.asarray(thresholds)).astype(values.dtype)
    n_true = int(true.sum())
    if not postprocess:
        on_true, on_false = np.sort(values[true]), np.sort(values[~true])
        tp = n_true - np.searchsorted(on_true, t, side="right")
        fp = on_false.size - np.searchsorted(on_false, t, side="right")
        return iou_from_counts(tp, fp, n_true - tp)
    per_chunk = max(1, chunk_pixels // (values.shape[1] * values.shape[2]))
    tp = np.zeros(len(t), dtype=np.int64)
    fp = np.zeros(len(t), dtype=np.int64)
    for i, threshold in enumerate(t):
        for start in range(0, len(values), per_chunk):
            pred = values[start : start + per_chunk] > threshold
            busy = pred.any(axis=(1, 2))  # empty masks stay empty: skip them
            if busy.any():
                done = postprocess_masks(pred[busy], closing_radius, opening_radius, morphology)
                chunk_tp, chunk_fp, _ = confusion_counts(done, true[start : start + per_chunk][busy])
                tp[i] += chunk_tp
                fp[i] += chunk_fp
    return iou_from_counts(tp, fp, n_true - tp)


def best_threshold(thresholds, ious) -> tuple[float, float]:
    """The threshold with the highest IoU and that IoU (the first one on ties; nan ignored)."""
    ious = np.asarray(ious, dtype=np.float64)
    i = int(np.nanargmax(ious))
    return float(np.asarray(thresholds)[i]), float(ious[i])


# ----------------------------------------------------------------- Frechet distance (Eq. 7)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Eq. (7): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) for Gaussians N(mu, S).

    ``mu``: (D,); ``sigma``: (D, D) symmetric positive semi-definite. Same quantity as
    ``pytorch_fid.fid_score.calculate_frechet_distance``, computed differently:
    Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD
    matrix, so two ``eigh`` calls give it without a complex ``sqrtm`` of a non-symmetric
    product. Singular covariances (fewer samples than dimensions) need no eps offset;
    eigenvalues below D * machine-eps * the largest one are rounding noise and dropped.
    (pytorch-fid 0.3.0's function also fails for D = 1 and warns on SciPy >= 1.16.)
    Rounding can leave a result a hair below 0 (about -1e-12 for identical 768-d sets).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes differ: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(_psd_eigenvalues(inner)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _psd_eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix, with rounding noise (tiny or negative) set to 0."""
    w = np.linalg.eigvalsh((matrix + matrix.T) / 2)
    tol = max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    tol = max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(np.float64).eps
    return (v * np.sqrt(np.where(w > tol, w, 0.0))) @ v.T


def frechet_distance_from_features(feats1, feats2) -> float:
    """Eq. (7) between the Gaussians fitted to ``feats1 (N1, D)`` and ``feats2 (N2, D)``.

    Means and unbiased covariances (``np.cov``, as pytorch-fid) in float64; N1, N2 >= 2.
    """
    f1, f2 = _numpy(feats1).astype(np.float64), _numpy(feats2).astype(np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected (N, D) features with equal D, got {f1.shape} and {f2.shape}")
    if min(len(f1), len(f2)) < 2:
        raise ValueError("a covariance needs at least 2 samples per set")
    return frechet_distance(
        f1.mean(axis=0), np.cov(f1, rowvar=False), f2.mean(axis=0), np.cov(f2, rowvar=False)
    )


def classifier_frechet_distance(feats_x, feats_cf) -> float:
    """Frechet distance between classifier features of x and x_cf. NOT FID.

    ``feats_x``, ``feats_cf``: (N, F) penultimate features of the frozen classifier f
    (``coinlib.classifier.classifier_features``) for the test images and their
    counterfactuals. Eq. (7) in f's feature space instead of Inception's: it needs no
    external weights, so it is always reported; its scale is not comparable to FID.
    """
    return frechet_distance_from_features(feats_x, feats_cf)


# ------------------------------------------------------------------------ FID (pytorch-fid)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = fid_inception.FID_WEIGHTS_URL


class FIDWeightsUnavailable(FileNotFoundError):
    """pytorch-fid's Inception weights are not on this machine (nothing is downloaded)."""


def _default_weights_path() -> Path:
    # torch.hub.get_dir() follows $TORCH_HOME at call time: $TORCH_HOME/hub by default.
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def fid_weights_path(weights_path: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights: ``weights_path`` (a file, or a folder holding
    ``FID_WEIGHTS_FILE``), else the torch hub cache. Raises :class:`FIDWeightsUnavailable`
    saying how to provide them."""
    if weights_path is not None:
        path = Path(weights_path)
        path = path / FID_WEIGHTS_FILE if path.is_dir() else path
        if path.is_file():
            return path
        looked = f"at {path} (EvalConfig.fid_weights)"
    else:
        path = _default_weights_path()
        if path.is_file():
            return path
        looked = f"in the torch hub cache, {path}"
    raise FIDWeightsUnavailable(
        f"pytorch-fid's Inception weights were not found {looked}, and nothing is downloaded "
        f"here. On a machine with internet fetch {FID_WEIGHTS_URL} , then either copy "
        f"{FID_WEIGHTS_FILE} to {_default_weights_path()} (that is $TORCH_HOME/hub/checkpoints/, "
        f"TORCH_HOME defaulting to ~/.cache/torch) or set EvalConfig.fid_weights to its path."
    )


def _fid_inception_v3_architecture() -> nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` without its weight download: the torchvision
    Inception v3 (1008 classes, no aux head, no weights) with the FID-specific blocks."""
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    return net


def inception_feature_extractor(
    dims: int = 768,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """pytorch-fid's ``InceptionV3([block for dims])`` with weights from a local file.

    ``dims``: 64, 192, 768 (the paper's protocol, ``EvalConfig.fid_dims``) or 2048. The
    module resizes its (B, 3, H, W) input in [0, 1] to 299 (bilinear) and rescales it to
    [-1, 1] itself. Raises :class:`FIDWeightsUnavailable` when the weights are absent.
    """
    if dims not in fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM:
        known = sorted(fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM)
        raise ValueError(f"dims={dims}; choose one of {known}")
    path = fid_weights_path(weights_path)
    net = _fid_inception_v3_architecture()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # InceptionV3.__init__ calls fid_inception_v3(), which downloads; hand it ours instead,
    # so the blocks are assembled by pytorch-fid's own code.
    with unittest.mock.patch.object(fid_inception, "fid_inception_v3", lambda: net):
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    return model.to(device).eval()


@torch.no_grad()
def inception_features(images, extractor: nn.Module, batch_size: int = 32) -> np.ndarray:
    """(N, dims) float64 features of ``images (N, 1 or 3, H, W) in [0, 1]``.

    Values more than 1e-3 outside [0, 1] raise (a [-1, 1] image passed by mistake); smaller
    excursions are clamped. One-channel images are repeated to 3 channels; the extractor
    resizes to 299. Feature maps larger than 1x1 (dims 64, 192, 768) are averaged over
    space, as pytorch-fid does.
    """
    device = next(extractor.parameters()).device
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    # Host sync, once per call: catch [-1, 1] images; clamp rounding excursions.
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError("FID images must be in [0, 1]; convert x in [-1, 1] with (x + 1) / 2")
    feats = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32).clamp(0, 1)
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        out = extractor(batch)[0]
        feats.append(out.mean(dim=(2, 3)).double().cpu())
    return torch.cat(feats).numpy()


def fid_score(images_a, images_b, extractor: nn.Module, batch_size: int = 32) -> float:
    """FID, Eq. (7), between ``images_a`` and ``images_b`` (each (N, 1 or 3, H, W) in [0, 1]).

    The protocol passes ALL test images and their counterfactuals, ``(x + 1) / 2`` and
    ``(x_cf + 1) / 2``. With fewer images than feature dims the covariances are singular;
    :func:`frechet_distance` handles that.
    """
    return frechet_distance_from_features(
        inception_features(images_a, extractor, batch_size),
        inception_features(images_b, extractor, batch_size),
    )


def compute_fid_or_reason(
    images_a,
    images_b,
    dims: int = 768,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    extractor: nn.Module | None = None,
) -> tuple[float | None, str]:
    """``(fid, message)``; ``(None, "FID unavailable: <how to provide the weights>")`` when
    the Inception weights are absent, so a run goes on without FID.

    Builds the extractor (``dims``, ``weights_path``, ``device``) unless one is given;
    images as in :func:`fid_score`.
    """
    if extractor is None:
        try:
            extractor = inception_feature_extractor(dims, weights_path, device)
        except FIDWeightsUnavailable as err:
            return None, f"FID unavailable: {err}"
    value = fid_score(images_a, images_b, extractor, batch_size)
    counts = f"{len(images_a)} vs {len(images_b)} images"
    return value, f"FID ({dims}-d pytorch-fid Inception features, {counts}) = {value:.6g}"
