"""The run folder and its stages: what each notebook reuses or builds.

Notebooks share nothing but files in one run folder (STYLE.md rule 6). Each stage
here returns its artifact's path, building it only when it is missing or stale, so
every notebook runs on its own from a fresh kernel::

    runs/<profile>/
      data/phantom/totalsegmentator/   generated CT (TotalSegmentator layout)
      data/phantom/kits23/             generated CT with tumours (KiTS23 layout)
      data/prepared/<name>_<size>/     prepared slices (coinlib.prepared)
      models/<track>/classifier/       classifier f
      models/<track>/<variant>/        counterfactual GAN (COIN, Singla*, ablations)
      results/                         metrics JSON
      notebooks/                       executed notebooks (coin reproduce)

A *track* is "synthetic" (TotalSegmentator layout + synthetic anomalies, ResNet18) or
"tumour" (KiTS23 layout + real tumours, EfficientNetV2-S) — the two halves of Table 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .config import AnomalyConfig, ClassifierConfig, Profile

__all__ = [
    "Track",
    "RunPaths",
    "prepare_track",
    "track_settings",
    "ensure_classifier",
    "ensure_counterfactual",
    "evaluate_variant",
    "evaluate_classifier",
]

Track = Literal["synthetic", "tumour"]
LAYOUT_OF_TRACK = {"synthetic": "totalsegmentator", "tumour": "kits23"}


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    def phantom(self, layout: str) -> Path:
        return self.root / "data" / "phantom" / layout

    def prepared(self, name: str, image_size: int) -> Path:
        return self.root / "data" / "prepared" / f"{name}_{image_size}"

    def classifier(self, track: Track) -> Path:
        return self.root / "models" / track / "classifier"

    def counterfactual(self, track: Track, variant: str) -> Path:
        return self.root / "models" / track / variant

    @property
    def results(self) -> Path:
        return self.root / "results"


def track_settings(profile: Profile, track: Track) -> tuple[ClassifierConfig, AnomalyConfig | None]:
    """The classifier config and anomaly config of a track (synthetic anomalies or none)."""
    if track == "synthetic":
        return profile.classifier, profile.anomaly
    if track == "tumour":
        return profile.tumour_classifier, None
    raise ValueError(f"track must be 'synthetic' or 'tumour', got {track!r}")


def prepare_track(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    source: str | os.PathLike = "phantom",
    progress: bool = True,
) -> Path:
    """Prepared slices for ``track``: from the phantom (generated on first use) or a real folder.

    ``source`` is "phantom" or the path of a dataset in the track's real layout
    (TotalSegmentator for "synthetic", KiTS23 for "tumour").
    """
    from .phantom import generate_kits23, generate_totalsegmentator
    from .prepare import detect_layout, prepare_dataset

    paths = RunPaths(run_dir)
    layout = LAYOUT_OF_TRACK[track]
    if str(source) == "phantom":
        src = paths.phantom(layout)
        if layout == "totalsegmentator":
            generate_totalsegmentator(src, profile.phantom.subjects, profile.phantom.seed,
                                      spacing_mm=profile.phantom.spacing_mm)
        else:
            extra = {} if profile.phantom.kits_inplane_mm is None else {"inplane_mm": profile.phantom.kits_inplane_mm}
            generate_kits23(src, profile.phantom.kits_cases, profile.phantom.seed, **extra)
        name = f"phantom_{layout}"
    else:
        src = Path(source)
        found = detect_layout(src)
        if found != layout:
            raise ValueError(f"{src} is in the {found} layout; the {track} track needs {layout}")
        name = f"{layout}_{src.resolve().name}"
    return prepare_dataset(layout, src, paths.prepared(name, profile.data.image_size), profile.data,
                           progress=progress)


def ensure_classifier(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Train the track's classifier unless its run folder already holds a finished one."""
    from .classifier_training import train_classifier

    config, anomaly = track_settings(profile, track)
    return train_classifier(prepared, config, anomaly, RunPaths(run_dir).classifier(track),
                            device=device, progress=progress)


