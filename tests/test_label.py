"""`coin label`: weak masks for CT volumes in any orientation, resumable, sharded across ranks.

The run folder is built without training: a randomly initialised classifier and generator of
the smoke sizes, saved with the real checkpoint functions and configs. The classifier's
threshold is set to the median p_abnormal of the test volume's slices, so half of them are
abnormal, and the mask threshold (written as the validation choice in results/) to a
percentile of their difference maps, so the masks are neither empty nor full.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from coinlib.classifier import build_classifier
from coinlib.cli import main
from coinlib.config import ClassifierConfig, get_profile, to_dict
from coinlib.gan import build_gan
from coinlib.label import (
    CSV_COLUMNS,
    find_volumes,
    label_folder,
    lesion_volume_ml,
    load_label_model,
    output_paths,
    shard,
    to_native_mask,
    voxel_volume_ml,
)
from coinlib.masks import difference_map
from coinlib.prepare import load_canonical, normalise_hu, resize_slices
from coinlib.pipeline import RunPaths
from coinlib.runtime import save_checkpoint

AFFINE = np.array([[0.8, 0, 0, -16.0], [0, 0.9, 0, -20.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
KITS_CODES = ("I", "P", "L")  # axial axis first, every axis flipped
LPS_CODES = ("L", "P", "S")


def ct_volume(shape=(40, 48, 10), seed=0) -> np.ndarray:
    """int16 HU (RAS): air, an elliptic body of soft tissue, a bright blob on some slices."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    hu[((x - 0.3) / 0.2) ** 2 + ((y + 0.1) / 0.25) ** 2 + ((z - 0.2) / 0.5) ** 2 < 1] = 180.0
    return (hu + rng.normal(0, 15, shape)).astype(np.int16)


def reoriented(image: nib.Nifti1Image, codes) -> nib.Nifti1Image:
    return image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt(codes)))


