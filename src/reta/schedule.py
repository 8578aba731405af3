"""Learning-rate schedules shared by squeeze, recover and student training."""

from __future__ import annotations

import math


def cosine_lr(base: float, step: int, total: int, stretch: float = 1.0) -> float:
    """base * 0.5 * (1 + cos(pi * step / (total * stretch))); stretch 2 decays only to half (RDED/FADRM eval)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total * stretch)))
