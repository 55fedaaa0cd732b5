"""The paper's tables from every seed's results: our numbers with their spread beside the paper's."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
from conftest import write_fake_run

from coinlib.config import get_profile
from coinlib.files import read_json, write_json
from coinlib.paper_numbers import TABLE1, TABLE2, TABLE3
from coinlib.pipeline import RunPaths
from coinlib.tables import (
    TABLE1_COLUMNS,
    TABLE1_METHODS,
    TABLE3_COLUMNS,
    claims_markdown,
    per_case_rows,
    seed_range,
    table1_claims,
    table1_rows,
    table2_claims,
    table2_rows,
    table3_claims,
    table3_rows,
    write_table,
)
from coinlib.variants import TABLE2_VARIANTS, TABLE3_VARIANTS

QUICK = get_profile("cpu-full")  # seeds 0, 1, 2; Table 3 on every seed (quick leaves it to cpu-full)


def _rising(track, method, seed):
    """IoU rising along TABLE1_METHODS (COIN best), a little different on each seed."""
    return 0.1 + 0.1 * TABLE1_METHODS.index(method) + 0.01 * seed if method in TABLE1_METHODS else 0.3


@pytest.fixture
def run_dir(tmp_path):
    return write_fake_run(tmp_path, iou=_rising)


def test_table1_rows_carry_the_spread_over_seeds_and_slices(run_dir):
    rows = table1_rows(run_dir, QUICK)
    assert len(rows) == 2 * len(TABLE1_METHODS)
    coin = next(r for r in rows if r["method"] == "COIN" and r["data"].startswith("synthetic"))
    assert coin["paper IoU"] == TABLE1[("synthetic", "coin")]["iou"] == 0.646
    assert coin["IoU"] == "0.610 ± 0.010" and coin["IoU seed 2"] == pytest.approx(0.62)
    low, high = coin["IoU CI low"], coin["IoU CI high"]
    assert low < 0.61 < high and coin["IoU 95% CI"] == f"[{low:.3f}, {high:.3f}]"
    assert coin["CV"] == "0.900 ± 0.000" and coin["classifier FD"] == pytest.approx(4.0)  # mean of 3, 4, 5
    assert coin["seeds"] == 3 and coin["slices scored"] == 12 and coin["forward passes / image"] == 1
    rise = next(r for r in rows if r["method"] == "RISE" and r["data"].startswith("tumours"))
    assert rise["paper IoU"] == 0.294 and rise["forward passes / image"] == 250 and rise["CV"] is None
    assert rise["slices scored"] == "12 (val 12)" and rise["s / image seed 1"] == 0.5
    gradcam = next(r for r in rows if r["method"].startswith("Grad-CAM"))
    assert gradcam["paper IoU"] is None  # the paper has no Grad-CAM row


def test_a_method_the_profile_leaves_out_gets_a_row_and_an_unchecked_claim(run_dir):
    profile = replace(QUICK, saliency=replace(QUICK.saliency, tumour_methods=("layercam",)))
    rows = [r for r in table1_rows(run_dir, profile) if r["data"].startswith("tumours")]
    assert [r["slices scored"] for r in rows if r["method"] == "RISE"] == ["not run in this profile"]
    claims = {v.claim: v for v in table1_claims(run_dir, profile)}
    assert claims["tumour: Singla* > RISE"].text() == \
        "not checked: tumour: Singla* > RISE (RISE not run on the tumour track in profile cpu-full)"
    assert claims["tumour: COIN > LayerCAM"].outcome == "holds"
    assert not any("Grad-CAM" in claim for claim in claims)  # not the paper's, and not run


def test_table1_claims_read_every_seed(run_dir):
    claims = table1_claims(run_dir, QUICK)
    assert [v.claim for v in claims[:5]] == ["synthetic: COIN > Singla*", "synthetic: Singla* > RISE",
                                             "synthetic: RISE > ScoreCAM", "synthetic: RISE > LayerCAM",
                                             "tumour: COIN > Singla*"]
    assert len(claims) == 5 + 2 * 4  # tumour: Singla* and COIN above each of the four saliency methods
    outcomes = {v.claim: v.outcome for v in claims}
    assert outcomes["synthetic: COIN > Singla*"] == "holds"
    assert outcomes["synthetic: RISE > ScoreCAM"] == "holds"
    assert outcomes["tumour: Singla* > Grad-CAM"] == "holds"
    markdown = claims_markdown(claims)
    assert markdown.startswith("- holds: synthetic: COIN > Singla* (0.610 ± 0.010 [")
    assert "; 3 seeds, 12 slices of 6 scans)" in markdown


def test_a_collapsed_training_is_named_in_the_table_and_the_verdict_line(run_dir):
    for seed, val_iou in ((0, 0.40), (1, 0.42), (2, 0.02)):  # seed 2's Singla* failed to learn
        path = RunPaths(run_dir, seed).result("synthetic", "singla")
        results = read_json(path)
        results["metrics"]["val_iou_at_it"] = val_iou
        write_json(path, results)
    rows = {(r["data"], r["method"]): r for r in table1_rows(run_dir, QUICK)}
    singla = next(r for (data, method), r in rows.items() if data.startswith("synthetic") and "Singla" in method)
    coin = next(r for (data, method), r in rows.items() if data.startswith("synthetic") and method == "COIN")
    assert singla["seeds"] == "3 (collapsed: seed 2)" and coin["seeds"] == 3
    line = claims_markdown(table1_claims(run_dir, QUICK)[:2])
    assert "; Singla* collapsed on seed 2)" in line.splitlines()[0]  # COIN > Singla*
    assert "; Singla* collapsed on seed 2)" in line.splitlines()[1]  # Singla* > RISE


def test_too_few_seeds_resolve_nothing(tmp_path):
    run = write_fake_run(tmp_path, seeds=(0, 1), iou=_rising)
    claims = table1_claims(run, get_profile("smoke"))  # smoke: seeds 0, 1
    assert {v.label for v in claims} == {"not resolved: 2 seed(s), a verdict needs 3"}


def _ablation(track, method, seed):
    # COIN 0.6; lambda_idt = 0 below on every seed; lambda_tv = 0 above on seed 1 only;
    # Table 3 rising from A to G, with H (Singla*) above G
    table2 = {"coin": 0.6, "coin_no_idt": 0.3, "coin_no_f": 0.2, "coin_no_tv": 0.7 if seed == 1 else 0.3}
    table3 = dict(zip([f"table3_{r}" for r in "abcdefg"], [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5])) | {"singla": 0.7}
    return {**table3, **table2}.get(method, 0.3)


def test_table2_and_table3_read_the_ablation_runs(tmp_path):
    run = write_fake_run(tmp_path, iou=_ablation)
    rows2 = table2_rows(run, QUICK)
    assert [r["paper IoU"] for r in rows2] == [TABLE2[v]["iou"] for v in TABLE2_VARIANTS]
    assert rows2[-1]["IoU"] == "0.600 ± 0.000" and rows2[-1]["steps x batch"] == "7 x 4"
    rows3 = table3_rows(run, QUICK)
    assert [r["row"] for r in rows3] == ["A", "B", "C", "D", "E", "F", "G", "H", "COIN"]
    assert [r["paper IoU"] for r in rows3] == [TABLE3[v]["iou"] for v in TABLE3_VARIANTS]
    assert rows3[0]["masks"] is True and rows3[0]["perturbations"] is False and rows3[3]["skips"] == 2
    table2 = {v.claim: v for v in table2_claims(run, QUICK)}
    assert table2["IoU: COIN > lambda_idt = 0"].outcome == "holds"
    assert table2["IoU: COIN > lambda_tv = 0"].reason == "COIN higher on 2 of 3 seeds"
    assert table2["CV: COIN > lambda_f = 0"].outcome == "not resolved"  # equal CV on every seed
    table3 = {v.claim: v.outcome for v in table3_claims(run, QUICK)}
    assert table3 == {"perturbation helps with masks: B > A": "holds", "one skip beats none: C > B": "holds",
                      "four skips beat one: F > C": "holds",
                      "perturbation helps without masks: G > H (H = Singla*)": "does not hold",
                      "one condition beats two: COIN > G": "holds"}


def test_a_missing_result_names_the_file(run_dir):
    RunPaths(run_dir, seed=2).result("tumour", "coin").unlink()
    with pytest.raises(FileNotFoundError, match="seed2/tumour_coin.json"):
        table1_rows(run_dir, QUICK)


def test_results_without_or_against_their_per_slice_counts_are_refused(run_dir):
    path = RunPaths(run_dir, seed=1).result("synthetic", "rise")
    result = read_json(path)
    result["metrics"]["iou"]["iou"] += 0.01
    write_json(path, result)
    with pytest.raises(ValueError, match="seed 1 of synthetic rise .* per-slice counts give IoU 0.310000"):
        table1_rows(run_dir, QUICK)
    del result["metrics"]["per_slice"]
    write_json(path, result)
    with pytest.raises(KeyError, match="results/seed1 of synthetic rise .* lack metrics.per_slice"):
        table1_rows(run_dir, QUICK)


def test_intervals_resample_whole_scans_unless_the_profile_says_slices(run_dir):
    by_scan = next(v for v in table1_claims(run_dir, QUICK) if v.claim == "synthetic: COIN > Singla*")
    slice_profile = replace(QUICK, eval=replace(QUICK.eval, bootstrap_unit="slice"))
    by_slice = next(v for v in table1_claims(run_dir, slice_profile) if v.claim == "synthetic: COIN > Singla*")
    assert by_scan.better.scans == 6 and by_slice.better.scans == 0
    assert by_scan.better.per_seed == by_slice.better.per_seed  # the same IoU, another interval
    # scans of two slices (TP -5/0, +5/-5, 0/+5 around the mean) vary less than single slices
    assert by_scan.better.high - by_scan.better.low < by_slice.better.high - by_slice.better.low
    path = RunPaths(run_dir, seed=0).result("synthetic", "coin")
    result = read_json(path)
    del result["metrics"]["per_slice"]["scans"]
    write_json(path, result)
    with pytest.raises(KeyError, match="results/seed0 of synthetic coin .* lack the scan of each slice"):
        table1_rows(run_dir, QUICK)
    assert table1_rows(run_dir, slice_profile)  # a slice bootstrap does not need them


def test_tables_are_written_as_markdown_and_csv_with_every_seed(tmp_path):
    run = write_fake_run(tmp_path / "run", iou=_ablation)
    md, csv_path = write_table(tmp_path / "tables" / "table3", table3_rows(run, QUICK), TABLE3_COLUMNS,
                               title="T3")
    lines = md.read_text().splitlines()
    assert lines[0] == "T3" and lines[2].startswith("| row | masks | perturbations | skips |")
    assert "seed 0" not in md.read_text()
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["paper IoU"] == "0.02" and rows[-1]["row"] == "COIN"
    assert [rows[0][f"IoU seed {s}"] for s in range(3)] == ["0.1", "0.1", "0.1"]
    assert {"IoU mean", "IoU sd", "IoU CI low", "CV seed 2", "classifier FD seed 1"} <= set(rows[0])
    assert set(TABLE1_COLUMNS) >= {"IoU", "IoU 95% CI", "paper IoU", "CV", "paper CV", "FID", "paper FID",
                                   "seeds", "slices scored"}


def test_a_profile_that_does_not_train_table3_says_so(tmp_path):
    quick = get_profile("quick", {"ablation": {"table3_seeds": ()}})
    rows = table3_rows(tmp_path, quick)  # nothing trained, nothing read
    assert len(rows) == 9 and all(r["slices scored"] == "not trained in profile quick" for r in rows)
    assert rows[0]["paper IoU"] == 0.020
    assert {v.outcome for v in table3_claims(tmp_path, quick)} == {"not checked"}


def test_per_case_rows_break_the_accumulated_iou_down_by_scan(run_dir):
    # the fake run's 12 test slices sit at rows 3, 5, ..., 25: rows below 11 are case "a", the rest "b"
    scan_of_row = ["a" if row < 11 else "b" for row in range(30)]
    rows = per_case_rows(run_dir, QUICK, "tumour", ("coin", "rise"), scan_of_row, notes={"a": "papillary 79 mm"})
    assert [r["scan"] for r in rows] == ["b", "a"]  # the larger lesion share first
    assert [r["abnormal slices"] for r in rows] == [8, 4] and sum(r["lesion share"] for r in rows) == pytest.approx(1)
    assert rows[1]["lesions"] == "papillary 79 mm" and rows[0]["lesions"] == ""
    # each slice has TP + FP = 100 and TP = 100 * IoU - 5, 0, +5 in turn (conftest.write_fake_run):
    # case a holds offsets -5, 0, +5, -5, case b the other 8 slices' (+0.625 on average)
    assert rows[1]["COIN IoU"] == pytest.approx(0.61 - 0.0125) and rows[0]["COIN IoU"] == pytest.approx(0.61625)
    assert rows[0]["COIN seeds"] == "[0.606, 0.626]" and rows[0]["RISE IoU"] < rows[0]["COIN IoU"]
    # the cases together give Table 1's number: 4 and 8 of the 12 slices, each slice's IoU = TP / 100
    coin = next(r for r in table1_rows(run_dir, QUICK) if r["method"] == "COIN" and r["data"].startswith("tumours"))
    assert (4 * rows[1]["COIN IoU"] + 8 * rows[0]["COIN IoU"]) / 12 == pytest.approx(coin["IoU mean"])


def test_seed_range_prints_mean_and_extremes():
    assert seed_range([0.2975, 0.3273, 0.1808]) == "0.269 [0.181, 0.327]"
    assert seed_range([0.5], digits=2) == "0.50 [0.50, 0.50]"
