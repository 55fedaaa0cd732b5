import json

import numpy as np
import pytest
import torch

from coinlib.classifier_training import (
    add_body_noise,
    epoch_learning_rate,
    load_classifier,
    random_flips,
    random_hide_patches,
    random_intensity,
    random_noise,
    roc_auc,
    roc_curve,
    train_classifier,
)
from coinlib.config import AnomalyConfig, ClassifierConfig


def test_roc_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3/4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.2]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_roc_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels, 1.0), 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))
    fpr, tpr = roc_curve(labels, scores)
    ref_fpr, ref_tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_random_intensity_is_a_seeded_clipped_affine_map_per_image():
    x = torch.linspace(-1, 1, 3 * 64).view(3, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_intensity(x, 0.0, generator) is x and torch.equal(generator.get_state(), state)
    a = random_intensity(x, 0.25, torch.Generator().manual_seed(2))
    assert torch.equal(a, random_intensity(x, 0.25, torch.Generator().manual_seed(2)))
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)
    for image, jittered in zip(x, a):  # (x + 1) * scale - 1 + shift, scale in [0.75, 1.25]
        inside = (jittered > -1) & (jittered < 1)
        slope = torch.diff(jittered[inside]) / torch.diff(image[inside])
        assert torch.allclose(slope, slope[0], atol=1e-4) and 0.75 <= slope[0] <= 1.25


def test_random_noise_is_seeded_on_the_body_only_with_std_up_to_strength():
    x = torch.full((64, 1, 32, 32), 0.0)
    x[:, :, :, :8] = -1  # air and fat: untouched
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_noise(x, 0.0, generator) is x and torch.equal(generator.get_state(), state)
    a = random_noise(x, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_noise(x, 0.2, torch.Generator().manual_seed(3)))
    assert torch.equal(a[:, :, :, :8], x[:, :, :, :8]) and a.min() >= -1 and a.max() <= 1
    per_image = (a - x)[:, :, :, 8:].flatten(1).std(1)
    assert per_image.max() <= 0.2 * 1.1 and per_image.min() < 0.05  # std U(0, 0.2) per image
    # E[sigma^2] = s^2 / 3 for sigma ~ U(0, s)
    assert (a - x)[:, :, :, 8:].pow(2).mean().sqrt() == pytest.approx(0.2 / 3 ** 0.5, rel=0.15)


def test_random_hide_patches_hides_whole_cells_with_the_image_mean_at_the_given_rate():
    x = torch.randn(400, 1, 12, 12)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_hide_patches(x, 0, 0.5, generator) is x and torch.equal(generator.get_state(), state)
    a = random_hide_patches(x, 4, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, random_hide_patches(x, 4, 0.3, torch.Generator().manual_seed(1)))
    mean = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    hidden = a == mean
    # every 3 x 3 cell is hidden whole or not at all, and only hidden pixels change
    cells = hidden.view(400, 4, 3, 4, 3).permute(0, 1, 3, 2, 4).flatten(3)
    assert torch.equal(cells.all(-1), cells.any(-1))
    assert torch.equal(a[~hidden], x[~hidden])
    assert cells.all(-1).float().mean() == pytest.approx(0.3, abs=0.03)  # 6400 cells at p = 0.3
    assert torch.equal(random_hide_patches(x, 4, 0.0, torch.Generator()), x)
    # cells of ceil(H / grid) pixels: a 10-pixel side in a grid of 4 gives cells of 3, 3, 3, 1
    b = random_hide_patches(torch.randn(1, 1, 10, 10), 4, 1.0)
    assert torch.all(b == b[0, 0, 0, 0])


def test_add_body_noise_has_the_given_std_per_image_and_spares_the_background():
    x = torch.full((2, 1, 64, 64), -0.2)
    x[:, :, :8] = -1
    a = add_body_noise(x, torch.tensor([0.05, 0.2]), torch.Generator().manual_seed(0))
    assert torch.equal(a[:, :, :8], x[:, :, :8])
    stds = (a - x)[:, :, 8:].flatten(1).std(1)
    assert stds[0] == pytest.approx(0.05, rel=0.05) and stds[1] == pytest.approx(0.2, rel=0.05)
    assert torch.equal(add_body_noise(x, 0.1, torch.Generator().manual_seed(1)),
                       add_body_noise(x, torch.tensor([0.1, 0.1]), torch.Generator().manual_seed(1)))
    # random_noise is add_body_noise with sigma ~ U(0, s) drawn first from the same generator
    g = torch.Generator().manual_seed(4)
    sigma = torch.rand(2, generator=g) * 0.3
    assert torch.equal(random_noise(x, 0.3, torch.Generator().manual_seed(4)), add_body_noise(x, sigma, g))


