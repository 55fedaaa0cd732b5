"""coinlib.phantom: layouts, orientation, anatomy, HU ranges, determinism, idempotence.

Volumes are rendered at coarse spacing where only the layout matters, so the module
runs in well under a minute on two cores.
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from coinlib import phantom as P
from coinlib.files import read_json

COARSE = dict(spacing_mm=3.0, z_extent_mm=90.0)
KITS_COARSE = dict(inplane_mm=3.0, slice_mm=5.0, z_extent_mm=100.0)


@pytest.fixture(scope="module")
def subject() -> P.PhantomVolume:
    """One subject at 2 mm (default z extent), portal venous: enough resolution for anatomy and HU."""
    return P.render_totalsegmentator_subject(seed=0, index=1, spacing_mm=2.0, phases="portal_venous")


@pytest.fixture(scope="module")
def ts_dir(tmp_path_factory):
    return P.generate_totalsegmentator(tmp_path_factory.mktemp("ts"), 3, 0, **COARSE)


@pytest.fixture(scope="module")
def kits_dir(tmp_path_factory):
    return P.generate_kits23(tmp_path_factory.mktemp("kits"), 10, 0, **KITS_COARSE)


def _centroid_world(vol: P.PhantomVolume, *names: str) -> np.ndarray:
    mask = np.zeros(vol.owner.shape, bool)
    for name in names:
        mask |= vol.mask(name).astype(bool)
    assert mask.any(), names
    ijk = np.array(np.nonzero(mask), float).mean(1)
    return vol.affine[:3, :3] @ ijk + vol.affine[:3, 3]


def test_totalsegmentator_layout(ts_dir):
    for sid in ("s0000", "s0001", "s0002"):
        ct = nib.load(ts_dir / sid / "ct.nii.gz")
        assert ct.get_data_dtype() == np.int16
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        np.testing.assert_allclose(ct.header.get_zooms(), (3.0, 3.0, 3.0))
        for name in P.STRUCTURES:
            seg = nib.load(ts_dir / sid / "segmentations" / f"{name}.nii.gz")
            assert seg.shape == ct.shape and seg.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(seg.affine, ct.affine)
        liver = np.asanyarray(nib.load(ts_dir / sid / "segmentations" / "liver.nii.gz").dataobj)
        assert set(np.unique(liver)) == {0, 1}
    assert not list(ts_dir.rglob("*.tmp*")), "atomic writes leave no temporary files"


def test_meta_csv(ts_dir):
    text = (ts_dir / "meta.csv").read_text()
    assert text.splitlines()[0] == "image_id;age;gender;split"
    rows = list(csv.DictReader(text.splitlines(), delimiter=";"))
    assert [r["image_id"] for r in rows] == ["s0000", "s0001", "s0002"]
    assert all(r["split"] in {"train", "val", "test"} for r in rows)
    assert all(r["gender"] in {"m", "f"} and 18 <= int(r["age"]) <= 90 for r in rows)
    splits = [P._split(0, i) for i in range(40)]  # blocks of ten: exactly 80/10/10
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (32, 4, 4)


def test_rerun_reuses_complete_subjects_and_rebuilds_stale_ones(tmp_path):
    out = P.generate_totalsegmentator(tmp_path, 2, 0, **COARSE)
    ct = out / "s0000" / "ct.nii.gz"
    before = ct.stat().st_mtime_ns
    (out / "s0001" / "segmentations" / "liver.nii.gz").unlink()  # incomplete -> rebuilt
    P.generate_totalsegmentator(out, 2, 0, **COARSE)
    assert ct.stat().st_mtime_ns == before
    assert (out / "s0001" / "segmentations" / "liver.nii.gz").exists()
    with pytest.raises(ValueError, match="other settings"):  # another seed: not this dataset's
        P.generate_totalsegmentator(out, 2, 1, **COARSE)
    assert ct.stat().st_mtime_ns == before


def test_another_writers_temporary_listing_is_not_refused(tmp_path):
    # two `coin` processes on one run folder: one rewrites meta.csv atomically while the other checks
    out = P.generate_totalsegmentator(tmp_path, 1, 0, **COARSE)
    (out / ".meta.abcd1234.tmp.csv").write_text("image_id;age;gender;split\n")
    assert P.generate_totalsegmentator(out, 1, 0, **COARSE) == out
    (out / "notes.csv").write_text("mine")
    with pytest.raises(ValueError, match="notes.csv was not written by"):
        P.generate_totalsegmentator(out, 1, 0, **COARSE)


def test_an_older_generator_versions_subjects_are_rendered_again(tmp_path, monkeypatch):
    out = P.generate_totalsegmentator(tmp_path, 1, 0, **COARSE)
    ct = out / "s0000" / "ct.nii.gz"
    before = ct.stat().st_mtime_ns
    monkeypatch.setattr(P, "GENERATOR_VERSION", P.GENERATOR_VERSION + 1)
    P.generate_totalsegmentator(out, 1, 0, **COARSE)
    assert ct.stat().st_mtime_ns != before
    assert read_json(out / "s0000" / ".phantom.json")["generator_version"] == P.GENERATOR_VERSION
    assert sorted(p.name for p in out.iterdir()) == ["meta.csv", "s0000"]  # no temporary folders left


def test_deterministic_bytes_and_seed_dependence(tmp_path):
    a = P.generate_totalsegmentator(tmp_path / "a", 1, 7, **COARSE)
    b = P.generate_totalsegmentator(tmp_path / "b", 1, 7, **COARSE)
    for rel in ("s0000/ct.nii.gz", "s0000/segmentations/kidney_left.nii.gz"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    k1 = P.generate_kits23(tmp_path / "k1", 1, 7, **KITS_COARSE)
    k2 = P.generate_kits23(tmp_path / "k2", 1, 7, **KITS_COARSE)
    assert (k1 / "case_00000/imaging.nii.gz").read_bytes() == (k2 / "case_00000/imaging.nii.gz").read_bytes()
    v7 = P.render_totalsegmentator_subject(7, 0, **COARSE)
    v8 = P.render_totalsegmentator_subject(8, 0, **COARSE)
    assert v7.hu.shape != v8.hu.shape or not np.array_equal(v7.hu, v8.hu)


def test_anatomical_sides_and_levels(subject):
    """RAS+: +x is the patient's right, +y anterior, +z superior (world mm via the affine)."""
    c = {n: _centroid_world(subject, n) for n in (
        "liver", "spleen", "kidney_left", "kidney_right", "aorta", "inferior_vena_cava",
        "iliopsoas_left", "iliopsoas_right")}
    spine = _centroid_world(subject, *[f"vertebrae_{v}" for v in P.VERTEBRAE])
    x, y, z = 0, 1, 2
    assert c["liver"][x] > spine[x] + 30 and c["spleen"][x] < spine[x] - 30
    assert c["kidney_right"][x] > spine[x] + 40 and c["kidney_left"][x] < spine[x] - 40
    assert c["inferior_vena_cava"][x] > c["aorta"][x] and c["aorta"][x] < spine[x]
    assert c["aorta"][y] > spine[y] + 10  # aorta in front of the vertebral bodies
    for side in ("left", "right"):  # kidneys behind the great vessels, beside the spine
        assert c[f"kidney_{side}"][y] < c["aorta"][y] - 10
        assert abs(c[f"kidney_{side}"][y] - spine[y]) < 30
    assert c["iliopsoas_right"][x] > spine[x] > c["iliopsoas_left"][x]
    assert c["kidney_right"][z] < c["kidney_left"][z]  # the right kidney sits lower
    assert c["liver"][z] > c["kidney_right"][z] and c["spleen"][z] > c["kidney_left"][z]


