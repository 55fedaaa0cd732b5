"""The run-folder stages: which work a stage does and which it leaves to the next one."""

from __future__ import annotations

import pytest

from coinlib.config import get_profile
from coinlib.counterfactual import history
from coinlib.pipeline import RunPaths, ensure_counterfactual
from coinlib.provenance import claim_run_folder, recorded_profile


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
