import json
import os
from pathlib import Path

import pytest
import torch
from conftest import write_fake_run

from coinlib.config import get_profile
from coinlib.report import (
    END,
    START,
    describe_hardware,
    publish_figures,
    publish_tables,
    results_markdown,
    update_readme,
)
from coinlib.tables import (
    TABLE1_COLUMNS,
    TABLE1_METHODS,
    TABLE2_COLUMNS,
    format_value,
    markdown_table,
    table1_rows,
    table2_rows,
    write_table,
)


def _iou(track, method, seed):
    """Table 1: IoU rising along TABLE1_METHODS; Table 2: lambda_tv = 0 level with COIN."""
    if method in TABLE1_METHODS:
        return 0.1 + 0.1 * TABLE1_METHODS.index(method)
    return {"coin_no_idt": 0.3, "coin_no_f": 0.2}.get(method, 0.6)


def _fake_run(tmp_path, tumour_auc=0.99):
    run = write_fake_run(tmp_path, iou=_iou, auc=lambda track, seed: tumour_auc - 0.01 * seed
                         if track == "tumour" else 0.99)
    (run / "notebooks").mkdir()
    (run / "notebooks" / "timings.json").write_text(json.dumps(
        {"notebooks": [{"notebook": "00_x.ipynb", "seconds": 60.0}, {"notebook": "01_y.ipynb", "seconds": 120.0}]}))
    (run / "figures").mkdir()
    (run / "figures" / "a.png").write_bytes(b"png")
    (run / "figures" / "a.pdf").write_bytes(b"pdf")
    return run


def test_readme_block_is_replaced_from_the_run_files(tmp_path):
    run = _fake_run(tmp_path / "run")
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{START}\nstale text\n{END}\n\ntail\n")
    block = update_readme(run, readme)
    text = readme.read_text()
    assert "stale text" not in text and text.endswith("tail\n") and block in text
    assert "Profile **quick**, seeds 0, 1, 2, on the embedded phantom" in block
    assert "Test CPU (2 cores, 1 thread, fp32, CPU only)" in block and "| total | 3.0 |" in block
    assert "Precision: the GAN's training step fp32 (`train.precision`), f and the saliency maps fp32" in block
    assert ("Classifier f, synthetic track (resnet18): test AUC **0.990 ± 0.000** over 3 seeds "
            "(seed 0: 0.990, seed 1: 0.990, seed 2: 0.990)") in block
    assert "Caveat" not in block and "Table 1" not in block  # no table written yet


def test_the_report_describes_the_settings_the_run_recorded_not_the_named_profile(tmp_path):
    run = write_fake_run(tmp_path / "run", overrides={"train": {"precision": "bf16"}})
    assert "the GAN's training step bf16 (`train.precision`)" in results_markdown(run)
    plain = write_fake_run(tmp_path / "plain")
    assert "the GAN's training step fp32 (`train.precision`)" in results_markdown(plain)


def test_a_timing_note_of_the_run_is_printed_under_its_timings(tmp_path):
    run = _fake_run(tmp_path / "run")
    assert "Timing note" not in results_markdown(run)
    timings = run / "notebooks" / "timings.json"
    timings.write_text(json.dumps({**json.loads(timings.read_text()), "note": "01 ran beside the tests"}))
    assert "| total | 3.0 |\n\nTiming note: 01 ran beside the tests." in results_markdown(run)


