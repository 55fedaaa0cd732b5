"""Synthetic Gaussian-blob anomalies inside the kidneys (paper App. 7.2; FACTS "Synthetic anomaly").

The generator is split the torchio way: :func:`draw_anomaly` draws *every* random number
(which kidney component, centre, scale, rotation, grid distortion) from an explicit
``np.random.Generator`` into an :class:`AnomalyParams`; :func:`render_anomaly` and
:func:`apply_anomaly` are deterministic functions of those parameters. A draw can be saved
as JSON (``to_dict``) and replayed (``from_dict``) bit for bit.

The anomaly, step by step (sizes for a 256 px slice; ``image_size`` scales them):

1. Template: the isotropic Gaussian ``T(u, v) = exp(-(u^2 + v^2) / (2 sigma^2))``, sigma 0.4,
   on a ``template_size`` x ``template_size`` grid spanning [-1, 1]^2 (zero outside that
   square); its mask is ``T > 0.25``, a disc of about 13 px diameter at 256 px (12.7 px:
   the grid spacing is 2 / 19 template units per pixel). At image size ``S`` the grid has
   ``n = round(template_size * S / reference_size)`` (>= 3) points
   (:func:`template_pixels`, used for eligibility); the rendered blob is scaled by exactly
   ``S / reference_size`` (:func:`template_half_width`) so it covers the same anatomy at
   every resolution.
2. Grid distortion (as albumentations ``GridDistortion``, normalised): each axis of the
   template square is cut into ``distort_steps + 1`` equal cells; cell ``i`` is resampled
   from a source interval whose width is proportional to ``1 + U(-limit, limit)``, the
   widths renormalised to span [-1, 1] again. The map is piecewise linear per axis, so the
   blob becomes lopsided (egg-shaped) while its outer square stays put.
3. Scale ``s ~ U(scale_range)``, rotation ``theta ~ U(rotation_range)`` degrees about the
   template centre, and a translation of the template centre to the drawn centre pixel.

Rendering inverts this chain for every pixel near the centre and evaluates the Gaussian
at the resulting template coordinates: an exact remap of the continuous blob, with no
interpolation of a coarse grid. Template and mask are transformed together by
construction: the mask is the *transformed* template ``> mask_threshold``. The image also
changes in the blob's faint tail (``0 < T <= 0.25``, at most ``alpha / 4`` on the [0, 1]
scale), as in the authors' implementation; pixels where ``T == 0`` are untouched.

Placement: the centre is a kidney pixel of one of the (at most two) largest connected
kidney components (8-connectivity; ``scipy.ndimage.label``, the same components as
``skimage.measure.label`` but faster), drawn uniformly among that component's pixels inside
its bounding box shrunk by ``bbox_margin`` of its height/width on each side; the component
is drawn uniformly among the *eligible* ones, those whose bounding box is larger than the
template grid (``> n`` px both ways) and whose shrunk box holds a pixel of the component.
This is the distribution of the implementation's "re-draw until the centre is in the
kidney" rejection loop, sampled directly, so it never loops. A slice with no eligible component cannot host an anomaly:
:func:`draw_anomaly` returns ``None`` and :func:`draw_slice_anomaly` reports it as
``"unplaceable"`` (label 0) so the dataset counts it instead of silently mislabelling.

Intensity (FACTS): ``x01 = (x + 1) / 2``; ``x01 = clip(x01 + alpha * T_placed, 0, 1)``;
back to [-1, 1]. The lesion mask (``mask_true``) is the placed template mask.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from .config import AnomalyConfig

__all__ = [
    "AnomalyParams",
    "Site",
    "Status",
    "template_pixels",
    "template_half_width",
    "make_template",
    "find_sites",
    "can_host_anomaly",
    "draw_anomaly",
    "draw_slice_anomaly",
    "render_anomaly",
    "apply_anomaly",
]

Status = Literal["anomaly", "normal", "unplaceable"]

_EIGHT_CONNECTED = np.ones((3, 3), bool)  # connectivity of kidney components (as skimage's default)
_OUTSIDE = 1e3  # template coordinate given to points off the template square (exp(-...) == 0)


@dataclass(frozen=True)
class AnomalyParams:
    """Every random choice of one anomaly; with the config, it fixes the anomaly exactly.

    ``center_row``/``center_col``: pixel of the template centre (a kidney pixel);
    ``component``: rank of the host kidney component by area (0 largest, 1 second);
    ``scale``: template scale; ``rotation_deg``: rotation about the centre in degrees;
    ``distort_x``/``distort_y``: grid-distortion cell factors ``1 + U(-limit, limit)``, one
    per cell (``distort_steps + 1`` cells per axis).
    """

    center_row: int
    center_col: int
    component: int
    scale: float
    rotation_deg: float
    distort_x: tuple[float, ...]
    distort_y: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); ``from_dict`` inverts it exactly."""
        values = asdict(self)
        values["distort_x"] = list(self.distort_x)
        values["distort_y"] = list(self.distort_y)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AnomalyParams:
        """Rebuild from :meth:`to_dict` output; unknown or missing keys raise ``KeyError``."""
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            raise KeyError(
                f"AnomalyParams keys differ: unknown {sorted(set(values) - names)}, "
                f"missing {sorted(names - set(values))}"
            )
        return cls(
            center_row=int(values["center_row"]),
            center_col=int(values["center_col"]),
            component=int(values["component"]),
            scale=float(values["scale"]),
            rotation_deg=float(values["rotation_deg"]),
            distort_x=tuple(float(v) for v in values["distort_x"]),
            distort_y=tuple(float(v) for v in values["distort_y"]),
        )


