"""The run folder and its stages: what each notebook reuses or builds.

Notebooks share nothing but files in one run folder (STYLE.md rule 6). Each stage
here returns its artifact's path, building it only when it is missing or stale, so
every notebook runs on its own from a fresh kernel::

    runs/<profile>/
      data/phantom/totalsegmentator/   generated CT (TotalSegmentator layout)
      data/phantom/kits23/             generated CT with tumours (KiTS23 layout)
      data/prepared/<name>_<size>/     prepared slices (coinlib.prepared), shared by every seed
      models/<track>/seed<s>/classifier/            classifier f of replicate s
      models/<track>/seed<s>/<variant>/             counterfactual GAN (COIN, Singla*, ablations)
      models/<track>/seed<s>/ablation/<variant>/    Table 2/3 rows, when the profile trains them shorter
      results/seed<s>/                 metrics JSON (<track>_<method>.json, ablation_..., classifier_...)
      tables/, figures/                what the notebooks write (Markdown + CSV, PNG + PDF)
      notebooks/                       executed notebooks (coin reproduce)
      run.json                         the profile and settings the folder belongs to

A run folder belongs to one profile and its settings (``coinlib.provenance``): every stage
refuses a folder written with others. Models record their data and classifier by content,
and a stage refuses one that learned from anything else; results are reused only for the
same model files and data. Nothing compares paths, so a run folder can be moved or copied.

A *track* is "synthetic" (TotalSegmentator layout + synthetic anomalies, ResNet18) or
"tumour" (KiTS23 layout + real tumours, EfficientNetV2-S) — the two halves of Table 1.

Seeds: every trained result is repeated over ``profile.seeds``. Replicate ``s``
(:func:`coinlib.config.with_seed`) has its own classifier, its own GANs and its own saliency
maps (explaining its own classifier); data, split and test anomalies are shared, so the
replicates are scored on the same slices. The single-replicate stages (``ensure_classifier``,
``ensure_results``, ...) work on ``profile.seed``; the ``*_all`` stages run every seed and
track as independent jobs (:mod:`coinlib.jobs`: side by side on the CPU's cores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .config import AnomalyConfig, ClassifierConfig, Profile, track_profile
from .provenance import claim_run_folder

__all__ = [
    "Track",
    "RunPaths",
    "default_run_dir",
    "repository_root",
    "check_source",
    "prepare_track",
    "track_settings",
    "ensure_classifier",
    "ensure_counterfactual",
    "evaluate_variant",
    "ensure_results",
    "ensure_table1",
    "prepare_tracks",
    "evaluate_saliency",
    "evaluate_classifier",
    "load_results",
    "load_classifier_results",
    "load_saliency_maps",
    "abnormal_counterfactuals",
    "saliency_maps_path",
    "ensure_classifiers_all",
    "ensure_results_all",
    "evaluate_saliency_all",
    "evaluate_any_lesion_all",
    "evaluate_classifier_all",
]

Track = Literal["synthetic", "tumour"]
LAYOUT_OF_TRACK = {"synthetic": "totalsegmentator", "tumour": "kits23"}


@dataclass(frozen=True)
class RunPaths:
    """Where everything of a run folder lives; models and results are those of replicate ``seed``."""

    root: Path
    seed: int = 0

    def __init__(self, root: str | os.PathLike, seed: int = 0) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "seed", int(seed))

    def phantom(self, layout: str) -> Path:
        return self.root / "data" / "phantom" / layout

    def prepared(self, name: str, image_size: int) -> Path:
        return self.root / "data" / "prepared" / f"{name}_{image_size}"

    def models(self, track: Track) -> Path:
        return self.root / "models" / track / f"seed{self.seed}"

    def classifier(self, track: Track) -> Path:
        return self.models(track) / "classifier"

    def counterfactual(self, track: Track, variant: str, ablation: bool = False) -> Path:
        return self.models(track) / ("ablation" if ablation else "") / variant

    def result(self, track: Track, method: str, ablation: bool = False) -> Path:
        return self.seed_results / f"{'ablation_' if ablation else ''}{track}_{method}.json"

    def classifier_result(self, track: Track) -> Path:
        return self.seed_results / f"classifier_{track}.json"

    def saliency_maps(self, track: Track, method: str) -> Path:
        return self.seed_results / f"{track}_{method}_maps.npz"

    @property
    def results(self) -> Path:
        """Results of every replicate (``seed<s>/``) and the run's summary."""
        return self.root / "results"

    @property
    def seed_results(self) -> Path:
        return self.results / f"seed{self.seed}"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def repository_root() -> Path:
    """The checkout that holds this ``coinlib`` (the folder with ``pyproject.toml`` and ``notebooks/``).

    Found from this file's location, so it does not depend on where a kernel or shell starts.
    Raises ``FileNotFoundError`` when ``coinlib`` is not inside a checkout (a wheel install).
    """
    root = Path(__file__).resolve().parent.parent
    if not ((root / "pyproject.toml").is_file() and (root / "notebooks").is_dir()):
        raise FileNotFoundError(f"coinlib at {root / 'coinlib'} is not inside a checkout of the repository "
                                "(no pyproject.toml and notebooks/ beside it); pass run_dir explicitly")
    return root


