"""coinlib.volumes: finding scans, DICOM series (on the bundled real series), kidney masks.

DICOM files for the cases the sample lacks (a second series in the folder, per-slice rescale,
another modality) are written with SimpleITK's own DICOM writer from the sample's slices.
"""

from __future__ import annotations

import locale
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from coinlib.volumes import (
    Scan,
    UnreadableScan,
    find_organ_masks,
    find_scans,
    looks_like_dicom,
    read_dicom_series,
    read_kidney_mask,
    read_scan,
    sitk_to_nifti,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "real_ct"
SERIES = sorted((SAMPLES / "dicom_series").glob("*.dcm"))
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def copy_series(folder: Path, files=SERIES, names=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(files):
        shutil.copy(path, folder / (names[k] if names else path.name))
    return folder


def rewrite(source: Path, target: Path, tags: dict[str, str], uid_suffix: str) -> None:
    """``source`` (HU as SimpleITK reads it) written again as a DICOM file with ``tags`` changed;
    the writer stores (HU - intercept) / slope for the RescaleIntercept/Slope given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(source))
    image.SetMetaData("0008|0016", CT_IMAGE_STORAGE)  # the anonymised sample leaves the SOP UIDs empty
    image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.8.498.{uid_suffix}")
    for key, value in tags.items():
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(target))
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        writer.Execute(image)
    finally:  # GDCM's writer sets the C locale and leaves it (later subprocess text would be ASCII)
        locale.setlocale(locale.LC_CTYPE, ctype)


def single_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file read alone: (pixels (i, j) in HU, RAS position of its first voxel)."""
    image = sitk.ReadImage(str(path))
    lps = np.asarray(image.GetOrigin())
    return sitk.GetArrayFromImage(image)[0].T, lps * [-1, -1, 1]


@pytest.fixture(scope="module")
def sample():
    return read_dicom_series(SAMPLES / "dicom_series", "")


def test_the_sample_series_reads_in_hu_on_its_dicom_grid(sample):
    assert sample.shape == (512, 512, 20)
    assert nib.aff2axcodes(sample.affine) == ("L", "P", "S")
    assert np.allclose(np.sqrt((sample.affine[:3, :3] ** 2).sum(axis=0)), [0.9765625, 0.9765625, 2.0])
    hu = np.asanyarray(sample.dataobj)
    # stored pixels are unsigned (PixelRepresentation 0), RescaleIntercept -1024: air reads -1024
    assert hu.min() == -1024 and hu[:20, :20].max() == -1024 and 0 < np.median(hu[200:300, 200:300]) < 200


def test_geometry_and_slice_order_match_each_file_read_alone(sample):
    hu = np.asanyarray(sample.dataobj)
    for path in SERIES:
        pixels, position = single_slice(path)
        k = int(np.rint(np.linalg.solve(sample.affine[:3, :3], position - sample.affine[:3, 3])[2]))
        assert np.allclose(sample.affine @ [0, 0, k, 1], [*position, 1], atol=1e-3), path.name
        assert np.array_equal(hu[:, :, k], pixels), path.name
    # the names sort against the positions: IM0001 is the top slice
    assert single_slice(SERIES[0])[1][2] > single_slice(SERIES[-1])[1][2]


def test_shuffled_and_renamed_files_give_the_same_volume(sample, tmp_path):
    rng = np.random.default_rng(0)
    names = [f"{rng.integers(1 << 30):x}" for _ in SERIES]  # no suffix: found by the DICM marker
    shuffled = copy_series(tmp_path / "shuffled", [SERIES[k] for k in rng.permutation(len(SERIES))], names)
    assert all(looks_like_dicom(p) for p in shuffled.iterdir())
    (scan,) = find_scans(shuffled)
    assert scan == Scan("shuffled", shuffled, "dicom", "")
    image, volume = read_scan(scan)
    assert np.array_equal(image.affine, sample.affine)
    assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(sample.dataobj))
    assert volume.data.shape == (512, 512, 20) and volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))


def test_affine_agrees_with_simpleitks_own_nifti_writer(tmp_path):
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4))  # (z, y, x)
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection([c, -s, 0, s, c, 0, 0, 0, -1])  # oblique in-plane, slices running inferiorly
    image.SetSpacing([0.7, 0.8, 2.5])
    image.SetOrigin([12.0, -30.0, 100.0])
    sitk.WriteImage(image, str(tmp_path / "written.nii.gz"))
    reference = nib.load(tmp_path / "written.nii.gz")
    ours = sitk_to_nifti(image)
    assert np.allclose(ours.affine, reference.affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(reference.dataobj))


