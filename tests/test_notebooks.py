"""Notebooks 00-02 on the smoke profile, through the same runner as `make reproduce`.

The run folder is shared by the tests of this module (one papermill pass of 00-02), and a
second, fresh folder checks that a later notebook runs on its own from a fresh kernel.
"""

from __future__ import annotations

import json

import nbformat
import pytest

from coinlib.notebook_runner import list_notebooks, run_notebooks
from coinlib.prepared import open_prepared


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke_run")
    run_notebooks("smoke", run_dir, ["00", "01", "02"])
    return run_dir


def _errors(path):
    notebook = nbformat.read(path, as_version=4)
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def test_every_notebook_has_a_papermill_parameters_cell_first():
    for path in list_notebooks():
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        assert "%cd" not in "".join(c.source for c in code), path.name


def test_executed_copies_are_written_without_errors(smoke_run):
    for name in ("00_data_preparation.ipynb", "01_classifier.ipynb", "02_coin.ipynb"):
        path = smoke_run / "notebooks" / name
        assert path.is_file() and not _errors(path)
    timings = json.loads((smoke_run / "notebooks" / "timings.json").read_text())
    assert [t["notebook"][:2] for t in timings["notebooks"]] == ["00", "01", "02"]


def test_00_prepares_both_tracks_and_draws_its_figures(smoke_run):
    prepared = sorted((smoke_run / "data" / "prepared").iterdir())
    assert [p.name for p in prepared] == ["phantom_kits23_64", "phantom_totalsegmentator_64"]
    tumour = open_prepared(prepared[0])
    assert tumour.lesion_masks.any(), "the tumour track must contain tumour pixels"
    for figure in ("prepared_slices", "fig3_synthetic_anomalies", "lesion_sizes"):
        assert (smoke_run / "figures" / f"{figure}.png").stat().st_size > 10_000
        assert (smoke_run / "figures" / f"{figure}.pdf").is_file()


def test_01_writes_classifier_results(smoke_run):
    results = json.loads((smoke_run / "results" / "classifier_synthetic.json").read_text())
    assert results["arch"] == "resnet18" and 0.0 <= results["test_auc"] <= 1.0
    assert sum(results["confusion"].values()) == results["test_slices"] > 0
    assert (smoke_run / "figures" / "classifier_roc.png").is_file()


def test_02_writes_coin_results_with_protocol_fields(smoke_run):
    results = json.loads((smoke_run / "results" / "synthetic_coin.json").read_text())
    metrics = results["metrics"]
    assert results["profile"] == "smoke" and results["variant"] == "coin"
    assert 0.0 <= metrics["iou"]["iou"] <= 1.0 and 0.0 <= metrics["threshold_from_val"] <= 1.0
    assert metrics["abnormal_test_slices"] > 0
    assert metrics["fid"] is not None or metrics["fid_note"].startswith("FID unavailable")
    assert metrics["classifier_fd"] >= 0.0
    assert {"hardware", "seed", "git_commit", "config"} <= set(results)
    assert (smoke_run / "figures" / "coin_examples.png").is_file()
    assert (smoke_run / "results" / "summary.md").read_text().startswith("Profile **smoke**")


def test_a_later_notebook_runs_alone_in_a_fresh_run_folder(tmp_path):
    run_notebooks("smoke", tmp_path, ["01"])  # builds the data it needs itself
    assert not _errors(tmp_path / "notebooks" / "01_classifier.ipynb")
    assert (tmp_path / "results" / "classifier_synthetic.json").is_file()
