"""Training the counterfactual GAN, the second stage (paper Sec. 3.3, Eq. 1-6; App. 7.1).

One trainer serves COIN, Singla* and every ablation: what differs is configuration
(``GANConfig.conditions``, ``skips``, ``perturbation``, ``use_masks`` and the lambdas).

- :func:`counterfactual_step` is a plain function of (models, optimizers, batch, config)
  that returns detached loss tensors; it never synchronises with the host.
- :func:`train_counterfactual` is the loop around it: data order, logging, evaluation,
  progress bar, atomic checkpoints and exact resumption; one process or, under
  ``torchrun``, data-parallel over N (see :mod:`coinlib.runtime`).

Fast path (``CounterfactualConfig.compile``): the two differentiable parts of a step,
:func:`discriminator_loss` and :func:`generator_losses`, are run through ``torch.compile``
(:func:`step_losses`), Adam is fused (CUDA) or foreach (CPU) and cuDNN autotunes its
convolutions. The maths is the same; the first steps pay the compilation. Each loss function
is compiled whole, not module by module: the discriminator runs twice before one backward, and
a separately compiled spectral-norm forward would update in place the vector its first
backward needs. (Computing x_cf once for both phases would save a generator forward, but it
is not the same maths: the generator's spectral norms would take one power iteration per step
instead of two and its BatchNorm statistics one update, so it is not done.)

Conditions (Sec. 3.1-3.2): COIN has one condition, "inpaint", and the KL target is
``eps`` ~ 0 (Eq. 3); with ``CounterfactualConfig.kl_target_normal = "f(x)"`` (the authors'
code) only for the slices f calls abnormal, the others keeping f(x). Singla* bins
probabilities of [0, 1] into ``conditions`` bins: the counterfactual is asked for
bin(1 - f(x)), the identity for bin(f(x)) (Eq. 9-10).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .config import (
    AnomalyConfig,
    CounterfactualConfig,
    GANConfig,
    from_dict,
    to_dict,
)
from .data import SliceDataset, balanced_weights
from .files import read_json, write_json
from .gan import build_gan, condition_from_probability
from .losses import (
    GeneratorLossTerms,
    adversarial_d_loss,
    adversarial_g_loss,
    classifier_consistency_loss,
    self_consistency_loss,
    total_generator_loss,
    total_variation_loss,
)
from .prepared import PreparedSlices, open_prepared
from .progress import tqdm
from .provenance import run_differences, weights_id
from .runtime import (
    CheckpointError,
    ResumableSampler,
    autocast,
    distributed_context,
    load_checkpoint,
    local_module,
    pick_device,
    save_checkpoint,
    seed_everything,
    unreadable_checkpoint,
    use_job_threads,
)

__all__ = [
    "Conditions",
    "StepLosses",
    "TrainingInterrupted",
    "build_networks",
    "build_optimizers",
    "counterfactual_step",
    "discriminator_loss",
    "generate_counterfactuals",
    "generator_losses",
    "load_generator",
    "make_conditions",
    "step_losses",
    "train_counterfactual",
]

FINAL, LAST, HISTORY = "counterfactual.pt", "counterfactual_last.pt", "counterfactual_history.json"


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after`` hook (tests use it to simulate a killed process)."""


@dataclass(frozen=True)
class Conditions:
    """Per-image conditions and KL targets derived from p_abnormal = f(x)."""

    counterfactual: torch.Tensor  # (B,) long: condition asking for the counterfactual
    identity: torch.Tensor | None  # (B,) long: condition asking for x itself (Singla* only)
    real: torch.Tensor  # (B,) long: condition the discriminator pairs with real x
    kl_target: torch.Tensor  # (B,) float: target of f(x_cf) in Eq. 3 / Eq. 9


