"""Data preparation: real CT layouts -> the prepared slice folder (``coinlib.prepared``).

Reads the two public layouts:

- ``totalsegmentator``: ``sXXXX/ct.nii.gz`` (int16 HU) and one binary mask per structure in
  ``sXXXX/segmentations/<name>.nii.gz``. Kidney = ``kidney_left`` | ``kidney_right`` (both
  files must exist); no lesions (the synthetic anomalies of paper App. 7.2 are drawn later,
  on every read). Optional ``meta.csv`` (``;``-separated, ``image_id``, ``split``).
- ``kits23``: ``case_XXXXX/imaging.nii.gz`` (float32 HU) and ``segmentation.nii.gz`` (0 bg,
  1 kidney, 2 tumour, 3 cyst; array axis 0 is axial). Kidney = labels {1, 2, 3} (the kidney
  with its masses); lesion = label 2 (tumour); cysts are benign and not lesions. Slice
  label = "slice contains tumour", the stand-in for the paper's TUH label (Sec. 4.1).

Steps (paper Sec. 4.1, 4.3; the authors' data code):

1. Every volume is reoriented to RAS+ from its NIfTI affine (files differ: LPS vs RAS,
   axial axis first or last, 0.8x0.8x2.5 mm vs 1.5 mm). Axial slices are then ``a[:, :, k]``,
   written in radiological view: row 0 anterior, column 0 the patient's right
   (``a[:, :, k].T[::-1, ::-1]``).
2. Keep axial slices whose kidney mask has >= ``min_kidney_pixels`` (32) pixels on the
   native slice, before resizing (Sec. 4.3), or, when ``min_kidney_area_mm2`` is set (the
   authors' tumour track: more than 100 KiTS pixels, :class:`coinlib.config.TumourProtocol`),
   more than that native area. ``min_lesion_area_mm2`` is recorded in the manifest's settings
   and read by :class:`coinlib.data.SliceDataset` (the slice label rule).
3. Split by scan (Sec. 4.1): TotalSegmentator at random (or ``meta.csv``); KiTS stratified
   by total tumour volume so control and tumour scans of every size reach every split.
4. Intensity fingerprint on the training scans only: [0.5, 99.5] percentiles of the HU of
   foreground voxels (inside any label mask read; with ``fingerprint_foreground="lesion"``,
   the authors' tumour track, inside the tumour label only), nnU-Net style; HU are clipped to
   it and rescaled linearly to [-1, 1].
5. Resize to ``image_size`` squared (:func:`resize_slices`): images bilinear as the paper
   states, anti-aliased so that shrinking averages noise rather than aliasing it; masks by
   area majority under the same filter. Non-square native slices are resized straight to
   the square (the paper resizes every slice to 256x256), so their aspect ratio changes.

Volumes are read and checked by :mod:`coinlib.volumes` (as ``coin label`` reads them). Scans
are read one at a time per worker process, in three passes: label masks (kept slices and tumour volume,
all scans), foreground HU (training scans, fingerprint), images (kept slices, all scans).
A scan with no kidney voxels, or no slice reaching the threshold, is skipped with a
warning and listed under ``skipped`` in the manifest: most TotalSegmentator scans (head,
chest, legs) contain no kidney, so this is normal there and not an error. Each scan's result
is saved in a resume folder (:func:`work_folder`) as it is made, so memory holds a few scans
and a killed run resumes at its scan; the arrays are then written scan by scan into a
temporary sibling folder, renamed into place at the end, so a failed or interrupted run never
damages a valid old folder and nothing half-written is taken as done.

The fingerprint reads every label file of a training scan (TotalSegmentator: all of its
structures, not only the kidneys): its foreground is the union of the labelled anatomy, the
abdomen's HU range that the window must hold; the kidneys alone would give a narrower window
(parenchyma and contrast) that clips fat and bone, so the cost of reading the other masks is kept.

Reuse: ``prepare_dataset`` returns an existing folder untouched when it is complete and its
manifest records the same settings and the same ``sources`` (every input file's relative
path, size and ``mtime_ns``); otherwise it says why and rebuilds. Where ``src`` lies is not
part of the settings, so a dataset and its prepared folder can be moved or copied together.

What it never does: replace an ``out`` that holds anything but a prepared folder written
here (its ``manifest.json``; hidden entries count), or write into ``src`` or above it.
Voxels that are NaN or infinite are an error naming the file, unless
``DataConfig.fill_nonfinite_hu`` says what HU to put there (then the manifest counts them
per scan). Two scan folders whose image is the same file (a symlink) count once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig, to_dict
from .files import (atomic_path, content_id, exclusive, read_json, remove_stale_temporaries, temporary_folder,
                    write_json)
from .jobs import Job, JobFailed, run_jobs
from .prepared import ARRAY_FILES, SPLITS, is_complete, write_prepared_chunks
from .progress import tqdm
from .volumes import (
    canonical,
    check_finite,
    check_same_grid,
    integer_labels,
    open_nifti,
    read_data,
    read_finite,
)

__all__ = [
    "LAYOUTS",
    "PREPARE_VERSION",
    "FINGERPRINT_VOXELS_PER_SCAN",
    "ScanFiles",
    "kidney_slice_indices",
    "sample_foreground",
    "compute_fingerprint",
    "normalise_hu",
    "resize_slices",
    "body_slices",
    "BODY_HU",
    "split_scans",
    "split_from_meta",
    "detect_layout",
    "find_scans",
    "prepare_dataset",
    "work_folder",
]

log = logging.getLogger(__name__)

Layout = Literal["totalsegmentator", "kits23"]
LAYOUTS: tuple[str, ...] = ("totalsegmentator", "kits23")
# bump when the algorithm changes (2: anti-aliased resize; 3: body masks): older folders then count as stale
PREPARE_VERSION = 3
FINGERPRINT_VOXELS_PER_SCAN = 200_000  # foreground voxels sampled per training scan
KITS_LABELS = {"background": 0, "kidney": 1, "tumour": 2, "cyst": 3}
_LAYOUT_HELP = (
    "neither TotalSegmentator (sXXXX/ct.nii.gz + segmentations/) nor KiTS23 "
    "(case_XXXXX/imaging.nii.gz + segmentation.nii.gz) layout"
)
_LAYOUT_FILES = {
    "totalsegmentator": "sXXXX/ct.nii.gz + segmentations/",
    "kits23": "case_XXXXX/imaging.nii.gz + segmentation.nii.gz",
}


# --------------------------------------------------------------------------- slices


def kidney_slice_indices(kidney: np.ndarray, min_pixels: int, min_area_mm2: float | None = None,
                         pixel_area_mm2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices to keep (paper Sec. 4.3: kidney area >= 32 pixels per image).

    ``kidney``: (X, Y, Z) RAS+ mask (nonzero = kidney). Counts are taken on the native
    slice, before any resizing. With ``min_area_mm2`` a slice is kept when its kidney covers
    more than that area (``pixel_area_mm2`` per pixel) instead: the authors' "> 100 pixels"
    at KiTS resolution, as an area that means the same at any voxel size. Returns (indices,
    counts): canonical z indices (int64, ascending) and their kidney pixel counts.
    """
    counts = np.count_nonzero(kidney, axis=(0, 1))
    keep = np.flatnonzero(counts >= min_pixels if min_area_mm2 is None else counts * pixel_area_mm2 > min_area_mm2)
    return keep.astype(np.int64), counts[keep].astype(np.int64)