@dataclass(frozen=True)
class Site:
    """Where an anomaly may be centred in one eligible kidney component (compact, cacheable).

    The candidates are the component's pixels inside its shrunk bounding box, stored as
    (K,) flat offsets (K >= 1; uint16 when the box has <= 65536 pixels, about 2 bytes per
    kidney pixel) into the box whose top-left pixel is (``top``, ``left``) and whose width
    is ``width``. ``component``: rank of the component by area (0 largest).
    """

    component: int
    top: int
    left: int
    width: int
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.size)

    def pixel(self, k: int) -> tuple[int, int]:
        """(row, col) of candidate ``k``."""
        row, col = divmod(int(self.offsets[k]), self.width)
        return self.top + row, self.left + col

    @property
    def rows(self) -> np.ndarray:
        return self.top + self.offsets // self.width

    @property
    def cols(self) -> np.ndarray:
        return self.left + self.offsets % self.width


def template_pixels(config: AnomalyConfig, image_size: int) -> int:
    """Grid points ``n`` of the template at ``image_size`` px: round(size * S / reference), >= 3."""
    return max(3, int(math.floor(config.template_size * image_size / config.reference_size + 0.5)))


def template_half_width(config: AnomalyConfig, image_size: int) -> float:
    """Pixels per template unit (half the unscaled template's grid span) at ``image_size`` px.

    ``(template_size - 1) / 2 * image_size / reference_size``: 9.5 px at 256, exactly half
    that at 128, so the rendered anomaly keeps its anatomical size; the rounding of
    :func:`template_pixels` only enters the eligibility test.
    """
    return (config.template_size - 1) / 2 * image_size / config.reference_size


