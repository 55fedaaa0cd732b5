"""COIN, Singla* and every ablation as named settings of the one GAN and trainer.

Each variant names the fields it changes on top of a profile's ``gan`` and ``train``
sections, and the paper row it reproduces (Table 1, Table 2, Table 3 / Appendix A).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .config import Profile, from_dict, to_dict

__all__ = [
    "Variant",
    "VARIANTS",
    "TABLE1_VARIANTS",
    "TABLE2_VARIANTS",
    "TABLE3_VARIANTS",
    "apply_variant",
    "ablation_budget",
]


@dataclass(frozen=True)
class Variant:
    name: str
    paper_row: str  # where the paper reports it
    gan: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def _appendix(row: str, masks: bool, perturbation: bool, skips: int, conditions: int) -> Variant:
    return Variant(
        name=f"table3_{row.lower()}",
        paper_row=f"Table 3 row {row}",
        gan={"use_masks": masks, "perturbation": perturbation, "skips": skips, "conditions": conditions},
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("coin", "Table 1/2/3: COIN (no masks, perturbations, 4 skips, 1 condition)"),
        Variant(
            "singla",
            "Table 1: Singla et al.* (= Table 3 row H: no masks, no perturbations, 4 skips, 2 conditions)",
            gan={"conditions": 2, "perturbation": False, "skips": 4, "use_masks": False},
        ),
        Variant("coin_no_idt", "Table 2: lambda_idt = 0", train={"lambda_idt": 0.0}),
        Variant("coin_no_f", "Table 2: lambda_f = 0", train={"lambda_f": 0.0}),
        Variant("coin_no_tv", "Table 2: lambda_tv = 0", train={"lambda_tv": 0.0}),
        _appendix("A", True, False, 0, 2),
        _appendix("B", True, True, 0, 2),
        _appendix("C", True, True, 1, 2),
        _appendix("D", True, True, 2, 2),
        _appendix("E", True, True, 3, 2),
        _appendix("F", True, True, 4, 2),
        _appendix("G", False, True, 4, 2),
        # row H (no masks, no perturbations, 4 skips, 2 conditions) is "singla"
    ]
}

TABLE1_VARIANTS = ("singla", "coin")
TABLE2_VARIANTS = ("coin_no_idt", "coin_no_f", "coin_no_tv", "coin")
TABLE3_VARIANTS = tuple(f"table3_{row}" for row in "abcdefg") + ("singla", "coin")


def apply_variant(profile: Profile, name: str) -> Profile:
    """``profile`` with the variant's ``gan`` and ``train`` fields replaced (unknown names raise)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    gan = from_dict(type(profile.gan), {**to_dict(profile.gan), **variant.gan})
    train = from_dict(type(profile.train), {**to_dict(profile.train), **variant.train})
    return replace(profile, gan=gan, train=train)


def ablation_budget(profile: Profile) -> Profile | None:
    """``profile`` with the Table 2 / Table 3 training budget, or ``None`` when it is the same.

    ``profile.ablation`` may shorten training (``steps``, ``batch_size``) for the ablation
    rows; ``None`` means they train exactly like Table 1 and reuse its COIN and Singla*.
    """
    budget = {"steps": profile.ablation.steps, "batch_size": profile.ablation.batch_size}
    changes = {key: value for key, value in budget.items() if value is not None}
    train = replace(profile.train, **changes)
    return None if train == profile.train else replace(profile, train=train)
