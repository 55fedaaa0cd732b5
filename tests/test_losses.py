"""coinlib.losses: every term of Eq. (1) against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from coinlib.config import CounterfactualConfig
from coinlib.losses import (
    GeneratorLossTerms,
    adversarial_d_loss,
    adversarial_g_loss,
    binary_kl,
    classifier_consistency_loss,
    l1,
    masked_l1,
    self_consistency_loss,
    total_generator_loss,
    total_variation_loss,
)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(a: torch.Tensor, b: float) -> None:
    assert a.dim() == 0
    assert a.item() == pytest.approx(b, rel=1e-9, abs=1e-12)


# --- L_GAN, Eq. (2) ---------------------------------------------------------------------


def test_adversarial_bce():
    # BCE(l, 1) = log(1 + e^-l), BCE(l, 0) = log(1 + e^l)
    real, fake = t(2.0, 0.0), t(-1.0, 0.0)
    d_real = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    d_fake = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    close(adversarial_d_loss(real, fake), (d_real + d_fake) / 2)
    close(adversarial_g_loss(fake), (math.log(1 + math.exp(1.0)) + math.log(2.0)) / 2)
    close(adversarial_d_loss(t(0.0), t(0.0)), math.log(2.0))


def test_adversarial_hinge():
    real, fake = t(0.5, 2.0), t(-2.0, 0.0)
    # real: relu(1 - 0.5) = 0.5, relu(1 - 2) = 0 -> mean 0.25
    # fake: relu(1 + (-2)) = 0, relu(1 + 0) = 1 -> mean 0.5
    close(adversarial_d_loss(real, fake, "hinge"), (0.25 + 0.5) / 2)
    close(adversarial_g_loss(fake, "hinge"), 1.0)  # -mean(-2, 0)
    with pytest.raises(ValueError):
        adversarial_g_loss(fake, "mse")


# --- L_f, Eq. (3) and (9) ---------------------------------------------------------------


def test_binary_kl_by_hand():
    # KL(0.25 || 0.5) = 0.25 log(0.25 / 0.5) + 0.75 log(0.75 / 0.5)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    close(classifier_consistency_loss(t(0.5), 0.25), expected)
    assert expected == pytest.approx(0.130812, abs=1e-6)
    # batch mean; per-sample target (Singla*: 1 - f(x))
    p_cf, f_x = t(0.5, 0.9), t(0.75, 0.2)
    kl2 = 0.8 * math.log(0.8 / 0.9) + 0.2 * math.log(0.2 / 0.1)
    close(classifier_consistency_loss(p_cf, 1 - f_x), (expected + kl2) / 2)
    # agrees with torch's KLDivLoss over the two outcomes {abnormal, normal}
    p, q = t(0.3, 0.8), t(0.6, 0.1)
    torch_kl = torch.nn.functional.kl_div(
        torch.stack([p, 1 - p], 1).log(), torch.stack([q, 1 - q], 1), reduction="sum"
    ) / 2
    close(classifier_consistency_loss(p, q), torch_kl.item())


def test_kl_zero_at_target_and_coin_default():
    p = t(0.1, 0.5, 0.97)
    torch.testing.assert_close(binary_kl(p, p), torch.zeros(3, dtype=torch.float64))
    # COIN: target eps = 1e-6 is clamped to 1e-5 like the probabilities, so p = 1e-5 costs 0
    close(classifier_consistency_loss(t(1e-5)), 0.0)
    # p = 0.5: KL(1e-5 || 0.5) = 1e-5 log(1e-5 / 0.5) + (1 - 1e-5) log((1 - 1e-5) / 0.5)
    e = 1e-5
    expected = e * math.log(e / 0.5) + (1 - e) * math.log((1 - e) / 0.5)
    close(classifier_consistency_loss(t(0.5)), expected)
    # p = 0 or 1 stays finite (clamped)
    assert torch.isfinite(classifier_consistency_loss(t(0.0, 1.0), t(1.0, 0.0)))


def test_kl_gradient_pushes_towards_the_target():
    p = t(0.7).requires_grad_()
    classifier_consistency_loss(p).backward()  # target ~0: lower p
    assert p.grad.item() > 0


# --- L_idt, Eq. (4), (5), (10), (11) -------------------------------------------------------


X = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # (1, 1, 2, 2)


def test_l1_and_self_consistency():
    zeros, ones = torch.zeros_like(X), torch.ones_like(X)
    close(l1(X, zeros), 2 / 4)  # |0|+|1|+|1|+|0| over H W = 4
    # Eq. 4: L1(x, x_cf) + L1(x, x_cf_cf) = 0.5 + (1 + 0 + 0 + 1) / 4
    close(self_consistency_loss(X, zeros, ones), 0.5 + 0.5)
    # the implementation's second term: L1(x_cf, x_cf_cf) = |0 - 1| averaged = 1
    close(self_consistency_loss(X, zeros, ones, cycle_target="x_cf"), 0.5 + 1.0)
    # batch mean over images
    batch = torch.cat([X, X + 2])
    close(l1(batch, torch.zeros_like(batch)), (0.5 + 2.5) / 2)


def test_masked_l1_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    y = torch.zeros_like(x)
    masks = torch.tensor([[[[1, 1], [0, 0]], [[0, 0], [0, 1]]]])  # (1, J=2, 2, 2)
    # label 0: (0 + 1) / 2 = 0.5; label 1: 3 / 1 = 3; summed over labels
    close(masked_l1(x, y, masks), 0.5 + 3.0)
    # an empty label contributes 0
    empty = masks.clone()
    empty[:, 1] = 0
    close(masked_l1(x, y, empty), 0.5)
    # batch of two, label 1 empty in the second image: label 1 -> (3 + 0) / 2
    x2, y2 = torch.cat([x, x]), torch.zeros(2, 1, 2, 2)
    m2 = torch.cat([masks, empty])
    close(masked_l1(x2, y2, m2), 0.5 + 1.5)
    # Eq. 10 with masks: both terms use masked L1
    close(self_consistency_loss(x, y, y, masks), 2 * 3.5)
    # full mask = plain L1
    close(masked_l1(x, y, torch.ones(1, 1, 2, 2)), l1(x, y).item())


# --- L_tv, Eq. (6) --------------------------------------------------------------------------


def test_total_variation_by_hand():
    close(total_variation_loss(torch.full((2, 1, 4, 4), 0.3)), 0.0)
    d = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]], dtype=torch.float64)
    # vertical (2 - 0)^2 + (4 - 1)^2 = 13, horizontal (1 - 0)^2 + (4 - 2)^2 = 5; / (H W = 4)
    close(total_variation_loss(d, scale=1.0), 18 / 4)
    close(total_variation_loss(d), 18 / 4 * 255**2)  # default: 8-bit grey levels
    close(total_variation_loss(torch.cat([d, torch.zeros_like(d)]), scale=1.0), 18 / 4 / 2)


# --- Eq. (1) ---------------------------------------------------------------------------------


def test_total_generator_loss_weights():
    terms = GeneratorLossTerms(adv=t(1.0)[0], f=t(2.0)[0], idt=t(3.0)[0], tv=t(4.0)[0])
    # defaults: lambda_adv 1, lambda_f 5, lambda_idt 1, lambda_tv 0.05
    close(total_generator_loss(terms, CounterfactualConfig()), 1 + 10 + 3 + 0.2)
