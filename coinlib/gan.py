"""The one counterfactual GAN: encoder E, decoder G, discriminator D (paper Sec. 3.2, App. A).

SNGAN-style residual networks (Miyato et al.; sizes from the authors' code). COIN, Singla* and
every row of Table 3 are settings of :class:`~coinlib.config.GANConfig`:

- ``conditions``: 1 for COIN (the single "inpaint" condition, ``c`` all zeros); 2 for
  Singla*, where ``c = condition_from_probability(p, 2)`` bins a desired probability of
  "abnormal" into [0, 0.5) -> 0 ("make normal") and [0.5, 1] -> 1 ("make abnormal"). The
  counterfactual asks for ``c = bin(1 - f(x))``, the identity term of Eq. 10 for
  ``c = bin(f(x))``. Singla et al. use N = 10 bins of [0, 1]; any ``conditions`` works here.
- ``skips`` (0-4): encoder features concatenated into decoder up blocks ``1..skips``,
  counting the bottleneck block (whose input is z) as block 0, as the authors' configs do.
- ``perturbation``: ``x_cf = tanh(G(E(x), c) + x)`` (Sec. 3.2) instead of ``tanh(G(E(x), c))``.

Resolution bookkeeping for ``n = len(widths)`` blocks (paper: n = 5, 256 -> 8):

    encoder  stem: width s at H;  down block j (0..n-1): widths[j] at H / 2^(j+1)
    decoder  up block i (0..n-1): input at H / 2^(n-i), output widths[n-1-i] at H / 2^(n-1-i)
             block i >= 1 with i <= skips also takes encoder feature j = n-1-i (same size)

so with the paper's widths, skips=4 feeds 512@16, 256@32, 128@64 and 64@128 into up
blocks 1..4. H and W must be multiples of 2^n.

Modules own no optimizer, device or I/O; forward passes have no host synchronisation and
work with channels-last tensors. Spectral norm is torch's own parametrization (one power
iteration per training-mode forward; eval mode reuses the stored vectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .config import GANConfig

__all__ = [
    "condition_from_probability",
    "ConditionalBatchNorm2d",
    "Encoder",
    "Decoder",
    "Generator",
    "Discriminator",
    "build_gan",
]


def condition_from_probability(p: torch.Tensor, conditions: int) -> torch.Tensor:
    """Bin probabilities ``p (B,) in [0, 1]`` into ``conditions`` equal bins: LongTensor ``(B,)``.

    ``clamp(floor(p * conditions), 0, conditions - 1)``; p = 1 falls in the last bin. With
    ``conditions=1`` every index is 0 (COIN). Runs on ``p``'s device, no host sync.
    """
    bins = torch.floor(p.detach().float() * conditions).long()
    return bins.clamp(0, conditions - 1)


def _conv(
    in_ch: int, out_ch: int, kernel: int, *, gain: float, bias: bool = True, sn: bool = False
) -> nn.Module:
    """Conv2d ('same' padding), SNGAN's xavier-uniform init, optionally spectrally normalised."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    nn.init.xavier_uniform_(conv.weight, gain)
    if bias:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv) if sn else conv


_RELU_GAIN = math.sqrt(2.0)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine parameters, then a per-condition scale and shift.

    ``forward(h (B, C, H, W), c (B,) long)`` -> ``gamma[c] * BN(h) + beta[c]``; scales start
    at N(1, 0.02), shifts at 0 (the authors' code).
    """

    def __init__(self, channels: int, conditions: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(conditions, channels)
        self.beta = nn.Embedding(conditions, channels)
        nn.init.normal_(self.gamma.weight, 1.0, 0.02)
        nn.init.zeros_(self.beta.weight)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        normed = self.bn(h)  # under bf16 autocast keep the scale and shift in bf16 as well
        gamma = self.gamma(c).to(normed.dtype)[:, :, None, None]
        beta = self.beta(c).to(normed.dtype)[:, :, None, None]
        return gamma * normed + beta


class _DownBlock(nn.Module):
    """Encoder block: BN-ReLU-pool-conv3x3-BN-ReLU-conv3x3, shortcut pool + SN conv1x1; H -> H/2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3, gain=_RELU_GAIN, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3, gain=_RELU_GAIN, bias=False)
        self.shortcut = _conv(in_ch, out_ch, 1, gain=1.0, bias=False, sn=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.avg_pool2d(F.relu(self.bn1(h)), 2))
        r = self.conv2(F.relu(self.bn2(r)))
        return r + self.shortcut(F.avg_pool2d(h, 2))


