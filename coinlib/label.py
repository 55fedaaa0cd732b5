"""Weak labels for real scans: ``coin label`` (paper Sec. 3.1 inference, Sec. 5 post-processing).

A trained run folder turns CT scans into weak lesion masks, slice by slice, exactly as
the evaluation scores them:

1. Every scan under the input folder, a ``*.nii.gz`` file or a DICOM series
   (:mod:`coinlib.volumes`: discovery, DICOM reading, the checks), is read in its own
   orientation and reoriented to RAS+ from its affine (``coinlib.prepare``'s reader); axial
   slices are taken in radiological view, HU are normalised with the training scans'
   fingerprint (``fingerprint.json`` of the run's prepared dataset) and resized to the run's
   image size, the same functions ``coin prepare`` used (:func:`coinlib.prepare.normalise_hu`,
   :func:`coinlib.prepare.resize_slices`).
2. Which slices are classified: every axial slice, unless ``organ_masks`` gives
   TotalSegmentator's kidney masks for the scan (:func:`coinlib.volumes.find_organ_masks`);
   then only the axial slices with at least ``min_kidney_pixels`` kidney pixels on the
   native slice, as preparation kept them for training (Sec. 4.3; the value the run's
   prepared dataset was made with, ``DataConfig.min_kidney_pixels``). f never saw a slice
   outside the kidney range in training, so without the masks an abnormal call there
   deserves a look. With ``mask_margin_mm`` the weak mask is also cut to the voxels within
   that distance (mm, Euclidean, on the native grid) of the kidneys.
3. The frozen classifier f labels a slice abnormal when ``p_abnormal >= t`` (Sec. 3.1, the
   classifier's configured threshold). Only abnormal slices are inpainted: COIN "predicts a
   normal counterfactual x_cf only when the classifier deems x abnormal" (Sec. 3.1), with
   the inpainting condition (COIN's one condition; bin 0, "normal", for Singla*).
4. ``diff_map = |x - x_cf|`` on the [0, 1] scale, thresholded and post-processed by closing,
   opening and the largest connected component (Sec. 5; :func:`coinlib.masks.weak_mask`).
   The threshold is the one chosen on the validation split by ``coin evaluate``
   (``results/seed0/<track>_<variant>.json``, ``threshold_from_val``) when that file exists, else
   ``EvalConfig.threshold``; ``--threshold`` overrides both. The CSV says which was used.
5. Slice masks are resampled to the native in-plane grid (bilinear of the 0/1 mask, then
   ``>= 0.5``), put back along the native axial axis in the scan's own orientation and
   written as a uint8 NIfTI with the input's exact affine, shape and header codes (for a
   DICOM series: the series' voxel grid, :func:`coinlib.volumes.sitk_to_nifti`). A DICOM
   SEG is not written.

Outputs, under ``--out``, mirroring the input's sub-folders so names never collide::

    <scan name>_coin_mask.nii.gz   the weak mask (uint8, 1 = lesion)
    <scan name>_coin_mask.json     sidecar: the CSV row, the classified and abnormal slices, the settings
    labels.csv                     one row per scan, rebuilt from sidecars
    labels.csv.lock                the lock ranks take to rebuild labels.csv

A scan that cannot be read (corrupt or truncated file, a broken DICOM series, non-finite
voxels, kidney masks missing or on another grid) stops only itself: its sidecar records
``status = unreadable`` and the reason, the CSV lists it, :class:`LabelRun` ``failed``
names it, and the other scans are labelled (``coin label`` then exits non-zero). An
unreadable scan is tried again on the next run.

Resuming: every file is written atomically (``coinlib.files.atomic_path``), mask first, then
its sidecar; a scan counts as done when both exist and the sidecar records the same
settings (run folder, checkpoints, thresholds, normalisation, organ masks and margin). Done
scans are skipped. A mask without its sidecar, or one made with other settings, is never
overwritten unless ``force=True``; the run stops with an error naming it.

Several processes (``torchrun --nproc-per-node N -m coinlib.cli label ...``, or any launcher
that sets ``RANK`` and ``WORLD_SIZE``; an initialised ``torch.distributed`` group is used when
there is one): rank r labels ``shard(scans, r, N)`` = ``sorted(scans)[r::N]``. Each scan's
sidecar is its own record, so ranks never write the same file. Every rank rebuilds
``labels.csv`` from all sidecars when it finishes, under a file lock; the last rank to finish
therefore leaves the complete CSV. No barrier is needed, so a slow rank cannot time one out,
and a failed rank leaves a CSV of what is done (run again to finish: done scans are skipped).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .config import DataConfig, EvalConfig
from .files import atomic_path, content_id, exclusive, read_json, write_csv, write_json
from .masks import difference_map, weak_mask
from .prepare import kidney_slice_indices, normalise_hu, resize_slices
from .progress import tqdm
from .runtime import autocast, config_differences, pick_device
from .volumes import (
    MASK_SUFFIX,
    CanonicalVolume,
    canonical,
    Scan,
    UnreadableScan,
    find_organ_masks,
    find_scans,
    read_kidney_mask,
    read_scan,
)

__all__ = [
    "MASK_SUFFIX",
    "SIDECAR_SUFFIX",
    "CSV_NAME",
    "CSV_COLUMNS",
    "LabelModel",
    "LabelRun",
    "load_label_model",
    "output_paths",
    "shard",
    "distributed_rank",
    "voxel_volume_ml",
    "lesion_volume_ml",
    "to_native_mask",
    "label_volume",
    "label_folder",
    "write_label_csv",
]

SIDECAR_SUFFIX = "_coin_mask.json"
CSV_NAME = "labels.csv"
CSV_COLUMNS = [
    "file", "status", "error", "format", "mask", "shape", "spacing_mm", "axial_axis", "slices",
    "classified_slices", "slice_selection", "abnormal_slices", "lesion_slices", "lesion_voxels", "lesion_ml",
    "mask_margin_mm", "classifier_threshold", "mask_threshold", "threshold_source",
]
EVERY_SLICE = "every axial slice (no organ masks)"
WRITTEN_BY = "coin label"  # every sidecar says so: the files coin label may update are the ones it wrote
T = TypeVar("T")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LabelModel:
    """Everything that turns a normalised slice into a weak mask (Sec. 3.1, 5).

    ``settings`` (JSON-ready) is written into every sidecar and compared when resuming.
    """

    classifier: nn.Module
    generator: nn.Module
    image_size: int
    p_low: float  # HU mapped to -1 (training fingerprint)
    p_high: float  # HU mapped to +1
    classifier_threshold: float  # t of Sec. 3.1: abnormal when p_abnormal >= t
    mask_threshold: float  # on diff_map in [0, 1] (Sec. 5)
    threshold_source: str
    closing_radius: int
    opening_radius: int
    device: torch.device
    settings: dict[str, Any] = field(repr=False)
    min_kidney_pixels: int = DataConfig.min_kidney_pixels  # Sec. 4.3: the training data's slice rule
    morphology: str = "paper"  # EvalConfig.morphology: the post-processing order of the evaluation

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    @torch.inference_mode()
    def p_abnormal(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): ``x`` (B, 1, S, S) in [-1, 1] -> (B,) float32 in [0, 1], on ``device``."""
        x = self._on_device(x)
        with autocast(self.device):
            return torch.sigmoid(self.classifier(x).float())

    @torch.inference_mode()
    def weak_masks(self, x: torch.Tensor) -> np.ndarray:
        """Inpaint ``x`` (A, 1, S, S) in [-1, 1] with the "normal" condition and return the
        weak masks (A, S, S) bool: ``|x - x_cf|`` thresholded, closed, opened, largest
        component (Sec. 5)."""
        if len(x) == 0:
            return np.zeros((0, *x.shape[-2:]), dtype=bool)
        x = self._on_device(x)
        inpaint = torch.zeros(len(x), dtype=torch.long, device=self.device)
        x_cf = self.generator(x, inpaint).float()  # fp32, as the evaluation computes it
        diff_map = difference_map(x.float(), x_cf)[:, 0].cpu().numpy()
        return weak_mask(diff_map, self.mask_threshold, True, self.closing_radius, self.opening_radius,
                         self.morphology)

    def label_slices(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weak masks of a batch of slices.

        ``x``: (B, 1, S, S) in [-1, 1], S = ``image_size``, on any device. Returns
        ``p_abnormal`` (B,) float32, ``abnormal`` (B,) bool (``p_abnormal >= t``) and
        ``masks`` (A, S, S) bool for the A abnormal slices, in batch order (Sec. 3.1: only
        abnormal slices are inpainted; Sec. 5: threshold + closing, opening, largest component).
        """
        x = self._on_device(x)
        p_abnormal = self.p_abnormal(x)
        abnormal = (p_abnormal >= self.classifier_threshold).cpu().numpy()  # host sync: pick slices
        masks = self.weak_masks(x[torch.from_numpy(abnormal).to(self.device)])
        return p_abnormal.cpu().numpy(), abnormal, masks


def _file_stamp(path: Path) -> list[Any]:
    """What identifies a model file: its content (a copied or moved run folder keeps it)."""
    return [path.name, content_id([path])]


def _threshold_is_stale(results: Path, generator_file: Path) -> bool:
    """Whether the validation threshold in ``results`` was chosen for another generator: by the
    generator's content id the results record (``settings.inputs``), else (older results) by
    modification time."""
    inputs = read_json(results).get("settings", {}).get("inputs")
    if isinstance(inputs, list) and inputs:
        return inputs[-1] != content_id([generator_file])
    return results.stat().st_mtime_ns < generator_file.stat().st_mtime_ns


def _prepared_folder(recorded: str, run_dir: Path, config_path: Path, where: str) -> Path:
    """The prepared dataset a model was trained on: the recorded path, or (for a run folder
    that was moved) the folder of that name under ``run_dir/data/prepared``."""
    candidates = [Path(recorded), run_dir / "data" / "prepared" / Path(recorded).name]
    for folder in candidates:
        if (folder / "fingerprint.json").is_file():
            return folder
    raise FileNotFoundError(
        f"the prepared dataset {recorded} recorded in {config_path} is not there (nor in "
        f"{candidates[1]}); its fingerprint.json holds the HU normalisation the model was trained "
        f"with. Rebuild it with the same settings: `coin train-classifier {where}` prepares it "
        "(with the run's profile and data), or `coin prepare`."
    )


def _prepared_settings(prepared: Path) -> tuple[int, int]:
    """(image size, min_kidney_pixels) of the run's prepared dataset: what training saw.
    ``min_kidney_pixels`` is the manifest's (``DataConfig`` of the profile that prepared it);
    a folder whose manifest does not record it was made with ``DataConfig``'s default."""
    manifest = read_json(prepared / "manifest.json") if (prepared / "manifest.json").is_file() else {}
    min_kidney_pixels = int(manifest.get("min_kidney_pixels", DataConfig.min_kidney_pixels))
    if "image_size" in manifest:
        return int(manifest["image_size"]), min_kidney_pixels
    images = prepared / "images.npy"
    if not images.is_file():
        raise FileNotFoundError(f"{prepared} has neither manifest.json with image_size nor images.npy")
    return int(np.load(images, mmap_mode="r").shape[-1]), min_kidney_pixels


def _mask_threshold(run_dir: Path, track: str, variant: str, override: float | None) -> tuple[float, str, EvalConfig]:
    """(threshold, where it came from, EvalConfig of the evaluation) for the weak mask."""
    from .pipeline import RunPaths

    results = RunPaths(run_dir).result(track, variant)
    eval_config = EvalConfig()
    chosen = None
    if results.is_file():
        scored = read_json(results)
        radii = {k: v for k, v in scored.get("config", {}).get("eval", {}).items()
                 if k in ("closing_radius", "opening_radius", "morphology")}
        eval_config = replace(eval_config, **radii)  # the post-processing the threshold was chosen with
        if scored.get("metrics", {}).get("threshold_from_val") is not None:
            chosen = float(scored["metrics"]["threshold_from_val"])
    if override is not None:
        return float(override), "--threshold", eval_config
    if chosen is not None:
        return chosen, f"validation sweep ({results.relative_to(run_dir)} threshold_from_val)", eval_config
    return eval_config.threshold, f"EvalConfig.threshold (no {results.relative_to(run_dir)}; run `coin evaluate`)", eval_config


def load_label_model(
    run_dir: str | os.PathLike,
    track: str = "synthetic",
    variant: str = "coin",
    device: torch.device | str | None = None,
    threshold: float | None = None,
) -> LabelModel:
    """Classifier, generator, normalisation and thresholds of a run folder (layout:
    ``coinlib.pipeline.RunPaths``). Errors name the missing piece and the command that makes it.
    """
    from .classifier_training import BEST as CLASSIFIER_FILE
    from .classifier_training import load_classifier
    from .counterfactual import FINAL as GENERATOR_FILE
    from .counterfactual import load_generator
    from .pipeline import RunPaths

    run_dir = Path(run_dir)
    if track not in ("synthetic", "tumour"):
        raise ValueError(f"track must be 'synthetic' or 'tumour', got {track!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    paths = RunPaths(run_dir)
    where = f"--run-dir {run_dir} --track {track}"
    classifier_file = paths.classifier(track) / CLASSIFIER_FILE
    if not classifier_file.is_file():
        raise FileNotFoundError(f"no classifier in the run folder: {classifier_file} is missing; "
                                f"train it with `coin train-classifier {where}`")
    generator_file = paths.counterfactual(track, variant) / GENERATOR_FILE
    if not generator_file.is_file():
        raise FileNotFoundError(f"no generator in the run folder: {generator_file} is missing; "
                                f"train it with `coin train {where} --variant {variant}`")
    generator_config = generator_file.with_suffix(".json")
    prepared = _prepared_folder(read_json(generator_config)["data"], run_dir, generator_config, where)
    fingerprint = read_json(prepared / "fingerprint.json")
    classifier_threshold = float(read_json(classifier_file.with_suffix(".json"))["classifier"]["threshold"])
    mask_threshold, source, eval_config = _mask_threshold(run_dir, track, variant, threshold)
    results = paths.result(track, variant)
    if source.startswith("validation") and _threshold_is_stale(results, generator_file):
        warnings.warn(f"{results} was scored with another generator than {generator_file}: its threshold was "
                      "chosen for an earlier one; "
                      f"run `coin evaluate {where} --variant {variant}` to choose it again",
                      stacklevel=2)

    device = device if isinstance(device, torch.device) else pick_device(device)
    classifier = load_classifier(paths.classifier(track), device)
    generator, _ = load_generator(paths.counterfactual(track, variant), device)
    if device.type == "cuda":
        classifier.to(memory_format=torch.channels_last)
        generator.to(memory_format=torch.channels_last)
    image_size, min_kidney_pixels = _prepared_settings(prepared)
    settings = {
        "run_dir": str(run_dir.resolve()),
        "track": track,
        "variant": variant,
        "classifier": _file_stamp(classifier_file),
        "generator": _file_stamp(generator_file),
        "prepared": str(prepared.resolve()),
        "image_size": image_size,
        "p_low": float(fingerprint["p_low"]),
        "p_high": float(fingerprint["p_high"]),
        "classifier_threshold": classifier_threshold,
        "mask_threshold": mask_threshold,
        "threshold_source": source,
        "closing_radius": eval_config.closing_radius,
        "opening_radius": eval_config.opening_radius,
        "morphology": eval_config.morphology,
        "min_kidney_pixels": min_kidney_pixels,
        "resample": "bilinear of the 0/1 mask, >= 0.5",
    }
    return LabelModel(
        classifier=classifier, generator=generator, image_size=image_size,
        p_low=settings["p_low"], p_high=settings["p_high"],
        classifier_threshold=classifier_threshold, mask_threshold=mask_threshold, threshold_source=source,
        closing_radius=eval_config.closing_radius, opening_radius=eval_config.opening_radius,
        morphology=eval_config.morphology,
        device=device, settings=settings, min_kidney_pixels=min_kidney_pixels,
    )


# --------------------------------------------------------------------------- ranks


def shard(files: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The files rank ``rank`` of ``world_size`` labels: ``sorted(files)[rank::world_size]``.

    Across ranks 0..world_size-1 every file appears exactly once; the split does not depend
    on the order ``files`` come in.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return sorted(files)[rank::world_size]


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size): from an initialised ``torch.distributed`` group, else from the
    ``RANK`` / ``WORLD_SIZE`` environment (torchrun sets both), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE must be integers: {err}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    return rank, world_size


# --------------------------------------------------------------------------- geometry


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml: |det(affine[:3, :3])| mm^3 / 1000 (any orientation, oblique too)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def lesion_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Lesion volume in ml: nonzero voxels of ``mask`` (3D, the file's grid) x voxel volume."""
    return float(np.count_nonzero(mask)) * voxel_volume_ml(affine)


def _spacing_mm(affine: np.ndarray) -> list[float]:
    """Voxel size along the file's own array axes (the header's zooms)."""
    return [round(float(s), 4) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))]


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, S, S) bool -> (n, height, width) bool: bilinear (``align_corners=False``) of the
    0/1 mask, then ``>= 0.5``; mirror-symmetric, so orientation does not change the result."""
    x = torch.from_numpy(masks.astype(np.float32))[:, None]
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return (y[:, 0] >= 0.5).numpy()


def _radiological_to_canonical(slices: np.ndarray) -> np.ndarray:
    """Inverse of :meth:`CanonicalVolume.radiological`: (n, Y, X) -> (X, Y, n)."""
    return np.transpose(slices[:, ::-1, ::-1], (2, 1, 0))


def to_native_mask(canonical: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A RAS+ canonical volume (as :func:`coinlib.volumes.load_canonical` makes it) put back
    into the voxel axes of a file with ``affine``; the inverse of the reorientation."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(canonical, back))


# --------------------------------------------------------------------------- labelling


def _slice_selection(kidney: np.ndarray | None, min_pixels: int, n_axial: int) -> np.ndarray:
    """Canonical z of the slices to classify: all, or those with >= ``min_pixels`` kidney
    pixels (Sec. 4.3, :func:`coinlib.prepare.kidney_slice_indices`)."""
    if kidney is None:
        return np.arange(n_axial)
    return kidney_slice_indices(kidney, min_pixels)[0]


def _near_kidney(kidney: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, mm) of a kidney voxel; kidney (X, Y, Z) bool."""
    if not kidney.any():
        return np.zeros(kidney.shape, dtype=bool)
    return ndimage.distance_transform_edt(~kidney, sampling=tuple(spacing)) <= margin_mm