def read(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three files of one volume: flat RAS and LPS files, and a KiTS23 case (axial axis first)
    with its segmentation.nii.gz beside it (not CT: must be left out)."""
    root = tmp_path_factory.mktemp("scans")
    image = nib.Nifti1Image(ct_volume(), AFFINE)
    nib.save(image, root / "ras.nii.gz")
    nib.save(reoriented(image, LPS_CODES), root / "lps.nii.gz")
    (root / "case_00000").mkdir()
    nib.save(reoriented(image, KITS_CODES), root / "case_00000" / "imaging.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((10, 48, 40), np.uint8), np.eye(4)), root / "case_00000" / "segmentation.nii.gz")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_prepared, scans):
    """A run folder in coinlib.pipeline's layout with classifier, COIN generator and results."""
    root = tmp_path_factory.mktemp("run")
    profile = get_profile("smoke")
    volume = load_canonical(scans / "ras.nii.gz")
    x = resize_slices(normalise_hu(volume.radiological(range(volume.n_axial)), -100.0, 300.0), 32, "image")
    x = torch.from_numpy(x)[:, None]

    torch.manual_seed(0)
    classifier = build_classifier(ClassifierConfig()).eval()
    generator, _ = build_gan(profile.gan)
    generator.eval()
    with torch.no_grad():
        p = np.sort(torch.sigmoid(classifier(x)).numpy())
        x_cf = generator(x, torch.zeros(len(x), dtype=torch.long))
        diff_map = difference_map(x, x_cf).numpy()
    half = len(p) // 2
    assert p[half - 1] < p[half], "need distinct probabilities to split the slices"
    threshold = float(p[half - 1] + p[half]) / 2  # the upper half of the slices is abnormal

    paths = RunPaths(root)
    clf_dir = paths.classifier("synthetic")
    save_checkpoint(clf_dir / "classifier.pt", {"classifier": classifier},
                    {"classifier": to_dict(ClassifierConfig(threshold=threshold)), "anomaly": None,
                     "data": str(tiny_prepared)})
    save_checkpoint(paths.counterfactual("synthetic", "coin") / "counterfactual.pt", {"generator": generator},
                    {"gan": to_dict(profile.gan), "train": to_dict(profile.train), "anomaly": None,
                     "data": str(tiny_prepared), "classifier": str(clf_dir / "classifier.pt")})
    paths.seed_results.mkdir(parents=True)
    metrics = {"threshold_from_val": float(np.quantile(diff_map, 0.6))}
    paths.result("synthetic", "coin").write_text(
        json.dumps({"metrics": metrics, "config": {"eval": to_dict(profile.eval)}}))
    return root


@pytest.fixture(scope="module")
def labelled(run_dir, scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    done = label_folder(run_dir, scans, out, device="cpu", batch_size=4, progress=False)
    return out, done


def test_finds_flat_and_kits_files_but_not_label_files_or_outputs(scans, tmp_path):
    found = [p.relative_to(scans).as_posix() for p in find_volumes(scans)]
    assert found == ["case_00000/imaging.nii.gz", "lps.nii.gz", "ras.nii.gz"]
    assert find_volumes(scans, exclude=scans / "case_00000") == [scans / "lps.nii.gz", scans / "ras.nii.gz"]
    assert output_paths(scans / "case_00000" / "imaging.nii.gz", scans, tmp_path)[0] == \
        tmp_path / "case_00000" / "imaging_coin_mask.nii.gz"
    with pytest.raises(ValueError, match=str(tmp_path)):
        find_volumes(tmp_path)


def test_masks_follow_the_input_orientation(scans, labelled):
    out, done = labelled
    assert done.total == 3 and len(done.labelled) == 3 and not done.skipped
    mask = {}
    for name in ("ras", "lps", "case_00000/imaging"):
        source = nib.load(scans / f"{name}.nii.gz")
        written = nib.load(out / f"{name}_coin_mask.nii.gz")
        assert written.shape == source.shape
        assert np.array_equal(written.affine, source.affine)
        assert written.get_data_dtype() == np.uint8
        mask[name] = np.asanyarray(written.dataobj)
    ras = nib.Nifti1Image(mask["ras"], AFFINE)
    assert 0 < mask["ras"].sum() < mask["ras"].size // 4
    assert np.array_equal(mask["lps"], np.asanyarray(reoriented(ras, LPS_CODES).dataobj))
    assert np.array_equal(mask["case_00000/imaging"], np.asanyarray(reoriented(ras, KITS_CODES).dataobj))
    # only abnormal slices (the upper half by p_abnormal) carry a mask
    assert 0 < np.count_nonzero(mask["ras"].any(axis=(0, 1))) <= 5


def test_csv_and_sidecars_report_volume_and_threshold(scans, labelled, run_dir):
    out, done = labelled
    assert done.csv == out / "labels.csv"
    with open(done.csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["file"] for r in rows] == ["case_00000/imaging.nii.gz", "lps.nii.gz", "ras.nii.gz"]
    ras = rows[2]
    assert ras["shape"] == "40x48x10" and ras["spacing_mm"] == "0.8x0.9x2.5" and ras["axial_axis"] == "2"
    assert rows[0]["shape"] == "10x48x40" and rows[0]["axial_axis"] == "0"
    voxels = int(read(out / "ras_coin_mask.nii.gz").sum())
    assert int(ras["lesion_voxels"]) == voxels
    assert float(ras["lesion_ml"]) == pytest.approx(voxels * 0.8 * 0.9 * 2.5 / 1000, abs=1e-4)
    assert {r["lesion_ml"] for r in rows} == {ras["lesion_ml"]}  # same scan, three orientations
    assert int(ras["abnormal_slices"]) == 5 and int(ras["slices"]) == 10
    # abnormal slices numbered along each file's own axial axis: KiTS's runs inferior-wards
    ras_slices = json.loads((out / "ras_coin_mask.json").read_text())["abnormal_slice_indices"]
    kits_slices = json.loads((out / "case_00000" / "imaging_coin_mask.json").read_text())["abnormal_slice_indices"]
    assert len(ras_slices) == 5 and kits_slices == sorted(9 - k for k in ras_slices)
    expected = json.loads(RunPaths(run_dir).result("synthetic", "coin").read_text())["metrics"]
    assert float(ras["mask_threshold"]) == pytest.approx(expected["threshold_from_val"])
    assert "validation" in ras["threshold_source"]


def test_voxel_and_lesion_volume_by_hand():
    anisotropic = np.diag([0.5, 0.8, 2.5, 1.0])  # 1 mm^3 per voxel
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[:10, :10, :10] = 1  # 1000 voxels = 1000 mm^3 = 1 ml
    assert lesion_volume_ml(mask, anisotropic) == pytest.approx(1.0)
    # axes permuted and flipped (LPS, axial first), and rotated in-plane: same voxel volume
    permuted = np.array([[0, -0.8, 0, 0], [0, 0, -2.5, 0], [0.5, 0, 0, 0], [0, 0, 0, 1.0]])
    assert voxel_volume_ml(permuted) == pytest.approx(0.001)
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]) @ np.diag([2.0, 2.0, 3.0, 1.0])
    assert voxel_volume_ml(rotated) == pytest.approx(0.012)