class _UpBlock(nn.Module):
    """Decoder block: CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3, shortcut up + SN conv1x1; H -> 2H."""

    def __init__(self, in_ch: int, out_ch: int, conditions: int):
        super().__init__()
        self.cbn1 = ConditionalBatchNorm2d(in_ch, conditions)
        self.conv1 = _conv(in_ch, out_ch, 3, gain=_RELU_GAIN, bias=False)
        self.cbn2 = ConditionalBatchNorm2d(out_ch, conditions)
        self.conv2 = _conv(out_ch, out_ch, 3, gain=_RELU_GAIN, bias=False)
        self.shortcut = _conv(in_ch, out_ch, 1, gain=1.0, bias=False, sn=True)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = F.interpolate(F.relu(self.cbn1(h, c)), scale_factor=2.0, mode="nearest")
        r = self.conv2(F.relu(self.cbn2(self.conv1(r), c)))
        return r + self.shortcut(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """E: ``x (B, in_ch, H, W)`` -> ``(z, features)``.

    ``z``: ``(B, widths[-1], H / 2^n, W / 2^n)``. ``features``: the outputs of down blocks
    ``0..n-2``, shallow first, ``features[j]`` of shape ``(B, widths[j], H / 2^(j+1), ...)``
    (what the decoder's skip connections read).
    """

    def __init__(self, widths: Sequence[int], stem_width: int, in_channels: int = 1):
        super().__init__()
        self.widths = tuple(widths)
        self.stem = _conv(in_channels, stem_width, 3, gain=1.0)
        ins = (stem_width, *self.widths[:-1])
        self.blocks = nn.ModuleList(_DownBlock(i, o) for i, o in zip(ins, self.widths))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        factor = 2 ** len(self.blocks)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of {factor}")
        h = self.stem(x)
        features = []
        for block in self.blocks:
            h = block(h)
            features.append(h)
        return features[-1], features[:-1]


class Decoder(nn.Module):
    """G: ``(z, features, c)`` -> the pre-tanh output ``(B, out_ch, H, W)`` (a perturbation map
    when the generator is perturbation-based).

    Up blocks output ``reversed(widths)``, each with conditional BN; block ``i`` in
    ``1..skips`` concatenates ``features[n-1-i]`` to its input; head BN-ReLU-conv3x3.
    """

    def __init__(self, widths: Sequence[int], conditions: int, skips: int, out_channels: int = 1):
        super().__init__()
        n = len(widths)
        if not 0 <= skips <= n - 1:
            raise ValueError(f"skips = {skips}; choose 0..{n - 1} for {n} encoder blocks")
        if conditions < 1:
            raise ValueError(f"conditions = {conditions}; need at least 1")
        self.widths, self.skips = tuple(widths), skips
        outs = self.widths[::-1]
        skip_widths = [self.widths[n - 1 - i] if 1 <= i <= skips else 0 for i in range(n)]
        ins = [outs[0]] + [outs[i - 1] + skip_widths[i] for i in range(1, n)]
        self.blocks = nn.ModuleList(_UpBlock(i, o, conditions) for i, o in zip(ins, outs))
        self.head_bn = nn.BatchNorm2d(outs[-1])
        self.head = _conv(outs[-1], out_channels, 3, gain=1.0)

    def forward(
        self, z: torch.Tensor, features: Sequence[torch.Tensor], c: torch.Tensor
    ) -> torch.Tensor:
        n = len(self.blocks)
        h = z
        for i, block in enumerate(self.blocks):
            if 1 <= i <= self.skips:
                h = torch.cat((h, features[n - 1 - i]), dim=1)
            h = block(h, c)
        return self.head(F.relu(self.head_bn(h)))


class Generator(nn.Module):
    """The explanation function E(x, c) = G(E(x), c) (Sec. 3.2): ``(x, c)`` -> ``x_cf``.

    ``x: (B, 1, H, W) in [-1, 1]``; ``c: (B,)`` long condition indices, ``None`` meaning all
    zeros (COIN's single inpaint condition); ``x_cf: (B, 1, H, W) in (-1, 1)``:
    ``tanh(G(E(x), c) + x)`` when ``perturbation`` else ``tanh(G(E(x), c))``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        stem_width: int = 64,
        conditions: int = 1,
        skips: int = 4,
        perturbation: bool = True,
        in_channels: int = 1,
    ):
        super().__init__()
        self.conditions, self.perturbation = conditions, perturbation
        self.encoder = Encoder(widths, stem_width, in_channels)
        self.decoder = Decoder(widths, conditions, skips, in_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(z, features)``, see :class:`Encoder`."""
        return self.encoder(x)

    def decode(
        self,
        z: torch.Tensor,
        features: Sequence[torch.Tensor],
        c: torch.Tensor | None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_cf`` from an encoding; a perturbation-based generator also needs ``x`` itself."""
        if c is None:
            c = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        out = self.decoder(z, features, c)
        if self.perturbation:
            if x is None:
                raise ValueError("a perturbation-based generator needs x to decode")
            out = out + x
        return torch.tanh(out)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z, features = self.encoder(x)
        return self.decode(z, features, c, x)


class _DiscBlock(nn.Module):
    """SN residual block: [ReLU]-conv3x3-ReLU-conv3x3-[pool]; shortcut SN conv1x1 (+ pool) when
    the shape changes, identity otherwise. The first block skips the leading ReLU, which
    would discard the negative half of an image in [-1, 1] (SNGAN's "optimized" block)."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, first: bool):
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = _conv(in_ch, out_ch, 3, gain=_RELU_GAIN, sn=True)
        self.conv2 = _conv(out_ch, out_ch, 3, gain=_RELU_GAIN, sn=True)
        learnable = downsample or in_ch != out_ch
        self.shortcut = _conv(in_ch, out_ch, 1, gain=1.0, sn=True) if learnable else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(h if self.first else F.relu(h))))
        if self.downsample:  # avg-pool and a 1x1 conv commute: pool first, 4x cheaper
            r, h = F.avg_pool2d(r, 2), F.avg_pool2d(h, 2)
        return r + (h if self.shortcut is None else self.shortcut(h))


class Discriminator(nn.Module):
    """D with a projection for the condition (Miyato & Koyama's cGAN projection).

    ``forward(x (B, 1, H, W), c (B,) long | None)`` -> logits ``(B,)``:
    ``linear(h) + <embed(c), h>``, ``h = sum_{H,W} ReLU(blocks(x))`` (:meth:`features`,
    ``(B, widths[-1])``). Blocks: one downsampling block per entry of ``widths``, then a
    block of width ``widths[-1]`` without downsampling; every conv, the linear layer and the
    embedding are spectrally normalised. ``c = None`` means all zeros. In Singla* the real
    image is shown with ``bin(f(x))`` and its counterfactual with ``bin(1 - f(x))``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        conditions: int = 1,
        in_channels: int = 1,
    ):
        super().__init__()
        widths = tuple(widths)
        ins = (in_channels, *widths[:-1])
        blocks = [
            _DiscBlock(i, o, downsample=True, first=k == 0)
            for k, (i, o) in enumerate(zip(ins, widths))
        ]
        blocks.append(_DiscBlock(widths[-1], widths[-1], downsample=False, first=False))
        self.blocks = nn.Sequential(*blocks)
        linear = nn.Linear(widths[-1], 1)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        self.linear = spectral_norm(linear)
        embed = nn.Embedding(conditions, widths[-1])
        nn.init.xavier_uniform_(embed.weight)
        self.embed = spectral_norm(embed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global sum-pooled features ``(B, widths[-1])``."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is None:
            c = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(c) * h).sum(dim=1)


def build_gan(config: GANConfig, in_channels: int = 1) -> tuple[Generator, Discriminator]:
    """``(generator, discriminator)`` for ``config`` (COIN, Singla* or a Table 3 row).

    ``config.use_masks`` only changes the loss (Eq. 11), not the networks.
    """
    generator = Generator(
        config.widths,
        config.stem_width,
        config.conditions,
        config.skips,
        config.perturbation,
        in_channels,
    )
    discriminator = Discriminator(config.disc_widths, config.conditions, in_channels)
    return generator, discriminator
