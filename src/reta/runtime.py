"""Device, precision and seeding in one place, so every stage runs the same way on CPU and GPU."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from reta.errors import RetaError


def device() -> torch.device:
    if os.environ.get("RETA_DEVICE"):
        return torch.device(os.environ["RETA_DEVICE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """auto: fp16 on GPU (bf16 where supported), bf16 on CPU when the CPU has native bf16, else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise RetaError(f"precision={precision!r}: use auto, fp32, bf16 or fp16")
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read() or "amx_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def autocast(dtype: torch.dtype | None, dev: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed global RNGs (for library code we do not control) and return a generator for ours."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from a tuple (run seed, stage, class, ...): any item can be regenerated alone."""
    import hashlib

    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def peak_memory_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