@pytest.mark.parametrize("codes", [("R", "A", "S"), LPS_CODES, KITS_CODES, ("A", "S", "R")])
def test_to_native_mask_inverts_the_reorientation(codes):
    data = np.random.default_rng(1).random((5, 6, 7))
    image = reoriented(nib.Nifti1Image(data, AFFINE), codes)
    native = np.asanyarray(image.dataobj)
    canonical = nib.orientations.apply_orientation(native, io_orientation(image.affine))
    assert np.array_equal(canonical, data)
    assert np.array_equal(to_native_mask(canonical, image.affine), native)


def test_second_run_skips_and_force_redoes(run_dir, scans, tmp_path):
    first = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    mask = tmp_path / "ras_coin_mask.nii.gz"
    stamp = mask.stat().st_mtime_ns
    again = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    assert len(first.labelled) == 1 and not again.labelled and again.skipped == [scans / "ras.nii.gz"]
    assert mask.stat().st_mtime_ns == stamp
    forced = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", force=True, progress=False)
    assert forced.labelled == [scans / "ras.nii.gz"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_never_overwrites_without_force(run_dir, scans, tmp_path):
    label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    mask = tmp_path / "ras_coin_mask.nii.gz"
    before = mask.read_bytes()
    with pytest.raises(ValueError, match="other settings.*mask_threshold.*--force"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", threshold=0.5, progress=False)
    (tmp_path / "ras_coin_mask.json").unlink()  # a mask without its sidecar: not ours to replace
    with pytest.raises(ValueError, match="ras_coin_mask.nii.gz exists without its sidecar"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    assert mask.read_bytes() == before
    done = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", threshold=0.5, force=True,
                        progress=False)
    assert done.labelled and json.loads((tmp_path / "ras_coin_mask.json").read_text())["threshold_source"] == \
        "--threshold"


def test_output_folder_may_be_the_input_folder(run_dir, scans, tmp_path):
    shutil.copy(scans / "ras.nii.gz", tmp_path / "ras.nii.gz")
    first = label_folder(run_dir, tmp_path, tmp_path, device="cpu", progress=False)
    again = label_folder(run_dir, tmp_path, tmp_path, device="cpu", progress=False)
    assert first.labelled == again.skipped == [tmp_path / "ras.nii.gz"] and again.total == 1


def test_bad_inputs_fail_naming_the_file(run_dir, scans, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "junk.nii.gz").write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ValueError, match="junk.nii.gz"):
        label_folder(run_dir, bad, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out" / "labels.csv").exists()

    flat = tmp_path / "flat"
    flat.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), flat / "slice.nii.gz")
    with pytest.raises(ValueError, match=r"slice.nii.gz is not a 3D volume"):
        label_folder(run_dir, flat, tmp_path / "out", device="cpu", progress=False)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    whole = (scans / "ras.nii.gz").read_bytes()
    assert gzip.decompress(whole)  # a valid file, cut short below: the header reads, the data do not
    (truncated / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.nii.gz"):
        label_folder(run_dir, truncated, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out" / "cut_coin_mask.nii.gz").exists()


def test_missing_model_pieces_name_the_command(run_dir, scans, tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_label_model(tmp_path / "nowhere")
    partial = tmp_path / "run"
    shutil.copytree(RunPaths(run_dir).classifier("synthetic"), RunPaths(partial).classifier("synthetic"))
    with pytest.raises(FileNotFoundError, match=r"no generator.*coin train --run-dir .* --variant coin"):
        load_label_model(partial, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"no classifier.*coin train-classifier --run-dir .* --track tumour"):
        load_label_model(partial, track="tumour", device="cpu")


def test_shard_gives_every_file_to_exactly_one_rank():
    files = [Path(f"scan_{i:02d}.nii.gz") for i in (7, 3, 11, 0, 5, 9, 1)]
    for world_size in (1, 2, 3, 7, 10):
        parts = [shard(files, rank, world_size) for rank in range(world_size)]
        assert sorted(f for part in parts for f in part) == sorted(files)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(files, 1, 3) == sorted(files)[1::3] == shard(list(reversed(files)), 1, 3)
    for rank, world_size in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            shard(files, rank, world_size)


def test_ranks_from_the_environment_label_their_shard(run_dir, scans, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    done = label_folder(run_dir, scans, tmp_path, device="cpu", progress=False)
    assert done.labelled == [scans / "lps.nii.gz"]  # sorted: imaging, lps, ras -> rank 1 takes lps
    assert done.csv_rows == 1 and done.total == 3
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    rest = label_folder(run_dir, scans, tmp_path, device="cpu", progress=False)
    assert rest.skipped == [scans / "lps.nii.gz"] and len(rest.labelled) == 2
    assert rest.csv_rows == 3 == rest.total


def test_two_processes_share_the_work_and_the_last_leaves_the_whole_csv(run_dir, scans, tmp_path, monkeypatch):
    # as `torchrun --nproc-per-node 2 -m coinlib.cli label ...` runs it: rank 1 in a process of
    # its own, rank 0 here at the same time; both rebuild labels.csv when they finish
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "coinlib.cli", "label", "--model", str(run_dir), "--in", str(scans),
               "--out", str(tmp_path), "--device", "cpu"]
    rank1 = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
        rank0 = label_folder(run_dir, scans, tmp_path, device="cpu", progress=False)
        out, err = rank1.communicate(timeout=120)
    finally:
        if rank1.poll() is None:
            rank1.kill()
    assert rank1.returncode == 0, err[-3000:]
    assert rank0.labelled == [scans / "case_00000" / "imaging.nii.gz", scans / "ras.nii.gz"]
    assert "labelled 1, skipped 0 already done (rank 1 of 2)" in out
    with open(tmp_path / "labels.csv", newline="") as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == \
            ["case_00000/imaging.nii.gz", "lps.nii.gz", "ras.nii.gz"]


def test_cli_label(run_dir, scans, tmp_path, capsys):
    assert main(["label", "--model", str(run_dir), "--in", str(scans), "--out", str(tmp_path),
                 "--device", "cpu", "--batch-size", "3"]) == 0
    assert "labelled 3, skipped 0" in capsys.readouterr().out
    assert (tmp_path / "case_00000" / "imaging_coin_mask.nii.gz").is_file()
    assert main(["label", "--model", str(tmp_path / "no_run"), "--in", str(scans), "--out", str(tmp_path)]) == 2
    assert "run folder not found" in capsys.readouterr().err
