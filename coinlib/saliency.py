"""Saliency baselines of Table 1: Grad-CAM, LayerCAM, Score-CAM and RISE (paper Sec. 5).

The paper compares COIN with RISE [29], Score-CAM [37] and LayerCAM [18]; Grad-CAM [31]
(through Captum) is a fourth, as a well-known reference. Every method explains the
single logit of :class:`coinlib.classifier.BinaryClassifier`, i.e. the class "abnormal";
the paper applies them to abnormal slices. Sec. 5 then min-max normalises every map to
[0, 1] and thresholds it (best threshold of a sweep, as the authors' evaluation does) without
post-processing.

One interface for every method::

    maps = attribute("rise", model, x, n_masks=6000)   # x: (B, 1, H, W) in [-1, 1]
    maps.shape == (B, H, W); maps.dtype == float32; 0 <= maps <= 1

- :data:`SALIENCY_METHODS` maps a name to a function ``(model, x, **options) -> (B, H, W)``
  float32 *raw* saliency (the method's own scale, already at the image size);
  :func:`attribute` calls it and min-max normalises each map
  (:func:`coinlib.masks.normalise_saliency`: a constant map gives zeros).
- CAM methods hook ``target_layer``, by default :func:`coinlib.classifier.classifier_target_layer`
  (ResNet18 ``layer4``, EfficientNetV2-S last feature block, both H/32) and up-sample their
  map bilinearly (``align_corners=False``, as Captum's ``LayerAttribution.interpolate``).
- :func:`forward_passes` gives the cost per image, to print beside COIN's one forward pass
  (Sec. 5: "requiring multiple forward passes to compute saliency maps").

Masking (Score-CAM, RISE): a mask ``M`` in [0, 1] multiplies the image on the [0, 1]
scale, ``x_masked = (x + 1) * M - 1``: masked-out pixels go to -1 (black, the dark
background of a CT slice), not to 0 (mid-grey on our [-1, 1] scale), which is what
"multiply the image by the mask" means in both papers for images in [0, 1].

Every call leaves the model as it found it: it runs in eval mode (training flags are
restored afterwards), parameters keep their ``requires_grad`` and get no ``.grad``, and
hooks are removed in ``finally``. A frozen model (:func:`coinlib.classifier.freeze`) works:
gradients are taken w.r.t. the activations, which the hook turns into a leaf that requires
grad. Everything is deterministic on CPU; RISE draws its masks from a seeded
``torch.Generator`` on ``x.device`` (no mask file is written): one set for every image, as
the RISE code, or a set per image keyed by ``image_keys`` (:class:`RISEConfig` ``mask_sets``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from .classifier import classifier_target_layer
from .masks import normalise_saliency

__all__ = [
    "RISEConfig",
    "SALIENCY_METHODS",
    "attribute",
    "forward_passes",
    "gradcam",
    "layercam",
    "scorecam",
    "rise",
    "rise_image_seed",
]


@dataclass(frozen=True)
class RISEConfig:
    """RISE (Petsiuk et al. [29]); defaults from the RISE paper's code and the authors' evaluation.

    ``n_masks`` N random masks on a ``grid`` x ``grid`` lattice whose cells are kept with
    probability ``p1``; ``batch_size`` masked images per forward pass (at least one mask per
    image); ``seed`` fixes the masks. ``mask_sets``: "shared", one set of N masks for every
    image (the RISE code's ``generate_masks``, drawn once), or "per_image", an independent set
    per image, drawn from (``seed``, the image's key). Both estimate the same expectation
    per image; with few masks a shared set puts one common Monte Carlo error on every image
    of a test set, which moves the set's IoU as a whole (docs/profiles.md), and
    independent sets average it out over the slices.
    """

    n_masks: int = 6000
    grid: int = 8
    p1: float = 0.1
    batch_size: int = 100
    seed: int = 0
    mask_sets: Literal["shared", "per_image"] = "shared"


# ---------------------------------------------------------------------------- helpers


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, then restore every submodule's training flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _capture(layer: nn.Module, grad: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``layer``'s output in ``store["act"]`` while the block runs; unhook after.

    With ``grad``, the output is replaced by a leaf that requires grad (plus a clone for the
    layers downstream, so in-place ops there stay legal): ``d logit / d act`` is then
    available even when no parameter and not the input require grad, and no parameter
    gradient is computed.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        if not grad:
            store["act"] = output
            return None
        leaf = output.detach().requires_grad_(True)
        store["act"] = leaf
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
        raise ValueError(
            f"expected x of shape (B, 1, H, W), floating point; got {tuple(x.shape)} {x.dtype}"
        )


def _upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)`` float32, bilinear with ``align_corners=False``."""
    return F.interpolate(cam[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _mask_input(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Every image times every mask on the [0, 1] scale: ``(x + 1) * M - 1``.

    ``x (B, 1, H, W) in [-1, 1]``; ``masks (B or 1, m, H, W) in [0, 1]`` ->
    ``(B * m, 1, H, W) in [-1, 1]``, image-major (all masks of image 0 first).
    """
    masked = (x + 1) * masks - 1  # (B, m, H, W)
    return masked.reshape(-1, 1, *x.shape[-2:])


# ---------------------------------------------------------------------------- methods


def gradcam(model: nn.Module, x: torch.Tensor, target_layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM [31] of the "abnormal" logit, via Captum's ``LayerGradCam``.

    ``x (B, 1, H, W) in [-1, 1]`` -> ``(B, H, W)`` float32 >= 0:
    ``ReLU(sum_k mean_ij(d logit / d A_k) * A_k)`` at the target layer's resolution, up-sampled
    with ``LayerAttribution.interpolate`` (bilinear). Cost: 1 forward + 1 backward.
    """
    layer = target_layer if target_layer is not None else classifier_target_layer(model)
    with _eval_mode(model):
        cam = LayerGradCam(model, layer).attribute(x, relu_attributions=True)  # (B, 1, h, w)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0].detach().float()


def layercam(model: nn.Module, x: torch.Tensor, target_layer: nn.Module | None = None) -> torch.Tensor:
    """LayerCAM [18] of the "abnormal" logit.

    ``x (B, 1, H, W) in [-1, 1]`` -> ``(B, H, W)`` float32 >= 0:
    ``ReLU(sum_k ReLU(d logit / d A_k) * A_k)``, each position weighted by its own positive
    gradient (as pytorch-grad-cam's ``LayerCAM``), up-sampled bilinearly.
    Batched: one forward and one backward of ``logits.sum()`` (images are independent in
    eval mode). Cost: 1 forward + 1 backward.
    """
    layer = target_layer if target_layer is not None else classifier_target_layer(model)
    with _eval_mode(model), _capture(layer, grad=True) as store, torch.enable_grad():
        logits = model(x)
        (grads,) = torch.autograd.grad(logits.sum(), store["act"])
    acts = store["act"].detach()
    cam = (grads.clamp_min(0) * acts).sum(dim=1).clamp_min(0)
    return _upsample(cam, tuple(x.shape[-2:]))


def scorecam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: nn.Module | None = None,
    batch_size: int = 64,
    score: Literal["probability", "softmax"] = "probability",
) -> torch.Tensor:
    """Score-CAM [37] of the class "abnormal".

    ``x (B, 1, H, W) in [-1, 1]`` -> ``(B, H, W)`` float32 >= 0. Each of the K activation
    channels ``A_k`` (K = 512 for ResNet18 ``layer4``, 1280 for EfficientNetV2-S) is
    up-sampled to the image size (bilinear, ``align_corners=True`` as pytorch-grad-cam),
    min-max normalised to a mask ``H_k`` and multiplies the image (module docstring); the
    map is ``ReLU(sum_k w_k A_k)``, up-sampled bilinearly. The channel weights ``w_k``:

    - ``"probability"`` (default, the Score-CAM paper): ``w_k = p_abnormal(x masked by H_k)``,
      the class score after the class softmax, which for one logit is the sigmoid.
    - ``"softmax"`` (pytorch-grad-cam's ``ScoreCAM`` with ``ClassifierOutputTarget(0)``):
      ``w = softmax_k(logit(x masked by H_k))``, i.e. ``w_k`` proportional to the odds
      ``p_k / (1 - p_k)``; much more peaked (often one channel).

    No baseline is subtracted: the paper's ``f(X o H_k) - f(X_b)`` shifts every weight by the
    same ``f(X_b)``, which its authors' code and pytorch-grad-cam leave out, as here.
    A common positive factor in ``w`` does not change the normalised map, so
    ``"probability"`` equals pytorch-grad-cam with target ``logsigmoid(logit)``
    (``softmax_k(log p_k)`` is ``p_k / sum_j p_j``); the tests check both.

    Batched: ``batch_size`` masked images per forward pass (at least one channel per image);
    cost 1 + K forward passes per image.
    """
    _check_input(x)
    if score not in ("probability", "softmax"):
        raise ValueError(f"unknown Score-CAM score {score!r}; choose 'probability' or 'softmax'")
    layer = target_layer if target_layer is not None else classifier_target_layer(model)
    size = tuple(x.shape[-2:])
    with _eval_mode(model), torch.no_grad():
        with _capture(layer, grad=False) as store:
            model(x)
        acts = store["act"].detach()  # (B, K, h, w)
        b, k = acts.shape[:2]
        per_call = max(1, batch_size // b)  # channels per forward pass, all images at once
        logits = torch.empty(b, k, device=x.device, dtype=torch.float32)
        for start in range(0, k, per_call):
            chunk = acts[:, start : start + per_call].float()
            masks = F.interpolate(chunk, size=size, mode="bilinear", align_corners=True)
            masks = normalise_saliency(masks)  # each (image, channel) to [0, 1]
            logits[:, start : start + per_call] = model(_mask_input(x, masks)).float().view(b, -1)
        weights = torch.sigmoid(logits) if score == "probability" else torch.softmax(logits, dim=1)
        cam = (weights[:, :, None, None] * acts.float()).sum(dim=1).clamp_min(0)
    return _upsample(cam, size)


def _mirror_interp_matrix(s: int, n: int, device: torch.device) -> torch.Tensor:
    """``(n, s)`` linear interpolation of ``s`` samples to ``n`` (pixel centres, half-pixel
    convention) with mirror boundaries: skimage ``resize(order=1, mode="reflect",
    anti_aliasing=False)`` along one axis, as a matrix."""
    u = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) * s / n - 0.5
    lo = torch.floor(u)
    frac = (u - lo).float()
    lo = lo.long()

    def mirror(j: torch.Tensor) -> torch.Tensor:  # reflect about the first and last sample
        if s == 1:
            return torch.zeros_like(j)
        j = j.abs()
        return torch.where(j > s - 1, 2 * (s - 1) - j, j)

    rows = torch.arange(n, device=device)
    matrix = torch.zeros(n, s, device=device)
    matrix.index_put_((rows, mirror(lo)), 1 - frac, accumulate=True)
    matrix.index_put_((rows, mirror(lo + 1)), frac, accumulate=True)
    return matrix


def _rise_masks(
    grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int], cell: tuple[int, int]
) -> torch.Tensor:
    """RISE masks ``(m, H, W) in [0, 1]`` from binary ``grids (m, s, s)`` and ``shifts (m, 2)``.

    As the RISE code's ``generate_masks``: each grid is up-sampled bilinearly to
    ``(s + 1) * cell`` (skimage ``resize(order=1, mode="reflect", anti_aliasing=False)``) and
    cropped to ``H x W`` at offset ``shifts`` (each in ``[0, cell)``). Done as
    ``Wy[rows] @ grid @ Wx[cols]^T`` with interpolation matrices, so the up-sampled map is
    never built.
    """
    s = grids.shape[-1]
    device = grids.device
    wy = _mirror_interp_matrix(s, (s + 1) * cell[0], device)
    wx = _mirror_interp_matrix(s, (s + 1) * cell[1], device)
    rows = shifts[:, 0, None] + torch.arange(size[0], device=device)  # (m, H)
    cols = shifts[:, 1, None] + torch.arange(size[1], device=device)  # (m, W)
    return wy[rows] @ grids.float() @ wx[cols].transpose(1, 2)


def _rise_draws(
    n: int, s: int, p1: float, cell: tuple[int, int], seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One set of RISE draws from ``torch.Generator().manual_seed(seed)``: binary grids
    ``rand(n, s, s) < p1``, then shifts ``randint(0, cell)`` (rows, then columns)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    grids = (torch.rand(n, s, s, generator=generator, device=device) < p1).float()
    shifts = torch.stack(
        [torch.randint(0, c, (n,), generator=generator, device=device) for c in cell], dim=1
    )
    return grids, shifts


def rise_image_seed(seed: int, key: int) -> int:
    """The seed of image ``key``'s own mask set under ``mask_sets="per_image"`` (well mixed,
    so neighbouring keys and seeds give unrelated sets)."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rise(
    model: nn.Module,
    x: torch.Tensor,
    config: RISEConfig | None = None,
    image_keys: Sequence[int] | None = None,
    **overrides: object,
) -> torch.Tensor:
    """RISE [29] for ``p_abnormal = sigmoid(logit)``.

    ``x (B, 1, H, W) in [-1, 1]`` -> ``(B, H, W)`` float32 >= 0:
    ``S = sum_i p_abnormal(x masked by M_i) * M_i / (N * p1)``, the expected mask weighted by
    the score. ``config`` (default :class:`RISEConfig`) with ``overrides`` replacing its
    fields (``rise(model, x, n_masks=64)``; unknown names raise ``TypeError``).

    ``mask_sets="shared"``: the N masks are the same for every image (as the RISE code),
    drawn from ``seed``. ``"per_image"``: image ``i`` gets its own N masks, drawn from
    :func:`rise_image_seed` (``seed``, ``image_keys[i]``); give each image a stable key (a
    dataset row) so its map does not depend on the batch it came in (default: its position
    in ``x``). Draws (:func:`_rise_draws`, on ``x.device``, ``cell = ceil(H / s)``) are made
    up front (small) and depend on (seed, key, N, s, p1, H, W) only, not on ``batch_size``.
    The masks themselves are made chunk by chunk, never all held (6000 masks at 256 px
    would be 1.5 GB). Cost: N forward passes per image.
    """
    _check_input(x)
    cfg = replace(config if config is not None else RISEConfig(), **overrides)
    if (cfg.n_masks < 1 or cfg.grid < 1 or not 0 < cfg.p1 <= 1 or cfg.batch_size < 1
            or cfg.mask_sets not in ("shared", "per_image")):
        raise ValueError(f"invalid RISE settings {cfg}")
    b, _, h, w = x.shape
    device = x.device
    n, s = cfg.n_masks, cfg.grid
    cell = (math.ceil(h / s), math.ceil(w / s))
    if cfg.mask_sets == "shared":
        seeds = [cfg.seed]
    else:
        keys = list(range(b)) if image_keys is None else [int(k) for k in image_keys]
        if len(keys) != b:
            raise ValueError(f"image_keys has {len(keys)} keys for {b} images")
        seeds = [rise_image_seed(cfg.seed, key) for key in keys]
    draws = [_rise_draws(n, s, cfg.p1, cell, seed, device) for seed in seeds]
    grids = torch.stack([g for g, _ in draws])  # (1 or B, N, s, s)
    shifts = torch.stack([t for _, t in draws])  # (1 or B, N, 2)
    sets = len(seeds)
    per_call = max(1, cfg.batch_size // b)  # masks per image per forward pass, all images at once
    saliency = torch.zeros(b, h * w, device=device, dtype=torch.float32)
    with _eval_mode(model), torch.no_grad():
        for start in range(0, n, per_call):
            chunk = slice(start, start + per_call)
            m = min(per_call, n - start)
            masks = _rise_masks(grids[:, chunk].reshape(sets * m, s, s), shifts[:, chunk].reshape(sets * m, 2),
                                (h, w), cell).view(sets, m, h, w)
            p_abnormal = torch.sigmoid(model(_mask_input(x, masks).to(x.dtype)).float()).view(b, m)
            if sets == 1:  # one set: one product for all images (the RISE code's sum, bit for bit)
                saliency += p_abnormal @ masks.view(m, h * w)
            else:
                saliency += torch.bmm(p_abnormal[:, None], masks.view(b, m, h * w))[:, 0]
    return (saliency / (n * cfg.p1)).view(b, h, w)


SALIENCY_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradcam": gradcam,
    "layercam": layercam,
    "scorecam": scorecam,
    "rise": rise,
}


def attribute(method: str, model: nn.Module, x: torch.Tensor, **options: object) -> torch.Tensor:
    """Saliency maps of ``method`` (a :data:`SALIENCY_METHODS` key) for the class "abnormal".

    ``model``: ``(B, 1, H, W) in [-1, 1]`` -> logits ``(B,)`` (a ``BinaryClassifier``; for the
    CAMs it must have ``arch`` unless ``target_layer`` is given). ``x (B, 1, H, W) in [-1, 1]``
    on the model's device. ``options`` go to the method (``target_layer``; ``batch_size``
    and ``score`` for Score-CAM; ``config`` or :class:`RISEConfig` fields for RISE).

    Returns ``(B, H, W)`` float32 in [0, 1], min-max normalised per image (Sec. 5;
    a constant map gives zeros), detached, on ``x.device``.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {list(SALIENCY_METHODS)}")
    _check_input(x)
    raw = SALIENCY_METHODS[method](model, x, **options)
    return normalise_saliency(raw.detach().float())


def forward_passes(
    method: str,
    model: nn.Module,
    target_layer: nn.Module | None = None,
    config: RISEConfig | None = None,
    **overrides: object,
) -> int:
    """Forward passes of ``model`` per image that ``method`` needs (Sec. 5 cost comparison).

    Grad-CAM, LayerCAM: 1 (plus one backward pass). Score-CAM: 1 + K, K the channels of
    the target layer (512 for ResNet18 ``layer4``, 1280 for EfficientNetV2-S; found with one
    32 x 32 probe forward). RISE: N = ``n_masks`` (``config`` and ``overrides`` as in
    :func:`rise`). COIN needs 1 (the generator's, Sec. 5).
    """
    if method in ("gradcam", "layercam"):
        return 1
    if method == "rise":
        return replace(config if config is not None else RISEConfig(), **overrides).n_masks
    if method == "scorecam":
        layer = target_layer if target_layer is not None else classifier_target_layer(model)
        probe = next(model.parameters())
        with _eval_mode(model), torch.no_grad(), _capture(layer, grad=False) as store:
            model(torch.zeros(1, 1, 32, 32, device=probe.device, dtype=probe.dtype))
        return 1 + store["act"].shape[1]
    raise ValueError(f"unknown saliency method {method!r}; choose one of {list(SALIENCY_METHODS)}")
