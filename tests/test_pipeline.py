"""The run-folder stages: which work a stage does and which it leaves to the next one."""

from __future__ import annotations

import pytest

from coinlib.config import get_profile
from coinlib.counterfactual import history
from coinlib.pipeline import RunPaths, abnormal_counterfactuals, ensure_counterfactual
from coinlib.files import read_json, write_json
from coinlib.provenance import RUN_RECORD, claim_run_folder, recorded_profile, run_profile


def test_rows_with_their_own_budget_skip_the_in_training_validation(tiny_prepared, tmp_path):
    """A Table 2/3 row trained shorter than COIN is validated once, by evaluate_variant;
    COIN's own run keeps its validation curve."""
    profile = get_profile("smoke", {"train": {"batch_size": 4}, "classifier": {"batch_size": 4}})
    paths = RunPaths(tmp_path)
    ensure_counterfactual(profile, tmp_path, "synthetic", tiny_prepared, "coin", progress=False)
    ensure_counterfactual(profile, tmp_path, "synthetic", tiny_prepared, "coin_no_tv", progress=False,
                          ablation=True)
    main = history(paths.counterfactual("synthetic", "coin"))
    row = history(paths.counterfactual("synthetic", "coin_no_tv", ablation=True))
    assert [h["step"] for h in main if "val_iou" in h] == [3, 6]
    assert row and not any("val_iou" in h for h in row)


def test_default_run_dir_is_at_the_repository_root_wherever_the_kernel_starts(tmp_path, monkeypatch):
    from pathlib import Path

    from coinlib.pipeline import default_run_dir, repository_root

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)  # a kernel started elsewhere, e.g. in notebooks/
    assert repository_root() == root
    assert default_run_dir("lesson") == root / "runs" / "lesson"
    assert default_run_dir(get_profile("smoke")) == root / "runs" / "smoke"


def test_recorded_profile_reads_the_claim_and_names_a_missing_record(tmp_path):
    claim_run_folder(get_profile("smoke"), tmp_path / "run")
    assert recorded_profile(tmp_path / "run") == "smoke"
    with pytest.raises(FileNotFoundError, match="empty.*run.json"):
        recorded_profile(tmp_path / "empty")


def test_run_profile_is_the_recorded_settings_with_the_named_profiles_seeds(tmp_path):
    run = tmp_path / "run"
    claim_run_folder(get_profile("smoke", {"train": {"steps": 7}, "eval": {"sweep_points": 5}}), run)
    record = read_json(run / RUN_RECORD)
    record["settings"]["train"]["a_field_since_removed"] = 1  # an older run folder: no setting any more
    write_json(run / RUN_RECORD, record)
    profile = run_profile(run, {"eval": {"batch_size": 3}})
    smoke = get_profile("smoke")
    assert (profile.train.steps, profile.eval.sweep_points, profile.eval.batch_size) == (7, 5, 3)
    assert profile.seeds == smoke.seeds and profile.train.compile == smoke.train.compile
    assert run_profile(run) != smoke and profile.classifier == smoke.classifier
    with pytest.raises(FileNotFoundError, match="empty.*run.json"):
        run_profile(tmp_path / "empty")


def test_abnormal_counterfactuals_are_the_trained_models_on_every_abnormal_slice(tiny_prepared, tmp_path):
    """What the benchmarks re-score: the run's own generator, on each split's abnormal slices only."""
    import numpy as np

    from coinlib.config import track_profile
    from coinlib.data import evaluation_set
    from coinlib.evaluate import abnormal_indices
    from coinlib.pipeline import track_settings

    profile = get_profile("smoke", {"train": {"batch_size": 4}, "classifier": {"batch_size": 4}})
    ensure_counterfactual(profile, tmp_path, "synthetic", tiny_prepared, "coin", progress=False)
    arrays, eval_config = abnormal_counterfactuals(tmp_path, "synthetic", "coin", 0, prepared=tiny_prepared)
    assert eval_config == track_profile(profile, "synthetic").eval
    for split in ("val", "test"):
        dataset = evaluation_set(tiny_prepared, split, track_settings(profile, "synthetic")[1])
        abnormal = abnormal_indices(dataset)
        assert len(abnormal) > 0 and np.all(arrays[split]["label"] == 1)
        assert arrays[split]["index"].tolist() == [int(dataset.rows[i]) for i in abnormal]
        assert np.abs(arrays[split]["x_cf"]).max() <= 1 and not np.array_equal(arrays[split]["x_cf"], arrays[split]["x"])
