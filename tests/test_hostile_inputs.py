"""What a careful or hostile user can do to the `coin` command, on the smoke profile.

Each test is one reproduction of a way the project used to lose data or mislead: it deletes
nothing it did not write, overwrites nothing it did not write, keeps a run folder to one
profile and its models to their data, refuses NaN and bad settings before any work, and
ends every bad run with one line naming the file or parameter. Tiny inputs throughout: a
coarse phantom (3 mm voxels) and a run folder trained for two steps, shared by the tests.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from coinlib import files
from coinlib import phantom as P
from coinlib import pipeline
from coinlib.cli import build_parser, main
from coinlib.config import CounterfactualConfig, get_profile
from coinlib.files import read_json, write_json
from coinlib.prepared import open_prepared

COARSE = dict(spacing_mm=3.0, z_extent_mm=90.0)
KITS_COARSE = dict(inplane_mm=3.0, slice_mm=5.0, z_extent_mm=100.0)
# the smoke profile on a smaller, coarser phantom, for two GAN steps
SMOKE = ["--profile", "smoke", "--set", "phantom.subjects=4", "--set", "phantom.spacing_mm=3.0",
         "--set", "train.steps=2", "--device", "cpu"]


def coin(capsys, *args: str) -> tuple[int, str]:
    """Run ``coin ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(capsys, *args: str) -> str:
    """``coin ARGS`` must fail with exit status 2 and end with one error line, no traceback
    (progress bars may come before it); returns that line."""
    code, err = coin(capsys, *args)
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith(f"coin {args[0]}: error: ") and "Traceback" not in err, err
    return errors[0]


def parse_error(capsys, *args: str) -> str:
    """``coin ARGS`` must be refused by the option parser, before any work; returns stderr."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([str(a) for a in args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ts(tmp_path_factory) -> Path:
    """Three coarse phantom subjects in the TotalSegmentator layout (copy before changing)."""
    return P.generate_totalsegmentator(tmp_path_factory.mktemp("hostile") / "ts", 3, 0, **COARSE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A smoke run folder with its classifier, COIN (2 steps) and COIN's results."""
    root = tmp_path_factory.mktemp("hostile_run") / "run"
    assert main(["train", *SMOKE, "--run-dir", str(root)]) == 0
    assert main(["evaluate", *SMOKE, "--run-dir", str(root)]) == 0
    return root


def coin_results(run: Path) -> Path:
    return pipeline.RunPaths(run).result("synthetic", "coin")


def coin_model(run: Path) -> Path:
    return pipeline.RunPaths(run).counterfactual("synthetic", "coin") / "counterfactual.pt"


def copy(source: Path, target: Path, keep_times: bool = True) -> Path:
    return Path(shutil.copytree(source, target, symlinks=True, copy_function=shutil.copy2 if keep_times else shutil.copy))


# --------------------------------------------------------------------------- 1: coin prepare deletes nothing


def test_prepare_never_replaces_a_folder_with_hidden_files(capsys, ts, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("k")
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", home, "--image-size", 64)
    assert str(home / ".ssh") in line
    assert (home / ".ssh" / "id_rsa").read_text() == "k"


def test_prepare_refuses_an_out_around_or_inside_the_source(capsys, ts, tmp_path):
    work = tmp_path / "w"
    dataset = copy(ts, work / ".dataset")
    before = tree(dataset)
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", dataset, "--out", work,
                   "--image-size", 32)
    assert "contains the dataset" in line and tree(dataset) == before
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", dataset, "--out",
                   dataset / "prepared", "--image-size", 32)
    assert "inside the dataset" in line and tree(dataset) == before


