"""Image-quality measures: lesion contrast-to-noise, noise texture and HU per structure.

How visible is a tumour at the resolution the classifier sees, and does the phantom's noise
look like a real scanner's? These functions measure both, on prepared slices and on HU volumes.

- :func:`lesion_cnr`: per slice, the contrast-to-noise ratio of a lesion against the kidney
  parenchyma around it (Bushberg et al., *The Essential Physics of Medical Imaging*, 3rd ed.,
  2012, ch. 4: CNR = |mean_lesion - mean_background| / std_background).
- :func:`cnr_by_size`: those ratios summarised per band of lesion cross-section area.
- :func:`noise_texture`: noise std, autocorrelation and the radially averaged noise power
  spectrum in a uniform region (ICRU Report 87, 2012; average frequency as in Solomon,
  Christianson & Samei, Med Phys 2012;39:6048-6055).
- :func:`hu_stats`: HU statistics of the voxels of a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "CNR_BANDS_MM2",
    "lesion_cnr",
    "cnr_by_size",
    "prepared_pixel_area_mm2",
    "noise_texture",
    "hu_stats",
]

# Lesion cross-section bands (mm^2); an equal-area disc's diameter is 11, 18, 25, 36, 50 mm at
# the edges. 500 mm^2 is about the authors' abnormal-slice threshold of 1000 native pixels
# at KiTS's 0.7-0.8 mm spacing (the authors' implementation).
CNR_BANDS_MM2 = (0.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, float("inf"))


def lesion_cnr(images: np.ndarray, kidney_masks: np.ndarray, lesion_masks: np.ndarray,
               ring_px: int = 3, min_ring_pixels: int = 8) -> dict[str, np.ndarray]:
    """Contrast-to-noise ratio of each slice's lesion against the parenchyma around it.

    ``images`` (N, H, W) in any intensity unit (prepared slices: [-1, 1]); ``kidney_masks``
    and ``lesion_masks`` (N, H, W) binary. The background of a slice is the kidney (not
    lesion) pixels within ``ring_px`` pixels (a disc) of its lesion. Per slice with a lesion:
    CNR = |mean(lesion) - mean(background)| / std(background); the background std holds the
    image noise and the parenchyma's own structure (cortex against medulla), which is what
    a lesion must stand out from. Slices whose background has fewer than
    ``min_ring_pixels`` pixels (or a zero std) get NaN.

    Returns arrays over the slices that have a lesion: ``index`` (into the N slices, int),
    ``area_px``, ``lesion_mean``, ``background_mean``, ``background_std``, ``cnr``.
    """
    images = np.asarray(images, dtype=np.float64)
    kidney, lesion = np.asarray(kidney_masks) > 0, np.asarray(lesion_masks) > 0
    if not images.shape == kidney.shape == lesion.shape or images.ndim != 3:
        raise ValueError(f"images {images.shape}, kidney {kidney.shape} and lesion {lesion.shape} "
                         "masks must be the same (N, H, W)")
    yy, xx = np.mgrid[-ring_px:ring_px + 1, -ring_px:ring_px + 1]
    disc = yy ** 2 + xx ** 2 <= ring_px ** 2
    names = ("area_px", "lesion_mean", "background_mean", "background_std", "cnr")
    rows: dict[str, list[float]] = {name: [] for name in names}
    index = np.flatnonzero(lesion.reshape(len(lesion), -1).any(1))
    for i in index:
        ring = ndimage.binary_dilation(lesion[i], disc) & kidney[i] & ~lesion[i]
        inside, around = images[i][lesion[i]], images[i][ring]
        mean, background, spread = inside.mean(), np.nan, np.nan
        if around.size >= min_ring_pixels:
            background, spread = around.mean(), around.std()
        rows["area_px"].append(float(inside.size))
        rows["lesion_mean"].append(float(mean))
        rows["background_mean"].append(float(background))
        rows["background_std"].append(float(spread))
        rows["cnr"].append(float(abs(mean - background) / spread) if spread > 0 else np.nan)
    return {"index": index.astype(np.int64), **{k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}}


def cnr_by_size(areas: Sequence[float], cnr: Sequence[float], edges: Sequence[float] = CNR_BANDS_MM2,
                unit: str = "mm2") -> list[dict[str, Any]]:
    """Per band ``[edges[k], edges[k+1])`` of lesion area: count and CNR quartiles.

    ``areas`` and ``cnr`` per slice (NaN CNRs are counted in ``slices`` but not in the
    quartiles). Returns one row per band: ``band`` (e.g. "100-250 mm2"), ``slices``,
    ``measured`` (slices with a CNR), ``cnr_median``, ``cnr_q1``, ``cnr_q3`` (NaN when none).
    """
    areas, cnr = np.asarray(areas, dtype=np.float64), np.asarray(cnr, dtype=np.float64)
    if areas.shape != cnr.shape:
        raise ValueError(f"areas {areas.shape} and cnr {cnr.shape} must have the same shape")
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"band edges must increase, got {list(edges)}")
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (areas >= lo) & (areas < hi)
        values = cnr[band & np.isfinite(cnr)]
        q1, med, q3 = np.percentile(values, [25, 50, 75]) if values.size else (np.nan,) * 3
        label = f">= {lo:g} {unit}" if np.isinf(hi) else f"{lo:g}-{hi:g} {unit}"
        rows.append({"band": label, "slices": int(band.sum()), "measured": int(values.size),
                     "cnr_median": float(med), "cnr_q1": float(q1), "cnr_q3": float(q3)})
    return rows


def prepared_pixel_area_mm2(scan: dict[str, Any], image_size: int) -> float:
    """Area (mm^2) of one pixel of a prepared slice of ``scan`` (a row of a prepared folder's
    ``manifest["scans"]``: ``shape`` in the file's axis order, ``axial_axis``, canonical
    ``spacing_mm`` whose last entry is the axial one): the native slice's area / size^2."""
    shape, axial = [int(n) for n in scan["shape"]], int(scan["axial_axis"])
    pixels = np.prod(shape) / shape[axial]
    spacing = [float(s) for s in scan["spacing_mm"]]
    return float(pixels * spacing[0] * spacing[1] / image_size ** 2)


