"""Atomic file writes: a reader never sees a half-written file.

Everything the project writes (prepared arrays, CSV and JSON, checkpoints, figures)
goes through :func:`atomic_path`: the writer fills a temporary sibling and the
finished file is moved into place with ``os.replace`` (atomic on POSIX). Folders built
whole (a prepared dataset, a phantom scan) are filled in a :func:`temporary_folder`
beside their target, whose name records the host and process; one left by a killed
process is removed by :func:`remove_stale_temporaries` on the next run.

JSON is written strictly (RFC 8259): a NaN or infinity becomes ``null``, and the
record's ``null_values`` entry says which values those were and why (:func:`write_json`);
:func:`read_json` puts them back, so a reader sees the numbers that were written.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "exclusive",
    "write_json",
    "read_json",
    "write_csv",
    "content_id",
    "temporary_folder",
    "remove_stale_temporaries",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``suffix`` defaults to ``path``'s own suffix so libraries that dispatch on the
    extension (numpy, matplotlib, nibabel) write the right format. On error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except OSError as err:
        if err.filename is None:  # e.g. a full disk, raised by a writer that knows no file name
            raise type(err)(err.errno, f"{err.strerror or err} while writing {path}", str(path)) from err
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


NULL_REASON = "not defined on this data (e.g. a metric over no qualifying slice, or an AUC of one class)"


def _finite_or_null(obj: Any, where: str, nulls: dict[str, str]) -> Any:
    """``obj`` with every NaN / infinity replaced by None, recorded in ``nulls`` by JSON path."""
    if isinstance(obj, float) and not math.isfinite(obj):
        nulls[where or "."] = f"{obj!r}: {NULL_REASON}" if math.isnan(obj) else f"{obj!r}: infinite"
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), nulls) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", nulls) for i, v in enumerate(obj)]
    return obj


def _strict_record(record: Any) -> Any:
    """``record`` without NaN / infinities; a dict gains ``null_values`` when it had any."""
    nulls: dict[str, str] = {}
    clean = _finite_or_null(record, "", nulls)
    if nulls and isinstance(clean, dict):
        clean["null_values"] = nulls
    return clean


def _restore(obj: Any, where: str, nulls: dict[str, str]) -> Any:
    """:func:`_finite_or_null` undone: the values ``nulls`` lists (by JSON path) are numbers again."""
    if obj is None and where in nulls:
        with contextlib.suppress(ValueError, AttributeError):
            return float(nulls[where].split(":", 1)[0])  # 'nan', 'inf' or '-inf'
    if isinstance(obj, dict):
        return {k: _restore(v, f"{where}.{k}" if where else str(k), nulls) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, f"{where}[{i}]", nulls) for i, v in enumerate(obj)]
    return obj


def _read_record(record: Any) -> Any:
    if isinstance(record, dict) and isinstance(record.get("null_values"), dict):
        nulls = record.pop("null_values")
        return _restore(record, "", nulls)
    return record


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON: NaN and infinities become ``null`` (bare ``NaN`` is not JSON).

    The record holding them — ``obj`` itself, or each dict of a list such as a training
    history — gains ``null_values``: {JSON path within it: what the value was and why it
    has none}. :func:`read_json` restores them.
    """
    records = [_strict_record(r) for r in obj] if isinstance(obj, (list, tuple)) else _strict_record(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(records, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON at ``path``, with the numbers :func:`write_json` wrote as ``null`` put back."""
    path = Path(path)
    try:
        loaded = json.loads(path.read_text())
        return [_read_record(r) for r in loaded] if isinstance(loaded, list) else _read_record(loaded)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing JSON file: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def write_csv(
    path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: list[str], delimiter: str = ","
) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def content_id(paths: Iterable[str | os.PathLike]) -> str:
    """``sha256:<hex>`` of the files' names and bytes, in the order given: the identity of
    data that survives copying or moving it (paths and modification times do not)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) for the block.

    The holder writes its host, process id and ``what`` into the file; a second process
    says who holds it (one line on stderr, when ``what`` is given) and waits for it. The
    lock goes with the process, so a killed holder frees it. Where ``fcntl`` does not
    exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if what is not None:
                handle.seek(0)
                holder = " ".join(handle.read().split()) or "another process"
                print(f"waiting for {lock_path.parent}: {holder} is using it", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if what is not None:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{what} (pid {os.getpid()} on {socket.gethostname()})\n")
                handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_OWNER = f"{re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname())}-{os.getpid()}"


def _temporary_pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name)}\.(building|old)-(?:(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-)?[^-]*$")


def temporary_folder(target: str | os.PathLike, kind: str = "building") -> Path:
    """A new empty folder ``.<name>.<kind>-<host>-<pid>-<random>`` beside ``target``, with the
    usual permissions (``mkdtemp`` makes 0700, which the finished folder would keep)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{_OWNER}-", dir=target.parent))
    os.chmod(folder, 0o777 & ~_UMASK)
    return folder


def _alive(host: str | None, pid: str | None) -> bool:
    """Whether the process that made a temporary folder may still be writing it."""
    if host is None or pid is None:
        return False  # made before names recorded their owner: from an earlier, finished run
    if host != _OWNER.rsplit("-", 1)[0]:
        return True  # another machine's (shared file system): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders of ``target`` (:func:`temporary_folder`) whose process is
    gone (killed mid-write); returns them. A killed swap can leave the old ``target`` only
    inside its ``.old-`` folder: then it is put back in place instead of removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = _temporary_pattern(target)
    removed = []
    for entry in sorted(target.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir() or _alive(match["host"], match["pid"]):
            continue
        kept = entry / target.name
        if match[1] == "old" and kept.exists() and not target.exists():
            os.replace(kept, target)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