def ensure_counterfactual(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    variant: str = "coin",
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume, or reuse) the counterfactual GAN ``variant`` of ``track``.

    The classifier of the track is built first when missing. Validation IoU and CV are
    logged every ``train.eval_every`` steps.
    """
    from .classifier_training import load_classifier
    from .counterfactual import train_counterfactual
    from .data import evaluation_set
    from .evaluate import quick_validation
    from .variants import apply_variant

    paths = RunPaths(run_dir)
    classifier_path = ensure_classifier(profile, run_dir, track, prepared, device, progress)
    configured = apply_variant(profile, variant)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    val_set = evaluation_set(prepared, "val", anomaly)
    return train_counterfactual(
        prepared, configured.gan, configured.train, anomaly, classifier, classifier_path,
        paths.counterfactual(track, variant), device=device, progress=progress,
        evaluate=quick_validation(classifier, configured.gan, configured.eval, val_set),
    )


def evaluate_variant(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    variant: str = "coin",
    device: torch.device | str | None = None,
    fid: bool = True,
    progress: bool = True,
) -> dict:
    """Score a trained variant on the test split; write ``results/<track>_<variant>.json``.

    The JSON holds the metrics, the thresholds, the profile, the hardware, the seed and
    the git commit, so every number can be traced to what produced it.
    """
    from .classifier_training import load_classifier
    from .config import to_dict
    from .counterfactual import load_generator
    from .data import evaluation_set
    from .evaluate import evaluate_counterfactual
    from .files import write_json
    from .runtime import git_commit, hardware_summary, pick_device
    from .variants import VARIANTS, apply_variant

    paths = RunPaths(run_dir)
    device = device if isinstance(device, torch.device) else pick_device(device)
    configured = apply_variant(profile, variant)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    generator, gan = load_generator(paths.counterfactual(track, variant), device)
    seed = configured.train.seed
    test_set = evaluation_set(prepared, "test", anomaly)
    val_set = evaluation_set(prepared, "val", anomaly)
    scored = evaluate_counterfactual(generator, classifier, gan, configured.eval, test_set, val_set,
                                     fid=fid, progress=progress)
    results = {
        "track": track,
        "variant": variant,
        "paper_row": VARIANTS[variant].paper_row,
        "profile": profile.name,
        "config": {"gan": to_dict(configured.gan), "train": to_dict(configured.train),
                   "eval": to_dict(configured.eval)},
        "data": str(prepared),
        "seed": seed,
        "hardware": hardware_summary(device),
        "git_commit": git_commit(),
        **scored,
    }
    write_json(paths.results / f"{track}_{variant}.json", results)
    return results


def evaluate_classifier(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    device: torch.device | str | None = None,
) -> dict:
    """Test-split AUC, accuracy and confusion matrix of the track's classifier.

    Writes ``results/classifier_<track>.json`` and returns it together with the per-slice
    ``p_abnormal``, ``label`` and ``index`` arrays (not written) for plots.
    """
    import numpy as np

    from .classifier_training import load_classifier, predict, roc_auc
    from .data import evaluation_set
    from .files import write_json
    from .runtime import git_commit, hardware_summary

    config, anomaly = track_settings(profile, track)
    model = load_classifier(RunPaths(run_dir).classifier(track), device)
    scores = predict(model, evaluation_set(prepared, "test", anomaly), batch_size=profile.eval.batch_size)
    predicted = scores["p_abnormal"] >= config.threshold
    actual = scores["label"] > 0.5
    confusion = {
        "true_negative": int((~predicted & ~actual).sum()),
        "false_positive": int((predicted & ~actual).sum()),
        "false_negative": int((~predicted & actual).sum()),
        "true_positive": int((predicted & actual).sum()),
    }
    results = {
        "track": track,
        "arch": config.arch,
        "profile": profile.name,
        "test_auc": roc_auc(actual, scores["p_abnormal"]),
        "test_accuracy": float((predicted == actual).mean()),
        "threshold": config.threshold,
        "confusion": confusion,
        "test_slices": int(len(actual)),
        "hardware": hardware_summary(next(model.parameters()).device),
        "git_commit": git_commit(),
    }
    write_json(RunPaths(run_dir).results / f"classifier_{track}.json", results)
    return {**results, "scores": {k: np.asarray(v) for k, v in scores.items()}}
