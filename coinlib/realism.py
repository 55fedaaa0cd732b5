"""The phantom held against real CT and against the literature.

- :func:`phase_hu`: the phantom's median HU per structure in every contrast phase, beside
  the literature ranges it draws from (``coinlib.phantom.structure_hu_range``).
- :func:`compare_with_real`: a real scan in the TotalSegmentator layout (``ct.nii.gz`` and
  ``segmentations/<name>.nii.gz``) beside a phantom subject in the same phase: HU per
  structure, noise texture in an organ, uniform where the scan has its mask (:func:`coinlib.image_quality.noise_texture`)
  and an axial slice at the same level (largest kidney cross-section) in radiological view.

``coinlib.plots.phase_hu_figure`` and ``phantom_vs_real_figure`` draw the results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .image_quality import hu_stats, noise_texture
from .phantom import PHASES, STRUCTURE_TISSUES, axial_view, render_totalsegmentator_subject, structure_hu_range
from .volumes import load_canonical

__all__ = ["REAL_CT_SAMPLE", "STRUCTURES_COMPARED", "PHASE_STRUCTURES", "NOISE_ORGANS", "phase_hu", "load_subject", "compare_with_real"]

STRUCTURES_COMPARED = tuple(STRUCTURE_TISSUES)
PHASE_STRUCTURES = ("liver", "spleen", "kidney_left", "aorta", "inferior_vena_cava", "pancreas", "iliopsoas_left")
# The real scan bundled with the repository (a native CT from TotalSegmentator's test data, in
# its layout; provenance and licence in its folder's README). Absent in a checkout without it.
REAL_CT_SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "real_ct" / "totalsegmentator" / "s0000"


def phase_hu(seed: int = 0, index: int = 0, spacing_mm: float = 2.0, z_extent_mm: float | None = 100.0,
             structures: tuple[str, ...] = PHASE_STRUCTURES) -> tuple[dict, dict]:
    """One phantom subject rendered in every phase of ``PHASES``.

    Returns ``(measured, ranges)``: ``measured[phase][structure]`` the median HU inside the
    structure's mask eroded by one voxel, ``ranges[phase][structure]`` its literature range.
    """
    measured, ranges = {}, {}
    for phase in PHASES:
        vol = render_totalsegmentator_subject(seed, index, spacing_mm, z_extent_mm, phases=phase)
        stats = {name: hu_stats(vol.hu, vol.mask(name), erode=1) for name in structures}
        measured[phase] = {name: s["median"] for name, s in stats.items() if s is not None}
        ranges[phase] = {name: structure_hu_range(name, phase) for name in measured[phase]}
    return measured, ranges


def load_subject(folder: str | os.PathLike, structures: tuple[str, ...] = STRUCTURES_COMPARED
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[float, float, float]]:
    """A TotalSegmentator-layout subject folder, reoriented to RAS+: ``(hu, masks, spacing)``.

    ``hu`` (X, Y, Z) float32; ``masks[name]`` (X, Y, Z) bool for each of ``structures``
    whose file exists and is not empty; ``spacing`` (mm). Raises ``FileNotFoundError``
    naming the folder when it or its ``ct.nii.gz`` is missing, ``ValueError`` when a mask
    lies on another grid.
    """
    folder = Path(folder)
    ct_path = folder / "ct.nii.gz"
    if not ct_path.is_file():
        raise FileNotFoundError(f"no real CT sample at {folder} (expected {ct_path} and segmentations/)")
    ct = load_canonical(ct_path)
    masks = {}
    for name in structures:
        path = folder / "segmentations" / f"{name}.nii.gz"
        if path.is_file():
            mask = load_canonical(path)
            if mask.data.shape != ct.data.shape or not np.allclose(mask.affine, ct.affine, atol=1e-3):
                raise ValueError(f"{path} is not on the grid of {ct_path}")
            if mask.data.any():
                masks[name] = mask.data > 0
    return ct.data.astype(np.float32), masks, ct.spacing


def _kidney_level(masks: dict[str, np.ndarray]) -> int:
    kidney = sum(masks[n].astype(np.int32) for n in ("kidney_left", "kidney_right") if n in masks)
    if np.isscalar(kidney):
        raise ValueError("no kidney mask to choose the slice level from")
    return int(np.argmax(kidney.sum((0, 1))))


def _crop_to_body(image: np.ndarray, margin: int = 4) -> np.ndarray:
    """The box around the largest connected region above -500 HU (the body, not the table)."""
    labels, n = ndimage.label(image > -500)
    if n == 0:
        return image
    body = labels == 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))))
    rows, cols = np.nonzero(body)
    r0, c0 = max(rows.min() - margin, 0), max(cols.min() - margin, 0)
    return image[r0:rows.max() + margin + 1, c0:cols.max() + margin + 1]


# Where to measure the noise: the first of these the real scan has a mask of (uniform organs first).
NOISE_ORGANS = ("liver", "spleen", "autochthon_left", "iliopsoas_left", "kidney_left", "kidney_right")


def compare_with_real(real_dir: str | os.PathLike, phase: str = "native", seed: int = 0, index: int = 0,
                      fine_mm: float = 1.5, noise_organ: str | None = None) -> dict[str, Any]:
    """Measure a real TotalSegmentator-layout scan and a phantom subject the same way.

    The phantom subject (``seed``, ``index``) is rendered in ``phase`` (the real sample here
    is a native scan) at the real scan's voxel size (first in-plane spacing, isotropic) and
    at ``fine_mm``. Returns ``real_slice`` / ``phantom_slice`` (HU, radiological view, at the
    largest kidney cross-section, cropped to the body), ``phase_slices`` (the phantom slice
    in every phase), ``real_stats`` / ``phantom_stats`` (:func:`coinlib.image_quality.hu_stats`
    per structure, masks eroded by one voxel), ``noise`` (label -> noise texture in
    ``noise_organ``; None: the first of ``NOISE_ORGANS`` the real scan has a mask of, which
    ``noise_organ`` in the result names) and ``spacing`` (the real scan's voxel size).
    """
    hu, masks, spacing = load_subject(real_dir)
    noise_organ = noise_organ or next((n for n in NOISE_ORGANS if n in masks), None)
    if noise_organ not in masks:
        raise ValueError(f"{real_dir} has no mask of {noise_organ or list(NOISE_ORGANS)} to measure the noise in")
    voxel = float(spacing[0])
    phantom = render_totalsegmentator_subject(seed, index, voxel, phases=phase)
    pmasks = {name: phantom.mask(name).astype(bool) for name in masks}
    fine = render_totalsegmentator_subject(seed, index, fine_mm, phases=phase)
    noise = {
        f"real ({voxel:g} mm)": noise_texture(hu, masks[noise_organ], spacing),
        f"phantom ({voxel:g} mm)": noise_texture(phantom.hu, pmasks[noise_organ], (voxel,) * 3),
        f"phantom ({fine_mm:g} mm)": noise_texture(fine.hu, fine.mask(noise_organ), (fine_mm,) * 3),
    }
    level = _kidney_level(pmasks)
    phase_slices = {}
    for other in PHASES:
        vol = phantom if other == phase else render_totalsegmentator_subject(seed, index, voxel, phases=other)
        phase_slices[other] = _crop_to_body(axial_view(vol.hu, level))
    return {
        "real_slice": _crop_to_body(axial_view(hu, _kidney_level(masks))),
        "phantom_slice": phase_slices[phase],
        "phase_slices": phase_slices,
        "real_stats": {n: s for n in masks if (s := hu_stats(hu, masks[n], erode=1)) is not None},
        "phantom_stats": {n: s for n in masks if (s := hu_stats(phantom.hu, pmasks[n], erode=1)) is not None},
        "noise": noise,
        "noise_organ": noise_organ,
        "spacing": spacing,
        "phase": phase,
    }
