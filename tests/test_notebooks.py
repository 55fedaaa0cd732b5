"""Every numbered notebook on the smoke profile, through the same runner as `make reproduce`.

The run folder is shared by the tests of this module (one papermill pass of them all), and a
second, fresh folder checks that a later notebook runs on its own from a fresh kernel.
"""

from __future__ import annotations

import csv
import json

import nbformat
import pytest

from coinlib.notebook_runner import list_notebooks, run_notebooks
from coinlib.config import get_profile
from coinlib.pipeline import RunPaths
from coinlib.prepared import open_prepared

SEEDS = get_profile("smoke").seeds


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke_run")
    run_notebooks("smoke", run_dir)
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


def test_papermill_reads_every_parameter_of_every_notebook(caplog):
    # papermill skips (with only a log line) a parameter line it cannot parse, e.g. one with a
    # second "=" in its comment; `--set` would then still be injected but never listed.
    import papermill

    for path in list_notebooks():
        caplog.clear()
        parameters = papermill.inspect_notebook(str(path))
        assert {"profile", "run_dir", "overrides"} <= set(parameters), path.name
        assert "Unable to parse" not in caplog.text, (path.name, caplog.text)


def test_executed_copies_are_written_without_errors(smoke_run):
    for notebook in list_notebooks():
        path = smoke_run / "notebooks" / notebook.name
        assert path.is_file() and not _errors(path), notebook.name
    timings = json.loads((smoke_run / "notebooks" / "timings.json").read_text())
    assert [t["notebook"] for t in timings["notebooks"]] == [p.name for p in list_notebooks()]


def test_02_coin_from_scratch_checks_its_hand_computed_losses_and_step(smoke_run):
    """Its assert cells ran: every loss term by hand equals coinlib's, and one step by hand
    leaves coinlib's weights (tests/test_from_scratch.py checks the same as unit tests)."""
    path = smoke_run / "notebooks" / "02_coin_from_scratch.ipynb"
    assert path.is_file() and not _errors(path)
    notebook = nbformat.read(path, as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    for line in ("every hand-computed term equals coinlib's", "Singla*'s hand-computed terms equal coinlib's",
                 "one training step by hand leaves exactly the weights of coinlib"):
        assert line in printed, line
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4  # untrained generator, live training, loss curves, the threshold view (static)
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in notebook.cells
                   if c.cell_type == "code" for o in c.outputs)


def test_00_prepares_both_tracks_and_draws_its_figures(smoke_run):
    prepared = sorted((smoke_run / "data" / "prepared").iterdir())
    assert [p.name for p in prepared] == ["phantom_kits23_64", "phantom_totalsegmentator_64"]
    tumour = open_prepared(prepared[0])
    assert tumour.lesion_masks.any(), "the tumour track must contain tumour pixels"
    for figure in ("prepared_slices", "fig3_synthetic_anomalies", "lesion_sizes", "phantom_phase_hu"):
        assert (smoke_run / "figures" / f"{figure}.png").stat().st_size > 10_000
        assert (smoke_run / "figures" / f"{figure}.pdf").is_file()


def test_01_writes_classifier_results_for_every_track_and_seed(smoke_run):
    for seed in SEEDS:
        for track in ("synthetic", "tumour"):
            results = json.loads(RunPaths(smoke_run, seed).classifier_result(track).read_text())
            assert results["seed"] == seed and 0.0 <= results["test_auc"] <= 1.0
            assert sum(results["confusion"].values()) == results["test_slices"] > 0
    for figure in ("classifier_roc", "classifier_scan_scores", "classifier_examples_tumour"):
        assert (smoke_run / "figures" / f"{figure}.png").is_file(), figure


def test_03_writes_coin_results_with_protocol_fields_for_every_seed(smoke_run):
    for seed in SEEDS:
        results = json.loads(RunPaths(smoke_run, seed).result("synthetic", "coin").read_text())
        metrics = results["metrics"]
        assert results["profile"] == "smoke" and results["variant"] == "coin" and results["seed"] == seed
        assert 0.0 <= metrics["iou"]["iou"] <= 1.0 and 0.0 <= metrics["threshold_from_val"] <= 1.0
        assert metrics["abnormal_test_slices"] == len(metrics["per_slice"]["tp"]) > 0
        index = open_prepared(results["data"]).index  # each slice's scan, for the scan bootstrap
        assert metrics["per_slice"]["scans"] == [index[row]["scan_id"] for row in metrics["per_slice"]["rows"]]
        assert len(metrics["per_slice_cv"]["scans"]) == len(metrics["per_slice_cv"]["rows"])
        assert metrics["fid"] is not None or metrics["fid_note"].startswith("FID unavailable")
        assert metrics["classifier_fd"] >= 0.0
        assert {"hardware", "seed", "git_commit", "config"} <= set(results)
        assert results["hardware"]["precision"] in ("bf16", "fp32")
    for track in ("synthetic", "tumour"):
        assert (smoke_run / "figures" / f"coin_examples_{track}.png").is_file()
    assert (smoke_run / "results" / "summary.md").read_text().startswith("Profile **smoke**")


