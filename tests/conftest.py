"""Shared fixtures: a tiny prepared folder with kidney-like masks, made without the phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

from coinlib import runtime
from coinlib.prepared import write_prepared

# Tiny models on 2 cores run faster on one thread (thread hand-off costs more than it saves).
torch.set_num_threads(1)


def make_prepared(root, size: int = 32, scans: int = 6, slices: int = 8, seed: int = 0):
    """``scans`` x ``slices`` slices of ``size`` px: soft-tissue background with two kidneys.

    Splits by scan: the last scan is test, the one before it val, the rest train.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images, kidneys, rows = [], [], []
    for scan in range(scans):
        split = "test" if scan == scans - 1 else "val" if scan == scans - 2 else "train"
        for z in range(slices):
            kidney = np.zeros((size, size), np.uint8)
            r = size * (0.14 + 0.02 * (z % 3))
            kidney[ellipse(size * 0.55, size * 0.3, r, r * 0.7, shape=kidney.shape)] = 1
            kidney[ellipse(size * 0.55, size * 0.7, r, r * 0.7, shape=kidney.shape)] = 1
            image = -0.3 + 0.2 * np.sin(6 * xx + scan) * np.cos(5 * yy + z) + 0.4 * kidney
            image += rng.normal(0, 0.03, image.shape)
            images.append(np.clip(image, -1, 1).astype(np.float32))
            kidneys.append(kidney)
            rows.append({"scan_id": f"s{scan:04d}", "slice_index": z, "split": split,
                         "kidney_pixels": int(kidney.sum()), "lesion_pixels": 0})
    n = len(rows)
    body = (np.stack(images) > -0.9).astype(np.uint8)  # the synthetic slices' "body": all but their darkest pixels
    return write_prepared(root, np.stack(images), np.stack(kidneys), np.zeros((n, size, size), np.uint8), body,
                          rows, fingerprint={"p_low": -100.0, "p_high": 300.0}, manifest={"source": "conftest"})


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("tiny_prepared"))


@pytest.fixture
def fp32(monkeypatch):
    """Run a test in fp32 whatever the machine's native precision is (for float-tolerance
    comparisons of two computations that bf16 would round differently)."""
    monkeypatch.setattr(runtime, "_precision_choice", "fp32")
    monkeypatch.setenv("COIN_PRECISION", "fp32")


def write_fake_run(root, seeds=(0, 1, 2), iou=lambda track, method, seed: 0.5, cv=0.9, auc=0.99, slices=12,
                   profile="quick", overrides=None):
    """Per-seed results JSON files of every row of Tables 1-3 (tests of tables and report).

    Each abnormal test slice has TP + FP = 100 pixels and no FN; TP varies by -5, 0, +5 around
    100 * ``iou(track, method, seed)`` (``slices`` a multiple of 3), so the accumulated IoU is
    exactly that value; two consecutive slices share a scan. CV: ``round(10 * cv)`` of 10
    slices with f(x) > tau flip. ``run.json`` records ``profile`` with ``overrides`` (as ``--set``).
    """
    from coinlib.config import GANConfig, get_profile, to_dict
    from coinlib.files import write_json
    from coinlib.pipeline import RunPaths
    from coinlib.provenance import claim_run_folder
    from coinlib.variants import TABLE2_VARIANTS, TABLE3_VARIANTS, VARIANTS

    hardware = {"device": "cpu", "cpu": "Test CPU", "cpu_cores": 2, "threads": 1, "precision": "fp32",
                "torch": "2.x", "python": "3.11"}
    rows = list(range(3, 3 + 2 * slices, 2))
    scans = [f"case_{i // 2:05d}" for i in range(slices)]  # two abnormal slices per test scan

    def result(track, method, seed, steps):
        value = iou(track, method, seed)
        tp = [round(100 * value) + 5 * (i % 3 - 1) for i in range(slices)]
        metrics = {"iou": {"iou": sum(tp) / (100 * slices)}, "iou_best_on_test": value + 0.01,
                   "threshold_from_val": 0.2, "fid": None, "fid_note": "FID unavailable: no weights",
                   "classifier_fd": 3.0 + seed, "abnormal_test_slices": slices,
                   "per_slice": {"rows": rows, "scans": scans, "tp": tp, "fp": [100 - t for t in tp],
                                 "fn": [0] * slices}}
        out = {"profile": profile, "hardware": hardware, "git_commit": "abc123", "metrics": metrics,
               "config": {"gan": {**to_dict(GANConfig()), **VARIANTS[method].gan} if method in VARIANTS else {},
                          "train": {"steps": steps, "batch_size": 4}}}
        if method in VARIANTS:
            flipped = [1] * round(10 * cv) + [0] * (10 - round(10 * cv))
            metrics.update(cv=sum(flipped) / 10, per_slice_cv={"rows": rows[:10], "scans": scans[:10], "flipped": flipped})
        else:
            metrics["subset"] = {"test": slices, "val": slices, "max_images": None}
            out["cost"] = {"forward_passes": 250, "seconds_per_image": 0.5}
        return out

    for seed in seeds:
        paths = RunPaths(root, seed)
        for track in ("synthetic", "tumour"):
            for method in ("scorecam", "layercam", "rise", "gradcam", "singla", "coin"):
                write_json(paths.result(track, method), result(track, method, seed, 30))
            write_json(paths.seed_results / f"classifier_{track}.json", {
                "track": track, "arch": "resnet18", "profile": profile, "hardware": hardware,
                "test_auc": auc(track, seed) if callable(auc) else auc, "test_accuracy": 0.9, "test_slices": 40})
        for variant in {*TABLE2_VARIANTS, *TABLE3_VARIANTS}:
            write_json(paths.result("synthetic", variant, ablation=True), result("synthetic", variant, seed, 7))
    claim_run_folder(get_profile(profile, overrides), root)
    return root

