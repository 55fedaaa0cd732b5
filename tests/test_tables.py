"""The paper's tables from results JSON files: our numbers beside the paper's, every row."""

from __future__ import annotations

import csv

import pytest

from coinlib.files import write_json
from coinlib.paper_numbers import TABLE1, TABLE2, TABLE3
from coinlib.pipeline import RunPaths
from coinlib.tables import (
    TABLE1_COLUMNS,
    TABLE1_METHODS,
    TABLE3_COLUMNS,
    table1_rows,
    table2_rows,
    table3_rows,
    write_table,
)
from coinlib.variants import TABLE2_VARIANTS, TABLE3_VARIANTS, VARIANTS


def _result(iou: float, gan: dict | None = None, cost: dict | None = None) -> dict:
    metrics = {"iou": {"iou": iou}, "iou_best_on_test": iou + 0.01, "threshold_from_val": 0.2,
               "cv": 0.9, "fid": None, "classifier_fd": 3.0, "abnormal_test_slices": 50}
    result = {"metrics": metrics, "config": {"gan": gan or {}, "train": {"steps": 7, "batch_size": 4}}}
    if cost:
        metrics["subset"] = {"test": 5, "val": 4, "max_images": 5}
        result["cost"] = cost
    return result


@pytest.fixture
def run_dir(tmp_path):
    paths = RunPaths(tmp_path)
    for track in ("synthetic", "tumour"):
        for i, method in enumerate(TABLE1_METHODS):
            cost = {"forward_passes": 100 + i, "seconds_per_image": 0.5} if method not in VARIANTS else None
            write_json(paths.result(track, method), _result(0.1 * i, cost=cost))
    for variant in {*TABLE2_VARIANTS, *TABLE3_VARIANTS}:
        gan = {"use_masks": variant < "table3_g", "perturbation": variant != "table3_a", "skips": 4,
               "conditions": 1 if variant.startswith("coin") else 2}
        write_json(paths.result("synthetic", variant, ablation=True), _result(0.3, gan))
    return tmp_path


def test_table1_puts_the_paper_beside_every_row(run_dir):
    rows = table1_rows(run_dir)
    assert len(rows) == 2 * len(TABLE1_METHODS)
    coin = next(r for r in rows if r["method"] == "COIN" and r["data"].startswith("synthetic"))
    assert coin["paper IoU"] == TABLE1[("synthetic", "coin")]["iou"] == 0.646
    assert coin["IoU"] == pytest.approx(0.5) and coin["forward passes / image"] == 1
    rise = next(r for r in rows if r["method"] == "RISE" and r["data"].startswith("tumours"))
    assert rise["paper IoU"] == 0.294 and rise["forward passes / image"] == 102
    assert rise["slices scored"] == "5 (val 4)"
    gradcam = next(r for r in rows if r["method"].startswith("Grad-CAM"))
    assert gradcam["paper IoU"] is None  # the paper has no Grad-CAM row


def test_table2_and_table3_read_the_ablation_runs(run_dir):
    rows2 = table2_rows(run_dir)
    assert [r["paper IoU"] for r in rows2] == [TABLE2[v]["iou"] for v in TABLE2_VARIANTS]
    rows3 = table3_rows(run_dir)
    assert [r["row"] for r in rows3] == ["A", "B", "C", "D", "E", "F", "G", "H", "COIN"]
    assert [r["paper IoU"] for r in rows3] == [TABLE3[v]["iou"] for v in TABLE3_VARIANTS]
    assert rows3[0]["masks"] is True and rows3[0]["perturbations"] is False
    assert all(r["steps x batch"] == "7 x 4" for r in rows3)


def test_a_missing_result_names_the_file(run_dir):
    RunPaths(run_dir).result("tumour", "coin").unlink()
    with pytest.raises(FileNotFoundError, match="tumour_coin.json"):
        table1_rows(run_dir)


def test_tables_are_written_as_markdown_and_csv(run_dir, tmp_path):
    md, csv_path = write_table(tmp_path / "tables" / "table3", table3_rows(run_dir), TABLE3_COLUMNS, title="T3")
    lines = md.read_text().splitlines()
    assert lines[0] == "T3" and lines[2].startswith("| row | masks | perturbations | skips |")
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["paper IoU"] == "0.02" and rows[-1]["row"] == "COIN"
    assert set(TABLE1_COLUMNS) >= {"IoU", "paper IoU", "CV", "paper CV", "FID", "paper FID"}
