"""What produced each artifact of a run folder, checked before anything is reused.

- A run folder belongs to one profile and its settings: the first stage that writes into
  it records them in ``run.json`` (:func:`claim_run_folder`), and every later stage with
  another profile, or other settings, is refused with the differences. (Fields added to a
  config since the record was written are adopted into it; speed-only settings, such as
  ``train.compile``, and the seeds of a replicate, ``REPLICATE_SEEDS``, which share one run
  folder, are not part of its identity.)
- Models record *what* they learned from, by content: the prepared folder's
  ``content_id`` (``coinlib.prepared``) and the classifier's :func:`weights_id`. A model
  of other data, or of another classifier, is never reused (:func:`check_trained_on`),
  and a resumed training must agree on them (:func:`run_differences`).
- Paths are recorded for the reader only (``data``, and a GAN's ``classifier``), never
  compared, so a run folder can be moved or copied and still reuses everything it holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Profile, get_profile, to_dict
from .files import exclusive, read_json, write_json
from .runtime import config_differences

__all__ = [
    "RUN_RECORD",
    "REPLICATE_SEEDS",
    "run_settings",
    "RUN_LOCK",
    "using_run_folder",
    "check_run_folder",
    "claim_run_folder",
    "weights_id",
    "run_differences",
    "check_trained_on",
    "recorded_profile",
    "run_profile",
]

RUN_RECORD = "run.json"
RUN_LOCK = "run.lock"  # one writer at a time: see using_run_folder
# a replicate's seeds (the profile's own and its sections'), and which replicates a stage runs
# (``seeds``; Table 3 may run fewer, AblationConfig.table3_seeds): replicates share a run folder
REPLICATE_SEEDS = {"": ("seed", "seeds"), "ablation": ("table3_seeds",), "classifier": ("seed",), "tumour_classifier": ("seed",), "train": ("seed",),
                   "saliency": ("seed",)}


def run_settings(profile: Profile) -> dict[str, Any]:
    """The settings that make a run folder's identity: the whole profile, without the
    fields that change speed only (``coinlib.counterfactual.SPEED_ONLY``) and without a
    replicate's seeds (``REPLICATE_SEEDS``)."""
    from .counterfactual import SPEED_ONLY

    settings = to_dict(profile)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in SPEED_ONLY}
    for section, names in REPLICATE_SEEDS.items():
        fields = settings[section] if section else settings
        for name in names:
            fields.pop(name, None)
    return settings


def _shared_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``config_differences`` over the keys both sides have (a field added or removed since
    ``saved`` was written is no difference)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(saved) & set(current)):
            lines += _shared_differences(saved[key], current[key], f"{prefix}{key}.")
        return lines
    return config_differences(saved, current, prefix)


def _adopt_new_keys(saved: dict, current: dict) -> bool:
    """Copy keys of ``current`` that ``saved`` lacks into it (recursively); True if any."""
    added = False
    for key, value in current.items():
        if key not in saved:
            saved[key], added = value, True
        elif isinstance(saved[key], dict) and isinstance(value, dict):
            added |= _adopt_new_keys(saved[key], value)
    return added


def _run_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_dir``'s ``run.json``; ``FileNotFoundError`` naming it and what to give instead."""
    record = Path(run_dir) / RUN_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{record}: no run record; give a run folder that a stage has written into "
                                "(e.g. runs/quick after `make reproduce`)")
    return read_json(record)


def recorded_profile(run_dir: str | os.PathLike) -> str:
    """The name of the profile that ``run_dir``'s ``run.json`` records (:func:`claim_run_folder`)."""
    return _run_record(run_dir)["profile"]


def run_profile(run_dir: str | os.PathLike, overrides: dict[str, dict] | None = None) -> Profile:
    """The profile ``run_dir`` was run with: its named profile with the settings its ``run.json``
    records (so a ``coin reproduce --set`` is kept), then ``overrides`` on top. The seeds are the
    named profile's (a replicate's seeds are no part of the record, ``REPLICATE_SEEDS``), as are
    the speed-only fields; a recorded field that the code no longer has is no setting any more.
    """
    record = _run_record(run_dir)
    name = record["profile"]
    named = get_profile(name)
    merged: dict[str, dict] = {}
    for section, values in record.get("settings", {}).items():
        current = getattr(named, section, None)
        if not isinstance(values, dict) or not dataclasses.is_dataclass(current):
            continue
        known = {f.name for f in dataclasses.fields(current)}
        merged[section] = {k: v for k, v in values.items() if k in known}
    for section, values in (overrides or {}).items():
        merged[section] = {**merged.get(section, {}), **values}
    return get_profile(name, merged)


