"""DRC scoring as pure functions (RETA §1.2, resolutions §5.4-5.5).

complexity c(o): on [0,1] images at the stage size, 3x3 binomial blur (replicate padding),
central differences, energy summed over channels, population variance over pixels.
choice: fit = ||q - z||^2 on L2-normalised features; keep the M best-fit candidates; min-max
normalise fit and complexity inside them; J = (1-lam)*fit + lam*complexity; argmin.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])


def complexity(images01: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) images in [0,1] -> (N,) variance over pixels of the smoothed squared-gradient energy."""
    x = images01.float()
    c = x.shape[1]
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]) / 16.0
    k = k.to(x.device).expand(c, 1, 3, 3)
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    padded = F.pad(smooth, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    energy = (gx ** 2 + gy ** 2).sum(dim=1)
    return energy.flatten(1).var(dim=1, unbiased=False)


def squared_fit(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(n,d), (m,d) L2-normalised -> (n,m) squared distances, = 2 - 2 q.z, clamped to [0, 4]."""
    return (2.0 - 2.0 * queries.float() @ candidates.float().T).clamp(0.0, 4.0)


def _minmax(v: torch.Tensor) -> torch.Tensor:
    lo, hi = v.min(dim=-1, keepdim=True).values, v.max(dim=-1, keepdim=True).values
    return torch.where(hi > lo, (v - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(v))


def retrieval_scores(fit: torch.Tensor, comp: torch.Tensor, lam: float, prefilter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: the M best-fit candidate indices (n,M) and their scores J (n,M).

    fit (n,m) squared feature distances, comp (m,) complexities of the candidates.
    """
    m = fit.shape[1]
    top = min(prefilter, m) if prefilter > 0 else m
    fit_top, idx = fit.topk(top, dim=1, largest=False, sorted=True)  # ties: lower index first is not guaranteed
    order = torch.argsort(idx, dim=1, stable=True)
    idx, fit_top = idx.gather(1, order), fit_top.gather(1, order)  # index order makes ties deterministic
    score = (1 - lam) * _minmax(fit_top) + lam * _minmax(comp[idx])
    return idx, score


def choose(fit: torch.Tensor, comp: torch.Tensor, lam: float, prefilter: int,
           distinct: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool index chosen for every query (n,), its score J (n,)).

    `distinct`: no two queries share a candidate (minimum-cost assignment on J).
    """
    idx, score = retrieval_scores(fit, comp, lam, prefilter)
    if not distinct:
        best = score.argmin(dim=1, keepdim=True)
        return idx.gather(1, best).squeeze(1), score.gather(1, best).squeeze(1)
    n, m = fit.shape
    if n > m:
        raise ValueError(f"distinct anchors need a pool of at least {n} candidates, the class has {m}")
    # Candidates outside a query's prefilter cost more than any inside (J <= 1), ranked by fit,
    # so the assignment only leaves the prefilter when it must.
    cost = 2.0 + fit.double().cpu().numpy()
    rows = np.repeat(np.arange(n), idx.shape[1])
    cost[rows, idx.cpu().numpy().ravel()] = score.double().cpu().numpy().ravel()
    r, c = linear_sum_assignment(cost)
    out = np.empty(n, dtype=np.int64)
    out[r] = c
    return torch.from_numpy(out), torch.from_numpy(cost[np.arange(n), out]).float()


def shared_anchor_fraction(choices: np.ndarray) -> float:
    """Fraction of images whose anchor is also chosen by another image of the same group."""
    if len(choices) == 0:
        return 0.0
    _, inverse, counts = np.unique(choices, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).mean())
