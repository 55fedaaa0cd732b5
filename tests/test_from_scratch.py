"""What notebook 02_coin_from_scratch asserts, as unit tests: Eq. 1-6 and 9-10 by hand on real
networks equal coinlib's training-step terms, and one step written out equals coinlib's step.

The hand computations here are independent of the notebook's: numpy float64 and explicit sums
over pixels, from the networks' outputs (eval mode, so every pass gives the same numbers).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from coinlib import losses
from coinlib.classifier import build_classifier, freeze
from coinlib.config import AnomalyConfig, ClassifierConfig, CounterfactualConfig, GANConfig
from coinlib.counterfactual import (
    build_networks,
    build_optimizers,
    counterfactual_step,
    discriminator_loss,
    generator_losses,
    make_conditions,
)
from coinlib.data import SliceDataset
from coinlib.gan import build_gan

GAN = GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32))
SINGLA = GANConfig(widths=GAN.widths, stem_width=8, disc_widths=GAN.disc_widths, conditions=2, perturbation=False)
TRAIN = CounterfactualConfig(lr=1e-3, batch_size=4, generator_every=1)


@pytest.fixture(scope="module")
def setting(tiny_prepared):
    torch.manual_seed(0)
    classifier = freeze(build_classifier(ClassifierConfig()))
    dataset = SliceDataset(tiny_prepared, "train", AnomalyConfig(), fresh_anomalies=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    return classifier, batch


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-z))


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    """Eq. 5 per image, then the batch mean: sum over pixels |a - b| / (H W)."""
    batch, _, height, width = a.shape
    return sum(np.abs(a[i, 0] - b[i, 0]).sum() / (height * width) for i in range(batch)) / batch


def _kl(target: np.ndarray, p: np.ndarray, clamp: float) -> float:
    t, p = np.clip(target, clamp, 1 - clamp), np.clip(p, clamp, 1 - clamp)
    return float(np.mean(t * np.log(t / p) + (1 - t) * np.log((1 - t) / (1 - p))))


def _tv(diff: np.ndarray) -> float:
    """Eq. 6 with explicit neighbour sums, on 255 * diff, per image / (H W), batch mean."""
    batch, _, height, width = diff.shape
    total = 0.0
    for i in range(batch):
        d = 255 * diff[i, 0]
        down = sum((d[r + 1, c] - d[r, c]) ** 2 for r in range(height - 1) for c in range(width))
        right = sum((d[r, c + 1] - d[r, c]) ** 2 for r in range(height) for c in range(width - 1))
        total += (down + right) / (height * width)
    return total / batch


def test_coin_terms_by_hand_equal_the_training_steps(setting):
    classifier, batch = setting
    x = batch["image"]
    torch.manual_seed(1)
    generator, discriminator = (m.eval() for m in build_gan(GAN))
    conditions = make_conditions(torch.zeros(len(x)), GAN, TRAIN)
    with torch.no_grad():
        x_cf = generator(x, conditions.counterfactual)
        x_cf_cf = generator(x_cf, conditions.counterfactual)
        real, fake = _np(discriminator(x, conditions.real)), _np(discriminator(x_cf, conditions.counterfactual))
        p_cf = _np(torch.sigmoid(classifier(x_cf)))
        step = generator_losses(generator, discriminator, classifier, x, conditions, GAN, TRAIN)
        d_step = discriminator_loss(generator, discriminator, x, conditions, TRAIN)
    xs, cfs, cfcfs = _np(x), _np(x_cf), _np(x_cf_cf)
    hand = {
        "adv": -_log_sigmoid(fake).mean(),                                         # Eq. 2, generator
        "f": _kl(np.full_like(p_cf, TRAIN.kl_eps), p_cf, TRAIN.prob_clamp),        # Eq. 3
        "idt": _l1(xs, cfs) + _l1(xs, cfcfs),                                      # Eq. 4-5
        "tv": _tv(np.abs(xs - cfs) / 2),                                           # Eq. 6
    }
    weights = {"adv": TRAIN.lambda_adv, "f": TRAIN.lambda_f, "idt": TRAIN.lambda_idt, "tv": TRAIN.lambda_tv}
    for name, value in hand.items():
        assert step[f"g_{name}"].item() == pytest.approx(weights[name] * value, rel=1e-5), name
    assert step["g_total"].item() == pytest.approx(sum(weights[k] * v for k, v in hand.items()), rel=1e-5)
    d_hand = -(_log_sigmoid(real).mean() + _log_sigmoid(-fake).mean()) / 2   # log(1 - sigma(z)) = log sigma(-z)
    assert d_step.item() == pytest.approx(d_hand, rel=1e-5)
    assert hand["f"] > 0 and math.isfinite(hand["tv"])


def test_singla_terms_by_hand_equal_the_training_steps(setting):
    classifier, batch = setting
    x = batch["image"]
    torch.manual_seed(2)
    generator, discriminator = (m.eval() for m in build_gan(SINGLA))
    with torch.no_grad():
        p_x = torch.sigmoid(classifier(x))
        conditions = make_conditions(p_x, SINGLA, TRAIN)
        # Eq. 9-10: ask for bin(1 - f(X)); the identity is asked with bin(f(X)), there and back too
        x_cf = generator(x, conditions.counterfactual)
        identity = generator(x, conditions.identity)
        back = generator(x_cf, conditions.identity)
        p_cf = _np(torch.sigmoid(classifier(x_cf)))
        step = generator_losses(generator, discriminator, classifier, x, conditions, SINGLA, TRAIN)
        kidney = batch["kidney_mask"]
        masks = torch.cat([kidney, 1 - kidney], dim=1)
        rec = losses.masked_l1(x, identity, masks)
    target = np.clip(1 - _np(p_x), TRAIN.kl_eps, 1 - TRAIN.kl_eps)
    # abs: near its minimum the KL is a float32 difference of nearly equal logs (coinlib's precision)
    assert step["g_f"].item() == pytest.approx(TRAIN.lambda_f * _kl(target, p_cf, TRAIN.prob_clamp), rel=1e-5,
                                               abs=1e-7)
    xs = _np(x)
    assert step["g_idt"].item() == pytest.approx(TRAIN.lambda_idt * (_l1(xs, _np(identity)) + _l1(xs, _np(back))),
                                                 rel=1e-5)
    # Eq. 11: within each label, the mean error over its pixels; summed over the labels
    err, s = np.abs(xs - _np(identity))[:, 0], _np(masks)
    by_label = [np.mean([(s[i, j] * err[i]).sum() / s[i, j].sum() for i in range(len(xs))]) for j in range(2)]
    assert rec.item() == pytest.approx(sum(by_label), rel=1e-5)


def test_one_step_written_out_equals_coinlibs_step(setting, fp32):
    """The notebook's step by hand: D up Eq. 2 with x_cf fixed, then Enc/Dec down Eq. 1, D frozen."""
    # fp32: coinlib's step runs under bf16 autocast on a native-bf16 CPU; the hand-written one is fp32
    classifier, batch = setting
    device = torch.device("cpu")
    torch.manual_seed(3)
    start_g, start_d, _ = build_networks(GAN, TRAIN, classifier, device)
    ours, theirs = (copy.deepcopy(start_g), copy.deepcopy(start_d)), (copy.deepcopy(start_g), copy.deepcopy(start_d))
    ours_opt, theirs_opt = build_optimizers(*ours, TRAIN, device), build_optimizers(*theirs, TRAIN, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last)
    generator, discriminator = ours
    c = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        x_cf = generator(x, c)
    d_loss = losses.adversarial_d_loss(discriminator(x, c), discriminator(x_cf, c))
    ours_opt["discriminator"].zero_grad()
    (TRAIN.lambda_adv * d_loss).backward()
    ours_opt["discriminator"].step()
    for p in discriminator.parameters():
        p.requires_grad_(False)
    x_cf = generator(x, c)
    total = (TRAIN.lambda_adv * losses.adversarial_g_loss(discriminator(x_cf, c))
             + TRAIN.lambda_f * losses.classifier_consistency_loss(torch.sigmoid(classifier(x_cf)), None,
                                                                   eps=TRAIN.kl_eps, clamp=TRAIN.prob_clamp)
             + TRAIN.lambda_idt * losses.self_consistency_loss(x, x_cf, generator(x_cf, c))
             + TRAIN.lambda_tv * losses.total_variation_loss((x - x_cf).abs() / 2))
    ours_opt["generator"].zero_grad()
    total.backward()
    ours_opt["generator"].step()
    out = counterfactual_step(*theirs, classifier, theirs_opt, {"image": x}, GAN, TRAIN, True, device)
    assert torch.equal(out["d_adv"], d_loss.detach()) and torch.equal(out["g_total"], total.detach())
    for mine, coinlibs in zip(ours, theirs):
        for (name, a), b in zip(mine.state_dict().items(), coinlibs.state_dict().values()):
            assert torch.equal(a, b), name
    moved = max((a - a0).abs().max().item() for a, a0 in zip(ours[0].parameters(), start_g.parameters()))
    assert moved == pytest.approx(TRAIN.lr, rel=1e-3)  # beta1 = 0: Adam's first step is +-lr