def test_readme_shows_the_tables_their_verdicts_and_prose_made_from_them(tmp_path):
    run = _fake_run(tmp_path / "run")
    profile = get_profile("quick")
    write_table(run / "tables" / "table1", table1_rows(run, profile), TABLE1_COLUMNS, title="Table 1 (quick)")
    write_table(run / "tables" / "table2", table2_rows(run, profile), TABLE2_COLUMNS, title="Table 2 (quick)")
    block = results_markdown(run)
    assert "**Table 1.**" in block and "| COIN | 0.600 ± 0.000 | [0.583, 0.617] | 0.646 |" in block
    assert "- holds: synthetic: COIN > Singla* (0.600 ± 0.000 [0.583, 0.617] against 0.500 ± 0.000" in block
    assert "- not resolved at this budget: IoU: COIN > lambda_tv = 0 (" in block
    assert "FID unavailable: no weights" in block and "**Table 3.**" not in block
    assert "by test case" not in block  # notebook 07's per-case table: shown when the run wrote it
    (run / "tables" / "table1_tumour_cases.md").write_text("title\n\n| scan | COIN IoU |\n|---|---|\n| case_1 | 0.5 |\n")
    assert "**Table 1, tumour track, by test case**" in results_markdown(run)
    assert "| case_1 | 0.5 |" in results_markdown(run)
    prose = block[block.index("**Reading the run**"):]
    assert "*Table 1, synthetic track.* Holds (4 of 4): COIN > Singla* (0.600 [0.583, 0.617] " \
           "against 0.500 [0.483, 0.517]);" in prose
    assert ("*Table 2.* Holds (2 of 4): IoU: COIN > lambda_idt = 0 (0.600 [0.583, 0.617] against 0.300 "
            "[0.283, 0.317]); IoU: COIN > lambda_f = 0") in prose
    assert "Not resolved at this budget (2 of 4): IoU: COIN > lambda_tv = 0 (0.600 [0.583, 0.617] against " \
           "0.600 [0.583, 0.617]; COIN higher on 0 of 3 seeds, intervals overlap)" in prose
    assert "Every row trained 7 steps of 4 slices on each seed (Table 1's COIN: 30 steps of 4 slices)" in prose
    copied = publish_tables(run, tmp_path / "tables")
    assert sorted(p.name for p in copied) == ["table1.csv", "table1.md", "table1_tumour_cases.md", "table2.csv",
                                              "table2.md"]


def test_a_weak_classifier_gets_a_caveat_beside_its_claims(tmp_path):
    run = _fake_run(tmp_path / "run", tumour_auc=0.905)  # seeds: 0.905, 0.895, 0.885
    write_table(run / "tables" / "table1", table1_rows(run, get_profile("quick")), TABLE1_COLUMNS)
    block = results_markdown(run)
    caveat = ("**Caveat:** the tumour track's classifier f has test AUC below 0.9 on seeds 1, 2 "
              "(0.895 ± 0.010 over 3 seeds)")
    assert block.count(caveat) == 3  # under the AUC, under Table 1's claims, in the tumour paragraph
    tumour = block[block.index("*Table 1, tumour track.*"):]
    assert caveat in tumour and "synthetic track's classifier" not in block


def test_readme_without_markers_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(run, tmp_path / "README.md")


def test_an_unfinished_run_is_refused_or_marked_partial(tmp_path, capsys):
    from coinlib.cli import main

    run = _fake_run(tmp_path / "run")
    (run / "results" / "seed2" / "tumour_coin.json").unlink()  # seed 2 stopped before COIN's tumour track
    readme = tmp_path / "README.md"
    readme.write_text("# T\n<!-- summary:start -->\nold\n<!-- summary:end -->\n")
    page = tmp_path / "results.md"
    page.write_text(f"# R\n{START}\nold\n{END}\n")
    args = ["report", "--run-dir", str(run), "--readme", str(readme), "--results-page", str(page),
            "--figures", str(tmp_path / "figures"), "--tables", str(tmp_path / "tables"), "--docs",
            str(tmp_path / "docs")]
    assert main(args) == 2
    assert "unfinished run: it lacks 1 file(s) a finished run holds (results/seed2/tumour_coin.json)" in \
        capsys.readouterr().err
    assert "old" in readme.read_text() and "old" in page.read_text()  # untouched
    assert main([*args, "--partial"]) == 0
    assert "**Partial run:** run lacks 1 file(s) a finished run holds (results/seed2/tumour_coin.json)" in \
        page.read_text()
    assert "**Partial run:** it lacks 1 file(s)" in readme.read_text()


def test_a_run_without_results_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        results_markdown(tmp_path)


