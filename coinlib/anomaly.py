"""Synthetic Gaussian-blob anomalies inside the kidneys (paper App. 7.2; the authors' anomaly code).

The generator is split the torchio way: :func:`draw_anomaly` draws *every* random number
(which kidney component, centre, scale, rotation, grid distortion) from an explicit
``np.random.Generator`` into an :class:`AnomalyParams`; :func:`render_anomaly` and
:func:`apply_anomaly` are deterministic functions of those parameters. A draw can be saved
as JSON (``to_dict``) and replayed (``from_dict``) bit for bit.

The paper gives no numbers ("random grid distortions, scaling and rotations" of a Gaussian
blob "within one of the kidneys"), so two rules are offered (``AnomalyConfig.rule``); both
share the template, the parameters and the intensity step, and differ in how they draw
and warp:

- ``"implementation"`` (the default): the distribution of the authors' code, which runs
  albumentations 1.3.0 on a 20 x 20 pixel template (its configs and
  code). Mean anomaly area 84.6 px (sd 21.3), 95th-percentile aspect
  ratio 1.34 at 256 px; slices whose second kidney component is small get an anomaly
  about half as often as the others.
- ``"continuous"``: this project's first reading of App. 7.2, kept as an option: an exact
  remap of the continuous blob, every blob warped and rotated, the centre drawn among
  the pixels of any component large enough (mean area 95 px, aspect 1.06 at 256 px).

Sizes are given for a 256 px slice (``reference_size``); at image size ``S`` each rule
scales its blob by exactly ``S / 256``, so it covers the same anatomy at every resolution.

Template (both rules): the isotropic Gaussian ``T(u, v) = exp(-(u^2 + v^2) / (2 sigma^2))``,
sigma 0.4, on ``template_size`` (20) grid points spanning [-1, 1]^2; its mask is
``T > 0.25``, a disc of about 13 px diameter. The grid has no centre point: 20 points put
the blob's centre between two pixels. Outside its square the template is 0.

**The implementation's rule**, in the order the authors' code applies it (albumentations
1.3.0; every image step bilinear, every mask step nearest-neighbour, zero outside the
patch):

1. ``RandomScale``: the 20 px template is resized to ``k = int(20 s)`` px, ``s ~
   U(scale_range)`` (truncating: k in 15..19, each about equally likely).
2. ``GridDistortion`` with probability ``warp_probability`` (0.5), *unnormalised*: with one
   step, output pixel ``q`` of each axis reads input ``q * f * k / (k - 1)``, ``f = 1 +
   U(-limit, limit)`` drawn per axis. Each axis is stretched independently and about the
   patch's first pixel, so warped blobs are ellipses, shifted toward a corner.
3. ``Rotate`` with probability ``rotation_probability`` (0.5) by ``U(rotation_range)``
   degrees about the patch centre ``(k - 1) / 2``.
4. The k x k patch is added with its pixel ``k // 2`` on the drawn centre, so an even ``k``
   puts the blob's centre half a pixel off it. The anomaly mask is the template's mask taken
   through the same steps by nearest neighbour (each step rounds to its own pixel grid);
   the image gets the smooth template evaluated at the same points.

Checked once against albumentations 1.3.0 and OpenCV on 2000 parameter draws (not a test:
neither is a dependency): identical masks, image values within 0.10 (OpenCV resamples the
coarse grid bilinearly three times). Zero outside the patch is an inference: albumentations'
default border mode mirrors the patch, which adds slivers (mean area 87.4 px, aspect 1.41
in 4000 draws), while zero borders give the authors' measured numbers (84.1 px, 1.37).

Placement (implementation): of the (at most two) largest 8-connected kidney components
(the implementation's "contours") one is picked uniformly *first*; when its bounding box
holds ``min_box_area`` px or fewer (400 at 256 px, scaled by area) the slice stays normal.
Otherwise the centre is drawn uniformly among the pixels strictly inside the component's
outer contour (OpenCV's contour runs through the centres of the border pixels, those with
a 4-neighbour outside the hole-filled component, so "strictly inside" is the hole-filled
component minus its border) within its box shrunk by ``int(bbox_margin * side / 2)`` px
(5 %) on each side: the distribution of the implementation's redraw-until-inside loop,
sampled directly, so it never loops.

**The continuous rule**, step by step:

1. Grid distortion (as albumentations ``GridDistortion``, normalised): each axis of the
   template square is cut into ``distort_steps + 1`` equal cells; cell ``i`` is resampled
   from a source interval whose width is proportional to ``1 + U(-limit, limit)``, the
   widths renormalised to span [-1, 1] again. The map is piecewise linear per axis, so the
   blob becomes lopsided (egg-shaped) while its outer square stays put.
2. Scale ``s ~ U(scale_range)``, rotation ``theta ~ U(rotation_range)`` degrees about the
   template centre, and a translation of the template centre to the drawn centre pixel.

Rendering inverts this chain for every pixel near the centre and evaluates the Gaussian at
the resulting template coordinates: an exact remap of the continuous blob. The mask is the
*transformed* template ``> mask_threshold``. At image size ``S`` the template grid has
``n = round(template_size * S / reference_size)`` points (:func:`template_pixels`, used
for eligibility) and the blob is scaled by ``S / reference_size`` (:func:`template_half_width`).
Placement: the centre is drawn uniformly among the pixels of one of the (at most two)
largest components inside its bounding box shrunk by ``bbox_margin`` (10 %) of its
height/width on each side; the component is drawn uniformly among the *eligible* ones,
those whose box is larger than the template grid (``> n`` px both ways).

Both rules: a slice that cannot host the drawn anomaly makes :func:`draw_anomaly` return
``None`` and :func:`draw_slice_anomaly` report ``"unplaceable"`` (label 0), so the dataset
counts it instead of silently mislabelling. Intensity (the authors' code): ``x01 = (x + 1) / 2``;
``x01 = clip(x01 + alpha * T_placed, 0, 1)``; back to [-1, 1]. The image also changes in
the blob's faint tail (``0 < T <= 0.25``); pixels where ``T == 0`` are untouched. The lesion
mask (``mask_true``) is the placed template mask. Kidney components are labelled with
``scipy.ndimage.label`` (the same components as ``skimage.measure.label``, but faster).
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
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_OUTSIDE = 1e3  # template coordinate given to points off the template square (exp(-...) == 0)


@dataclass(frozen=True)
class AnomalyParams:
    """Every random choice of one anomaly; with the config, it fixes the anomaly exactly.

    ``center_row``/``center_col``: the drawn centre pixel (a kidney pixel); ``component``:
    rank of the host kidney component by area (0 largest, 1 second); ``scale``: the drawn
    template scale (the implementation's rule truncates it to whole template pixels);
    ``rotation_deg``: rotation about the template centre in degrees (0 when the
    implementation's rule skipped the rotation). ``distort_x``/``distort_y``: grid-distortion
    factors ``1 + U(-limit, limit)``, one per cell of the columns / rows: ``distort_steps +
    1`` cells (continuous rule), ``distort_steps`` (implementation rule, whose last cell is
    never stretched), or none when the implementation's rule skipped the distortion.
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
    """Where an anomaly may be centred in one kidney component (compact, cacheable).

    The candidates are pixels of the component's shrunk bounding box, stored as (K,) flat
    offsets (uint16 when the box has <= 65536 pixels, about 2 bytes per kidney pixel) into
    the box whose top-left pixel is (``top``, ``left``) and whose width is ``width``.
    ``component``: rank of the component by area (0 largest). K = 0 (implementation rule
    only): the component is one of the two largest but cannot host an anomaly.
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
    :func:`template_pixels` only enters the continuous rule's eligibility test.
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


# ------------------------------------------------------------------------------ placement


def find_sites(
    kidney_mask: np.ndarray, config: AnomalyConfig, image_size: int | None = None
) -> list[Site]:
    """The host components of one slice, largest first (see module doc, "Placement").

    ``kidney_mask``: (H, W) bool/{0, 1}; ``image_size`` sets the sizes (default ``max(H,
    W)``). Continuous rule: the 0, 1 or 2 eligible components. Implementation rule: the
    (at most two) largest components, each a :class:`Site`, empty when it cannot host an
    anomaly (the draw picks among all of them). Deterministic.
    """
    kidney = np.asarray(kidney_mask).astype(bool, copy=False)
    size = image_size or max(kidney.shape)
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
    candidates_of = _implementation_candidates if config.rule == "implementation" else _continuous_candidates
    sites = []
    for rank, lab in enumerate(largest):
        found = candidates_of(labels, lab, boxes[lab - 1], config, size)
        if found is None:
            continue
        inner, candidates = found
        dtype = np.uint16 if candidates.size <= 1 << 16 else np.uint32
        sites.append(Site(
            component=rank,
            top=int(r0 + inner[0].start),
            left=int(c0 + inner[1].start),
            width=int(candidates.shape[1]),
            offsets=np.flatnonzero(candidates).astype(dtype),
        ))
    return sites


def _continuous_candidates(labels, lab, box, config, size):
    """(shrunk box, candidate pixels) of an eligible component, or None (continuous rule)."""
    rows, cols = box
    height, width = rows.stop - rows.start, cols.stop - cols.start
    n = template_pixels(config, size)
    if height <= n or width <= n:  # bounding box must be larger than the template
        return None
    margin_r, margin_c = config.bbox_margin * height, config.bbox_margin * width
    inner = (  # pixel rows/cols of the box shrunk by the margin on each side
        slice(rows.start + math.ceil(margin_r), rows.stop - math.ceil(margin_r)),
        slice(cols.start + math.ceil(margin_c), cols.stop - math.ceil(margin_c)),
    )
    candidates = labels[inner] == lab
    return (inner, candidates) if candidates.any() else None


def _implementation_candidates(labels, lab, box, config, size):
    """(shrunk box, pixels strictly inside the contour) of a component (implementation rule).

    The candidates are all False when the box holds ``min_box_area`` px or fewer (scaled
    from ``reference_size`` by area): the slice then stays normal when this one is picked.
    """
    rows, cols = box
    height, width = rows.stop - rows.start, cols.stop - cols.start
    margin_r, margin_c = int(config.bbox_margin * height / 2), int(config.bbox_margin * width / 2)
    inner = (
        slice(rows.start + margin_r, rows.stop - margin_r),
        slice(cols.start + margin_c, cols.stop - margin_c),
    )
    if height * width <= config.min_box_area * (size / config.reference_size) ** 2:
        return inner, np.zeros((inner[0].stop - inner[0].start, inner[1].stop - inner[1].start), bool)
    filled = ndimage.binary_fill_holes(np.pad(labels[box] == lab, 1))  # the outer contour's inside
    strictly_inside = ndimage.binary_erosion(filled, _FOUR_CONNECTED)[1:-1, 1:-1]  # minus its border
    return inner, strictly_inside[margin_r : height - margin_r, margin_c : width - margin_c]


def can_host_anomaly(
    kidney_mask: np.ndarray, config: AnomalyConfig, image_size: int | None = None
) -> bool:
    """True when some draw of :func:`draw_anomaly` finds a position on this slice (the pre-check)."""
    return any(len(site) for site in find_sites(kidney_mask, config, image_size))


# -------------------------------------------------------------------------------- drawing


def draw_anomaly(
    kidney_mask: np.ndarray,
    config: AnomalyConfig,
    rng: np.random.Generator,
    sites: list[Site] | None = None,
) -> AnomalyParams | None:
    """Draw all random parameters of one anomaly in ``kidney_mask`` (H, W) (App. 7.2).

    Returns ``None`` when the slice cannot host it: no eligible component (continuous rule,
    nothing drawn) or the picked component is too small (implementation rule).
    ``sites`` may pass a cached :func:`find_sites` result for this mask.
    """
    if sites is None:
        sites = find_sites(kidney_mask, config)
    if not sites:
        return None
    site = sites[int(rng.integers(len(sites)))]  # the implementation picks the component first
    if not len(site):
        return None
    center_row, center_col = site.pixel(int(rng.integers(len(site))))
    scale = float(rng.uniform(*config.scale_range))
    limit = config.distort_limit
    if config.rule == "continuous":
        rotation = float(rng.uniform(*config.rotation_range))
        cells = config.distort_steps + 1
        distort_x, distort_y = (1.0 + rng.uniform(-limit, limit, cells) for _ in range(2))
    else:
        warp = rng.random() < config.warp_probability
        distort_x, distort_y = (1.0 + rng.uniform(-limit, limit, config.distort_steps * warp) for _ in range(2))
        rotate = rng.random() < config.rotation_probability
        rotation = float(rng.uniform(*config.rotation_range)) if rotate else 0.0
    return AnomalyParams(
        center_row=center_row,
        center_col=center_col,
        component=site.component,
        scale=scale,
        rotation_deg=rotation,
        distort_x=tuple(float(v) for v in distort_x),
        distort_y=tuple(float(v) for v in distort_y),
    )


def draw_slice_anomaly(
    kidney_mask: np.ndarray,
    config: AnomalyConfig,
    rng: np.random.Generator,
    sites: list[Site] | None = None,
) -> tuple[int, AnomalyParams | None, Status]:
    """The label decision for one slice: ``(label, params, status)``.

    With probability ``config.probability`` the slice should get an anomaly: ``(1, params,
    "anomaly")``, or ``(0, None, "unplaceable")`` when the draw finds no valid position (the
    slice stays normal and the caller counts it). Otherwise ``(0, None, "normal")``.
    """
    if rng.random() >= config.probability:
        return 0, None, "normal"
    params = draw_anomaly(kidney_mask, config, rng, sites)
    if params is None:
        return 0, None, "unplaceable"
    return 1, params, "anomaly"


# ------------------------------------------------------------------------------ rendering


def _distortion_knots(factors: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Knots of the continuous rule's grid distortion: destination -> source coordinate.

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


def _continuous_box(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[tuple[slice, slice], np.ndarray | None, np.ndarray | None]:
    """Continuous rule: template values and mask on the pixel box that can hold the anomaly."""
    height, width = shape
    half_side = template_half_width(config, max(shape)) * params.scale  # px per template unit
    reach = int(math.ceil(math.sqrt(2.0) * half_side)) + 1  # the rotated square fits in this
    r_lo, r_hi = max(params.center_row - reach, 0), min(params.center_row + reach + 1, height)
    c_lo, c_hi = max(params.center_col - reach, 0), min(params.center_col + reach + 1, width)
    box = (slice(r_lo, r_hi), slice(c_lo, c_hi))
    if r_lo >= r_hi or c_lo >= c_hi:
        return box, None, None
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
    values = np.exp((su * su + sv * sv) * (-0.5 / config.sigma**2)).astype(np.float32)
    return box, values, values > config.mask_threshold


def _grid_source(factors: tuple[float, ...], k: int) -> np.ndarray:
    """(k,) source pixel read by each output pixel of albumentations' unnormalised grid distortion.

    ``len(factors)`` cells of ``k // len(factors)`` px; cell ``i`` spans
    ``linspace(prev, prev + step * f_i, step)``; a remainder cell runs on to ``k``.
    """
    step = max(1, k // len(factors))
    source, prev = np.empty(k), 0.0
    for i, factor in enumerate(factors):
        if (i + 1) * step > k:
            break
        source[i * step : (i + 1) * step] = np.linspace(prev, prev + step * factor, step)
        prev += step * factor
    tail = min(len(factors), k // step) * step
    source[tail:] = np.linspace(prev, k, k - tail)
    return source


def _within(pixel: np.ndarray, k: int) -> np.ndarray:
    """Pixel coordinates inside a k-pixel image (OpenCV's constant border: 0 outside)."""
    return (pixel >= -0.5) & (pixel <= k - 0.5)


def _implementation_box(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[tuple[slice, slice], np.ndarray | None, np.ndarray | None]:
    """Implementation rule: the k x k patch (module doc, steps 1-4) on the image's pixels.

    Each image pixel is taken back through the steps to the template: by nearest neighbour
    at every step for the mask (as the implementation transforms its mask), continuously
    for the image values. Patch coordinates are reference pixels (256 px slice); ``rho``
    image pixels per reference pixel scales the patch to the image.
    """
    height, width = shape
    n = config.template_size
    k = max(2, int(n * params.scale))  # RandomScale: int(20 s), truncating
    rho = max(shape) / config.reference_size
    reach = int(math.ceil((k // 2 + 1) * rho)) + 1
    r_lo, r_hi = max(params.center_row - reach, 0), min(params.center_row + reach + 1, height)
    c_lo, c_hi = max(params.center_col - reach, 0), min(params.center_col + reach + 1, width)
    box = (slice(r_lo, r_hi), slice(c_lo, c_hi))
    if r_lo >= r_hi or c_lo >= c_hi:
        return box, None, None
    centre = (k - 1) / 2  # the rotation centre, and where the blob sits before the warp
    theta = math.radians(params.rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # patch pixel under each image pixel: the patch's pixel k // 2 lies on the drawn centre
    z_row = np.arange(r_lo - params.center_row, r_hi - params.center_row) / rho + k // 2
    z_col = np.arange(c_lo - params.center_col, c_hi - params.center_col) / rho + k // 2

    def to_template(z_row, z_col, nearest):
        # step 3 backwards: rotation about the patch centre (the continuous rule's sense)
        q_row = centre + np.add.outer(cos * (z_row - centre), -sin * (z_col - centre))
        q_col = centre + np.add.outer(sin * (z_row - centre), cos * (z_col - centre))
        if nearest:
            q_row, q_col = np.rint(q_row), np.rint(q_col)
        inside = _within(z_row, k)[:, None] & _within(z_col, k)[None, :]  # the patch's square
        inside &= _within(q_row, k) & _within(q_col, k)
        # step 2 backwards: the grid distortion's source pixel, per axis
        p_row, p_col = q_row, q_col
        if params.distort_x:
            grid = np.arange(k)
            p_row = np.interp(q_row, grid, _grid_source(params.distort_y, k))
            p_col = np.interp(q_col, grid, _grid_source(params.distort_x, k))
            if nearest:
                p_row, p_col = np.rint(p_row), np.rint(p_col)
            inside &= _within(p_row, k) & _within(p_col, k)
        return p_row, p_col, inside

    # step 1 backwards, mask: OpenCV's nearest resize reads template pixel floor(p * n / k)
    p_row, p_col, inside = to_template(np.rint(z_row), np.rint(z_col), nearest=True)
    t_row = np.clip(np.floor(p_row * n / k), 0, n - 1).astype(int)
    t_col = np.clip(np.floor(p_col * n / k), 0, n - 1).astype(int)
    mask = inside & make_template(config)[1][t_row, t_col]
    # step 1 backwards, image: bilinear resize reads (p + 1/2) n / k - 1/2, border replicated
    p_row, p_col, inside = to_template(z_row, z_col, nearest=False)
    u_row = -1.0 + 2.0 * np.clip((p_row + 0.5) * n / k - 0.5, 0, n - 1) / (n - 1)
    u_col = -1.0 + 2.0 * np.clip((p_col + 0.5) * n / k - 0.5, 0, n - 1) / (n - 1)
    values = np.exp((u_row * u_row + u_col * u_col) * (-0.5 / config.sigma**2))
    return box, np.where(inside, values, 0.0).astype(np.float32), mask


def _render_box(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[tuple[slice, slice], np.ndarray | None, np.ndarray | None]:
    """``(box, values, mask)``: the placed template on a pixel box of the image (clipped to it)."""
    render = _implementation_box if config.rule == "implementation" else _continuous_box
    return render(params, shape, config)


def render_anomaly(
    params: AnomalyParams, shape: tuple[int, int], config: AnomalyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The placed template: ``(intensity (H, W) float32 in [0, 1], mask (H, W) bool)``.

    Sizes follow ``max(shape)`` (module doc). Deterministic.
    """
    intensity = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    box, values, box_mask = _render_box(params, shape, config)
    if values is not None:
        intensity[box] = values
        mask[box] = box_mask
    return intensity, mask


def apply_anomaly(
    image: np.ndarray,
    params: AnomalyParams,
    config: AnomalyConfig,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert the anomaly into ``image`` (H, W) in [-1, 1] (App. 7.2).

    Returns ``(image_out (H, W) float32 in [-1, 1], mask (H, W) bool)``. On the [0, 1]
    scale ``x01 + alpha * T`` clipped to [0, 1] (the authors' code); pixels where the placed template
    is 0 are returned bit-identical (as float32). Deterministic. ``out``: an optional
    (H, W) float32 array to write ``image_out`` into (may be ``image`` itself; saves a copy).
    """
    if out is None:
        out = np.array(image, dtype=np.float32, copy=True)
    elif out is not image:
        np.copyto(out, image)
    mask = np.zeros(out.shape, bool)
    box, values, box_mask = _render_box(params, out.shape, config)
    if values is None:
        return out, mask
    region = out[box]
    x01 = np.clip((region + 1.0) * 0.5 + config.alpha * values, 0.0, 1.0)
    out[box] = np.where(values > 0, x01 * 2.0 - 1.0, region)
    mask[box] = box_mask
    return out, mask
