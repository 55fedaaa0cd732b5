"""The prepared slice dataset: the one on-disk format between data preparation and training.

``coin prepare`` (``coinlib.prepare``) turns CT volumes in a real layout into this folder;
``coinlib.data`` reads it. Nothing else reads NIfTI during training.

Layout of a prepared folder::

    images.npy          (N, S, S) float16 in [-1, 1]   axial slices, radiological view
    kidney_masks.npy    (N, S, S) uint8 in {0, 1}     kidney (KiTS: kidney and its masses)
    lesion_masks.npy    (N, S, S) uint8 in {0, 1}     tumour (KiTS label 2); zeros otherwise
    body_masks.npy      (N, S, S) uint8 in {0, 1}     the patient's body (not the air around it)
    index.csv           one row per slice i (row order = array order), columns INDEX_COLUMNS
    fingerprint.json    intensity fingerprint measured on the training scans
    manifest.json       written LAST: settings, source files, counts, format version

Radiological view: row 0 is anterior, column 0 is the patient's right (as a radiologist
reads an axial CT). ``S`` is ``DataConfig.image_size``.

A folder is *valid* when ``manifest.json`` exists, names this ``FORMAT_VERSION``, and
every array has the row count the manifest states. Writers put the manifest last, so
an interrupted preparation leaves a folder that :func:`is_complete` rejects.

The manifest's ``content_id`` hashes the arrays, ``index.csv`` and ``fingerprint.json``
(:data:`CONTENT_FILES`): what a model was trained on, wherever the folder is moved or
copied, and whatever rebuilt it (models record it; a model of other data is not reused).
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_path, content_id, read_json, write_csv, write_json

__all__ = [
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "ARRAY_FILES",
    "CONTENT_FILES",
    "PreparedSlices",
    "write_prepared",
    "write_prepared_chunks",
    "is_complete",
    "open_prepared",
]

FORMAT_VERSION = 2  # 2: body masks
INDEX_COLUMNS = ["scan_id", "slice_index", "split", "kidney_pixels", "lesion_pixels"]
ARRAY_FILES = {
    "images": ("images.npy", np.float16),
    "kidney_masks": ("kidney_masks.npy", np.uint8),
    "lesion_masks": ("lesion_masks.npy", np.uint8),
    "body_masks": ("body_masks.npy", np.uint8),
}
SPLITS = ("train", "val", "test")
CONTENT_FILES = (*(f for f, _ in ARRAY_FILES.values()), "index.csv", "fingerprint.json")


@dataclass
class PreparedSlices:
    """A prepared folder opened for reading; arrays are memory-mapped (read-only).

    ``index`` holds one dict per slice with INDEX_COLUMNS (ints for counts).
    """

    root: Path
    images: np.ndarray  # (N, S, S) float16 in [-1, 1]
    kidney_masks: np.ndarray  # (N, S, S) uint8
    lesion_masks: np.ndarray  # (N, S, S) uint8
    body_masks: np.ndarray  # (N, S, S) uint8
    index: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def content_id(self) -> str:
        """The data's identity (module doc): the manifest's, else hashed from the files."""
        return self.manifest.get("content_id") or content_id(self.root / f for f in CONTENT_FILES)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def split_summary(self) -> list[dict[str, Any]]:
        """Per split: scans, slices and slices with a lesion (tumour) pixel at native size."""
        summary = []
        for split in SPLITS:
            rows = [row for row in self.index if row["split"] == split]
            summary.append({
                "split": split,
                "scans": len({row["scan_id"] for row in rows}),
                "slices": len(rows),
                "lesion_slices": sum(row["lesion_pixels"] > 0 for row in rows),
            })
        return summary

    def split_indices(self, split: str) -> np.ndarray:
        """Row numbers of the slices in ``split`` (train / val / test)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.array([i for i, row in enumerate(self.index) if row["split"] == split], dtype=np.int64)


