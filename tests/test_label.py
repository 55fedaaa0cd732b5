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
from coinlib.config import ClassifierConfig, DataConfig, get_profile, to_dict
from coinlib.gan import build_gan
from coinlib.label import (
    CSV_COLUMNS,
    _prepared_settings,
    label_folder,
    lesion_volume_ml,
    load_label_model,
    output_paths,
    shard,
    to_native_mask,
    voxel_volume_ml,
)
from coinlib.masks import difference_map
from coinlib.prepare import normalise_hu, resize_slices
from coinlib.volumes import load_canonical
from coinlib.pipeline import RunPaths
from coinlib.runtime import save_checkpoint
from coinlib.volumes import find_scans, read_dicom_series

AFFINE = np.array([[0.8, 0, 0, -16.0], [0, 0.9, 0, -20.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
KITS_CODES = ("I", "P", "L")  # axial axis first, every axis flipped
LPS_CODES = ("L", "P", "S")
SAMPLE_SERIES = Path(__file__).resolve().parent.parent / "samples" / "real_ct" / "dicom_series"


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
def dicom_copy(tmp_path_factory):
    """The bundled DICOM series under file names that sort against the slice order."""
    folder = tmp_path_factory.mktemp("dicom_in") / "series"
    folder.mkdir()
    for k, path in enumerate(sorted(SAMPLE_SERIES.glob("*.dcm"))):
        shutil.copy(path, folder / f"slice_{(7 * k) % 20:02d}")  # no suffix: found by the DICM marker
    return folder


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


def paths(scans_found):
    return [scan.path for scan in scans_found]


def test_finds_flat_and_kits_files_but_not_label_files_or_outputs(scans, tmp_path):
    found = find_scans(scans)
    assert [s.display for s in found] == ["case_00000/imaging.nii.gz", "lps.nii.gz", "ras.nii.gz"]
    assert paths(find_scans(scans, exclude=scans / "case_00000")) == [scans / "lps.nii.gz", scans / "ras.nii.gz"]
    assert output_paths(found[0], tmp_path)[0] == tmp_path / "case_00000" / "imaging_coin_mask.nii.gz"
    with pytest.raises(ValueError, match=str(tmp_path)):
        find_scans(tmp_path)


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
    assert len(first.labelled) == 1 and not again.labelled and paths(again.skipped) == [scans / "ras.nii.gz"]
    assert mask.stat().st_mtime_ns == stamp
    forced = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", force=True, progress=False)
    assert paths(forced.labelled) == [scans / "ras.nii.gz"]
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


def test_files_a_user_wrote_under_our_names_are_never_replaced(run_dir, scans, tmp_path):
    """labels.csv and <scan>_coin_mask.json are updated only when coin label wrote them."""
    users_csv = tmp_path / "labels.csv"
    users_csv.write_text("patient,finding\np1,cyst\n")
    with pytest.raises(ValueError, match=r"labels.csv exists and was not written by coin label.*--force"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    assert users_csv.read_text() == "patient,finding\np1,cyst\n" and not (tmp_path / "ras_coin_mask.nii.gz").exists()
    users_csv.unlink()
    users_json = tmp_path / "ras_coin_mask.json"
    users_json.write_text('{"my": "notes"}')
    with pytest.raises(ValueError, match=r"ras_coin_mask.json exists and was not written by coin label"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    assert users_json.read_text() == '{"my": "notes"}'
    users_json.unlink()
    label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)
    assert json.loads(users_json.read_text())["written_by"] == "coin label"
    again = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", progress=False)  # ours: updated
    assert again.skipped and read_csv(users_csv)[0]["status"] == "labelled"
    users_csv.write_text("mine\n")
    forced = label_folder(run_dir, scans / "ras.nii.gz", tmp_path, device="cpu", force=True, progress=False)
    assert forced.labelled and read_csv(users_csv)[0]["file"] == "ras.nii.gz"


def test_a_scan_linked_twice_is_labelled_once_and_a_dangling_link_is_named(run_dir, scans, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(scans / "ras.nii.gz", source / "a.nii.gz")
    (source / "b.nii.gz").symlink_to(source / "a.nii.gz")
    (source / "c.nii.gz").symlink_to(source / "a.nii.gz")
    (source / "d.nii.gz").symlink_to(source / "gone.nii.gz")
    with pytest.warns(UserWarning) as caught:
        done = label_folder(run_dir, source, tmp_path / "out", device="cpu", progress=False)
    said = " | ".join(str(w.message) for w in caught)
    assert paths(done.labelled) == [source / "a.nii.gz"] and done.total == 1, said
    assert "b.nii.gz: the same file as" in said and "c.nii.gz: the same file as" in said
    assert "d.nii.gz: a symlink to nothing" in said


def test_output_folder_may_be_the_input_folder(run_dir, scans, tmp_path):
    shutil.copy(scans / "ras.nii.gz", tmp_path / "ras.nii.gz")
    first = label_folder(run_dir, tmp_path, tmp_path, device="cpu", progress=False)
    again = label_folder(run_dir, tmp_path, tmp_path, device="cpu", progress=False)
    assert paths(first.labelled) == paths(again.skipped) == [tmp_path / "ras.nii.gz"] and again.total == 1


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def bad_and_good(scans, tmp_path_factory):
    """Two good scans among a truncated file, junk, a 2-D file and a volume with a NaN voxel."""
    source = tmp_path_factory.mktemp("bad_and_good")
    shutil.copy(scans / "ras.nii.gz", source / "a_good.nii.gz")
    whole = (scans / "ras.nii.gz").read_bytes()
    assert gzip.decompress(whole)  # a valid file, cut short below: the header reads, the data do not
    (source / "b_cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    (source / "c_junk.nii.gz").write_bytes(b"this is not a NIfTI file")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), source / "d_slice.nii.gz")
    with_nan = ct_volume().astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(with_nan, AFFINE), source / "e_nan.nii.gz")
    shutil.copy(scans / "lps.nii.gz", source / "f_good.nii.gz")
    return source


def test_unreadable_scans_are_listed_and_the_good_ones_labelled(run_dir, bad_and_good, tmp_path):
    # a corrupt volume among good ones stops only itself
    out = tmp_path / "out"
    done = label_folder(run_dir, bad_and_good, out, device="cpu", progress=False)
    assert paths(done.labelled) == [bad_and_good / "a_good.nii.gz", bad_and_good / "f_good.nii.gz"]
    reasons = {scan.name: why for scan, why in done.failed}
    assert sorted(reasons) == ["b_cut", "c_junk", "d_slice", "e_nan"]
    for name, says in {"b_cut": "truncated or corrupt", "c_junk": "cannot read NIfTI", "d_slice": "not a 3D volume",
                       "e_nan": "1 non-finite voxels"}.items():
        assert f"{name}.nii.gz" in reasons[name] and says in reasons[name], reasons[name]
    rows = {r["file"]: r for r in read_csv(done.csv)}
    assert len(rows) == 6 == done.csv_rows == done.total
    assert rows["a_good.nii.gz"]["status"] == "labelled" and rows["a_good.nii.gz"]["error"] == ""
    assert rows["b_cut.nii.gz"]["status"] == "unreadable" and "b_cut.nii.gz" in rows["b_cut.nii.gz"]["error"]
    assert not (out / "b_cut_coin_mask.nii.gz").exists() and (out / "f_good_coin_mask.nii.gz").is_file()
    again = label_folder(run_dir, bad_and_good, out, device="cpu", progress=False)  # failures are retried
    assert len(again.skipped) == 2 and len(again.failed) == 4 and not again.labelled


def test_cli_lists_unreadable_scans_on_stderr_and_exits_non_zero(run_dir, bad_and_good, tmp_path, capsys):
    assert main(["label", "--model", str(run_dir), "--in", str(bad_and_good), "--out", str(tmp_path),
                 "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "labelled 2" in captured.out and "4 unreadable" in captured.out
    for name in ("b_cut", "c_junk", "d_slice", "e_nan"):
        assert f"{name}.nii.gz" in captured.err
    assert (tmp_path / "a_good_coin_mask.nii.gz").is_file()


def kidney_mask_on(image: nib.Nifti1Image, canonical_slices: dict[int, int]) -> np.ndarray:
    """A hand-made kidney mask on ``image``'s grid (RAS here): ``{z: pixels}`` per axial slice,
    a run of pixels along x at y = 20."""
    kidney = np.zeros(image.shape, np.uint8)
    for z, pixels in canonical_slices.items():
        kidney[: pixels, 20, z] = 1
    return kidney


def test_organ_masks_restrict_the_classified_slices_and_the_mask(run_dir, scans, tmp_path):
    everything = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "all", device="cpu", progress=False)
    record = json.loads((tmp_path / "all" / "ras_coin_mask.json").read_text())
    row = read_csv(everything.csv)[0]
    assert row["classified_slices"] == row["slices"] == "10" and row["slice_selection"].startswith("every axial")
    assert len(record["p_abnormal"]) == 10 and record["classified_slice_indices"] == list(range(10))

    abnormal = record["abnormal_slice_indices"]
    assert len(abnormal) == 5
    chosen = abnormal[:2] + [k for k in range(10) if k not in abnormal][:2]  # two abnormal, two normal slices
    image = nib.load(scans / "ras.nii.gz")
    per_slice = {z: 32 for z in chosen} | {next(k for k in range(10) if k not in chosen): 31}  # 31 < 32: left out
    masks = tmp_path / "ts"
    masks.mkdir()
    kidney = kidney_mask_on(image, per_slice)
    left = kidney.copy()
    left[:16] = 0  # the two files together make the kidney
    nib.save(nib.Nifti1Image(left, AFFINE), masks / "kidney_left.nii.gz")
    # the right kidney's file in LPS axis order: the same grid, stored otherwise; reoriented on reading
    nib.save(reoriented(nib.Nifti1Image(kidney - left, AFFINE), LPS_CODES), masks / "kidney_right.nii.gz")

    done = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "kidney", device="cpu", organ_masks=masks,
                        progress=False)
    row = read_csv(done.csv)[0]
    record = json.loads((tmp_path / "kidney" / "ras_coin_mask.json").read_text())
    assert row["classified_slices"] == "4" and row["slices"] == "10"
    assert "32 kidney pixels" in row["slice_selection"] and "kidney_left.nii.gz" in row["slice_selection"]
    assert record["classified_slice_indices"] == sorted(chosen)
    assert record["abnormal_slice_indices"] == sorted(abnormal[:2])  # the same calls on the slices classified
    unrestricted = read(tmp_path / "all" / "ras_coin_mask.nii.gz")
    restricted = read(tmp_path / "kidney" / "ras_coin_mask.nii.gz")
    assert np.array_equal(restricted[:, :, abnormal[:2]], unrestricted[:, :, abnormal[:2]])
    assert not restricted[:, :, [k for k in range(10) if k not in chosen]].any()

    margin = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "margin", device="cpu", organ_masks=masks,
                          mask_margin_mm=2.0, progress=False)
    near = read(tmp_path / "margin" / "ras_coin_mask.nii.gz")
    assert margin.labelled and 0 < near.sum() < restricted.sum() and not (near & ~restricted).any()
    # within 2 mm of the kidney run (y spacing 0.9 mm): rows 18..22 only
    assert set(np.flatnonzero(near.any(axis=(0, 2)))) <= {18, 19, 20, 21, 22}
    assert read_csv(margin.csv)[0]["mask_margin_mm"] == "2.0"


def test_empty_organ_masks_are_said_not_silently_labelled(run_dir, scans, tmp_path):
    masks = tmp_path / "ts"
    masks.mkdir()
    empty = np.zeros(nib.load(scans / "ras.nii.gz").shape, np.uint8)
    for name in ("kidney_left.nii.gz", "kidney_right.nii.gz"):
        nib.save(nib.Nifti1Image(empty, AFFINE), masks / name)
    with pytest.warns(UserWarning, match=r"ras.nii.gz: no axial slice has >= 32 kidney pixels .* mask is empty"):
        done = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "out", device="cpu", organ_masks=masks,
                            progress=False)
    assert read_csv(done.csv)[0]["classified_slices"] == "0"


def test_organ_masks_on_another_grid_or_missing_name_the_file(run_dir, scans, tmp_path):
    masks = tmp_path / "ts"
    masks.mkdir()
    image = nib.load(scans / "ras.nii.gz")
    kidney = kidney_mask_on(image, {4: 40})
    nib.save(nib.Nifti1Image(kidney, AFFINE), masks / "kidney_left.nii.gz")
    shifted = AFFINE.copy()
    shifted[2, 3] += 7.5  # three slices further up: another scan's grid
    nib.save(nib.Nifti1Image(kidney, shifted), masks / "kidney_right.nii.gz")
    done = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "out", device="cpu", organ_masks=masks,
                        progress=False)
    ((_, why),) = done.failed
    assert "kidney_right.nii.gz" in why and "not on the voxel grid" in why and not done.labelled
    assert "\n" not in why and "\n" not in json.loads((tmp_path / "out" / "ras_coin_mask.json").read_text())["error"]
    with open(done.csv, newline="") as handle:
        assert len(handle.read().splitlines()) == 2  # header + one row: no line break inside a field
    (masks / "kidney_right.nii.gz").unlink()
    done = label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "out", device="cpu", organ_masks=masks,
                        progress=False)
    assert "no kidney masks for ras.nii.gz" in done.failed[0][1]
    with pytest.raises(ValueError, match="--mask-margin-mm needs --organ-masks"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "out", device="cpu", mask_margin_mm=5.0)
    with pytest.raises(FileNotFoundError, match="--organ-masks"):
        label_folder(run_dir, scans / "ras.nii.gz", tmp_path / "out", device="cpu", organ_masks=tmp_path / "none")


def test_min_kidney_pixels_is_the_prepared_datasets(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"image_size": 48, "min_kidney_pixels": 200}))
    assert _prepared_settings(tmp_path) == (48, 200)
    (tmp_path / "manifest.json").write_text(json.dumps({"image_size": 48}))
    assert _prepared_settings(tmp_path) == (48, DataConfig().min_kidney_pixels)