def test_prepare_replaces_only_its_own_complete_folder(capsys, ts, tmp_path):
    out = tmp_path / "prepared"
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 32)[0] == 0
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 64)[0] == 0
    assert open_prepared(out).image_size == 64  # ours: replaced
    (out / "notes.txt").write_text("mine")
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 32)
    assert "notes.txt" in line and (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 2: coin phantom overwrites nothing


def test_phantom_refuses_a_dataset_it_did_not_write(capsys, ts, tmp_path):
    real = copy(ts, tmp_path / "real")
    for marker in real.glob("s*/.phantom.json"):
        marker.unlink()
    before = tree(real)
    line = refused(capsys, "phantom", "--out", real, "--subjects", 2)
    assert str(real / "s0000") in line and "not written by `coin phantom`" in line
    assert tree(real) == before  # CT, masks and meta.csv untouched


def test_phantom_refuses_its_own_folder_with_other_settings_or_fewer_subjects(capsys, ts, tmp_path):
    own = copy(ts, tmp_path / "own")
    before = tree(own)
    line = refused(capsys, "phantom", "--out", own, "--subjects", 3, "--seed", 1)
    assert "other settings (seed: 0 (asked: 1); spacing_mm: 3.0 (asked: 1.5)" in line
    with pytest.raises(ValueError, match="more subjects than the 2 asked for"):
        P.generate_totalsegmentator(own, 2, 0, **COARSE)
    assert tree(own) == before
    empty_but_foreign = tmp_path / "notes"
    empty_but_foreign.mkdir()
    (empty_but_foreign / ".notes").write_text("mine")
    assert ".notes" in refused(capsys, "phantom", "--out", empty_but_foreign, "--subjects", 1)


# --------------------------------------------------------------------------- 3: one profile per run folder


def test_a_run_folder_refuses_another_profile(capsys, run):
    results = coin_results(run)
    before = results.read_bytes()
    subjects = sorted(p.name for p in (run / "data" / "phantom" / "totalsegmentator").glob("s*"))
    line = refused(capsys, "evaluate", "--profile", "quick", "--run-dir", run, "--device", "cpu")
    assert "belongs to profile 'smoke'" in line and "other settings (name: 'smoke' -> 'quick'; " in line
    line = refused(capsys, "train", *SMOKE, "--set", "train.lambda_tv=0.1", "--run-dir", run)
    assert "train.lambda_tv: 0.05 -> 0.1" in line
    assert results.read_bytes() == before  # smoke's results are not overwritten
    assert sorted(p.name for p in (run / "data" / "phantom" / "totalsegmentator").glob("s*")) == subjects


def test_a_run_folder_from_before_run_json_is_claimed_by_the_profile_of_its_results(capsys, run, tmp_path):
    copied = copy(run, tmp_path / "run")
    (copied / "run.json").unlink()
    line = refused(capsys, "evaluate", "--profile", "quick", "--run-dir", copied, "--device", "cpu")
    assert "holds results of profile 'smoke'" in line and not (copied / "run.json").exists()


def test_results_record_the_checkpoints_config_not_the_callers(run, tmp_path):
    copied = copy(run, tmp_path / "run")
    (copied / "run.json").unlink()  # as a run folder from before run.json
    coin_results(copied).unlink()
    caller = get_profile("smoke", {"phantom": {"subjects": 4, "spacing_mm": 3.0}, "train": {"steps": 5}})
    prepared = pipeline.prepare_track(caller, copied, "synthetic", progress=False)
    results = pipeline.evaluate_variant(caller, copied, "synthetic", prepared, "coin", device="cpu", fid=False,
                                        progress=False)
    assert results["config"]["train"]["steps"] == 2  # what the model was trained with, not 5


def test_a_model_of_other_data_is_not_reused(capsys, run, tmp_path):
    copied = copy(run, tmp_path / "run")
    ct = copied / "data" / "phantom" / "totalsegmentator" / "s0000" / "ct.nii.gz"
    image = nib.load(ct)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + np.int16(40), image.affine, image.header), ct)
    line = refused(capsys, "evaluate", *SMOKE, "--run-dir", copied)
    assert "trained on other data" in line and "stale" in line
    line = refused(capsys, "train", *SMOKE, "--run-dir", copied)
    assert "data_id" in line and "classifier" in line


# --------------------------------------------------------------------------- 4: NaN voxels