def make_conditions(
    p_abnormal: torch.Tensor, gan: GANConfig, train: CounterfactualConfig, classifier_threshold: float = 0.5
) -> Conditions:
    """COIN: one condition, target eps (Eq. 3). Singla*: bins of 1 - f(x) and f(x) (Eq. 9-10).

    ``p_abnormal``: (B,) f(x) in [0, 1]. COIN with ``train.kl_target_normal == "f(x)"``
    (the authors' code): eps where ``p_abnormal >= classifier_threshold`` (t of Sec. 3.1),
    ``f(x)`` clamped to [eps, 1 - eps] elsewhere. With ``"eps"`` (the paper) COIN does not
    read ``p_abnormal``.
    """
    if gan.conditions == 1:
        zeros = torch.zeros_like(p_abnormal, dtype=torch.long)
        target = torch.full_like(p_abnormal, train.kl_eps)
        if train.kl_target_normal == "f(x)":
            kept = p_abnormal.clamp(train.kl_eps, 1.0 - train.kl_eps)
            target = torch.where(p_abnormal >= classifier_threshold, target, kept)
        return Conditions(zeros, None, zeros, target)
    desired = 1.0 - p_abnormal
    observed = condition_from_probability(p_abnormal, gan.conditions)
    return Conditions(
        counterfactual=condition_from_probability(desired, gan.conditions),
        identity=observed,
        real=observed,
        kl_target=desired.clamp(train.kl_eps, 1.0 - train.kl_eps),
    )


