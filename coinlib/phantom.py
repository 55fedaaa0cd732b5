"""Procedural abdominal CT phantom: the project's embedded default dataset.

No real CT can be downloaded here, so the two public datasets of the paper's Sec. 4.1
(the public datasets) are replaced by volumes drawn from a parametric anatomy and written in
their real on-disk layouts; the code that reads them (``coinlib.prepare``) runs
unchanged on the real data.

- :func:`generate_totalsegmentator`: ``sXXXX/ct.nii.gz`` (int16 HU, RAS+ affine,
  isotropic voxels, array ``(X, Y, Z)``), one binary uint8 mask per structure in
  ``sXXXX/segmentations/<name>.nii.gz`` and a ``;``-separated ``meta.csv``. Normal
  anatomy only: the synthetic anomalies of the paper's App. 7.2 are added later.
- :func:`generate_kits23`: ``case_XXXXX/imaging.nii.gz`` (float32 HU) and
  ``segmentation.nii.gz`` (uint8: 0 background, 1 kidney, 2 tumour, 3 cyst), array
  axis 0 axial ``(slices, rows, columns)``; 60 % tumour cases, 10 % cyst-only,
  30 % controls, mostly late arterial. Stands in for the private TUH set.

A subject is made in two steps, as torchio does for random transforms: every
parameter is drawn from an RNG seeded by ``(seed, track, index)``, then a
deterministic rendering paints tissue classes into a label volume in anatomical
order (later paint wins), maps them to HU, adds organ texture, blurs for partial volume
and adds spatially correlated CT noise. Same seed, byte-identical files.

Contrast: each subject is scanned in one phase drawn from the track's mix (native, late
arterial / corticomedullary, portal venous, nephrographic, delayed; ``PHASES``), with
per-tissue HU ranges per phase from the literature cited at ``_ENHANCEMENT``; within a
phase a subject's bolus timing moves its organs together, each with its own jitter.
Noise is specified at a reference voxel and scales with voxel volume (:func:`noise_std`),
so a coarse rendering carries the noise a fine one shows after averaging.

KiTS masses: renal cell carcinomas of three subtypes (clear cell, papillary, chromophobe)
in KiTS23's proportions and size distribution, each its subtype's enhancement in the
case's phase, with necrosis, cystic change and calcification; expansile (the kidney is
pushed aside, not overpainted) and often exophytic; simple cysts at water density.

World coordinates are RAS+ in mm: +x towards the patient's right, +y anterior,
+z superior. The anatomy lives in a patient frame centred on the body and turned by a
small yaw into the world; z = 0 is near the L1/L2 disc.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from .files import atomic_path, read_json, remove_stale_temporaries, temporary_folder, write_csv, write_json
from .image_quality import hu_stats
from .progress import tqdm

__all__ = [
    "STRUCTURES", "KITS_LABELS", "PHASES", "TOTALSEGMENTATOR_PHASES", "KITS23_PHASES", "RCC_SUBTYPES",
    "NOISE_REFERENCE_MM", "STRUCTURE_TISSUES", "PhantomVolume", "parse_phases", "draw_phase",
    "phase_hu_ranges", "structure_hu_range", "noise_std",
    "render_totalsegmentator_subject", "render_kits23_case", "generate_totalsegmentator",
    "generate_kits23", "kits23_lesion_notes", "organ_hu_stats", "axial_view",
]

# 2: contrast phases, renal-mass subtypes and sizes, noise per voxel size; 3: organ outlines
# rippled per subject, bowel loops not round, costal cartilages rising to the costal margin
GENERATOR_VERSION = 3
VERTEBRAE = ("T11", "T12", "L1", "L2", "L3", "L4")
# TotalSegmentator v2 class names; a structure's owner id in the rendering is index + 1.
STRUCTURES = (
    "liver", "spleen", "kidney_left", "kidney_right", "gallbladder", "stomach", "pancreas",
    "aorta", "inferior_vena_cava", "iliopsoas_left", "iliopsoas_right", "autochthon_left",
    "autochthon_right", "small_bowel", "colon",
) + tuple(f"vertebrae_{v}" for v in VERTEBRAE)
_ID = {name: i + 1 for i, name in enumerate(STRUCTURES)}
_TUMOUR, _CYST = 100, 101
KITS_LABELS = {"background": 0, "kidney": 1, "tumour": 2, "cyst": 3}

# ------------------------------------------------------------ tissues, HU and contrast phases
#
# Contrast phases (renal multiphase CT; Yuh & Cohan, AJR 1999;173:747-755; Birnbaum et al.,
# Radiology 1996;200:753-758; bolus timing: Bae, Radiology 2010;256:32-61):
#   native         no IV contrast
#   arterial       late arterial / corticomedullary, ~35-45 s: aorta at its peak, the renal
#                  cortex bright and the medulla still dark; KiTS19/21/23 images are this phase
#   portal_venous  ~70 s: liver and portal veins at their peak, corticomedullary difference fading
#   nephrographic  ~100 s: homogeneous nephrogram, cortex = medulla; the best phase for detecting
#                  renal masses (Cohan et al., Radiology 1995;196:445-451; Szolar et al.,
#                  Radiology 1997;202:211-217)
#   delayed        excretory, 5-10 min: parenchyma washing out, contrast in the collecting system
PHASES = ("native", "arterial", "portal_venous", "nephrographic", "delayed")
# Phase mixes drawn per subject (PhantomConfig.ts_phases / kits_phases; parse_phases).
# TotalSegmentator: routine clinical CT sampled at random (Wasserthal et al., Radiol AI
# 2023;5:e230024), which the paper says mixes native, arterial, portal venous and late phases
# without publishing counts; this mix is our choice: portal venous is the routine abdominal
# protocol, native is common (stone, trauma, follow-up and chest-abdomen scans), arterial and
# delayed are protocol-specific. KiTS23: "late arterial" pre-operative CT (Heller et al., KiTS19
# data paper, arXiv:1904.00445; KiTS21 title: "... in corticomedullary-phase CT"), a minority
# nephrographic.
TOTALSEGMENTATOR_PHASES = "native:0.30,arterial:0.15,portal_venous:0.45,delayed:0.10"
KITS23_PHASES = "arterial:0.80,nephrographic:0.20"

# Tissue classes: (low, high) HU of the per-subject draw and the texture amplitude (HU) for the
# tissues whose HU does not depend on the contrast phase.
_TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000, -1000, 0), "lung": (-880, -830, 35), "fat": (-115, -85, 7),
    "skin": (20, 50, 5), "muscle": (40, 55, 6), "liver": (50, 65, 5),
    "liver_vessel": (35, 50, 6), "spleen": (40, 52, 4), "cortex": (28, 40, 6),
    "medulla": (25, 38, 6), "urine": (0, 15, 3), "sinus_fat": (-95, -70, 8),
    "artery": (35, 50, 5), "vein": (35, 50, 5), "ivc": (35, 50, 5), "bowel_wall": (30, 45, 8),
    "bowel_fluid": (0, 30, 6), "gas": (-1000, -960, 15), "contrast": (200, 320, 30),
    "stool": (-90, 10, 60), "bile": (0, 20, 3), "pancreas": (35, 50, 14),
    "bone": (650, 950, 70), "marrow": (180, 290, 45), "disc": (70, 100, 6),
    "csf": (5, 20, 3), "cartilage": (110, 190, 15), "table": (120, 260, 10), "calcium": (450, 800, 50),
    # renal masses (solid part by subtype; see _ENHANCEMENT for the contrast phases)
    "rcc_clear": (28, 42, 18), "rcc_clear_avid": (30, 45, 15),  # clear cell: solid, hypervascular parts
    "rcc_papillary": (28, 42, 7), "rcc_chromophobe": (28, 42, 10),
    "necrosis": (12, 35, 8),  # non-enhancing necrotic tumour
    "tumour_fluid": (5, 25, 4),  # cystic change inside a tumour
    "cyst": (0, 18, 2),  # simple (Bosniak I) cyst: -9 to 20 HU, no enhancement (Silverman et al.,
    # Radiology 2019;292:475-488)
}
_T = {name: i for i, name in enumerate(_TISSUES)}
# HU ranges per contrast phase of the tissues that enhance; "native" is _TISSUES above.
# Rounded from: renal cortex / medulla per phase: Yuh & Cohan 1999 and Birnbaum et al. 1996
# (corticomedullary cortex 150-230, medulla 60-110; nephrographic both 150-200; excretory
# medulla >= cortex, collecting system opacified); aorta, portal vein, liver, spleen, pancreas:
# Bae 2010 (time-enhancement curves at a standard 1.5-2 ml/kg dose) and Boll & Merkle,
# Radiographics 2009;29:1591-1614 (unenhanced liver 50-65 HU, spleen ~8-10 HU lower);
# renal cell carcinoma by subtype: Kim et al., AJR 2002;178:1499-1506, Young et al., Radiology
# 2013;267:444-453 and Prasad et al., Radiographics 2006;26:1795-1806 (clear cell avid and
# heterogeneous but below the cortex in the corticomedullary phase, washing out later;
# papillary hypo-enhancing, homogeneous, enhancing slowly; chromophobe intermediate).
_ENHANCEMENT: dict[str, dict[str, tuple[float, float]]] = {
    #                arterial      portal_venous  nephrographic   delayed
    "liver":        dict(arterial=(65, 85), portal_venous=(100, 125), nephrographic=(95, 118), delayed=(78, 98)),
    "liver_vessel": dict(arterial=(80, 130), portal_venous=(150, 190), nephrographic=(135, 165), delayed=(95, 120)),
    "spleen":       dict(arterial=(95, 140), portal_venous=(110, 130), nephrographic=(105, 125), delayed=(85, 105)),
    "cortex":       dict(arterial=(150, 230), portal_venous=(160, 210), nephrographic=(150, 200), delayed=(110, 150)),
    "medulla":      dict(arterial=(65, 110), portal_venous=(110, 160), nephrographic=(150, 200), delayed=(120, 170)),
    "urine":        dict(arterial=(0, 15), portal_venous=(0, 20), nephrographic=(5, 35), delayed=(400, 1200)),
    "artery":       dict(arterial=(250, 380), portal_venous=(150, 200), nephrographic=(130, 170), delayed=(100, 130)),
    "vein":         dict(arterial=(120, 180), portal_venous=(160, 210), nephrographic=(140, 175), delayed=(100, 130)),
    "ivc":          dict(arterial=(70, 120), portal_venous=(125, 170), nephrographic=(130, 160), delayed=(100, 130)),
    "pancreas":     dict(arterial=(100, 140), portal_venous=(85, 110), nephrographic=(80, 100), delayed=(65, 85)),
    "bowel_wall":   dict(arterial=(70, 100), portal_venous=(80, 110), nephrographic=(75, 100), delayed=(60, 85)),
    "muscle":       dict(arterial=(45, 60), portal_venous=(50, 65), nephrographic=(50, 65), delayed=(50, 62)),
    "rcc_clear":    dict(arterial=(110, 170), portal_venous=(110, 150), nephrographic=(90, 130), delayed=(65, 95)),
    "rcc_clear_avid": dict(arterial=(150, 215), portal_venous=(135, 175), nephrographic=(105, 145), delayed=(70, 105)),
    "rcc_papillary": dict(arterial=(50, 80), portal_venous=(60, 90), nephrographic=(65, 100), delayed=(60, 90)),
    "rcc_chromophobe": dict(arterial=(75, 110), portal_venous=(85, 115), nephrographic=(85, 120), delayed=(70, 100)),
}
# The arterial spleen is heterogeneous (arciform enhancement): a larger texture amplitude.
_TEXTURE_BY_PHASE = {("spleen", "arterial"): 22.0}
RCC_SUBTYPES = {"clear_cell": "rcc_clear", "papillary": "rcc_papillary", "chromophobe": "rcc_chromophobe"}
# Subtype mix of the KiTS23 cases (dataset/kits23.json, 489 cases: clear cell 310, papillary 45,
# chromophobe 38; oncocytoma 26 and the rarer rest are drawn as the nearest of the three).
_RCC_MIX = {"clear_cell": 0.78, "papillary": 0.12, "chromophobe": 0.10}
# Noise: CT noise variance scales as 1 / (voxel volume) at a fixed dose, so the drawn noise std
# holds at this reference voxel (mm) and every rendering scales it (``_to_hu``).
NOISE_REFERENCE_MM = (1.5, 1.5, 1.5)


# ---------------------------------------------------------------- grid and primitives


class _Grid:
    """Voxel centres (world mm, ascending axes) and the patient frame (yaw about z).

    Volumes are ``(nx, ny, nz)`` arrays in Fortran order: their memory is the NIfTI
    on-disk order, so writing needs no transposed copy.
    """

    def __init__(self, x, y, z, yaw: float):
        self.x, self.y, self.z = (np.asarray(a, np.float32) for a in (x, y, z))
        self.shape = (len(x), len(y), len(z))
        self.c, self.s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
        wx, wy = self.x[:, None], self.y[None, :]
        self.xp = self.c * wx + self.s * wy  # patient-frame coordinates of each pixel
        self.yp = -self.s * wx + self.c * wy

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index box covering the patient-frame box [lo, hi] (mm); None if outside."""
        cx = np.array([lo[0], hi[0], lo[0], hi[0]])
        cy = np.array([lo[1], lo[1], hi[1], hi[1]])
        wx, wy = self.c * cx - self.s * cy, self.s * cx + self.c * cy
        out = []
        for axis, a, b in ((self.x, wx.min(), wx.max()), (self.y, wy.min(), wy.max()),
                           (self.z, lo[2], hi[2])):
            i0, i1 = int(np.searchsorted(axis, a)), int(np.searchsorted(axis, b, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def offsets(self, sl, centre):
        """Patient-frame offsets from ``centre``, shaped (bx, by, 1), (bx, by, 1), (1, 1, bz)."""
        px = self.xp[sl[0], sl[1]][:, :, None] - np.float32(centre[0])
        py = self.yp[sl[0], sl[1]][:, :, None] - np.float32(centre[1])
        pz = self.z[sl[2]][None, None, :] - np.float32(centre[2])
        return px, py, pz


def _rotate(frame, px, py, pz):
    """Coordinates along the rows of ``frame`` (3x3 orthonormal, patient frame)."""
    f = np.asarray(frame, np.float32)
    return [f[i, 0] * px + f[i, 1] * py + f[i, 2] * pz for i in range(3)]


def _q_ellipsoid(g: _Grid, sl, centre, radii, frame=None):
    """Normalised radius q (< 1 inside) of an ellipsoid over the box ``sl``."""
    u, v, w = g.offsets(sl, centre) if frame is None else _rotate(frame, *g.offsets(sl, centre))
    return np.sqrt((u / np.float32(radii[0])) ** 2 + (v / np.float32(radii[1])) ** 2
                   + (w / np.float32(radii[2])) ** 2)


def _extent(radii, frame=None) -> np.ndarray:
    """Half-size of the axis-aligned box around an ellipsoid (patient frame, mm)."""
    radii = np.asarray(radii, float)
    return radii if frame is None else np.sqrt(((np.asarray(frame) * radii[:, None]) ** 2).sum(0))


def _ellipsoid(g: _Grid, centre, radii, frame=None):
    c, r = np.asarray(centre, float), _extent(radii, frame)
    sl = g.box(c - r, c + r)
    return (None, None) if sl is None else (sl, _q_ellipsoid(g, sl, c, radii, frame))


def _column(g: _Grid, z0, z1, cx, cy, rx, ry, angle: float = 0.0, power: float = 2.0):
    """A tube along z (aorta, psoas, spine); centre and radii are numbers or functions of z.

    Returns the box and q (< 1 inside); ``angle`` (rad) turns the section in-plane and
    ``power`` > 2 squares it off (superellipse).
    """
    i0, i1 = int(np.searchsorted(g.z, z0)), int(np.searchsorted(g.z, z1, "right"))
    if i1 <= i0:
        return None, None
    zs = g.z[i0:i1]
    cx, cy, rx, ry = (np.broadcast_to(np.asarray(f(zs) if callable(f) else f, np.float32), zs.shape)
                      for f in (cx, cy, rx, ry))
    r = float(max(rx.max(), ry.max()))
    sl = g.box((cx.min() - r, cy.min() - r, z0), (cx.max() + r, cy.max() + r, z1))
    if sl is None:
        return None, None
    sl = (sl[0], sl[1], slice(i0, i1))
    px = g.xp[sl[0], sl[1]][:, :, None] - cx
    py = g.yp[sl[0], sl[1]][:, :, None] - cy
    if angle:
        ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        px, py = ca * px + sa * py, -sa * px + ca * py
    if power == 2.0:
        return sl, np.sqrt((px / rx) ** 2 + (py / ry) ** 2)
    return sl, (np.abs(px / rx) ** power + np.abs(py / ry) ** power) ** (1 / power)


def _tube(g: _Grid, p0, p1, r0: float, r1: float | None = None):
    """A straight tube p0 -> p1 (mm), radius r0 -> r1: box and q (< 1 inside)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    r1 = r0 if r1 is None else r1
    r = max(r0, r1)
    sl = g.box(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    if sl is None:
        return None, None
    px, py, pz = g.offsets(sl, p0)
    d = (p1 - p0).astype(np.float32)
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    return sl, dist / np.float32(r0 + (r1 - r0) * t)


def _basis(long_axis, towards) -> np.ndarray:
    """Orthonormal rows (h, v, w): w along ``long_axis``, h as close to ``towards`` as possible."""
    w = np.asarray(long_axis, float) / np.linalg.norm(long_axis)
    h = np.asarray(towards, float) - np.dot(towards, w) * w
    h /= np.linalg.norm(h)
    v = (w[1] * h[2] - w[2] * h[1], w[2] * h[0] - w[0] * h[2], w[0] * h[1] - w[1] * h[0])
    return np.stack([h, v, w])


def _ripple(px, py, pz, waves) -> np.ndarray | float:
    """1 + a sum of plane waves at patient-frame offsets: multiplying an organ's q by it moves
    its outline in and out smoothly (the waves of :func:`_waves`)."""
    total = 1.0
    for amp, kx, ky, kz, phase in np.asarray(waves, np.float32):
        # sin(a + b) split so that the sines are taken on 2D and 1D arrays, not on the box
        a2, b1 = kx * px + ky * py + phase, kz * pz
        total = total + amp * (np.sin(a2) * np.cos(b1) + np.cos(a2) * np.sin(b1))
    return total


class _Canvas:
    """Tissue classes and structure owners, (X, Y, Z) uint8; later paint wins."""

    def __init__(self, g: _Grid, geo: dict):
        self.g, self.geo = g, geo
        self.tissue = np.zeros(g.shape, np.uint8, order="F")
        self.owner = np.zeros(g.shape, np.uint8, order="F")

    def paint(self, sl, mask, tissue: str, owner: int | None = 0) -> None:
        """Set ``tissue`` where ``mask``; ``owner`` 0 clears ownership, None keeps it."""
        mask = np.broadcast_to(mask, tuple(s.stop - s.start for s in sl))
        self.tissue[sl][mask] = _T[tissue]
        if owner is not None:
            self.owner[sl][mask] = owner

    def fill(self, prim, tissue: str, owner: int | None = 0, below: float = 1.0,
             cavity: float | None = None, within: int | None = None, over: str | None = None):
        """Paint a primitive ``(sl, q)`` where q < ``below``; optionally only inside the
        abdominal cavity (``cavity`` mm inside the wall), inside structure ``within`` or
        over tissue ``over``. Returns the painted mask (or None)."""
        sl, q = prim
        if sl is None:
            return None
        mask = q < below
        if cavity is not None:
            mask &= self.inside_cavity(sl, cavity)
        if within is not None:
            mask &= self.owner[sl] == within
        if over is not None:
            mask &= self.tissue[sl] == _T[over]
        self.paint(sl, mask, tissue, owner)
        return mask

    def inside_cavity(self, sl, margin: float = 0.0) -> np.ndarray:
        return (self.geo["cavity"][sl[0], sl[1]] > margin)[:, :, None]


# ------------------------------------------------------------------ anatomy parameters


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _draw_anatomy(rng: np.random.Generator, z_extent_mm: float | None, phase: str,
                  outline_rng: np.random.Generator) -> dict:
    """Every random number of one subject (mm, patient frame); rendering draws only noise.

    The organs' outline ripples come from their own stream, ``outline_rng``, so that adding
    them left every other draw (positions, sizes, phases, lesions) as it was.
    """
    male = rng.random() < 0.55
    age = int(rng.integers(25, 86))
    A: dict[str, Any] = {"gender": "m" if male else "f", "age": age}
    a = _u(rng, 148, 185) if male else _u(rng, 136, 172)  # body half-width
    bd = A["body"] = dict(
        a=a, b_ant=a * _u(rng, 0.6, 0.78), b_post=a * _u(rng, 0.56, 0.68), p=_u(rng, 2.1, 2.6),
        harm=rng.normal(0, 0.02, 4), phase=rng.uniform(0, 2 * np.pi, 4),
        fat=_u(rng, 8, 30) * (1.0 if male else 1.3), fat_ant=_u(rng, 1.0, 1.8),
        muscle=_u(rng, 9, 14) * (1.15 if male else 0.9), rectus_w=_u(rng, 55, 80))
    A["yaw"], A["shift"] = _u(rng, -0.07, 0.07), (_u(rng, -12, 12), _u(rng, -5, 20))
    A["table_y"] = -bd["b_post"] + _u(rng, 3, 12)
    # Spine: vertebral body behind the cavity; lower lumbar levels lie more anteriorly.
    vb_rx, vb_ry = _u(rng, 21, 26), _u(rng, 15, 18)
    erector = _u(rng, 38, 50) * (1.1 if male else 0.95)
    canal_y = -bd["b_post"] + 0.7 * bd["fat"] + erector + 14
    sp = A["spine"] = dict(
        canal_y=canal_y, vb_y=canal_y + 11 + vb_ry, vb_rx=vb_rx, vb_ry=vb_ry,
        lordosis=_u(rng, 0.05, 0.12), x=_u(rng, -5, 5), level_h=_u(rng, 33, 38),
        disc_h=_u(rng, 7, 10), disc0=_u(rng, -8, 8), erector=erector)
    # Kidneys: right lower than left; long axes tilted (upper pole medial and posterior);
    # hilum turned anteromedially.
    z_r = sp["disc0"] + _u(rng, -22, 0)
    A["kidney"] = {}
    for side, z_c in ((+1, z_r), (-1, z_r + _u(rng, 8, 25))):
        alpha, beta, phi = np.radians([_u(rng, 8, 20), _u(rng, 8, 22), _u(rng, 25, 50)])
        A["kidney"][side] = dict(
            centre=np.array([sp["x"] + side * _u(rng, 58, 72), sp["vb_y"] + _u(rng, -6, 8), z_c]),
            frame=_basis((-side * np.tan(alpha), -np.tan(beta), 1.0),
                         (-side * np.cos(phi), np.sin(phi), 0.0)),
            radii=np.array([_u(rng, 25, 30), _u(rng, 19, 23), _u(rng, 50, 60)]),
            bend=_u(rng, 0.06, 0.16), cortex=_u(rng, 4.5, 6.5), pad=_u(rng, 3, 9),
            pyramids=int(rng.integers(5, 8)), pyr_phase=rng.uniform(0, 2 * np.pi, 2))
    zl = A["kidney"][-1]["centre"][2]
    # Field of view: square, 384-500 mm; z extent centred on the kidneys.
    A["fov"] = float(np.clip(2 * a + _u(rng, 50, 110), 384, 500))
    extent = _u(rng, 140, 160) if z_extent_mm is None else float(z_extent_mm)
    zc = 0.5 * (z_r + zl) + _u(rng, -5, 12)
    A["z_range"] = (zc - extent / 2, zc + extent / 2)
    A["liver"] = dict(
        right=(np.array([0.3 * a, _u(rng, -0.1, 0.0) * a, z_r + _u(rng, 100, 125)]),
               np.array([_u(rng, 0.45, 0.55) * a, _u(rng, 0.55, 0.65) * a, _u(rng, 115, 140)])),
        shear=(_u(rng, 0.0012, 0.0022) * a, _u(rng, 0.0004, 0.001) * a),  # the tip is lateral, anterior
        left=(np.array([_u(rng, -0.12, 0.05) * a, 0.42 * a, zl + _u(rng, 75, 100)]),
              np.array([0.42 * a, 0.3 * a, _u(rng, 45, 60)])),
        wobble=rng.normal(0, 0.04, 3), wphase=rng.uniform(0, 2 * np.pi, 3),
        porta=np.array([0.2 * a, sp["vb_y"] + _u(rng, 40, 55), zl + _u(rng, 35, 55)]))
    lv = A["liver"]
    # Portal branches fan out from the porta; hepatic veins converge on the IVC at the top.
    lv["vessels"] = _tree(rng, lv["porta"], (1.0, -0.1, 0.2), 50, 6.0, 3) + _tree(
        rng, lv["porta"], (-0.6, 0.8, 0.3), 45, 5.0, 3)
    hv_root = np.array([0.12 * a, sp["vb_y"] + 40, A["z_range"][1] + 25])
    for d in ((1.0, 0.1, -0.7), (0.3, 0.9, -0.6), (-0.5, 0.8, -0.5)):
        lv["vessels"] += _tree(rng, hv_root, d, 60, 4.5, 2)
    ang = np.radians(_u(rng, 200, 225))  # spleen along the left posterolateral wall
    A["spleen"] = dict(
        centre=np.array([0.72 * a * np.cos(ang), 0.6 * bd["b_post"] * np.sin(ang), zl + _u(rng, 45, 70)]),
        frame=_basis((0, 0, 1), (np.cos(ang), 0.8 * np.sin(ang), 0)),
        radii=np.array([_u(rng, 18, 26), _u(rng, 45, 62), _u(rng, 48, 62)]))
    A["stomach"] = dict(
        path=np.array([[-0.38 * a, 0.05 * a, zl + 95], [-0.3 * a, 0.3 * a, zl + 50],
                       [0.0, 0.45 * a, zl + _u(rng, 5, 20)], [0.16 * a, 0.38 * a, zl + _u(rng, 0, 10)]]),
        radii=np.array([_u(rng, 40, 55), _u(rng, 28, 40), _u(rng, 16, 24), _u(rng, 10, 14)]),
        gas=_u(rng, 0.15, 0.5))
    A["gallbladder"] = dict(
        present=bool(rng.random() < 0.8),
        centre=np.array([_u(rng, 30, 55), sp["vb_y"] + _u(rng, 60, 85), z_r + _u(rng, 5, 30)]),
        frame=_basis((0.2, 0.5, 1.0), (1, 0, 0)),
        radii=np.array([_u(rng, 13, 19), _u(rng, 13, 19), _u(rng, 28, 40)]))
    ao_r = _u(rng, 9, 12) * (1 + 0.004 * max(age - 50, 0))
    A["aorta"] = dict(x=sp["x"] - _u(rng, 8, 16), dy=vb_ry + ao_r + _u(rng, 1, 5), r=ao_r,
                      calc=[(_u(rng, 0, 2 * np.pi), _u(rng, -80, 80)) for _ in range(max(age - 50, 0) // 6)])
    A["ivc"] = dict(x=sp["x"] + _u(rng, 18, 28), dy=vb_ry + _u(rng, 8, 16), rx=_u(rng, 11, 16), ry=_u(rng, 7, 11))
    A["sma"] = dict(z0=zl + _u(rng, 15, 30), r=_u(rng, 3.5, 4.5), smv_r=_u(rng, 5, 6.5))
    root = np.array([A["aorta"]["x"] + 8, sp["vb_y"] + A["aorta"]["dy"] + 25, A["sma"]["z0"] - 20])
    A["mesenteric"] = [(root + (0, 0, -_u(rng, 0, 60)), root + rng.normal(0, 1, 3) * (60, 25, 40) + (0, 35, -30),
                        _u(rng, 1.3, 2.2)) for _ in range(16)]
    A["pancreas"] = dict(z=zl + _u(rng, 5, 20), r=_u(rng, 9, 13), tail=_u(rng, 15, 35))
    A["psoas"] = dict(r=_u(rng, 17, 25) * (1.1 if male else 0.85), z0=sp["disc0"] + 1.6 * sp["level_h"])
    n = int(rng.integers(150, 220))  # small-bowel loop segments
    A["bowel"] = dict(
        u=rng.random((n, 3)), r=rng.uniform(9, 17, n),
        shape=rng.uniform(0.75, 1.35, (n, 3)) * (1, 1, 1.4), kind=rng.choice(4, n, p=[0.45, 0.27, 0.2, 0.08]),
        level=rng.uniform(-0.3, 0.6, n), oral=bool(rng.random() < 0.3))
    A["colon"] = dict(
        asc=(_u(rng, 0.62, 0.72) * a, sp["vb_y"] + _u(rng, 5, 35), _u(rng, 17, 24)),
        desc=(-_u(rng, 0.64, 0.74) * a, sp["vb_y"] + _u(rng, -5, 20), _u(rng, 14, 19)),
        trans_z=z_r + _u(rng, 15, 45), trans_y=_u(rng, 0.35, 0.5) * a, trans_r=_u(rng, 16, 22),
        haustra=_u(rng, 22, 32), gas=rng.uniform(0.0, 0.6, 5))
    A["lung_z"] = sp["disc0"] + _u(rng, 1.4, 2.2) * sp["level_h"]
    # Ribs 7-12 from their vertebra (T11 is 2.5 levels above disc0) sloping down anteriorly.
    A["ribs"] = [dict(side=side, start=np.radians(_u(rng, 282, 295)), span=np.radians(span),
                      drop=_u(rng, 0.85, 1.15) * drop, cartilage=k <= 10, z0=sp["disc0"] + (13.5 - k) * sp["level_h"])
                 for side in (1, -1) for k, span, drop in ((12, 55, 45), (11, 85, 80), (10, 125, 170),
                                                           (9, 140, 145), (8, 150, 140), (7, 155, 140))]
    A["phase"] = phase
    A["hu"], A["texture_hu"] = _draw_contrast(rng, phase, age)
    # noise std at NOISE_REFERENCE_MM; larger patients are noisier (fewer photons reach the detector)
    A["noise_hu"] = float(np.clip(_u(rng, 10, 16) * (a / 160) ** 1.5, 10, 20))
    A["outline"] = _draw_outlines(outline_rng, len(A["bowel"]["r"]))
    return A


# Outline ripples per organ: (waves, wavelength range in mm, amplitude sd as a share of the
# radius). Real organs are not ellipsoids: kidneys keep fetal lobulation, the spleen has
# clefts and notches, the pancreas is lobulated; a few smooth random waves per subject give
# each its own irregular outline while keeping its size and place.
_RIPPLES = {
    "kidney": (4, (25, 60), 0.04), "liver": (4, (40, 120), 0.04), "spleen": (5, (25, 70), 0.07),
    "gallbladder": (2, (30, 60), 0.04), "stomach": (3, (40, 100), 0.06), "pancreas": (4, (12, 30), 0.1),
}


def _waves(rng: np.random.Generator, n: int, wavelengths, sd: float) -> np.ndarray:
    """``n`` plane waves as rows (amplitude, kx, ky, kz, phase): random directions, wavelengths
    uniform in ``wavelengths`` (mm), amplitudes normal with ``sd``."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(*wavelengths, n))[:, None]
    return np.column_stack([rng.normal(0, sd, n), k, rng.uniform(0, 2 * np.pi, n)])


def _draw_outlines(rng: np.random.Generator, bowel_loops: int) -> dict:
    """Each organ's outline waves (both kidneys apart) and each bowel loop's shape harmonics."""
    out = {name: _waves(rng, *spec) for name, spec in _RIPPLES.items() if name != "kidney"}
    out["kidney"] = {side: _waves(rng, *_RIPPLES["kidney"]) for side in (1, -1)}
    # A loop's section: its radius times 1 + a2 cos(2 phi + p2) + a3 cos(3 phi + p3).
    out["bowel"] = np.column_stack([rng.normal(0, 0.08, (bowel_loops, 2)),
                                    rng.uniform(0, 2 * np.pi, (bowel_loops, 2))])
    return out


def _draw_contrast(rng: np.random.Generator, phase: str, age: int = 40) -> tuple[dict[str, float], dict[str, float]]:
    """HU and texture amplitude of every tissue class for one subject in ``phase``.

    Within a phase, a subject draws where its bolus timing and dose put it (``timing`` in
    [0, 1]); each enhancing tissue sits at ``timing`` +- 0.3 of its range, so organs brighten
    together but not in lockstep, as in real scans. Tissues that do not enhance draw
    independently. Fat infiltration with ``age`` lowers muscle (0.4 HU per year after 30;
    Wasserthal et al. 2023 found the back muscles' attenuation falling with age) and
    pancreas (0.5 HU per year after 40) in every phase. The number of random draws does not
    depend on the phase, so the anatomy and lesions drawn after this are the same in every phase.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; choose one of {list(PHASES)}")
    timing = _u(rng, 0.0, 1.0)
    hu, texture = {}, {}
    for name, (lo, hi, amp) in _TISSUES.items():
        jitter, free = _u(rng, -0.3, 0.3), _u(rng, 0, 1)
        if phase != "native" and name in _ENHANCEMENT:
            lo, hi = _ENHANCEMENT[name][phase]
            hu[name] = lo + (hi - lo) * float(np.clip(timing + jitter, 0, 1))
        else:
            hu[name] = lo + (hi - lo) * free
        texture[name] = _TEXTURE_BY_PHASE.get((name, phase), amp)
    if phase != "native":  # clear-cell RCC is avid but stays below the cortex (Young et al. 2013)
        hu["rcc_clear"] = min(hu["rcc_clear"], hu["cortex"] - 15.0)
        hu["rcc_clear_avid"] = min(hu["rcc_clear_avid"], hu["cortex"] - 5.0)
    hu["muscle"] -= 0.4 * max(age - 30, 0)
    hu["pancreas"] -= 0.5 * max(age - 40, 0)
    return hu, texture


def phase_hu_ranges(phase: str) -> dict[str, tuple[float, float]]:
    """The (low, high) HU each tissue class is drawn from in ``phase`` (the cited ranges above)."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; choose one of {list(PHASES)}")
    return {name: (_ENHANCEMENT[name][phase] if phase != "native" and name in _ENHANCEMENT else (lo, hi))
            for name, (lo, hi, _) in _TISSUES.items()}


# The tissue classes a structure's mask mostly holds (kidney: cortex and medulla).
STRUCTURE_TISSUES = {
    "liver": ("liver",), "spleen": ("spleen",), "kidney_left": ("cortex", "medulla"),
    "kidney_right": ("cortex", "medulla"), "aorta": ("artery",), "inferior_vena_cava": ("ivc",),
    "pancreas": ("pancreas",), "iliopsoas_left": ("muscle",), "iliopsoas_right": ("muscle",),
    "autochthon_left": ("muscle",), "autochthon_right": ("muscle",),
}


def structure_hu_range(structure: str, phase: str) -> tuple[float, float]:
    """The literature HU range (low, high) of a structure in ``STRUCTURE_TISSUES`` in ``phase``:
    the span of its tissues' ranges (a kidney spans cortex and medulla)."""
    ranges = phase_hu_ranges(phase)
    spans = [ranges[t] for t in STRUCTURE_TISSUES[structure]]
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)