def test_rescale_slope_and_intercept_of_each_file_are_applied(sample, tmp_path):
    folder = tmp_path / "rescaled"
    folder.mkdir()
    for k, path in enumerate(SERIES[:4]):
        slope, intercept = (2, -500) if k % 2 else (1, -1024)
        rewrite(path, folder / path.name, {"0028|1052": str(intercept), "0028|1053": str(slope)}, f"1.{k}")
    hu = np.asanyarray(read_dicom_series(folder, "").dataobj)
    top = np.asanyarray(sample.dataobj)[:, :, -4:]  # IM0001..IM0004: the top four slices
    assert np.abs(hu.astype(np.int64) - top).max() <= 1  # slope 2 stores HU to the nearest 2


def test_two_series_in_one_folder_are_told_apart_by_series_uid(sample, tmp_path):
    folder = copy_series(tmp_path / "two")
    uid = "1.2.826.0.1.3680043.8.498.77"
    for k, path in enumerate(SERIES[:3]):
        rewrite(path, folder / f"other_{k}.dcm", {"0020|000e": uid}, f"2.{k}")
    scans = find_scans(tmp_path)
    assert [(s.name, s.series_uid) for s in scans] == [(f"two/{uid}", uid), ("two/no_series_uid", "")]
    assert read_scan(scans[1])[0].shape == (512, 512, 20)
    other = read_scan(scans[0])[0]  # IM0001..IM0003: the top three slices of the sample
    assert other.shape == (512, 512, 3)
    assert np.allclose(other.affine[:3, :3], sample.affine[:3, :3])
    assert np.allclose(other.affine[:, 3], sample.affine @ [0, 0, 17, 1])
    assert np.array_equal(np.asanyarray(other.dataobj), np.asanyarray(sample.dataobj)[:, :, 17:])


def test_a_corrupt_or_truncated_file_in_a_series_is_named(tmp_path):
    junk = copy_series(tmp_path / "junk")
    (junk / "IM0007.dcm").write_bytes(b"not a DICOM file at all")
    with pytest.raises(UnreadableScan, match=r"junk/IM0007.dcm is not a readable DICOM image"):
        read_scan(find_scans(junk)[0])
    truncated = copy_series(tmp_path / "truncated")
    (truncated / "IM0012.dcm").write_bytes(SERIES[11].read_bytes()[:1000])
    with pytest.raises(UnreadableScan, match=r"truncated/IM0012.dcm is not a readable DICOM image"):
        read_scan(find_scans(truncated)[0])
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "a.dcm").write_bytes(b"junk")
    (scan,) = find_scans(nothing)
    assert scan.series_uid is None
    with pytest.raises(UnreadableScan, match=r"no readable DICOM series in .*nothing: GDCM cannot parse .*a.dcm"):
        read_scan(scan)


def test_mixed_series_and_missing_slices_are_refused(tmp_path):
    mixed = copy_series(tmp_path / "mixed")
    copy_series(mixed, names=[f"copy_{p.name}" for p in SERIES])  # the same UID (empty) twice over
    with pytest.raises(UnreadableScan, match=r"mixed: 20 files lie at the slice position of another.*"
                                             r"two series mixed in one folder"):
        read_scan(find_scans(mixed)[0])
    gap = copy_series(tmp_path / "gap", SERIES[:9] + SERIES[10:])
    with pytest.raises(UnreadableScan, match=r"gap: slices unevenly spaced \(4 mm between .*2 mm elsewhere"):
        read_scan(find_scans(gap)[0])
    one = copy_series(tmp_path / "one", SERIES[:1])
    with pytest.raises(UnreadableScan, match="at least 2"):
        read_scan(find_scans(one)[0])