def default_run_dir(profile: str | Profile) -> Path:
    """``<repository>/runs/<profile>``: the folder ``make reproduce`` writes, wherever a kernel starts.

    The notebooks' ``run_dir`` parameter defaults to this (``run_dir = None``), so a notebook
    opened from JupyterLab in ``notebooks/``, from the repository root or from elsewhere finds
    the same run folder. ``profile``: a profile name or a :class:`Profile`.
    """
    name = profile.name if isinstance(profile, Profile) else str(profile)
    return repository_root() / "runs" / name


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
    """Write a results JSON with what produced it: data, hardware, commit, settings.

    Each per-slice list of the metrics (``per_slice``, ``per_slice_cv``) gets the scan of
    every slice (``scans``), so that the tables can resample whole scans
    (:mod:`coinlib.verdicts`) from the results file alone.
    """
    from .files import write_json
    from .prepared import open_prepared
    from .runtime import git_commit, hardware_summary

    metrics = scored.get("metrics", {})
    if any(key in metrics for key in ("per_slice", "per_slice_cv")):
        index = open_prepared(prepared).index
        for key in ("per_slice", "per_slice_cv"):
            if key in metrics:
                metrics[key]["scans"] = [index[row]["scan_id"] for row in metrics[key]["rows"]]
    results = {**fields, "data": str(prepared), "hardware": hardware_summary(device), "git_commit": git_commit(),
               "settings": settings, **scored}
    write_json(path, results)
    return results


def saliency_maps_path(run_dir: str | os.PathLike, track: Track, method: str, seed: int = 0) -> Path:
    """Where :func:`evaluate_saliency` keeps the scored test maps (``index``, ``maps``) of ``seed``."""
    return RunPaths(run_dir, seed).saliency_maps(track, method)