def test_kidneys_span_many_slices(subject):
    for side in ("left", "right"):
        slices = np.nonzero(subject.mask(f"kidney_{side}").any(axis=(0, 1)))[0]
        assert len(slices) * subject.affine[2, 2] > 70  # ~10-12 cm kidneys, cut by the extent at most a little


def test_hu_ranges(subject):
    hu = subject.hu
    expected = {"liver": (90, 140), "spleen": (95, 145), "kidney_left": (125, 210),
                "kidney_right": (125, 210), "aorta": (140, 260), "inferior_vena_cava": (110, 200),
                "iliopsoas_left": (20, 70), "autochthon_right": (20, 70), "pancreas": (70, 125)}
    for name, (lo, hi) in expected.items():
        med = float(np.median(hu[subject.mask(name).astype(bool)]))
        assert lo <= med <= hi, (name, med)
    bone = np.median(hu[subject.mask("vertebrae_L1").astype(bool)])
    assert bone > 200
    assert np.median(hu[:8, :8, :]) < -900  # air in the corner
    # Noise: correlated, 10-20 HU-ish std at 1.5 mm (scaled to 2 mm here) in the liver interior.
    inner = subject.mask("liver").astype(bool)
    inner[1:-1] &= inner[:-2] & inner[2:]
    inner[:, 1:-1] &= inner[:, :-2] & inner[:, 2:]
    assert 6 < hu[inner].std() < 30
    lag = np.corrcoef(hu[:8, :, :].ravel()[:-1], hu[:8, :, :].ravel()[1:])[0, 1]
    assert lag > 0.2, "neighbouring voxels of CT noise are correlated"


