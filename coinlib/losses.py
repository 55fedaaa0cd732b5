"""The GAN objective, Eq. (1): pure functions, one per term (paper Sec. 3.3, App. 7.1).

    min_{E,G} max_D  lambda_adv L_GAN + lambda_f L_f + lambda_idt L_idt + lambda_tv L_tv   (1)

Every function returns a scalar tensor (a mean over the batch) and does not synchronise
with the host. Glossary: ``x``, ``x_cf`` are ``(B, 1, H, W) in [-1, 1]``; probabilities
(``p_cf = f(x_cf)``) are ``(B,)`` in [0, 1]; ``diff_map = |x - x_cf| / 2`` is on [0, 1].

COIN vs Singla* (App. 7.1):

==============  ===============================  ======================================
term            COIN                             Singla*
==============  ===============================  ======================================
L_f             KL(f(x_cf) || eps), Eq. 3         KL(f(x_cf) || 1 - f(x)), Eq. 9
L_idt           L1(x, E(x)) + L1(x, E(E(x))),     L_rec(x, E(x, f(x)))
                Eq. 4-5                           + L_rec(x, E(E(x, 1 - f(x)), f(x))),
                                                  Eq. 10; L_rec = masked_l1 with masks
                                                  (Eq. 11), plain L1 without
L_tv            Eq. 6 on diff_map                 not used (lambda_tv = 0)
==============  ===============================  ======================================
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .config import CounterfactualConfig

__all__ = [
    "adversarial_d_loss",
    "adversarial_g_loss",
    "binary_kl",
    "classifier_consistency_loss",
    "l1",
    "masked_l1",
    "self_consistency_loss",
    "total_variation_loss",
    "GeneratorLossTerms",
    "total_generator_loss",
]

AdvKind = Literal["bce", "hinge"]


def adversarial_d_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: AdvKind = "bce"
) -> torch.Tensor:
    """Discriminator side of L_GAN, Eq. (2); logits ``(B,)`` -> scalar.

    ``bce``: ``(BCE(D(x), 1) + BCE(D(x_cf), 0)) / 2`` on logits, i.e. minus Eq. 2 averaged
    over its two expectations (the implementation's ``d_loss``). ``hinge``:
    ``(mean relu(1 - D(x)) + mean relu(1 + D(x_cf))) / 2``.
    """
    if kind == "bce":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    elif kind == "hinge":
        real = F.relu(1.0 - real_logits).mean()
        fake = F.relu(1.0 + fake_logits).mean()
    else:
        raise ValueError(f"adversarial loss kind {kind!r}; choose 'bce' or 'hinge'")
    return (real + fake) / 2


def adversarial_g_loss(fake_logits: torch.Tensor, kind: AdvKind = "bce") -> torch.Tensor:
    """Generator side of L_GAN, Eq. (2); logits ``(B,)`` -> scalar.

    ``bce``: the non-saturating ``BCE(D(x_cf), 1)``; ``hinge``: ``-mean D(x_cf)``.
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"adversarial loss kind {kind!r}; choose 'bce' or 'hinge'")


def binary_kl(target: torch.Tensor | float, p: torch.Tensor, clamp: float = 1e-5) -> torch.Tensor:
    """Per-sample KL(Bernoulli(target) || Bernoulli(p)), both clamped to [clamp, 1 - clamp].

    ``t log(t / p) + (1 - t) log((1 - t) / (1 - p))``; ``p (B,)``, ``target`` a float or
    ``(B,)``; returns ``(B,)``, zero where ``p == target``.
    """
    p = p.clamp(clamp, 1.0 - clamp)
    t = torch.as_tensor(target, dtype=p.dtype, device=p.device).clamp(clamp, 1.0 - clamp)
    return t * torch.log(t / p) + (1 - t) * torch.log((1 - t) / (1 - p))