def _kidney_rule(config: DataConfig) -> str:
    return (f">= {config.min_kidney_pixels} kidney pixels" if config.min_kidney_area_mm2 is None
            else f"> {config.min_kidney_area_mm2:g} mm^2 of kidney")


def resize_slices(slices: np.ndarray, size: int, kind: Literal["image", "mask"]) -> np.ndarray:
    """Resize (n, H, W) slices to (n, size, size), float32.

    ``image``: bilinear with anti-aliasing (``F.interpolate(..., antialias=True)``, the
    triangle filter of PIL's and torchvision's bilinear resize): when shrinking, the filter
    widens with the factor, so each output pixel averages the input pixels it covers and
    noise is averaged instead of aliased (white noise: std / ~1.5 x the factor); when
    enlarging it is plain bilinear. Weights are non-negative and sum to 1, so [-1, 1] stays
    [-1, 1]. ``mask``: area majority: a pixel is 1 where the same filter puts at least half
    of its weight on mask pixels, so a mask keeps its area (to about a boundary pixel) and
    matches the image pixels it marks. Masks must be binary {0, 1}. Non-square slices go
    straight to the square (aspect ratio not kept, as in the paper's 256x256).
    """
    if slices.ndim != 3:
        raise ValueError(f"slices must be (n, H, W), got shape {slices.shape}")
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}")
    if len(slices) == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    if kind == "mask" and slices.size and (slices.min() < 0 or slices.max() > 1):
        raise ValueError(f"a mask must hold 0 and 1 only, got values in [{slices.min()}, {slices.max()}]")
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]
    if kind == "mask":
        y = (y >= 0.5).to(torch.float32)
    return y.numpy()


# Air is -1000 HU and fat about -100: a threshold halfway tells the patient from the air
# around them on any window, which the model's input (fat and air both at -1 on a soft-tissue
# window) cannot.
BODY_HU = -500.0


def body_slices(hu: np.ndarray) -> np.ndarray:
    """The patient's body in each (n, H, W) HU slice, bool: voxels above :data:`BODY_HU`, the
    largest connected region of each slice (not the table, clothing or a separate arm), its
    holes (bowel gas, lung) filled."""
    from scipy import ndimage

    from .masks import largest_component

    above = np.asarray(hu) > BODY_HU
    if len(above) == 0:
        return above
    body = largest_component(above)
    for k, region in enumerate(body):
        body[k] = ndimage.binary_fill_holes(region)
    return body


# --------------------------------------------------------------------------- intensity


def sample_foreground(
    hu: np.ndarray, foreground: np.ndarray, max_voxels: int, rng: np.random.Generator
) -> np.ndarray:
    """HU of foreground voxels, float64, at most ``max_voxels`` of them (1D).

    All of them when there are few enough, else a uniform sample without replacement
    drawn with ``rng`` (seed it per scan for a reproducible fingerprint).
    """
    values = np.asarray(hu)[np.asarray(foreground, dtype=bool)]
    if values.size > max_voxels:
        values = values[np.sort(rng.choice(values.size, size=max_voxels, replace=False))]
    return values.astype(np.float64)


def compute_fingerprint(samples: Sequence[np.ndarray], percentiles: Sequence[float]) -> dict[str, Any]:
    """Intensity fingerprint of pooled foreground HU samples (the authors' data code, nnU-Net style).

    Returns ``p_low``, ``p_high`` (``np.percentile``, linear interpolation, HU), the
    ``percentiles`` used, ``mean`` and ``std`` of the sampled HU, and ``voxels`` sampled.
    Raises ``ValueError`` when there are no samples or the percentiles coincide.
    """
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples] or [np.zeros(0)])
    if pooled.size == 0:
        raise ValueError("no foreground voxels in the training scans: cannot measure the fingerprint")
    p_low, p_high = (float(v) for v in np.percentile(pooled, list(percentiles)))
    if not p_high > p_low:
        raise ValueError(f"degenerate intensity fingerprint: p_low = p_high = {p_low} HU")
    return {
        "p_low": p_low,
        "p_high": p_high,
        "percentiles": [float(p) for p in percentiles],
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "voxels": int(pooled.size),
    }


def normalise_hu(hu: np.ndarray, p_low: float, p_high: float) -> np.ndarray:
    """Clip HU to [p_low, p_high] and map linearly to [-1, 1] (float32): p_low -> -1, p_high -> 1."""
    if not p_high > p_low:
        raise ValueError(f"need p_high > p_low, got [{p_low}, {p_high}]")
    x = (np.asarray(hu, dtype=np.float32) - np.float32(p_low)) * np.float32(2.0 / (p_high - p_low)) - 1.0
    return np.clip(x, -1.0, 1.0)


# --------------------------------------------------------------------------- split


def _split_counts(n: int, test_fraction: float, val_fraction: float) -> dict[str, int]:
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"test_fraction + val_fraction must be < 1, got {test_fraction + val_fraction}")
    n_test = max(1, math.floor(n * test_fraction + 0.5))
    n_val = max(1, math.floor(n * val_fraction + 0.5))
    while n_test + n_val > n - 1:  # keep at least one training scan
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        elif n_val > 1:
            n_val -= 1
        else:
            break
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