@pytest.fixture(scope="module")
def kits_with_nan(tmp_path_factory) -> tuple[Path, Path]:
    """Three coarse KiTS23-layout cases; 1 % of case_00000's voxels NaN."""
    root = P.generate_kits23(tmp_path_factory.mktemp("hostile_kits") / "kits", 3, 0, **KITS_COARSE)
    path = root / "case_00000" / "imaging.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    flat = data.reshape(-1)
    flat[np.random.default_rng(0).choice(flat.size, flat.size // 100, replace=False)] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return root, path


def test_prepare_refuses_nan_voxels_naming_the_file(capsys, kits_with_nan, tmp_path):
    root, path = kits_with_nan
    line = refused(capsys, "prepare", "--layout", "kits23", "--src", root, "--out", tmp_path / "out", "--image-size", 32)
    assert str(path) in line and "NaN or infinite" in line
    assert not (tmp_path / "out").exists()


def test_prepare_fills_nan_voxels_only_when_asked_and_counts_them(capsys, kits_with_nan, tmp_path):
    root, _ = kits_with_nan
    out = tmp_path / "out"
    assert coin(capsys, "prepare", "--layout", "kits23", "--src", root, "--out", out, "--image-size", 32,
                "--fill-nonfinite", -1000)[0] == 0
    prepared = open_prepared(out)
    assert np.isfinite(prepared.images).all()
    filled = {s["scan_id"]: s["nonfinite_voxels_filled"] for s in prepared.manifest["scans"]}
    assert filled["case_00000"] > 0 and filled["case_00001"] == 0
    assert "-1000.0 HU" in prepared.manifest["nonfinite"]


# --------------------------------------------------------------------------- 5: one line, not a traceback


def test_an_existing_file_as_out_or_a_file_in_the_way_is_one_line(capsys, ts, tmp_path):
    existing = tmp_path / "file.txt"
    existing.write_text("mine")
    assert str(existing) in refused(capsys, "phantom", "--out", existing, "--subjects", 1)
    assert "NotADirectoryError" in refused(capsys, "phantom", "--out", existing / "sub", "--subjects", 1)
    assert str(existing) in refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", existing,
                                    "--image-size", 32)
    assert existing.read_text() == "mine"


def test_a_permission_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, ts, tmp_path):
    import coinlib.prepare

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(coinlib.prepare, "prepare_dataset", denied)
    args = ["prepare", "--layout", "totalsegmentator", "--src", ts, "--out", tmp_path / "locked"]
    line = refused(capsys, *args)
    assert "PermissionError" in line and str(tmp_path / "locked") in line
    with pytest.raises(PermissionError):
        main(["--debug", *map(str, args)])
    monkeypatch.setenv("COIN_DEBUG", "1")
    with pytest.raises(PermissionError):
        main([str(a) for a in args])


def test_bad_devices_and_sizes_are_refused_before_any_work(capsys):
    assert "'foo' is not a device" in parse_error(capsys, "train", "--device", "foo")
    assert "--image-size: 0 is below 8" in parse_error(capsys, "prepare", "--layout", "auto", "--src", "a",
                                                        "--out", "b", "--image-size", 0)
    assert "--subjects: 0 is below 1" in parse_error(capsys, "phantom", "--out", "a", "--subjects", 0)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in parse_error(capsys, "train", "--device", "cuda")
        assert "CUDA is not available" in parse_error(capsys, "label", "--model", "a", "--in", "b", "--out", "c",
                                                      "--device", "cuda:1")


