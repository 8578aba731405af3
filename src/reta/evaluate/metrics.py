"""DD-Ranking scores (method-reference §7) in two labelled conventions.

reta's convention (`hlr`, `ior`, `lrs`, `ars`): every accuracy is a FRACTION in [0, 1] (what
`reta.evaluate.train` returns), alpha and beta lie in [-1, 1] as the exp-normalisation intends,
LRS/ARS come back as fractions in [0, 1] (callers multiply by 100 for display and say so), LRS is
taken of accuracies averaged over seeds, and the real reference Acc(real, hard) is the teacher's
test top-1 (it was trained on the full training split with hard labels).

DD-Ranking 0.2.0's convention (`ddranking_lrs`), for comparing with its leaderboard: accuracies
in PERCENT, HLR and IOR in percentage points fed to exp() as they are (so alpha is in percentage
points and LRS saturates or goes negative, §7.2), one LRS per evaluation round and their mean
reported, and the real reference a student trained on the full real data. Same accuracies, very
different numbers: syn hard 28.80, full 38.80, syn soft 22.00, random 18.20 give LRS 0.2560 here
and -0.1374 in DD-Ranking.
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


def ddranking_lrs(acc_real_hard, acc_syn_hard, acc_syn, acc_random, w: float = 0.5) -> dict:
    """DD-Ranking 0.2.0's HLR, IOR and LRS, as `LabelRobustScoreSoft.compute_metrics` prints them.

    Arguments are accuracies in PERCENT, each a number or one per evaluation round (same length);
    acc_real_hard is its real reference, a student trained on the full real data. Returns the
    per-round means of hlr and ior (percentage points) and of lrs (the raw exp-normalised value of
    alpha in percentage points, not multiplied by 100), as DD-Ranking averages LRS over rounds.
    """
    rounds = [acc_real_hard, acc_syn_hard, acc_syn, acc_random]
    n = max(len(r) if isinstance(r, (list, tuple)) else 1 for r in rounds)
    rounds = [list(r) if isinstance(r, (list, tuple)) else [r] * n for r in rounds]
    if any(len(r) != n for r in rounds):
        raise RetaError(f"ddranking_lrs: every accuracy needs one value per round ({n})")
    for name, values in zip(("acc_real_hard", "acc_syn_hard", "acc_syn", "acc_random"), rounds):
        if any(not 0.0 <= v <= 100.0 for v in values):
            raise RetaError(f"{name}={values}: DD-Ranking's convention takes percentages in [0, 100]")
    hlrs = [real - syn for real, syn in zip(rounds[0], rounds[1])]
    iors = [syn - rdm for syn, rdm in zip(rounds[2], rounds[3])]
    lrss = [exp_normalise(w * i - (1.0 - w) * h) for h, i in zip(hlrs, iors)]
    return {"hlr": sum(hlrs) / n, "ior": sum(iors) / n, "lrs": sum(lrss) / n}
