"""Weak labels for real scans: ``coin label`` (paper Sec. 3.1 inference, Sec. 5 post-processing).

A trained run folder turns CT volumes into weak lesion masks, slice by slice, exactly as
the evaluation scores them:

1. Every ``*.nii.gz`` under the input folder is read in its own orientation and reoriented
   to RAS+ from its affine (``coinlib.prepare``'s reader); axial slices are taken in
   radiological view, HU are normalised with the training scans' fingerprint
   (``fingerprint.json`` of the run's prepared dataset) and resized to the run's image size,
   the same functions ``coin prepare`` used (:func:`coinlib.prepare.normalise_hu`,
   :func:`coinlib.prepare.resize_slices`).
2. The frozen classifier f labels a slice abnormal when ``p_abnormal >= t`` (Sec. 3.1, the
   classifier's configured threshold). Only abnormal slices are inpainted: COIN "predicts a
   normal counterfactual x_cf only when the classifier deems x abnormal" (Sec. 3.1), with
   the inpainting condition (COIN's one condition; bin 0, "normal", for Singla*).
3. ``diff_map = |x - x_cf|`` on the [0, 1] scale, thresholded and post-processed by closing,
   opening and the largest connected component (Sec. 5; :func:`coinlib.masks.weak_mask`).
   The threshold is the one chosen on the validation split by ``coin evaluate``
   (``results/seed0/<track>_<variant>.json``, ``threshold_from_val``) when that file exists, else
   ``EvalConfig.threshold``; ``--threshold`` overrides both. The CSV says which was used.
4. Slice masks are resampled to the native in-plane grid (bilinear of the 0/1 mask, then
   ``>= 0.5``), put back along the native axial axis in the file's own orientation and
   written as a uint8 NIfTI with the input's exact affine, shape and header codes.

Inputs: ``--in`` is a folder, searched recursively for ``*.nii.gz`` (flat files and the
KiTS23 layout ``case_X/imaging.nii.gz`` alike), or one file. Label files of the two public
layouts are not CT and are left out: files named ``segmentation.nii.gz`` and anything below
a folder named ``segmentations`` or ``instances``; so are the masks written here
(``*_coin_mask.nii.gz``) and, when ``--out`` lies inside ``--in``, everything below it.

Outputs, under ``--out``, mirroring the input's sub-folders so names never collide::

    <relative dir>/<name>_coin_mask.nii.gz   the weak mask (uint8, 1 = lesion)
    <relative dir>/<name>_coin_mask.json     sidecar: the CSV row, the abnormal slices, the settings
    labels.csv                               one row per labelled scan, rebuilt from sidecars
    labels.csv.lock                          the lock ranks take to rebuild labels.csv

Resuming: every file is written atomically (``coinlib.files.atomic_path``), mask first, then
its sidecar; a scan counts as done when both exist and the sidecar records the same
settings (run folder, checkpoints, thresholds, normalisation). Done scans are skipped. A
mask without its sidecar, or one made with other settings, is never overwritten unless
``force=True``; the run stops with an error naming it.

Several processes (``torchrun --nproc-per-node N -m coinlib.cli label ...``, or any launcher
that sets ``RANK`` and ``WORLD_SIZE``; an initialised ``torch.distributed`` group is used when
there is one): rank r labels ``shard(files, r, N)`` = ``sorted(files)[r::N]``. Each scan's
sidecar is its own record, so ranks never write the same file. Every rank rebuilds
``labels.csv`` from all sidecars when it finishes, under a file lock; the last rank to finish
therefore leaves the complete CSV. No barrier is needed, so a slow rank cannot time one out,
and a failed rank leaves a CSV of what is done (run again to finish: done scans are skipped).

Every axial slice is classified, including slices outside the kidney range that
preparation drops (Sec. 4.3 keeps slices with >= 32 kidney pixels); f never saw those in
training, so an abnormal call there deserves a look.
"""

from __future__ import annotations

import contextlib
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
from torch import nn

from .config import EvalConfig
from .files import atomic_path, read_json, write_csv, write_json
from .masks import difference_map, weak_mask
from .prepare import (
    CanonicalVolume,
    _canonical,
    _open_nifti,
    _read_data,
    normalise_hu,
    resize_slices,
)
from .progress import tqdm
from .runtime import autocast, config_differences, pick_device

