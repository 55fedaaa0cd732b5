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
      models/<track>/ablation/<variant>/  Table 2/3 rows, when the profile trains them shorter
      results/                         metrics JSON (<track>_<method>.json, ablation_...)
      tables/, figures/                what the notebooks write (Markdown + CSV, PNG + PDF)
      notebooks/                       executed notebooks (coin reproduce)
      run.json                         the profile and settings the folder belongs to

A run folder belongs to one profile and its settings (``coinlib.provenance``): every stage
refuses a folder written with others. Models record their data and classifier by content,
and a stage refuses one that learned from anything else; results are reused only for the
same model files and data. Nothing compares paths, so a run folder can be moved or copied.

A *track* is "synthetic" (TotalSegmentator layout + synthetic anomalies, ResNet18) or
"tumour" (KiTS23 layout + real tumours, EfficientNetV2-S) — the two halves of Table 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .config import AnomalyConfig, ClassifierConfig, Profile
from .provenance import claim_run_folder

__all__ = [
    "Track",
    "RunPaths",
    "prepare_track",
    "track_settings",
    "ensure_classifier",
    "ensure_counterfactual",
    "evaluate_variant",
    "ensure_results",
    "ensure_table1",
    "evaluate_saliency",
    "evaluate_classifier",
    "load_results",
    "load_saliency_maps",
    "saliency_maps_path",
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

    def counterfactual(self, track: Track, variant: str, ablation: bool = False) -> Path:
        return self.root / "models" / track / ("ablation" if ablation else "") / variant

    def result(self, track: Track, method: str, ablation: bool = False) -> Path:
        return self.results / f"{'ablation_' if ablation else ''}{track}_{method}.json"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def _budget(profile: Profile, ablation: bool) -> tuple[Profile, bool]:
    """The profile a Table 2/3 row trains with, and whether it has its own folder."""
    from .variants import ablation_budget

    shorter = ablation_budget(profile) if ablation else None
    return (shorter, True) if shorter is not None else (profile, False)


def _fingerprint(*files: Path) -> list[str]:
    """Content ids of the files a result depends on: a retrained model invalidates it, a moved
    or copied run folder does not."""
    from .files import content_id

    return [content_id([f]) for f in files]


def _served(classifier_dir: Path, prepared: str | os.PathLike, generator_dir: Path | None = None) -> str:
    """The prepared folder's content id, after checking that the classifier in
    ``classifier_dir`` (and the generator in ``generator_dir``) learned from that data and
    that classifier."""
    from .classifier_training import BEST as CLASSIFIER
    from .classifier_training import load_classifier
    from .counterfactual import FINAL
    from .prepared import open_prepared
    from .provenance import check_trained_on, weights_id

    data_id = open_prepared(prepared).content_id
    check_trained_on((classifier_dir / CLASSIFIER).with_suffix(".json"), data_id)
    if generator_dir is not None:
        classifier_id = weights_id(load_classifier(classifier_dir, "cpu"))
        check_trained_on((generator_dir / FINAL).with_suffix(".json"), data_id, classifier_id)
    return data_id


def _reusable(path: Path, settings: dict) -> dict | None:
    """The results at ``path`` when they were computed with exactly ``settings``."""
    from .files import read_json

    if path.is_file():
        saved = read_json(path)
        if saved.get("settings") == settings:
            return saved
    return None


def _write_results(path: Path, fields: dict, prepared: str | os.PathLike, device: torch.device,
                   settings: dict, scored: dict) -> dict:
    """Write a results JSON with what produced it: data, hardware, commit, settings."""
    from .files import write_json
    from .runtime import git_commit, hardware_summary

    results = {**fields, "data": str(prepared), "hardware": hardware_summary(device), "git_commit": git_commit(),
               "settings": settings, **scored}
    write_json(path, results)
    return results


def saliency_maps_path(run_dir: str | os.PathLike, track: Track, method: str) -> Path:
    """Where :func:`evaluate_saliency` keeps the scored test maps (``index``, ``maps``)."""
    return RunPaths(run_dir).results / f"{track}_{method}_maps.npz"


def load_saliency_maps(run_dir: str | os.PathLike, track: Track, method: str) -> dict[int, np.ndarray]:
    """The saliency maps scored on the test split, by prepared row: ``{row: (H, W) float32}``."""
    path = saliency_maps_path(run_dir, track, method)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 04 (saliency baselines)")
    with np.load(path) as saved:
        return {int(i): m.astype(np.float32) for i, m in zip(saved["index"], saved["maps"])}


def load_results(run_dir: str | os.PathLike, track: Track, method: str, ablation: bool = False) -> dict:
    """The results JSON of ``method`` (a variant or a saliency method) on ``track``.

    ``ablation``: the Table 2/3 run of the variant (the Table 1 one when the profile
    trains both alike). Raises ``FileNotFoundError`` naming the notebook that writes it.
    """
    from .files import read_json

    paths = RunPaths(run_dir)
    path = paths.result(track, method, ablation)
    if ablation and not path.is_file():
        path = paths.result(track, method)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the notebook that evaluates {method} on {track}")
    return read_json(path)


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

    claim_run_folder(profile, run_dir)
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

    claim_run_folder(profile, run_dir)
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
    ablation: bool = False,
) -> Path:
    """Train (or resume, or reuse) the counterfactual GAN ``variant`` of ``track``.

    The classifier of the track is built first when missing. Validation IoU and CV are
    logged every ``train.eval_every`` steps. ``ablation``: train it as a Table 2/3 row,
    with ``profile.ablation``'s budget (in its own folder, and without in-training
    validation, when that differs).
    """
    from .classifier_training import load_classifier
    from .counterfactual import train_counterfactual
    from .data import evaluation_set
    from .evaluate import quick_validation
    from .variants import apply_variant

    paths = RunPaths(run_dir)
    classifier_path = ensure_classifier(profile, run_dir, track, prepared, device, progress)
    profile, separate = _budget(profile, ablation)
    configured = apply_variant(profile, variant)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    # A row with its own shorter budget is scored once, after training, by evaluate_variant
    # (validation sweep included): validating it during training would repeat that work.
    evaluate = None if separate else quick_validation(
        classifier, configured.gan, configured.eval, evaluation_set(prepared, "val", anomaly))
    return train_counterfactual(
        prepared, configured.gan, configured.train, anomaly, classifier, classifier_path,
        paths.counterfactual(track, variant, separate), device=device, progress=progress,
        evaluate=evaluate,
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
    ablation: bool = False,
) -> dict:
    """Score a trained variant on the test split; write ``results/<track>_<variant>.json``.

    The JSON holds the metrics, the thresholds, the profile, the hardware, the seed and
    the git commit, so every number can be traced to what produced it. A result computed
    from the same checkpoint with the same settings is reused, not recomputed.
    ``ablation``: the Table 2/3 run (``results/ablation_...`` when it has its own budget).
    """
    from .classifier_training import BEST as CLASSIFIER
    from .classifier_training import load_classifier
    from .config import to_dict
    from .counterfactual import FINAL, load_generator
    from .data import evaluation_set
    from .evaluate import evaluate_counterfactual
    from .files import read_json
    from .runtime import pick_device
    from .variants import VARIANTS, apply_variant

    claim_run_folder(profile, run_dir)
    paths = RunPaths(run_dir)
    profile, separate = _budget(profile, ablation)
    configured = apply_variant(profile, variant)
    model_dir = paths.counterfactual(track, variant, separate)
    settings = {"eval": to_dict(configured.eval), "fid": fid,
                "data_id": _served(paths.classifier(track), prepared, model_dir),
                "inputs": _fingerprint(paths.classifier(track) / CLASSIFIER, model_dir / FINAL)}
    out = paths.result(track, variant, separate)
    if (saved := _reusable(out, settings)) is not None:
        return saved
    device = device if isinstance(device, torch.device) else pick_device(device)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    generator, gan = load_generator(model_dir, device)
    test_set = evaluation_set(prepared, "test", anomaly)
    val_set = evaluation_set(prepared, "val", anomaly)
    scored = evaluate_counterfactual(generator, classifier, gan, configured.eval, test_set, val_set,
                                     fid=fid, progress=progress)
    trained = read_json((model_dir / FINAL).with_suffix(".json"))  # what the checkpoint was trained with
    results = {
        "track": track,
        "variant": variant,
        "paper_row": VARIANTS[variant].paper_row,
        "profile": profile.name,
        "budget": "ablation" if separate else "main",
        "config": {"gan": trained["gan"], "train": trained["train"], "eval": to_dict(configured.eval)},
        "seed": trained["train"]["seed"],
    }
    return _write_results(out, results, prepared, device, settings, scored)


