"""coinlib.saliency: every method on both architectures; cross-checks with pytorch-grad-cam.

Randomly initialised classifiers (see the ``models`` fixture) at 64 px, where the default
target layers (H/32) give 2 x 2 maps. Score-CAM costs one forward pass per channel of its
layer (512 / 1280 at the default layers: seconds per image here), so its tests hook an
early layer with few channels, at 32 px like RISE; the code path does not depend on the
layer, and the default layer's channel count is checked through :func:`forward_passes`.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coinlib.classifier import build_classifier, classifier_target_layer, freeze
from coinlib.config import ClassifierConfig
from coinlib.saliency import (
    SALIENCY_METHODS,
    RISEConfig,
    _rise_masks,
    attribute,
    forward_passes,
    rise,
    rise_image_seed,
)

ARCHS = ("resnet18", "efficientnet_v2_s")
SIZE = 64
SMALL = 32  # Score-CAM and RISE: cost grows with the pixels of every masked image


@pytest.fixture(scope="module")
def models():
    """Random classifiers made to behave a little like trained ones, so that no CAM is zero
    (constant) everywhere: BatchNorm statistics taken from a batch of images (at init the
    running variance is 1, and EfficientNetV2's activations shrink to ~1e-7), a last layer
    with positive weights (the logit grows with every pooled feature) and a bias that puts
    the mean logit of those images at 0 (so that ``p_abnormal`` is not saturated)."""
    torch.manual_seed(0)
    built = {}
    calibration = _image(batch=8, seed=1)
    for arch in ARCHS:
        model = build_classifier(ClassifierConfig(arch=arch)).eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.momentum = None  # cumulative average: one batch sets the statistics
        with torch.no_grad():
            model(calibration)
            model.eval()
            head = model.net.fc if arch == "resnet18" else model.net.classifier[-1]
            head.weight.abs_()
            head.bias -= model(calibration).mean()
        built[arch] = model
    return built


def _image(batch: int = 2, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """Smooth random images in [-1, 1]: a bright blob on a darker background.

    Values are multiples of 2^-8, so ``(x + 1) / 2`` and back are exact in float32 and
    pytorch-grad-cam (fed ``[0, 1]`` images, see :class:`_UnitScale`) sees bit-identical inputs:
    a random network can amplify a rounding difference into a different Score-CAM.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centres = torch.rand(batch, 2, generator=g) * 0.6 + 0.2
    dy, dx = yy - centres[:, 0, None, None], xx - centres[:, 1, None, None]
    blob = torch.exp(-(dy**2 + dx**2) / 0.02)
    noise = 0.1 * torch.randn(batch, size, size, generator=g)
    return torch.round((blob - 0.5 + noise).clamp(-1, 1) * 256)[:, None] / 256


def _cheap_layer(model, arch: str, which: str) -> nn.Module | None:
    """``default``: None (the method's default, H/32: 2 x 2 at 64 px); ``early``: few channels
    (Score-CAM); ``mid``: H/8 (8 x 8 maps)."""
    if which == "default":
        return None
    if arch == "resnet18":
        return model.net.layer1 if which == "early" else model.net.layer2  # 64 ch H/4; 128 ch H/8
    return model.net.features[1] if which == "early" else model.net.features[3]  # 24 ch H/2; 64 ch H/8


def _options(method: str, model, arch: str) -> dict:
    if method == "scorecam":
        return {"target_layer": _cheap_layer(model, arch, "early"), "batch_size": 128}
    if method == "rise":
        return {"n_masks": 16, "batch_size": 32}
    return {}


def _no_forward_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(SALIENCY_METHODS))
def test_every_method_shape_range_determinism_and_leaves_the_model_alone(models, method, arch):
    model = models[arch]
    size = SMALL if method in ("scorecam", "rise") else SIZE
    x = _image(size=size)
    options = _options(method, model, arch)
    layer = classifier_target_layer(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    # A trainable model in training mode: the call runs in eval mode, then restores it.
    model.train().requires_grad_(True)
    maps = attribute(method, model, x, **options)
    assert maps.shape == (2, size, size) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps.flatten(1).amax(1).eq(1).all()  # min-max normalised per image, not constant
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not layer._forward_hooks and _no_forward_hooks(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats kept

    # A frozen model (freeze: eval, no parameter gradients) gives the identical maps.
    freeze(model)
    again = attribute(method, model, x, **options)
    assert torch.equal(maps, again)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert _no_forward_hooks(model)

    # Images are explained independently: one image alone gives its map from the batch.
    alone = attribute(method, model, x[1:], **options)
    torch.testing.assert_close(alone[0], maps[1], atol=1e-4, rtol=0)


class _UnitScale(nn.Module):
    """pytorch-grad-cam's view of our classifier: [0, 1] images in, logits ``(B, 1)`` out.

    pytorch-grad-cam's Score-CAM masks its input by multiplication; on the [0, 1] scale that
    is exactly our ``(x + 1) * M - 1``. The activations, and so every CAM, are unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(2 * z - 1)[:, None]


def _correlations(a: torch.Tensor, b: np.ndarray) -> list[float]:
    return [float(np.corrcoef(m.numpy().ravel(), r.ravel())[0, 1]) for m, r in zip(a, b)]


class _LogSigmoidTarget:
    """pytorch-grad-cam target ``log p_abnormal``: its Score-CAM weights ``softmax_k(log p_k)``
    are ``p_k / sum_j p_j``, our ``score="probability"`` up to a factor."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(output[..., 0])


CROSS_CHECKS = [  # (our method, its options, pytorch-grad-cam class, target, layer)
    ("gradcam", {}, "GradCAM", "logit", "default"),
    ("gradcam", {}, "GradCAM", "logit", "mid"),
    ("layercam", {}, "LayerCAM", "logit", "default"),
    ("layercam", {}, "LayerCAM", "logit", "mid"),
    ("scorecam", {"score": "probability"}, "ScoreCAM", "logsigmoid", "early"),
    ("scorecam", {"score": "softmax"}, "ScoreCAM", "logit", "early"),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "method,options,reference,target,which",
    CROSS_CHECKS,
    ids=[f"{c[0]}-{c[1].get('score', c[3])}-{c[4]}" for c in CROSS_CHECKS],
)
def test_cams_agree_with_pytorch_grad_cam(models, arch, method, options, reference, target, which):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = models[arch].eval()
    x = _image(size=SMALL if method == "scorecam" else SIZE)
    options = options | {"target_layer": _cheap_layer(model, arch, which)}
    if method == "scorecam":
        options["batch_size"] = 128
    ours = attribute(method, model, x, **options)

    wrapped = _UnitScale(copy.deepcopy(model)).requires_grad_(True)  # its backward fills .grad
    ref_layer = _cheap_layer(wrapped.model, arch, which) or classifier_target_layer(wrapped.model)
    targets = [ClassifierOutputTarget(0) if target == "logit" else _LogSigmoidTarget()] * len(x)
    with getattr(pgc, reference)(model=wrapped, target_layers=[ref_layer]) as cam:
        cam.batch_size = 128  # Score-CAM's forward batch
        theirs = cam(input_tensor=(x + 1) / 2, targets=targets)

    assert theirs.shape == tuple(ours.shape)
    assert ours.flatten(1).std(1).gt(0).all()  # a constant map would make the check vacuous
    corr = _correlations(ours, theirs)
    print(f"{arch} {method} {options.get('score', '')} {which}: 1 - correlation {1 - min(corr):.1e}")
    assert min(corr) > 0.999  # measured 1 - 1e-10; other methods on these maps: 0.2 - 0.96


@pytest.mark.parametrize("mask_sets", ["shared", "per_image"])
def test_rise_peaks_inside_the_square_the_model_looks_at(mask_sets):
    """logit = 8 * (mean intensity in a square - 0.5 on the [0, 1] scale): RISE finds it."""
    rows, cols = slice(8, 24), slice(36, 52)

    class SquareMean(nn.Module):
        def forward(self, x):
            return 8 * ((x[:, 0, rows, cols] + 1) / 2).mean(dim=(1, 2)) - 4

    x = torch.ones(2, 1, SIZE, SIZE) * 0.8
    x[1, :, 40:] = -0.5  # the second image differs away from the square
    maps = attribute("rise", SquareMean(), x, n_masks=256, batch_size=128, mask_sets=mask_sets)
    for m in maps:
        peak = divmod(int(m.argmax()), SIZE)
        assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[rows, cols] = True
        assert m[inside].mean() > 2 * m[~inside].mean()


def test_rise_masks_are_seeded_batch_independent_and_keep_p1():
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1), nn.Flatten(0))
    torch.manual_seed(0)
    x = _image(batch=1)
    cfg = RISEConfig(n_masks=96, batch_size=32, seed=3)
    a = rise(model, x, cfg)
    assert torch.equal(a, rise(model, x, cfg))
    torch.testing.assert_close(rise(model, x, cfg, batch_size=7), a)  # other chunks, same masks
    assert not torch.equal(a, rise(model, x, cfg, seed=4))
    with pytest.raises(TypeError):
        rise(model, x, cfg, n_mask=10)

    grids = (torch.rand(500, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    shifts = torch.randint(0, 8, (500, 2), generator=torch.Generator().manual_seed(1))
    masks = _rise_masks(grids, shifts, (SIZE, SIZE), (8, 8))
    assert masks.shape == (500, SIZE, SIZE) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.1) < 0.02
    # Zero shift, one kept cell: the up-sampled bump is centred on that cell's centre.
    one = torch.zeros(1, 8, 8)
    one[0, 2, 5] = 1
    bump = _rise_masks(one, torch.zeros(1, 2, dtype=torch.long), (SIZE, SIZE), (8, 8))[0]
    assert bump.max() == 1 and divmod(int(bump.argmax()), SIZE) == (2 * 9 + 4, 5 * 9 + 4)


def test_rise_per_image_mask_sets_follow_the_image_key_not_the_batch():
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1), nn.Flatten(0))
    torch.manual_seed(0)
    x = _image(batch=3)
    cfg = RISEConfig(n_masks=64, batch_size=32, seed=3, mask_sets="per_image")
    maps = rise(model, x, cfg, image_keys=[10, 11, 12])
    torch.testing.assert_close(rise(model, x[1:2], cfg, image_keys=[11])[0], maps[1])
    torch.testing.assert_close(rise(model, x[[2, 0]], cfg, image_keys=[12, 10], batch_size=7), maps[[2, 0]])
    # One image: its set is the shared set of its own seed, so both options are one estimator.
    shared = replace(cfg, mask_sets="shared", seed=rise_image_seed(3, 11))
    assert torch.equal(rise(model, x[1:2], cfg, image_keys=[11]), rise(model, x[1:2], shared))
    # The same image twice: a shared set gives the same map, per-image sets do not.
    twice = x[:1].repeat(2, 1, 1, 1)
    same = rise(model, twice, replace(cfg, mask_sets="shared"))
    assert torch.equal(same[0], same[1])
    own = rise(model, twice, cfg, image_keys=[0, 1])
    assert not torch.equal(own[0], own[1])
    assert not torch.equal(own, rise(model, twice, cfg, image_keys=[0, 1], seed=4))
    assert len({rise_image_seed(seed, key) for seed in range(3) for key in range(100)}) == 300
    with pytest.raises(ValueError, match="image_keys has 2 keys for 3 images"):
        rise(model, x, cfg, image_keys=[0, 1])
    with pytest.raises(ValueError, match="invalid RISE settings"):
        rise(model, x, cfg, mask_sets="per_batch")