def test_a_later_notebook_runs_alone_in_a_fresh_run_folder_with_overrides(tmp_path):
    overrides = {"classifier": {"steps_per_epoch": 3}}  # coin reproduce --set classifier.steps_per_epoch=3
    run_notebooks("smoke", tmp_path, ["01"], overrides=overrides)  # builds the data it needs itself
    assert not _errors(tmp_path / "notebooks" / "01_classifier.ipynb")
    assert RunPaths(tmp_path, SEEDS[-1]).classifier_result("tumour").is_file()
    recorded = json.loads((tmp_path / "run.json").read_text())["settings"]
    assert recorded["classifier"]["steps_per_epoch"] == 3  # the run folder records the profile it ran
    trained = json.loads((RunPaths(tmp_path, SEEDS[0]).classifier("synthetic") / "classifier.json").read_text())
    assert trained["classifier"]["steps_per_epoch"] == 3
    assert json.loads((tmp_path / "notebooks" / "timings.json").read_text())["overrides"] == overrides


def test_03_to_05_score_every_table1_method_on_both_tracks_and_seeds(smoke_run):
    for seed in SEEDS:
        paths = RunPaths(smoke_run, seed)
        for track in ("synthetic", "tumour"):
            for method in ("singla", "coin"):
                metrics = json.loads(paths.result(track, method).read_text())["metrics"]
                assert metrics["postprocessed"] is True and 0.0 <= metrics["iou"]["iou"] <= 1.0
            for method in ("gradcam", "layercam", "scorecam", "rise"):
                result = json.loads(paths.result(track, method).read_text())
                assert result["metrics"]["postprocessed"] is False and result["cost"]["forward_passes"] >= 1
                per_slice = result["metrics"]["per_slice"]
                assert len(per_slice["scans"]) == len(per_slice["rows"]) > 0
                assert len(result["sweep"]["test_iou"]) == len(result["sweep"]["thresholds"]) == 21
                assert paths.saliency_maps(track, method).is_file()
    for figure in ("singla_vs_coin_synthetic_singla", "saliency_cost", "saliency_maps_tumour", "threshold_sweeps"):
        assert (smoke_run / "figures" / f"{figure}.png").is_file(), figure


def test_07_to_09_write_the_three_tables_beside_the_papers_numbers(smoke_run):
    tables = smoke_run / "tables"
    expected_rows = {"table1": 12, "table2": 4, "table3": 9}
    for name, rows in expected_rows.items():
        md = (tables / f"{name}.md").read_text()
        assert "paper IoU" in md and "paper CV" in md, name
        with (tables / f"{name}.csv").open() as f:
            assert len(list(csv.DictReader(f))) == rows, name
    assert "0.646" in (tables / "table1.md").read_text()  # the paper's COIN IoU beside ours
    with (tables / "table1_tumour_cases.csv").open() as f:  # 07: the tumour IoU by test case
        cases = list(csv.DictReader(f))
    assert cases and sum(float(c["lesion share"]) for c in cases) == pytest.approx(1.0, abs=1e-6)
    assert all(c["lesions"] for c in cases)  # the phantom's masses named beside each tumour case
    ablation = json.loads(RunPaths(smoke_run, SEEDS[-1]).result("synthetic", "coin_no_f", ablation=True).read_text())
    assert ablation["budget"] == "ablation" and ablation["config"]["train"]["steps"] == 2


def test_10_draws_figures_2_and_4_to_6(smoke_run):
    for figure in ("fig2_synthetic", "fig2_tumour", "fig4_perturbation", "fig5_skips", "fig6_singla_vs_coin"):
        assert (smoke_run / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
        assert (smoke_run / "figures" / f"{figure}.pdf").is_file(), figure
    summary = (smoke_run / "results" / "summary.md").read_text()
    assert "**Table 1.**" in summary and "**Table 3.**" in summary


def test_11_labels_the_bundled_real_scans_and_measures_the_gap(smoke_run):
    assert (smoke_run / "notebooks" / "11_your_own_scans.ipynb").is_file()
    with (smoke_run / "real_ct" / "every_slice" / "labels.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["file"] == "abdomen_pelvis_3mm.nii.gz" and row["status"] == "labelled"
    assert row["classified_slices"] == row["slices"] == "112"
    with (smoke_run / "real_ct" / "subject_kidney_slices" / "labels.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["classified_slices"] == "21" and "kidney" in row["slice_selection"]
    assert (smoke_run / "real_ct" / "dicom" / "dicom_series_coin_mask.nii.gz").is_file()
    gap = json.loads((smoke_run / "results" / "real_ct_synthetic.json").read_text())
    assert gap["real"]["kidney_slices"] == 21 and gap["real"]["anomaly_slices"] > 0
    assert 0.0 <= gap["real"]["auc"] <= 1.0 and 0.0 <= gap["real"]["iou"]["iou"] <= 1.0
    assert {"auc", "iou", "false_positive_rate"} <= set(gap["phantom"])
    for figure in ("real_ct_p_abnormal", "real_ct_synthetic_anomalies"):
        assert (smoke_run / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