def label_volume(
    image: nib.Nifti1Image,
    volume: CanonicalVolume,
    model: LabelModel,
    batch_size: int = 32,
    kidney: np.ndarray | None = None,
    margin_mm: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The weak mask of one scan in the file's own voxel grid, and its numbers.

    ``image``: the scan's NIfTI image (affine, shape); ``volume``: its RAS+ canonical data.
    ``kidney``: None (every axial slice is classified) or a bool kidney mask of
    ``volume.data.shape`` (canonical): only slices with >= ``model.min_kidney_pixels`` kidney
    pixels are classified (Sec. 4.3); with ``margin_mm`` the weak mask is cut to voxels
    within that many mm of the kidney. Slices go through :meth:`LabelModel.label_slices`
    ``batch_size`` at a time. Returns ``mask`` (``image.shape``) uint8 in {0, 1} and a dict
    with ``slices``, ``classified_slices``, ``abnormal_slices``, ``lesion_slices``,
    ``lesion_voxels``, ``lesion_ml``, ``abnormal_slice_indices``, ``classified_slice_indices``
    and their ``p_abnormal`` (indices along the file's own axial axis, as a viewer numbers them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if kidney is not None and kidney.shape != volume.data.shape:
        raise ValueError(f"kidney mask shape {kidney.shape} differs from the volume's {volume.data.shape}")
    if margin_mm is not None and kidney is None:
        raise ValueError("a mask margin needs a kidney mask")
    width, height, n_axial = volume.data.shape  # canonical (X, Y, Z); slices are (Y, X)
    classified = _slice_selection(kidney, model.min_kidney_pixels, n_axial)
    canonical = np.zeros(volume.data.shape, dtype=bool)
    abnormal_z: list[int] = []
    p_abnormal: list[float] = []
    for start in range(0, len(classified), batch_size):
        z = classified[start:start + batch_size]
        x = resize_slices(normalise_hu(volume.radiological(z), model.p_low, model.p_high), model.image_size, "image")
        p, abnormal, masks = model.label_slices(torch.from_numpy(x)[:, None])
        abnormal_z += z[abnormal].tolist()
        p_abnormal += p.tolist()
        drawn = masks.any(axis=(1, 2))
        if drawn.any():
            native = _resize_masks(masks[drawn], height, width)
            canonical[:, :, z[abnormal][drawn]] = _radiological_to_canonical(native)
    if margin_mm is not None and canonical.any():
        canonical &= _near_kidney(kidney, volume.spacing, margin_mm)
    mask = to_native_mask(canonical, image.affine).astype(np.uint8)
    if mask.shape != tuple(image.shape):  # cannot happen for a 3D file; guard the geometry anyway
        raise RuntimeError(f"mask shape {mask.shape} differs from {volume.path} shape {tuple(image.shape)}")
    voxels = int(np.count_nonzero(mask))
    order = sorted(range(len(classified)), key=lambda i: volume.original_slice_index(classified[i]))
    return mask, {
        "slices": int(n_axial),
        "classified_slices": len(classified),
        "abnormal_slices": len(abnormal_z),
        "lesion_slices": int(np.count_nonzero(canonical.any(axis=(0, 1)))),
        "lesion_voxels": voxels,
        "lesion_ml": round(voxels * voxel_volume_ml(image.affine), 4),
        "abnormal_slice_indices": sorted(volume.original_slice_index(k) for k in abnormal_z),
        "classified_slice_indices": [volume.original_slice_index(classified[i]) for i in order],
        "p_abnormal": [round(p_abnormal[i], 5) for i in order],
    }


def _write_mask(path: Path, mask: np.ndarray, image: nib.Nifti1Image) -> None:
    """``mask`` as uint8 NIfTI with ``image``'s affine and header codes, atomically."""
    header = image.header.copy()
    out = type(image)(mask, image.affine, header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(out, tmp)


def output_paths(scan: Scan, out_dir: Path) -> tuple[Path, Path]:
    """(mask, sidecar) of ``scan``: ``out_dir / <scan.name>`` + :data:`MASK_SUFFIX` /
    :data:`SIDECAR_SUFFIX` (the name mirrors the input's sub-folders)."""
    return out_dir / f"{scan.name}{MASK_SUFFIX}", out_dir / f"{scan.name}{SIDECAR_SUFFIX}"


def _our_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar at ``path`` when coin label wrote it (it says so, or it has the record's
    shape: a status of ours and the settings), else None (a user's file of that name)."""
    try:
        saved = read_json(path)
    except (ValueError, OSError):
        return None
    if not isinstance(saved, dict):
        return None
    if saved.get("written_by") == WRITTEN_BY:
        return saved
    older = saved.get("status") in ("labelled", "unreadable") and isinstance(saved.get("settings"), dict)
    return saved if older else None


def _csv_header() -> str:
    return ",".join(CSV_COLUMNS)


def _check_csv_is_ours(path: Path, force: bool) -> None:
    """``labels.csv`` may be replaced only when coin label wrote it (its header is ours)."""
    if force or not (path.exists() or path.is_symlink()):
        return
    try:
        with open(path, newline="") as handle:
            first = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        first = None
    if not path.is_file() or path.is_symlink() or first != _csv_header():
        raise ValueError(f"{path} exists and was not written by coin label (its first line is not coin label's "
                         "header); move it away, choose another --out, or pass --force to replace it")


def _status(mask_path: Path, sidecar_path: Path, settings: dict[str, Any], force: bool) -> str:
    """'todo' or 'done' for one scan; raises when finishing it would overwrite without ``force``."""
    if force:
        return "todo"
    if sidecar_path.exists() or sidecar_path.is_symlink():
        saved = _our_sidecar(sidecar_path) if sidecar_path.is_file() and not sidecar_path.is_symlink() else None
        if saved is None:
            raise ValueError(f"{sidecar_path} exists and was not written by coin label; move it away, choose "
                             "another --out, or pass --force to replace it")
        if saved.get("status") == "unreadable":
            return "todo"  # our record of a failure: try again
        if mask_path.is_file():
            if saved.get("settings") == settings:
                return "done"
            changed = "; ".join(config_differences(saved.get("settings"), settings)[:4])
            raise ValueError(f"{mask_path} was labelled with other settings ({changed}); "
                             "pass --force to relabel, or choose another --out")
    if mask_path.exists():
        raise ValueError(f"{mask_path} exists without its sidecar {sidecar_path.name} (an interrupted "
                         "run, or not written by coin label); pass --force to overwrite it")
    return "todo"


def _prefetched(items: Sequence[T], read) -> Iterator[tuple[T, Future]]:
    """``(item, future of read(item))`` in order, reading the next scan while one is labelled
    (NIfTI decompression and DICOM decoding release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(read, items[0])] if items else []
        for i, item in enumerate(items):
            if i + 1 < len(items):
                pending.append(pool.submit(read, items[i + 1]))
            yield item, pending.pop(0)


def write_label_csv(scans: Sequence[Scan], out_dir: Path) -> tuple[Path, int]:
    """Rebuild ``out_dir/labels.csv`` from the sidecars of ``scans``; returns (path, rows).

    Scans without a sidecar yet are left out; unreadable ones have a row with ``status``
    ``unreadable`` and the ``error``. Reading the sidecars and replacing the CSV happen under
    one file lock (``labels.csv.lock``), so when several ranks finish at once the last one
    to take the lock, which sees every sidecar written before, leaves the complete CSV; the
    replacement itself is atomic.
    """
    path = out_dir / CSV_NAME
    with exclusive(path.with_name(CSV_NAME + ".lock")):
        rows = []
        for scan in sorted(scans):
            _, sidecar = output_paths(scan, out_dir)
            if sidecar.is_file():
                record = read_json(sidecar)
                if "shape" in record:
                    record["shape"] = "x".join(str(s) for s in record["shape"])
                    record["spacing_mm"] = "x".join(f"{s:g}" for s in record["spacing_mm"])
                rows.append(record)
        write_csv(path, rows, CSV_COLUMNS)
    return path, len(rows)


@dataclass(frozen=True)
class LabelRun:
    """What one :func:`label_folder` call did (on this rank)."""

    csv: Path
    labelled: list[Scan]
    skipped: list[Scan]
    failed: list[tuple[Scan, str]]  # unreadable scans and why (in the CSV too)
    rank: int
    world_size: int
    total: int  # scans found, all ranks together
    csv_rows: int  # scans in the CSV when this rank wrote it (== total once every rank is done)


@dataclass(frozen=True)
class _Inputs:
    image: nib.Nifti1Image
    volume: CanonicalVolume
    kidney: np.ndarray | None  # canonical, bool
    selection: str  # what decided which slices were classified (the CSV's slice_selection)


def _read_inputs(scan: Scan, organ_masks: Path | None, single: bool, min_pixels: int) -> _Inputs:
    """The scan and (with ``organ_masks``) its kidney mask; raises :class:`UnreadableScan`."""
    image, volume = read_scan(scan)
    if organ_masks is None:
        return _Inputs(image, volume, None, EVERY_SLICE)
    location = find_organ_masks(organ_masks, scan, single)
    native, what = read_kidney_mask(location, image, scan)
    kidney = canonical(native, image.affine, location).data
    return _Inputs(image, volume, kidney, f"slices with >= {min_pixels} kidney pixels ({what})")


def _check_options(organ_masks: Path | None, margin_mm: float | None) -> None:
    if organ_masks is not None and not organ_masks.exists():
        raise FileNotFoundError(f"--organ-masks {organ_masks} not found")
    if margin_mm is not None:
        if organ_masks is None:
            raise ValueError("--mask-margin-mm needs --organ-masks (the kidneys the margin is measured from)")
        if not (math.isfinite(margin_mm) and margin_mm >= 0):
            raise ValueError(f"--mask-margin-mm must be a finite number >= 0, got {margin_mm}")


def label_folder(
    run_dir: str | os.PathLike,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    track: str = "synthetic",
    variant: str = "coin",
    batch_size: int = 32,
    device: torch.device | str | None = None,
    force: bool = False,
    threshold: float | None = None,
    organ_masks: str | os.PathLike | None = None,
    mask_margin_mm: float | None = None,
    progress: bool = True,
) -> LabelRun:
    """Weak masks for every CT scan under ``source`` (module doc; paper Sec. 3.1, 5).

    Writes a mask and a sidecar per scan and ``labels.csv`` under ``out_dir``; skips scans
    already done with the same settings; labels this rank's :func:`shard` only.
    ``organ_masks``: TotalSegmentator's output for the scans (restricts the classified
    slices, Sec. 4.3); ``mask_margin_mm``: cut the weak mask to that margin around the
    kidneys. An unreadable scan is recorded (sidecar, CSV, ``failed``) and the run goes on.
    """
    source, out_dir = Path(source), Path(out_dir)
    organ_masks = Path(organ_masks) if organ_masks is not None else None
    _check_options(organ_masks, mask_margin_mm)
    scans = find_scans(source, exclude=out_dir)
    rank, world_size = distributed_rank()
    if device is None and world_size > 1 and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    model = load_label_model(run_dir, track, variant, device, threshold)
    settings = {**model.settings, "organ_masks": str(organ_masks.resolve()) if organ_masks else None,
                "mask_margin_mm": mask_margin_mm}
    _check_csv_is_ours(out_dir / CSV_NAME, force)
    mine = shard(scans, rank, world_size)
    todo, skipped = [], []
    for scan in mine:
        status = _status(*output_paths(scan, out_dir), settings, force)
        (todo if status == "todo" else skipped).append(scan)

    labelled, failed = [], []
    single = len(scans) == 1

    def read(scan: Scan) -> _Inputs:
        return _read_inputs(scan, organ_masks, single, model.min_kidney_pixels)

    bar = tqdm(total=len(todo), desc="coin label", unit="scan", disable=not progress)
    for scan, pending in _prefetched(todo, read):
        mask_path, sidecar_path = output_paths(scan, out_dir)
        record = {"written_by": WRITTEN_BY, "file": scan.display, "format": scan.kind,
                  "series_uid": scan.series_uid}
        try:
            inputs = pending.result()
        except UnreadableScan as err:
            reason = " ".join(str(err).split())  # one line: a CSV field and a line on stderr
            failed.append((scan, reason))
            write_json(sidecar_path, {**record, "status": "unreadable", "error": reason, "settings": settings})
            bar.update(1)
            continue
        mask, numbers = label_volume(inputs.image, inputs.volume, model, batch_size, inputs.kidney, mask_margin_mm)
        if inputs.kidney is not None and numbers["classified_slices"] == 0:
            warnings.warn(f"{scan.display}: no axial slice has >= {model.min_kidney_pixels} kidney pixels in its "
                          f"organ masks ({inputs.selection}), so no slice was classified and its mask is empty; "
                          "are they the kidney masks of this scan?", stacklevel=2)
        _write_mask(mask_path, mask, inputs.image)
        write_json(sidecar_path, {
            **record,
            "status": "labelled",
            "mask": mask_path.relative_to(out_dir).as_posix(),
            "shape": [int(s) for s in inputs.image.shape],
            "spacing_mm": _spacing_mm(inputs.image.affine),
            "axial_axis": inputs.volume.axial_axis,
            "slice_selection": inputs.selection,
            "mask_margin_mm": mask_margin_mm,
            **numbers,
            "classifier_threshold": model.classifier_threshold,
            "mask_threshold": model.mask_threshold,
            "threshold_source": model.threshold_source,
            "settings": settings,
        })
        labelled.append(scan)
        bar.update(1)
        bar.set_postfix(abnormal=numbers["abnormal_slices"], ml=numbers["lesion_ml"])
    bar.close()
    csv_path, rows = write_label_csv(scans, out_dir)
    return LabelRun(csv=csv_path, labelled=labelled, skipped=skipped, failed=failed, rank=rank,
                    world_size=world_size, total=len(scans), csv_rows=rows)