def test_rise_masks_match_the_rise_reference_code():
    """Petsiuk et al.'s ``generate_masks``: skimage ``resize(order=1, mode="reflect",
    anti_aliasing=False)`` to ``(s + 1) * cell``, then a crop at the random shift."""
    resize = pytest.importorskip("skimage.transform").resize
    size, s = (48, 40), 6  # non-square, not a multiple of s: cell = ceil(size / s) = (8, 7)
    cell = (8, 7)
    g = torch.Generator().manual_seed(0)
    grids = (torch.rand(5, s, s, generator=g) < 0.3).float()
    shifts = torch.stack([torch.randint(0, c, (5,), generator=g) for c in cell], dim=1)
    ours = _rise_masks(grids, shifts, size, cell).numpy()
    for grid, (dy, dx), mask in zip(grids.numpy(), shifts.tolist(), ours):
        up_size = ((s + 1) * cell[0], (s + 1) * cell[1])
        up = resize(grid, up_size, order=1, mode="reflect", anti_aliasing=False)
        np.testing.assert_allclose(mask, up[dy : dy + size[0], dx : dx + size[1]], atol=1e-6)


@pytest.mark.parametrize("arch,channels", [("resnet18", 512), ("efficientnet_v2_s", 1280)])
def test_forward_pass_counts(models, arch, channels):
    model = models[arch]
    assert forward_passes("gradcam", model) == forward_passes("layercam", model) == 1
    assert forward_passes("scorecam", model) == 1 + channels
    assert _no_forward_hooks(model)
    assert forward_passes("rise", model) == 6000
    assert forward_passes("rise", model, n_masks=64) == 64
    assert forward_passes("rise", model, config=RISEConfig(n_masks=100)) == 100


def test_unknown_method_or_bad_input_raises(models):
    model = models["resnet18"]
    with pytest.raises(ValueError, match="unknown saliency method"):
        attribute("gradcam++", model, _image())
    with pytest.raises(ValueError, match="unknown saliency method"):
        forward_passes("occlusion", model)
    with pytest.raises(ValueError, match="expected x"):
        attribute("layercam", model, torch.zeros(2, 3, SIZE, SIZE))
