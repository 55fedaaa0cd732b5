"""Tests for coinlib.data: datasets over a small synthetic prepared folder."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from skimage.draw import disk, ellipse

from coinlib.config import AnomalyConfig
from coinlib.data import SliceDataset, make_loader
from coinlib.prepared import write_prepared

SIZE = 64
ANOMALY = AnomalyConfig()
TINY = {(0, 2), (3, 5)}  # (scan, slice) pairs whose kidney is too small for an anomaly
SPLITS = ["train", "train", "train", "val", "test"]  # one entry per scan


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """5 scans x 6 slices at 64 px: two kidneys (tiny on TINY), tumours on odd slices."""
    rng = np.random.default_rng(0)
    images, kidney_masks, lesion_masks, rows = [], [], [], []
    for scan, split in enumerate(SPLITS):
        for z in range(6):
            image = rng.uniform(-1.0, 0.6, (SIZE, SIZE)).astype(np.float32)
            kidney = np.zeros((SIZE, SIZE), np.uint8)
            lesion = np.zeros((SIZE, SIZE), np.uint8)
            if (scan, z) in TINY:
                kidney[30:34, 20:24] = 1
            else:
                kidney[ellipse(34, 20, 9 + z % 3, 6, shape=kidney.shape)] = 1
                kidney[ellipse(34, 44, 8, 5 + z % 2, shape=kidney.shape)] = 1
                if z % 2:
                    lesion[disk((34, 20), 2 + z % 3, shape=lesion.shape)] = 1
            images.append(image)
            kidney_masks.append(kidney)
            lesion_masks.append(lesion)
            rows.append({
                "scan_id": f"s{scan:04d}", "slice_index": z, "split": split,
                "kidney_pixels": int(kidney.sum()),
                # scan 1, slice 2: a tumour counted at native resolution that vanished on resize
                "lesion_pixels": int(lesion.sum()) or int((scan, z) == (1, 2)),
            })
    return write_prepared(
        tmp_path_factory.mktemp("prepared"), np.stack(images), np.stack(kidney_masks),
        np.stack(lesion_masks), np.ones_like(np.stack(kidney_masks)), rows, fingerprint={}, manifest={"source": "test"},
    )


def check_item(item, dataset):
    assert set(item) == {"image", "label", "kidney_mask", "lesion_mask", "body_mask", "index"}
    for key in ("image", "kidney_mask", "lesion_mask", "body_mask"):
        assert item[key].shape == (1, SIZE, SIZE) and item[key].dtype == torch.float32
    assert item["label"].shape == () and item["label"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    for key in ("kidney_mask", "lesion_mask"):
        assert set(item[key].unique().tolist()) <= {0.0, 1.0}
    assert item["label"].item() == float(item["lesion_mask"].any())  # label 1 iff mask non-empty
    assert isinstance(item["index"], int)
    assert dataset.prepared.index[item["index"]]["split"] == dataset.split


@pytest.mark.parametrize("anomaly", [ANOMALY, None], ids=["synthetic", "tumour"])
@pytest.mark.parametrize("split, fresh", [("train", True), ("test", False)])
def test_items_shapes_ranges_and_labels(prepared_dir, anomaly, split, fresh):
    dataset = SliceDataset(prepared_dir, split, anomaly, fresh_anomalies=fresh, seed=0)
    assert len(dataset) == 6 * SPLITS.count(split)
    items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        check_item(item, dataset)
    labels = [item["label"].item() for item in items]
    assert 0 < sum(labels) < len(labels)
    assert dataset.labels().tolist() == labels


def test_synthetic_images_change_only_with_an_anomaly(prepared_dir):
    dataset = SliceDataset(prepared_dir, "train", ANOMALY, fresh_anomalies=True)
    for i in range(len(dataset)):
        item = dataset[i]
        original = torch.from_numpy(dataset.prepared.images[item["index"]].astype(np.float32))[None]
        changed = item["image"] != original
        assert changed.any() == bool(item["label"])
        assert torch.all(item["image"][item["lesion_mask"] > 0] > original[item["lesion_mask"] > 0])


def test_tumour_label_uses_the_mask_at_prepared_resolution(prepared_dir):
    dataset = SliceDataset(prepared_dir, "train", None, fresh_anomalies=False)
    position = next(i for i, row in enumerate(dataset.rows)
                    if dataset.prepared.index[row]["scan_id"] == "s0001"
                    and dataset.prepared.index[row]["slice_index"] == 2)
    item = dataset[position]
    assert dataset.prepared.index[item["index"]]["lesion_pixels"] == 1
    assert item["label"].item() == 0.0 and item["lesion_mask"].sum() == 0
    assert torch.equal(item["lesion_mask"][0], torch.from_numpy(
        dataset.prepared.lesion_masks[item["index"]].astype(np.float32)))


def test_eval_draws_are_fixed_across_instances_reads_and_order(prepared_dir):
    first = SliceDataset(prepared_dir, "test", ANOMALY, fresh_anomalies=False, seed=3)
    second = SliceDataset(prepared_dir, "test", ANOMALY, fresh_anomalies=False, seed=3)
    second.rows = second.rows[::-1].copy()  # a split listed in another order
    second.set_epoch(5)  # epochs do not touch fixed draws
    by_row = {second[i]["index"]: second[i] for i in range(len(second))}
    for i in range(len(first)):
        a, b = first[i], first[i]
        c = by_row[a["index"]]
        for key in ("image", "label", "lesion_mask"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    other_seed = SliceDataset(prepared_dir, "test", ANOMALY, fresh_anomalies=False, seed=4)
    assert any(not torch.equal(first[i]["image"], other_seed[i]["image"]) for i in range(6))


def test_training_draws_change_with_epoch_and_replay(prepared_dir):
    def epoch_images(epoch, seed=0):
        dataset = SliceDataset(prepared_dir, "train", ANOMALY, fresh_anomalies=True, seed=seed)
        dataset.set_epoch(epoch)
        return torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    assert torch.equal(epoch_images(1), epoch_images(1))
    assert not torch.equal(epoch_images(1), epoch_images(2))
    assert not torch.equal(epoch_images(1), epoch_images(1, seed=1))


def test_loader_is_deterministic_and_workers_agree(prepared_dir):
    dataset = SliceDataset(prepared_dir, "train", ANOMALY, fresh_anomalies=True, seed=0)
    dataset.set_epoch(2)

    def run(seed, workers=0):
        loader = make_loader(dataset, batch_size=4, shuffle=True, seed=seed, num_workers=workers)
        batches = list(loader)
        return torch.cat([b["index"] for b in batches]), torch.cat([b["image"] for b in batches])

    order, images = run(seed=11)
    assert sorted(order.tolist()) == sorted(dataset.rows.tolist())
    same_order, same_images = run(seed=11, workers=2)  # forked workers draw the same anomalies
    assert torch.equal(order, same_order) and torch.equal(images, same_images)
    assert not torch.equal(order, run(seed=12)[0])
    dropped = make_loader(dataset, batch_size=4, shuffle=False, seed=0, drop_last=True)
    assert len(dropped) == len(dataset) // 4


def test_pickled_dataset_reopens_its_folder(prepared_dir):
    dataset = SliceDataset(prepared_dir, "val", ANOMALY, fresh_anomalies=False)
    payload = pickle.dumps(dataset)
    assert len(payload) < 20_000  # the memory maps are not copied into the pickle
    clone = pickle.loads(payload)
    assert torch.equal(clone[0]["image"], dataset[0]["image"])


def test_anomaly_report_counts_unplaceable_slices(prepared_dir, caplog):
    fixed = SliceDataset(prepared_dir, "val", ANOMALY, fresh_anomalies=False, seed=0)
    with caplog.at_level(logging.WARNING, logger="coinlib.data"):
        report = fixed.anomaly_report()
    assert report["mode"] == "fixed" and report["slices"] == 6
    assert report["never_placeable"] == 1  # scan 3, slice 5
    assert report["anomaly"] + report["normal"] + report["unplaceable"] == 6
    labels = fixed.labels()
    assert labels.sum() == report["anomaly"]
    assert "1 of 6 slices cannot host" in caplog.text
    sizes = fixed.anomaly_sizes()
    assert sizes.shape == (report["anomaly"],) and np.all(sizes > 0)

    # every (seed, slice) whose coin flip says "anomaly" on the tiny slice is reported
    tiny_row = next(int(r) for r in fixed.rows if fixed.prepared.index[r]["slice_index"] == 5)
    statuses = set()
    for seed in range(12):
        dataset = SliceDataset(prepared_dir, "val", ANOMALY, fresh_anomalies=False, seed=seed)
        status = dataset.draw(tiny_row)
        assert status[0] == 0 and status[1] is None
        statuses.add(status[2])
    assert statuses == {"normal", "unplaceable"}

    train = SliceDataset(prepared_dir, "train", ANOMALY, fresh_anomalies=True).anomaly_report()
    assert train["mode"] == "fresh" and train["never_placeable"] == 1  # scan 0, slice 2
    tumour = SliceDataset(prepared_dir, "test", None, fresh_anomalies=False).anomaly_report()
    assert tumour["mode"] == "tumour" and tumour["positive"] == 3 and tumour["negative"] == 3


def test_the_authors_label_rule_counts_the_native_tumour_area(prepared_dir):
    """TumourProtocol.min_lesion_area_mm2: abnormal only when the native tumour area exceeds it.

    The fixture has no pixel spacing, so an area is the pixel count; tumours cover 13-29 pixels."""
    everything = SliceDataset(prepared_dir, "train", None, fresh_anomalies=False)
    strict = SliceDataset(prepared_dir, "train", None, fresh_anomalies=False, min_lesion_area_mm2=20.0)
    areas = np.array([everything.lesion_area_mm2(int(row)) for row in everything.rows])
    with_mask = np.array([everything.prepared.lesion_masks[row].any() for row in everything.rows])
    assert everything.labels().tolist() == with_mask.astype(int).tolist()  # 0: the paper's rule
    assert strict.labels().tolist() == (with_mask & (areas > 20)).astype(int).tolist()
    assert 0 < strict.labels().sum() < everything.labels().sum()
    item = strict[int(np.flatnonzero(with_mask & (areas <= 20))[0])]
    assert item["label"].item() == 0.0 and item["lesion_mask"].sum() > 0  # a small tumour: labelled normal


def test_balanced_weights_need_fixed_labels(prepared_dir):
    from coinlib.data import balanced_weights

    tumour = SliceDataset(prepared_dir, "train", None, fresh_anomalies=True)
    weights = balanced_weights(tumour)
    labels = tumour.labels()
    assert weights[labels == 1].sum() == pytest.approx(weights[labels == 0].sum())
    with pytest.raises(ValueError, match="fixed labels"):
        balanced_weights(SliceDataset(prepared_dir, "train", ANOMALY, fresh_anomalies=True))
