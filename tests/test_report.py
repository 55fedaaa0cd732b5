import json

import pytest

from coinlib.files import write_json
from coinlib.pipeline import RunPaths
from coinlib.report import (
    END,
    START,
    publish_figures,
    publish_tables,
    results_markdown,
    update_readme,
)
from coinlib.tables import TABLE1_METHODS, format_value, markdown_table, write_table


def _fake_run(tmp_path):
    hardware = {"device": "cpu", "cpu": "Test CPU", "cpu_cores": 2, "torch": "2.x", "python": "3.11"}
    (tmp_path / "results").mkdir(parents=True)
    (tmp_path / "results" / "synthetic_coin.json").write_text(json.dumps({
        "profile": "quick", "hardware": hardware, "git_commit": "abc123",
        "metrics": {"iou": {"iou": 0.61, "mean_per_image_iou": 0.55}, "threshold_from_val": 0.12,
                    "iou_best_on_test": 0.63, "threshold_best_on_test": 0.11, "cv": 0.99, "fid": None,
                    "fid_note": "FID unavailable: put the weights there", "classifier_fd": 1.5},
    }))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "timings.json").write_text(json.dumps(
        {"notebooks": [{"notebook": "00_x.ipynb", "seconds": 60.0}, {"notebook": "01_y.ipynb", "seconds": 120.0}]}))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "figures" / "a.pdf").write_bytes(b"pdf")
    return tmp_path


def test_readme_block_is_replaced_from_the_run_files(tmp_path):
    run = _fake_run(tmp_path / "run")
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{START}\nstale text\n{END}\n\ntail\n")
    block = update_readme(run, readme)
    text = readme.read_text()
    assert "stale text" not in text and text.endswith("tail\n") and block in text
    assert "Profile **quick**" in block and "Test CPU (2 cores, CPU only)" in block
    assert "| total | 3.0 |" in block and "FID unavailable" in block
    assert "Table 1" not in block  # no table written yet


def test_readme_shows_the_tables_and_the_checked_orderings(tmp_path):
    run = _fake_run(tmp_path / "run")
    for i, method in enumerate(TABLE1_METHODS):  # IoU rises along TABLE1_METHODS: COIN best
        for track in ("synthetic", "tumour"):
            path = RunPaths(run).result(track, method)
            result = json.loads(path.read_text()) if path.is_file() else {}
            result["metrics"] = {**result.get("metrics", {}), "iou": {"iou": 0.1 * i}}
            write_json(path, result)
    write_table(run / "tables" / "table1", [{"method": "COIN", "IoU": 0.5, "paper IoU": 0.646}],
                ["method", "IoU", "paper IoU"], title="Table 1 (profile quick)")
    block = results_markdown(run)
    assert "**Table 1.**" in block and "| COIN | 0.500 | 0.646 |" in block
    assert "- holds: synthetic: COIN > Singla et al.*" in block and "does NOT hold" not in block
    coin, singla = (0.1 * TABLE1_METHODS.index(m) for m in ("coin", "singla"))
    assert f"COIN > Singla et al.* ({coin:.3f} against {singla:.3f})" in block  # the IoUs behind the verdict
    copied = publish_tables(run, tmp_path / "tables")
    assert sorted(p.name for p in copied) == ["table1.csv", "table1.md"]


def test_readme_without_markers_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(run, tmp_path / "README.md")


def test_figures_are_published(tmp_path):
    run = _fake_run(tmp_path / "run")
    copied = publish_figures(run, tmp_path / "figures")
    assert sorted(p.name for p in copied) == ["a.pdf", "a.png"]
    assert (tmp_path / "figures" / "a.png").read_bytes() == b"png"