def test_organ_hu_stats(ts_dir):
    stats = P.organ_hu_stats(ts_dir / "s0001")
    assert {"liver", "kidney_left", "kidney_right", "aorta"} <= set(stats)
    assert stats["aorta"]["median"] > stats["liver"]["median"] > stats["iliopsoas_left"]["median"]
    assert all(s["voxels"] > 0 and s["p5"] <= s["median"] <= s["p95"] for s in stats.values())


def test_kits_layout_and_orientation(kits_dir):
    case = kits_dir / "case_00001"
    img, seg = nib.load(case / "imaging.nii.gz"), nib.load(case / "segmentation.nii.gz")
    assert img.get_data_dtype() == np.float32 and seg.get_data_dtype() == np.uint8
    assert img.shape == seg.shape and np.allclose(img.affine, seg.affine)
    assert nib.aff2axcodes(img.affine)[0] in ("S", "I"), "axis 0 is axial"
    np.testing.assert_allclose(img.header.get_zooms(), (5.0, 3.0, 3.0))
    # The canonical (RAS) reorientation of the KiTS array is exactly the RAS rendering.
    canon = nib.as_closest_canonical(img)
    rng, rng_noise, rng_outline = P._rngs(0, 1, 1)
    anatomy = P._draw_anatomy(rng, KITS_COARSE["z_extent_mm"], P.draw_phase(0, 1, 1, P.KITS23_PHASES), rng_outline)
    lesions = P._draw_lesions(rng, anatomy, P._kits_kind(0, 1))
    vol = P._render(anatomy, (3.0, 3.0, 5.0), rng_noise, lesions)
    np.testing.assert_allclose(canon.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(canon.dataobj), np.rint(vol.hu))
    # Each axial slice (H, W) is a radiological view: the body is wider than deep.
    k = img.shape[0] // 2
    body = np.asanyarray(img.dataobj)[k] > -500
    rows, cols = np.nonzero(body)
    assert np.ptp(cols) > np.ptp(rows)
    assert not list(kits_dir.rglob("*.tmp*"))


def test_kits_case_mix_and_lesions(kits_dir):
    listing = read_json(kits_dir / "kits23.json")
    kinds = [c["kind"] for c in listing]
    assert (kinds.count("tumour"), kinds.count("cyst"), kinds.count("control")) == (6, 1, 3)
    assert {c["phase"] for c in listing} <= {"arterial", "nephrographic"}
    assert {les["subtype"] for c in listing for les in c["lesions"]} <= {*P.RCC_SUBTYPES, "cyst"}
    for case in listing:
        seg = np.asanyarray(nib.load(kits_dir / case["case_id"] / "segmentation.nii.gz").dataobj)
        hu = np.asanyarray(nib.load(kits_dir / case["case_id"] / "imaging.nii.gz").dataobj)
        labels = set(np.unique(seg))
        assert labels <= {0, 1, 2, 3} and 1 in labels
        if case["kind"] == "control":
            assert labels == {0, 1}
        if case["kind"] == "tumour":
            tumour, kidney = seg == 2, seg == 1
            assert tumour.any()
            near = kidney.copy()  # tumour touches the kidney (grown by one voxel)
            for ax in range(3):
                near |= np.roll(kidney, 1, ax) | np.roll(kidney, -1, ax)
            assert (tumour & near).any()
            assert np.median(hu[tumour]) < np.median(hu[kidney]) + 20  # not brighter than cortex
        if 3 in labels:
            assert np.median(hu[seg == 3]) < 50  # water density


