"""coinlib.gan: every configuration (conditions x skips x perturbation), 64 px, tiny widths."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils import parametrize

from coinlib.classifier import build_classifier, freeze
from coinlib.config import ClassifierConfig, GANConfig
from coinlib.gan import (
    ConditionalBatchNorm2d,
    Discriminator,
    Generator,
    build_gan,
    condition_from_probability,
)
from coinlib.losses import adversarial_g_loss, classifier_consistency_loss

WIDTHS = (8, 8, 16, 16, 32)
SIZE = 64


def tiny(**kw) -> GANConfig:
    return GANConfig(widths=WIDTHS, stem_width=8, disc_widths=WIDTHS, **kw)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, SIZE, SIZE, generator=g) * 2 - 1


@pytest.mark.parametrize(
    "conditions,skips,perturbation", list(itertools.product((1, 2), range(5), (True, False)))
)
def test_every_configuration_shapes_and_range(conditions, skips, perturbation):
    torch.manual_seed(0)
    config = tiny(conditions=conditions, skips=skips, perturbation=perturbation)
    generator, discriminator = build_gan(config)
    x = images()
    c = torch.tensor([0, conditions - 1])
    z, features = generator.encode(x)
    assert z.shape == (2, 32, 2, 2)
    assert [f.shape[1:] for f in features] == [(8, 32, 32), (8, 16, 16), (16, 8, 8), (16, 4, 4)]
    # up block i (1..skips) reads the encoder feature of its input resolution
    blocks = generator.decoder.blocks
    expected_in = [32] + [WIDTHS[5 - i] + (WIDTHS[4 - i] if i <= skips else 0) for i in range(1, 5)]
    assert [b.conv1.in_channels for b in blocks] == expected_in
    x_cf = generator(x, c)
    assert x_cf.shape == x.shape
    assert torch.isfinite(x_cf).all() and x_cf.abs().max() < 1
    logits = discriminator(x_cf, c)
    assert logits.shape == (2,)


def test_perturbation_adds_the_input_before_tanh():
    x = images()
    for perturbation, expected in ((True, torch.tanh(x)), (False, torch.zeros_like(x))):
        generator, _ = build_gan(tiny(perturbation=perturbation))
        with torch.no_grad():  # G outputs exactly zero
            generator.decoder.head.weight.zero_()
            generator.decoder.head.bias.zero_()
        torch.testing.assert_close(generator(x), expected)


def test_condition_none_means_zero_and_channels_last_matches():
    torch.manual_seed(0)
    generator, discriminator = build_gan(tiny(conditions=2))
    generator.eval(), discriminator.eval()
    x = images()
    zeros = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(generator(x), generator(x, zeros))
    torch.testing.assert_close(discriminator(x), discriminator(x, zeros))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        generator.to(memory_format=torch.channels_last)(x_cl), generator(x), atol=1e-5, rtol=1e-4
    )


def test_conditional_batch_norm_uses_the_condition():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, conditions=2).eval()
    h = torch.randn(3, 4, 5, 5)
    c0, c1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert torch.allclose(cbn.gamma.weight.mean(), torch.tensor(1.0), atol=0.05)
    assert (cbn.beta.weight == 0).all()
    with torch.no_grad():
        cbn.gamma.weight[1] = 2.0
        cbn.beta.weight[1] = -1.0
    normed = cbn.bn(h)
    torch.testing.assert_close(cbn(h, c1), 2.0 * normed - 1.0)
    torch.testing.assert_close(cbn(h, c0), cbn.gamma.weight[0][:, None, None] * normed)

    generator, _ = build_gan(tiny(conditions=2))
    generator.eval()
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, ConditionalBatchNorm2d):
                module.beta.weight[1] = 0.5
    x = images()
    zeros, ones = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert not torch.allclose(generator(x, zeros), generator(x, ones))


def test_spectral_norm_everywhere_in_the_discriminator():
    _, discriminator = build_gan(tiny())
    kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)
    weighted = [m for m in discriminator.modules() if isinstance(m, kinds)]
    # 5 down blocks (2 convs + shortcut), the last block (2 convs), linear, embedding
    assert len(weighted) == 5 * 3 + 2 + 2
    assert all(parametrize.is_parametrized(m, "weight") for m in weighted)
    generator, _ = build_gan(tiny())
    shortcuts = [b.shortcut for b in [*generator.encoder.blocks, *generator.decoder.blocks]]
    assert all(parametrize.is_parametrized(m, "weight") for m in shortcuts)


def test_discriminator_projection_term():
    torch.manual_seed(0)
    discriminator = Discriminator(WIDTHS, conditions=2).eval()
    x = images()
    c = torch.tensor([0, 1])
    h = discriminator.features(x)
    assert h.shape == (2, 32)
    expected = discriminator.linear(h).squeeze(1) + (discriminator.embed.weight[c] * h).sum(1)
    torch.testing.assert_close(discriminator(x, c), expected)
    # the condition changes the logit by exactly <embed(1) - embed(0), h>
    ones, zeros = torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    delta = discriminator(x, ones) - discriminator(x, zeros)
    w = discriminator.embed.weight
    torch.testing.assert_close(delta, ((w[1] - w[0]) * h).sum(1))


def test_condition_from_probability():
    p = torch.tensor([0.0, 0.49, 0.5, 0.99, 1.0])
    assert condition_from_probability(p, 1).tolist() == [0, 0, 0, 0, 0]
    assert condition_from_probability(p, 2).tolist() == [0, 0, 1, 1, 1]
    assert condition_from_probability(p, 10).tolist() == [0, 4, 5, 9, 9]
    assert condition_from_probability(p, 2).dtype == torch.long


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="skips"):
        build_gan(tiny(skips=5))
    generator, _ = build_gan(tiny())
    with pytest.raises(ValueError, match="multiple of 32"):
        generator(torch.zeros(1, 1, 48, 40))
    with pytest.raises(ValueError, match="needs x"):
        z, features = generator.encode(images())
        generator.decode(z, features, None)


def test_generator_gradients_with_a_frozen_classifier():
    torch.manual_seed(0)
    generator, discriminator = build_gan(tiny(skips=4))
    classifier = freeze(build_classifier(ClassifierConfig(arch="resnet18")))
    x = images()
    x_cf = generator(x)
    p_cf = torch.sigmoid(classifier(x_cf))
    loss = adversarial_g_loss(discriminator(x_cf)) + classifier_consistency_loss(p_cf)
    loss.backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    assert not classifier.training
    # only the condition used (0) gets a gradient in the embeddings
    generator2 = Generator(WIDTHS, 8, conditions=2, skips=0)
    generator2(x, torch.zeros(2, dtype=torch.long)).sum().backward()
    gamma = generator2.decoder.blocks[0].cbn1.gamma.weight.grad
    assert gamma[0].abs().sum() > 0 and (gamma[1] == 0).all()
