"""Training the classifier f, the first of the two stages (paper Sec. 4.3).

BCE on one logit, Adam, random flips (and, where configured, shift-scale-rotate as the
authors' code and intensity jitter) as augmentation, class-balanced batches where configured
(the authors' tumour track), early stopping on validation AUC.
Each epoch ends with an atomic checkpoint (``classifier_last.pt``); the best weights by
validation AUC are kept in ``classifier.pt`` and the per-epoch history in
``classifier_history.json``. Re-running with the same config resumes from the last
checkpoint, or returns at once when training had finished. Under ``torchrun`` the ranks
train data-parallel and rank 0 validates, decides and writes (:mod:`coinlib.runtime`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .classifier import build_classifier
from .config import AnomalyConfig, ClassifierConfig, from_dict, to_dict
from .data import SliceDataset, balanced_weights, evaluation_set
from .files import read_json, write_json
from .prepared import PreparedSlices, open_prepared
from .progress import tqdm
from .provenance import run_differences
from .runtime import (
    CheckpointError,
    ResumableSampler,
    autocast,
    distributed_context,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    unreadable_checkpoint,
    use_job_threads,
)

__all__ = [
    "train_classifier",
    "load_classifier",
    "predict",
    "roc_auc",
    "roc_curve",
    "random_flips",
    "random_shift_scale_rotate",
    "random_intensity",
    "random_noise",
    "random_hide_patches",
    "add_body_noise",
    "refresh_batchnorm",
]

BEST, LAST, HISTORY = "classifier.pt", "classifier_last.pt", "classifier_history.json"
BN_REFRESH_BATCHES = 8


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    positives, negatives = max(labels.sum(), 1), max((~labels).sum(), 1)
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); nan for one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # mid-ranks: every member of a tie gets the mean of the ranks the tie spans
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def random_intensity(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each image's contrast by U(1 - s, 1 + s) about -1 and shift it by U(-0.8 s, 0.8 s).

    Augmentation on the [-1, 1] scale, clipped back to it; air and fat (at -1) stay put.
    ``strength`` 0 returns ``x`` unchanged and draws nothing from ``generator``.
    """
    if strength <= 0:
        return x
    draws = torch.rand(2, x.shape[0], generator=generator, device="cpu").mul(2).sub(1).to(x.device, x.dtype)
    scale = (1 + strength * draws[0]).view(-1, 1, 1, 1)
    shift = (0.8 * strength * draws[1]).view(-1, 1, 1, 1)
    return ((x + 1) * scale - 1 + shift).clamp(-1, 1)