def test_a_series_of_another_modality_is_refused(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    for k, path in enumerate(SERIES[:2]):
        rewrite(path, folder / path.name, {"0008|0060": "MR"}, f"3.{k}")
    with pytest.raises(UnreadableScan, match="modality MR"):
        read_scan(find_scans(folder)[0])


def test_find_scans_names_nifti_files_and_dicom_folders(tmp_path):
    copy_series(tmp_path / "patient" / "ct", SERIES[:2])
    (tmp_path / "patient" / "ct" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # an index, not an image
    shutil.copy(SAMPLES / "abdomen_pelvis_3mm.nii.gz", tmp_path / "patient" / "scan.nii.gz")
    (tmp_path / "patient" / "segmentations").mkdir()
    shutil.copy(SAMPLES / "abdomen_pelvis_3mm.nii.gz", tmp_path / "patient" / "segmentations" / "liver.nii.gz")
    found = find_scans(tmp_path)
    assert [(s.name, s.kind, s.display) for s in found] == [
        ("patient/ct", "dicom", "patient/ct/"), ("patient/scan", "nifti", "patient/scan.nii.gz")]
    assert find_scans(tmp_path / "patient" / "ct")[0].name == "ct"  # the series folder itself
    assert find_scans(tmp_path, exclude=tmp_path / "patient" / "ct") == found[1:]
    with pytest.raises(ValueError, match="is not a .nii.gz file"):
        find_scans(tmp_path / "patient" / "ct" / SERIES[0].name)
    shutil.copy(SAMPLES / "abdomen_pelvis_3mm.nii.gz", tmp_path / "patient" / "ct.nii.gz")
    with pytest.raises(ValueError, match="share the output name 'patient/ct'"):
        find_scans(tmp_path)


def test_a_nifti_with_non_finite_voxels_is_unreadable(tmp_path):
    data = np.zeros((4, 4, 3), np.float32)
    data[1, 2, 0], data[0, 0, 2] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(UnreadableScan, match=r"bad.nii.gz holds 2 non-finite voxels"):
        read_scan(find_scans(tmp_path)[0])


def test_values_no_ct_scanner_writes_are_refused_naming_the_file(tmp_path):
    data = np.zeros((4, 4, 3), np.float64)
    data[1, 2, 0] = 1e303  # finite in float64, infinite once read as float32
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "huge.nii.gz")
    with pytest.raises(UnreadableScan, match=r"huge.nii.gz: 1 voxels lie outside \+-100000"):
        read_scan(find_scans(tmp_path)[0])


@pytest.mark.parametrize("tags, refusal", [
    ({"0008|0060": "OT", "0008|0016": "1.2.840.10008.5.1.4.1.1.7"}, "modality OT"),
    ({"0008|0060": "MR"}, "modality MR"),
    ({"0008|0016": "1.2.840.10008.5.1.4.1.1.7"}, "SOP class 1.2.840.10008.5.1.4.1.1.7 is not a CT image"),
    ({"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"}, "is not a CT slice"),
])
def test_a_file_that_is_not_a_ct_slice_among_a_series_is_named(tmp_path, tags, refusal):
    """Every file is checked, not only the first: one foreign file among CT slices."""
    folder = tmp_path / "series"
    for k, path in enumerate(SERIES):
        rewrite(path, folder / path.name, tags if k == 11 else {}, f"5.{k}")
    with pytest.raises(UnreadableScan, match=rf"series/{SERIES[11].name}: .*{refusal}"):
        read_scan(find_scans(folder)[0])


def test_interleaved_series_without_a_series_uid_are_refused(tmp_path):
    """Two series with an empty SeriesInstanceUID whose slices interleave: positions alone look
    like one evenly spaced stack, so the tags they differ in, or their origins, must tell."""
    kernels = tmp_path / "kernels"
    for k, path in enumerate(SERIES):
        rewrite(path, kernels / path.name, {"0018|1210": "B70f" if k % 2 else "B30f"}, f"6.{k}")
    with pytest.raises(UnreadableScan, match=r"kernels: ConvolutionKernel differs .*cannot be told apart"):
        read_scan(find_scans(kernels)[0])
    shifted = tmp_path / "shifted"
    for k, path in enumerate(SERIES):
        x, y, z = single_slice(path)[1] * [-1, -1, 1]  # back to LPS, as the tag stores it
        position = f"{x + (5.0 if k % 2 else 0.0):.4f}\\{y:.4f}\\{z:.4f}"
        rewrite(path, shifted / path.name, {"0020|0032": position}, f"7.{k}")
    with pytest.raises(UnreadableScan, match=r"shifted: the slice origin of .* mm off the line"):
        read_scan(find_scans(shifted)[0])
    for k, path in enumerate(SERIES):  # the same files rewritten unchanged are one series
        rewrite(path, tmp_path / "same" / path.name, {}, f"8.{k}")
    assert read_scan(find_scans(tmp_path / "same")[0])[0].shape == (512, 512, 20)


# --------------------------------------------------------------------------- kidney masks


@pytest.fixture(scope="module")
def subject():
    """The bundled TotalSegmentator-layout subject (30 slices) with its kidney masks."""
    (scan,) = find_scans(SAMPLES / "totalsegmentator")
    image, _ = read_scan(scan)
    segmentations = SAMPLES / "totalsegmentator" / "s0000" / "segmentations"
    kidney = np.zeros(image.shape, bool)
    for name in ("kidney_left", "kidney_right"):
        kidney |= np.asanyarray(nib.load(segmentations / f"{name}.nii.gz").dataobj) > 0
    return scan, image, kidney


def test_kidney_masks_are_found_in_the_places_totalsegmentator_writes_them(subject, tmp_path):
    scan, _, _ = subject
    layout = SAMPLES / "totalsegmentator"
    assert find_organ_masks(layout, scan, single=False) == layout / "s0000" / "segmentations"
    above = Scan("totalsegmentator/s0000/ct", scan.path, "nifti")  # --in and --organ-masks samples/real_ct
    assert find_organ_masks(SAMPLES, above, single=False) == layout / "s0000" / "segmentations"
    assert find_organ_masks(layout / "s0000" / "segmentations", scan, single=True) == \
        layout / "s0000" / "segmentations"
    mirrored = tmp_path / "s0000" / "ct"  # `TotalSegmentator -i s0000/ct.nii.gz -o masks/s0000/ct`
    mirrored.mkdir(parents=True)
    for name in ("kidney_left.nii.gz", "kidney_right.nii.gz"):
        shutil.copy(layout / "s0000" / "segmentations" / name, mirrored / name)
    assert find_organ_masks(tmp_path, scan, single=False) == mirrored
    with pytest.raises(UnreadableScan, match=r"no kidney masks for s0000/ct.nii.gz under .*looked for"):
        find_organ_masks(tmp_path / "s0000", scan, single=False)
    # a multilabel file named after the scan (never the scan itself)
    (tmp_path / "s0000" / "ct.nii.gz").write_bytes(b"")
    shutil.rmtree(mirrored)
    assert find_organ_masks(tmp_path, scan, single=False) == tmp_path / "s0000" / "ct.nii.gz"


def test_the_samples_kidney_masks_read_on_the_scans_grid(subject):
    scan, image, kidney = subject
    mask, what = read_kidney_mask(SAMPLES / "totalsegmentator" / "s0000" / "segmentations", image, scan)
    assert np.array_equal(mask, kidney) and "kidney_left.nii.gz + kidney_right.nii.gz" in what
    # the sample's README: 21 of its 30 slices have >= 32 kidney pixels
    assert int((kidney.sum(axis=(0, 1)) >= 32).sum()) == 21


def caret_table(labels: dict[int, str]) -> bytes:
    """A label table as TotalSegmentator's multilabel files carry it (nifti_ext_header.py)."""
    body = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in labels.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?> <CaretExtension><VolumeInformation Index="0">'
            f"<LabelTable>\n{body}</LabelTable></VolumeInformation></CaretExtension>\n").encode()