def test_hardware_is_named_with_its_precision():
    gpu = {"cpu": "Intel Xeon", "cpu_cores": 16, "threads": 16, "precision": "bf16", "gpu": "NVIDIA H200"}
    assert describe_hardware(gpu) == "NVIDIA H200 (bf16; host CPU Intel Xeon (16 cores, 16 threads))"
    assert describe_hardware({"cpu": "AMD EPYC", "cpu_cores": 2}) == "AMD EPYC (2 cores, CPU only)"
    zen5 = {"cpu": "AMD EPYC", "cpu_cores": 2, "threads": 1, "precision": "bf16",
            "cpu_model_id": "cpu family 26 model 2", "cpu_bf16": ["avx512_bf16"]}
    assert describe_hardware(zen5) == "AMD EPYC (cpu family 26 model 2, AVX512-BF16, 2 cores, 1 thread, bf16, CPU only)"


def test_hardware_summary_names_the_cpu_generation():
    from coinlib.runtime import cpu_has_native_bf16, hardware_summary

    summary = hardware_summary(torch.device("cpu"))
    assert summary["cpu_cores"] == os.cpu_count()
    assert bool(summary["cpu_bf16"]) == cpu_has_native_bf16()
    if Path("/proc/cpuinfo").is_file() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert summary["cpu_model_id"].startswith("cpu family ")


def test_figures_are_published_as_png_only(tmp_path):
    run = _fake_run(tmp_path / "run")
    copied = publish_figures(run, tmp_path / "figures")
    assert [p.name for p in copied] == ["a.png"]  # the PDF stays in the run folder
    assert (tmp_path / "figures" / "a.png").read_bytes() == b"png"


def test_table_writer(tmp_path):
    rows = [{"method": "COIN", "IoU": 0.6461, "FID": None}, {"method": "RISE", "IoU": 0.3969, "FID": 0.00012}]
    assert markdown_table(rows, ["method", "IoU", "FID"]).splitlines() == [
        "| method | IoU | FID |", "|---|---|---|", "| COIN | 0.646 | - |", "| RISE | 0.397 | 1.20e-04 |"]
    md, csv = write_table(tmp_path / "t", rows, ["method", "IoU"], title="Table 1")
    assert md.read_text().startswith("Table 1\n\n| method | IoU |")
    assert csv.read_text().splitlines() == ["method,IoU,FID", "COIN,0.6461,", "RISE,0.3969,0.00012"]
    _, csv = write_table(tmp_path / "u", rows, ["method"], csv_columns=["method", "IoU"])
    assert csv.read_text().splitlines()[0] == "method,IoU"
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
        new_code_cell("from IPython.display import Markdown\nMarkdown(f'prepared in `{run_dir}/data`')"),
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
    assert "prepared in `runs/smoke/data`" in page  # Markdown outputs too
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
    (tmp_path / "README.md").write_text("# T\n<!-- summary:start -->\n<!-- summary:end -->\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "results.md").write_text(f"# R\n{START}\n{END}\n")
    args = ["report", "--run-dir", str(run), "--readme", str(tmp_path / "README.md"), "--results-page",
            str(tmp_path / "pages" / "results.md"), "--figures", str(tmp_path / "figures"), "--tables",
            str(tmp_path / "tables"), "--docs", str(tmp_path / "docs")]
    assert main(args) == 0
    assert "no executed notebooks in" in capsys.readouterr().out and not (tmp_path / "docs").exists()
    summary = (tmp_path / "README.md").read_text()
    assert "[pages/results.md](pages/results.md)" in summary  # linked relative to the README
    assert "| Table 1 | IoU: synthetic: COIN > Singla* | 0.646 vs 0.445 | 0.600 vs 0.500 |" in summary
    assert "| Table 2 | CV: COIN > lambda_f = 0 | 0.997 vs 0.642 |" in summary
    assert "Classifier f, synthetic track" in (tmp_path / "pages" / "results.md").read_text()
    # quick trains Table 3, so its five orderings are checked (on the fake run's numbers one holds)
    assert "Of the paper's 22 orderings here: 16 hold, 6 not resolved." in summary