def random_noise(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise of std U(0, s) per image to the body (pixels above -1).

    Augmentation on the [-1, 1] scale, clipped back to it. Scans differ in noise (dose, body
    size; the phantom draws ``noise_hu`` per subject), and a classifier trained on few scans
    can read a noisy slice as a heterogeneous mass (docs/profiles.md, "Why the tumour track's f is
    trained with added noise"). ``strength`` 0 returns ``x`` unchanged and draws nothing from
    ``generator``.
    """
    if strength <= 0:
        return x
    sigma = torch.rand(x.shape[0], generator=generator, device="cpu").mul(strength)
    return add_body_noise(x, sigma, generator)


def add_body_noise(x: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus white Gaussian noise of std ``sigma`` (one value, or one per image) on the body.

    The body is every pixel above -1 (air and the field outside the scan stay black); the
    result is clipped to [-1, 1]. :func:`random_noise` draws ``sigma``;
    ``benchmarks/noise_sensitivity.py`` fixes it to see how f's score moves with noise.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device="cpu") * sigma
    return torch.where(x > -1, x + noise.to(x.device, x.dtype), x).clamp(-1, 1)


def random_hide_patches(x: torch.Tensor, grid: int, probability: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide-and-Seek (Singh and Lee, ICCV 2017): split each image into ``grid`` x ``grid``
    cells and replace each cell, with probability ``probability``, by the image's mean.

    A classifier trained from image labels tends to rest on the most discriminative part of an
    object; hiding random parts during training makes it find the evidence elsewhere too, so
    its decision spreads over the whole object, which is what weakly supervised localisation
    needs. On the tumour track at the quick budget it did not help: f lost AUC and COIN's IoU
    fell on every seed (docs/experiments.md, "Hiding patches from f does not make COIN cover the mass"), so
    every profile leaves it off. The paper fills with the dataset's mean pixel so that a hidden
    cell looks, to the first convolution, like an average one; the image's own mean serves the
    same end without a pass over the data. Cells are ``ceil(H / grid)`` pixels (the last row and
    column may be smaller). ``grid`` 0 returns ``x`` unchanged and draws nothing from
    ``generator``.
    """
    if grid <= 0:
        return x
    b, _, h, w = x.shape
    hidden = torch.rand(b, 1, grid, grid, generator=generator, device="cpu").lt(probability).to(x.device)
    cell = (math.ceil(h / grid), math.ceil(w / grid))
    hidden = hidden.repeat_interleave(cell[0], dim=2).repeat_interleave(cell[1], dim=3)[..., :h, :w]
    return torch.where(hidden, x.mean(dim=(1, 2, 3), keepdim=True), x)


def random_shift_scale_rotate(x: torch.Tensor, generator: torch.Generator | None = None, shift: float = 0.0625,
                              scale: float = 0.1, degrees: float = 45.0) -> torch.Tensor:
    """A random affine per image, as albumentations' ``ShiftScaleRotate`` defaults the authors used
    (the authors' code): shift up to ``shift`` of the size per axis, zoom 1 +- ``scale``, rotation +- ``degrees``,
    bilinear, borders mirrored. ``x (B, 1, H, W)``; the same shape back."""
    draws = torch.rand(4, x.shape[0], generator=generator, device="cpu").mul(2).sub(1).to(x.device, torch.float32)
    angle = draws[0] * torch.pi * degrees / 180
    zoom = 1 + scale * draws[1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # grid maps output to input: inverse zoom
    theta = torch.stack([torch.stack([cos, -sin, 2 * shift * draws[2]], 1),
                         torch.stack([sin, cos, 2 * shift * draws[3]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)


def random_flips(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right and up-down with probability 1/2 each (augmentation)."""
    flips = torch.rand(2, x.shape[0], generator=generator, device="cpu").lt(0.5).to(x.device)
    x = torch.where(flips[0].view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(flips[1].view(-1, 1, 1, 1), x.flip(-2), x)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """p_abnormal = sigmoid(f(x)) for every item: arrays ``p_abnormal``, ``label``, ``index``."""
    device = device or next(model.parameters()).device
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, labels, indices = [], [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        with autocast(device):
            logits = model(batch["image"].to(device, non_blocking=True))
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch["label"])
        indices.append(batch["index"])
    return {
        "p_abnormal": torch.cat(probs).numpy(),
        "label": torch.cat(labels).numpy(),
        "index": torch.cat(indices).numpy(),
    }


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, batches, device: torch.device) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over ``batches``.

    During a short training the running averages (momentum 0.1) trail weights that move
    fast, and eval-mode probabilities drift from the train-mode ones: AUC stays high while
    f(x) >= 0.5 stops meaning "abnormal". Averaging the statistics of the final weights over
    a few training batches ("precise BN") restores calibrated outputs, which the threshold t
    (Sec. 3.1), CV (Sec. 4.2) and the GAN's L_f (Eq. 3) all rely on.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for batch in batches:
        model(batch["image"].to(device).contiguous(memory_format=torch.channels_last))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def epoch_learning_rate(config: ClassifierConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.max_epochs))


def train_classifier(
    prepared: PreparedSlices | str | os.PathLike,
    config: ClassifierConfig,
    anomaly: AnomalyConfig | None,
    out_dir: str | os.PathLike,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Train f on ``prepared`` (synthetic anomalies when ``anomaly`` is given, else tumours).

    Returns the path of the best checkpoint (``out_dir/classifier.pt``). Stops early when
    validation AUC has not improved for ``config.patience`` epochs (paper Sec. 4.3 trains
    the classifier to convergence before the GAN; the authors' code).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepared if isinstance(prepared, PreparedSlices) else open_prepared(prepared)
    ctx, device = distributed_context(device)
    use_job_threads(device)
    # the data by content (coinlib.provenance); its path is recorded for the reader, not compared
    run_config = {"classifier": to_dict(config), "anomaly": to_dict(anomaly) if anomaly else None,
                  "data": str(prepared.root), "data_id": prepared.content_id}

    seed_everything(config.seed)
    model = build_classifier(config).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = {"epoch": 0, "best_auc": -1.0, "bad_epochs": 0, "history": [], "finished": False}
    if (out / LAST).is_file():
        saved = load_checkpoint(out / LAST, {"classifier": model}, {"adam": optimizer},
                                map_location=device, restore_rng=True)
        if changed := "; ".join(run_differences(saved["config"], run_config, ("data",))):
            raise ValueError(
                f"{out / LAST} was written with a different config ({changed}); "
                f"use a new output folder, or delete {out} to retrain"
            )
        state = {k: saved[k] for k in state}
        if state["finished"]:
            if (broken := unreadable_checkpoint(out / BEST)) is not None:
                raise CheckpointError(f"the trained classifier is broken: {broken}; it holds the best epoch's "
                                      f"weights, which {out / LAST} does not: delete {out} to train it again")
            return out / BEST

    seed = config.seed
    train_set = SliceDataset(prepared, "train", anomaly, fresh_anomalies=True, seed=seed)
    val_set = evaluation_set(prepared, "val", anomaly)
    sampler = ResumableSampler(len(train_set), seed=seed, rank=ctx.rank, num_replicas=ctx.world_size,
                               weights=balanced_weights(train_set) if config.balanced_sampling else None)
    flip_rng = torch.Generator().manual_seed(seed)
    steps = config.steps_per_epoch or -(-len(sampler) // config.batch_size)
    parallel = ctx.wrap(model, device)  # `model` itself when there is one process

    for epoch in range(state["epoch"], config.max_epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_learning_rate(config, epoch)
        flip_rng.manual_seed(seed * 1_000_003 + epoch)
        sampler.set_position(epoch)
        train_set.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True
        )
        model.train()
        running = torch.zeros((), device=device)
        bar = tqdm(zip(range(steps), loader), total=min(steps, len(loader)),
                   desc=f"classifier epoch {epoch + 1}/{config.max_epochs}", disable=not (progress and ctx.is_main),
                   leave=False)
        for done, batch in bar:
            x = random_flips(batch["image"].to(device, non_blocking=True), flip_rng)
            if config.shift_scale_rotate:
                x = random_shift_scale_rotate(x, flip_rng)
            x = random_intensity(x, config.intensity_jitter, flip_rng)
            x = random_noise(x, config.noise_jitter, flip_rng)
            x = random_hide_patches(x, config.hide_grid, config.hide_probability, flip_rng)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                logits = parallel(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
        train_loss = float(ctx.mean(running).item() / max(steps, 1))  # one host sync per epoch
        sampler.set_position(epoch)
        refresh_batchnorm(model, (b for _, b in zip(range(BN_REFRESH_BATCHES), loader)), device)

        val_auc = None
        if ctx.is_main:  # BatchNorm statistics differ by rank: rank 0 validates, every rank follows
            scores = predict(model, val_set, batch_size=config.batch_size * 2, device=device)
            val_auc = roc_auc(scores["label"], scores["p_abnormal"])
        val_auc = ctx.broadcast(val_auc)
        if math.isnan(val_auc):  # one class only in validation: AUC undefined, keep the latest
            warnings.warn(f"{out}: the validation split holds one class only, so its AUC is undefined; "
                          "early stopping cannot choose an epoch and the latest weights are kept", stacklevel=2)
        improved = val_auc > state["best_auc"] or math.isnan(val_auc)
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "val_auc": val_auc})
        if improved:
            state["best_auc"], state["bad_epochs"] = val_auc, 0
            if ctx.is_main:
                save_checkpoint(out / BEST, {"classifier": model}, run_config, state={"val_auc": val_auc})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["finished"] = state["bad_epochs"] >= config.patience or state["epoch"] >= config.max_epochs
        if ctx.is_main:
            if progress:
                tqdm.write(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val AUC {val_auc:.4f}"
                           + (" (best)" if improved else ""))
            save_checkpoint(out / LAST, {"classifier": model}, run_config, {"adam": optimizer}, state)
            write_json(out / HISTORY, state["history"])
        if state["finished"]:
            break
    ctx.barrier()  # no rank returns before rank 0 has written the best weights
    return out / BEST


def load_classifier(run_dir: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """The best classifier of a run folder, frozen (eval mode, no gradients)."""
    path = Path(run_dir) / BEST
    config_path = path.with_suffix(".json")
    run_config = read_json(config_path)
    config = from_dict(ClassifierConfig, run_config["classifier"])
    model = build_classifier(dataclasses.replace(config, weights_path=None))
    load_checkpoint(path, {"classifier": model})
    model.to(pick_device(str(device) if device else None), memory_format=torch.channels_last).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return read_json(Path(run_dir) / HISTORY)