def generator_losses(
    generator: nn.Module,
    discriminator: nn.Module,
    classifier: nn.Module,
    x: torch.Tensor,
    conditions: Conditions,
    gan: GANConfig,
    train: CounterfactualConfig,
    masks: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The generator's terms of Eq. 1, each weighted by its lambda, plus their sum ``g_total``.

    COIN (Eq. 4): L_idt = L1(x, E(x)) + L1(x, E(E(x))), with E the explanation function.
    Singla* (Eq. 10): L_idt = L_rec(x, E(x, f(x))) + L_rec(x, E(E(x, 1 - f(x)), f(x))),
    L_rec mask-weighted (Eq. 11) when ``masks`` (B, J, H, W) are given.
    """
    x_cf = generator(x, conditions.counterfactual)
    adv = adversarial_g_loss(discriminator(x_cf, conditions.counterfactual).float(), train.adv_loss)
    p_cf = torch.sigmoid(classifier(x_cf).float())
    l_f = classifier_consistency_loss(p_cf, conditions.kl_target, eps=train.kl_eps, clamp=train.prob_clamp)
    if conditions.identity is None:
        first, second = x_cf, generator(x_cf, conditions.counterfactual)
    else:
        first, second = generator(x, conditions.identity), generator(x_cf, conditions.identity)
    idt = self_consistency_loss(x.float(), first.float(), second.float(), masks)
    tv = total_variation_loss((x.float() - x_cf.float()).abs() / 2.0)
    terms = GeneratorLossTerms(adv=adv, f=l_f, idt=idt, tv=tv)
    weights = {"adv": train.lambda_adv, "f": train.lambda_f, "idt": train.lambda_idt, "tv": train.lambda_tv}
    return {
        **{f"g_{name}": weights[name] * value for name, value in terms._asdict().items()},
        "g_total": total_generator_loss(terms, train),
    }


def discriminator_loss(
    generator: nn.Module,
    discriminator: nn.Module,
    x: torch.Tensor,
    conditions: Conditions,
    train: CounterfactualConfig,
) -> torch.Tensor:
    """The discriminator's side of L_GAN (Eq. 2) on x and x_cf = E(x, c), x_cf without gradient."""
    with torch.no_grad():
        x_cf = generator(x, conditions.counterfactual)
    return adversarial_d_loss(
        discriminator(x, conditions.real).float(),
        discriminator(x_cf, conditions.counterfactual).float(),
        train.adv_loss,
    )


class StepLosses(NamedTuple):
    """The differentiable parts of a step: :func:`discriminator_loss`, :func:`generator_losses`."""

    discriminator: Callable[..., torch.Tensor]
    generator: Callable[..., dict[str, torch.Tensor]]


PLAIN = StepLosses(discriminator_loss, generator_losses)
# torch.compile's backend for the fast path: inductor (generated kernels). COIN_COMPILE_BACKEND
# names another, e.g. "aot_eager" (same graphs, no code generation), which the tests and the CPU
# rehearsal of the `paper` profile use: inductor's C++ build takes minutes on 2 cores.
COMPILE_BACKEND = os.environ.get("COIN_COMPILE_BACKEND", "inductor")
# what a library that a killed compile left half-written in torch's compile cache says when loaded
_BROKEN_BUILD = re.compile(r"file too short|invalid ELF header|cannot open shared object|undefined symbol|"
                           r"ELF load command")


def compile_cache_dir() -> str:
    """Where inductor keeps its builds (``TORCHINDUCTOR_CACHE_DIR``, else torch's default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _compiled(function: Callable) -> Callable:
    """``torch.compile(function)``, whose failure to load a broken build from the compile cache
    is one line that says how to recover (not torch's traceback through the generated code)."""
    compiled = torch.compile(function, backend=COMPILE_BACKEND)

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as error:
            if COMPILE_BACKEND == "inductor" and _BROKEN_BUILD.search(str(error)):
                raise RuntimeError(
                    f"the compiled training step could not load a build from torch's compile cache "
                    f"({compile_cache_dir()}): a compile killed mid-way leaves a truncated library there. "
                    "Delete that folder (or set TORCHINDUCTOR_CACHE_DIR to a new one) and run again, or "
                    f"train without compiling (coin train --no-fast). ({type(error).__name__}: "
                    f"{' '.join(str(error).split())[:300]})") from error
            raise
    return call


def step_losses(train: CounterfactualConfig, device: torch.device) -> StepLosses:
    """The loss functions a step runs: :data:`PLAIN`, or with ``train.compile`` compiled ones.

    The fast path also turns on cuDNN autotuning (a process-wide setting) on CUDA. Each
    function compiles into a few graphs (grad modes, generator or not), once per process.
    """
    if not train.compile:
        return PLAIN
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return StepLosses(*(_compiled(fn) for fn in PLAIN))


def counterfactual_step(
    generator: nn.Module,
    discriminator: nn.Module,
    classifier: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    batch: dict[str, torch.Tensor],
    gan: GANConfig,
    train: CounterfactualConfig,
    update_generator: bool,
    device: torch.device,
    losses: StepLosses = PLAIN,
    classifier_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """One discriminator update and, when ``update_generator``, one generator update (Eq. 1).

    ``batch["image"]``: (B, 1, H, W) in [-1, 1]. Returns detached scalar tensors (no host
    synchronisation here; the loop calls ``.item()`` at log intervals only). ``losses``:
    plain or compiled (:func:`step_losses`). ``classifier_threshold``: f's t (Sec. 3.1),
    read by :func:`make_conditions` for COIN's ``kl_target_normal = "f(x)"``. ``generator``
    and ``discriminator`` may be DistributedDataParallel wrappers: passes whose gradients
    are not used (x_cf for D's update, the frozen D in G's update) run on the module
    inside, without a collective.
    """
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    masks = None
    if gan.use_masks:
        kidney = batch["kidney_mask"].to(device, non_blocking=True)
        masks = torch.cat([kidney, 1.0 - kidney], dim=1)  # labels j: kidney, everything else
    if gan.conditions == 1 and train.kl_target_normal == "eps":
        p_abnormal = torch.zeros(x.shape[0], device=device)  # COIN's eps target does not read f(x): skip it
    else:
        with torch.no_grad(), autocast(device, choice=train.precision):
            p_abnormal = torch.sigmoid(classifier(x).float())
    conditions = make_conditions(p_abnormal, gan, train, classifier_threshold)

    with autocast(device, choice=train.precision):
        d_loss = losses.discriminator(local_module(generator), discriminator, x, conditions, train)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    (train.lambda_adv * d_loss).backward()
    optimizers["discriminator"].step()
    out = {"d_adv": d_loss.detach()}

    if update_generator:
        for parameter in discriminator.parameters():
            parameter.requires_grad_(False)
        with autocast(device, choice=train.precision):
            terms = losses.generator(generator, local_module(discriminator), classifier, x, conditions, gan,
                                     train, masks)
        optimizers["generator"].zero_grad(set_to_none=True)
        terms["g_total"].backward()
        optimizers["generator"].step()
        for parameter in discriminator.parameters():
            parameter.requires_grad_(True)
        out.update({name: value.detach() for name, value in terms.items()})
    return out


def build_optimizers(generator: nn.Module, discriminator: nn.Module, train: CounterfactualConfig,
                     device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """Adam for each network (paper Sec. 4.3: lr 2e-4, betas (0, 0.9)); fused on CUDA,
    foreach on the CPU's fast path (one kernel per step for all tensors, same update)."""
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True} if train.compile else {}
    return {
        "generator": torch.optim.Adam(generator.parameters(), lr=train.lr, betas=train.betas, **extra),
        "discriminator": torch.optim.Adam(discriminator.parameters(), lr=train.lr, betas=train.betas, **extra),
    }


def build_networks(gan: GANConfig, train: CounterfactualConfig, classifier: nn.Module, device: torch.device
                   ) -> tuple[nn.Module, nn.Module, dict[str, torch.optim.Optimizer]]:
    """``(generator, discriminator, optimizers)`` on ``device``; ``classifier`` moved there, frozen.

    Channels-last memory: oneDNN (CPU) and cuDNN (GPU) convolutions are several times
    faster. Seed torch before calling for reproducible initial weights.
    """
    generator, discriminator = build_gan(gan)
    generator.to(device, memory_format=torch.channels_last)
    discriminator.to(device, memory_format=torch.channels_last)
    classifier.to(device, memory_format=torch.channels_last).eval()
    for parameter in classifier.parameters():
        parameter.requires_grad_(False)
    return generator, discriminator, build_optimizers(generator, discriminator, train, device)


SPEED_ONLY = ("compile", "keep_resume_state")  # CounterfactualConfig fields that change speed or disk, not results


def _run_config(gan: GANConfig, train: CounterfactualConfig, anomaly: AnomalyConfig | None,
                prepared: PreparedSlices, classifier: nn.Module, classifier_path: Path,
                classifier_threshold: float) -> dict[str, Any]:
    """What a run's checkpoints must agree on to be resumed (speed settings may change): the
    settings, and the data and classifier by content (``coinlib.provenance``; the paths
    ``data`` and ``classifier`` are recorded for the reader, not compared)."""
    return {
        "gan": to_dict(gan),
        "train": {key: value for key, value in to_dict(train).items() if key not in SPEED_ONLY},
        "anomaly": to_dict(anomaly) if anomaly else None,
        "data": str(prepared.root),
        "data_id": prepared.content_id,
        "classifier": str(classifier_path),
        "classifier_threshold": classifier_threshold,
        "classifier_id": weights_id(classifier),
    }


def train_counterfactual(
    prepared: PreparedSlices | str | os.PathLike,
    gan: GANConfig,
    train: CounterfactualConfig,
    anomaly: AnomalyConfig | None,
    classifier: nn.Module,
    classifier_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: torch.device | str | None = None,
    progress: bool = True,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    stop_after: int | None = None,
    num_workers: int = 0,
    classifier_threshold: float = 0.5,
) -> Path:
    """Train the counterfactual GAN for ``train.steps`` steps; returns ``out_dir/counterfactual.pt``.

    Resumes from ``out_dir/counterfactual_last.pt`` when it exists (same config required);
    with the same seed on the CPU the resumed run ends with the same weights as one that
    never stopped. ``evaluate(generator, step)`` runs every ``train.eval_every`` steps and
    its numbers join the history. ``stop_after`` raises :class:`TrainingInterrupted` after
    that many steps of this call (used by the tests to simulate a kill).
    ``classifier_threshold``: f's t (Sec. 3.1; ``ClassifierConfig.threshold``), which COIN's
    ``kl_target_normal = "f(x)"`` reads.

    Under ``torchrun`` every rank trains on its shard of the data with gradients averaged
    (DistributedDataParallel, :mod:`coinlib.runtime`); each rank evaluates its own copy (they
    would otherwise wait), rank 0 records the losses averaged over ranks and alone writes files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepared if isinstance(prepared, PreparedSlices) else open_prepared(prepared)
    ctx, device = distributed_context(device)
    use_job_threads(device)
    run_config = _run_config(gan, train, anomaly, prepared, classifier, Path(classifier_path),
                             float(classifier_threshold))

    seed_everything(train.seed)  # the same initial weights on every rank
    generator, discriminator, optimizers = build_networks(gan, train, classifier, device)
    modules = {"generator": generator, "discriminator": discriminator}

    step, history = 0, []
    resumable = True
    if (out / LAST).is_file():
        saved = load_checkpoint(out / LAST, modules, optimizers, map_location=device, restore_rng=True,
                                record_only=True)
        resumable = saved.get("resume_state", True)
        if changed := "; ".join(run_differences(saved["config"], run_config, ("data", "classifier"))):
            raise ValueError(
                f"{out / LAST} was written with a different config ({changed}); "
                f"use a new output folder, or delete {out} to retrain"
            )
        step, history = saved["step"], saved["history"]
    if step >= train.steps:
        broken = unreadable_checkpoint(out / FINAL) if (out / FINAL).exists() else None
        if (out / FINAL).exists() and broken is None:
            return out / FINAL
        if broken is not None and not resumable:
            raise CheckpointError(f"{broken}; {out / LAST} records a finished training without its weights "
                                  f"(train.keep_resume_state off): delete {out} to train it again")
        if broken is not None:  # the loop below runs no step and writes it again from the last checkpoint
            warnings.warn(f"{broken}; rebuilding it from {out / LAST}, which holds the same final weights",
                          stacklevel=2)

    dataset = SliceDataset(prepared, "train", anomaly, fresh_anomalies=True, seed=train.seed)
    sampler = ResumableSampler(len(dataset), seed=train.seed, rank=ctx.rank, num_replicas=ctx.world_size,
                               weights=balanced_weights(dataset) if train.balanced_sampling else None)
    steps_per_epoch = len(sampler) // train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"training split of {prepared.root} has {len(dataset)} slices, "
                         f"fewer than one batch per process")

    def batches_from(global_step: int):
        epoch, position = divmod(global_step, steps_per_epoch)
        while True:
            sampler.set_position(epoch, position * train.batch_size)
            dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=train.batch_size, sampler=sampler, drop_last=True,
                num_workers=num_workers, pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
            yield from loader
            epoch, position = epoch + 1, 0

    def checkpoint(path: Path, resume_state: bool = True) -> None:
        """The training's state; without ``resume_state``, only the record of a finished one."""
        if ctx.is_main:
            if resume_state:
                save_checkpoint(path, modules, run_config, optimizers, {"step": step, "history": history})
            else:
                save_checkpoint(path, {}, run_config, state={"step": step, "history": history, "resume_state": False})
            write_json(out / HISTORY, history)

    losses = step_losses(train, device)
    parallel_g, parallel_d = ctx.wrap(generator, device), ctx.wrap(discriminator, device)
    generator.train()
    discriminator.train()
    running: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    bar = tqdm(total=train.steps, initial=step, desc="counterfactual GAN", disable=not (progress and ctx.is_main))
    for taken, batch in enumerate(batches_from(step)):
        if step >= train.steps:
            break
        if stop_after is not None and taken >= stop_after:
            bar.close()
            raise TrainingInterrupted(f"stopped after {taken} steps at step {step}")
        update_generator = step % train.generator_every == 0
        terms = counterfactual_step(parallel_g, parallel_d, classifier, optimizers, batch,
                                    gan, train, update_generator, device, losses, classifier_threshold)
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        step += 1
        bar.update(1)
        if step % train.log_every == 0 or step == train.steps:
            # the one host sync: losses averaged over the steps since the last log (and the ranks)
            names = list(running)
            totals = ctx.mean(torch.stack([running[name] for name in names])).tolist()
            record = {"step": step, **{name: total / counts[name] for name, total in zip(names, totals)}}
            history.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("d_adv", "g_adv", "g_f", "g_idt")})
            running, counts = {}, {}
        if evaluate is not None and (step % train.eval_every == 0 or step == train.steps):
            generator.eval()
            history.append({"step": step, **evaluate(generator, step)})
            generator.train()
        if step % train.checkpoint_every == 0 or step == train.steps:
            checkpoint(out / LAST)
    bar.close()
    if ctx.is_main:
        save_checkpoint(out / FINAL, {"generator": generator}, run_config, state={"step": step})
    # written after the generator: a kill in between leaves the full last checkpoint
    checkpoint(out / LAST, resume_state=train.keep_resume_state)
    ctx.barrier()  # no rank returns before the files it will read exist
    return out / FINAL


def load_generator(run_dir: str | os.PathLike, device: torch.device | str | None = None) -> tuple[nn.Module, GANConfig]:
    """The trained generator of a run folder (eval mode) and its GANConfig."""
    path = Path(run_dir) / FINAL
    config = read_json(path.with_suffix(".json"))
    gan = from_dict(GANConfig, config["gan"])
    generator, _ = build_gan(gan)
    load_checkpoint(path, {"generator": generator})
    device = device if isinstance(device, torch.device) else pick_device(device)
    return generator.to(device, memory_format=torch.channels_last).eval(), gan


@torch.no_grad()
def generate_counterfactuals(
    generator: nn.Module,
    classifier: nn.Module,
    dataset: torch.utils.data.Dataset,
    gan: GANConfig,
    batch_size: int = 32,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """x, x_cf, f(x), f(x_cf), f's features and the masks for every item, inpainting.

    Every method is scored abnormal -> normal (paper Sec. 4.4, 5): COIN's one condition;
    for Singla* the condition that asks for a normal image, bin(0).
    Arrays: ``x``, ``x_cf`` (N, H, W) float32 in [-1, 1]; ``p_abnormal``, ``p_abnormal_cf``,
    ``label`` (N,); ``features``, ``features_cf`` (N, F): f's penultimate features of x and
    x_cf, from the same forward pass as the probabilities (for the classifier Frechet
    distance, :func:`coinlib.metrics.classifier_frechet_distance`); ``lesion_mask``,
    ``kidney_mask``, ``body_mask`` (N, H, W) bool; ``index`` (N,).
    """
    device = device or next(generator.parameters()).device
    generator.eval()
    classifier.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    keys = ("x", "x_cf", "p_abnormal", "p_abnormal_cf", "features", "features_cf", "label", "lesion_mask",
            "kidney_mask", "body_mask", "index")
    out: dict[str, list] = {key: [] for key in keys}
    for batch in tqdm(loader, desc="counterfactuals", disable=not progress, leave=False):
        x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        inpaint = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        # fp32 on every precision path: models trained in fp32 and in bf16 are scored alike
        x_cf = generator(x, inpaint).float()
        features = classifier.penultimate(x)
        features_cf = classifier.penultimate(x_cf)
        p = torch.sigmoid(classifier.head(features).float())
        p_cf = torch.sigmoid(classifier.head(features_cf).float())
        out["x"].append(x[:, 0].float().cpu())
        out["x_cf"].append(x_cf[:, 0].cpu())
        out["p_abnormal"].append(p.cpu())
        out["p_abnormal_cf"].append(p_cf.cpu())
        out["features"].append(features.float().cpu())
        out["features_cf"].append(features_cf.float().cpu())
        out["label"].append(batch["label"])
        out["lesion_mask"].append(batch["lesion_mask"][:, 0].bool())
        out["kidney_mask"].append(batch["kidney_mask"][:, 0].bool())
        out["body_mask"].append(batch["body_mask"][:, 0].bool())
        out["index"].append(batch["index"])
    return {key: torch.cat(values).numpy() for key, values in out.items()}


def history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return read_json(Path(run_dir) / HISTORY)
