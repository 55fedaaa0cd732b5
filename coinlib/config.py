"""Configurations: frozen dataclasses with named profiles.

A *profile* bundles every setting a run needs. Four are named:

- ``smoke``: seconds per stage; used by the tests to exercise every code path.
- ``quick``: the CPU default (2 cores, minutes); trades image size, widths and
  steps against the paper (see docs/profiles.md, "What the CPU profiles trade away").
- ``paper``: the paper's scale (256x256, full widths, paper hyper-parameters) for a GPU.
- ``lesson``: ``quick`` on the synthetic track with fewer scans, for a 10-minute class.

Every field has the paper's (or the authors' implementation's) value as its default
unless a profile says otherwise; each field's comment names its source (the paper's section, or the authors' code).
Unknown keys raise, so a typo never silently falls back to a default.

Every config is checked when it is built (:class:`Checked`): each field's value must have
its annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``X | None``,
``tuple[...]``; floats must be finite) and lie in the interval its class's ``RANGES``
declares (``"[1, inf)"``, ``"(0, 1]"``; for a tuple, every element). A new field is
type-checked from its annotation alone; give it a range by adding its name to ``RANGES``.
So ``coin train --set train.batch_size=0`` stops before any work, naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

__all__ = [
    "Checked",
    "PhantomConfig",
    "DataConfig",
    "AnomalyConfig",
    "ClassifierConfig",
    "GANConfig",
    "CounterfactualConfig",
    "EvalConfig",
    "SaliencyConfig",
    "AblationConfig",
    "Profile",
    "PROFILES",
    "get_profile",
    "with_seed",
    "table3_profile",
    "track_profile",
    "TumourProtocol",
    "config_rows",
    "from_dict",
    "to_dict",
]


# --------------------------------------------------------------------------- checks


_INTERVAL = re.compile(r"^\s*([\[(])\s*(-inf|[-+0-9.e]+)\s*,\s*(inf|[-+0-9.e]+)\s*([\])])\s*$")


@functools.cache
def _interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[1, inf)"`` -> (1.0, inf, low included, high included)."""
    match = _INTERVAL.match(text)
    if not match:
        raise ValueError(f"bad interval {text!r}; write e.g. '[1, inf)' or '(0, 1]'")
    opening, low, high, closing = match.groups()
    return float(low), float(high), opening == "[", closing == "]"


def _in_interval(value: float, text: str) -> bool:
    low, high, low_in, high_in = _interval(text)
    return (low < value or (low_in and value == low)) and (value < high or (high_in and value == high))


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        inner = _describe(args[0]) if len(args) == 2 and args[1] is Ellipsis else ", ".join(map(_describe, args))
        return f"a list of {inner}" if Ellipsis in args else f"a list [{inner}]"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    """A value that does not have the annotated type (turned into a ValueError naming the field)."""


