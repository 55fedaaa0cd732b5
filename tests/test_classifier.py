"""coinlib.classifier: both architectures at 64 px with one channel; local weights only."""

from __future__ import annotations

import pytest
import torch

from coinlib.classifier import (
    build_classifier,
    classifier_features,
    classifier_target_layer,
    freeze,
    target_layer_channels,
)
from coinlib.config import ClassifierConfig
from coinlib.runtime import CheckpointError, save_checkpoint


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the classifier tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("arch,dims", [("resnet18", 512), ("efficientnet_v2_s", 1280)])
def test_forward_shapes_target_layer_and_features(arch, dims):
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch=arch)).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        logits = model(x)
        features = classifier_features(model, x)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert features.shape == (2, dims)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    layer = classifier_target_layer(model, arch)
    expected = model.net.layer4 if arch == "resnet18" else model.net.features[-1]
    assert layer is expected and classifier_target_layer(model) is expected
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen == [(2, dims, 2, 2)]  # H / 32
    assert target_layer_channels(ClassifierConfig(arch=arch)) == dims


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_v2_s"])
def test_initial_logits_are_small_so_training_starts_at_the_bce_of_a_coin_toss(arch):
    # torchvision's EfficientNet head for one output is U(-1, 1): logits of several units
    # and a starting BCE near 2, which stalled training from scratch on the tumour track
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch=arch)).train()
    x = torch.rand(16, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        logits = model(x)
    assert logits.abs().max() < 1.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros(16))
    assert bce < 1.0


def test_head_of_penultimate_is_forward():
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig()).eval()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.head(model.penultimate(x)), model(x))


def test_local_weights_load(tmp_path):
    torch.manual_seed(0)
    source = build_classifier(ClassifierConfig())
    bare = tmp_path / "bare.pt"
    torch.save(source.state_dict(), bare)
    checkpoint = save_checkpoint(tmp_path / "classifier.pt", {"classifier": source}, {"run": 1})
    for path in (bare, checkpoint):
        torch.manual_seed(1)
        loaded = build_classifier(ClassifierConfig(weights_path=str(path)))
        for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), name


def test_missing_and_mismatched_weights_name_the_file(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        build_classifier(ClassifierConfig(weights_path=str(missing)))
    state = build_classifier(ClassifierConfig()).state_dict()
    state["net.fc.weight"] = torch.zeros(2, 512)  # two logits instead of one
    wrong = tmp_path / "wrong_shape.pt"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match="wrong_shape.pt"):
        build_classifier(ClassifierConfig(weights_path=str(wrong)))


def test_freeze_keeps_input_gradients():
    model = freeze(build_classifier(ClassifierConfig()))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_()
    torch.sigmoid(model(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