def test_axial_view_convention():
    a = np.zeros((4, 3, 2))  # (X, Y, Z) RAS
    a[3, 2, 1] = 1  # most right, most anterior
    view = P.axial_view(a, 1)
    assert view.shape == (3, 4) and view[0, 0] == 1  # row 0 anterior, column 0 patient right


# ------------------------------------------------------------------ contrast phases


def test_parse_and_draw_phases():
    assert P.parse_phases("arterial") == {"arterial": 1.0}
    assert P.parse_phases("native:1,delayed:3") == {"native": 0.25, "delayed": 0.75}
    for bad in ("venous", "native:x", "native:-1", "native:0", "native:1,native:2"):
        with pytest.raises(ValueError, match="phase mix"):
            P.parse_phases(bad)
    draws = [P.draw_phase(0, 0, i, P.TOTALSEGMENTATOR_PHASES) for i in range(2000)]
    for phase, share in P.parse_phases(P.TOTALSEGMENTATOR_PHASES).items():
        assert abs(draws.count(phase) / 2000 - share) < 0.04, phase
    assert set(draws) == {"native", "arterial", "portal_venous", "delayed"}
    assert [P.draw_phase(0, 0, i, P.TOTALSEGMENTATOR_PHASES) for i in range(20)] == draws[:20]  # stable
    kits = [P.draw_phase(0, 1, i, P.KITS23_PHASES) for i in range(200)]
    assert set(kits) == {"arterial", "nephrographic"} and kits.count("arterial") > 130


def test_config_defaults_are_the_phantoms_mixes():
    from coinlib.config import PhantomConfig

    assert PhantomConfig().ts_phases == P.TOTALSEGMENTATOR_PHASES
    assert PhantomConfig().kits_phases == P.KITS23_PHASES


@pytest.fixture(scope="module")
def phase_subjects():
    return {ph: P.render_totalsegmentator_subject(0, 2, 3.0, 90.0, phases=ph) for ph in P.PHASES}


def test_phases_change_hu_not_anatomy(phase_subjects):
    owners = [v.owner for v in phase_subjects.values()]
    assert all(np.array_equal(owners[0], o) for o in owners[1:])
    assert [v.params["phase"] for v in phase_subjects.values()] == list(P.PHASES)
    med = {ph: {n: float(np.median(v.hu[v.mask(n).astype(bool)])) for n in ("aorta", "liver", "kidney_left")}
           for ph, v in phase_subjects.items()}
    for ph in P.PHASES:  # medians of the organs inside the cited range (+- partial volume and noise)
        ranges = P.phase_hu_ranges(ph)
        for organ, tissue in (("aorta", "artery"), ("liver", "liver")):
            lo, hi = ranges[tissue]
            assert lo - 25 <= med[ph][organ] <= hi + 15, (ph, organ, med[ph][organ])
    assert med["native"]["kidney_left"] < 50 and med["native"]["aorta"] < 60  # no contrast
    assert med["arterial"]["aorta"] > med["portal_venous"]["aorta"] > med["delayed"]["aorta"]
    assert med["portal_venous"]["liver"] > med["arterial"]["liver"] > med["native"]["liver"]


