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
    return write_prepared(root, np.stack(images), np.stack(kidneys), np.zeros((n, size, size), np.uint8),
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