def _save_with_affine(path: Path, data: np.ndarray, rows: np.ndarray) -> None:
    """A .nii.gz whose sform is ``rows`` (3 x 4) and qform unset: what nibabel would refuse to write."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + np.asfortranarray(data).tobytes(order="F"))


def test_a_singular_affine_names_the_file(capsys, ts, tmp_path):
    src = copy(ts, tmp_path / "ts")
    for path in sorted((src / "s0001").rglob("*.nii.gz")):
        _save_with_affine(path, np.asarray(nib.load(path).dataobj), np.zeros((3, 4)))
    capsys.readouterr()
    assert main(["prepare", "--layout", "totalsegmentator", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    line = err.rstrip().splitlines()[-1]
    assert "s0001" in line and "singular affine" in line and "[[0, 0, 0, 0]" in line
    assert not any(text.lstrip().startswith("[") for text in err.splitlines())  # no matrix on lines of its own


def test_a_full_disk_names_the_file_being_written(capsys, monkeypatch, tmp_path):
    import coinlib.prepared

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(coinlib.prepared.np.lib.format, "open_memmap", full)  # the arrays are written in place
    out = tmp_path / "phantom"
    P.generate_totalsegmentator(out, 3, 0, **COARSE)
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", out, "--out", tmp_path / "prepared",
                   "--image-size", 32)
    assert "No space left on device while writing" in line and ".npy" in line and str(tmp_path) in line


# --------------------------------------------------------------------------- 6: values checked before work


@pytest.mark.parametrize("setting, message", [
    ("train.batch_size=abc", "CounterfactualConfig.batch_size = 'abc': expected an integer"),
    ("train.lr=fast", "CounterfactualConfig.lr = 'fast': expected a finite number"),
    ("train.batch_size=0", "CounterfactualConfig.batch_size = 0: must lie in [1, 65536]"),
    ("train.steps=-1", "CounterfactualConfig.steps = -1: must lie in [1, inf)"),
    ("classifier.lr=NaN", "ClassifierConfig.lr = nan: expected a finite number"),
    ("data.image_size=48", "multiple of 32"),
    ("train.batch_size=100000000", "CounterfactualConfig.batch_size = 100000000: must lie in [1, 65536]"),
    ("data.image_size=100000", "DataConfig.image_size = 100000: must lie in [8, 2048]"),
    ("train.seed=99999999999999999999", "CounterfactualConfig.seed = 99999999999999999999: must lie in"),
])
def test_bad_settings_stop_before_any_work(capsys, monkeypatch, tmp_path, setting, message):
    def work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(pipeline, "prepare_track", work)
    line = refused(capsys, "train", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set", setting)
    assert message in line
    assert not (tmp_path / "run").exists()


def test_bad_thresholds_are_refused(capsys):
    label = ["label", "--model", "a", "--in", "b", "--out", "c", "--threshold"]
    assert "not a finite number" in parse_error(capsys, *label, "nan")
    assert "outside [0, 1]" in parse_error(capsys, *label, "5")
    with pytest.raises(ValueError, match="CounterfactualConfig.steps"):
        CounterfactualConfig(steps=0)


# --------------------------------------------------------------------------- 8: run folders move


def test_a_copied_run_folder_reuses_what_it_holds(capsys, run, tmp_path):
    moved = copy(run, tmp_path / "moved", keep_times=False)  # `cp -r`: new paths and times
    model, results = coin_model(moved), coin_results(moved)
    weights, scored = model.read_bytes(), results.read_bytes()
    (prepared,) = (moved / "data" / "prepared").iterdir()
    images = (prepared / "images.npy").stat().st_mtime_ns
    results.touch()  # copied before the model: older than it, yet scored with it
    os.utime(results, ns=(model.stat().st_mtime_ns - 10**9,) * 2)
    code, err = coin(capsys, "train", *SMOKE, "--run-dir", moved)
    assert code == 0 and "preparing" not in err and "source files changed" not in err, err
    assert coin(capsys, "evaluate", *SMOKE, "--run-dir", moved)[0] == 0
    assert model.read_bytes() == weights and results.read_bytes() == scored  # reused, not retrained
    assert (prepared / "images.npy").stat().st_mtime_ns == images  # the prepared data were not rebuilt
    masks = tmp_path / "masks"
    scan = next((moved / "data").rglob("ct.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "threshold chosen for an earlier generator"
        assert coin(capsys, "label", "--model", moved, "--in", scan, "--out", masks, "--device", "cpu")[0] == 0


# --------------------------------------------------------------------------- 9: the minor ones


def test_prepare_removes_temporary_folders_of_a_killed_run_and_keeps_normal_permissions(capsys, ts, tmp_path):
    out = tmp_path / "prepared"
    stale = [tmp_path / ".prepared.building-k2j4h5x9", tmp_path / ".prepared.building-otherhost-1-abc"]
    for folder in stale:
        (folder / "images.npy").parent.mkdir()
        (folder / "images.npy").write_bytes(b"half")
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 32)[0] == 0
    assert not stale[0].exists()
    assert stale[1].exists()  # another machine's: it may still be writing
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_prepare_killed_mid_swap_gets_its_old_folder_back(capsys, ts, tmp_path):
    out = tmp_path / "prepared"
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 32)[0] == 0
    before = tree(out)
    host = files._OWNER.rsplit("-", 1)[0]  # this machine, as temporary folders name it
    aside = tmp_path / f".prepared.old-{host}-{_dead_pid()}-x1"
    aside.mkdir()
    os.replace(out, aside / "prepared")  # killed between moving the old folder aside and the new one in
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", out, "--image-size", 32)[0] == 0
    assert tree(out) == before and not aside.exists()  # put back, and reused as it was


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["COIN_PWNED"]),))


def test_a_checkpoint_that_would_run_code_is_refused(capsys, run, tmp_path, monkeypatch):
    copied = copy(run, tmp_path / "run")
    monkeypatch.setenv("COIN_PWNED", str(tmp_path / "pwned"))
    torch.save({"modules": _Payload()}, pipeline.RunPaths(copied).classifier("synthetic") / "classifier.pt")
    coin_results(copied).unlink()
    line = refused(capsys, "evaluate", *SMOKE, "--run-dir", copied)
    assert "classifier.pt" in line and not (tmp_path / "pwned").exists()


def test_results_json_holds_no_bare_nan(run, tmp_path):
    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    write_json(tmp_path / "r.json", {"metrics": {"cv": float("nan"), "iou": 0.5}, "curve": [1.0, float("inf")]})
    saved = strict((tmp_path / "r.json").read_text())
    assert saved["metrics"]["cv"] is None and saved["curve"][1] is None
    assert set(saved["null_values"]) == {"metrics.cv", "curve[1]"} and "nan" in saved["null_values"]["metrics.cv"]
    restored = read_json(tmp_path / "r.json")  # the numbers come back for the reader
    assert np.isnan(restored["metrics"]["cv"]) and restored["curve"] == [1.0, float("inf")]
    assert "null_values" not in restored
    write_json(tmp_path / "history.json", [{"step": 1, "val_cv": float("nan")}, {"step": 2, "val_cv": 0.5}])
    history = strict((tmp_path / "history.json").read_text())
    assert history[0]["val_cv"] is None and "val_cv" in history[0]["null_values"]
    assert np.isnan(read_json(tmp_path / "history.json")[0]["val_cv"])
    for path in run.rglob("*.json"):
        strict(path.read_text())


def test_a_symlinked_duplicate_scan_lands_in_one_split(capsys, ts, tmp_path):
    src = copy(ts, tmp_path / "ts")
    (src / "s0003").symlink_to(src / "s0000", target_is_directory=True)
    with pytest.warns(UserWarning, match="s0003: .* is the same file as scan s0000's"):
        assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", src, "--out", tmp_path / "out",
                    "--image-size", 32)[0] == 0
    prepared = open_prepared(tmp_path / "out")
    assert sorted({row["scan_id"] for row in prepared.index}) == ["s0000", "s0001", "s0002"]


def test_the_wrong_layout_message_names_the_layout_it_looks_like(capsys, ts, tmp_path):
    line = refused(capsys, "prepare", "--layout", "kits23", "--src", ts, "--out", tmp_path / "out", "--image-size", 32)
    assert "looks like a totalsegmentator folder" in line and "--layout totalsegmentator" in line


def test_run_record_names_the_profile(run):
    record = read_json(run / "run.json")
    assert record["profile"] == "smoke" and record["settings"]["phantom"]["subjects"] == 4
    assert "compile" not in record["settings"]["train"]  # speed only: not part of a run's identity
    assert "seed" not in record["settings"]["train"]  # a replicate's: replicates share the folder


# --------------------------------------------------------------------------- values that cannot be CT, labels, meta.csv


def test_sizes_and_seeds_beyond_any_machine_are_refused_before_work_and_not_recorded(capsys, tmp_path):
    assert "--seed: 99999999999999999999 is above 4294967295" in parse_error(
        capsys, "train", "--seed", "99999999999999999999")
    assert "--image-size: 100000 is above 2048" in parse_error(
        capsys, "prepare", "--layout", "auto", "--src", "a", "--out", "b", "--image-size", 100000)
    assert "--batch-size: 100000000 is above 65536" in parse_error(
        capsys, "label", "--model", "a", "--in", "b", "--out", "c", "--batch-size", 100000000)
    line = refused(capsys, "train", "--profile", "smoke", "--run-dir", tmp_path / "run", "--set",
                   "train.batch_size=100000000")
    assert "train" in line and not (tmp_path / "run").exists()  # nothing written, run.json included


def test_values_no_ct_scanner_writes_are_refused_and_fills_must_be_hu(capsys, ts, tmp_path):
    src = copy(ts, tmp_path / "ts")
    path = src / "s0001" / "ct.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float64).copy()
    data[data > 100] = 1e303  # finite as float64, infinite as float32
    nib.save(nib.Nifti1Image(data, image.affine), path)
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", src, "--out", tmp_path / "out",
                   "--image-size", 32)
    assert str(path) in line and "no CT scanner writes" in line and not (tmp_path / "out").exists()
    line = refused(capsys, "prepare", "--layout", "totalsegmentator", "--src", ts, "--out", tmp_path / "out",
                   "--image-size", 32, "--fill-nonfinite", 1e300)
    assert "DataConfig.fill_nonfinite_hu = 1e+300: must lie in [-2000, 4000]" in line


def test_a_label_value_between_labels_is_refused_naming_the_file(capsys, tmp_path):
    root = P.generate_kits23(tmp_path / "kits", 3, 0, **KITS_COARSE)
    path = root / "case_00001" / "segmentation.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj, dtype=np.float32).copy()
    labels[labels == 1] = 1.5  # not kidney (1) and not tumour (2): no label at all
    nib.save(nib.Nifti1Image(labels, image.affine), path)
    line = refused(capsys, "prepare", "--layout", "kits23", "--src", root, "--out", tmp_path / "out",
                   "--image-size", 32)
    assert str(path) in line and "non-integer label values (e.g. 1.5)" in line


def _write_meta(src: Path, rows: list[tuple[str, str]]) -> Path:
    meta = src / "meta.csv"
    meta.write_text("image_id;age;gender;split\n" + "".join(f"{i};60;m;{split}\n" for i, split in rows))
    return meta


def test_a_meta_without_val_rows_draws_validation_from_its_train_scans(capsys, ts, tmp_path):
    """TotalSegmentator's releases after v2.0.1 list train and test only."""
    src = copy(ts, tmp_path / "ts")
    _write_meta(src, [("s0000", "train"), ("s0001", "train"), ("s0002", "test")])
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["prepare", "--layout", "totalsegmentator", "--src", str(src), "--out", str(out),
                 "--image-size", "32", "--split-source", "meta"]) == 0
    said = capsys.readouterr()
    split = open_prepared(out).manifest["split"]
    assert split["scans"]["test"] == ["s0002"] and len(split["scans"]["val"]) == 1
    assert split["val_drawn_from_train"] == split["scans"]["val"]
    assert "lists no val scans" in said.out + said.err
    again = tmp_path / "again"
    assert coin(capsys, "prepare", "--layout", "totalsegmentator", "--src", src, "--out", again,
                "--image-size", 32, "--split-source", "meta")[0] == 0
    assert open_prepared(again).manifest["split"]["scans"] == split["scans"]  # seeded