def test_contrast_draws_keep_renal_masses_realistic():
    rng = np.random.default_rng(0)
    for phase in P.PHASES[1:]:
        ranges = P.phase_hu_ranges(phase)
        for _ in range(200):
            hu, _ = P._draw_contrast(rng, phase)
            assert hu["rcc_clear"] <= hu["cortex"] - 15 and hu["rcc_clear_avid"] <= hu["cortex"] - 5
            assert hu["cyst"] <= 20 and hu["necrosis"] <= 35  # no enhancement in any phase
        # papillary enhances least, chromophobe in between (Kim et al. 2002; Young et al. 2013)
        mid = {t: np.mean(ranges[t]) for t in ("rcc_papillary", "rcc_chromophobe", "rcc_clear")}
        assert mid["rcc_papillary"] <= mid["rcc_chromophobe"] <= mid["rcc_clear"] + 5, phase
    cm = P.phase_hu_ranges("arterial")  # corticomedullary: cortex bright, medulla dark
    assert cm["cortex"][0] > cm["medulla"][1] - 15 and cm["rcc_clear"][1] < cm["cortex"][1]


# ---------------------------------------------------------------------- noise


def _flat_noise(spacing, shape, noise_hu=12.0):
    """Noise alone: every voxel air at 0 HU, no texture (the noise path of _to_hu)."""
    cv = type("Canvas", (), {})()
    cv.tissue = np.zeros(shape, np.uint8, order="F")
    A = {"hu": dict.fromkeys(P._TISSUES, 0.0), "texture_hu": dict.fromkeys(P._TISSUES, 0.0), "noise_hu": noise_hu}
    return P._to_hu(cv, A, spacing, np.random.default_rng(1))


def test_noise_scales_with_voxel_volume():
    from coinlib.prepare import resize_slices

    assert P.noise_std(12.0, P.NOISE_REFERENCE_MM) == pytest.approx(12.0)
    assert P.noise_std(12.0, (3.0, 3.0, 3.0)) < P.noise_std(12.0, (0.8, 0.8, 0.8))
    pooled = []
    for spacing, n in (((1.0, 1.0, 3.0), 192), ((1.25, 1.25, 3.0), 154), ((2.5, 2.5, 3.0), 77)):
        vol = _flat_noise(spacing, (n, n, 6))
        assert vol.std() == pytest.approx(P.noise_std(12.0, spacing), rel=0.03)
        pooled.append(resize_slices(np.moveaxis(vol, 2, 0), 48, "image").std())  # ~4 mm pixels
    # prepared to the same pixels, fine and coarse renderings carry the same noise (within 10 %)
    assert max(pooled) / min(pooled) < 1.1, pooled


# ---------------------------------------------------------------------- renal masses


def test_lesion_sizes_and_subtypes_follow_kits23():
    tumours, cysts = [], []
    for i in range(400):
        rng, _, rng_outline = P._rngs(0, 1, i)
        anatomy = P._draw_anatomy(rng, None, "arterial", rng_outline)
        for les in P._draw_lesions(rng, anatomy, P._kits_kind(0, i)):
            (tumours if les["kind"] == "tumour" else cysts).append(les)
    diameters = np.array([2 * t["radius"] for t in tumours])
    q1, med, q3 = np.percentile(diameters, [25, 50, 75])  # KiTS23: 25, 40, 61 mm
    assert 34 <= med <= 46 and 20 <= q1 <= 30 and 52 <= q3 <= 70
    assert diameters.min() >= 10 and diameters.max() <= 100
    shares = {s: np.mean([t["subtype"] == s for t in tumours]) for s in P.RCC_SUBTYPES}
    assert 0.7 < shares["clear_cell"] < 0.86 and 0.06 < shares["papillary"] < 0.19
    necrotic = np.array([t["necrosis"] > 0 for t in tumours])
    assert 0.12 < necrotic.mean() < 0.35  # KiTS23: 23 % with necrosis
    assert diameters[necrotic].mean() > diameters[~necrotic].mean()  # likelier when large
    assert all(10 <= 2 * c["radius"] <= 50 for c in cysts)


def test_pushed_keeps_volume():
    px, py, pz = (np.array([2.0, 0.0, 5.0], np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32))
    sx, _, _ = P._pushed(px, py, pz, [(np.zeros(3), 1.0)])
    np.testing.assert_allclose(sx, [7 ** (1 / 3), 0.0, 124 ** (1 / 3)], rtol=1e-5)