def _interleaved_labels(counts: dict[str, int]) -> list[str]:
    """Split labels with exactly ``counts``, spread evenly along the sequence (at each
    position the split furthest behind its pro-rata share gets the next label)."""
    n = sum(counts.values())
    assigned = dict.fromkeys(counts, 0)
    labels = []
    for i in range(n):
        split = max(counts, key=lambda s: counts[s] * (i + 1) / n - assigned[s])
        assigned[split] += 1
        labels.append(split)
    if assigned != counts:  # cannot happen (the deficit stays within (-1, 1)); guard anyway
        raise RuntimeError(f"split apportionment failed: {assigned} != {counts}")
    return labels


def split_scans(
    scan_ids: Sequence[str],
    test_fraction: float,
    val_fraction: float,
    seed: int,
    tumour_ml: Sequence[float] | None = None,
) -> dict[str, str]:
    """Assign each scan to ``train`` / ``val`` / ``test`` (paper Sec. 4.1: split by scan).

    ``round(n * fraction)`` scans go to test and to val (at least one each), the rest to
    train (at least one); fewer than 3 scans raise ``ValueError``. Deterministic in
    (``scan_ids`` as a set, ``seed``).

    Without ``tumour_ml``: a seeded random split (TotalSegmentator, Sec. 4.1). With it
    (tumour volume per scan, ml): stratified (TUH/KiTS, Sec. 4.1): scans are sorted by
    volume into strata (all control scans, volume 0, form one; tumour scans form
    consecutive groups of about ``1 / min(fraction)`` scans), each stratum is shuffled
    with the seed, and an evenly interleaved sequence of split labels runs along the
    result, so every split receives controls and tumours of every size in proportion.
    """
    ids = [str(s) for s in scan_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("scan ids must be unique")
    n = len(ids)
    if n < 3:
        raise ValueError(f"need at least 3 scans to split into train/val/test, got {n}")
    counts = _split_counts(n, test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    if tumour_ml is None:
        strata = [sorted(ids)]
    else:
        if len(tumour_ml) != n:
            raise ValueError(f"tumour_ml has {len(tumour_ml)} values for {n} scans")
        volume = {s: float(v) for s, v in zip(ids, tumour_ml)}
        controls = sorted(s for s in ids if volume[s] <= 0.0)
        tumours = sorted((s for s in ids if volume[s] > 0.0), key=lambda s: (volume[s], s))
        smallest = min(f for f in (test_fraction, val_fraction, 1.0) if f > 0)
        size = max(2, math.ceil(1.0 / smallest))
        groups = [tumours[i : i + size] for i in range(0, len(tumours), size)]
        strata = ([controls] if controls else []) + groups
    order = [s for stratum in strata for s in rng.permutation(np.array(stratum, dtype=object)).tolist()]
    return dict(zip(order, _interleaved_labels(counts)))


def split_from_meta(scan_ids: Sequence[str], meta_path: str | os.PathLike) -> dict[str, str]:
    """The split of TotalSegmentator's ``meta.csv`` (``;``-separated, columns ``image_id``
    and ``split`` in train/val/test). Raises naming the file when it is missing, lacks a
    column, holds another split value, or does not list one of ``scan_ids``."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"split_source='meta' needs {meta_path} (TotalSegmentator meta.csv)")
    with open(meta_path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        fields = [f.strip() for f in reader.fieldnames or []]
        if "image_id" not in fields or "split" not in fields:
            raise ValueError(f"{meta_path} needs ';'-separated columns image_id and split, found {fields}")
        table: dict[str, str] = {}
        repeated = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            scan_id, split = row["image_id"], row["split"]
            if scan_id in table:
                if table[scan_id] != split:
                    raise ValueError(f"{meta_path} line {line}: {scan_id} is listed again with split {split!r} "
                                     f"after {table[scan_id]!r}; list each scan once")
                repeated.append(scan_id)
            table[scan_id] = split
    if repeated:
        warnings.warn(f"{meta_path} lists {len(repeated)} scan(s) twice with the same split (e.g. {repeated[0]}); "
                      "each is counted once", stacklevel=2)
    missing = [s for s in scan_ids if s not in table]
    if missing:
        more = " ..." if len(missing) > 10 else ""
        raise ValueError(f"{meta_path} does not list scan(s) {missing[:10]}{more}")
    splits = {s: table[s] for s in scan_ids}
    bad = sorted({v for v in splits.values() if v not in SPLITS})
    if bad:
        raise ValueError(f"{meta_path}: split values {bad} are not in {list(SPLITS)}")
    return splits


def validation_from_train(split: dict[str, str], val_fraction: float, seed: int) -> list[str]:
    """For a ``meta.csv`` without ``val`` rows (TotalSegmentator's releases after v2.0.1 list
    train and test only): ``round(n * val_fraction)`` of its train scans (at least one, and at
    least one left to train; n = all scans) drawn with ``seed`` become ``val``, in place.
    Returns the ids moved, sorted; nothing is moved when ``val`` rows exist."""
    if "val" in split.values():
        return []
    train = sorted(s for s, v in split.items() if v == "train")
    wanted = max(1, math.floor(len(split) * val_fraction + 0.5))
    count = min(wanted, len(train) - 1)
    if count < 1:
        raise ValueError(f"meta.csv lists no val scans and only {len(train)} train scan(s): none can be drawn "
                         "for validation with one left to train")
    rng = np.random.default_rng([seed, 0x7A1])
    moved = sorted(rng.choice(np.array(train, dtype=object), size=count, replace=False).tolist())
    for scan_id in moved:
        split[scan_id] = "val"
    return moved


def _check_meta(meta: Path, scans: list[ScanFiles]) -> None:
    """Before any scan is read: ``meta.csv`` lists every scan and puts some in train and in test."""
    split = split_from_meta([s.scan_id for s in scans], meta)
    for needed in ("train", "test"):
        if needed not in split.values():
            raise ValueError(f"{meta} puts none of the {len(scans)} scans in {needed}; the split needs "
                             "train and test scans (val ones are drawn from train when there are none)")


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class ScanFiles:
    """The files of one scan: ``labels`` give the kidney (and lesion) masks; ``foreground``
    are the label files whose union is the fingerprint's foreground."""

    scan_id: str
    image: Path
    labels: tuple[Path, ...]  # totalsegmentator: (kidney_left, kidney_right); kits23: (segmentation,)
    foreground: tuple[Path, ...]  # totalsegmentator: every segmentations/*.nii.gz; kits23: (segmentation,)


def detect_layout(src: str | os.PathLike) -> str:
    """``'totalsegmentator'`` or ``'kits23'``, from the scan folders directly under ``src``."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    folders = [d for d in sorted(src.iterdir()) if d.is_dir()]
    found = []
    if any((d / "ct.nii.gz").is_file() and (d / "segmentations").is_dir() for d in folders):
        found.append("totalsegmentator")
    if any((d / "imaging.nii.gz").is_file() and (d / "segmentation.nii.gz").is_file() for d in folders):
        found.append("kits23")
    if len(found) != 1:
        what = "both TotalSegmentator and KiTS23 scan folders" if found else _LAYOUT_HELP
        raise ValueError(f"{what}: {src}")
    return found[0]


def find_scans(layout: Layout, src: str | os.PathLike) -> list[ScanFiles]:
    """The scans under ``src``, sorted by id. A folder that looks like a scan but lacks a
    required file raises ``FileNotFoundError`` naming it; no scan at all raises
    ``ValueError`` naming ``src``."""
    src = Path(src)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    scans = []
    for folder in sorted(d for d in src.iterdir() if d.is_dir()):
        if layout == "totalsegmentator":
            seg = folder / "segmentations"
            if not ((folder / "ct.nii.gz").exists() or seg.is_dir()):
                continue
            required = [folder / "ct.nii.gz", seg / "kidney_left.nii.gz", seg / "kidney_right.nii.gz"]
            for path in required:
                if not path.is_file():
                    raise FileNotFoundError(
                        f"missing file: {path} (TotalSegmentator scan needs ct.nii.gz and "
                        "segmentations/kidney_left.nii.gz + kidney_right.nii.gz)"
                    )
            structures = tuple(sorted(p for p in seg.glob("*.nii.gz") if p.is_file()))
            scans.append(ScanFiles(folder.name, required[0], tuple(required[1:]), structures))
        else:
            image, seg = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
            if not (image.exists() or seg.exists()):
                continue
            for path in (image, seg):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"missing file: {path} (KiTS23 case needs imaging.nii.gz + segmentation.nii.gz)"
                    )
            scans.append(ScanFiles(folder.name, image, (seg,), (seg,)))
    if not scans:
        other = next(iter(set(LAYOUTS) - {layout}))
        try:
            looks = detect_layout(src) == other
        except ValueError:
            looks = False
        if looks:
            raise ValueError(f"no {layout} scans ({_LAYOUT_FILES[layout]}) in {src}: it looks like a {other} "
                             f"folder ({_LAYOUT_FILES[other]}); use --layout {other} (or auto)")
        raise ValueError(f"no {layout} scans found ({_LAYOUT_HELP}): {src}")
    return _drop_duplicates(scans)


def _drop_duplicates(scans: list[ScanFiles]) -> list[ScanFiles]:
    """The scans whose image is not the same file as an earlier scan's (a symlinked folder or
    file would otherwise put one scan into two splits); each one dropped is warned about."""
    seen: dict[tuple[int, int], str] = {}
    kept = []
    for scan in scans:
        stat = scan.image.stat()  # follows symlinks: the file itself
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            warnings.warn(f"skipping scan {scan.scan_id}: {scan.image} is the same file as scan "
                          f"{seen[key]}'s (a symlink); it is counted once", stacklevel=3)
            continue
        seen[key] = scan.scan_id
        kept.append(scan)
    return kept


@dataclass
class _ScanMasks:
    """Pass-1 result for one scan (kept slices only)."""

    scan_id: str
    z: np.ndarray  # canonical z of the kept slices
    slice_index: list[int]  # the same slices along the file's own axial axis
    kidney_pixels: np.ndarray  # native counts
    lesion_pixels: np.ndarray
    cyst_pixels: np.ndarray
    kidney: np.ndarray  # (n, S, S) uint8, resized
    lesion: np.ndarray  # (n, S, S) uint8, resized
    tumour_ml: float
    spacing: tuple[float, float, float]  # mm, RAS X, Y, Z
    shape: tuple[int, ...]  # the file's array shape
    axial_axis: int
    axial_flipped: bool


def _read_label_masks(
    layout: str, scan: ScanFiles
) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray, np.ndarray]:
    """Header of the image plus kidney, lesion and cyst masks (bool, the file's axis order),
    after checking every label file shares the image's grid."""
    image = open_nifti(scan.image)
    kidney = np.zeros(image.shape, dtype=bool)
    lesion = np.zeros(image.shape, dtype=bool)
    cyst = np.zeros(image.shape, dtype=bool)
    for path in scan.labels:
        label_image = open_nifti(path)
        check_same_grid(image, scan.image, label_image, path)
        data = read_finite(label_image, path)
        if layout == "totalsegmentator":
            kidney |= data > 0
        else:
            labels = integer_labels(data, path)
            if labels.size and (labels.min() < 0 or labels.max() > max(KITS_LABELS.values())):
                unknown = np.setdiff1d(np.unique(labels), list(KITS_LABELS.values()))
                raise ValueError(f"{path} holds labels {unknown.tolist()}; KiTS23 labels are {KITS_LABELS}")
            kidney |= labels > 0
            lesion |= labels == KITS_LABELS["tumour"]
            cyst |= labels == KITS_LABELS["cyst"]
    return image, kidney, lesion, cyst


def _scan_masks(layout: str, scan: ScanFiles, config: DataConfig) -> tuple[_ScanMasks | None, str]:
    """Pass 1: kept slices of one scan with their resized masks, or (None, why skipped)."""
    image, kidney, lesion, cyst = _read_label_masks(layout, scan)
    affine = image.affine
    kidney_c = canonical(kidney, affine, scan.labels[0])
    if not kidney.any():
        return None, f"no kidney voxels in {', '.join(str(p) for p in scan.labels)}"
    z, kidney_pixels = kidney_slice_indices(kidney_c.data, config.min_kidney_pixels, config.min_kidney_area_mm2,
                                            float(kidney_c.spacing[0] * kidney_c.spacing[1]))
    if z.size == 0:
        return None, f"no axial slice with {_kidney_rule(config)}"
    lesion_c = canonical(lesion, affine, scan.labels[0])
    cyst_c = canonical(cyst, affine, scan.labels[0])
    voxel_ml = float(np.prod(kidney_c.spacing)) / 1000.0
    size = config.image_size
    return (
        _ScanMasks(
            scan_id=scan.scan_id,
            z=z,
            slice_index=[kidney_c.original_slice_index(k) for k in z],
            kidney_pixels=kidney_pixels,
            lesion_pixels=np.count_nonzero(lesion_c.data[:, :, z], axis=(0, 1)),
            cyst_pixels=np.count_nonzero(cyst_c.data[:, :, z], axis=(0, 1)),
            kidney=resize_slices(kidney_c.radiological(z), size, "mask").astype(np.uint8),
            lesion=resize_slices(lesion_c.radiological(z), size, "mask").astype(np.uint8),
            tumour_ml=float(np.count_nonzero(lesion)) * voxel_ml,
            spacing=kidney_c.spacing,
            shape=tuple(int(s) for s in image.shape),
            axial_axis=kidney_c.axial_axis,
            axial_flipped=kidney_c.axial_flipped,
        ),
        "",
    )


def _scan_foreground_sample(layout: str, scan: ScanFiles, cap: int, seed: int,
                            lesion_only: bool = False, fill: float | None = None) -> np.ndarray:
    """Pass 2: sampled HU of the scan's foreground (union of the label files read; with
    ``lesion_only`` the KiTS tumour label alone, the authors' tumour-track fingerprint)."""
    image = open_nifti(scan.image)
    foreground = np.zeros(image.shape, dtype=bool)
    for path in scan.foreground:
        label_image = open_nifti(path)
        check_same_grid(image, scan.image, label_image, path)
        data = read_finite(label_image, path)
        foreground |= (integer_labels(data, path) == KITS_LABELS["tumour"]) if lesion_only else data > 0
    hu = read_finite(image, scan.image, fill)
    rng = np.random.default_rng([seed, zlib.crc32(scan.scan_id.encode())])
    return sample_foreground(hu, foreground, cap, rng)


# --------------------------------------------------------------------------- staleness


def _sources(src: Path, scans: list[ScanFiles], extra: Sequence[Path]) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every input file the preparation depends on."""
    paths = sorted({p for s in scans for p in (s.image, *s.labels, *s.foreground)} | set(extra))
    rows = []
    for path in paths:
        stat = path.stat()
        rows.append([path.relative_to(src).as_posix(), int(stat.st_size), int(stat.st_mtime_ns)])
    return rows


def _with_digests(src: Path, sources: list[list[Any]]) -> list[list[Any]]:
    """``sources`` rows with each file's content id appended (what the manifest records, so
    a copy of the dataset with new modification times is known to be the same data)."""
    return [[*row[:3], content_id([src / row[0]])] for row in sources]


def _touched(src: Path, previous: dict[str, list[Any]], current: dict[str, list[Any]], names: list[str]) -> list[str]:
    """Of ``names`` (files whose size or mtime differ), those whose content differs too: a file
    of the same size is hashed and compared with the content id the manifest recorded."""
    changed = []
    for name in names:
        old, new = previous[name], current[name]
        same = len(old) > 2 and old[0] == new[0] and old[2] == content_id([src / name])
        if not same:
            changed.append(name)
    return changed


def _settings(layout: str, src: Path, config: DataConfig) -> dict[str, Any]:
    return {
        "prepare_version": PREPARE_VERSION,
        "layout": layout,
        "src": str(src),
        "data": to_dict(config),
        "fingerprint_voxels_per_scan": FINGERPRINT_VOXELS_PER_SCAN,
    }


def _why_rebuild(out: Path, settings: dict[str, Any], sources: list[list[Any]], src: Path) -> str | None:
    """None when ``out`` can be reused as is, else the reason to rebuild it. Source files are
    judged by size and modification time, and where those moved (a copy), by content; the
    manifest then records the new times, so the next check is quick again."""
    if not out.exists():
        return f"no prepared folder at {out}"
    if not out.is_dir() or not is_complete(out):
        return f"{out} is incomplete (missing manifest or arrays)"
    manifest = read_json(out / "manifest.json")
    old = manifest.get("settings", {})
    changed = []
    for key in sorted((set(old) | set(settings)) - {"src"}):  # where the dataset lies is no setting
        a, b = old.get(key), settings.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            changed += [f"{key}.{k}: {a.get(k)} -> {b.get(k)}" for k in keys]
        elif a != b:
            changed.append(f"{key}: {a} -> {b}")
    if changed:
        return f"settings changed ({'; '.join(changed)})"
    previous = {row[0]: row[1:] for row in manifest.get("sources", [])}
    current = {row[0]: row[1:] for row in sources}
    added = sorted(set(current) - set(previous))
    removed = sorted(set(previous) - set(current))
    moved = sorted(p for p in set(current) & set(previous) if current[p] != previous[p][:2])
    modified = _touched(src, previous, current, moved)
    if not (added or removed or modified) and moved:
        manifest["sources"] = [[name, *current[name], previous[name][2]] for name in sorted(current)]
        write_json(out / "manifest.json", manifest)  # not part of the data's content id
    if added or removed or modified:
        parts = [f"{name} {files[:3]}{' ...' if len(files) > 3 else ''}"
                 for name, files in (("added", added), ("removed", removed), ("modified", modified)) if files]
        return "source files changed: " + "; ".join(parts)
    return None


PREPARED_FILES = frozenset({f for f, _ in ARRAY_FILES.values()} | {"index.csv", "fingerprint.json", "manifest.json"})


def _check_replaceable(out: Path) -> None:
    """Refuse to replace ``out`` unless it is empty or a prepared folder written here and
    nothing else: its ``manifest.json`` names our format, and every entry (hidden ones too)
    is one of the files :func:`coinlib.prepared.write_prepared` writes."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose a new or empty folder")
    entries = sorted(out.iterdir())
    if not entries:
        return
    refuse = f"refusing to replace {out}: it is not a prepared folder written by `coin prepare`"
    foreign = [p for p in entries if p.name not in PREPARED_FILES or p.is_symlink() or not p.is_file()]
    if foreign:
        raise ValueError(f"{refuse} ({foreign[0]} is not one of its files"
                         f"{f', nor are {len(foreign) - 1} more' if len(foreign) > 1 else ''}); "
                         "choose a new or empty folder, or move it away yourself")
    try:
        manifest = read_json(out / "manifest.json")
    except (FileNotFoundError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or "format_version" not in manifest or "settings" not in manifest:
        raise ValueError(f"{refuse} (no manifest.json of ours in it); choose a new or empty folder, "
                         "or move it away yourself")


def _check_apart(src: Path, out: Path) -> None:
    """``out`` replaces a whole folder: it may lie neither inside ``src`` nor around it."""
    if out == src or src.is_relative_to(out):
        raise ValueError(f"--out {out} contains the dataset --src {src}: replacing it would delete the "
                         "dataset; choose an --out outside it")
    if out.is_relative_to(src):
        raise ValueError(f"--out {out} lies inside the dataset --src {src}; choose an --out outside it")


def _say(message: str, progress: bool) -> None:
    log.info(message)
    if progress:
        tqdm.write(message)


# --------------------------------------------------------------------------- the pipeline


def prepare_dataset(
    layout: Layout,
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: DataConfig,
    force: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Prepare (or reuse) the slice folder ``out`` from the dataset at ``src``; returns ``out``.

    ``layout``: ``'totalsegmentator'`` or ``'kits23'`` (see :func:`detect_layout`). Output
    (``coinlib.prepared``): images (N, S, S) in [-1, 1], kidney and lesion masks (N, S, S)
    in {0, 1}, S = ``config.image_size``, radiological view; ``index.csv`` rows carry
    ``scan_id``, ``slice_index`` (index along the source file's own axial voxel axis, as
    a viewer numbers it), ``split``, ``kidney_pixels`` / ``lesion_pixels`` (native
    counts) plus ``label`` (KiTS: slice contains tumour), ``cyst_pixels`` (KiTS),
    ``row_mm`` / ``col_mm`` / ``slice_mm`` (native pixel size and slice spacing).

    Reuses ``out`` untouched when it is complete and was made with the same settings from
    the same files (path, size, mtime_ns); ``force=True`` always rebuilds. Raises
    ``ValueError`` / ``FileNotFoundError`` naming the offending file or ``src``; on any
    error an existing ``out`` is left as it was.

    Scans are read side by side on ``workers`` processes (``None``: one per core; the output
    is the same for any number), and each scan's result is kept in :func:`work_folder` as it
    is made, so memory holds a few scans, not the dataset, and a run killed at scan 900
    resumes there (with the same settings and files) and gives what an uninterrupted run gives.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if config.split_source == "meta" and layout != "totalsegmentator":
        raise ValueError("split_source='meta' needs the TotalSegmentator layout (its meta.csv)")
    src, out = Path(src).resolve(), Path(out).resolve()
    _check_apart(src, out)
    remove_stale_temporaries(out)  # of a run killed mid-build (or mid-swap: the old folder is put back)
    scans = find_scans(layout, src)
    meta = src / "meta.csv"
    if config.split_source == "meta" and not meta.is_file():
        raise FileNotFoundError(f"split_source='meta' needs {meta} (TotalSegmentator meta.csv)")
    if config.split_source == "meta":
        _check_meta(meta, scans)
    settings = _settings(layout, src, config)
    sources = _sources(src, scans, [meta] if config.split_source == "meta" else [])  # before reading
    reason = "force=True" if force else _why_rebuild(out, settings, sources, src)
    if reason is None:
        _say(f"reusing prepared dataset {out} (same settings and source files)", progress)
        return out
    _check_replaceable(out)
    work_folder(out).mkdir(parents=True, exist_ok=True)
    with exclusive(work_folder(out) / "lock", f"coin prepare {out}"):
        if not force and _why_rebuild(out, settings, sources, src) is None:  # another process made it meanwhile
            _say(f"reusing prepared dataset {out} (same settings and source files)", progress)
            return out
        _say(f"preparing {out}: {reason}", progress)
        sources = _with_digests(src, sources)
        work = _open_work(out, settings, progress)
        digests = {row[0]: row[3] for row in sources}
        keys = [_scan_key(scan, src, digests) for scan in scans]
        built = _build(layout, src, scans, config, progress, work, keys, workers)
        _finish(out, work, built, layout, config, settings, sources, progress)
    return out


def _finish(out: Path, work: Path, built: dict[str, Any], layout: str, config: DataConfig,
            settings: dict[str, Any], sources: list[list[Any]], progress: bool) -> None:
    manifest = {
        "layout": layout,
        "src": settings["src"],
        "image_size": config.image_size,
        "min_kidney_pixels": config.min_kidney_pixels,
        **built["manifest"],
        "settings": settings,
        "sources": sources,
    }
    _write_swap(out, built, manifest)
    shutil.rmtree(work, ignore_errors=True)
    n_scans = len(built["manifest"]["scans"])
    _say(f"prepared {len(built['index'])} slices from {n_scans} scans -> {out}", progress)


WORK_VERSION = 1  # of the resume folder's files (not of the prepared data: PREPARE_VERSION)


def work_folder(out: Path) -> Path:
    """Where a preparation of ``out`` keeps what each scan gave (``.<name>.partial`` beside
    it), so that a killed run resumes at the scan it was on, and the lock that lets one
    process at a time prepare ``out``; removed once ``out`` is in place."""
    return out.parent / f".{out.name}.partial"


def _open_work(out: Path, settings: dict[str, Any], progress: bool) -> Path:
    """The resume folder for these settings: an earlier run's when it was made with the same
    ones (its finished scans are reused where their files are unchanged), else a fresh one."""
    work = work_folder(out)
    identity = {"work_version": WORK_VERSION, "settings": settings}
    try:
        same = read_json(work / "work.json") == json.loads(json.dumps(identity))
    except (FileNotFoundError, ValueError):
        same = False
    if same:
        done = sum(1 for _ in work.glob("*/*.npz"))
        _say(f"resuming from {work} ({done} scan step(s) already done)", progress)
        return work
    for entry in work.iterdir():  # all but the lock this process holds
        if entry.name != "lock":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    write_json(work / "work.json", identity)
    return work


def _scan_key(scan: ScanFiles, src: Path, digests: dict[str, str]) -> str:
    """A scan's name in the resume folder: its id and its files' contents, so a scan whose
    files changed (a fixed file, say) is read again and the others are not."""
    files = sorted({p.relative_to(src).as_posix() for p in (scan.image, *scan.labels, *scan.foreground)})
    return hashlib.sha256(json.dumps([scan.scan_id, [[f, digests[f]] for f in files]]).encode()).hexdigest()[:24]


def _save_step(path: Path, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, record=np.array(json.dumps(record)), **arrays)


def _load_record(path: Path) -> dict[str, Any]:
    with np.load(path) as saved:
        return json.loads(str(saved["record"]))


def _load_arrays(path: Path, *names: str) -> tuple[np.ndarray, ...]:
    with np.load(path) as saved:
        return tuple(saved[name] for name in names)


def _scan_step(path: Path, step: Any, *args: Any) -> dict[str, Any]:
    """Run one scan's ``step`` unless ``path`` holds its result already; its record (what it
    found, and the warnings it raised, which a worker process cannot raise in this one)."""
    if path.is_file():
        try:
            return _load_record(path)
        except (OSError, ValueError, KeyError, zlib.error):
            path.unlink()  # unreadable (a disk that filled?): done again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays, record = step(*args)
    record["warnings"] = [str(w.message) for w in caught]
    _save_step(path, arrays, record)
    return record


def _masks_step(layout: str, scan: ScanFiles, config: DataConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    masks, why = _scan_masks(layout, scan, config)
    if masks is None:
        return {}, {"skipped": why}
    record = {
        "scan_id": masks.scan_id,
        "slice_index": [int(v) for v in masks.slice_index],
        **{key: [int(v) for v in getattr(masks, key)] for key in ("kidney_pixels", "lesion_pixels", "cyst_pixels")},
        "tumour_ml": float(masks.tumour_ml),
        "spacing": [float(v) for v in masks.spacing],
        "shape": [int(v) for v in masks.shape],
        "axial_axis": int(masks.axial_axis),
        "axial_flipped": bool(masks.axial_flipped),
    }
    return {"kidney": masks.kidney, "lesion": masks.lesion, "z": masks.z}, record


def _sample_step(layout: str, scan: ScanFiles, seed: int, lesion_only: bool,
                 fill: float | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sample = _scan_foreground_sample(layout, scan, FINGERPRINT_VOXELS_PER_SCAN, seed, lesion_only, fill)
    return {"sample": sample}, {}


def _image_step(path: Path, z: np.ndarray, p_low: float, p_high: float,
                config: DataConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    image = open_nifti(path)
    hu, filled = check_finite(read_data(image, path), path, config.fill_nonfinite_hu)
    volume = canonical(hu, image.affine, path)
    slices = volume.radiological(z)
    x = resize_slices(normalise_hu(slices, p_low, p_high), config.image_size, "image")
    body = resize_slices(body_slices(slices).astype(np.float32), config.image_size, "mask")
    return ({"images": x.astype(ARRAY_FILES["images"][1]), "body": body.astype(ARRAY_FILES["body_masks"][1])},
            {"nonfinite_voxels_filled": filled})


def _per_scan(work: Path, step_name: str, step: Any, jobs: list[tuple[str, str, tuple]], workers: int | None,
              desc: str, progress: bool) -> list[dict[str, Any]]:
    """``step`` for each (scan key, scan id, arguments) in ``jobs``, side by side on
    ``workers`` processes (``None``: the cores), each result saved under ``work/step_name``;
    the records in the order of ``jobs``. A scan's error is raised here as the reader raised
    it (naming the file); its warnings are raised here too."""
    folder = work / step_name
    folder.mkdir(exist_ok=True)
    tasks = [Job(f"{desc} {scan_id}", _scan_step, (folder / f"{key}.npz", step, *args)) for key, scan_id, args in jobs]
    try:
        records = run_jobs(tasks, "cpu", desc=desc, progress=progress, workers=workers)
    except JobFailed as failed:
        raise (failed.__cause__ or failed) from None
    for record in records:
        for message in record.get("warnings", []):
            warnings.warn(message, stacklevel=4)
    return records


def _build(
    layout: str, src: Path, scans: list[ScanFiles], config: DataConfig, progress: bool, work: Path,
    keys: list[str], workers: int | None = None,
) -> dict[str, Any]:
    """Read and check every scan, one at a time per worker, each scan's result kept in
    ``work`` under its key (:func:`_scan_key`); return the index rows, fingerprint, manifest
    parts and the per-scan files."""
    # pass 1: label masks -> kept slices, masks, tumour volume
    numbered = list(zip(keys, scans))
    records = _per_scan(work, "masks", _masks_step, [(k, s.scan_id, (layout, s, config)) for k, s in numbered],
                        workers, "kidney masks", progress)
    kept: list[tuple[str, dict[str, Any]]] = []
    skipped = []
    for (k, scan), record in zip(numbered, records):
        if "skipped" in record:
            warnings.warn(f"skipping scan {scan.scan_id}: {record['skipped']}", stacklevel=3)
            skipped.append({"scan_id": scan.scan_id, "reason": record["skipped"]})
        else:
            kept.append((k, record))
    if not kept:
        raise ValueError(
            f"no axial slice with {_kidney_rule(config)} in any scan under {src}"
        )
    ids = [m["scan_id"] for _, m in kept]
    if len(kept) < 3:
        raise ValueError(
            f"only {len(kept)} scan(s) with kidney slices under {src}; need at least 3 (train/val/test)"
        )
    # split by scan
    if config.split_source == "meta":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # repeated rows: said once already, before any scan was read
            split = split_from_meta(ids, src / "meta.csv")
        for needed in ("train", "test"):
            if needed not in split.values():
                raise ValueError(f"{src / 'meta.csv'} puts none of the usable scans (with kidney slices) in {needed}")
        try:
            val_from_train = validation_from_train(split, config.val_fraction, config.split_seed)
        except ValueError as err:
            raise ValueError(f"{src / 'meta.csv'}: {err}") from None
        if val_from_train:
            _say(f"{src / 'meta.csv'} lists no val scans (a TotalSegmentator release after v2.0.1?): "
                 f"{len(val_from_train)} of its train scans drawn for validation with seed {config.split_seed}: "
                 f"{', '.join(val_from_train[:5])}{' ...' if len(val_from_train) > 5 else ''}", progress)
        stratified_by = None
    else:
        tumour = [m["tumour_ml"] for _, m in kept] if layout == "kits23" else None
        split = split_scans(ids, config.test_fraction, config.val_fraction, config.split_seed, tumour)
        stratified_by = "tumour_ml" if layout == "kits23" else None
        val_from_train = []

    # pass 2: fingerprint on the training scans
    key_of = {s.scan_id: k for k, s in numbered}
    scan_of = {s.scan_id: s for s in scans}
    train_ids = [s for s in ids if split[s] == "train"]
    lesion_only = config.fingerprint_foreground == "lesion"
    if lesion_only and layout != "kits23":
        raise ValueError(f"fingerprint_foreground='lesion' needs lesion labels: the {layout} layout has none")
    _per_scan(work, "fingerprint", _sample_step,
              [(key_of[s], s, (layout, scan_of[s], config.split_seed, lesion_only, config.fill_nonfinite_hu))
               for s in train_ids], workers, "fingerprint", progress)
    samples = [_load_arrays(work / "fingerprint" / f"{key_of[s]}.npz", "sample")[0] for s in train_ids]
    if lesion_only:
        samples = [sample for sample in samples if sample.size]  # control scans hold no tumour
    try:
        stats = compute_fingerprint(samples, config.percentiles)
    except ValueError as err:
        raise ValueError(f"{err} (dataset {src})") from None
    del samples
    fingerprint = {
        **stats,
        "layout": layout,
        "foreground": (
            "union of segmentations/*.nii.gz" if layout == "totalsegmentator" else "segmentation > 0"
        ),
        "voxels_per_scan_cap": FINGERPRINT_VOXELS_PER_SCAN,
        "train_scans": train_ids,
    }

    # pass 3: images of the kept slices (normalised with this fingerprint: a resume folder
    # whose images were made with another is not reused)
    image_folder = work / f"images-{zlib.crc32(json.dumps([stats['p_low'], stats['p_high']]).encode()):08x}"
    jobs = [(k, m["scan_id"], (scan_of[m["scan_id"]].image, _load_arrays(work / "masks" / f"{k}.npz", "z")[0],
                               stats["p_low"], stats["p_high"], config)) for k, m in kept]
    image_records = _per_scan(work, image_folder.name, _image_step, jobs, workers, "slices", progress)
    index, scan_rows, parts = [], [], []
    for (k, m), image_record in zip(kept, image_records):
        parts.append((image_folder / f"{k}.npz", work / "masks" / f"{k}.npz"))
        for j, slice_index in enumerate(m["slice_index"]):
            row = {
                "scan_id": m["scan_id"],
                "slice_index": slice_index,
                "split": split[m["scan_id"]],
                "kidney_pixels": m["kidney_pixels"][j],
                "lesion_pixels": m["lesion_pixels"][j],
            }
            if layout == "kits23":
                row["label"] = int(m["lesion_pixels"][j] > 0)
                row["cyst_pixels"] = m["cyst_pixels"][j]
            # native pixel size: rows run along y (A-P), columns along x (R-L)
            spacing = m["spacing"]
            row.update(row_mm=round(spacing[1], 4), col_mm=round(spacing[0], 4), slice_mm=round(spacing[2], 4))
            index.append(row)
        scan_rows.append({
            "scan_id": m["scan_id"],
            "split": split[m["scan_id"]],
            "slices": len(m["slice_index"]),
            "lesion_slices": int(np.count_nonzero(m["lesion_pixels"])),
            "tumour_ml": round(m["tumour_ml"], 4),
            "spacing_mm": [round(s, 4) for s in m["spacing"]],
            "shape": list(m["shape"]),
            "axial_axis": m["axial_axis"],
            "axial_flipped": m["axial_flipped"],
            "nonfinite_voxels_filled": image_record["nonfinite_voxels_filled"],
        })
    counts = {
        s: {
            "scans": sum(r["split"] == s for r in scan_rows),
            "slices": sum(r["split"] == s for r in index),
            "lesion_slices": sum(r["split"] == s and r["lesion_pixels"] > 0 for r in index),
        }
        for s in SPLITS
    }
    return {
        "parts": parts,
        "index": index,
        "fingerprint": fingerprint,
        "manifest": {
            "split": {
                "source": config.split_source,
                "seed": config.split_seed,
                "test_fraction": config.test_fraction,
                "val_fraction": config.val_fraction,
                "stratified_by": stratified_by,
                "val_drawn_from_train": val_from_train,
                "scans": {s: [i for i in ids if split[i] == s] for s in SPLITS},
            },
            "fingerprint": {k: stats[k] for k in ("p_low", "p_high", "percentiles", "voxels")},
            "counts": counts,
            "scans": scan_rows,
            "skipped": skipped,
            "orientation": "RAS+ canonical; slices radiological: row 0 anterior, column 0 patient's right",
            "slice_index": "index along the source file's own axial voxel axis",
            "resize": {"image": "bilinear, align_corners=False, antialias=True (averages when shrinking)",
                       "mask": "area majority: the image's anti-aliased bilinear filter, >= 0.5"},
            "body": f"HU > {BODY_HU:g}, each slice's largest connected region with its holes filled",
            "nonfinite": (
                "none allowed: NaN or infinite voxels are an error" if config.fill_nonfinite_hu is None else
                f"NaN and infinite voxels set to {config.fill_nonfinite_hu} HU: "
                f"{sum(r['nonfinite_voxels_filled'] for r in scan_rows)} in all (per scan: scans[].nonfinite_voxels_filled)"
            ),
        },
    }


def _chunks(parts: list[tuple[Path, Path]]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each kept scan's (images, kidney masks, lesion masks, body masks), read from the resume
    folder one scan at a time."""
    for images, masks in parts:
        image, body = _load_arrays(images, "images", "body")
        yield (image, *_load_arrays(masks, "kidney", "lesion"), body)


def _write_swap(out: Path, built: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write into a temporary sibling folder, scan by scan, then swap it in place of ``out``."""
    tmp = temporary_folder(out)
    old = None
    try:
        write_prepared_chunks(tmp, len(built["index"]), _chunks(built["parts"]), built["index"],
                              built["fingerprint"], manifest)
        if out.exists():
            old = temporary_folder(out, "old")
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old / out.name, out)  # put the old folder back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