def using_run_folder(run_dir: str | os.PathLike, what: str):
    """A context in which this process alone writes into ``run_dir``: a second ``coin train``
    (or ``reproduce``) on the same folder says who holds it and waits, instead of taking the
    other's half-built files (:func:`coinlib.files.exclusive` on ``run.lock``)."""
    return exclusive(Path(run_dir) / RUN_LOCK, what)


def check_run_folder(profile: Profile, run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Check, writing nothing, that ``run_dir`` may hold a run of ``profile``: its ``run.json``
    records the same profile and settings (returns that record), or there is none yet (None)
    and no result of another profile lies there.

    Raises ``ValueError`` naming the folder, both profiles and the first differences when
    the folder was written with another profile or other settings.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_RECORD
    if not path.is_file():
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--run-dir {run_dir} exists and is not a folder")
        _check_older_results(run_dir, profile.name)
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{path} is not a run record of coinlib (no 'settings'); use another --run-dir")
    current = run_settings(profile)
    changed = sorted(_shared_differences(record["settings"], current), key=lambda line: not line.startswith("name:"))
    if changed:
        shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ValueError(
            f"run folder {run_dir} belongs to profile {record.get('profile')!r} with the settings in {path}; "
            f"this run asks for profile {profile.name!r} with other settings ({shown}). "
            f"Give it a run folder of its own (--run-dir), or repeat the folder's --profile and --set"
        )
    return record


def claim_run_folder(profile: Profile, run_dir: str | os.PathLike) -> Path:
    """Record ``profile`` as ``run_dir``'s owner, or check that it is (:func:`check_run_folder`);
    returns ``run.json``."""
    path = Path(run_dir) / RUN_RECORD
    record = check_run_folder(profile, run_dir)
    current = run_settings(profile)
    if record is None:
        write_json(path, {"profile": profile.name, "settings": current,
                          "note": "this run folder's profile and settings: every stage run in it must match"})
    elif _adopt_new_keys(record["settings"], current):
        write_json(path, record)
    return path


def _check_older_results(run_dir: Path, name: str) -> None:
    """A run folder from before ``run.json``: its results name the profile that wrote them."""
    for result in sorted((run_dir / "results").rglob("*.json")):
        try:
            written_by = read_json(result).get("profile")
        except (ValueError, AttributeError):
            continue
        if written_by not in (None, name):
            raise ValueError(f"run folder {run_dir} holds results of profile {written_by!r} ({result}); this run "
                             f"asks for profile {name!r}: give it a run folder of its own (--run-dir)")


def weights_id(module: nn.Module) -> str:
    """``sha256:<hex>`` of a module's state dict (names, dtypes, shapes, values): the same
    weights give the same id on any device and in any file."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def run_differences(saved: dict[str, Any], current: dict[str, Any], locations: tuple[str, ...]) -> list[str]:
    """What differs between a checkpoint's config and a run's, leaving out the keys that
    hold paths (``locations``: where the inputs were, not what they were)."""
    def identity(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in locations}

    return config_differences(identity(saved), identity(current))


def check_trained_on(model_config: str | os.PathLike, data_id: str, classifier_id: str | None = None) -> None:
    """Refuse a model (its config JSON beside the weights) that learned from other data than
    ``data_id`` (a prepared folder's content id) or, when given, another classifier.

    Raises ``ValueError`` naming the model, what it records and what it was asked to serve.
    """
    model_config = Path(model_config)
    record = read_json(model_config)
    folder = model_config.parent
    advice = f"retrain it (delete {folder}, then run its stage again) or use a new run folder"
    if "data_id" not in record:
        raise ValueError(f"{folder} does not record what data it was trained on ({model_config} was written "
                         f"before models recorded it), so it may be stale; {advice}")
    if record.get("data_id") != data_id:
        raise ValueError(
            f"{folder} was trained on other data (prepared content {record.get('data_id')}, recorded in "
            f"{model_config}) than the prepared folder it is asked to serve (content {data_id}; recorded "
            f"at {record.get('data')}): the data changed since, so the model is stale; {advice}"
        )
    if classifier_id is not None and record.get("classifier_id") != classifier_id:
        raise ValueError(
            f"{folder} was trained against another classifier (weights {record.get('classifier_id')}, "
            f"recorded in {model_config}) than the run folder's (weights {classifier_id}): the classifier "
            f"was retrained since, so the model is stale; {advice}"
        )