def test_a_dicom_series_is_labelled_on_its_own_grid(run_dir, dicom_copy, tmp_path):
    done = label_folder(run_dir, dicom_copy.parent, tmp_path, device="cpu", progress=False)
    assert [s.display for s in done.labelled] == [f"{dicom_copy.name}/"] and not done.failed
    volume = read_dicom_series(dicom_copy, "")
    mask = nib.load(tmp_path / f"{dicom_copy.name}_coin_mask.nii.gz")
    assert mask.shape == volume.shape == (512, 512, 20)
    assert np.allclose(mask.affine, volume.affine) and mask.get_data_dtype() == np.uint8
    row = read_csv(done.csv)[0]
    assert row["format"] == "dicom" and row["shape"] == "512x512x20" and row["spacing_mm"] == "0.9766x0.9766x2"


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
    assert paths(done.labelled) == [scans / "lps.nii.gz"]  # sorted: imaging, lps, ras -> rank 1 takes lps
    assert done.csv_rows == 1 and done.total == 3
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    rest = label_folder(run_dir, scans, tmp_path, device="cpu", progress=False)
    assert paths(rest.skipped) == [scans / "lps.nii.gz"] and len(rest.labelled) == 2
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
    assert paths(rank0.labelled) == [scans / "case_00000" / "imaging.nii.gz", scans / "ras.nii.gz"]
    assert "labelled 1, skipped 0 already done, 0 unreadable (rank 1 of 2)" in out
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