def _tree(rng, root, direction, length, radius, levels) -> list[tuple]:
    """A random branching vessel tree: segments (p0, p1, r0, r1), each level 0.7x shorter."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    end = np.asarray(root, float) + length * d
    segs = [(np.asarray(root, float), end, radius, 0.8 * radius)]
    if levels > 1:
        for _ in range(2):
            child = d + rng.normal(0, 0.8, 3)
            segs += _tree(rng, end, child, 0.75 * length, 0.62 * radius, levels - 1)
    return segs


def _draw_lesions(rng: np.random.Generator, A: dict, kind: str) -> list[dict]:
    """KiTS masses of one case: ``kind`` is "tumour" (maybe with a cyst), "cyst" or "control".

    Tumours: largest diameter log-normal like KiTS23's (``radiographic_size`` of 482 cases
    in its dataset/kits23.json: median 4.0 cm, interquartile range 2.5-6.1 cm, log-sd 0.62),
    clipped to 1-10 cm (the rendered field is centred on the kidneys); subtype from
    ``_RCC_MIX``; lobulated, centred in the parenchyma from deep to near the contour, so
    larger ones are exophytic; expansile: part of the mass pushes the parenchyma aside
    (``push``: radius of the volume displaced, the rest replaces parenchyma). Necrosis becomes likelier with size
    (overall about a quarter of the tumours, as KiTS23's 23 % with necrosis at pathology),
    cystic change and calcification by subtype (Prasad et al. 2006: papillary tumours calcify
    most often, clear-cell ones are the most heterogeneous). Cysts: 1-5 cm, smooth, often
    exophytic.
    """
    kinds = {"tumour": ["tumour"] + (["cyst"] if rng.random() < 0.25 else []),
             "cyst": ["cyst"] * int(rng.integers(1, 3)), "control": []}[kind]
    out = []
    for k in kinds:
        side = int(rng.choice([1, -1]))
        kd = A["kidney"][side]
        tumour = k == "tumour"
        subtype = str(rng.choice(list(_RCC_MIX), p=list(_RCC_MIX.values()))) if tumour else "cyst"
        if tumour:
            d = float(np.clip(rng.lognormal(np.log(40.0), 0.62), 10, 100))
        else:
            d = float(np.clip(rng.lognormal(np.log(22.0), 0.45), 10, 50))
        r = d / 2
        while True:  # direction in the kidney frame, away from the hilum (+h)
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            if u[0] < 0.3:
                break
        depth = _u(rng, 0.45, 0.95) if tumour else _u(rng, 0.7, 0.98)  # centre in the kidney: it grows from it
        local = u * depth / np.sqrt(np.sum((u / kd["radii"]) ** 2))
        lobes = [(np.zeros(3), r * rng.uniform(0.85, 1.0, 3))]
        if tumour:
            lobes += [(rng.normal(0, 0.3 * r, 3), r * rng.uniform(0.45, 0.75, 3))
                      for _ in range(int(rng.integers(0, 4)))]
        waves = [(_u(rng, 0.02, 0.06) if tumour else 0.01, rng.normal(0, 1, 3) * _u(rng, 2, 4),
                  _u(rng, 0, 2 * np.pi)) for _ in range(3)]
        # internal structure: probabilities per subtype (clear cell, papillary, chromophobe)
        scale = {"clear_cell": 1.0, "papillary": 0.5, "chromophobe": 0.3, "cyst": 0.0}[subtype]
        p_fluid = {"clear_cell": 0.25, "papillary": 0.1, "chromophobe": 0.05, "cyst": 0.0}[subtype]
        p_calc = {"clear_cell": 0.1, "papillary": 0.25, "chromophobe": 0.15, "cyst": 0.0}[subtype]
        necrotic = rng.random() < scale * np.clip(0.1 * (d / 10 - 1.5), 0, 0.8)
        cystic = rng.random() < p_fluid
        calcified = rng.random() < p_calc
        islands = [(rng.normal(0, 1, 3) / np.float32(_u(rng, 0.2, 0.35) * r), _u(rng, 0, 2 * np.pi)) for _ in range(8)]
        patches = [(rng.normal(0, 1, 3) / np.float32(_u(rng, 0.15, 0.3) * r), _u(rng, 0, 2 * np.pi)) for _ in range(8)]
        calcs = [(rng.normal(0, 0.35 * r, 3), _u(rng, 1.0, 2.5)) for _ in range(int(rng.integers(1, 5)))]
        out.append(dict(
            kind=k, subtype=subtype, side=side, centre=kd["centre"] + kd["frame"].T @ local, radius=r,
            lobes=lobes, waves=waves, push=r * _u(rng, 0.3, 0.85) ** (1 / 3),
            necrosis=_u(rng, 0.35, 0.7) if necrotic else 0.0,
            fluid=_u(rng, 0.05, 0.25) if cystic else 0.0, islands=islands,
            avid=_u(rng, 0.2, 0.45) if subtype == "clear_cell" else 0.0, patches=patches,
            calcs=calcs if calcified else []))
    return out


# ------------------------------------------------------------------------- rendering


def _body(g: _Grid, A: dict) -> tuple[np.ndarray, dict]:
    """2D body section (skin, fat, wall muscles, cavity fat, table) and depth maps (mm)."""
    bd = A["body"]
    theta = np.arctan2(g.yp, g.xp)
    ct, st = np.cos(theta), np.sin(theta)
    b = np.where(st > 0, bd["b_ant"], bd["b_post"])
    radius = (np.abs(ct / bd["a"]) ** bd["p"] + np.abs(st / b) ** bd["p"]) ** (-1 / bd["p"])
    for k in range(4):
        radius *= 1 + bd["harm"][k] * np.cos((k + 2) * theta + bd["phase"][k])
    # The patient lies on a curved table (world frame, not turned with the patient):
    # the back flattens against it.
    wx = g.x[:, None] + 0 * g.y[None, :]
    above = g.y[None, :] - (A["table_y"] + 0.0007 * wx ** 2)
    depth = np.minimum(radius - np.hypot(g.xp, g.yp), above)  # mm inside the skin
    lateral = ct ** 2
    front = (st > 0).astype(np.float32)
    fat = bd["fat"] * (lateral * 1.15 + (1 - lateral) * (front * bd["fat_ant"] + (1 - front) * 0.8))
    m, rw = bd["muscle"], bd["rectus_w"]
    # Rectus abdominis: two lens-shaped bellies either side of the linea alba.
    rectus = 1.15 * m * np.sqrt(np.clip(1 - ((np.abs(g.xp) - 4 - rw / 2) / (rw / 2)) ** 2, 0, 1))
    muscle = lateral * 1.2 * m + (1 - lateral) * (front * np.maximum(rectus, 0.4 * m) + (1 - front) * 0.6 * m)
    muscle = np.maximum(muscle, 1.5)
    wall = fat + muscle
    layer = np.full(depth.shape, _T["air"], np.uint8)
    layer[depth > 0] = _T["skin"]
    layer[depth > 2] = _T["fat"]
    layer[depth > fat] = _T["muscle"]
    frac = (depth - fat) / muscle  # fat planes between external, internal oblique, transversus
    planes = (np.abs(frac - 0.38) < 0.05) | (np.abs(frac - 0.72) < 0.045)
    layer[(depth > fat) & planes & (lateral > 0.6) & (st > -0.35)] = _T["fat"]
    layer[depth > wall] = _T["fat"]
    shell = (np.abs(above + 30) < 1.5) | (np.abs(above + 62) < 1.5)  # under a 3 cm foam pad
    layer[shell & (np.abs(wx) < 230)] = _T["table"]
    return layer, {"depth": depth, "fat": fat, "wall": wall, "theta": theta, "cavity": depth - wall}


def _bowel(cv: _Canvas, A: dict) -> None:
    """Small bowel as packed loop segments with walls between neighbours, then the colon."""
    g, bw, sp, bd = cv.g, A["bowel"], A["spine"], A["body"]
    zlo, zhi = A["z_range"]
    inner = bd["fat"] + bd["muscle"]
    centres = np.stack([(bw["u"][:, 0] * 2 - 1) * (bd["a"] - inner - 20),
                        sp["vb_y"] + 20 + bw["u"][:, 1] * (bd["b_ant"] - inner - sp["vb_y"] - 30),
                        zlo - 20 + bw["u"][:, 2] ** 1.4 * (zhi - zlo + 40)], 1)  # fewer loops high up
    radii = bw["r"][:, None] * bw["shape"]  # axis-aligned: a section of any loop is an ellipse
    box = g.box(centres.min(0) - radii.max(), centres.max(0) + radii.max())
    if box is None:
        return
    shape = tuple(s.stop - s.start for s in box)
    best = np.full(shape, 1e6, np.float32)  # nearest and second-nearest loop, in q^2 units
    second = np.full(shape, 1e6, np.float32)
    ident = np.zeros(shape, np.int16)
    shapes = A["outline"]["bowel"].astype(np.float32)
    for k, (c, r) in enumerate(zip(centres, radii)):
        sl = g.box(c - r, c + r)
        sl = sl and tuple(slice(max(s.start, b.start), min(s.stop, b.stop)) for s, b in zip(sl, box))
        if not sl or any(s.stop <= s.start for s in sl):
            continue
        px, py, pz = g.offsets(sl, c)
        u, v = px / np.float32(r[0]), py / np.float32(r[1])
        a2, a3, p2, p3 = shapes[k]
        phi = np.arctan2(v, u)  # a loop's section is not a circle: two harmonics on its radius
        q2 = (u ** 2 + v ** 2) / (1 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3)) ** 2 \
            + (pz / np.float32(r[2])) ** 2
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl, box))
        bl, sc = best[local], second[local]
        np.minimum(sc, np.maximum(bl, q2), out=sc)
        ident[local][q2 < bl] = k
        np.minimum(bl, q2, out=bl)
    kind = bw["kind"][ident]  # 0 fluid, 1 collapsed, 2 air-fluid level, 3 fluid or oral contrast
    y = g.yp[box[0], box[1]][:, :, None]
    # Loops grow into the gaps between them (q < 1.2), so neighbours share a wall.
    loops = (best < 1.3) & cv.inside_cavity(box, 3) & (y > sp["vb_y"] - 10)
    wall = loops & ((best > 1.05) | (second - best < 0.3) | (kind == 1))
    lumen = loops & ~wall
    cv.paint(box, lumen, "contrast" if bw["oral"] else "bowel_fluid", _ID["small_bowel"])
    cv.paint(box, lumen & (kind == 0), "bowel_fluid", _ID["small_bowel"])
    level = (centres[:, 1] + bw["level"] * bw["r"]).astype(np.float32)
    cv.paint(box, lumen & (kind == 2) & (y > level[ident]), "gas", _ID["small_bowel"])
    cv.paint(box, wall, "bowel_wall", _ID["small_bowel"])
    # Colon: ascending (right flank), transverse (anterior), descending (left flank);
    # haustra modulate the radius, gas rises to the anterior part of the lumen.
    col = A["colon"]
    hau = lambda z, r: r * (1 + 0.12 * np.cos(2 * np.pi * z / col["haustra"]))  # noqa: E731
    parts = []
    for (x, y0, r), top in ((col["asc"], col["trans_z"]), (col["desc"], col["trans_z"] + 35)):
        parts.append((_column(g, zlo - 5, top, x, y0, lambda z, r=r: hau(z, r), lambda z, r=r: hau(z, r)), y0, r))
    pts = [(col["asc"][0], col["asc"][1], col["trans_z"]), (0.25 * bd["a"], col["trans_y"], col["trans_z"] - 15),
           (-0.25 * bd["a"], col["trans_y"], col["trans_z"] - 5), (col["desc"][0], col["desc"][1], col["trans_z"] + 35)]
    for p0, p1 in zip(pts[:-1], pts[1:]):
        parts.append((_tube(g, p0, p1, col["trans_r"]), max(p0[1], p1[1]) - 0.5 * col["trans_r"], col["trans_r"]))
    for (prim, y_axis, r), gas in zip(parts, col["gas"]):
        inside = cv.fill(prim, "bowel_wall", _ID["colon"], cavity=2)
        if inside is None:
            continue
        sl, q = prim
        lumen = inside & (q < 0.84)
        cv.paint(sl, lumen, "stool", _ID["colon"])
        y = g.yp[sl[0], sl[1]][:, :, None]
        cv.paint(sl, lumen & (y > y_axis + r * (1 - 2 * gas)), "gas", _ID["colon"])


def _rippled(g: _Grid, prim, waves):
    """A primitive ``(sl, q)`` with its outline rippled by ``waves`` (:func:`_ripple`)."""
    sl, q = prim
    return (None, None) if sl is None else (sl, q * _ripple(*g.offsets(sl, (0, 0, 0)), waves))


def _organs(cv: _Canvas, A: dict) -> None:
    """Stomach, liver (with portal and hepatic veins), gallbladder, spleen, pancreas."""
    g, bd, ripples = cv.g, A["body"], A["outline"]
    st = A["stomach"]
    for i in range(len(st["path"]) - 1):
        prim = _rippled(g, _tube(g, st["path"][i], st["path"][i + 1], st["radii"][i], st["radii"][i + 1]),
                        ripples["stomach"])
        inside = cv.fill(prim, "bowel_wall", _ID["stomach"], cavity=2)
        if inside is not None:
            sl, q = prim
            lumen = inside & (q < 0.85)
            cv.paint(sl, lumen, "bowel_fluid", _ID["stomach"])
            y = g.yp[sl[0], sl[1]][:, :, None]
            cv.paint(sl, lumen & (y > st["path"][i][1] + (1 - 2 * st["gas"]) * st["radii"][i] * 0.6),
                     "gas", _ID["stomach"])
    # Liver: right lobe and left lobe, union with a low-frequency wobble, inside the wall.
    lv = A["liver"]
    (c1, r1), (c2, r2) = lv["right"], lv["left"]
    sl = g.box((-0.7 * bd["a"], -bd["b_post"], c1[2] - r1[2]), (bd["a"], bd["b_ant"], c1[2] + r1[2]))
    if sl is not None:
        px, py, pz = g.offsets(sl, (0, 0, 0))
        dz = c1[2] - pz
        q1 = np.sqrt(((px - c1[0] - lv["shear"][0] * dz) / r1[0]) ** 2
                     + ((py - c1[1] - lv["shear"][1] * dz) / r1[1]) ** 2 + (dz / r1[2]) ** 2)
        q = np.minimum(q1, _q_ellipsoid(g, sl, c2, r2))
        # a low-frequency wobble of the whole liver, then the subject's finer outline ripple
        wobble = [(lv["wobble"][k], 1 / (30 + 15 * k), 1 / (90 + 20 * k), 1 / (40 + 10 * k), lv["wphase"][k])
                  for k in range(3)]
        q *= _ripple(px, py, pz, np.vstack([wobble, ripples["liver"]]))
        cv.fill((sl, q), "liver", _ID["liver"], cavity=1.5)
    for p0, p1, r0, r1 in lv["vessels"]:
        cv.fill(_tube(g, p0, p1, r0, r1), "liver_vessel", None, within=_ID["liver"])
    gb = A["gallbladder"]
    if gb["present"]:
        prim = _rippled(g, _ellipsoid(g, gb["centre"], gb["radii"], gb["frame"]), ripples["gallbladder"])
        cv.fill(prim, "bowel_wall", _ID["gallbladder"], cavity=2)
        cv.fill(prim, "bile", _ID["gallbladder"], below=0.88, cavity=2)
    sp_ = A["spleen"]
    sl, q = _ellipsoid(g, sp_["centre"], sp_["radii"], sp_["frame"])
    if sl is not None:  # crescent: the hilum side is hollowed by a second ellipsoid
        hilum = _q_ellipsoid(g, sl, sp_["centre"] - sp_["frame"][0] * sp_["radii"][0] * 1.6,
                             sp_["radii"] * (1.0, 0.7, 0.75), sp_["frame"])
        q = _rippled(g, (sl, q), ripples["spleen"])[1]
        cv.fill((sl, np.where(hilum < 1, np.inf, q)), "spleen", _ID["spleen"], cavity=1.5)
    # Pancreas: head by the duodenum, body over the aorta, tail to the splenic hilum;
    # the splenic vein runs along its back.
    pa, sp = A["pancreas"], A["spine"]
    ya = sp["vb_y"] + A["aorta"]["dy"]
    pts = [(38, ya + 18, pa["z"] - 25), (8, ya + A["aorta"]["r"] + 22, pa["z"]),
           (-35, ya + 18, pa["z"] + 8), (-0.45 * bd["a"], sp["vb_y"] + 10, pa["z"] + pa["tail"])]
    for i, (p0, p1) in enumerate(zip(pts[:-1], pts[1:])):
        cv.fill(_rippled(g, _tube(g, p0, p1, pa["r"] * 1.15, pa["r"] * 0.8), ripples["pancreas"]),
                "pancreas", _ID["pancreas"])
        if i:
            back = np.array([0, -0.8 * pa["r"], 0])
            cv.fill(_tube(g, np.add(p0, back), np.add(p1, back), 4.0), "vein")


def _kidneys(cv: _Canvas, A: dict, lesions: list[dict]) -> None:
    """Perirenal fat, cortex, medullary pyramids, sinus fat and pelvis (both sides).

    Expansile masses of ``lesions`` push the kidney and its fat aside (:func:`_pushed`), so
    the parenchyma is stretched around a mass (the "claw sign") instead of being cut.
    """
    g = cv.g
    for side, kd in A["kidney"].items():
        owner = _ID["kidney_right" if side > 0 else "kidney_left"]
        c, (rh, rv, rw) = kd["centre"], kd["radii"]
        masses = [(les["centre"] - c, les["push"]) for les in lesions if les["side"] == side]
        pad = 1 + kd["pad"] / rv
        half = _extent(kd["radii"] * pad + (kd["bend"] * rh, 0, 0), kd["frame"])
        half = half + max((m[1] for m in masses), default=0.0)
        sl = g.box(c - half, c + half)
        if sl is None:
            continue
        lh, lv, lw = _rotate(kd["frame"], *_pushed(*g.offsets(sl, c), masses))
        lh = lh + np.float32(kd["bend"] * rh) * np.clip(1 - (lw / rw) ** 2, 0, 1)  # bean: concave medially
        q = np.sqrt((lh / rh) ** 2 + (lv / rv) ** 2 + (lw / rw) ** 2) * _ripple(
            *g.offsets(sl, c), A["outline"]["kidney"][side])
        cv.paint(sl, q < pad, "fat", 0)
        sinus = np.sqrt(((lh - 0.3 * rh) / (0.48 * rh)) ** 2 + (lv / (0.42 * rv)) ** 2 + (lw / (0.48 * rw)) ** 2)
        hilum = np.sqrt(((lh - rh) / (0.6 * rh)) ** 2 + (lv / (0.36 * rv)) ** 2 + (lw / (0.3 * rw)) ** 2)
        in_sinus = (sinus < 1) | (hilum < 1)
        kidney = (q < 1) & ~in_sinus
        cv.paint(sl, kidney, "cortex", owner)
        # Pyramids: wide at the corticomedullary junction, narrowing to papillae at the sinus.
        depth = np.sqrt(lh ** 2 + lv ** 2 + lw ** 2) * (1 / np.maximum(q, 1e-3) - 1)
        pattern = (np.cos(kd["pyramids"] * np.arctan2(lv, lh) + kd["pyr_phase"][0])
                   * np.cos(np.pi * lw / (0.3 * rw) + kd["pyr_phase"][1]))
        rel = np.clip((depth - kd["cortex"]) / 10.0, 0, 1)
        cv.paint(sl, kidney & (depth > kd["cortex"]) & (pattern > -0.55 + 1.1 * rel) & (sinus > 0.85),
                 "medulla", owner)
        cv.paint(sl, in_sinus & (q < 1.05), "sinus_fat", 0)
        pelvis = np.sqrt(((lh - 0.6 * rh) / (0.36 * rh)) ** 2 + (lv / (0.2 * rv)) ** 2 + (lw / (0.25 * rw)) ** 2)
        cv.paint(sl, pelvis < 1, "urine", owner)
        # Ureter: leaves the pelvis at the hilum and runs down in front of the psoas.
        hil = c + kd["frame"][0] * rh * 0.9
        x_end = A["spine"]["x"] + side * (A["spine"]["vb_rx"] + 12)
        ur_x = lambda z: hil[0] + (x_end - hil[0]) * np.clip((hil[2] - z) / 70, 0, 1)  # noqa: E731
        cv.fill(_column(g, A["z_range"][0], hil[2], ur_x, hil[1] + 4, 2.8, 2.8), "urine", 0, over="fat")
        # Adrenal: two thin limbs (an inverted V) over the upper pole, in the perirenal fat.
        apex = c + kd["frame"][2] * rw * 0.8 + (-side * 14, 10, 0)
        for dx, dy, ang in ((0, -8, side * 0.6), (side * 7, -5, -side * 0.5)):
            cv.fill(_column(g, apex[2] - 5, apex[2] + 28, apex[0] + dx, apex[1] + dy, 2.6, 10, angle=ang),
                    "muscle", over="fat")


def _pushed(px, py, pz, masses):
    """Where the tissue now at offsets (px, py, pz) was before expansile masses grew.

    Each mass ``(centre, push)`` moves tissue radially outward, keeping its volume: what lies
    at distance D from the centre came from (D^3 - push^3)^(1/3). Shapes broadcast.
    """
    for centre, push in masses:
        cx, cy, cz = (np.float32(c) for c in centre)
        ex, ey, ez = px - cx, py - cy, pz - cz
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        scale = np.cbrt(np.maximum(dist ** 3 - np.float32(push) ** 3, 0)) / np.maximum(dist, np.float32(1e-3))
        px, py, pz = ex * scale + cx, ey * scale + cy, ez * scale + cz
    return px, py, pz


def _paint_islands(cv: _Canvas, sl, where, offsets, waves, fraction: float, tissue: str) -> None:
    """Paint ``tissue`` on about ``fraction`` of ``where``: where a smooth random field (a sum
    of plane waves ``(k, phase)``) exceeds its quantile, so the islands are blobs, not speckle."""
    if not where.any():
        return
    px, py, pz = offsets
    field = sum(np.cos(px * k[0] + py * k[1] + pz * k[2] + ph) for k, ph in waves)
    field = np.broadcast_to(field, where.shape)
    cv.paint(sl, where & (field > np.quantile(field[where], 1 - fraction)), tissue, _TUMOUR)


def _lesions(cv: _Canvas, lesions: list[dict]) -> None:
    """KiTS masses: lobulated renal cell carcinomas and simple cysts.

    A tumour is its subtype's solid tissue with, where drawn, irregular central necrosis,
    islands of cystic change and punctate calcifications; where it leaves the kidney it is
    bordered by fat. Cysts are water density. Both replace what was painted before except
    bone, the spinal canal and the great vessels.
    """
    g = cv.g
    kidneys = (_ID["kidney_left"], _ID["kidney_right"])
    for les in lesions:
        c, r = les["centre"], les["radius"]
        sl = g.box(c - 1.6 * r, c + 1.6 * r)
        if sl is None:
            continue
        px, py, pz = g.offsets(sl, c)
        q = np.full(np.broadcast_shapes(px.shape, pz.shape), np.inf, np.float32)
        for off, rad in les["lobes"]:
            q = np.minimum(q, np.sqrt(((px - off[0]) / rad[0]) ** 2 + ((py - off[1]) / rad[1]) ** 2
                                      + ((pz - off[2]) / rad[2]) ** 2))
        q *= 1 + sum(amp * np.sin((px * k[0] + py * k[1] + pz * k[2]) / r + ph) for amp, k, ph in les["waves"])
        hard = np.isin(cv.tissue[sl], [_T[t] for t in ("bone", "marrow", "disc", "csf")])
        hard |= np.isin(cv.owner[sl], [_ID["aorta"], _ID["inferior_vena_cava"]])
        inside = (q < 1) & cv.inside_cavity(sl, 2) & ~hard
        if les["kind"] == "cyst":
            cv.paint(sl, inside, "cyst", _CYST)
            continue
        cv.paint(sl, (q < 1.12) & ~inside & ~np.isin(cv.owner[sl], kidneys), "fat", 0)
        cv.paint(sl, inside, RCC_SUBTYPES[les["subtype"]], _TUMOUR)
        if les["avid"] > 0:  # clear cell: patches of hypervascular tumour between less avid parts
            _paint_islands(cv, sl, inside, (px, py, pz), les["patches"], les["avid"], "rcc_clear_avid")
        if les["necrosis"] > 0:
            irregular = 1 + 3 * sum(amp * np.cos(1.7 * (px * k[1] - py * k[2] + pz * k[0]) / r + ph)
                                    for amp, k, ph in les["waves"])
            cv.paint(sl, inside & (q * irregular < les["necrosis"]), "necrosis", _TUMOUR)
        if les["fluid"] > 0:  # cystic change, away from the surface
            _paint_islands(cv, sl, inside & (q < 0.85), (px, py, pz), les["islands"], les["fluid"], "tumour_fluid")
        for off, rad in les["calcs"]:
            dot = np.sqrt((px - off[0]) ** 2 + (py - off[1]) ** 2 + (pz - off[2]) ** 2) < rad
            cv.paint(sl, inside & (q < 0.9) & dot, "calcium", _TUMOUR)


def _vessels(cv: _Canvas, A: dict) -> None:
    """Aorta (calcified plaques with age), IVC, renal vessels, SMA/SMV, portal vein."""
    g, sp, ao, ivc, sma = cv.g, A["spine"], A["aorta"], A["ivc"], A["sma"]
    zlo, zhi = A["z_range"]
    ao_y = lambda z: sp["vb_y"] - sp["lordosis"] * z + ao["dy"]  # noqa: E731
    sma_y = lambda z: ao_y(z) + ao["r"] + 4 + np.clip(0.45 * (sma["z0"] - z), 0, 30)  # noqa: E731
    cv.fill(_column(g, zlo, sma["z0"], ao["x"] + 2, sma_y, sma["r"] + 5, sma["r"] + 5), "fat")  # fat collar
    cv.fill(_column(g, zlo, sma["z0"], ao["x"] + 2, sma_y, sma["r"], sma["r"]), "artery")
    cv.fill(_column(g, zlo, sma["z0"] + 10, ao["x"] + 14, sma_y, sma["smv_r"], 0.9 * sma["smv_r"]), "vein")
    for p0, p1, r in A["mesenteric"]:  # jejunal/ileal branches, visible only in the mesenteric fat
        cv.fill(_tube(g, p0, p1, r), "vein", over="fat", cavity=3)
    conf = np.array([ao["x"] + 16, ao_y(sma["z0"]) + ao["r"] + 14, sma["z0"] + 8])
    cv.fill(_tube(g, conf, A["liver"]["porta"], 7.0), "vein", None)  # portal vein
    prim = _column(g, zlo, zhi, ao["x"], ao_y, ao["r"], ao["r"])
    if cv.fill(prim, "artery", _ID["aorta"]) is not None:
        sl, q = prim
        px, py, pz = g.offsets(sl, (ao["x"], 0, 0))
        ang = np.arctan2(py - ao_y(pz), px)
        for angle, zc in ao["calc"]:
            near = np.abs(np.angle(np.exp(1j * (ang - angle)))) < 0.35
            cv.paint(sl, (q > 0.78) & (q < 1.02) & near & (np.abs(pz - zc) < 4), "calcium", None)
    ivc_y = lambda z: sp["vb_y"] - sp["lordosis"] * z + ivc["dy"] + np.clip(0.5 * (z - sma["z0"] - 10), 0, 35)  # noqa: E731
    ivc_x = lambda z: ivc["x"] + np.clip(0.2 * (z - sma["z0"] - 10), 0, 12)  # noqa: E731
    cv.fill(_column(g, zlo, zhi, ivc_x, ivc_y, ivc["rx"], ivc["ry"]), "ivc", _ID["inferior_vena_cava"])
    for side, kd in A["kidney"].items():  # the left renal vein crosses in front of the aorta
        hil = kd["centre"] + kd["frame"][0] * kd["radii"][0] * 0.8
        z = hil[2]
        ivc_pt = np.array([ivc_x(z), ivc_y(z), z + 4])
        path = [hil, ivc_pt] if side > 0 else [hil, np.array([ao["x"], ao_y(z) + ao["r"] + 4.5, z + 4]), ivc_pt]
        for p0, p1 in zip(path[:-1], path[1:]):
            cv.fill(_tube(g, p0, p1, 5.5, 5.0), "vein")
        art0 = np.array([ao["x"] + side * ao["r"] * 0.8, ao_y(z + 8), z + 8])
        cv.fill(_tube(g, art0, hil + (0, -8, 0), 3.0, 2.5), "artery")


def _muscles_and_spine(cv: _Canvas, A: dict) -> None:
    """Psoas, quadratus lumborum, erector spinae; vertebrae by level, discs, canal."""
    g, sp, ps = cv.g, A["spine"], A["psoas"]
    zlo, zhi = A["z_range"]
    vb_y = lambda z: sp["vb_y"] - sp["lordosis"] * z  # noqa: E731
    canal_y = lambda z: sp["canal_y"] - sp["lordosis"] * z  # noqa: E731
    xs, er = sp["x"], sp["erector"] / 2
    r_ps = lambda z: np.clip(5 + (ps["z0"] - z) * ps["r"] / 140, 4, ps["r"])  # noqa: E731  grows caudally
    for side, name in ((1, "right"), (-1, "left")):
        cv.fill(_column(g, zlo, ps["z0"], lambda z: xs + side * (sp["vb_rx"] + 0.8 * r_ps(z)),
                        lambda z: vb_y(z) + 2 + 0.08 * (ps["z0"] - z), r_ps, lambda z: 1.1 * r_ps(z)),
                "muscle", _ID[f"iliopsoas_{name}"])
        cv.fill(_column(g, zlo, ps["z0"] + 10, xs + side * (sp["vb_rx"] + 42), lambda z: canal_y(z) + 12,
                        17, 8, angle=-side * 0.35), "muscle")  # quadratus lumborum, off the transverse processes
        # Diaphragmatic crus: a band beside the aorta, arching in front of it higher up.
        cr_y = lambda z: np.minimum(vb_y(z) + sp["vb_ry"] + 2 + 0.3 * (z - sp["disc0"]), vb_y(z) + sp["vb_ry"] + 18)  # noqa: E731
        cv.fill(_column(g, sp["disc0"] - (25 if side > 0 else 10), zhi, A["aorta"]["x"] + side * (A["aorta"]["r"] + 5),
                        cr_y, 4.0, 11, angle=side * 0.35), "muscle", over="fat")
        cv.fill(_column(g, zlo, zhi, xs + side * (1.1 * er + 4), lambda z: canal_y(z) - 4 - 0.85 * er,
                        1.15 * er, 0.85 * er, power=2.6), "muscle", _ID[f"autochthon_{name}"])
    canal = _column(g, zlo, zhi, xs, canal_y, 11, 8)
    cv.fill(canal, "fat")  # epidural fat around the thecal sac
    cv.fill(canal, "csf", below=0.72)
    step = sp["level_h"]
    half = (step - sp["disc_h"]) / 2
    for k, level in enumerate(VERTEBRAE):
        zc = sp["disc0"] + (2.5 - k) * step  # L1 just above the L1/L2 disc at disc0
        yc, cy, owner = vb_y(zc), canal_y(zc), _ID[f"vertebrae_{level}"]
        sl, q = _column(g, zc - half, zc + half, xs, yc, sp["vb_rx"], sp["vb_ry"], power=2.4)
        if sl is not None:  # body: kidney-shaped section, cortical shell, cancellous core
            px, py, pz = g.offsets(sl, (xs, yc, zc))
            q = np.where(np.sqrt((px / 10) ** 2 + ((py + sp["vb_ry"] + 2) / 5) ** 2) < 1, np.inf, q)
            cv.fill((sl, q), "bone", owner)
            cv.fill((sl, np.where(np.abs(pz) < half - 1.5, q, np.inf)), "marrow", owner, below=1 - 2.2 / sp["vb_ry"])
        cv.fill(_column(g, zc - half - sp["disc_h"], zc - half, xs, yc, sp["vb_rx"] + 1, sp["vb_ry"] + 1,
                        power=2.4), "disc")
        sl, q = _column(g, zc - half + 1, zc + half - 4, xs, cy, 15.5, 12.5)
        if sl is not None:  # laminae: a thin arch behind the canal
            px, py, _ = g.offsets(sl, (xs, cy, zc))
            hole = (np.sqrt((px / 11.5) ** 2 + (py / 8.5) ** 2) < 1) | (py > 2)
            cv.fill((sl, np.where(hole, np.inf, q)), "bone", owner)
        back = yc - sp["vb_ry"]
        parts = [_tube(g, (xs + s * 10, back + 3, zc + 3), (xs + s * 12, cy, zc + 3), 4.5) for s in (1, -1)]
        parts.append(_tube(g, (xs, cy - 10, zc - 2), (xs, cy - 36, zc - 14), 4.0, 3.5))  # spinous process
        if level.startswith("L"):  # transverse processes
            parts += [_tube(g, (xs + s * 12, cy + 3, zc + 2), (xs + s * 44, cy + 8, zc + 2), 4.5, 3.5)
                      for s in (1, -1)]
        else:
            parts += [_tube(g, (xs + s * 12, cy, zc + 4), (xs + s * 30, cy - 6, zc + 6), 5.0) for s in (1, -1)]
        for prim in parts:
            cv.fill(prim, "bone", owner)
            cv.fill(prim, "marrow", owner, below=0.5)


# Where along its arc (0 at the spine, 1 at its anterior end) a rib with a costal cartilage is
# lowest, and how far its cartilage then rises, as a share of the rib's drop.
_RIB_LOWEST, _MARGIN_RISE = 0.7, 0.8


def _ribs_and_lungs(cv: _Canvas, A: dict) -> None:
    """Posterior lung bases (with diaphragm) above ``lung_z``; lower ribs in the wall."""
    g, geo = cv.g, cv.geo
    theta, depth, inner = geo["theta"], geo["depth"], geo["cavity"]
    zhi = A["z_range"][1]
    if zhi > A["lung_z"]:  # a crescent inside the posterior wall, thicker towards the top
        k0 = int(np.searchsorted(g.z, A["lung_z"]))
        grow = np.clip((g.z[k0:] - A["lung_z"]) * 0.6, 0, 45)
        post = np.clip(-np.sin(theta), 0, 1) ** 1.5 * (np.abs(g.xp) > A["spine"]["vb_rx"] + 30)
        sl = (slice(0, g.shape[0]), slice(0, g.shape[1]), slice(k0, g.shape[2]))
        lung = (inner[:, :, None] > 2) & (inner[:, :, None] < post[:, :, None] * grow)
        cv.paint(sl, lung, "muscle", 0)  # diaphragm
        cv.paint(sl, lung & (inner[:, :, None] > 5), "lung", 0)
    # Ribs slope down from the spine, so a slice cuts each rib along the arc at its height. A
    # rib with a costal cartilage (7-10) is lowest near the anterior axillary line; from there
    # its cartilage rises steeply towards the sternum, forming the costal margin. So no rib
    # crosses the anterior abdomen below the margin: at the kidneys a slice shows posterior and
    # lateral arcs (ribs 10-12) and at most an anterolateral cut through a cartilage.
    mid = geo["fat"] + 0.45 * (geo["wall"] - geo["fat"])
    for rib in A["ribs"]:
        ang = theta if rib["side"] > 0 else np.pi - theta  # mirror the left side
        t = np.mod(ang - rib["start"], 2 * np.pi) / rib["span"]
        cols = np.nonzero((np.abs(depth - mid) < 3.2) & (t <= 1))
        if cols[0].size == 0:
            continue
        tc = t[cols]
        if rib["cartilage"]:
            lowest = np.clip(tc / _RIB_LOWEST, 0, 1) ** 1.5
            rise = np.clip((tc - _RIB_LOWEST) / (1 - _RIB_LOWEST), 0, 1) ** 1.3
            below = rib["drop"] * (lowest - _MARGIN_RISE * rise)
        else:
            below = rib["drop"] * tc ** 1.5
        # Elliptic cross-section, 11 mm high and 6.4 mm thick.
        dz = g.z[None, :] - (rib["z0"] - below)[:, None]
        dr = (depth - mid)[cols][:, None]
        q = (dz / 5.5) ** 2 + (dr / 3.2) ** 2
        block = cv.tissue[cols[0], cols[1], :]
        front = (tc > _RIB_LOWEST)[:, None] & rib["cartilage"]  # costal cartilage from the lowest point on
        block[(q < 1) & ~front] = _T["bone"]
        block[(q < 1) & front] = _T["cartilage"]
        block[((dz / 3.6) ** 2 + (dr / 1.8) ** 2 < 1) & ~front] = _T["marrow"]
        cv.tissue[cols[0], cols[1], :] = block
        owners = cv.owner[cols[0], cols[1], :]
        owners[q < 1] = 0
        cv.owner[cols[0], cols[1], :] = owners


def _kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy's discrete 1D Gaussian kernel (same radius rule as ``gaussian_filter``)."""
    radius = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def _upsample2(c: np.ndarray, shape) -> np.ndarray:
    """Linear interpolation onto a grid twice as fine (fine i <-> coarse i / 2), cropped to ``shape``."""
    for axis, n in enumerate(shape):
        m = c.shape[axis]
        out = np.empty(c.shape[:axis] + (2 * m - 1,) + c.shape[axis + 1:], np.float32)
        even, odd = [slice(None)] * c.ndim, [slice(None)] * c.ndim
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        lo, hi = [slice(None)] * c.ndim, [slice(None)] * c.ndim
        lo[axis], hi[axis] = slice(0, m - 1), slice(1, m)
        out[tuple(even)] = c
        out[tuple(odd)] = 0.5 * (c[tuple(lo)] + c[tuple(hi)])
        keep = [slice(None)] * c.ndim
        keep[axis] = slice(0, n)
        c = out[tuple(keep)]
    return c


def _blur_sigma(spacing) -> np.ndarray:
    """Partial-volume blur (voxels) at ``spacing`` (mm): 0.7 voxel up to 1.5 mm, ~1 mm beyond."""
    return 0.7 * np.minimum(1.0, 1.5 / np.asarray(spacing, float))


def _kernel_norm(sigmas) -> float:
    """L2 norm of the separable blur kernel: blurred white noise keeps this fraction of its std."""
    return float(np.prod([np.linalg.norm(_kernel(s, 2.0)) for s in sigmas]))


def noise_std(noise_hu: float, spacing_mm) -> float:
    """Std (HU) of the rendered noise at voxel ``spacing_mm`` (3 values, mm).

    ``noise_hu`` is the std at ``NOISE_REFERENCE_MM``. At a fixed dose the noise has a fixed
    power density, so the white noise behind a voxel has variance proportional to 1 / voxel
    volume (Hanson, Med Phys 1979;6:441); the partial-volume blur then keeps the share
    ``_kernel_norm`` of its std and correlates neighbours. The noise power at low spatial
    frequencies is then the same at every voxel size: a volume rendered at 1.25 mm and
    averaged down to 3 mm pixels shows about the noise of one rendered coarser
    (tests/test_phantom.py), while a coarse voxel alone, blurred less in voxel units, keeps
    more of its white share than 1 / sqrt(volume) alone would say.
    """
    ref, spacing = np.asarray(NOISE_REFERENCE_MM, float), np.asarray(spacing_mm, float)
    white = noise_hu / _kernel_norm(_blur_sigma(ref)) * np.sqrt(np.prod(ref) / np.prod(spacing))
    return float(white * _kernel_norm(_blur_sigma(spacing)))


def _to_hu(cv: _Canvas, A: dict, spacing, rng: np.random.Generator) -> np.ndarray:
    """Tissue classes -> HU, (X, Y, Z) float32 in Fortran order.

    HU = class value + amplitude x texture (smooth, unit variance, sigma ~2.5 mm; drawn
    on a grid twice as coarse and interpolated) + white noise, then one Gaussian blur
    (:func:`_blur_sigma`) that is both the partial-volume effect and what makes the noise
    spatially correlated, as CT noise is; the noise std after the blur is
    ``noise_std(A["noise_hu"], spacing)`` exactly. Works on (Z, Y, X) C-ordered views.
    """
    noise = noise_std(A["noise_hu"], spacing)
    spacing = np.asarray(spacing, float)[::-1]  # (z, y, x)
    tissue = cv.tissue.T
    shape = tissue.shape
    coarse = rng.standard_normal(tuple(n // 2 + 2 for n in shape), dtype=np.float32)
    s_tex = np.maximum(1.25 / spacing, 0.5)  # 2.5 mm on the fine grid
    coarse = ndimage.gaussian_filter(coarse, s_tex, truncate=2.5)
    coarse *= np.float32(1 / np.prod([np.linalg.norm(_kernel(s, 2.5)) for s in s_tex]))
    texture = _upsample2(coarse, shape)
    lut = np.array([A["hu"][n] for n in _TISSUES], np.float32)
    amp = np.array([A["texture_hu"][n] for n in _TISSUES], np.float32)
    hu = lut[tissue]
    hu += amp[tissue] * texture
    del texture
    s_blur = _blur_sigma(spacing)
    white = rng.random(shape, dtype=np.float32)
    white -= np.float32(0.5)
    white *= np.float32(np.sqrt(12.0) * noise / _kernel_norm(s_blur))  # uniform, std noise / |k|
    hu += white
    del white
    hu = ndimage.gaussian_filter(hu, s_blur, truncate=2.0, output=np.empty_like(hu))
    return hu.T


# ---------------------------------------------------------------------------- render


@dataclass
class PhantomVolume:
    """One rendered subject in memory, RAS+ array axes.

    ``hu``: (X, Y, Z) float32 HU; ``owner``: (X, Y, Z) uint8 structure ids
    (``STRUCTURES`` index + 1; 100 tumour, 101 cyst); ``affine``: 4x4 voxel -> world mm;
    ``params``: the drawn anatomy (and ``lesions`` for KiTS cases).
    """

    hu: np.ndarray
    owner: np.ndarray
    affine: np.ndarray
    params: dict

    def mask(self, name: str) -> np.ndarray:
        """Binary (X, Y, Z) uint8 mask of a structure named in ``STRUCTURES``."""
        return (self.owner == _ID[name]).view(np.uint8)


def _render(A: dict, spacing, rng_noise: np.random.Generator, lesions: list | None = None) -> PhantomVolume:
    spacing = tuple(float(s) for s in spacing)
    n = [int(round(A["fov"] / s)) for s in spacing[:2]]
    x, y = ((np.arange(k) - (k - 1) / 2) * s + o for k, s, o in zip(n, spacing, A["shift"]))
    z0, z1 = A["z_range"]
    z = z0 + np.arange(int(round((z1 - z0) / spacing[2])) + 1) * spacing[2]
    g = _Grid(x, y, z, A["yaw"])
    layer, geo = _body(g, A)
    cv = _Canvas(g, geo)
    cv.tissue[:] = layer[:, :, None]
    _bowel(cv, A)
    _organs(cv, A)
    _kidneys(cv, A, lesions or [])
    _vessels(cv, A)
    _muscles_and_spine(cv, A)
    if lesions:  # masses replace muscle and fat, not bone or the great vessels
        _lesions(cv, lesions)
    _ribs_and_lungs(cv, A)
    hu = _to_hu(cv, A, spacing, rng_noise)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (g.x[0], g.y[0], g.z[0])
    return PhantomVolume(hu, cv.owner, affine, A)


def _rngs(seed: int, track: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for the anatomy, the noise and the organ outlines of one subject.

    A seed sequence's children do not depend on how many are spawned, so the anatomy and
    noise streams are those of the generator before outlines had a stream of their own.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence([seed, track, index]).spawn(3))


def parse_phases(spec: str) -> dict[str, float]:
    """A phase mix, ``"arterial:0.8,nephrographic:0.2"`` or one phase name, as {phase: probability}.

    Weights are normalised to sum to 1; unknown phases, negative weights or an empty mix raise
    ``ValueError`` naming the spec.
    """
    mix: dict[str, float] = {}
    for part in str(spec).split(","):
        name, _, weight = part.strip().partition(":")
        if name not in PHASES:
            raise ValueError(f"phase mix {spec!r}: unknown phase {name!r}; choose from {list(PHASES)}")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"phase mix {spec!r}: weight {weight!r} of {name!r} is not a number") from None
        if value < 0 or name in mix:
            raise ValueError(f"phase mix {spec!r}: {name!r} needs one weight >= 0")
        mix[name] = value
    total = sum(mix.values())
    if not total > 0:
        raise ValueError(f"phase mix {spec!r}: weights sum to 0")
    return {name: value / total for name, value in mix.items()}


def draw_phase(seed: int, track: int, index: int, phases: str) -> str:
    """Contrast phase of subject ``index`` of ``track`` (0 TotalSegmentator, 1 KiTS23).

    One uniform number per subject from a stream of its own, mapped through the mix's
    cumulative weights (in ``PHASES`` order): the anatomy does not depend on the mix, and a
    subject changes phase only where the mix's boundaries move past its number.
    """
    mix = parse_phases(phases)
    u = np.random.default_rng([seed, 4, track, index]).random()
    cumulative = 0.0
    for name in PHASES:
        cumulative += mix.get(name, 0.0)
        if u < cumulative:
            return name
    return [name for name in PHASES if mix.get(name, 0.0) > 0][-1]  # u past a rounded total


def render_totalsegmentator_subject(seed: int, index: int, spacing_mm: float = 1.5,
                                    z_extent_mm: float | None = None,
                                    phases: str = TOTALSEGMENTATOR_PHASES) -> PhantomVolume:
    """Subject ``index`` of the TotalSegmentator-layout track, in memory.

    Full axial slices of 256-333 px at 1.5 mm (field of view 384-500 mm) and a z extent
    of 140-160 mm around the kidneys unless ``z_extent_mm`` is given (tests use less).
    ``phases``: the contrast-phase mix the subject's phase is drawn from (:func:`draw_phase`;
    one phase name fixes it); ``params["phase"]`` says which.
    """
    rng, rng_noise, rng_outline = _rngs(seed, 0, index)
    A = _draw_anatomy(rng, z_extent_mm, draw_phase(seed, 0, index, phases), rng_outline)
    return _render(A, (spacing_mm,) * 3, rng_noise)


def _kits_kind(seed: int, index: int) -> str:
    """Case kinds in blocks of ten (6 tumour, 1 cyst, 3 control), shuffled per block."""
    block = ["tumour"] * 6 + ["cyst"] + ["control"] * 3
    order = np.random.default_rng([seed, 2, index // 10]).permutation(10)
    return block[order[index % 10]]


def render_kits23_case(seed: int, index: int, inplane_mm: float | None = None,
                       slice_mm: float | None = None, z_extent_mm: float | None = None,
                       phases: str = KITS23_PHASES):
    """Case ``index`` of the KiTS23-layout track, in memory.

    Returns ``(imaging, segmentation, affine, info)``: imaging (S, H, W) float32 HU with
    axis 0 axial (index 0 most superior), rows anterior -> posterior, columns patient
    right -> left (so ``imaging[k]`` is already the radiological view); segmentation
    (S, H, W) uint8 in ``KITS_LABELS``; ``info`` has the case kind, contrast phase, noise
    and lesion kinds, subtypes and sizes. Spacing: 0.7-0.98 mm in-plane (at most 512 px, as
    KiTS) and 2.5 or 3 mm slices unless given; the noise scales with the voxel (:func:`noise_std`).
    """
    rng, rng_noise, rng_outline = _rngs(seed, 1, index)
    A = _draw_anatomy(rng, z_extent_mm, draw_phase(seed, 1, index, phases), rng_outline)
    kind = _kits_kind(seed, index)
    lesions = _draw_lesions(rng, A, kind)
    inplane = max(_u(rng, 0.7, 0.9), A["fov"] / 512) if inplane_mm is None else inplane_mm  # <= 512 px
    thick = float(rng.choice([2.5, 3.0])) if slice_mm is None else slice_mm
    vol = _render(A, (inplane, inplane, thick), rng_noise, lesions)
    seg = np.zeros(vol.owner.shape, np.uint8, order="F")
    seg[(vol.owner == _ID["kidney_left"]) | (vol.owner == _ID["kidney_right"])] = 1
    seg[vol.owner == _TUMOUR] = 2
    seg[vol.owner == _CYST] = 3
    # RAS (X, Y, Z) -> KiTS (Z, Y, X) with every axis reversed: world = corner - index * spacing.
    imaging = np.asfortranarray(vol.hu[::-1, ::-1, ::-1].transpose(2, 1, 0))
    seg = np.asfortranarray(seg[::-1, ::-1, ::-1].transpose(2, 1, 0))
    corner = vol.affine[:3, :3] @ (np.array(vol.hu.shape) - 1) + vol.affine[:3, 3]
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = -inplane, -inplane, -thick
    affine[:3, 3], affine[3, 3] = corner, 1.0
    info = {"kind": kind, "phase": A["phase"],
            "noise_hu": round(noise_std(A["noise_hu"], (inplane, inplane, thick)), 2),
            "lesions": [{"kind": les["kind"], "subtype": les["subtype"], "diameter_mm": round(2 * les["radius"], 1)}
                        for les in lesions]}
    return np.rint(imaging).astype(np.float32, order="F"), seg, affine, info


# ---------------------------------------------------------------------------- writing


_CHUNK = 1 << 16


def _zero_block() -> bytes:
    """A deflate block for one all-zero chunk; valid anywhere in a stream after a full flush."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return comp.compress(bytes(_CHUNK)) + comp.flush(zlib.Z_FULL_FLUSH)


_ZERO_BLOCK = _zero_block()


def _write_gzip(fh, head: bytes, data: np.ndarray) -> None:
    """One gzip member (RFC 1952, mtime 0 so the bytes are reproducible) of ``head + data``.

    Masks are mostly zeros: every all-zero 64 KiB chunk reuses one precomputed deflate
    block instead of being compressed again, which makes a mask ~10x cheaper to write.
    Run-length strategy at level 1: CT noise does not compress much better with more.
    """
    data = memoryview(data.reshape(-1).view(np.uint8))
    fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
    comp = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    fh.write(comp.compress(head))
    n_full = len(data) // _CHUNK
    blocks = np.frombuffer(data[: n_full * _CHUNK], np.uint8).reshape(n_full, _CHUNK)
    zero = ~blocks.any(axis=1) if n_full else np.zeros(0, bool)
    pending = True
    for i in range(n_full + 1):
        chunk = data[i * _CHUNK:(i + 1) * _CHUNK]
        if i < n_full and zero[i]:
            if pending:
                fh.write(comp.flush(zlib.Z_FULL_FLUSH))
                pending = False
            fh.write(_ZERO_BLOCK)
        elif len(chunk):
            fh.write(comp.compress(chunk))
            pending = True
    fh.write(comp.flush())
    crc = zlib.crc32(data, zlib.crc32(head))
    fh.write(struct.pack("<II", crc, (len(head) + len(data)) & 0xFFFFFFFF))


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a .nii.gz atomically, deflating the array's own (Fortran-ordered) memory.

    ``nib.save`` copies and chunks the data first; this writes the same file format
    (nibabel builds the 348-byte header, data at offset 352) several times faster.
    """
    data = np.asfortranarray(data)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr["vox_offset"] = 352
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        _write_gzip(fh, hdr.binaryblock + b"\0" * 4, data.T)  # .T of Fortran order: C-contiguous


def _stamp(**params) -> dict:
    return {"generator_version": GENERATOR_VERSION, **params}


def _fresh(folder: Path, files: list[str], stamp: dict) -> bool:
    """A subject folder is reused when all its files exist and its stamp matches."""
    marker = folder / ".phantom.json"
    if not marker.exists() or not all((folder / f).exists() for f in files):
        return False
    try:
        found = read_json(marker)
    except ValueError:
        return False
    return all(found.get(k) == v for k, v in stamp.items())


_SUBJECT = {"totalsegmentator": re.compile(r"^s(\d{4})$"), "kits23": re.compile(r"^case_(\d{5})$")}
_LISTING = {"totalsegmentator": "meta.csv", "kits23": "kits23.json"}
_ATOMIC_LEFTOVER = re.compile(r"^\.[^/]+\.[a-z0-9_]{8}\.tmp[.a-z]*$")  # an atomic_path temporary


def _check_ours(out: Path, layout: str, count: int, files: list[str], settings: dict) -> None:
    """Refuse to write into ``out`` unless it is empty or holds only what this generator wrote
    there with the same ``settings`` (layout, seed, rendering), up to ``count`` subjects.

    A subject folder is ours when its ``.phantom.json`` says so and it holds nothing but the
    generator's files (a re-rendered one is replaced whole). Another generator version is
    ours too (its subjects are re-rendered); other settings or more subjects are refused.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose a new or empty folder")
    refuse = f"refusing to write the phantom into {out}"
    advice = "choose a new or empty folder"
    entries = sorted(out.iterdir())
    subjects = [e for e in entries if _SUBJECT[layout].match(e.name) and e.is_dir() and not e.is_symlink()]
    temporary = re.compile(rf"^\.{_SUBJECT[layout].pattern[1:-1]}\.(building|old)-")
    for entry in entries:
        if entry.name == _LISTING[layout] and subjects and entry.is_file():
            continue
        if temporary.match(entry.name) and entry.is_dir():
            continue  # a subject's temporary folder (removed once its writer is gone)
        if _ATOMIC_LEFTOVER.match(entry.name) and entry.is_file():
            continue  # the listing being rewritten by another process using the same folder
        if entry not in subjects:
            raise ValueError(f"{refuse}: {entry} was not written by `coin phantom` ({layout} layout); {advice}")
        try:
            marker = read_json(entry / ".phantom.json")
        except (FileNotFoundError, ValueError):
            marker = None
        if not isinstance(marker, dict) or marker.get("layout") != layout:
            raise ValueError(f"{refuse}: {entry} has no .phantom.json of the {layout} phantom, so it was not "
                             f"written by `coin phantom`; {advice}")
        changed = [f"{k}: {marker.get(k)!r} (asked: {v!r})" for k, v in settings.items() if marker.get(k) != v]
        if changed:
            raise ValueError(f"{refuse}: {entry} was written with other settings ({'; '.join(changed)}); "
                             f"{advice}, or ask for the same settings")
        index = int(_SUBJECT[layout].match(entry.name)[1])
        if index >= count:
            raise ValueError(f"{refuse}: it holds {entry.name}, more subjects than the {count} asked for "
                             f"(its listing would leave it out); ask for at least {index + 1}, or {advice}")
        allowed = {".phantom.json", *files, *{str(Path(f).parent) for f in files if "/" in f}}
        for path in sorted(entry.rglob("*")):
            relative = path.relative_to(entry).as_posix()
            if relative not in allowed and not _ATOMIC_LEFTOVER.match(path.name):
                raise ValueError(f"{refuse}: {path} was not written by `coin phantom`, and {entry} "
                                 f"would be replaced whole if stale; move it away, or {advice}")


@contextlib.contextmanager
def _subject_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder to write one subject into; on success it replaces ``folder`` whole,
    so a killed run leaves either the old subject or the new one (and a temporary folder the
    next run removes), never a mix."""
    remove_stale_temporaries(folder)
    tmp = temporary_folder(folder)
    try:
        yield tmp
        old = None
        if folder.exists():
            old = temporary_folder(folder, "old")
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(seed: int, index: int) -> str:
    """80/10/10 in blocks of ten subjects, shuffled per block (stable as N grows)."""
    block = ["train"] * 8 + ["val", "test"]
    return block[np.random.default_rng([seed, 3, index // 10]).permutation(10)[index % 10]]


def generate_totalsegmentator(out_dir: str | os.PathLike, subjects: int, seed: int,
                              spacing_mm: float = 1.5, z_extent_mm: float | None = None,
                              phases: str = TOTALSEGMENTATOR_PHASES) -> Path:
    """Write ``subjects`` phantom CTs in the TotalSegmentator layout; returns ``out_dir``.

    ``sXXXX/ct.nii.gz``: int16 HU, (X, Y, Z), RAS+ affine with ``spacing_mm`` voxels.
    ``sXXXX/segmentations/<name>.nii.gz``: uint8 {0, 1}, same shape and affine, one per
    name in ``STRUCTURES``. ``meta.csv``: ``image_id;age;gender;split``, split 80/10/10
    (as the dataset). ``phases``: the contrast-phase mix drawn per subject (:func:`parse_phases`);
    each subject's phase is in its ``.phantom.json``. Idempotent: a subject whose files exist
    with a matching stamp is kept; one of an older generator version is re-rendered. Writes only
    into an empty ``out`` or one this generator wrote with the same seed and spacing
    (:func:`_check_ours`); each subject is built in a temporary folder and swapped in whole.
    """
    parse_phases(phases)  # a bad mix fails before anything is written
    out = Path(out_dir)
    files = ["ct.nii.gz"] + [f"segmentations/{n}.nii.gz" for n in STRUCTURES]
    _check_ours(out, "totalsegmentator", subjects, files,
                {"seed": seed, "spacing_mm": spacing_mm, "z_extent_mm": z_extent_mm})
    rows = []
    for i in tqdm(range(subjects), desc="phantom (TotalSegmentator layout)", leave=False):
        sid = f"s{i:04d}"
        folder = out / sid
        stamp = _stamp(layout="totalsegmentator", seed=seed, index=i, spacing_mm=spacing_mm,
                       z_extent_mm=z_extent_mm, phases=phases)
        if _fresh(folder, files, stamp):
            meta = read_json(folder / ".phantom.json")
        else:
            vol = render_totalsegmentator_subject(seed, i, spacing_mm, z_extent_mm, phases)
            with _subject_folder(folder) as tmp:
                for name in STRUCTURES:
                    _save_nifti(tmp / "segmentations" / f"{name}.nii.gz", vol.mask(name), vol.affine)
                ct = np.clip(np.rint(vol.hu), -1024, 3071).astype(np.int16, order="F")
                _save_nifti(tmp / "ct.nii.gz", ct, vol.affine)
                meta = {**stamp, "age": vol.params["age"], "gender": vol.params["gender"],
                        "phase": vol.params["phase"]}
                write_json(tmp / ".phantom.json", meta)
        rows.append({"image_id": sid, "age": meta["age"], "gender": meta["gender"], "split": _split(seed, i)})
    write_csv(out / "meta.csv", rows, ["image_id", "age", "gender", "split"], delimiter=";")
    return out


def generate_kits23(out_dir: str | os.PathLike, cases: int, seed: int, phases: str = KITS23_PHASES,
                    **render_kwargs) -> Path:
    """Write ``cases`` phantom CTs in the KiTS23 layout; returns ``out_dir``.

    ``case_XXXXX/imaging.nii.gz``: float32 HU, (S, H, W) with axis 0 axial;
    ``case_XXXXX/segmentation.nii.gz``: uint8, 0 background, 1 kidney, 2 tumour, 3 cyst.
    Affine: axis 0 -> inferior, axis 1 -> posterior, axis 2 -> patient left (as in the
    KiTS files, so ``nib.as_closest_canonical`` gives RAS). ``kits23.json`` lists each
    case's kind, contrast phase and lesions. ``phases``: the contrast-phase mix drawn per case;
    ``render_kwargs`` go to :func:`render_kits23_case` (tests: smaller grids).
    Idempotent, and as careful with ``out``, like :func:`generate_totalsegmentator`.
    """
    parse_phases(phases)  # a bad mix fails before anything is written
    out = Path(out_dir)
    files = ["imaging.nii.gz", "segmentation.nii.gz"]
    _check_ours(out, "kits23", cases, files, {"seed": seed, **render_kwargs})
    listing = []
    for i in tqdm(range(cases), desc="phantom (KiTS23 layout)", leave=False):
        cid = f"case_{i:05d}"
        folder = out / cid
        stamp = _stamp(layout="kits23", seed=seed, index=i, phases=phases, **render_kwargs)
        if _fresh(folder, files, stamp):
            meta = read_json(folder / ".phantom.json")
        else:
            imaging, seg, affine, info = render_kits23_case(seed, i, phases=phases, **render_kwargs)
            with _subject_folder(folder) as tmp:
                _save_nifti(tmp / "segmentation.nii.gz", seg, affine)
                _save_nifti(tmp / "imaging.nii.gz", imaging, affine)
                meta = {**stamp, **info}
                write_json(tmp / ".phantom.json", meta)
        listing.append({"case_id": cid, "kind": meta["kind"], "phase": meta["phase"], "lesions": meta["lesions"]})
    write_json(out / "kits23.json", listing)
    return out


# --------------------------------------------------------------------------- analysis


def kits23_lesion_notes(root: str | os.PathLike) -> dict[str, str]:
    """``{case: "papillary 79 mm, cyst 34 mm"}``: each phantom case's masses as drawn (its
    ``.phantom.json``), for tables that break a result down by case. Cases without the
    phantom's record (real KiTS23 scans) are left out; "" marks a control."""
    notes = {}
    for marker in sorted(Path(root).glob("case_*/.phantom.json")):
        lesions = read_json(marker).get("lesions", [])
        notes[marker.parent.name] = ", ".join(
            f"{'cyst' if les['kind'] == 'cyst' else les['subtype']} {les['diameter_mm']:.0f} mm" for les in lesions)
    return notes


def axial_view(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS (X, Y, Z) array in radiological view.

    Returns (Y, X): row 0 anterior, column 0 the patient's right.
    """
    return volume[:, :, k].T[::-1, ::-1]


def organ_hu_stats(subject_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """HU statistics per labelled structure of one subject folder (either layout).

    Returns ``{name: {"voxels", "mean", "std", "p5", "median", "p95"}}`` for every
    non-empty mask (TotalSegmentator) or label (KiTS: kidney, tumour, cyst).
    """
    folder = Path(subject_dir)
    if (folder / "imaging.nii.gz").exists():
        hu = np.asanyarray(nib.load(folder / "imaging.nii.gz").dataobj)
        seg = np.asanyarray(nib.load(folder / "segmentation.nii.gz").dataobj)
        masks = {name: seg == lab for name, lab in KITS_LABELS.items() if lab}
    else:
        hu = np.asanyarray(nib.load(folder / "ct.nii.gz").dataobj)
        masks = {p.name[:-7]: np.asanyarray(nib.load(p).dataobj) > 0
                 for p in sorted((folder / "segmentations").glob("*.nii.gz"))}
    stats = {name: hu_stats(hu, m) for name, m in masks.items()}
    return {name: value for name, value in stats.items() if value is not None}
