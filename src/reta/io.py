"""Atomic file output, run records and hashing.

Every artifact is written to a temporary name in the destination folder and renamed into
place, so an interrupted run never leaves a file that looks complete. A folder-level
artifact is marked complete only by its final `manifest.json`/`meta.json`, written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A reta-specific name, so cleanup (reta.outdir) can never mistake a user's file for ours.
    fd, tmp = tempfile.mkstemp(prefix=f".reta-tmp.{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the artifact the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    from reta.errors import RetaError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RetaError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise RetaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is corrupt, regenerate it") from None


def to_jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item") and hasattr(obj, "dim") and obj.dim() == 0:  # 0-d torch tensor
        return obj.item()
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()


def versions() -> dict[str, str]:
    """Versions of the interpreter and of every library that changes numbers."""
    import torch

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__}
    for name in ("torchvision", "numpy", "gudhi", "safetensors", "reta"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is recorded, not fatal
            out[name] = "absent"
    from reta.runtime import cpu_has_bf16

    # precision=auto resolves to bf16 on a CPU with native bf16 and to fp32 without: other numbers
    out["cpu_native_bf16"] = str(cpu_has_bf16())
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - not a git checkout (installed wheel)
        return "unknown"


class Timer:
    """Named wall-clock accumulators: `with timer("drc"): ...`; `timer.totals` in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