def test_a_meta_without_test_rows_or_with_conflicting_rows_is_refused_before_reading(capsys, ts, tmp_path,
                                                                                      monkeypatch):
    import coinlib.prepare

    def work(*args, **kwargs):
        raise AssertionError("scans read")

    monkeypatch.setattr(coinlib.prepare, "_build", work)
    src = copy(ts, tmp_path / "ts")
    args = ["prepare", "--layout", "totalsegmentator", "--src", src, "--out", tmp_path / "out", "--image-size", 32,
            "--split-source", "meta"]
    meta = _write_meta(src, [("s0000", "train"), ("s0001", "train"), ("s0002", "val")])
    line = refused(capsys, *args)
    assert str(meta) in line and "none of the 3 scans in test" in line
    _write_meta(src, [("s0000", "train"), ("s0001", "val"), ("s0002", "test"), ("s0001", "test")])
    line = refused(capsys, *args)
    assert f"{meta} line 5: s0001 is listed again with split 'test' after 'val'" in line
    _write_meta(src, [("s0000", "train"), ("s0001", "val"), ("s0002", "test"), ("s0001", "val")])
    with pytest.warns(UserWarning, match="lists 1 scan.s. twice with the same split"):
        with pytest.raises(AssertionError, match="scans read"):
            main(["--debug", *map(str, args)])