def make_template(
    config: AnomalyConfig, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The untransformed template on its grid, for figures and tests.

    Returns ``(template (n, n) float32 in (0, 1], mask (n, n) bool)``; ``n`` is
    :func:`template_pixels` at ``image_size`` (``config.template_size`` when None).
    """
    n = config.template_size if image_size is None else template_pixels(config, image_size)
    axis = np.linspace(-1.0, 1.0, n)
    template = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * config.sigma**2))
    return template.astype(np.float32), template > config.mask_threshold


def find_sites(
    kidney_mask: np.ndarray, config: AnomalyConfig, image_size: int | None = None
) -> list[Site]:
    """The eligible host components of one slice (see module doc, "Placement").

    ``kidney_mask``: (H, W) bool/{0, 1}; ``image_size`` sets the template size (default
    ``max(H, W)``). Returns 0, 1 or 2 sites, largest component first. Deterministic.
    """
    kidney = np.asarray(kidney_mask).astype(bool, copy=False)
    n = template_pixels(config, image_size or max(kidney.shape))
    rows_any = np.flatnonzero(kidney.any(axis=1))
    if rows_any.size == 0:
        return []
    cols_any = np.flatnonzero(kidney.any(axis=0))
    r0, c0 = rows_any[0], cols_any[0]
    crop = kidney[r0 : rows_any[-1] + 1, c0 : cols_any[-1] + 1]  # labelling the crop is faster
    labels, count = ndimage.label(crop, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    largest = np.argsort(-areas, kind="stable")[:2] + 1  # at most two largest, ties by label
    boxes = ndimage.find_objects(labels)
    sites = []
    for rank, lab in enumerate(largest):
        rows, cols = boxes[lab - 1]
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if height <= n or width <= n:  # bounding box must be larger than the template
            continue
        margin_r, margin_c = config.bbox_margin * height, config.bbox_margin * width
        inner = (  # pixel rows/cols of the box shrunk by the margin on each side
            slice(rows.start + math.ceil(margin_r), rows.stop - math.ceil(margin_r)),
            slice(cols.start + math.ceil(margin_c), cols.stop - math.ceil(margin_c)),
        )
        candidates = labels[inner] == lab
        if candidates.any():
            dtype = np.uint16 if candidates.size <= 1 << 16 else np.uint32
            sites.append(Site(
                component=rank,
                top=int(r0 + inner[0].start),
                left=int(c0 + inner[1].start),
                width=int(candidates.shape[1]),
                offsets=np.flatnonzero(candidates).astype(dtype),
            ))
    return sites


def can_host_anomaly(
    kidney_mask: np.ndarray, config: AnomalyConfig, image_size: int | None = None
) -> bool:
    """True when :func:`draw_anomaly` would find a position on this slice (the pre-check)."""
    return bool(find_sites(kidney_mask, config, image_size))


def draw_anomaly(
    kidney_mask: np.ndarray,
    config: AnomalyConfig,
    rng: np.random.Generator,
    sites: list[Site] | None = None,
) -> AnomalyParams | None:
    """Draw all random parameters of one anomaly in ``kidney_mask`` (H, W) (App. 7.2).

    Returns ``None`` (having drawn nothing) when the slice has no eligible component.
    ``sites`` may pass a cached :func:`find_sites` result for this mask.
    """
    if sites is None:
        sites = find_sites(kidney_mask, config)
    if not sites:
        return None
    site = sites[int(rng.integers(len(sites)))]
    center_row, center_col = site.pixel(int(rng.integers(len(site))))
    cells = config.distort_steps + 1
    limit = config.distort_limit
    return AnomalyParams(
        center_row=center_row,
        center_col=center_col,
        component=site.component,
        scale=float(rng.uniform(*config.scale_range)),
        rotation_deg=float(rng.uniform(*config.rotation_range)),
        distort_x=tuple(float(v) for v in 1.0 + rng.uniform(-limit, limit, cells)),
        distort_y=tuple(float(v) for v in 1.0 + rng.uniform(-limit, limit, cells)),
    )


def draw_slice_anomaly(
    kidney_mask: np.ndarray,
    config: AnomalyConfig,
    rng: np.random.Generator,
    sites: list[Site] | None = None,
) -> tuple[int, AnomalyParams | None, Status]:
    """The label decision for one slice: ``(label, params, status)``.

    With probability ``config.probability`` the slice should get an anomaly: ``(1, params,
    "anomaly")``, or ``(0, None, "unplaceable")`` when no position is valid (the slice stays
    normal and the caller counts it). Otherwise ``(0, None, "normal")``.
    """
    if rng.random() >= config.probability:
        return 0, None, "normal"
    params = draw_anomaly(kidney_mask, config, rng, sites)
    if params is None:
        return 0, None, "unplaceable"
    return 1, params, "anomaly"


def _distortion_knots(factors: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Knots of the piecewise-linear grid distortion: destination -> source coordinate.

    The destination axis [-1, 1] has ``len(factors)`` equal cells; cell ``i`` reads from a
    source interval of width ``2 * f_i / sum(f)`` (normalised, so [-1, 1] maps onto itself).
    """
    cells, total = len(factors), float(sum(factors))
    dest = [-1.0 + 2.0 * i / cells for i in range(cells + 1)]
    source, edge = [-1.0], -1.0
    for f in factors:
        edge += 2.0 * f / total
        source.append(edge)
    source[-1] = 1.0  # exact end point despite rounding
    return dest, source


def render_anomaly(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The placed template: ``(intensity (H, W) float32 in [0, 1], mask (H, W) bool)``.

    ``mask = intensity > config.mask_threshold``. The template size follows
    ``max(shape)`` (:func:`template_pixels`). Deterministic.
    """
    height, width = shape
    intensity = np.zeros((height, width), np.float32)
    box, values = _render_box(params, shape, config)
    if values is not None:
        intensity[box] = values
    return intensity, intensity > config.mask_threshold


def _render_box(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """Template values on the pixel box that can hold the anomaly (clipped to the image)."""
    height, width = shape
    half_side = template_half_width(config, max(shape)) * params.scale  # px per template unit
    reach = int(math.ceil(math.sqrt(2.0) * half_side)) + 1  # the rotated square fits in this
    r_lo, r_hi = max(params.center_row - reach, 0), min(params.center_row + reach + 1, height)
    c_lo, c_hi = max(params.center_col - reach, 0), min(params.center_col + reach + 1, width)
    box = (slice(r_lo, r_hi), slice(c_lo, c_hi))
    if r_lo >= r_hi or c_lo >= c_hi:
        return box, None
    theta = math.radians(params.rotation_deg)
    cos, sin = math.cos(theta) / half_side, math.sin(theta) / half_side
    dy = np.arange(r_lo - params.center_row, r_hi - params.center_row, dtype=np.float64)
    dx = np.arange(c_lo - params.center_col, c_hi - params.center_col, dtype=np.float64)
    u = np.add.outer(sin * dy, cos * dx)  # undo translation, rotation and scale:
    v = np.add.outer(cos * dy, -sin * dx)  # template coordinates, square support [-1, 1]^2
    # Undo the grid distortion. Outside the template square np.interp returns _OUTSIDE,
    # whose Gaussian underflows to exactly 0: the template grid's square support.
    dest, source_u = _distortion_knots(params.distort_x)
    _, source_v = _distortion_knots(params.distort_y)
    su = np.interp(u, dest, source_u, left=_OUTSIDE, right=_OUTSIDE)
    sv = np.interp(v, dest, source_v, left=_OUTSIDE, right=_OUTSIDE)
    values = np.exp((su * su + sv * sv) * (-0.5 / config.sigma**2))
    return box, values.astype(np.float32)


def apply_anomaly(
    image: np.ndarray,
    params: AnomalyParams,
    config: AnomalyConfig,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert the anomaly into ``image`` (H, W) in [-1, 1] (App. 7.2).

    Returns ``(image_out (H, W) float32 in [-1, 1], mask (H, W) bool)``. On the [0, 1]
    scale ``x01 + alpha * T`` clipped to [0, 1] (FACTS); pixels where the placed template
    is 0 are returned bit-identical (as float32). Deterministic. ``out``: an optional
    (H, W) float32 array to write ``image_out`` into (may be ``image`` itself; saves a copy).
    """
    if out is None:
        out = np.array(image, dtype=np.float32, copy=True)
    elif out is not image:
        np.copyto(out, image)
    mask = np.zeros(out.shape, bool)
    box, values = _render_box(params, out.shape, config)
    if values is None:
        return out, mask
    region = out[box]
    x01 = np.clip((region + 1.0) * 0.5 + config.alpha * values, 0.0, 1.0)
    out[box] = np.where(values > 0, x01 * 2.0 - 1.0, region)
    mask[box] = values > config.mask_threshold
    return out, mask