def test_kits23_lesion_notes_name_each_case_masses(tmp_path):
    from coinlib.files import write_json
    from coinlib.phantom import kits23_lesion_notes

    write_json(tmp_path / "case_00001" / ".phantom.json", {"lesions": [
        {"kind": "tumour", "subtype": "papillary", "diameter_mm": 78.7},
        {"kind": "cyst", "subtype": "cyst", "diameter_mm": 34.0}]})
    write_json(tmp_path / "case_00002" / ".phantom.json", {"lesions": []})
    (tmp_path / "case_00003").mkdir()  # a real scan: no phantom record
    assert kits23_lesion_notes(tmp_path) == {"case_00001": "papillary 79 mm, cyst 34 mm", "case_00002": ""}


# ---------------------------------------------------------------------- anatomy


def _rib_angles_at_the_hila(index: int) -> np.ndarray:
    """World angles (degrees; 0 the patient's right, 90 anterior) of the rib voxels in the
    slices between the two kidneys' centres (the levels of the hila) of subject ``index``:
    where its rendering differs from the same subject rendered without ribs."""
    rng, _, outline_rng = P._rngs(0, 0, index)
    anatomy = P._draw_anatomy(rng, None, P.draw_phase(0, 0, index, P.TOTALSEGMENTATOR_PHASES), outline_rng)
    with_ribs = P._render(anatomy, (2.0,) * 3, np.random.default_rng(1))
    without = P._render({**anatomy, "ribs": []}, (2.0,) * 3, np.random.default_rng(1))
    z = with_ribs.affine[2, 3] + 2.0 * np.arange(with_ribs.hu.shape[2])
    low, high = sorted(_centroid_world(with_ribs, name)[2] for name in ("kidney_right", "kidney_left"))
    levels = (z >= low) & (z <= high)
    rib = (np.abs(with_ribs.hu - without.hu) > 40)[:, :, levels]
    body = (with_ribs.hu > -500)[:, :, levels]
    x = with_ribs.affine[0, 3] + 2.0 * np.arange(rib.shape[0])
    y = with_ribs.affine[1, 3] + 2.0 * np.arange(rib.shape[1])
    angles = []
    for k in range(rib.shape[2]):
        i, j = np.nonzero(rib[:, :, k])
        bi, bj = np.nonzero(body[:, :, k])
        angles.append(np.degrees(np.arctan2(y[j] - y[bj].mean(), x[i] - x[bi].mean())) % 360)
    return np.concatenate(angles)


def test_no_rib_crosses_the_anterior_abdomen_at_the_renal_hila():
    """Costal cartilages rise from the lowest point of their rib to the costal margin, so at
    the hila ribs lie posteriorly and laterally, not in a ring around the whole wall (the
    generator before this rule drew cartilage across the front in three of these six)."""
    lateral = 0
    for index in range(6):
        angles = _rib_angles_at_the_hila(index)
        assert not np.any((angles > 55) & (angles < 125)), (index, np.sort(angles))
        lateral += np.sum((angles < 45) | (angles > 135))
    assert lateral > 0, "no rib at the hila in any subject"


def test_outlines_have_their_own_stream():
    """Organ outlines ripple per subject without moving any other draw of the subject."""
    rng_a, _, outline_a = P._rngs(0, 0, 3)
    rng_b, _, _ = P._rngs(0, 0, 3)
    a = P._draw_anatomy(rng_a, None, "portal_venous", outline_a)
    b = P._draw_anatomy(rng_b, None, "portal_venous", np.random.default_rng(99))
    assert a.keys() == b.keys()
    for key in a.keys() - {"outline"}:
        assert repr(a[key]) == repr(b[key]), key
    assert not np.allclose(a["outline"]["spleen"], b["outline"]["spleen"])
    assert not np.allclose(a["outline"]["kidney"][1], a["outline"]["kidney"][-1])
    np.testing.assert_allclose(P._ripple(np.float32(3), np.float32(4), np.float32(5), np.zeros((0, 5))), 1.0)