__all__ = [
    "MASK_SUFFIX",
    "SIDECAR_SUFFIX",
    "CSV_NAME",
    "CSV_COLUMNS",
    "LabelModel",
    "LabelRun",
    "load_label_model",
    "find_volumes",
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

MASK_SUFFIX = "_coin_mask.nii.gz"
SIDECAR_SUFFIX = "_coin_mask.json"
CSV_NAME = "labels.csv"
CSV_COLUMNS = [
    "file", "mask", "shape", "spacing_mm", "axial_axis", "slices", "abnormal_slices",
    "lesion_slices", "lesion_voxels", "lesion_ml", "classifier_threshold", "mask_threshold",
    "threshold_source",
]
LABEL_FILE_NAMES = frozenset({"segmentation.nii.gz"})  # KiTS23 labels
LABEL_FOLDERS = frozenset({"segmentations", "instances"})  # TotalSegmentator, KiTS23 annotations
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

    @torch.inference_mode()
    def label_slices(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weak masks of a batch of slices.

        ``x``: (B, 1, S, S) in [-1, 1], S = ``image_size``, on any device. Returns
        ``p_abnormal`` (B,) float32, ``abnormal`` (B,) bool (``p_abnormal >= t``) and
        ``masks`` (A, S, S) bool for the A abnormal slices, in batch order (Sec. 3.1: only
        abnormal slices are inpainted; Sec. 5: threshold + closing, opening, largest component).
        """
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device):
            p_abnormal = torch.sigmoid(self.classifier(x).float())
        abnormal = (p_abnormal >= self.classifier_threshold).cpu().numpy()  # host sync: pick slices
        size = x.shape[-1]
        masks = np.zeros((0, size, size), dtype=bool)
        if abnormal.any():
            x_abnormal = x[torch.from_numpy(abnormal).to(self.device)]
            inpaint = torch.zeros(len(x_abnormal), dtype=torch.long, device=self.device)
            with autocast(self.device):
                x_cf = self.generator(x_abnormal, inpaint).float()
            diff_map = difference_map(x_abnormal.float(), x_cf)[:, 0].cpu().numpy()
            masks = weak_mask(diff_map, self.mask_threshold, True, self.closing_radius, self.opening_radius)
        return p_abnormal.cpu().numpy(), abnormal, masks


def _file_stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


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


def _image_size(prepared: Path) -> int:
    manifest = read_json(prepared / "manifest.json") if (prepared / "manifest.json").is_file() else {}
    if "image_size" in manifest:
        return int(manifest["image_size"])
    images = prepared / "images.npy"
    if not images.is_file():
        raise FileNotFoundError(f"{prepared} has neither manifest.json with image_size nor images.npy")
    return int(np.load(images, mmap_mode="r").shape[-1])


def _mask_threshold(run_dir: Path, track: str, variant: str, override: float | None) -> tuple[float, str, EvalConfig]:
    """(threshold, where it came from, EvalConfig of the evaluation) for the weak mask."""
    from .pipeline import RunPaths

    results = RunPaths(run_dir).result(track, variant)
    eval_config = EvalConfig()
    chosen = None
    if results.is_file():
        scored = read_json(results)
        radii = {k: v for k, v in scored.get("config", {}).get("eval", {}).items()
                 if k in ("closing_radius", "opening_radius")}
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
    if source.startswith("validation") and results.stat().st_mtime_ns < generator_file.stat().st_mtime_ns:
        warnings.warn(f"{results} is older than {generator_file}: its threshold was chosen for an earlier "
                      f"generator; run `coin evaluate {where} --variant {variant}` to choose it again",
                      stacklevel=2)

    device = device if isinstance(device, torch.device) else pick_device(device)
    classifier = load_classifier(paths.classifier(track), device)
    generator, _ = load_generator(paths.counterfactual(track, variant), device)
    if device.type == "cuda":
        classifier.to(memory_format=torch.channels_last)
        generator.to(memory_format=torch.channels_last)
    image_size = _image_size(prepared)
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
        "resample": "bilinear of the 0/1 mask, >= 0.5",
    }
    return LabelModel(
        classifier=classifier, generator=generator, image_size=image_size,
        p_low=settings["p_low"], p_high=settings["p_high"],
        classifier_threshold=classifier_threshold, mask_threshold=mask_threshold, threshold_source=source,
        closing_radius=eval_config.closing_radius, opening_radius=eval_config.opening_radius,
        device=device, settings=settings,
    )


# --------------------------------------------------------------------------- files and ranks


def _is_label_file(relative: Path) -> bool:
    return relative.name in LABEL_FILE_NAMES or any(part in LABEL_FOLDERS for part in relative.parts[:-1])


def find_volumes(source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """CT volumes to label, sorted: ``source`` itself when it is a file, else every
    ``*.nii.gz`` below it (recursively), less label files (module doc), masks this module
    wrote (``*_coin_mask.nii.gz``) and files below ``exclude`` (the output folder) when that
    lies inside ``source``. Raises naming ``source`` when it is missing or holds none."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input folder not found: {source}")
    root = source.resolve()
    skip = Path(exclude).resolve() if exclude is not None else None
    skip_below = skip is not None and skip != root and skip.is_relative_to(root)  # out inside in
    found = []
    for path in sorted(source.rglob("*.nii.gz")):
        relative = path.relative_to(source)
        if not path.is_file() or _is_label_file(relative) or path.name.endswith(MASK_SUFFIX):
            continue
        if skip_below and path.resolve().is_relative_to(skip):
            continue
        found.append(path)
    if not found:
        raise ValueError(f"no CT volumes (*.nii.gz, label files excluded) found under {source}")
    return found


def output_paths(volume: Path, source_root: Path, out_dir: Path) -> tuple[Path, Path]:
    """(mask, sidecar) of ``volume``: its path relative to ``source_root``, mirrored under
    ``out_dir``, with ``.nii.gz`` replaced by :data:`MASK_SUFFIX` / :data:`SIDECAR_SUFFIX`."""
    relative = volume.relative_to(source_root)
    stem = relative.name[: -len(".nii.gz")] if relative.name.endswith(".nii.gz") else relative.stem
    folder = out_dir / relative.parent
    return folder / f"{stem}{MASK_SUFFIX}", folder / f"{stem}{SIDECAR_SUFFIX}"


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
    """A RAS+ canonical volume (as :func:`coinlib.prepare.load_canonical` makes it) put back
    into the voxel axes of a file with ``affine``; the inverse of the reorientation."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(canonical, back))


# --------------------------------------------------------------------------- labelling


def _read_volume(path: Path) -> tuple[nib.Nifti1Image, CanonicalVolume]:
    image = _open_nifti(path)
    return image, _canonical(_read_data(image, path), image.affine, path)


def label_volume(
    image: nib.Nifti1Image, volume: CanonicalVolume, model: LabelModel, batch_size: int = 32
) -> tuple[np.ndarray, dict[str, Any]]:
    """The weak mask of one scan in the file's own voxel grid, and its numbers.

    ``image``: the file's NIfTI image (affine, shape); ``volume``: its RAS+ canonical data.
    Axial slices go through :meth:`LabelModel.label_slices` ``batch_size`` at a time.
    Returns ``mask`` (``image.shape``) uint8 in {0, 1} and a dict with ``slices``,
    ``abnormal_slices``, ``lesion_slices``, ``lesion_voxels``, ``lesion_ml`` and
    ``abnormal_slice_indices`` (along the file's own axial axis, as a viewer numbers them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    width, height, n_axial = volume.data.shape  # canonical (X, Y, Z); slices are (Y, X)
    canonical = np.zeros(volume.data.shape, dtype=bool)
    abnormal_z: list[int] = []
    for start in range(0, n_axial, batch_size):
        z = np.arange(start, min(start + batch_size, n_axial))
        x = resize_slices(normalise_hu(volume.radiological(z), model.p_low, model.p_high), model.image_size, "image")
        _, abnormal, masks = model.label_slices(torch.from_numpy(x)[:, None])
        abnormal_z += z[abnormal].tolist()
        drawn = masks.any(axis=(1, 2))
        if drawn.any():
            native = _resize_masks(masks[drawn], height, width)
            canonical[:, :, z[abnormal][drawn]] = _radiological_to_canonical(native)
    mask = to_native_mask(canonical, image.affine).astype(np.uint8)
    if mask.shape != tuple(image.shape):  # cannot happen for a 3D file; guard the geometry anyway
        raise RuntimeError(f"mask shape {mask.shape} differs from {volume.path} shape {tuple(image.shape)}")
    voxels = int(np.count_nonzero(mask))
    return mask, {
        "slices": int(n_axial),
        "abnormal_slices": len(abnormal_z),
        "lesion_slices": int(np.count_nonzero(canonical.any(axis=(0, 1)))),
        "lesion_voxels": voxels,
        "lesion_ml": round(voxels * voxel_volume_ml(image.affine), 4),
        "abnormal_slice_indices": sorted(volume.original_slice_index(k) for k in abnormal_z),
    }


def _write_mask(path: Path, mask: np.ndarray, image: nib.Nifti1Image) -> None:
    """``mask`` as uint8 NIfTI with ``image``'s affine and header codes, atomically."""
    header = image.header.copy()
    out = type(image)(mask, image.affine, header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(out, tmp)


def _status(mask_path: Path, sidecar_path: Path, settings: dict[str, Any], force: bool) -> str:
    """'todo' or 'done' for one scan; raises when finishing it would overwrite without ``force``."""
    if force:
        return "todo"
    if sidecar_path.is_file() and mask_path.is_file():
        saved = read_json(sidecar_path).get("settings")
        if saved == settings:
            return "done"
        changed = "; ".join(config_differences(saved, settings)[:4])
        raise ValueError(f"{mask_path} was labelled with other settings ({changed}); "
                         "pass --force to relabel, or choose another --out")
    if mask_path.exists():
        raise ValueError(f"{mask_path} exists without its sidecar {sidecar_path.name} (an interrupted "
                         "run, or not written by coin label); pass --force to overwrite it")
    return "todo"


def _prefetched(paths: Sequence[Path], read) -> Iterator[tuple[Path, Future]]:
    """``(path, future of read(path))`` in order, reading the next file while one is labelled
    (NIfTI decompression releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(read, paths[0])] if paths else []
        for i, path in enumerate(paths):
            if i + 1 < len(paths):
                pending.append(pool.submit(read, paths[i + 1]))
            yield path, pending.pop(0)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) for the block; where
    ``fcntl`` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_label_csv(volumes: Sequence[Path], source_root: Path, out_dir: Path) -> tuple[Path, int]:
    """Rebuild ``out_dir/labels.csv`` from the sidecars of ``volumes``; returns (path, rows).

    Scans without a sidecar yet are left out. Reading the sidecars and replacing the CSV
    happen under one file lock (``labels.csv.lock``), so when several ranks finish at once the
    last one to take the lock, which sees every sidecar written before, leaves the complete
    CSV; the replacement itself is atomic.
    """
    path = out_dir / CSV_NAME
    with _exclusive(path.with_name(CSV_NAME + ".lock")):
        rows = []
        for volume in sorted(volumes):
            _, sidecar = output_paths(volume, source_root, out_dir)
            if sidecar.is_file():
                record = read_json(sidecar)
                rows.append({
                    **record,
                    "shape": "x".join(str(s) for s in record["shape"]),
                    "spacing_mm": "x".join(f"{s:g}" for s in record["spacing_mm"]),
                })
        write_csv(path, rows, CSV_COLUMNS)
    return path, len(rows)


@dataclass(frozen=True)
class LabelRun:
    """What one :func:`label_folder` call did (on this rank)."""

    csv: Path
    labelled: list[Path]
    skipped: list[Path]
    rank: int
    world_size: int
    total: int  # volumes found, all ranks together
    csv_rows: int  # scans in the CSV when this rank wrote it (== total once every rank is done)


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
    progress: bool = True,
) -> LabelRun:
    """Weak masks for every CT volume under ``source`` (module doc; paper Sec. 3.1, 5).

    Writes a mask and a sidecar per scan and ``labels.csv`` under ``out_dir``; skips scans
    already done with the same settings; labels this rank's :func:`shard` only. Every input
    header is checked before anything is written, so a non-3D or unreadable file stops the run
    at once with an error naming it; a file whose data turn out corrupt stops it when reached
    (finished scans stay done).
    """
    source, out_dir = Path(source), Path(out_dir)
    volumes = find_volumes(source, exclude=out_dir)
    source_root = source.parent if source.is_file() else source
    rank, world_size = distributed_rank()
    if device is None and world_size > 1 and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    model = load_label_model(run_dir, track, variant, device, threshold)
    mine = shard(volumes, rank, world_size)
    for path in mine:
        _open_nifti(path)  # header check: fail before labelling anything
    todo, skipped = [], []
    for path in mine:
        mask_path, sidecar_path = output_paths(path, source_root, out_dir)
        status = _status(mask_path, sidecar_path, model.settings, force)
        (todo if status == "todo" else skipped).append(path)

    labelled = []
    bar = tqdm(total=len(todo), desc="coin label", unit="scan", disable=not progress)
    for path, pending in _prefetched(todo, _read_volume):
        image, volume = pending.result()
        mask, numbers = label_volume(image, volume, model, batch_size)
        mask_path, sidecar_path = output_paths(path, source_root, out_dir)
        _write_mask(mask_path, mask, image)
        write_json(sidecar_path, {
            "file": path.relative_to(source_root).as_posix(),
            "mask": mask_path.relative_to(out_dir).as_posix(),
            "shape": [int(s) for s in image.shape],
            "spacing_mm": _spacing_mm(image.affine),
            "axial_axis": volume.axial_axis,
            **numbers,
            "classifier_threshold": model.classifier_threshold,
            "mask_threshold": model.mask_threshold,
            "threshold_source": model.threshold_source,
            "settings": model.settings,
        })
        labelled.append(path)
        bar.update(1)
        bar.set_postfix(abnormal=numbers["abnormal_slices"], ml=numbers["lesion_ml"])
    bar.close()
    csv_path, rows = write_label_csv(volumes, source_root, out_dir)
    return LabelRun(csv=csv_path, labelled=labelled, skipped=skipped, rank=rank,
                    world_size=world_size, total=len(volumes), csv_rows=rows)