def load_saliency_maps(run_dir: str | os.PathLike, track: Track, method: str,
                       seed: int = 0) -> dict[int, np.ndarray]:
    """The saliency maps scored on the test split, by prepared row: ``{row: (H, W) float32}``."""
    path = saliency_maps_path(run_dir, track, method, seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 05 (saliency baselines)")
    with np.load(path) as saved:
        return {int(i): m.astype(np.float32) for i, m in zip(saved["index"], saved["maps"])}


def abnormal_counterfactuals(run_dir: str | os.PathLike, track: Track, variant: str, seed: int,
                             splits: tuple[str, ...] = ("val", "test"), device: torch.device | str = "cpu",
                             prepared: str | os.PathLike | None = None, overrides: dict | None = None):
    """The trained ``variant`` of replicate ``seed`` of a finished run, on the abnormal slices of
    each split: ``({split: arrays of generate_counterfactuals}, eval config)``.

    For benchmarks that re-score a run's counterfactuals (other post-processing, where the
    masks lie): the run folder's recorded profile and settings (:func:`coinlib.provenance.run_profile`,
    ``overrides`` on top, :func:`coinlib.cli.parse_overrides`), its prepared data (``prepared``, or the
    phantom's), f and generator, and the eval config the variant is scored with (Sec. 5).
    """
    from .classifier_training import load_classifier
    from .config import with_seed
    from .counterfactual import generate_counterfactuals, load_generator
    from .data import evaluation_set
    from .evaluate import abnormal_indices
    from .provenance import run_profile
    from .runtime import pick_device, use_job_threads
    from .variants import apply_variant

    device = device if isinstance(device, torch.device) else pick_device(device)
    use_job_threads(device)
    profile = with_seed(run_profile(run_dir, overrides), seed)
    eval_config = apply_variant(track_profile(profile, track), variant).eval
    _, anomaly = track_settings(profile, track)
    prepared = prepared or prepare_track(profile, run_dir, track, "phantom", progress=False)
    paths = RunPaths(run_dir, seed)
    classifier = load_classifier(paths.classifier(track), device)
    generator, gan = load_generator(paths.counterfactual(track, variant), device)
    arrays = {}
    for split in splits:
        dataset = evaluation_set(prepared, split, anomaly)
        abnormal = torch.utils.data.Subset(dataset, abnormal_indices(dataset).tolist())
        arrays[split] = generate_counterfactuals(generator, classifier, abnormal, gan, eval_config.batch_size, device)
    return arrays, eval_config


def load_results(run_dir: str | os.PathLike, track: Track, method: str, ablation: bool = False,
                 seed: int = 0) -> dict:
    """The results JSON of ``method`` (a variant or a saliency method) on ``track``, replicate ``seed``.

    ``ablation``: the Table 2/3 run of the variant (the Table 1 one when the profile
    trains both alike). Raises ``FileNotFoundError`` naming the notebook that writes it.
    """
    from .files import read_json

    paths = RunPaths(run_dir, seed)
    path = paths.result(track, method, ablation)
    if ablation and not path.is_file():
        path = paths.result(track, method)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the notebook that evaluates {method} on {track}")
    return read_json(path)


def load_classifier_results(run_dir: str | os.PathLike, track: Track, seed: int = 0) -> dict:
    """``results/seed<s>/classifier_<track>.json`` (test AUC, accuracy, confusion matrix)."""
    from .files import read_json

    path = RunPaths(run_dir, seed).classifier_result(track)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 01 (classifiers)")
    return read_json(path)


def track_settings(profile: Profile, track: Track) -> tuple[ClassifierConfig, AnomalyConfig | None]:
    """The classifier config and anomaly config of a track (synthetic anomalies or none)."""
    seen = track_profile(profile, track)
    return seen.classifier, seen.anomaly if track == "synthetic" else None


def check_source(track: Track, source: str | os.PathLike) -> Path | None:
    """The dataset folder of ``source`` for ``track`` (None for "phantom"), after checking
    that it exists and is in the track's real layout; raises naming it otherwise."""
    from .prepare import detect_layout

    if str(source) == "phantom":
        return None
    src = Path(source)
    found = detect_layout(src)
    layout = LAYOUT_OF_TRACK[track]
    if found != layout:
        raise ValueError(f"{src} is in the {found} layout; the {track} track needs {layout}")
    return src


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
        ph = profile.phantom
        if layout == "totalsegmentator":
            generate_totalsegmentator(src, ph.subjects, ph.seed, spacing_mm=ph.spacing_mm, phases=ph.ts_phases)
        else:
            extra = {key: value for key, value in (("inplane_mm", ph.kits_inplane_mm), ("slice_mm", ph.kits_slice_mm))
                     if value is not None}
            generate_kits23(src, ph.kits_cases, ph.seed, phases=ph.kits_phases, **extra)
        name = f"phantom_{layout}"
    else:
        src = check_source(track, source)
        name = f"{layout}_{src.resolve().name}"
    data = track_profile(profile, track).data
    return prepare_dataset(layout, src, paths.prepared(name, data.image_size), data, progress=progress)


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
    return train_classifier(prepared, config, anomaly, RunPaths(run_dir, profile.seed).classifier(track),
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
    from .evaluate import quick_validation, require_abnormal
    from .variants import apply_variant

    paths = RunPaths(run_dir, profile.seed)
    classifier_path = ensure_classifier(profile, run_dir, track, prepared, device, progress)
    profile, separate = _budget(track_profile(profile, track), ablation)
    configured = apply_variant(profile, variant)
    classifier_config, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    val_set = evaluation_set(prepared, "val", anomaly)
    require_abnormal(val_set, "validation")  # before hours of training, not after
    require_abnormal(evaluation_set(prepared, "test", anomaly), "test")
    # A row with its own shorter budget is scored once, after training, by evaluate_variant
    # (validation sweep included): validating it during training would repeat that work.
    evaluate = None if separate else quick_validation(classifier, configured.gan, configured.eval, val_set)
    return train_counterfactual(
        prepared, configured.gan, configured.train, anomaly, classifier, classifier_path,
        paths.counterfactual(track, variant, separate), device=device, progress=progress,
        evaluate=evaluate, classifier_threshold=classifier_config.threshold,
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
    any_lesion: bool = False,
) -> dict:
    """Score a trained variant on the test split; write ``results/<track>_<variant>.json``.

    The JSON holds the metrics, the thresholds, the profile, the hardware, the seed and
    the git commit, so every number can be traced to what produced it. A result computed
    from the same checkpoint with the same settings is reused, not recomputed.
    ``ablation``: the Table 2/3 run (``results/ablation_...`` when it has its own budget).
    ``any_lesion``: the same models scored with the paper text's label rule (a slice is
    abnormal when it holds any tumour pixel) instead of the profile's (the authors' area
    rule on the tumour track, :class:`coinlib.config.TumourProtocol`), threshold chosen on
    validation alike; ``results/<track>_<variant>_any_lesion.json``, without FID.
    """
    from .classifier_training import BEST as CLASSIFIER
    from .classifier_training import load_classifier
    from .config import to_dict
    from .counterfactual import FINAL, load_generator
    from .data import evaluation_set
    from .evaluate import evaluate_counterfactual
    from .files import read_json
    from .runtime import pick_device, use_job_threads
    from .variants import VARIANTS, apply_variant

    claim_run_folder(profile, run_dir)
    paths = RunPaths(run_dir, profile.seed)
    profile, separate = _budget(track_profile(profile, track), ablation)
    configured = apply_variant(profile, variant)
    model_dir = paths.counterfactual(track, variant, separate)
    fid = fid and not any_lesion
    settings = {"eval": to_dict(configured.eval), "fid": fid, "any_lesion": any_lesion,
                "data_id": _served(paths.classifier(track), prepared, model_dir),
                "inputs": _fingerprint(paths.classifier(track) / CLASSIFIER, model_dir / FINAL)}
    out = paths.result(track, variant + ("_any_lesion" if any_lesion else ""), separate)
    if (saved := _reusable(out, settings)) is not None:
        return saved
    device = device if isinstance(device, torch.device) else pick_device(device)
    use_job_threads(device)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    generator, gan = load_generator(model_dir, device)
    rule = 0.0 if any_lesion else None
    test_set = evaluation_set(prepared, "test", anomaly, min_lesion_area_mm2=rule)
    val_set = evaluation_set(prepared, "val", anomaly, min_lesion_area_mm2=rule)
    scored = evaluate_counterfactual(generator, classifier, gan, configured.eval, test_set, val_set,
                                     fid=fid, progress=progress)
    trained = read_json((model_dir / FINAL).with_suffix(".json"))  # what the checkpoint was trained with
    results = {
        "track": track,
        "variant": variant,
        "label_rule": "any lesion pixel (the paper's text)" if any_lesion or not test_set.min_lesion_area_mm2
        else f"lesion area > {test_set.min_lesion_area_mm2:g} mm^2 on the native slice (the authors' code)",
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


def prepare_tracks(profile: Profile, run_dir: str | os.PathLike, sources: dict[str, str | os.PathLike],
                   progress: bool = True) -> dict[Track, Path]:
    """:func:`prepare_track` for each ``{track: "phantom" or a dataset folder}``: ``{track: prepared}``."""
    return {track: prepare_track(profile, run_dir, track, source, progress=progress)
            for track, source in sources.items()}


def ensure_table1(
    profile: Profile,
    run_dir: str | os.PathLike,
    sources: dict[str, str | os.PathLike],
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, list[dict]]]:
    """Every Table 1 result of every seed, built where missing: ``{track: {method: [per seed]}}``.

    ``sources`` maps each track to "phantom" or its dataset folder. Per track and seed: the
    classifier, the saliency methods of ``profile.saliency``, Singla* and COIN.
    """
    from .variants import TABLE1_VARIANTS

    prepared = prepare_tracks(profile, run_dir, sources, progress)
    saliency = evaluate_saliency_all(profile, run_dir, prepared, device, progress)
    variants = ensure_results_all(profile, run_dir, prepared, TABLE1_VARIANTS, device=device, progress=progress)
    return {track: {**saliency[track], **variants[track]} for track in prepared}


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
    from .runtime import pick_device, use_job_threads

    claim_run_folder(profile, run_dir)
    paths = RunPaths(run_dir, profile.seed)
    settings = {"saliency": to_dict(profile.saliency), "eval": to_dict(profile.eval),
                "data_id": _served(paths.classifier(track), prepared),
                "inputs": _fingerprint(paths.classifier(track) / CLASSIFIER)}
    out = paths.result(track, method)
    if (saved := _reusable(out, settings)) is not None and paths.saliency_maps(track, method).is_file():
        return saved
    device = device if isinstance(device, torch.device) else pick_device(device)
    use_job_threads(device)
    _, anomaly = track_settings(profile, track)
    classifier = load_classifier(paths.classifier(track), device)
    scored = evaluate_saliency_method(
        method, classifier, profile.saliency, profile.eval,
        evaluation_set(prepared, "test", anomaly), evaluation_set(prepared, "val", anomaly), progress,
    )
    with atomic_path(paths.saliency_maps(track, method)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, index=np.asarray(scored["test_index"]), maps=scored.pop("test_maps"))
    results = {
        "track": track,
        "method": method,
        "profile": profile.name,
        "seed": profile.seed,
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
    from .runtime import git_commit, hardware_summary, pick_device, use_job_threads

    claim_run_folder(profile, run_dir)
    config, anomaly = track_settings(profile, track)
    paths = RunPaths(run_dir, profile.seed)
    _served(paths.classifier(track), prepared)
    device = device if isinstance(device, torch.device) else pick_device(device)
    use_job_threads(device)
    model = load_classifier(paths.classifier(track), device)
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
        "seed": profile.seed,
        "test_auc": roc_auc(actual, scores["p_abnormal"]),
        "test_accuracy": float((predicted == actual).mean()),
        "threshold": config.threshold,
        "confusion": confusion,
        "test_slices": int(len(actual)),
        "hardware": hardware_summary(next(model.parameters()).device),
        "git_commit": git_commit(),
    }
    write_json(paths.classifier_result(track), results)
    return {**results, "scores": {k: np.asarray(v) for k, v in scores.items()}}


# ------------------------------------------------------------ every seed, as parallel jobs


def _seed_jobs(profile: Profile, label: str, function, tracks_and_data: list[tuple[Track, os.PathLike]],
               run_dir: str | os.PathLike, *args, cost=None, **kwargs) -> list:
    """One job per track and seed; ``cost(track)``, if given, is each job's scheduling estimate."""
    from .config import with_seed
    from .jobs import Job

    return [Job(f"{label}, {track} track, seed {seed}", function,
                (with_seed(profile, seed), run_dir, track, prepared, *args), {**kwargs, "progress": False},
                cost=cost(track) if cost is not None else 1.0)
            for track, prepared in tracks_and_data for seed in profile.seeds]


def _forward_cost(profile: Profile, track: Track) -> float:
    """A relative cost of one forward pass of the track's classifier, for ordering jobs only: a
    ResNet18's convolutions grow with the square of its width (EfficientNetV2-S, which the CPU
    profiles do not train, counts as full width)."""
    config, _ = track_settings(profile, track)
    return float(config.width if config.arch == "resnet18" else 64) ** 2


def _classifier_training_cost(profile: Profile, track: Track) -> float:
    """Forward-pass cost times the most training images (early stopping may stop sooner)."""
    config, _ = track_settings(profile, track)
    return _forward_cost(profile, track) * config.max_epochs * config.steps_per_epoch * config.batch_size


def _saliency_cost(profile: Profile, track: Track, method: str) -> float:
    """Forward passes per slice times their cost (RISE: its masks; ScoreCAM: 1 + the target
    layer's channels, 8 x width for ResNet18; the CAMs: a forward and a backward)."""
    from .classifier import target_layer_channels

    config, _ = track_settings(profile, track)
    passes = {"rise": profile.saliency.rise_masks, "scorecam": 1 + target_layer_channels(config)}.get(method, 3)
    return _forward_cost(profile, track) * passes


def ensure_classifiers_all(profile: Profile, run_dir: str | os.PathLike, prepared: dict[Track, os.PathLike],
                           device: torch.device | str | None = None, progress: bool = True) -> None:
    """Every seed's classifier of every track in ``prepared`` (``{track: prepared folder}``)."""
    from .jobs import run_jobs

    run_jobs(_seed_jobs(profile, "classifier", ensure_classifier, list(prepared.items()), run_dir, device=device,
                        cost=lambda track: _classifier_training_cost(profile, track)),
             device, desc="classifiers", progress=progress)


def evaluate_classifier_all(profile: Profile, run_dir: str | os.PathLike, prepared: dict[Track, os.PathLike],
                            device: torch.device | str | None = None, progress: bool = True
                            ) -> dict[Track, list[dict]]:
    """:func:`evaluate_classifier` for every seed: ``{track: [results of each seed]}``."""
    from .jobs import run_jobs

    ensure_classifiers_all(profile, run_dir, prepared, device, progress)
    jobs = _seed_jobs(profile, "classifier test", _evaluate_classifier_job, list(prepared.items()), run_dir,
                      device=device)
    done = run_jobs(jobs, device, desc="classifier tests", progress=progress)
    return _by_track(prepared, profile, done)


def _evaluate_classifier_job(profile, run_dir, track, prepared, device=None, progress=False) -> dict:
    return evaluate_classifier(profile, run_dir, track, prepared, device)


def _by_track(prepared: dict, profile: Profile, done: list) -> dict:
    count = len(profile.seeds)
    return {track: done[i * count:(i + 1) * count] for i, track in enumerate(prepared)}


def ensure_results_all(profile: Profile, run_dir: str | os.PathLike, prepared: dict[Track, os.PathLike],
                       variants: tuple[str, ...], ablation: bool = False,
                       device: torch.device | str | None = None, progress: bool = True
                       ) -> dict[Track, dict[str, list[dict]]]:
    """Train and score ``variants`` for every seed and track: ``{track: {variant: [results per seed]}}``.

    The classifiers come first (one job per track and seed), then one job per track,
    variant and seed, side by side where :mod:`coinlib.jobs` allows.
    """
    from .jobs import run_jobs

    ensure_classifiers_all(profile, run_dir, prepared, device, progress)
    jobs = [job for variant in variants
            for job in _seed_jobs(profile, METHOD_LABELS.get(variant, variant), ensure_results,
                                  list(prepared.items()), run_dir, variant, ablation, device=device)]
    done = run_jobs(jobs, device, desc="counterfactual GANs", progress=progress)
    count = len(profile.seeds)
    out: dict[Track, dict[str, list[dict]]] = {track: {} for track in prepared}
    for v, variant in enumerate(variants):
        for t, track in enumerate(prepared):
            start = (v * len(prepared) + t) * count
            out[track][variant] = done[start:start + count]
    return out


def evaluate_any_lesion_all(profile: Profile, run_dir: str | os.PathLike, prepared: os.PathLike,
                            variants: tuple[str, ...] = ("coin",), device: torch.device | str | None = None,
                            progress: bool = True) -> dict[str, list[dict]]:
    """The tumour track's trained ``variants`` of every seed scored with the paper text's label
    rule too (:func:`evaluate_variant` ``any_lesion``): ``{variant: [results per seed]}``."""
    from .jobs import run_jobs

    ensure_results_all(profile, run_dir, {"tumour": prepared}, variants, device=device, progress=progress)
    jobs = [job for variant in variants
            for job in _seed_jobs(profile, f"{METHOD_LABELS.get(variant, variant)}, any lesion", evaluate_variant,
                                  [("tumour", prepared)], run_dir, variant, device=device, any_lesion=True)]
    done = run_jobs(jobs, device, desc="any-lesion rule", progress=progress)
    count = len(profile.seeds)
    return {variant: done[i * count:(i + 1) * count] for i, variant in enumerate(variants)}


def evaluate_saliency_all(profile: Profile, run_dir: str | os.PathLike, prepared: dict[Track, os.PathLike],
                          device: torch.device | str | None = None, progress: bool = True,
                          methods: tuple[str, ...] | None = None) -> dict[Track, dict[str, list[dict]]]:
    """Every saliency method of the profile (or of ``methods``) on every track and seed:
    ``{track: {method: [per seed]}}``."""
    from .jobs import Job, run_jobs

    ensure_classifiers_all(profile, run_dir, prepared, device, progress)
    plan = [(track, method) for track in prepared for method in (methods or profile.saliency.methods_for(track))]
    jobs: list[Job] = []
    for track, method in plan:
        jobs += _seed_jobs(profile, METHOD_LABELS.get(method, method), evaluate_saliency,
                           [(track, prepared[track])], run_dir, method, device=device,
                           cost=lambda track, method=method: _saliency_cost(profile, track, method))
    done = run_jobs(jobs, device, desc="saliency maps", progress=progress)
    count = len(profile.seeds)
    out: dict[Track, dict[str, list[dict]]] = {track: {} for track in prepared}
    for i, (track, method) in enumerate(plan):
        out[track][method] = done[i * count:(i + 1) * count]
    return out


METHOD_LABELS = {"coin": "COIN", "singla": "Singla*", "gradcam": "Grad-CAM", "layercam": "LayerCAM",
                 "scorecam": "ScoreCAM", "rise": "RISE"}
