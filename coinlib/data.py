"""PyTorch datasets over a prepared folder (``coinlib.prepared``; paper Sec. 4.1, App. 7.2).

:class:`SliceDataset` serves one split of a prepared folder. Arrays are memory-mapped; no
NIfTI is read per item. Two tracks:

- **Synthetic anomalies** (TotalSegmentator track, ``anomaly`` given): each slice gets a
  Gaussian-blob anomaly in a kidney with probability ``p`` (:mod:`coinlib.anomaly`, as
  the authors' code draws it); ``label`` is 1 iff an anomaly was inserted and ``lesion_mask`` is
  its mask. The prepared ``lesion_masks`` are ignored.
- **Real tumours** (KiTS track, ``anomaly=None``): ``lesion_mask`` is the prepared tumour
  mask and ``label`` is 1 iff that mask is non-empty *at the prepared resolution* and the
  tumour's native area (the index's ``lesion_pixels`` times its pixel area) exceeds
  ``min_lesion_area_mm2`` — the prepared folder's rule (``DataConfig.min_lesion_area_mm2``,
  recorded in its manifest; 0, the paper's "contains a lesion", when absent) unless given.
  With the authors' rule (``TumourProtocol``) a slice with a small tumour section is labelled
  normal: ``label == 1`` implies ``lesion_mask.any()``, not the converse.

Reproducible randomness, no worker seeding needed (every draw has its own generator):

- ``fresh_anomalies=True`` (training augmentation, as the authors' implementation): a new
  draw on every read from ``default_rng([seed, 0, epoch, row])``; call ``set_epoch`` before
  each epoch (a resumed run redraws exactly). DataLoader workers copy the dataset when an
  iterator starts, so build the iterator after ``set_epoch`` and do not use
  ``persistent_workers``.
- ``fresh_anomalies=False`` (validation / test): one fixed draw per slice from
  ``default_rng([seed, 1, hash(scan_id), slice_index])``, stable across dataset instances,
  processes and split orderings, so every method is scored on identical images.

``row`` is the slice's row in the prepared folder (returned as ``index``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .anomaly import (
    AnomalyParams,
    Site,
    Status,
    apply_anomaly,
    draw_slice_anomaly,
    find_sites,
    render_anomaly,
)
from .config import AnomalyConfig
from .prepared import PreparedSlices, open_prepared

__all__ = ["SliceDataset", "balanced_weights", "evaluation_set", "make_loader", "subset_by_rows"]

log = logging.getLogger(__name__)

_FRESH, _FIXED = 0, 1  # stream tags: training and evaluation draws never share a generator


_CHUNK = 16_384  # elements per torch copy, below torch's parallel grain size (32768)


def _float32_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 copy of a 2-D array (a float16 memmap row) as a tensor, on this thread.

    numpy's float16 -> float32 cast is scalar code (about 300 us for 256 x 256 here); torch's
    is vectorised (about 10 us), but above its grain size it hands the copy to the intra-op
    thread pool, which costs ~100 us or more when cores are busy. Copying in chunks below
    the grain size keeps it on the calling thread.
    """
    source = torch.from_numpy(np.array(array))  # writable, contiguous copy of the memmap row
    out = torch.empty(source.shape, dtype=torch.float32)
    rows = max(1, _CHUNK // max(1, source.shape[-1]))
    for start in range(0, source.shape[0], rows):
        out[start : start + rows].copy_(source[start : start + rows])
    return out


def _scan_words(scan_id: str) -> list[int]:
    """Two 32-bit words from a stable hash of ``scan_id`` (Python's ``hash`` is salted)."""
    digest = hashlib.blake2b(scan_id.encode(), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


class SliceDataset(torch.utils.data.Dataset):
    """One split of a prepared folder as training/evaluation items (see module doc).

    ``prepared``: an opened :class:`PreparedSlices` or its folder; ``split``: train / val /
    test; ``anomaly``: synthetic-anomaly settings, or ``None`` for real tumours;
    ``fresh_anomalies``: redraw on every read (training) or fix one draw per slice
    (evaluation); ``seed``: non-negative base seed of every draw (e.g. the stage's seed or
    ``profile.anomaly.seed``; use the same one for every method scored on a split).

    Item ``i`` is a dict: ``image`` (1, S, S) float32 in [-1, 1]; ``label`` float32 scalar
    in {0., 1.}; ``kidney_mask`` and ``lesion_mask`` (1, S, S) float32 in {0, 1};
    ``index`` int, the row in the prepared folder.

    Host components of each slice (:func:`coinlib.anomaly.find_sites`, ~0.3 ms) are
    computed on first use and cached in memory (about 2 bytes per kidney pixel: a few kB
    per slice at 256 px); fixed draws are cached too. :meth:`anomaly_report` fills both
    caches, so calling it before building a multi-worker loader shares them with the
    (forked) workers.
    """

    def __init__(
        self,
        prepared: PreparedSlices | str | os.PathLike,
        split: str,
        anomaly: AnomalyConfig | None,
        fresh_anomalies: bool,
        seed: int = 0,
        min_lesion_area_mm2: float | None = None,
    ) -> None:
        if not isinstance(prepared, PreparedSlices):
            prepared = open_prepared(prepared)
        self.prepared = prepared
        if min_lesion_area_mm2 is None:
            rule = prepared.manifest.get("settings", {}).get("data", {}).get("min_lesion_area_mm2")
            min_lesion_area_mm2 = float(rule or 0.0)
        self.min_lesion_area_mm2 = float(min_lesion_area_mm2)
        self.split = split
        self.rows = self.prepared.split_indices(split)
        self.anomaly = anomaly
        self.fresh_anomalies = bool(fresh_anomalies)
        self.seed = int(seed)
        self.epoch = 0
        self._sites: dict[int, list[Site]] = {}
        self._fixed: dict[int, tuple[int, AnomalyParams | None, Status]] = {}

    def __len__(self) -> int:
        return int(self.rows.size)

    def set_epoch(self, epoch: int) -> None:
        """Select the training draws of ``epoch`` (only affects ``fresh_anomalies=True``)."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        # Workers started with "spawn" would otherwise pickle the memory maps' contents.
        state = self.__dict__.copy()
        state["prepared"] = str(self.prepared.root)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not isinstance(self.prepared, PreparedSlices):
            self.prepared = open_prepared(self.prepared)

    # -- anomaly draws ------------------------------------------------------------------

    def _sites_of(self, row: int, kidney: np.ndarray | None = None) -> list[Site]:
        sites = self._sites.get(row)
        if sites is None:
            if kidney is None:
                kidney = np.asarray(self.prepared.kidney_masks[row])
            sites = self._sites[row] = find_sites(kidney, self.anomaly)
        return sites

    def _rng(self, row: int) -> np.random.Generator:
        if self.fresh_anomalies:
            return np.random.default_rng([self.seed, _FRESH, self.epoch, row])
        meta = self.prepared.index[row]
        return np.random.default_rng(
            [self.seed, _FIXED, *_scan_words(str(meta["scan_id"])), int(meta["slice_index"])]
        )

    def draw(
        self, row: int, kidney: np.ndarray | None = None
    ) -> tuple[int, AnomalyParams | None, Status]:
        """``(label, params, status)`` of prepared row ``row`` at the current epoch.

        Deterministic given (seed, epoch, row) for fresh draws, (seed, scan_id,
        slice_index) for fixed ones (those are cached). Synthetic track only.
        """
        if self.anomaly is None:
            raise ValueError("this dataset serves real tumours (anomaly=None): nothing to draw")
        if not self.fresh_anomalies and row in self._fixed:
            return self._fixed[row]
        if kidney is None:
            kidney = np.asarray(self.prepared.kidney_masks[row])
        sites = self._sites_of(row, kidney)
        result = draw_slice_anomaly(kidney, self.anomaly, self._rng(row), sites)
        if not self.fresh_anomalies:
            self._fixed[row] = result
        return result

    # -- items --------------------------------------------------------------------------

    def __getitem__(self, i: int) -> dict[str, Any]:
        # numpy (and torch only on this thread) until the end: small torch ops on the main
        # process cost milliseconds when the intra-op thread pool competes for busy cores
        row = int(self.rows[i])
        image_t = _float32_tensor(self.prepared.images[row])  # (S, S) in [-1, 1], a fresh copy
        image = image_t.numpy()  # shares memory with image_t
        kidney = np.asarray(self.prepared.kidney_masks[row])
        if self.anomaly is None:
            lesion = np.asarray(self.prepared.lesion_masks[row])
            label = self._tumour_label(row, lesion)
        else:
            label, params, _ = self.draw(row, kidney)
            if params is None:
                lesion = np.zeros(image.shape, np.uint8)
            else:
                _, lesion = apply_anomaly(image, params, self.anomaly, out=image)  # in place
        return {
            "image": image_t[None],
            "label": torch.from_numpy(np.array(label, np.float32)),
            "kidney_mask": torch.from_numpy(kidney.astype(np.float32)[None]),
            "lesion_mask": torch.from_numpy(lesion.astype(np.float32)[None]),
            "body_mask": torch.from_numpy(self.prepared.body_masks[row].astype(np.float32)[None]),
            "index": row,
        }

    # -- reports ------------------------------------------------------------------------

    def labels(self) -> np.ndarray:
        """(N,) int labels of the items in order (fixed draws, or the current epoch's)."""
        if self.anomaly is not None:
            return np.array([self.draw(int(row))[0] for row in self.rows], dtype=np.int64)
        masks = self.prepared.lesion_masks
        return np.array([self._tumour_label(int(row), np.asarray(masks[row])) for row in self.rows], dtype=np.int64)

    def lesion_area_mm2(self, row: int) -> float:
        """The native (before resizing) lesion area of prepared row ``row``, in mm^2."""
        meta = self.prepared.index[row]
        return float(meta["lesion_pixels"]) * float(meta.get("row_mm") or 1.0) * float(meta.get("col_mm") or 1.0)

    def _tumour_label(self, row: int, lesion: np.ndarray) -> int:
        """1 iff the prepared lesion mask is non-empty and its native area exceeds the rule's."""
        if not lesion.any():
            return 0
        return int(self.min_lesion_area_mm2 <= 0 or self.lesion_area_mm2(row) > self.min_lesion_area_mm2)

    def anomaly_report(self) -> dict[str, Any]:
        """Counts of the synthetic-anomaly draws of this split, and a warning when some fail.

        Keys: ``split``, ``mode`` ("fixed" or "fresh"), ``slices``, ``never_placeable``
        (slices where no draw can place an anomaly: the pre-check), and ``anomaly``,
        ``normal``, ``unplaceable`` (a coin flip said "anomaly" but no position exists; the
        slice is served as normal, label 0). For fresh draws the three counts are those of
        the current epoch. Tumour datasets report ``positive``/``negative`` slice counts.
        """
        report: dict[str, Any] = {"split": self.split, "slices": len(self)}
        if self.anomaly is None:
            positive = int(self.labels().sum())
            negative = len(self) - positive
            return {**report, "mode": "tumour", "positive": positive, "negative": negative}
        counts = {"anomaly": 0, "normal": 0, "unplaceable": 0}
        never = 0
        for row in self.rows:
            row = int(row)
            never += not any(len(site) for site in self._sites_of(row))
            counts[self.draw(row)[2]] += 1
        mode = "fresh" if self.fresh_anomalies else "fixed"
        report.update(mode=mode, never_placeable=never, **counts)
        if counts["unplaceable"] or never:
            log.warning(
                "%s split: %d of %d slices cannot host a synthetic anomaly (kidney too small); "
                "%d slice(s) drawn for an anomaly were served as normal (label 0) instead%s",
                self.split, never, len(self), counts["unplaceable"],
                f" in epoch {self.epoch}" if self.fresh_anomalies else "",
            )
        return report

    def anomaly_sizes(self) -> np.ndarray:
        """(K,) int64 pixel areas of the inserted anomalies' masks, one per anomalous slice.

        Fixed draws for evaluation splits (the distribution every method is scored on);
        the current epoch's draws for fresh datasets.
        """
        if self.anomaly is None:
            raise ValueError("anomaly_sizes() is for synthetic anomalies (anomaly=None here)")
        size = self.prepared.image_size
        areas = []
        for row in self.rows:
            _, params, _ = self.draw(int(row))
            if params is not None:
                areas.append(int(render_anomaly(params, (size, size), self.anomaly)[1].sum()))
        return np.array(areas, dtype=np.int64)


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order is fixed by ``seed`` (a seeded ``torch.Generator``).

    The generator drives the shuffle and the workers' base seed, so two loaders built with
    the same seed yield the same batches. Successive epochs of one loader continue the
    generator; for an order that depends only on (seed, epoch), e.g. to resume exactly,
    build a fresh loader per epoch with seed ``f(seed, epoch)`` or pass a sampler such as
    ``coinlib.runtime.ResumableSampler``. Workers are not persistent, so ``set_epoch``
    before iterating reaches them.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )


def evaluation_set(
    prepared: PreparedSlices | str | os.PathLike, split: str, anomaly: AnomalyConfig | None,
    min_lesion_area_mm2: float | None = None,
) -> SliceDataset:
    """Validation or test split with anomalies fixed per slice, seeded by ``anomaly.seed``.

    Every method (classifier, COIN, Singla*, saliency baselines) is scored on this one set
    of images, whatever its own training seed (App. 7.2). ``min_lesion_area_mm2``: another
    tumour label rule than the prepared folder's (e.g. 0, the paper text's, to score the same
    models on every tumour slice).
    """
    return SliceDataset(prepared, split, anomaly, fresh_anomalies=False, seed=anomaly.seed if anomaly else 0,
                        min_lesion_area_mm2=min_lesion_area_mm2)


def subset_by_rows(dataset: SliceDataset, rows: Sequence[int]) -> torch.utils.data.Subset:
    """The items of ``dataset`` whose prepared row (``item["index"]``) is in ``rows``, in that order."""
    position = {int(row): i for i, row in enumerate(dataset.rows)}
    missing = [int(r) for r in rows if int(r) not in position]
    if missing:
        raise KeyError(f"rows {missing[:5]} are not in the {dataset.split} split")
    return torch.utils.data.Subset(dataset, [position[int(r)] for r in rows])


def balanced_weights(dataset: SliceDataset) -> np.ndarray:
    """Class-balanced sampling weights of a tumour-track training split (the authors' sampler).

    Its labels are fixed (they come from the lesion masks), so both classes can be drawn
    equally often. A synthetic-track split draws its labels afresh every epoch: refused.
    """
    from .runtime import class_balanced_weights

    if dataset.anomaly is not None:
        raise ValueError("balanced sampling needs fixed labels: the synthetic track draws its anomalies "
                         "afresh every epoch (its labels are balanced by AnomalyConfig.probability instead)")
    return class_balanced_weights(dataset.labels())
