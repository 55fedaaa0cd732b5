"""What every training or evaluation run shares: device, precision, seeding, checkpoints.

- :func:`pick_device` chooses CUDA when present, else the CPU; :func:`autocast` gives bf16
  autocast where the hardware computes in bf16 natively (CUDA; CPUs with AVX512-BF16 or
  AMX-BF16) and fp32 elsewhere (:func:`precision`; ``COIN_PRECISION=bf16|fp32`` or
  :func:`set_precision` forces either), so the maths is the same code on every device. A stage
  may fix its own precision (the GAN's training step: ``CounterfactualConfig.precision``, fp32
  by default), which this process-wide choice then does not change.
- :func:`use_job_threads`: every CPU job (a classifier, a GAN, an evaluation) runs on
  ``COIN_THREADS`` threads (default 1), however it is launched. oneDNN's reductions depend on
  the thread count, so this is what makes a job's numbers the same in a notebook, in
  ``coin train`` and in :mod:`coinlib.jobs`' worker processes (which run one job per core).
- Checkpoints are ``state_dict``s plus the run's config as JSON (STYLE.md: diffusers),
  written atomically and loaded with ``weights_only=True``; a wrong shape or a missing file
  raises an error that names the file.
- :class:`ResumableSampler` gives a seeded permutation per epoch that can start mid-epoch,
  so an interrupted run resumes on exactly the batches it would have seen.
- :func:`distributed_context` lets the same training code run as one process or as N
  data-parallel ones (DistributedDataParallel; NCCL on GPUs, gloo on CPUs).

Several GPUs (paper Sec. 4.3 trains on one). ``torchrun`` starts one process per GPU and
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the trainers then join the process group,
take ``cuda:LOCAL_RANK``, shard the data by rank and average gradients across ranks; rank 0
alone writes checkpoints and history::

    coin train-classifier --profile paper                  # one process: prepares the data, trains f
    torchrun --nproc_per_node N -m coinlib.cli train --profile paper

(``torchrun ... -m coinlib.cli train-classifier`` trains f data-parallel too, once the data
is prepared: every rank runs the preparation stage, which must find it done.) Every process
builds the same initial weights (same seed; DDP also broadcasts rank 0's) and reads its own
shard, so one optimizer step sees ``N x batch_size`` images (the paper: 16) and an epoch
takes N times fewer steps. BatchNorm statistics are per process, and rank 0's running
statistics are broadcast at each forward. Without ``torchrun`` (``WORLD_SIZE`` unset or 1)
nothing changes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .files import atomic_path, write_json

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "ResumableSampler",
    "autocast",
    "class_balanced_weights",
    "config_differences",
    "cpu_has_native_bf16",
    "distributed_context",
    "git_commit",
    "hardware_summary",
    "load_checkpoint",
    "unreadable_checkpoint",
    "load_weights",
    "local_module",
    "pick_device",
    "positive_int_from_env",
    "precision",
    "precision_set_to",
    "save_checkpoint",
    "seed_everything",
    "set_precision",
    "use_job_threads",
]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def pick_device(preference: str | None = None) -> torch.device:
    """``preference`` ('cpu', 'cuda', 'cuda:1') or, when None, CUDA if available else CPU."""
    if preference:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a data-parallel job: rank 0 of 1 when there is no job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, history and progress."""
        return self.rank == 0

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks); as is alone.

        Every parameter takes part in each backward that the wrapper's forward feeds, so
        ``find_unused_parameters`` stays off; buffers (BatchNorm statistics, spectral-norm
        vectors) are broadcast from rank 0 at each forward.
        """
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank] if dist.get_backend() == "nccl" else None)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over ranks (a collective: every rank calls it)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)  # SUM: gloo has no AVG
        return values / self.world_size

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def distributed_context(preference: str | torch.device | None = None) -> tuple[DistributedContext, torch.device]:
    """Join the ``torchrun`` job this process belongs to, if any; return it and the device.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` > 1: the device is
    ``cuda:LOCAL_RANK`` (NCCL) when CUDA is present and ``preference`` does not ask for the
    CPU, else the CPU (gloo); the process group is initialised once per process. Otherwise
    this is :func:`pick_device` and a one-process context.
    """
    preference = str(preference) if preference is not None else None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), pick_device(preference)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(preference).type if preference else ("cuda" if torch.cuda.is_available() else "cpu")
    device = pick_device(f"cuda:{local_rank}" if kind == "cuda" else "cpu")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        atexit.register(_leave_process_group)
    return DistributedContext(rank, world_size, local_rank), device


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_module(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: its forward skips every collective
    (for passes whose gradients need no averaging, e.g. a frozen network's)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


PRECISIONS = ("auto", "bf16", "fp32")
_precision_choice = os.environ.get("COIN_PRECISION", "auto")


def cpu_bf16_instructions() -> list[str]:
    """The native bf16 instruction sets of this CPU among AVX512-BF16 and AMX-BF16 (``lscpu`` names)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [name for name in ("avx512_bf16", "amx_bf16") if capabilities.get(name)]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (:func:`cpu_bf16_instructions` is not empty).

    Without it oneDNN emulates bf16 and autocast is slower than fp32, so ``auto`` keeps fp32.
    """
    return bool(cpu_bf16_instructions())


def set_precision(choice: str) -> None:
    """``auto`` (bf16 where native, else fp32), ``bf16`` or ``fp32`` for this process.

    Worker processes inherit it through ``COIN_PRECISION``, which this also sets.
    """
    global _precision_choice
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {choice!r}")
    _precision_choice = choice
    os.environ["COIN_PRECISION"] = choice


@contextlib.contextmanager
def precision_set_to(choice: str) -> Iterator[None]:
    """Run a block with :func:`set_precision` ``choice``, then restore the previous choice."""
    previous = _precision_choice
    set_precision(choice)
    try:
        yield
    finally:
        set_precision(previous)


def precision(device: torch.device, choice: str = "auto") -> str:
    """``"bf16"`` or ``"fp32"``: what :func:`autocast` computes in on ``device``.

    ``choice``: a stage's own setting (e.g. ``CounterfactualConfig.precision``); ``"auto"``
    defers to this process's choice (``COIN_PRECISION``, :func:`set_precision`).
    """
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if _precision_choice not in PRECISIONS:
        raise ValueError(f"COIN_PRECISION must be one of {list(PRECISIONS)}, got {_precision_choice!r}")
    if _precision_choice != "auto":
        return _precision_choice
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, enabled: bool = True, choice: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`precision` says bf16 (CUDA, native-bf16 CPUs), else fp32.

    ``choice``: the stage's own setting, as for :func:`precision`.
    Either path is deterministic on one machine with a fixed thread count
    (:func:`use_job_threads`); the resume and determinism tests run on whichever is active.
    """
    if enabled and device.type in ("cuda", "cpu") and precision(device, choice) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def positive_int_from_env(name: str, default: str) -> int | None:
    """The whole number >= 1 in environment variable ``name`` (``default`` when unset); None for
    "auto". Anything else raises an error naming the variable."""
    text = os.environ.get(name, default)
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number (or 'auto'), got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def job_threads() -> int:
    """Threads one CPU job uses: ``COIN_THREADS`` (default 1), at most the cores there are."""
    return min(positive_int_from_env("COIN_THREADS", "1") or 1, os.cpu_count() or 1)


def use_job_threads(device: torch.device) -> None:
    """Set torch's intra-op threads to :func:`job_threads` when ``device`` is the CPU.

    Called at the start of every training and evaluation stage: the same job then gives the
    same numbers wherever it runs (see the module docstring).
    """
    if device.type == "cpu" and torch.get_num_threads() != job_threads():
        torch.set_num_threads(job_threads())


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global RNG from one config seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel or torch.compile wrappers."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def save_checkpoint(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    config: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write ``{modules, optimizers, state}`` state dicts to ``path`` and ``config`` beside it.

    ``config`` (JSON-ready) goes into the checkpoint and into ``<path stem>.json`` so a
    reader sees what produced the weights without loading them. Both writes are atomic.
    """
    path = Path(path)
    payload = {
        "modules": {name: _unwrap(m).state_dict() for name, m in modules.items()},
        "optimizers": {name: opt.state_dict() for name, opt in (optimizers or {}).items()},
        "state": {**(state or {}), "torch_rng": torch.get_rng_state()},
        "config": config,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_json(path.with_suffix(".json"), config)
    return path


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None


def unreadable_checkpoint(path: str | os.PathLike) -> str | None:
    """None when the checkpoint at ``path`` loads (a finished model is one that loads), else
    why not: missing, truncated by an interrupted copy, or not a checkpoint of ours."""
    try:
        payload = _read_checkpoint(Path(path), "cpu")
    except CheckpointError as err:
        return str(err)
    if not isinstance(payload, dict) or not isinstance(payload.get("modules"), dict):
        return f"{path} is not a checkpoint written by this project (no module weights in it)"
    return None


def _load_module(module: nn.Module, state_dict: dict[str, Any], where: str) -> None:
    try:
        _unwrap(module).load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{where} does not fit the model: {' '.join(first[:4])}") from None


def load_checkpoint(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    map_location: Any = "cpu",
    restore_rng: bool = False,
    record_only: bool = False,
) -> dict[str, Any]:
    """Load weights (and optimizer states) saved by :func:`save_checkpoint`; return ``state``.

    ``record_only``: a checkpoint saved without any module weights (a finished training's
    record) is accepted, its state returned and nothing loaded.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, lacks a
    module, or holds tensors of the wrong shape.
    """
    path = Path(path)
    payload = _read_checkpoint(path, map_location)
    if record_only and not payload.get("modules"):
        return {**payload.get("state", {}), "config": payload.get("config", {})}
    for name, module in modules.items():
        if name not in payload.get("modules", {}):
            raise CheckpointError(f"{path} has no weights for {name!r} (has {sorted(payload['modules'])})")
        _load_module(module, payload["modules"][name], f"{path} [{name}]")
    for name, optimizer in (optimizers or {}).items():
        if name not in payload.get("optimizers", {}):
            raise CheckpointError(f"{path} has no optimizer state for {name!r}")
        optimizer.load_state_dict(payload["optimizers"][name])
    state = dict(payload.get("state", {}))
    if restore_rng and "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    return {**state, "config": payload.get("config", {})}


def load_weights(path: str | os.PathLike, module: nn.Module, name: str | None = None) -> None:
    """Load plain weights into ``module``: a bare state dict or one entry of a checkpoint."""
    path = Path(path)
    payload = _read_checkpoint(path, "cpu")
    if "modules" in payload:
        if name is None or name not in payload["modules"]:
            raise CheckpointError(f"{path} is a checkpoint; name one of {sorted(payload['modules'])}")
        payload = payload["modules"][name]
    _load_module(module, payload, str(path))


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weight of each item, 1 / (items of its class): both classes drawn equally often
    (the authors' ``use_sampler``). ``labels`` (N,) of 0 and 1; one class only gives equal weights."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return 1.0 / counts[labels]


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Seeded shuffling that can start mid-epoch (and shard across ranks).

    With ``weights`` (e.g. :func:`class_balanced_weights`) each epoch is ``size`` seeded draws
    with replacement in proportion to them, resumable the same way.

    Epoch ``e`` visits ``permutation(seed, e)``; ``start`` skips the first items, so a run
    resumed at global batch ``k`` sees the same items as one that never stopped. With
    ``num_replicas > 1`` each rank takes every ``num_replicas``-th item of the permutation
    (padded by wrapping so all ranks do the same number of steps).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        num_replicas: int = 1,
        weights: np.ndarray | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch, self.start = 0, 0
        self.probabilities = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (size,) or not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
                raise ValueError(f"sampling weights must be {size} finite non-negative numbers, not all 0")
            self.probabilities = weights / weights.sum()

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas) - self.start

    def __iter__(self) -> Iterator[int]:
        if self.probabilities is not None:  # weighted: an epoch is `size` draws with replacement
            order = np.random.default_rng([self.seed, self.epoch]).choice(self.size, self.size, p=self.probabilities)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        per_rank = -(-self.size // self.num_replicas)
        order = np.resize(order, per_rank * self.num_replicas)[self.rank :: self.num_replicas]
        return iter(order[self.start :].tolist())


def hardware_summary(device: torch.device | None = None) -> dict[str, Any]:
    """Where a number was produced: CPU model and cores, GPU name, torch version."""
    device = device or pick_device()
    cpu = platform.processor() or platform.machine()
    cpuinfo: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            cpuinfo.setdefault(key.strip(), value.strip())
    cpu = cpuinfo.get("model name", cpu)
    # "AMD EPYC" names several generations 4x apart in speed; family/model tell them apart.
    model_id = " ".join(f"{key} {cpuinfo[key]}" for key in ("cpu family", "model") if key in cpuinfo)
    summary = {
        "device": str(device),
        "cpu": cpu,
        "cpu_model_id": model_id or None,
        "cpu_bf16": cpu_bf16_instructions(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": precision(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
    return summary


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable ``key: saved -> current`` lines where two JSON-like configs differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(saved) | set(current)):
            lines += config_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return lines
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (with '+dirty' when it has uncommitted changes), or None."""
    repo = Path(repo or Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")