def write_prepared(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    kidney_masks: np.ndarray,
    lesion_masks: np.ndarray,
    body_masks: np.ndarray,
    index_rows: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Write a complete prepared folder; ``manifest.json`` goes last (see module doc).

    ``images`` (N, S, S) float in [-1, 1]; masks (N, S, S) in {0, 1}; ``index_rows`` has
    N dicts with at least INDEX_COLUMNS (extra keys become extra CSV columns).
    """
    return write_prepared_chunks(out_dir, len(index_rows), [(images, kidney_masks, lesion_masks, body_masks)],
                                 index_rows, fingerprint, manifest)


def write_prepared_chunks(
    out_dir: str | os.PathLike,
    n: int,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    index_rows: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """:func:`write_prepared` from consecutive (images, kidney, lesion, body masks) chunks
    (e.g. one per scan), written into the arrays in place: memory holds one chunk, not N slices."""
    out = Path(out_dir)
    if len(index_rows) != n:
        raise ValueError(f"{len(index_rows)} index rows for {n} slices")
    missing = [c for c in INDEX_COLUMNS if n and c not in index_rows[0]]
    if missing:
        raise ValueError(f"index rows lack column(s) {missing}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the folder is incomplete until the end
    names = list(ARRAY_FILES)
    with contextlib.ExitStack() as stack:
        arrays, at = None, 0
        for chunk in chunks:
            if len(chunk) != len(names):
                raise ValueError(f"a chunk holds {len(chunk)} arrays; expected {len(names)}: {names}")
            for name, array in zip(names, chunk):
                if array.ndim != 3 or array.shape[1] != array.shape[2] or at + len(array) > n:
                    raise ValueError(f"{name} has a chunk of shape {array.shape} at row {at}; expected ({n}, S, S) in all")
            _check_images(chunk[0])
            if arrays is None and n == 0:  # nothing to map: empty arrays of the chunk's slice shape
                for name, array in zip(names, chunk):
                    with atomic_path(out / ARRAY_FILES[name][0]) as tmp:
                        np.save(tmp, np.asarray(array, dtype=ARRAY_FILES[name][1]))
                arrays = []
                continue
            if arrays is None:
                size = chunk[0].shape[1]
                arrays = [np.lib.format.open_memmap(stack.enter_context(atomic_path(out / ARRAY_FILES[name][0])),
                                                    mode="w+", dtype=ARRAY_FILES[name][1], shape=(n, size, size))
                          for name in names]
            for target, array in zip(arrays, chunk):
                if array.shape[1:] != target.shape[1:]:
                    raise ValueError(f"a chunk of shape {array.shape} among slices of shape {target.shape[1:]}")
                target[at:at + len(array)] = array
            at += len(chunk[0])
        if at != n:
            raise ValueError(f"the chunks hold {at} slices; expected {n}")
        for array in arrays or []:
            array.flush()
        del arrays
    columns = INDEX_COLUMNS + [c for c in (index_rows[0] if n else {}) if c not in INDEX_COLUMNS]
    write_csv(out / "index.csv", index_rows, columns)
    write_json(out / "fingerprint.json", fingerprint)
    identity = content_id(out / f for f in CONTENT_FILES)
    write_json(out / "manifest.json", {**manifest, "format_version": FORMAT_VERSION, "slices": n,
                                       "content_id": identity})
    return out


def _check_images(images: np.ndarray) -> None:
    if images.size and not np.isfinite(images).all():
        raise ValueError(f"images hold {np.count_nonzero(~np.isfinite(images))} NaN or infinite pixels")
    if images.size and (images.min() < -1.0 - 1e-3 or images.max() > 1.0 + 1e-3):
        raise ValueError("images must lie in [-1, 1]")


def is_complete(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a finished prepared folder of this format version."""
    root = Path(root)
    try:
        manifest = read_json(root / "manifest.json")
    except (FileNotFoundError, ValueError):
        return False
    if manifest.get("format_version") != FORMAT_VERSION:
        return False
    for filename, _ in ARRAY_FILES.values():
        try:
            array = np.load(root / filename, mmap_mode="r")
        except (OSError, ValueError):
            return False
        if array.shape[0] != manifest.get("slices"):
            return False
    return (root / "index.csv").is_file() and (root / "fingerprint.json").is_file()


def open_prepared(root: str | os.PathLike) -> PreparedSlices:
    """Open a prepared folder; a clear error names what is missing or inconsistent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prepared dataset folder not found: {root}")
    if not is_complete(root):
        raise ValueError(
            f"{root} is not a complete prepared dataset (missing or stale manifest.json or "
            "arrays); run `coin prepare` (or coinlib.prepare.prepare_dataset) again"
        )
    arrays = {name: np.load(root / filename, mmap_mode="r") for name, (filename, _) in ARRAY_FILES.items()}
    with open(root / "index.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    for row in index:
        for key in ("slice_index", "kidney_pixels", "lesion_pixels"):
            row[key] = int(row[key])
    if len(index) != arrays["images"].shape[0]:
        raise ValueError(f"{root / 'index.csv'} has {len(index)} rows, arrays have {arrays['images'].shape[0]}")
    if not index:
        raise ValueError(f"{root} holds no slices (empty dataset)")
    return PreparedSlices(
        root=root,
        index=index,
        fingerprint=read_json(root / "fingerprint.json"),
        manifest=read_json(root / "manifest.json"),
        **arrays,
    )