def test_table_writer(tmp_path):
    rows = [{"method": "COIN", "IoU": 0.6461, "FID": None}, {"method": "RISE", "IoU": 0.3969, "FID": 0.00012}]
    assert markdown_table(rows, ["method", "IoU", "FID"]).splitlines() == [
        "| method | IoU | FID |", "|---|---|---|", "| COIN | 0.646 | - |", "| RISE | 0.397 | 1.20e-04 |"]
    md, csv = write_table(tmp_path / "t", rows, ["method", "IoU"], title="Table 1")
    assert md.read_text().startswith("Table 1\n\n| method | IoU |")
    assert csv.read_text().splitlines() == ["method,IoU", "COIN,0.6461", "RISE,0.3969"]
    assert format_value(float("nan")) == "-" and format_value(True) == "yes"


def test_executed_notebooks_export_to_markdown_with_their_images_once(tmp_path):
    """A tiny notebook executed by papermill as `coin reproduce` does, then exported for readers."""
    import nbformat
    import papermill
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from coinlib.report import export_notebooks

    repo, run = tmp_path / "repo", tmp_path / "repo" / "runs" / "smoke"
    (run / "notebooks").mkdir(parents=True)
    source = new_notebook(cells=[
        new_markdown_cell("# 00 · Tiny\n\nA figure, a progress bar and a long output."),
        new_code_cell('run_dir = "runs/x"', metadata={"tags": ["parameters"]}),
        new_code_cell("import matplotlib.pyplot as plt\nfrom tqdm.std import tqdm\n"
                      "for _ in tqdm(range(50), mininterval=0, desc='work'):\n    pass\n"
                      "print(f'results in {run_dir}/results')\nplt.plot([0, 1], [1, 0])\nplt.show()"),
        new_code_cell("for i in range(200):\n    print('line', i)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(source, tmp_path / "tiny.ipynb")
    papermill.execute_notebook(str(tmp_path / "tiny.ipynb"), str(run / "notebooks" / "00_tiny.ipynb"),
                               parameters={"run_dir": str(run)}, kernel_name="python3", progress_bar=False)
    docs = repo / "docs" / "notebooks"
    (docs / "07_gone_files").mkdir(parents=True)  # a page of a notebook the run no longer has
    (docs / "07_gone.md").write_text("stale")

    written = export_notebooks(run, docs, repository=repo)
    page = (docs / "00_tiny.md").read_text()
    images = sorted((docs / "00_tiny_files").glob("*.png"))
    assert len(images) == 1 and images[0].read_bytes().startswith(b"\x89PNG")
    assert f"](00_tiny_files/{images[0].name})" in page  # the page links its image, stored once
    assert "results in runs/smoke/results" in page and str(tmp_path) not in page  # portable paths
    assert page.count("work: 100%") == 1 and "it/s]" in page and "work:  50%" not in page  # final bar only
    assert "line 0" in page and "line 199" in page and "line 100" not in page and "lines left out" in page
    assert "papermill" not in page and '"execution"' not in page
    assert not (docs / "07_gone.md").exists() and not (docs / "07_gone_files").exists()
    index = (docs / "README.md").read_text()
    assert "[00_tiny](00_tiny.md): 00 · Tiny" in index and "coin report --run-dir runs/smoke" in index
    assert set(written) == {docs / "00_tiny.md", images[0], docs / "README.md"}
    assert export_notebooks(tmp_path / "empty_run", tmp_path / "docs2") == []


def test_coin_report_says_when_the_run_has_no_executed_notebooks(tmp_path, capsys):
    from coinlib.cli import main

    run = _fake_run(tmp_path / "run")
    (tmp_path / "README.md").write_text(f"# T\n{START}\n{END}\n")
    args = ["report", "--run-dir", str(run), "--readme", str(tmp_path / "README.md"), "--figures",
            str(tmp_path / "figures"), "--tables", str(tmp_path / "tables"), "--docs", str(tmp_path / "docs")]
    assert main(args) == 0
    assert "no executed notebooks in" in capsys.readouterr().out and not (tmp_path / "docs").exists()