def classifier_consistency_loss(
    p_cf: torch.Tensor,
    target: torch.Tensor | float | None = None,
    *,
    eps: float = 1e-6,
    clamp: float = 1e-5,
) -> torch.Tensor:
    """Classifier-consistency loss L_f: ``mean_b KL(target_b || p_cf_b)``, binary KL.

    ``p_cf = f(x_cf)``, ``(B,)`` probabilities of "abnormal" (with gradient). ``target`` is
    the desired probability, without gradient: ``None`` -> ``eps`` for COIN (Eq. 3, "KL(f(x_cf)
    || 0)": the implementation's target 1e-6); ``1 - f(x)`` for Singla* (Eq. 9).

    Argument order: the paper writes KL(f(x_cf) || target), but the implementation (and
    this function) computes KL(target || p_cf) = sum over {abnormal, normal} of
    ``t log(t / p)``, which is what ``torch.nn.KLDivLoss(input=log p, target=t)`` computes;
    it is minimised (zero) at ``p_cf == target``. As in the implementation both the
    probability and the target are clamped to [clamp, 1 - clamp] (so eps = 1e-6 acts as
    1e-5; the minimum moves by less than 1e-5), which keeps the logs finite.
    """
    return binary_kl(eps if target is None else target, p_cf, clamp).mean()


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (5): ``||x - y||_1 / (H W)`` per one-channel image, averaged over the batch.

    ``x, y: (B, C, H, W)``; equals the mean absolute difference over all elements (for C > 1
    it is also averaged over channels).
    """
    return (x - y).abs().mean()


def masked_l1(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. (11): L1 averaged over each label's foreground pixels, summed over labels.

    ``x, y: (B, 1, H, W)``; ``masks: (B, J, H, W)`` in {0, 1} (one channel per label j).
    For image b and label j: ``sum(S_bj |x_b - y_b|) / sum(S_bj)``; these are averaged over
    the batch and summed over j. A label with no foreground pixels in an image contributes 0
    for that image (the image still counts in the batch mean, as in the implementation).
    """
    masks = masks.to(x.dtype)
    err = (x - y).abs().sum(dim=1, keepdim=True)  # (B, 1, H, W)
    total = (masks * err).sum(dim=(2, 3))  # (B, J)
    count = masks.sum(dim=(2, 3))
    per_label = torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))
    return per_label.mean(dim=0).sum()


def self_consistency_loss(
    x: torch.Tensor,
    x_cf: torch.Tensor,
    x_cf_cf: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    cycle_target: Literal["x", "x_cf"] = "x",
) -> torch.Tensor:
    """Domain-aware self-consistency L_idt, Eq. (4) (COIN) and Eq. (10) (Singla*).

    ``L(x, x_cf) + L(ref, x_cf_cf)`` with ``L`` = :func:`l1` (Eq. 5), or :func:`masked_l1`
    (Eq. 11) when ``masks (B, J, H, W)`` are given. All images ``(B, 1, H, W)``.

    COIN: ``x_cf = E(x)``, ``x_cf_cf = E(E(x))``. Singla*: ``x_cf = E(x, f(x))`` (the
    identity generation) and ``x_cf_cf = E(E(x, 1 - f(x)), f(x))`` (there and back).
    ``cycle_target``: ``"x"`` compares the second generation with ``x`` as the paper
    writes; ``"x_cf"`` with ``x_cf``, as the authors' COIN implementation does.
    """
    term = l1 if masks is None else (lambda a, b: masked_l1(a, b, masks))
    if cycle_target not in ("x", "x_cf"):
        raise ValueError(f"cycle_target {cycle_target!r}; choose 'x' or 'x_cf'")
    ref = x if cycle_target == "x" else x_cf
    return term(x, x_cf) + term(ref, x_cf_cf)


def total_variation_loss(diff_map: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Eq. (6): squared neighbour differences of ``scale * diff_map``, summed, / (H W).

    ``diff_map: (B, C, H, W)``, ``|x - x_cf| / 2`` on [0, 1]. Per image: (sum of squared
    vertical differences + sum of squared horizontal ones) / (H W), summed over channels;
    averaged over the batch. A constant map gives 0.

    ``scale = 255`` (default) measures the map in 8-bit grey levels as the implementation
    does, so its ``lambda_tv = 0.05`` (``CounterfactualConfig.lambda_tv``) keeps its weight;
    ``scale = 1`` is the [0, 1] scale, where the same weight would be ``0.05 * 255^2 ~ 3251``.
    (The implementation divides the two sums by (H - 1) W and H (W - 1) instead of H W: a
    factor H / (H - 1), under 1 % at 128 px and above.)
    """
    d = diff_map * scale
    dh = (d[..., 1:, :] - d[..., :-1, :]).pow(2).sum(dim=(1, 2, 3))
    dw = (d[..., :, 1:] - d[..., :, :-1]).pow(2).sum(dim=(1, 2, 3))
    height, width = d.shape[-2:]
    return ((dh + dw) / (height * width)).mean()


class GeneratorLossTerms(NamedTuple):
    """The four generator terms of Eq. (1), each a scalar tensor (unweighted)."""

    adv: torch.Tensor
    f: torch.Tensor
    idt: torch.Tensor
    tv: torch.Tensor


def total_generator_loss(terms: GeneratorLossTerms, config: CounterfactualConfig) -> torch.Tensor:
    """Eq. (1) for E and G: ``lambda_adv adv + lambda_f f + lambda_idt idt + lambda_tv tv``."""
    return (
        config.lambda_adv * terms.adv
        + config.lambda_f * terms.f
        + config.lambda_idt * terms.idt
        + config.lambda_tv * terms.tv
    )