def noise_texture(volume: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float], patch_mm: float = 24.0,
                  erode: int = 1, max_lag: int = 4) -> dict[str, Any]:
    """Noise of ``volume`` (X, Y, Z) inside ``mask`` (same shape), axial slices = last axis.

    ``spacing_mm``: (x, y, z) voxel size. The mask is eroded by ``erode`` voxels (no edges).
    Returns:

    - ``std``: std of the voxels in the eroded mask (noise plus the tissue's own texture);
    - ``lags_mm`` and ``acf``: autocorrelation along x at lags 1..``max_lag`` voxels (mean
      of the eroded mask removed), and ``acf_y`` along y;
    - ``correlation_mm``: the lag (mm) where the x and y autocorrelations fall to 0.5,
      interpolated linearly from 1 at lag 0 (NaN when they stay above within ``max_lag``);
    - ``nps_frequency`` (cycles/mm) and ``nps`` (HU^2 mm^2): the radially averaged 2D noise
      power spectrum of square axial patches of about ``patch_mm`` that lie wholly inside
      the eroded mask, each minus its mean: NPS = dx dy / (nx ny) |DFT|^2 (ICRU 87);
      ``patches``; ``nps_mean_frequency``: the NPS-weighted mean frequency (cycles/mm),
      a one-number summary of the texture (higher = finer grain). NPS fields are None
      when no patch fits.
    """
    volume = np.asarray(volume, dtype=np.float64)
    mask = np.asarray(mask) > 0
    if volume.shape != mask.shape or volume.ndim != 3:
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} must be the same 3D shape")
    dx, dy = float(spacing_mm[0]), float(spacing_mm[1])
    inner = ndimage.binary_erosion(mask, iterations=erode) if erode else mask
    if inner.sum() < 2:
        raise ValueError("the mask has fewer than 2 voxels left after erosion")
    values = volume[inner]
    centred = np.where(inner, volume - values.mean(), 0.0)

    def acf(axis: int) -> np.ndarray:
        out = []
        for lag in range(1, max_lag + 1):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = slice(0, -lag), slice(lag, None)
            both = inner[tuple(a)] & inner[tuple(b)]
            x, y = centred[tuple(a)][both], centred[tuple(b)][both]
            out.append(float(np.corrcoef(x, y)[0, 1]) if x.size > 2 else np.nan)
        return np.asarray(out)

    def half_width(r: np.ndarray, step: float) -> float:
        curve = np.concatenate([[1.0], r])
        below = np.flatnonzero(curve < 0.5)
        if below.size == 0:
            return float("nan")
        k = int(below[0])
        return float(step * (k - 1 + (curve[k - 1] - 0.5) / (curve[k - 1] - curve[k])))

    acf_x, acf_y = acf(0), acf(1)
    result: dict[str, Any] = {
        "voxels": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "lags_mm": [dx * k for k in range(1, max_lag + 1)], "acf": acf_x.tolist(), "acf_y": acf_y.tolist(),
        "correlation_mm": float(np.nanmean([half_width(acf_x, dx), half_width(acf_y, dy)])),
    }
    n = max(4, int(round(patch_mm / dx)))
    spectra = []
    for k in range(volume.shape[2]):
        plane, fits = volume[:, :, k], inner[:, :, k]
        for i in range(0, plane.shape[0] - n + 1, n):
            for j in range(0, plane.shape[1] - n + 1, n):
                if fits[i:i + n, j:j + n].all():
                    patch = plane[i:i + n, j:j + n]
                    spectra.append(np.abs(np.fft.fft2(patch - patch.mean())) ** 2 * dx * dy / (n * n))
    result.update(patches=len(spectra), nps_frequency=None, nps=None, nps_mean_frequency=None)
    if spectra:
        nps2d = np.mean(spectra, axis=0)
        fx, fy = np.fft.fftfreq(n, dx), np.fft.fftfreq(n, dy)
        radius = np.hypot(fx[:, None], fy[None, :])
        step = 1.0 / (n * max(dx, dy))
        bins = np.round(radius / step).astype(int)
        counts = np.bincount(bins.ravel())
        radial = np.bincount(bins.ravel(), nps2d.ravel()) / np.maximum(counts, 1)
        keep = (counts > 0) & (np.arange(len(counts)) * step <= 0.5 / max(dx, dy))
        freq = np.arange(len(counts))[keep] * step
        result.update(nps_frequency=freq.tolist(), nps=radial[keep].tolist(),
                      nps_mean_frequency=float((radius * nps2d).sum() / nps2d.sum()))
    return result


def hu_stats(volume: np.ndarray, mask: np.ndarray, erode: int = 0) -> dict[str, float] | None:
    """HU statistics of ``volume`` inside ``mask`` (eroded by ``erode`` voxels first):
    ``voxels``, ``mean``, ``std``, ``p5``, ``median``, ``p95``; None when the mask is empty."""
    mask = np.asarray(mask) > 0
    if erode:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    values = np.asarray(volume, dtype=np.float64)[mask]
    if values.size == 0:
        return None
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"voxels": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "p5": float(p5), "median": float(median), "p95": float(p95)}
