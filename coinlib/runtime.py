"""What every training or evaluation run shares: device, precision, seeding, checkpoints.

- :func:`pick_device` chooses CUDA when present, else the CPU; :func:`autocast` gives bf16
  autocast on CUDA and a no-op elsewhere, so the maths is the same code on both.
- Checkpoints are ``state_dict``s plus the run's config as JSON (STYLE.md: diffusers),
  written atomically and loaded with ``weights_only=True``; a wrong shape or a missing file
  raises an error that names the file.
- :class:`ResumableSampler` gives a seeded permutation per epoch that can start mid-epoch,
  so an interrupted run resumes on exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .files import atomic_path, write_json

__all__ = [
    "pick_device",
    "autocast",
    "seed_everything",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "CheckpointError",
    "ResumableSampler",
    "hardware_summary",
    "git_commit",
    "config_differences",
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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; the CPU path runs in fp32 (bit-reproducible for the resume test)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None


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
) -> dict[str, Any]:
    """Load weights (and optimizer states) saved by :func:`save_checkpoint`; return ``state``.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, lacks a
    module, or holds tensors of the wrong shape.
    """
    path = Path(path)
    payload = _read_checkpoint(path, map_location)
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


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Seeded shuffling that can start mid-epoch (and shard across ranks).

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
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas) - self.start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
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
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    summary = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
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