def test_a_multilabel_file_is_read_by_its_label_table_or_the_total_class_map(subject, tmp_path):
    scan, image, kidney = subject
    labels = np.zeros(image.shape, np.uint8)
    labels[kidney] = 7
    labels[:5] = 1  # spleen, say
    with_table = nib.Nifti1Image(labels, image.affine)
    with_table.header.extensions.append(nib.nifti1.Nifti1Extension(0, caret_table({1: "spleen", 7: "kidney_left"})))
    nib.save(with_table, tmp_path / "with_table.nii.gz")
    mask, what = read_kidney_mask(tmp_path / "with_table.nii.gz", image, scan)
    assert np.array_equal(mask, kidney & (labels == 7)) and "label table" in what

    labels[labels == 7] = 2  # TotalSegmentator's total task: 2 kidney_right, 3 kidney_left
    nib.save(nib.Nifti1Image(labels, image.affine), tmp_path / "no_table.nii.gz")
    mask, what = read_kidney_mask(tmp_path / "no_table.nii.gz", image, scan)
    assert np.array_equal(mask, labels == 2) and "total class map" in what

    no_kidney = nib.Nifti1Image(labels, image.affine)
    no_kidney.header.extensions.append(nib.nifti1.Nifti1Extension(0, caret_table({1: "spleen", 2: "liver"})))
    nib.save(no_kidney, tmp_path / "no_kidney.nii.gz")
    with pytest.raises(UnreadableScan, match="no_kidney.nii.gz: its label table names no kidney"):
        read_kidney_mask(tmp_path / "no_kidney.nii.gz", image, scan)


def test_a_mask_on_another_grid_is_refused_naming_it(subject, tmp_path):
    scan, image, kidney = subject
    folder = tmp_path / "seg"
    folder.mkdir()
    nib.save(nib.Nifti1Image(kidney.astype(np.uint8), image.affine), folder / "kidney_left.nii.gz")
    nib.save(nib.Nifti1Image(kidney[:, :, :20].astype(np.uint8), image.affine), folder / "kidney_right.nii.gz")
    with pytest.raises(UnreadableScan, match=r"organ mask .*kidney_right.nii.gz is not on the voxel grid .*shape"):
        read_kidney_mask(folder, image, scan)
    # the same grid stored in another axis order is the same grid: reoriented, accepted
    lps = nib.Nifti1Image(kidney.astype(np.uint8), image.affine)
    lps = lps.as_reoriented(nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                                            nib.orientations.axcodes2ornt(("L", "P", "S"))))
    nib.save(lps, folder / "kidney_right.nii.gz")
    assert np.array_equal(read_kidney_mask(folder, image, scan)[0], kidney)