def _conform(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (ints accepted for floats, lists for tuples) or :class:`_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise _Mismatch
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _conform(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_conform(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_conform(v, a) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Mismatch
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _Mismatch
    return value


def _numbers(value: Any) -> list[float]:
    """The numbers a range applies to: the value itself, or each element of a tuple."""
    items = value if isinstance(value, tuple) else (value,)
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


class Checked:
    """Base of every config dataclass: type and range checks of each field when it is built.

    ``RANGES`` maps a field name to an interval (``"[0, 1)"``, ``"(0, inf)"``, ...) its value
    (or each element of a tuple) must lie in; ``None`` values are not range-checked.
    ``check()`` may add checks that span several fields. Errors are ``ValueError`` naming
    ``Class.field``, the value and what is expected.
    """

    RANGES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        cls = type(self)
        hints = _hints(cls)
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                conformed = _conform(value, hints[f.name])
            except _Mismatch:
                raise ValueError(f"{cls.__name__}.{f.name} = {value!r}: expected {_describe(hints[f.name])}") from None
            if conformed is not value:
                object.__setattr__(self, f.name, conformed)
            interval = cls.RANGES.get(f.name)
            if interval is not None and conformed is not None:
                if not all(_in_interval(v, interval) for v in _numbers(conformed)):
                    raise ValueError(f"{cls.__name__}.{f.name} = {value!r}: must lie in {interval}")
        self.check()

    def check(self) -> None:
        """Checks that span several fields (raise ``ValueError`` naming them)."""

    def _ordered(self, name: str, strict: bool = False) -> None:
        low, high = getattr(self, name)
        if low > high or (strict and low == high):
            raise ValueError(f"{type(self).__name__}.{name} = {list(getattr(self, name))}: "
                             f"the first value must be {'below' if strict else 'at most'} the second")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Upper bounds catch a typo before any work: a seed must fit numpy's and torch's 32-bit seeding,
# a batch or slice size what any one device can hold (a 100 000-px slice is 40 GB per image).
_SEED = "[0, 4294967295]"
_COUNT = "[1, inf)"
_BATCH = "[1, 65536]"
# what --fill-nonfinite may put in place of NaN: a value CT takes, from below air (-1000 HU) to
# beyond dense bone and iodine (about 3000 HU)
FILL_HU_RANGE = (-2000.0, 4000.0)
_IMAGE_SIZE = "[8, 2048]"
_POSITIVE = "(0, inf)"
_NON_NEGATIVE = "[0, inf)"
_UNIT = "[0, 1]"


@dataclass(frozen=True)
class PhantomConfig(Checked):
    """The procedural abdominal CT phantom (the embedded default data)."""

    RANGES: ClassVar[dict[str, str]] = {
        "subjects": "[3, inf)",
        "kits_cases": "[3, inf)",
        "seed": _SEED,
        "spacing_mm": _POSITIVE,
        "kits_inplane_mm": _POSITIVE,
        "kits_slice_mm": _POSITIVE,
    }

    subjects: int = 40  # TotalSegmentator-layout track
    kits_cases: int = 40  # KiTS23-layout track (tumour, cyst and control cases)
    seed: int = 0
    spacing_mm: float = 1.5  # isotropic voxel size of the TotalSegmentator track
    kits_inplane_mm: float | None = None  # None: 0.7-0.98 mm per case, as in KiTS23
    kits_slice_mm: float | None = None  # None: 2.5 or 3 mm per case
    # Contrast phases drawn per subject, "phase:weight,..." (coinlib.phantom.parse_phases; the
    # defaults are phantom.TOTALSEGMENTATOR_PHASES and KITS23_PHASES, reasons given there).
    # Noise follows the voxel size (phantom.noise_std), so a coarser rendering stays consistent.
    ts_phases: str = "native:0.30,arterial:0.15,portal_venous:0.45,delayed:0.10"
    kits_phases: str = "arterial:0.80,nephrographic:0.20"


@dataclass(frozen=True)
class DataConfig(Checked):
    """Slice extraction and normalisation (paper Sec. 4.1, 4.3; the authors' data code)."""

    RANGES: ClassVar[dict[str, str]] = {
        "image_size": _IMAGE_SIZE,
        "min_kidney_pixels": _NON_NEGATIVE,
        "test_fraction": "[0, 1)",
        "val_fraction": "[0, 1)",
        "split_seed": _SEED,
        "percentiles": "[0, 100]",
        "min_kidney_area_mm2": _NON_NEGATIVE,
        "min_lesion_area_mm2": _NON_NEGATIVE,
        "fill_nonfinite_hu": f"[{FILL_HU_RANGE[0]:g}, {FILL_HU_RANGE[1]:g}]",
    }

    def check(self) -> None:
        self._ordered("percentiles", strict=True)
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"DataConfig.test_fraction + val_fraction = {self.test_fraction + self.val_fraction}: "
                             "must be below 1 (some scans must train)")


    image_size: int = 256
    min_kidney_pixels: int = 32  # counted on the native slice, before resizing
    test_fraction: float = 0.2  # paper: 80/20 split by scan; the 20 % is the test set
    val_fraction: float = 0.1  # carved from the 80 %: early stopping and threshold choice
    split_seed: int = 0
    split_source: Literal["random", "meta"] = "random"  # "meta": TotalSegmentator meta.csv
    percentiles: tuple[float, float] = (0.5, 99.5)  # foreground fingerprint (the authors' code)
    # Set per track by :func:`track_profile` (the tumour track takes ``TumourProtocol``'s values):
    # a kidney slice needs this native area (mm^2) instead of ``min_kidney_pixels`` when given,
    min_kidney_area_mm2: float | None = None
    # a slice is abnormal only when its lesion covers more than this native area (0: any pixel,
    # the paper's "contains a lesion"; the labels of the prepared folder, data.SliceDataset),
    min_lesion_area_mm2: float = 0.0
    # and the intensity fingerprint's percentiles are taken over these voxels of the training scans.
    fingerprint_foreground: Literal["kidney_and_lesions", "lesion"] = "kidney_and_lesions"
    # NaN / infinite voxels in a CT volume: None, an error naming the file; a number, the HU
    # put in their place (counted per scan in the prepared folder's manifest)
    fill_nonfinite_hu: float | None = None


@dataclass(frozen=True)
class AnomalyConfig(Checked):
    """Synthetic Gaussian-blob anomalies (paper App. 7.2; parameters from the authors' code).

    Sizes are given for a 256x256 slice and scaled with ``DataConfig.image_size`` so an
    anomaly covers the same anatomy at every resolution.

    ``rule`` (App. 7.2 names the transforms, not their settings; ``coinlib.anomaly`` has
    both rules step by step): ``"implementation"``, the default, draws as the authors' code
    does (albumentations 1.3.0 on a 20 px template: scale truncated to whole pixels, grid
    distortion and rotation each with p = 0.5, the distortion unnormalised so each axis is
    stretched on its own; one of the two largest kidney components picked first and the
    slice left normal when its box is too small). Mean area 84.6 px, 95th-percentile aspect
    1.34 at 256 px. ``"continuous"``: this project's first reading, an exact remap of the
    continuous blob, always warped (normalised) and rotated, centred in any large enough
    component (95 px, aspect 1.06). Fields marked "implementation" or "continuous" below
    serve that rule only.
    """

    rule: Literal["implementation", "continuous"] = "implementation"
    RANGES: ClassVar[dict[str, str]] = {
        "template_size": "[2, inf)",
        "reference_size": _COUNT,
        "sigma": _POSITIVE,
        "mask_threshold": _UNIT,
        "scale_range": _POSITIVE,
        "distort_steps": _NON_NEGATIVE,
        "distort_limit": _NON_NEGATIVE,
        "rotation_range": "[-360, 360]",
        "alpha": _UNIT,
        "probability": _UNIT,
        "bbox_margin": "[0, 0.5)",
        "warp_probability": _UNIT,
        "rotation_probability": _UNIT,
        "min_box_area": _NON_NEGATIVE,
        "seed": _SEED,
    }

    def check(self) -> None:
        self._ordered("scale_range")
        self._ordered("rotation_range")


    template_size: int = 20  # grid points spanning [-1, 1]^2 at 256 px
    reference_size: int = 256
    sigma: float = 0.4
    mask_threshold: float = 0.25
    scale_range: tuple[float, float] = (0.75, 1.0)
    distort_steps: int = 1
    distort_limit: float = 0.2
    rotation_range: tuple[float, float] = (-90.0, 90.0)
    alpha: float = 0.9  # intensity weight on the [0, 1] scale
    probability: float = 0.65  # P(slice gets an anomaly) = P(label 1)
    # centre drawn inside the kidney bbox shrunk on each side by ceil(margin * side) px
    # (continuous) or int(margin * side / 2) px (implementation: 5 % per side)
    bbox_margin: float = 0.1
    warp_probability: float = 0.5  # implementation: P(grid distortion), albumentations' default p
    rotation_probability: float = 0.5  # implementation: P(rotation), albumentations' default p
    min_box_area: int = 400  # implementation: a host component's bbox must exceed this (px at 256)
    seed: int = 0  # seeds the fixed validation/test anomalies that every method is scored on


@dataclass(frozen=True)
class ClassifierConfig(Checked):
    """Classifier f (paper Sec. 4.3): ResNet18 (synthetic) or EfficientNetV2-S (tumours)."""

    RANGES: ClassVar[dict[str, str]] = {
        "width": _COUNT,
        "lr": _POSITIVE,
        "weight_decay": _NON_NEGATIVE,
        "batch_size": _BATCH,
        "max_epochs": _COUNT,
        "patience": _COUNT,
        "steps_per_epoch": _COUNT,
        "intensity_jitter": _UNIT,
        "noise_jitter": _UNIT,
        "hide_grid": _NON_NEGATIVE,
        "hide_probability": _UNIT,
        "threshold": _UNIT,
        "seed": _SEED,
    }

    arch: Literal["resnet18", "efficientnet_v2_s"] = "resnet18"
    # ResNet18's base width: layer1..layer4 have width x (1, 2, 4, 8) channels (64: torchvision's,
    # the paper's). A profile may narrow it where the saliency baselines' hundreds of forward
    # passes per slice must fit a CPU budget (docs/profiles.md). EfficientNetV2-S: 64 only.
    width: int = 64
    weights_path: str | None = None  # local weights only; nothing is downloaded
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    max_epochs: int = 20
    patience: int = 3  # early stopping on validation AUC
    steps_per_epoch: int | None = None  # None: one pass over the training split
    # augmentation beside flips: per-slice contrast x 1 +- j and shift +- 0.8 j on [-1, 1]
    # (0: off). Makes f read contrast within a slice rather than a scan's overall enhancement.
    intensity_jitter: float = 0.0
    # augmentation: white Gaussian noise of std U(0, j) per slice on the body, on [-1, 1] (0: off).
    # Makes f read a mass rather than a scan's noise level (docs/experiments.md, "Where the tumour IoU is lost").
    noise_jitter: float = 0.0
    # augmentation: Hide-and-Seek, each of hide_grid x hide_grid cells replaced by the image's
    # mean with probability hide_probability (0: off, every profile: it cost f AUC and COIN IoU on
    # the tumour track; classifier_training.random_hide_patches; docs/experiments.md, "Hiding patches from f")
    hide_grid: int = 0
    hide_probability: float = 0.5
    threshold: float = 0.5  # t in Sec. 3.1
    # learning rate over the epochs: "constant" (the authors' Adam), or "cosine", annealed from
    # ``lr`` towards 0 at ``max_epochs`` (set at the start of each epoch, so a resumed run gets
    # the same rates). From scratch on the CPU budget, annealing steadies the last epochs that
    # early stopping chooses among (docs/profiles.md).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # class-balanced batches (the authors' ``use_sampler`` on the tumour track): each training
    # item drawn with probability inversely proportional to its class's size
    balanced_sampling: bool = False
    # the authors' third augmentation (albumentations ShiftScaleRotate defaults): shift up to
    # +-6.25 % of the size, scale 1 +- 0.1, rotation +-45 degrees, each image its own draw
    shift_scale_rotate: bool = False
    seed: int = 0


@dataclass(frozen=True)
class GANConfig(Checked):
    """The one counterfactual GAN (paper Sec. 3.2; sizes from the authors' code).

    COIN, Singla* and every Appendix A row are settings of these fields.
    """

    RANGES: ClassVar[dict[str, str]] = {
        "conditions": "[1, 2]",
        "skips": "[0, 4]",
        "widths": _COUNT,
        "stem_width": _COUNT,
        "disc_widths": _COUNT,
    }

    def check(self) -> None:
        if not self.widths or not self.disc_widths:
            raise ValueError("GANConfig.widths and disc_widths need at least one entry each")
        if self.skips > len(self.widths) - 1:
            raise ValueError(f"GANConfig.skips = {self.skips}: at most {len(self.widths) - 1} "
                             f"for {len(self.widths)} encoder blocks (widths {list(self.widths)})")


    conditions: int = 1  # 1: COIN (inpaint); 2: Singla* (bins of f(x))
    skips: int = 4  # encoder->decoder skip connections into up blocks 1..skips (0-4)
    perturbation: bool = True  # x_cf = tanh(G(E(x), c) + x)
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    stem_width: int = 64
    disc_widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    use_masks: bool = False  # Singla* with masks: mask-weighted L_rec (Eq. 11)


@dataclass(frozen=True)
class CounterfactualConfig(Checked):
    """GAN training (paper Sec. 3.3, 4.3; Eq. 1 weights from the implementation)."""

    RANGES: ClassVar[dict[str, str]] = {
        "lr": _POSITIVE,
        "betas": "[0, 1)",
        "batch_size": _BATCH,
        "steps": _COUNT,
        "generator_every": _COUNT,
        "lambda_adv": _NON_NEGATIVE,
        "lambda_f": _NON_NEGATIVE,
        "lambda_idt": _NON_NEGATIVE,
        "lambda_tv": _NON_NEGATIVE,
        "kl_eps": "(0, 0.5)",
        "prob_clamp": "(0, 0.5)",
        "log_every": _COUNT,
        "eval_every": _COUNT,
        "checkpoint_every": _COUNT,
        "seed": _SEED,
    }

    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)  # paper; the implementation uses (0, 0.999)
    batch_size: int = 16
    steps: int = 100_000
    generator_every: int = 5  # generator updated once every k discriminator steps
    lambda_adv: float = 1.0
    lambda_f: float = 5.0
    lambda_idt: float = 1.0
    lambda_tv: float = 0.05
    adv_loss: Literal["bce", "hinge"] = "bce"
    balanced_sampling: bool = False  # class-balanced batches (ClassifierConfig.balanced_sampling)
    kl_eps: float = 1e-6  # target probability for "normal" in Eq. 3
    # COIN's Eq. 3 target for the slices f calls normal (f(x) < the classifier's t, Sec. 3.1):
    # "eps", the paper's (every slice is asked for f(x_cf) = eps), or "f(x)", the authors'
    # code's (eps only for the slices f calls abnormal; the others are asked to keep f(x)).
    # Singla*'s target (1 - f(x), Eq. 9) does not depend on it.
    kl_target_normal: Literal["eps", "f(x)"] = "eps"
    prob_clamp: float = 1e-5
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 500
    seed: int = 0
    # what the training step computes in (autocast): "fp32" (default), "bf16", or "auto" (the
    # process's choice, COIN_PRECISION: bf16 on CUDA and on CPUs with native bf16). fp32 because
    # bf16 decided whether a GAN learned: under bf16 on an Intel AMX-BF16 CPU Singla* failed on
    # 2 of 3 seeds that learned in fp32, while on an AMD AVX512-BF16 CPU it did not fail
    # (docs/development.md, "Precision"); the same bf16 request is a different numerical path on
    # each CPU. Counterfactuals for scoring and `coin label` are computed in fp32 on every path.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # speed only, not part of a run's identity: torch.compile of the step's losses, cuDNN
    # autotuning and foreach/fused Adam (counterfactual.step_losses); same maths
    compile: bool = False
    # disk only, not part of a run's identity: False drops a finished training's resume state
    # (the discriminator and both optimizers' moments) from its last checkpoint, keeping the
    # generator (counterfactual.pt) and a record of the finished training. At the paper's widths
    # that state is 1.10 of the 1.31 GB a GAN leaves on disk, and a run trains 42 GANs.
    keep_resume_state: bool = True


@dataclass(frozen=True)
class EvalConfig(Checked):
    """Weak masks and metrics (paper Sec. 4.2, 5)."""

    RANGES: ClassVar[dict[str, str]] = {
        "threshold": _UNIT,
        "cv_tau": _UNIT,
        "closing_radius": _NON_NEGATIVE,
        "opening_radius": _NON_NEGATIVE,
        "sweep_points": "[2, inf)",
        "fid_dims": _COUNT,
        "batch_size": _BATCH,
    }

    threshold: float = 0.25  # on |x - x_cf| in [0, 1]
    cv_tau: float = 0.8
    # Sec. 5 post-processing of the counterfactual methods' masks, before the largest
    # component: "paper" (its text: closing, then opening, disks of the radii below) or
    # "implementation" (the authors' code: opening, then closing, a 3 x 3 square; radii unused)
    morphology: Literal["paper", "implementation"] = "paper"
    closing_radius: int = 2
    opening_radius: int = 2
    sweep_points: int = 101
    fid_dims: int = 768
    fid_weights: str | None = None  # path to pt_inception-2015-12-05-6726825d.pth
    batch_size: int = 32
    # what the tables' bootstrap intervals resample (coinlib.verdicts): "scan", whole test
    # scans (slices of one scan are correlated: same lesion, same anatomy), or "slice", each
    # abnormal test slice on its own (narrower, and too narrow where few scans hold the slices)
    bootstrap_unit: Literal["scan", "slice"] = "scan"


@dataclass(frozen=True)
class SaliencyConfig(Checked):
    """The saliency baselines of Table 1 (paper Sec. 5; the authors' evaluation code).

    RISE settings default to the RISE paper's code (N = 6000 masks on an 8 x 8 grid kept
    with p1 = 0.1), except that each slice draws its own masks (``rise_mask_sets``; the RISE
    code draws one set for all images, ``"shared"``). The saliency methods cost hundreds to
    thousands of classifier forward passes per image, so a profile may score them on
    ``max_images`` abnormal slices per
    split (spread evenly over the split; ``None``: all), stated beside every result, and
    may leave a method out of the tumour track (``tumour_methods``), which Table 1 says.
    """

    RANGES: ClassVar[dict[str, str]] = {
        "rise_masks": _COUNT,
        "rise_grid": _COUNT,
        "rise_p1": "(0, 1)",
        "rise_batch_size": _BATCH,
        "scorecam_batch_size": _BATCH,
        "max_images": _COUNT,
        "seed": _SEED,
    }

    methods: tuple[str, ...] = ("scorecam", "layercam", "rise", "gradcam")  # Table 1's order
    tumour_methods: tuple[str, ...] | None = None  # None: ``methods`` (a profile may drop costly ones)
    rise_masks: int = 6000
    rise_grid: int = 8
    rise_p1: float = 0.1
    rise_batch_size: int = 100  # masked images per forward pass
    # "per_image": each slice its own masks; "shared": one set for all (the RISE code). At the
    # quick profile's 250 masks a shared set moved RISE's IoU by 0.31-0.39 on one classifier
    # (docs/profiles.md); the per-image sets average that error out over the slices.
    rise_mask_sets: Literal["shared", "per_image"] = "per_image"
    scorecam_batch_size: int = 64  # activation channels per forward pass
    max_images: int | None = None  # abnormal slices scored per split (test and val)
    seed: int = 0  # RISE masks

    def methods_for(self, track: str) -> tuple[str, ...]:
        """The methods scored on ``track`` ("synthetic" or "tumour")."""
        return self.tumour_methods if track == "tumour" and self.tumour_methods is not None else self.methods


@dataclass(frozen=True)
class TumourProtocol(Checked):
    """The tumour track as the authors' code runs it (their configs).

    The paper's text says only that a slice is abnormal when it "contains a malignant lesion"
    and that kidney slices have at least 32 kidney pixels (Sec. 4.1, 4.3); its code, on the
    hospital set, labels a slice abnormal only with more than 1000 tumour pixels and keeps
    slices with more than 100 kidney pixels, both counted on the native slice (KiTS-like
    0.78 mm pixels: about 608 and 61 mm^2, given as areas so they mean the same at any voxel
    size), normalises with the tumour voxels' percentiles, balances the classes in every batch
    and weighs the counterfactual losses lambda_f = 1, lambda_tv = 5e-5 (synthetic track: 5 and
    0.05). :func:`track_profile` applies these to the tumour track of every profile. The paper
    text's rule is ``min_lesion_area_mm2 = 0`` with ``min_kidney_area_mm2 = None``.

    ``lambda_idt`` (Eq. 1's weight of Eq. 4-5) is not the authors' choice but this project's:
    ``None`` keeps the profile's ``train.lambda_idt`` (1, the paper's and the authors' value,
    as in ``paper``); ``quick`` sets 5, chosen on the validation IoU among 1, 3, 5 and 10 on 3
    seeds (docs/experiments.md, "λ_idt = 5 on the tumour track"). When a field is set here,
    ``train.<field>`` does not reach the tumour track: change ``tumour_protocol.<field>``.
    """

    min_lesion_area_mm2: float = 608.0
    min_kidney_area_mm2: float | None = 61.0
    fingerprint_foreground: Literal["kidney_and_lesions", "lesion"] = "lesion"
    balanced_sampling: bool = True
    lambda_f: float = 1.0
    lambda_tv: float = 5e-5
    lambda_idt: float | None = None
    RANGES: ClassVar[dict[str, str]] = {"min_lesion_area_mm2": _NON_NEGATIVE, "min_kidney_area_mm2": _NON_NEGATIVE,
                                        "lambda_f": _NON_NEGATIVE, "lambda_tv": _NON_NEGATIVE,
                                        "lambda_idt": _NON_NEGATIVE}


@dataclass(frozen=True)
class AblationConfig(Checked):
    """Training budget of the Table 2 and Table 3 rows (``None``: the profile's ``train``).

    On a GPU every row trains like COIN. On two CPU cores the twelve extra GANs of the
    ablations cannot each get COIN's budget, so ``quick`` trains every row of those two
    tables, COIN and Singla* included, with the same smaller budget: the rows stay
    comparable with each other, not with Table 1.
    """

    RANGES: ClassVar[dict[str, str]] = {
        "steps": _COUNT,
        "batch_size": _BATCH,
        "table3_seeds": _SEED,
    }

    steps: int | None = None
    batch_size: int | None = None
    # replicates of the Table 3 rows (None: the profile's seeds). A CPU budget may train them
    # once, for Figs. 4-6 and a table whose every verdict then reads "not resolved"; the
    # cpu-full profile trains them on every seed (docs/profiles.md).
    table3_seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Profile(Checked):
    """Every setting of a run. ``seeds``: the replicates every trained result is repeated over
    (a verdict needs its spread); ``seed``: the replicate this profile describes
    (set by :func:`with_seed`, which also sets the seeds of the sections)."""

    RANGES: ClassVar[dict[str, str]] = {"seed": _SEED, "seeds": _SEED}

    name: str
    seed: int = 0
    seeds: tuple[int, ...] = (0,)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    data: DataConfig = field(default_factory=DataConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    tumour_classifier: ClassifierConfig = field(
        default_factory=lambda: ClassifierConfig(arch="efficientnet_v2_s")
    )
    gan: GANConfig = field(default_factory=GANConfig)
    train: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tumour_protocol: TumourProtocol = field(default_factory=TumourProtocol)

    def check(self) -> None:
        factor = 2 ** len(self.gan.widths)
        if self.data.image_size % factor:
            raise ValueError(f"data.image_size = {self.data.image_size}: the GAN's {len(self.gan.widths)} "
                             f"down blocks (gan.widths) need a multiple of {factor}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        seeds=(0, 1),  # two: the seed machinery runs in the tests; a verdict needs three
        phantom=PhantomConfig(subjects=6, kits_cases=8, kits_inplane_mm=1.5),
        data=DataConfig(image_size=64),
        classifier=ClassifierConfig(max_epochs=1, steps_per_epoch=4, batch_size=8),
        tumour_classifier=ClassifierConfig(
            arch="efficientnet_v2_s", max_epochs=1, steps_per_epoch=2, batch_size=8
        ),
        gan=GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32)),
        train=CounterfactualConfig(
            batch_size=8, steps=6, log_every=2, eval_every=3, checkpoint_every=3
        ),
        eval=EvalConfig(batch_size=16, sweep_points=21),
        saliency=SaliencyConfig(rise_masks=16, rise_batch_size=16, scorecam_batch_size=64, max_images=1),
        ablation=AblationConfig(steps=2),
        # the tiny phantom's few test tumours are small: the paper text's rule keeps abnormal
        # test slices (the authors' area rule is tested on its own, tests/test_prepare.py)
        tumour_protocol=TumourProtocol(min_lesion_area_mm2=0.0),
    ),
    # The CPU default: everything of the paper's method, at a size 2 cores train in minutes.
    # Trades (docs/profiles.md): 128 px instead of 256, GAN widths / 8, a few hundred
    # steps of 4 slices instead of 151 epochs of 16, hence a 5x larger learning rate and a
    # generator update at every step instead of every 5th (with the paper's schedule, 300
    # steps would give the generator only 60 updates). Batch 4 rather than 8: on 2 cores a
    # step costs in proportion to its batch, and a short run gains more from updates than
    # from larger batches (docs/profiles.md: measured IoU at 4 and 8).
    "quick": Profile(
        name="quick",
        seeds=(0, 1, 2),
        # 320 KiTS-layout cases (the paper had 291 tumour and 300 control scans): with 160 the
        # tumour verdicts rested on 13 test scans and intervals 0.2 wide (docs/profiles.md).
        # Rendered at 2.5 mm in-plane: slices are resized to 128 px (about 3 mm) anyway, and the
        # noise follows the voxel size (phantom.noise_std), so the prepared slices match a
        # 1.25 mm rendering at a quarter of the cost.
        phantom=PhantomConfig(subjects=40, kits_cases=320, kits_inplane_mm=2.5),
        data=DataConfig(image_size=128),
        # ResNet18 at a quarter of its width (16-128 channels): the saliency baselines cost
        # 250 (RISE) and 1 + 128 (ScoreCAM) forward passes per slice, on every abnormal val and
        # test slice and every seed; full width would take about 8x longer (docs/profiles.md).
        classifier=ClassifierConfig(width=16, lr=1e-3, max_epochs=8, steps_per_epoch=30, patience=3, batch_size=32),
        # ResNet18 (half width) on the tumour track: EfficientNetV2-S trained from scratch (no
        # weights can be downloaded) stays at the prior's BCE for 200 steps of 32 on the 128 px
        # phantom (docs/profiles.md); `paper` keeps EfficientNetV2-S. Shift-scale-rotate as the
        # authors' code; intensity jitter so that f reads contrast within a slice, not a scan's.
        # Half width, a cosine learning rate and all 20 epochs (patience 20: the best validation
        # epoch is kept, none is cut short) lift test AUC on 3 seeds from 0.883-0.925 (quarter
        # width, constant rate, patience 6) to 0.913-0.950 (docs/profiles.md). Noise jitter
        # (std up to 0.15, about 17 HU in the tumour window): without it f scores noisy normal
        # slices as abnormal and COIN can fool it by smoothing; with it the test AUC stays
        # (0.908-0.941) and COIN's tumour IoU rises from 0.173-0.268 to 0.256-0.333 on 3 seeds
        # (docs/experiments.md, "Where the tumour IoU is lost").
        tumour_classifier=ClassifierConfig(
            arch="resnet18", width=32, lr=1e-3, lr_schedule="cosine", max_epochs=20, steps_per_epoch=30,
            patience=20, batch_size=32, intensity_jitter=0.25, noise_jitter=0.15, shift_scale_rotate=True,
        ),
        gan=GANConfig(widths=(8, 16, 32, 64, 128), stem_width=8, disc_widths=(8, 16, 32, 64, 128)),
        # 450 steps: the validation IoU of COIN and of a two-condition row (Table 3 F) grows
        # until about 500-600 steps of 4 and not after (benchmarks/learning_curve.py,
        # docs/experiments.md); 450 keeps the whole paper, Tables 1-3 on 3 seeds, near two hours on
        # 2 cores (cpu-full: 600).
        train=CounterfactualConfig(
            lr=1e-3, batch_size=4, generator_every=1, steps=450, log_every=10, eval_every=225,
            checkpoint_every=75,
        ),
        saliency=SaliencyConfig(rise_masks=250),  # every abnormal val and test slice
        # Table 2 trains like Table 1 (so its COIN row is Table 1's COIN), and so do the Table 3
        # rows, on every seed: one run draws Tables 1-3 and Figs. 2-6 (docs/profiles.md).
        ablation=AblationConfig(),
        # lambda_idt 5 on the tumour track: mean validation IoU 0.329 / 0.386 / 0.396 / 0.385 for
        # 1 / 3 / 5 / 10 on 3 seeds, test IoU 0.269 -> 0.322 (docs/experiments.md, "λ_idt = 5 on the tumour track")
        tumour_protocol=TumourProtocol(lambda_idt=5.0),
    ),
    "paper": Profile(
        name="paper",
        seeds=(0, 1, 2),
        phantom=PhantomConfig(subjects=120, kits_cases=120),
        data=DataConfig(image_size=256),
        classifier=ClassifierConfig(max_epochs=20),
        # compile: the fast path (same maths, tests/test_fast_step.py); pays on a GPU only
        train=CounterfactualConfig(steps=20_000, eval_every=2000, checkpoint_every=1000, compile=True,
                                   keep_resume_state=False),
    ),
}


def track_profile(profile: Profile, track: str) -> Profile:
    """``profile`` as one track of Table 1 uses it: ``classifier``, ``data`` and ``train`` are that
    track's (the tumour track: ``tumour_classifier`` and :class:`TumourProtocol` applied).

    Every stage of a track reads ``profile.classifier``, ``profile.data`` and ``profile.train``
    of the returned profile, so both tracks run the same code. Idempotent for one track.
    """
    if track == "synthetic":
        return profile
    if track != "tumour":
        raise ValueError(f"track must be 'synthetic' or 'tumour', got {track!r}")
    protocol = profile.tumour_protocol
    return replace(
        profile,
        classifier=replace(profile.tumour_classifier, balanced_sampling=protocol.balanced_sampling),
        data=replace(profile.data, min_kidney_area_mm2=protocol.min_kidney_area_mm2,
                     min_lesion_area_mm2=protocol.min_lesion_area_mm2,
                     fingerprint_foreground=protocol.fingerprint_foreground),
        train=replace(profile.train, lambda_f=protocol.lambda_f, lambda_tv=protocol.lambda_tv,
                      lambda_idt=profile.train.lambda_idt if protocol.lambda_idt is None else protocol.lambda_idt,
                      balanced_sampling=protocol.balanced_sampling),
    )


def table3_profile(profile: Profile) -> Profile:
    """``profile`` with the seeds its Table 3 rows are trained on (``AblationConfig.table3_seeds``)."""
    seeds = profile.ablation.table3_seeds
    return profile if seeds is None else replace(profile, seeds=tuple(seeds))


def with_seed(profile: Profile, seed: int) -> Profile:
    """Replicate ``seed`` of ``profile``: the classifiers', the GAN's and RISE's seeds set to it.

    A seed changes initialisation, data order and the training anomalies' draws (and RISE's
    masks), not the data, the split or the validation/test anomalies (``AnomalyConfig.seed``),
    so every replicate is scored on the same test slices.
    """
    return replace(
        profile,
        seed=seed,
        classifier=replace(profile.classifier, seed=seed),
        tumour_classifier=replace(profile.tumour_classifier, seed=seed),
        train=replace(profile.train, seed=seed),
        saliency=replace(profile.saliency, seed=seed),
    )


# Tables 1-3 on 2 CPU cores in at most 3 hours (docs/profiles.md): quick, with every GAN
# trained 600 steps (the learning curves flatten there; 1000 gain nothing) and the Table 3 rows
# on every seed, so that Table 3's verdicts can resolve.
PROFILES["cpu-full"] = replace(
    PROFILES["quick"], name="cpu-full",
    train=replace(PROFILES["quick"].train, steps=600, eval_every=300, checkpoint_every=100),
    ablation=AblationConfig(),
)

# A class of 10 minutes on 2 CPU cores (docs/teaching.md): `quick` on the synthetic
# track only (data, classifier f, COIN; `make lesson`) with fewer scans. The tumour track and
# the ablation and saliency budgets shrink too, though the lesson does not use them.
PROFILES["lesson"] = replace(
    PROFILES["quick"],
    name="lesson",
    seeds=(0,),  # a lesson trains one replicate
    phantom=PhantomConfig(subjects=24, kits_cases=8, kits_inplane_mm=2.5),
    train=replace(PROFILES["quick"].train, steps=300),  # COIN IoU about 0.6 already (docs/teaching.md)
    tumour_classifier=replace(PROFILES["quick"].tumour_classifier, max_epochs=2, steps_per_epoch=10),
    saliency=SaliencyConfig(rise_masks=100, max_images=2),
    ablation=AblationConfig(steps=60),
)


# The `paper` profile in miniature, a rehearsal of the GPU path on the CPU: the paper's
# architectures (full GAN widths, ResNet18 and EfficientNetV2-S f), 256 px, schedule (lr 2e-4, G
# at every 5th step, batch norm in train mode), protocol and compiled step, with seeds, scans,
# steps, epochs and saliency sizes cut so that notebooks 00-11 run on 2 CPU cores in minutes.
# Derived from `paper` here, so it cannot drift from it; it is what a GPU machine runs first
# (benchmarks/gpu_check.sh) and what CI runs after the tests (docs/development.md). Its numbers
# mean nothing; that it runs does.
PROFILES["paper-mini"] = replace(
    PROFILES["paper"],
    name="paper-mini",
    seeds=(0,),
    # coarser voxels than the datasets' (still 256 px slices): a full-width GAN takes seconds per
    # 256 px slice on one CPU thread, and every GAN scores every validation and test slice, so
    # the slice count sets the run's length (here 14 test + 13 validation slices on the synthetic
    # track, 25 + 11 on the tumour track)
    phantom=replace(PROFILES["paper"].phantom, subjects=6, kits_cases=10, spacing_mm=6.0, kits_inplane_mm=1.5,
                    kits_slice_mm=10.0),
    classifier=replace(PROFILES["paper"].classifier, max_epochs=1, steps_per_epoch=2, batch_size=4),
    tumour_classifier=replace(PROFILES["paper"].tumour_classifier, max_epochs=1, steps_per_epoch=2, batch_size=4),
    # two steps: the compiled step with the generator (step 1 of every 5) and without it
    train=replace(PROFILES["paper"].train, steps=2, batch_size=2, log_every=1, eval_every=2, checkpoint_every=2),
    eval=replace(PROFILES["paper"].eval, batch_size=8, sweep_points=21),
    saliency=replace(PROFILES["paper"].saliency, rise_masks=8, rise_batch_size=8, max_images=1),
    # ten small phantom cases leave no validation lesion above the authors' 608 mm2: the paper
    # text's any-lesion rule (the same setting's other value) keeps some, as in `smoke`
    tumour_protocol=replace(PROFILES["paper"].tumour_protocol, min_lesion_area_mm2=0.0),
)


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Return the named profile, with ``overrides`` = {"section": {"field": value}} applied.

    Raises ``KeyError`` naming the profile, section or field when any is unknown, and
    ``ValueError`` naming the field when a value has the wrong type or range (:class:`Checked`).
    """
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    for section, values in (overrides or {}).items():
        if section in ("name", "seed", "seeds") or section not in {f.name for f in fields(Profile)}:
            raise KeyError(f"unknown config section {section!r} in overrides")
        current = getattr(profile, section)
        try:
            profile = replace(profile, **{section: from_dict(type(current), {**to_dict(current), **values})})
        except ValueError as err:
            raise ValueError(f"profile {name!r}, overrides of {section!r}: {err}") from None
    return profile


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ``KeyError``, values of the
    wrong type or range ``ValueError`` (:class:`Checked`).

    Lists are turned back into tuples and nested dataclasses are rebuilt, so
    ``from_dict(type(c), to_dict(c)) == c`` for every config here.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def config_rows(configs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per field of same-typed configs, one column per name: a readable settings table.

    ``config_rows({"synthetic": p.classifier, "tumour": p.tumour_classifier})`` ->
    ``[{"setting": "arch", "synthetic": "resnet18", "tumour": ...}, ...]`` (for
    :func:`coinlib.tables.markdown_table`); tuples are shown as written in the profile.
    """
    names = list(configs)
    first = configs[names[0]]
    rows = []
    for f in fields(first):
        rows.append({"setting": f.name, **{name: _shown(getattr(configs[name], f.name, None)) for name in names}})
    return rows


def _shown(value: Any) -> Any:
    return ", ".join(str(v) for v in value) if isinstance(value, tuple) else value
