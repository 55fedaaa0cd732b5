"""Tests for coinlib.prepare on small hand-built NIfTI datasets in both real layouts.

The volumes are written here (not by the phantom) so every expectation (slice counts,
orientation, percentiles) follows from how the arrays were built, not from the code under
test. TotalSegmentator: RAS, 1.5 mm, array (X, Y, Z). KiTS23: axial axis first, LPS in-plane
(negative x and y steps), 0.8 x 0.8 x 2.5 mm, some cases with the axial axis running
superior -> inferior.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from coinlib.config import DataConfig
from coinlib.files import read_json
from coinlib.prepare import (
    body_slices,
    compute_fingerprint,
    detect_layout,
    kidney_slice_indices,
    normalise_hu,
    prepare_dataset,
    resize_slices,
    sample_foreground,
    split_from_meta,
    split_scans,
    work_folder,
)
from coinlib.prepared import is_complete, open_prepared
from coinlib.volumes import load_canonical

SIZE = 32
CONFIG = DataConfig(image_size=SIZE)
BODY_HU, MARKER_HU = -100, 2000  # body is below every foreground HU, the marker far above


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


# --------------------------------------------------------------------------- TotalSegmentator

TS_SHAPE = (40, 36, 20)  # (X, Y, Z), RAS+: x to the patient's right, y anterior
TS_AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])
TS_MARKER = (slice(2, 6), slice(29, 34))  # small x = patient's left, large y = anterior


def make_totalsegmentator(root: Path, n_scans: int = 5, empty_scan: bool = True) -> dict:
    """Scans s0000.. with two 5 x 5(+) px kidney boxes offset in z (only their union
    reaches 32 px on some slices), a liver box, a bright left-anterior marker column;
    plus optionally s0099 with empty kidney masks. Returns the arrays per scan."""
    truth = {}
    rng = np.random.default_rng(123)
    ids = [f"s{i:04d}" for i in range(n_scans)] + (["s0099"] if empty_scan else [])
    for i, sid in enumerate(ids):
        ct = np.full(TS_SHAPE, BODY_HU, dtype=np.int16)
        right = np.zeros(TS_SHAPE, np.uint8)  # patient's right = large x
        left = np.zeros(TS_SHAPE, np.uint8)
        liver = np.zeros(TS_SHAPE, np.uint8)
        liver[24:36, 17:28, :] = 1
        if sid != "s0099":
            a = 2 + i
            right[26:31, 10 : 15 + i % 3, a : a + 8] = 1  # 25, 30 or 35 px per slice
            left[8:13, 10:15, a + 3 : a + 11] = 1  # 25 px per slice
        ct[liver > 0] = rng.integers(30, 90, size=int(liver.sum()))
        kid = (left | right) > 0
        ct[kid] = rng.integers(120, 220, size=int(kid.sum()))
        ct[TS_MARKER[0], TS_MARKER[1], :] = MARKER_HU
        for name, arr in (("kidney_left", left), ("kidney_right", right), ("liver", liver)):
            save(root / sid / "segmentations" / f"{name}.nii.gz", arr, TS_AFFINE)
        save(root / sid / "ct.nii.gz", ct, TS_AFFINE)
        truth[sid] = {"ct": ct, "kidney": kid, "foreground": kid | (liver > 0)}
    with open(root / "meta.csv", "w") as handle:
        handle.write("image_id;age;gender;split\n")
        for i, sid in enumerate(ids):
            handle.write(f"{sid};60;m;{['train', 'train', 'val', 'test'][i % 4]}\n")
    return truth


# --------------------------------------------------------------------------- KiTS23

KITS_SHAPE = (16, 30, 28)  # (axial, rows, cols) as stored
KITS_MARKER = (slice(1, 5), slice(22, 27))  # small axis-1 index = anterior, large axis-2 = left


def kits_affine(superior_first: bool) -> np.ndarray:
    """Axis 0 -> z (2.5 mm, +S or -S), axis 1 -> -y (posterior), axis 2 -> -x (left): LPS in-plane."""
    return np.array(
        [[0, 0, -0.8, 10.0], [0, -0.8, 0, 20.0], [2.5 if superior_first else -2.5, 0, 0, -30.0], [0, 0, 0, 1]]
    )


def make_kits(root: Path) -> dict:
    """10 cases: 0-3 controls (case 1 with a cyst), 4-9 tumours of growing size. Kidney:
    8 x 6 = 48 px on axial slices 3..11, 5 x 6 = 30 px (< 32) on slices 2 and 12."""
    truth = {}
    rng = np.random.default_rng(7)
    for c in range(10):
        cid = f"case_{c:05d}"
        seg = np.zeros(KITS_SHAPE, np.uint8)
        seg[3:12, 12:20, 4:10] = 1
        seg[2, 12:17, 4:10] = 1
        seg[12, 12:17, 4:10] = 1
        if c == 1:
            seg[6:8, 13:15, 5:7] = 3  # cyst: kidney, not lesion
        if c >= 4:
            t = c - 3  # tumour of t x t px on t + 1 slices, inside the kidney box
            seg[5 : 6 + t, 13 : 13 + t, 5 : 5 + t] = 2
        img = np.full(KITS_SHAPE, BODY_HU, dtype=np.float32)
        img[seg == 1] = rng.uniform(120, 220, size=int((seg == 1).sum()))
        img[seg == 2] = rng.uniform(40, 90, size=int((seg == 2).sum()))
        img[seg == 3] = 10.0
        img[:, KITS_MARKER[0], KITS_MARKER[1]] = MARKER_HU
        affine = kits_affine(superior_first=c % 3 != 2)
        save(root / cid / "imaging.nii.gz", img, affine)
        save(root / cid / "segmentation.nii.gz", seg, affine)
        truth[cid] = {"img": img, "seg": seg, "tumour_voxels": int((seg == 2).sum())}
    return truth


@pytest.fixture(scope="module")
def ts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    truth = make_totalsegmentator(root / "src")
    with pytest.warns(UserWarning, match="s0099"):
        prepare_dataset("totalsegmentator", root / "src", root / "out", CONFIG, progress=False)
    return root, truth


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits")
    truth = make_kits(root / "src")
    prepare_dataset("kits23", root / "src", root / "out", CONFIG, progress=False)
    return root, truth


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# --------------------------------------------------------------------------- pure functions


def test_load_canonical_kits_orientation_and_slice_index(tmp_path):
    """An axis-0-axial LPS file: RAS+ data, spacing per RAS axis, and the radiological slice
    equals the stored 2D array (axis 1 runs anterior->posterior, axis 2 right->left)."""
    for superior_first in (True, False):
        arr = np.arange(np.prod(KITS_SHAPE), dtype=np.float32).reshape(KITS_SHAPE)
        save(tmp_path / "v.nii.gz", arr, kits_affine(superior_first))
        vol = load_canonical(tmp_path / "v.nii.gz")
        assert vol.data.shape == (28, 30, 16)
        assert np.allclose(vol.spacing, (0.8, 0.8, 2.5))
        assert vol.axial_axis == 0 and vol.axial_flipped is (not superior_first)
        assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
        for k in (0, 5, 15):
            z = vol.original_slice_index(k)
            assert z == (k if superior_first else 15 - k)
            np.testing.assert_array_equal(vol.radiological([k])[0], arr[z])


def test_radiological_marker_quadrant_ras(tmp_path):
    """A left-anterior marker lands top-right in radiological view (row small, column large)."""
    vol = np.zeros(TS_SHAPE, np.int16)
    vol[TS_MARKER[0], TS_MARKER[1], :] = 1
    save(tmp_path / "ras.nii.gz", vol, TS_AFFINE)
    sl = load_canonical(tmp_path / "ras.nii.gz").radiological([4])[0]
    assert sl.shape == (36, 40)
    rows, cols = np.nonzero(sl)
    assert set(rows) == set(range(35 - 33, 35 - 29 + 1)) and set(cols) == set(range(39 - 5, 39 - 2 + 1))


def test_kidney_slice_indices_threshold():
    mask = np.zeros((10, 10, 4), bool)
    mask.reshape(-1, 4)[:31, 0] = True  # 31 px: dropped
    mask.reshape(-1, 4)[:32, 1] = True  # 32 px: kept
    mask.reshape(-1, 4)[:50, 3] = True
    idx, counts = kidney_slice_indices(mask, 32)
    assert idx.tolist() == [1, 3] and counts.tolist() == [32, 50]


def test_resize_slices_nonsquare():
    img = np.linspace(-1, 1, 2 * 30 * 20, dtype=np.float32).reshape(2, 30, 20)
    out = resize_slices(img, 16, "image")
    assert out.shape == (2, 16, 16) and out.min() >= -1 and out.max() <= 1
    mask = np.zeros((1, 30, 20), np.uint8)
    mask[0, :15, :10] = 1
    out = resize_slices(mask, 16, "mask")
    assert set(np.unique(out)) == {0, 1} and out[0, :8, :8].all() and not out[0, 8:, :].any()
    sq = img[:, :20, :]  # same size in and out: bilinear is the identity
    np.testing.assert_allclose(resize_slices(sq, 20, "image"), sq, atol=1e-6)


def _triangle_noise_ratio(factor: int) -> float:
    """std(white noise) / std(resized) for the anti-aliased bilinear (triangle) filter
    shrinking by an integer ``factor``: input centres at +-0.5, +-1.5, ... pixels from an
    output centre, weights 1 - |x| / factor, normalised; per axis the variance keeps sum(w^2)."""
    x = np.arange(0.5, factor, 1.0)
    w = np.tile(1 - x / factor, 2)  # both sides of the output centre
    w /= w.sum()
    return 1.0 / float((w ** 2).sum())  # two axes: std ratio = 1 / sum(w^2)


def test_resize_averages_noise():
    noise = np.random.default_rng(0).standard_normal((4, 256, 256)).astype(np.float32)
    for size, factor in ((128, 2), (64, 4)):
        ratio = noise.std() / resize_slices(noise, size, "image").std()
        assert ratio == pytest.approx(_triangle_noise_ratio(factor), rel=0.03)  # 3.2 and 6.1
        assert factor < ratio < 2 * factor  # noise averaged (plain bilinear keeps ratio ~1)


def test_resize_keeps_mask_area():
    """Area majority: a disc keeps its area within 2 % when it covers >= 100 output pixels and
    within 6 % at >= 20 output pixels (300 -> 128 px, off-grid centres)."""
    yy, xx = np.mgrid[:300, :300]
    for radius, tolerance in ((40, 0.02), (15, 0.02), (6, 0.06)):
        for cy, cx in ((150, 150), (101.3, 77.7), (200.5, 180.2), (60.1, 230.9)):
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2).astype(np.uint8)[None]
            out = resize_slices(disc, 128, "mask")
            expected = disc.sum() * (128 / 300) ** 2
            assert set(np.unique(out)) <= {0.0, 1.0}
            assert abs(out.sum() - expected) <= tolerance * expected, (radius, cy, cx)
    with pytest.raises(ValueError, match="0 and 1"):
        resize_slices(np.full((1, 4, 4), 2, np.uint8), 2, "mask")


def test_the_body_is_the_largest_region_above_air_with_its_holes_filled():
    hu = np.full((2, 40, 40), -1000.0)
    yy, xx = np.mgrid[:40, :40]
    body = ((yy - 18) / 14) ** 2 + ((xx - 20) / 18) ** 2 < 1
    hu[0][body] = -100.0  # fat on a soft-tissue window: as black as the air around it
    hu[0][(yy - 18) ** 2 + (xx - 20) ** 2 < 9] = -1000.0  # bowel gas inside
    hu[0][36:38, 2:38] = 200.0  # the table, apart from the patient
    found = body_slices(hu)
    np.testing.assert_array_equal(found[0], body)
    assert not found[1].any()  # a slice of air only has no body


def test_fingerprint_and_normalise_by_hand():
    fp = compute_fingerprint([np.array([0.0, 100.0]), np.array([50.0])], (0.0, 100.0))
    assert (fp["p_low"], fp["p_high"], fp["voxels"], fp["mean"]) == (0.0, 100.0, 3, 50.0)
    assert normalise_hu(np.array([-50.0, 0.0, 50.0, 100.0, 300.0]), 0.0, 100.0).tolist() == [-1, -1, 0, 1, 1]
    with pytest.raises(ValueError, match="degenerate"):
        compute_fingerprint([np.full(5, 7.0)], (0.5, 99.5))


def test_sample_foreground_capped_and_deterministic():
    hu = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    fg = hu % 2 == 0
    all_ = sample_foreground(hu, fg, 10_000, np.random.default_rng(0))
    assert np.array_equal(np.sort(all_), np.arange(0, 1000, 2))
    a = sample_foreground(hu, fg, 50, np.random.default_rng([0, 1]))
    b = sample_foreground(hu, fg, 50, np.random.default_rng([0, 1]))
    assert a.size == 50 and np.array_equal(a, b) and np.all(a % 2 == 0) and np.unique(a).size == 50


def test_split_scans_random_counts_and_determinism():
    ids = [f"s{i:04d}" for i in range(20)]
    split = split_scans(ids, 0.2, 0.1, seed=3)
    assert sorted(split) == ids
    assert [sum(v == s for v in split.values()) for s in ("train", "val", "test")] == [14, 2, 4]
    assert split == split_scans(list(reversed(ids)), 0.2, 0.1, seed=3)
    assert split != split_scans(ids, 0.2, 0.1, seed=4)
    assert sorted(split_scans(ids[:3], 0.2, 0.1, seed=0).values()) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="at least 3"):
        split_scans(ids[:2], 0.2, 0.1, seed=0)


def test_split_scans_stratified_by_tumour_volume():
    ids = [f"case_{i:05d}" for i in range(40)]
    volume = [0.0] * 20 + [float(v) for v in range(1, 21)]  # 20 controls, 20 tumours
    split = split_scans(ids, 0.2, 0.1, seed=0, tumour_ml=volume)
    assert split == split_scans(ids, 0.2, 0.1, seed=0, tumour_ml=volume)
    for s, n in (("train", 28), ("val", 4), ("test", 8)):
        members = [i for i in ids if split[i] == s]
        assert len(members) == n
        controls = sum(volume[ids.index(m)] == 0 for m in members)
        assert controls == n // 2  # controls and tumours in proportion
    small = [i for i in ids[20:30] if split[i] == "test"]
    large = [i for i in ids[30:] if split[i] == "test"]
    assert len(small) == len(large) == 2  # small and large tumours both reach test


def test_split_from_meta(tmp_path):
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id;split\ns0;train\ns1;test\ns2;bogus\n")
    assert split_from_meta(["s0", "s1"], meta) == {"s0": "train", "s1": "test"}
    with pytest.raises(ValueError, match=re.escape(str(meta))):
        split_from_meta(["s0", "s9"], meta)
    with pytest.raises(ValueError, match="bogus"):
        split_from_meta(["s2"], meta)
    with pytest.raises(FileNotFoundError, match="meta.csv"):
        split_from_meta(["s0"], tmp_path / "nope" / "meta.csv")


def test_detect_layout(tmp_path, ts, kits):
    assert detect_layout(ts[0] / "src") == "totalsegmentator"
    assert detect_layout(kits[0] / "src") == "kits23"
    (tmp_path / "x").mkdir()
    message = (
        "neither TotalSegmentator (sXXXX/ct.nii.gz + segmentations/) nor KiTS23 "
        f"(case_XXXXX/imaging.nii.gz + segmentation.nii.gz) layout: {tmp_path}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        detect_layout(tmp_path)


# --------------------------------------------------------------------------- end to end


def test_totalsegmentator_end_to_end(ts):
    root, truth = ts
    data = open_prepared(root / "out")
    expected = {
        sid: [z for z in range(TS_SHAPE[2]) if t["kidney"][:, :, z].sum() >= 32] for sid, t in truth.items()
    }
    assert expected["s0099"] == [] and all(expected[s] for s in expected if s != "s0099")
    got = {}
    for row in data.index:
        got.setdefault(row["scan_id"], []).append(row["slice_index"])
    assert got == {s: z for s, z in expected.items() if z}
    for i, row in enumerate(data.index):
        assert row["kidney_pixels"] == truth[row["scan_id"]]["kidney"][:, :, row["slice_index"]].sum()
        assert row["lesion_pixels"] == 0 and float(row["row_mm"]) == 1.5
    assert data.images.shape == (len(data.index), SIZE, SIZE)
    images = np.asarray(data.images, dtype=np.float32)
    assert images.min() >= -1 and images.max() <= 1
    assert set(np.unique(data.kidney_masks)) == {0, 1} and not np.asarray(data.lesion_masks).any()
    assert np.asarray(data.body_masks).all()  # these scans are body (-100 HU) to their edges
    # orientation: marker (patient's left-anterior) at row ~4, column ~29 of 32; mirrors are body (-1)
    assert np.all(images[:, 4, 29] == 1.0)
    assert np.all(images[:, 27, 29] == -1.0) and np.all(images[:, 4, 2] == -1.0)
    # split by scan, at least one scan per split, fingerprint on the training foreground only
    split = {r["scan_id"]: r["split"] for r in data.index}
    assert all(r["split"] == split[r["scan_id"]] for r in data.index)
    assert set(split.values()) == {"train", "val", "test"}
    train = sorted(s for s, v in split.items() if v == "train")
    assert data.fingerprint["train_scans"] == train
    pooled = np.concatenate([truth[s]["ct"][truth[s]["foreground"]].astype(np.float64) for s in train])
    np.testing.assert_allclose(
        [data.fingerprint["p_low"], data.fingerprint["p_high"]], np.percentile(pooled, [0.5, 99.5])
    )
    assert data.fingerprint["voxels"] == pooled.size
    m = data.manifest
    assert m["layout"] == "totalsegmentator" and m["src"] == str((root / "src").resolve())
    assert m["skipped"][0]["scan_id"] == "s0099" and m["image_size"] == SIZE
    sources = {row[0] for row in m["sources"]}
    assert "s0000/ct.nii.gz" in sources and "s0000/segmentations/liver.nii.gz" in sources
    assert all(len(row) == 4 and row[3].startswith("sha256:") for row in m["sources"])


def test_totalsegmentator_split_is_deterministic_and_meta(ts, tmp_path):
    root, _ = ts
    with pytest.warns(UserWarning):
        prepare_dataset("totalsegmentator", root / "src", tmp_path / "again", CONFIG, progress=False)
    assert (tmp_path / "again" / "index.csv").read_text() == (root / "out" / "index.csv").read_text()
    with pytest.warns(UserWarning):
        prepare_dataset(
            "totalsegmentator", root / "src", tmp_path / "meta", DataConfig(image_size=SIZE, split_source="meta"),
            progress=False,
        )
    meta = {r["image_id"]: r["split"] for r in csv.DictReader(open(root / "src" / "meta.csv"), delimiter=";")}
    assert all(r["split"] == meta[r["scan_id"]] for r in open_prepared(tmp_path / "meta").index)


def test_kits_end_to_end(kits):
    root, truth = kits
    data = open_prepared(root / "out")
    expected = {c: [z for z in range(KITS_SHAPE[0]) if (t["seg"][z] > 0).sum() >= 32] for c, t in truth.items()}
    assert all(v == list(range(3, 12)) for v in expected.values())  # slices 2, 12 have 30 px
    got = {}
    for row in data.index:
        got.setdefault(row["scan_id"], []).append(row["slice_index"])
    assert {c: sorted(v) for c, v in got.items()} == expected
    images = np.asarray(data.images, dtype=np.float32)
    for i, row in enumerate(data.index):
        seg = truth[row["scan_id"]]["seg"][row["slice_index"]]
        assert row["kidney_pixels"] == (seg > 0).sum()
        assert row["lesion_pixels"] == (seg == 2).sum()
        assert int(row["label"]) == int((seg == 2).any()) == int(data.lesion_masks[i].any())
        assert int(row["cyst_pixels"]) == (seg == 3).sum()
        assert (float(row["row_mm"]), float(row["col_mm"]), float(row["slice_mm"])) == (0.8, 0.8, 2.5)
        # native seg slice IS the radiological view for this affine: compare resized masks
        expected_kidney = resize_slices((seg > 0)[None].astype(np.uint8), SIZE, "mask")[0]
        np.testing.assert_array_equal(data.kidney_masks[i], expected_kidney)
    assert images.min() >= -1 and images.max() <= 1 and set(np.unique(data.lesion_masks)) == {0, 1}
    # marker: anterior (axis-1 index 1..4 of 30) and patient's left (axis-2 index 22..26 of 28)
    assert np.all(images[:, 3, 28] == 1.0)
    assert np.all(images[:, 28, 28] == -1.0) and np.all(images[:, 3, 3] == -1.0)
    # cysts are not lesions; stratified split puts controls and tumours in train
    assert not any(r["lesion_pixels"] for r in data.index if r["scan_id"] == "case_00001")
    split = {r["scan_id"]: r["split"] for r in data.index}
    assert set(split.values()) == {"train", "val", "test"}
    train = [c for c, s in split.items() if s == "train"]
    assert any(truth[c]["tumour_voxels"] == 0 for c in train) and any(truth[c]["tumour_voxels"] for c in train)
    assert data.manifest["split"]["stratified_by"] == "tumour_ml"
    pooled = np.concatenate([truth[c]["img"][truth[c]["seg"] > 0].astype(np.float64) for c in sorted(train)])
    np.testing.assert_allclose(
        [data.fingerprint["p_low"], data.fingerprint["p_high"]], np.percentile(pooled, [0.5, 99.5]), rtol=1e-6
    )


# --------------------------------------------------------------------------- idempotency


def test_reuse_stale_and_force(tmp_path, caplog):
    src, out = tmp_path / "src", tmp_path / "out"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    caplog.set_level(logging.INFO, logger="coinlib.prepare")
    prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    before = mtimes(out)
    prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    assert mtimes(out) == before and "reusing" in caplog.text

    caplog.clear()
    ct = src / "s0001" / "ct.nii.gz"
    os.utime(ct, ns=(ct.stat().st_atime_ns, ct.stat().st_mtime_ns + 10**9))  # touched (or copied): same content
    prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    assert "reusing" in caplog.text
    arrays = {name: time for name, time in mtimes(out).items() if name != "manifest.json"}
    assert arrays == {name: time for name, time in before.items() if name != "manifest.json"}
    recorded = {row[0]: row for row in read_json(out / "manifest.json")["sources"]}
    assert recorded["s0001/ct.nii.gz"][2] == ct.stat().st_mtime_ns  # the new time recorded: next check is quick

    caplog.clear()
    image = nib.load(ct)
    changed = np.asarray(image.dataobj).copy()
    changed[0, 0, 0] += 1  # one voxel: the same size on disk or not, other content
    nib.save(nib.Nifti1Image(changed, image.affine, image.header), ct)
    prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    assert "source files changed" in caplog.text and "s0001/ct.nii.gz" in caplog.text
    assert mtimes(out)["manifest.json"] != before["manifest.json"] and is_complete(out)

    for action, config, message in (
        ("settings", DataConfig(image_size=16), "settings changed (data.image_size: 32 -> 16)"),
        ("force", DataConfig(image_size=16), "force=True"),
    ):
        caplog.clear()
        prepare_dataset("totalsegmentator", src, out, config, force=action == "force", progress=False)
        assert message in caplog.text and open_prepared(out).image_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp folders left
    # without its manifest the folder is no longer provably ours: refused, nothing deleted
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json of ours"):
        prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    assert (out / "images.npy").is_file()


# --------------------------------------------------------------------------- bad inputs


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bad_shape(path: Path) -> Path:
    save(path, np.zeros((40, 36, 19), np.uint8), TS_AFFINE)
    return path


def _bad_affine(path: Path) -> Path:
    save(path, np.asarray(nib.load(path).dataobj), np.diag([1.5, 1.5, 3.0, 1.0]))
    return path


def _four_d(path: Path) -> Path:
    save(path, np.zeros((40, 36, 20, 2), np.int16), TS_AFFINE)
    return path


def _missing(path: Path) -> Path:
    path.unlink()
    return path


BAD_INPUTS = {
    "missing kidney_right": ("s0001/segmentations/kidney_right.nii.gz", _missing, FileNotFoundError),
    "shape mismatch": ("s0001/segmentations/kidney_left.nii.gz", _bad_shape, ValueError),
    "affine mismatch": ("s0002/segmentations/kidney_right.nii.gz", _bad_affine, ValueError),
    "4D image": ("s0000/ct.nii.gz", _four_d, ValueError),
    "truncated image": ("s0002/ct.nii.gz", _truncate, ValueError),
    "truncated mask": ("s0000/segmentations/kidney_left.nii.gz", _truncate, ValueError),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("old_folder", [False, True])
def test_bad_input_names_file_and_writes_nothing(tmp_path, case, old_folder):
    src, out = tmp_path / "src", tmp_path / "out"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    if old_folder:
        prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
        before = mtimes(out)
    rel, corrupt, error = BAD_INPUTS[case]
    path = corrupt(src / rel)
    with pytest.raises(error, match=re.escape(str(path))) as info:
        prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    if case in ("shape mismatch", "affine mismatch"):
        assert str(src / rel.split("/")[0] / "ct.nii.gz") in str(info.value)  # names both files
    if old_folder:
        assert mtimes(out) == before and is_complete(out)
    # beside them at most the hidden resume folder: what the scans read before the bad one gave
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".out.partial")
    assert left == (["out", "src"] if old_folder else ["src"])
    assert not list(work_folder(out).glob("images-*/*.npz"))  # no slice of the new data was made


def test_the_output_is_the_same_for_any_number_of_workers(tmp_path):
    src = tmp_path / "src"
    make_kits(src)
    one = prepare_dataset("kits23", src, tmp_path / "one", CONFIG, progress=False, workers=1)
    two = prepare_dataset("kits23", src, tmp_path / "two", CONFIG, progress=False, workers=2)
    assert open_prepared(one).content_id == open_prepared(two).content_id
    assert not work_folder(one).exists() and not work_folder(two).exists()  # removed once done


def test_a_killed_preparation_resumes_at_the_scan_it_was_on(tmp_path, monkeypatch):
    import coinlib.prepare as prepare

    src = tmp_path / "src"
    make_kits(src)
    whole = open_prepared(prepare_dataset("kits23", src, tmp_path / "whole", CONFIG, progress=False, workers=1))
    read, real_step = [], prepare._image_step

    def dies_at_the_third(path, *args):
        if len(read) == 2:
            raise KeyboardInterrupt  # as a kill would stop it, mid-dataset
        read.append(path)
        return real_step(path, *args)

    monkeypatch.setattr(prepare, "_image_step", dies_at_the_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("kits23", src, out, CONFIG, progress=False, workers=1)
    assert not out.exists() and len(read) == 2
    monkeypatch.setattr(prepare, "_image_step", lambda path, *args: read.append(path) or real_step(path, *args))
    resumed = open_prepared(prepare_dataset("kits23", src, out, CONFIG, progress=False, workers=1))
    scans = len(whole.manifest["scans"])
    assert len(read) == scans and len(set(read)) == scans  # each scan's images made once, over the two runs
    assert resumed.content_id == whole.content_id


def test_a_fixed_file_is_read_again_and_the_other_scans_are_not(tmp_path, monkeypatch):
    import coinlib.prepare as prepare

    src, out = tmp_path / "src", tmp_path / "out"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    good = (src / "s0002" / "ct.nii.gz").read_bytes()
    _truncate(src / "s0002" / "ct.nii.gz")
    with pytest.raises(ValueError, match="s0002"):
        prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False, workers=1)
    (src / "s0002" / "ct.nii.gz").write_bytes(good)
    read, real_step = [], prepare._masks_step
    monkeypatch.setattr(prepare, "_masks_step", lambda layout, scan, config: read.append(scan.scan_id)
                        or real_step(layout, scan, config))
    prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False, workers=1)
    assert read == ["s0002"] and is_complete(out)


def test_dataset_level_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        prepare_dataset("kits23", empty, tmp_path / "o1", CONFIG, progress=False)
    # no kept slice anywhere: every kidney below 32 px per slice
    src = tmp_path / "small"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    with pytest.raises(ValueError, match=re.escape(str(src.resolve()))), pytest.warns(UserWarning):
        prepare_dataset("totalsegmentator", src, tmp_path / "o2", DataConfig(image_size=SIZE, min_kidney_pixels=99),
                        progress=False)
    # only 2 usable scans
    two = tmp_path / "two"
    make_totalsegmentator(two, n_scans=2, empty_scan=True)
    with pytest.raises(ValueError, match="at least 3"), pytest.warns(UserWarning):
        prepare_dataset("totalsegmentator", two, tmp_path / "o3", CONFIG, progress=False)
    # meta split: missing meta.csv; KiTS label outside {0..3}
    (src / "meta.csv").unlink()
    with pytest.raises(FileNotFoundError, match="meta.csv"):
        prepare_dataset("totalsegmentator", src, tmp_path / "o4", DataConfig(image_size=SIZE, split_source="meta"),
                        progress=False)
    kits = tmp_path / "kits"
    make_kits(kits)
    seg = kits / "case_00003" / "segmentation.nii.gz"
    bad = np.asarray(nib.load(seg).dataobj).copy()
    bad[0, 0, 0] = 5
    save(seg, bad, kits_affine(True))
    with pytest.raises(ValueError, match=re.escape(str(seg))):
        prepare_dataset("kits23", kits, tmp_path / "o5", CONFIG, progress=False)
    # no output; at most the hidden resume folders of what was read
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".partial")) == ["empty", "kits", "small",
                                                                                              "two"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        prepare_dataset("totalsegmentator", src, out, CONFIG, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_kidney_area_rule_counts_mm2_not_pixels():
    mask = np.zeros((10, 10, 3), bool)
    mask.reshape(-1, 3)[:40, 0] = True  # 40 px x 1.5 mm^2 = 60 mm^2: not more than 61
    mask.reshape(-1, 3)[:41, 1] = True  # 61.5 mm^2: kept
    mask.reshape(-1, 3)[:20, 2] = True
    idx, counts = kidney_slice_indices(mask, 32, min_area_mm2=61.0, pixel_area_mm2=1.5)
    assert idx.tolist() == [1] and counts.tolist() == [41]


def test_the_authors_tumour_protocol_prepares_kits(kits, ts, tmp_path):
    """TumourProtocol on KiTS: kidney slices by native area, fingerprint over tumour voxels only,
    and the label rule recorded for the datasets (coinlib.data)."""
    import dataclasses

    from coinlib.data import SliceDataset

    root, truth = kits
    config = dataclasses.replace(CONFIG, min_kidney_area_mm2=31.0, min_lesion_area_mm2=10.0,
                                 fingerprint_foreground="lesion")  # 48 px x 0.64 mm^2 = 30.7 mm^2 < 31
    with pytest.warns(UserWarning, match="mm\\^2 of kidney"), pytest.raises(ValueError, match="kidney slices"):
        prepare_dataset("kits23", root / "src", tmp_path / "none", config, progress=False)
    config = dataclasses.replace(config, min_kidney_area_mm2=19.5)  # the 48-px slices, not the 30-px ones
    data = open_prepared(prepare_dataset("kits23", root / "src", tmp_path / "out", config, progress=False))
    assert sorted({row["slice_index"] for row in data.index}) == list(range(3, 12))
    train = sorted({r["scan_id"] for r in data.index if r["split"] == "train"})
    pooled = np.concatenate([truth[c]["img"][truth[c]["seg"] == 2].astype(np.float64) for c in train])
    np.testing.assert_allclose([data.fingerprint["p_low"], data.fingerprint["p_high"]],
                               np.percentile(pooled, [0.5, 99.5]), rtol=1e-6)
    dataset = SliceDataset(data, "train", None, fresh_anomalies=False)
    assert dataset.min_lesion_area_mm2 == 10.0
    labels = dataset.labels()
    areas = np.array([int(data.index[r]["lesion_pixels"]) * 0.64 for r in dataset.rows])
    assert labels.tolist() == (areas > 10.0).astype(int).tolist() and 0 < labels.sum() < (areas > 0).sum()
    with pytest.warns(UserWarning, match="s0099"), pytest.raises(ValueError, match="lesion labels"):
        prepare_dataset("totalsegmentator", ts[0] / "src", tmp_path / "ts", config, progress=False)


def test_coin_prepare_takes_the_number_of_workers(tmp_path, capsys):
    from coinlib.cli import main

    src = tmp_path / "src"
    make_totalsegmentator(src, n_scans=3, empty_scan=False)
    args = ["prepare", "--layout", "totalsegmentator", "--src", str(src), "--image-size", str(SIZE)]
    assert main([*args, "--out", str(tmp_path / "out"), "--workers", "1"]) == 0 and is_complete(tmp_path / "out")
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "other"), "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