def ensure_results(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    variant: str,
    ablation: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Train (or reuse) ``variant`` and score it: the one call behind each table row."""
    ensure_counterfactual(profile, run_dir, track, prepared, variant, device, progress, ablation)
    return evaluate_variant(profile, run_dir, track, prepared, variant, device, progress=progress,
                            ablation=ablation)


def ensure_table1(
    profile: Profile,
    run_dir: str | os.PathLike,
    sources: dict[str, str | os.PathLike],
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """Every Table 1 result, built where missing: ``{track: {method: results}}``.

    ``sources`` maps each track to "phantom" or its dataset folder. Per track: the
    classifier, the saliency methods of ``profile.saliency``, Singla* and COIN.
    """
    from .variants import TABLE1_VARIANTS

    table: dict[str, dict[str, dict]] = {}
    for track, source in sources.items():
        prepared = prepare_track(profile, run_dir, track, source, progress=progress)
        ensure_classifier(profile, run_dir, track, prepared, device, progress)
        table[track] = {
            **{m: evaluate_saliency(profile, run_dir, track, prepared, m, device, progress)
               for m in profile.saliency.methods_for(track)},
            **{v: ensure_results(profile, run_dir, track, prepared, v, device=device, progress=progress)
               for v in TABLE1_VARIANTS},
        }
    return table


def evaluate_saliency(
    profile: Profile,
    run_dir: str | os.PathLike,
    track: Track,
    prepared: str | os.PathLike,
    method: str,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Score saliency ``method`` with the track's classifier; write ``results/<track>_<method>.json``.

    Same protocol and threshold choice as :func:`evaluate_variant` (Sec. 5), on
    ``profile.saliency.max_images`` abnormal slices per split; the cost (forward passes,
    seconds per image) is recorded. Reused when the classifier and settings are unchanged.
    """
    import numpy as np

    from .classifier_training import BEST as CLASSIFIER
    from .classifier_training import load_classifier
    from .config import to_dict
    from .data import evaluation_set
    from .evaluate import evaluate_saliency_method
    from .files import atomic_path
    from .runtime import pick_device

    claim_run_folder(profile, run_dir)
    paths = RunPaths(run_dir)
    settings = {"saliency": to_dict(profile.saliency), "eval": to_dict(profile.eval),
                "data_id": _served(paths.classifier(track), prepared),
                "inputs": _fingerprint(paths.classifier(track) / CLASSIFIER)}
    out = paths.result(track, method)
    if (saved := _reusable(out, settings)) is not None and saliency_maps_path(run_dir, track, method).is_file():
        return saved
    device = device if isinstance(device, torch.device) else pick_device(device)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    scored = evaluate_saliency_method(
        method, classifier, profile.saliency, profile.eval,
        evaluation_set(prepared, "test", anomaly), evaluation_set(prepared, "val", anomaly), progress,
    )
    with atomic_path(saliency_maps_path(run_dir, track, method)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, index=np.asarray(scored["test_index"]), maps=scored.pop("test_maps"))
    results = {
        "track": track,
        "method": method,
        "profile": profile.name,
    }
    return _write_results(out, results, prepared, device, settings, scored)


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
    from .classifier_training import load_classifier, predict, roc_auc
    from .data import evaluation_set
    from .files import write_json
    from .runtime import git_commit, hardware_summary

    claim_run_folder(profile, run_dir)
    _served(RunPaths(run_dir).classifier(track), prepared)
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
