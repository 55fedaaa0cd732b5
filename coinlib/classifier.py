"""The classifier f: the frozen black box that COIN explains (paper Sec. 3.1, 4.3).

ResNet18 for the synthetic anomalies, EfficientNetV2-S for real tumours (the paper; the authors' code):
torchvision's architectures built with ``weights=None`` (nothing is ever downloaded), the
first convolution replaced for one input channel and the last layer for one logit.

- :func:`build_classifier` -> :class:`BinaryClassifier`: ``x (B, 1, H, W) in [-1, 1]`` ->
  logits ``(B,)``; ``p_abnormal = sigmoid(logits)``; abnormal when ``p_abnormal >= t``
  (``ClassifierConfig.threshold``, Sec. 3.1).
- :func:`classifier_target_layer`: the layer saliency methods hook (ResNet18 ``layer4``,
  EfficientNetV2 last feature block; the authors' evaluation code).
- :func:`classifier_features`: penultimate features ``(B, F)`` (F = 512 / 1280), e.g. for a
  Frechet distance in the classifier's own feature space.
- :func:`freeze`: eval mode and no parameter gradients, for GAN training (Sec. 4.3: "the
  parameters of the classifier remain frozen"); gradients still flow to the *input*, which
  is what the classifier-consistency loss L_f (Eq. 3) needs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision import models

from .config import ClassifierConfig
from .runtime import load_weights

__all__ = [
    "ARCHS",
    "BinaryClassifier",
    "build_classifier",
    "classifier_target_layer",
    "target_layer_channels",
    "classifier_features",
    "freeze",
]

Arch = Literal["resnet18", "efficientnet_v2_s"]
ARCHS: tuple[str, ...] = ("resnet18", "efficientnet_v2_s")


class BinaryClassifier(nn.Module):
    """A torchvision backbone (``self.net``) with one input channel and one output logit.

    ``forward(x)``: ``x (B, 1, H, W) in [-1, 1]`` -> logits ``(B,)``.
    ``penultimate(x)``: the globally pooled features before the last linear layer, ``(B, F)``.
    H and W should be multiples of 32 (both backbones downsample by 32).
    """

    def __init__(self, arch: Arch, width: int = 64):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {arch!r}; choose one of {list(ARCHS)}")
        if width < 1 or (arch != "resnet18" and width != 64):
            raise ValueError(f"classifier width {width}: ResNet18 takes any width >= 1, {arch} only 64")
        self.arch, self.width = arch, width
        if arch == "resnet18":
            net = _resnet18(width)
        else:
            net = models.efficientnet_v2_s(weights=None, num_classes=1)
            old = net.features[0][0]
            net.features[0][0] = nn.Conv2d(
                1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
            nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
            # torchvision draws the last layer from U(-1/sqrt(out), 1/sqrt(out)): for one
            # logit that is U(-1, 1) over 1280 features, initial logits of several units and
            # a BCE near 2 that stalled training from scratch. Use the fan-in range instead.
            head = net.classifier[-1]
            bound = 1.0 / head.in_features**0.5
            nn.init.uniform_(head.weight, -bound, bound)
            nn.init.zeros_(head.bias)
        self.net = net

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.arch == "resnet18":
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        else:
            x = net.features(x)
        return torch.flatten(net.avgpool(x), 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` from penultimate features ``(B, F)``."""
        last = self.net.fc if self.arch == "resnet18" else self.net.classifier
        return last(features).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(x))


def _resnet18(width: int) -> models.ResNet:
    """torchvision's ResNet18 with one input channel, one logit and base width ``width``.

    ``width`` 64 is torchvision's network exactly; another width rebuilds the stem and the four
    stages with ``width x (1, 2, 4, 8)`` channels through torchvision's own ``_make_layer`` and
    initialises them as torchvision does (Kaiming normal, fan-out; BatchNorm 1 and 0).
    """
    net = models.resnet18(weights=None, num_classes=1)
    if width != 64:
        net.inplanes = width
        net.bn1 = nn.BatchNorm2d(width)
        for i in range(4):
            layer = net._make_layer(models.resnet.BasicBlock, width * 2**i, 2, stride=1 if i == 0 else 2)
            setattr(net, f"layer{i + 1}", layer)
        net.fc = nn.Linear(8 * width, 1)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    net.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def build_classifier(config: ClassifierConfig) -> BinaryClassifier:
    """The classifier ``config.arch``: randomly initialised, or loaded from ``config.weights_path``.

    ``weights_path`` is a local file only: a bare ``state_dict`` of a :class:`BinaryClassifier`
    or a checkpoint written by ``coinlib.runtime.save_checkpoint`` with a ``"classifier"``
    entry; it is read with ``torch.load(weights_only=True)``. A missing file, or weights of
    the wrong architecture or shape, raise ``coinlib.runtime.CheckpointError`` (a
    ``ValueError``) naming the file. ImageNet weights are never downloaded: the images have
    one channel and the paper trains f from its own data.
    """
    model = BinaryClassifier(config.arch, config.width)
    if config.weights_path is not None:
        load_weights(config.weights_path, model, name="classifier")
    return model


def target_layer_channels(config: ClassifierConfig) -> int:
    """Channels of :func:`classifier_target_layer` for ``config``, without building the model:
    ResNet18's layer4 has 8 x width, EfficientNetV2-S's last block 1280 (what ScoreCAM's cost scales with)."""
    return 8 * config.width if config.arch == "resnet18" else 1280


def classifier_target_layer(model: BinaryClassifier, arch: str | None = None) -> nn.Module:
    """The layer whose activations saliency methods use (as the authors' evaluation code).

    ResNet18: ``layer4`` (512 channels, H/32). EfficientNetV2-S: the last block of
    ``features`` (the 1x1 conv-BN-SiLU to 1280 channels, H/32). ``arch`` defaults to
    ``model.arch``.
    """
    arch = arch or model.arch
    if arch == "resnet18":
        return model.net.layer4
    if arch == "efficientnet_v2_s":
        return model.net.features[-1]
    raise ValueError(f"unknown classifier arch {arch!r}; choose one of {list(ARCHS)}")


def classifier_features(model: BinaryClassifier, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of ``x (B, 1, H, W) in [-1, 1]``: ``(B, F)``, F = 512 or 1280."""
    return model.penultimate(x)


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; return it.

    For the GAN stage (Sec. 4.3): the classifier's BatchNorm statistics and dropout stay
    fixed and it receives no gradient, while gradients still flow through it to its input
    (L_f, Eq. 3). Keep the frozen classifier outside the GAN modules, so that
    ``generator.train()`` cannot switch it back to training mode.
    """
    model.eval()
    model.requires_grad_(False)
    return model