# --------------------------------------------------------------------------- a broken file is never taken as done


def test_a_truncated_final_model_is_rebuilt_and_a_truncated_classifier_refused(capsys, run, tmp_path):
    moved = copy(run, tmp_path / "run")
    model = coin_model(moved)
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 3])  # an interrupted copy
    with pytest.warns(UserWarning, match=r"cannot read checkpoint .*counterfactual.pt.*rebuilding it from"):
        assert coin(capsys, "train", *SMOKE, "--run-dir", moved)[0] == 0
    assert model.read_bytes() != whole[: len(whole) // 3]
    assert torch.load(model, weights_only=True)["modules"]["generator"].keys()  # loads again
    classifier = pipeline.RunPaths(moved).classifier("synthetic") / "classifier.pt"
    classifier.write_bytes(classifier.read_bytes()[:100])
    line = refused(capsys, "train-classifier", *SMOKE, "--run-dir", moved)
    assert str(classifier) in line and "broken" in line


# --------------------------------------------------------------------------- coin reproduce checks before a kernel starts


def test_reproduce_checks_its_inputs_before_any_kernel(capsys, run, tmp_path, monkeypatch):
    import papermill

    def kernel(*args, **kwargs):
        raise AssertionError("a kernel started")

    monkeypatch.setattr(papermill, "execute_notebook", kernel)
    fresh = tmp_path / "fresh"
    line = refused(capsys, "reproduce", "--profile", "smoke", "--run-dir", fresh, "--data", tmp_path / "missing")
    assert line.startswith(f"coin reproduce: error: --data {tmp_path / 'missing'}: dataset folder not found")
    assert len(line) < 300 and not fresh.exists()
    line = refused(capsys, "reproduce", "--profile", "smoke", "--run-dir", fresh, "--notebooks", "99")
    assert "no notebook starts with ['99']" in line and not fresh.exists()
    line = refused(capsys, "reproduce", "--profile", "quick", "--run-dir", run)
    assert "belongs to profile 'smoke'" in line and not (run / "notebooks").exists()
    line = refused(capsys, "reproduce", "--profile", "smoke", "--run-dir", fresh, "--set", "train.steps=0")
    assert "CounterfactualConfig.steps = 0: must lie in [1, inf)" in line and not fresh.exists()


# --------------------------------------------------------------------------- one writer per run folder


def test_a_second_stage_on_a_busy_run_folder_waits_for_the_first(capsys, run, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from coinlib.files import exclusive\n"
         "with exclusive(sys.argv[1], 'coin train --track synthetic'):\n"
         "    print('held', flush=True); time.sleep(3)", str(run / "run.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        code, err = coin(capsys, "evaluate", *SMOKE, "--run-dir", run)  # reuses its results: fast once let in
        waited = time.perf_counter() - started
    finally:
        holder.wait(timeout=30)
    assert code == 0, err
    assert f"waiting for {run}: coin train --track synthetic (pid {holder.pid} on" in err
    assert waited > 1.0