def test_random_flips_are_flips_and_seeded():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    a = random_flips(x, torch.Generator().manual_seed(1))
    b = random_flips(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for image, flipped in zip(x, a):
        candidates = [image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)]
        assert any(torch.equal(flipped, c) for c in candidates)


def test_epoch_learning_rate_constant_and_cosine():
    constant = ClassifierConfig(lr=1e-3, max_epochs=4)
    assert [epoch_learning_rate(constant, e) for e in range(4)] == [1e-3] * 4
    cosine = ClassifierConfig(lr=1e-3, max_epochs=4, lr_schedule="cosine")
    rates = [epoch_learning_rate(cosine, e) for e in range(4)]
    # lr * (1 + cos(pi e / 4)) / 2: 1, 0.854, 0.5, 0.146 (x 1e-3), never 0 within the epochs
    assert rates == pytest.approx([1e-3, 0.8536e-3, 0.5e-3, 0.1464e-3], rel=1e-3)


def test_cosine_schedule_resumes_with_the_same_rates(tiny_prepared, tmp_path, monkeypatch):
    import coinlib.classifier_training as training

    config = ClassifierConfig(max_epochs=3, steps_per_epoch=2, batch_size=8, patience=5, lr_schedule="cosine")
    train_classifier(tiny_prepared, config, AnomalyConfig(), tmp_path / "whole", device="cpu", progress=False)
    refresh, calls = training.refresh_batchnorm, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return refresh(*args, **kwargs)

    monkeypatch.setattr(training, "refresh_batchnorm", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_prepared, config, AnomalyConfig(), tmp_path / "parts", device="cpu", progress=False)
    monkeypatch.setattr(training, "refresh_batchnorm", refresh)
    train_classifier(tiny_prepared, config, AnomalyConfig(), tmp_path / "parts", device="cpu", progress=False)
    history = json.loads((tmp_path / "whole" / "classifier_history.json").read_text())
    assert len(history) == 3
    assert history == json.loads((tmp_path / "parts" / "classifier_history.json").read_text())


def test_training_writes_history_best_and_resumes(tiny_prepared, tmp_path):
    config = ClassifierConfig(max_epochs=2, steps_per_epoch=2, batch_size=8, patience=5)
    best = train_classifier(tiny_prepared, config, AnomalyConfig(), tmp_path, device="cpu", progress=False)
    history = json.loads((tmp_path / "classifier_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert best.is_file() and (tmp_path / "classifier.json").is_file()
    stamp = best.stat().st_mtime_ns
    train_classifier(tiny_prepared, config, AnomalyConfig(), tmp_path, device="cpu", progress=False)
    assert best.stat().st_mtime_ns == stamp  # finished: reused, not retrained
    model = load_classifier(tmp_path, "cpu")
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="different config"):
        train_classifier(tiny_prepared, ClassifierConfig(max_epochs=3), AnomalyConfig(), tmp_path,
                         device="cpu", progress=False)


def test_refresh_batchnorm_sets_running_stats_to_the_batches_average():
    from torch import nn

    from coinlib.classifier_training import refresh_batchnorm

    model = nn.Sequential(nn.BatchNorm2d(1))
    model.eval()
    data = [torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 3.0)]
    refresh_batchnorm(model, [{"image": d} for d in data], torch.device("cpu"))
    bn = model[0]
    assert bn.running_mean.item() == pytest.approx(2.0)  # mean of the two batch means
    assert bn.momentum == 0.1 and not model.training


def test_shift_scale_rotate_is_seeded_and_keeps_the_image_in_frame():
    from coinlib.classifier_training import random_shift_scale_rotate

    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    same = random_shift_scale_rotate(x, torch.Generator().manual_seed(1), shift=0, scale=0, degrees=0)
    torch.testing.assert_close(same, x)  # no shift, zoom or rotation: the identity
    a = random_shift_scale_rotate(x, torch.Generator().manual_seed(1))
    b = random_shift_scale_rotate(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.shape == x.shape and not torch.equal(a[0], a[1])  # each image its own draw
    assert torch.all(a.sum(dim=(1, 2, 3)) > 0.6 * 64)  # a centred square stays mostly in frame
