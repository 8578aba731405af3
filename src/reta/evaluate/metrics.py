"""DD-Ranking scores (method-reference §7): HLR, IOR, LRS and ARS, computed on FRACTIONS.

DD-Ranking v0.2.0 feeds percentages into the exp-normalisation, so its alpha is in percentage
points and LRS saturates (§7.2). Here every accuracy is a fraction in [0, 1] (what
`reta.evaluate.train` returns), alpha and beta lie in [-1, 1], and LRS/ARS come back as
fractions in [0, 1]: callers multiply by 100 for display and say so next to the number.
"""

from __future__ import annotations

import math

from reta.errors import RetaError


def _fraction(name: str, value: float, low: float = 0.0) -> float:
    """Reject percentages passed where fractions belong (the §7.2 pitfall)."""
    if not low <= value <= 1.0:
        hint = "; it looks like a percentage, divide by 100" if 1.0 < abs(value) <= 100.0 else ""
        raise RetaError(f"{name}={value}: expected a fraction in [{low:g}, 1]{hint}")
    return float(value)


def exp_normalise(a: float) -> float:
    """(e^a - e^-1) / (e - e^-1): maps a in [-1, 1] monotonically onto [0, 1], with 0 -> 0.2689."""
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hlr(acc_real_hard: float, acc_syn_hard: float) -> float:
    """Hard-label recovery: Acc(full real data, hard) - Acc(distilled, hard); lower is better."""
    return _fraction("acc_real_hard", acc_real_hard) - _fraction("acc_syn_hard", acc_syn_hard)


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over random: Acc(distilled) - Acc(random real subset, same IPC), same evaluator."""
    return _fraction("acc_syn", acc_syn) - _fraction("acc_random", acc_random)


def lrs(hlr_value: float, ior_value: float, w: float = 0.5) -> float:
    """Label-robust score as a fraction: exp_normalise(w * IOR - (1 - w) * HLR)."""
    _fraction("w", w)
    a = w * _fraction("ior", ior_value, low=-1.0) - (1.0 - w) * _fraction("hlr", hlr_value, low=-1.0)
    return exp_normalise(a)


def ars(acc_syn_aug: float, acc_random_aug: float, acc_syn_noaug: float, acc_random_noaug: float,
        gamma: float = 0.5) -> float:
    """Augmentation-robust score as a fraction: exp_normalise(gamma * IOR_aug + (1 - gamma) * IOR_noaug)."""
    _fraction("gamma", gamma)
    beta = gamma * ior(acc_syn_aug, acc_random_aug) + (1.0 - gamma) * ior(acc_syn_noaug, acc_random_noaug)
    return exp_normalise(beta)
