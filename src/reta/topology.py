"""Persistent topology of per-class feature clouds (RETA PTA, method-reference §5.7-5.10).

Per class, the (L2-normalised teacher) features `z` of n points form a point cloud. We build a
mutual k-NN graph on squared distances, filter it as a flag (clique) complex with edge values
`f_ij = D_ij / kappa` (edges with f > 1 are absent), and compute H0/H1 persistence over Z2 with
gudhi. Every finite bar end is the filtration value of one edge, so a diagram is differentiable:
the pairing (which edge gives which bar end) is computed on detached values, and the bar ends
are then read off the live `dist / kappa` at the stored edges. Diagrams become persistence
images, and the loss compares the synthetic set's images with a reference built from real data.

The pairing is a separate, non-differentiable step (`persistence_pairing`) so a caller can run
it off the critical path and apply it later (`diagrams_from_pairing`).

Two signatures of a cloud's topology can be compared with a real reference:
* `image` — the paper's H0/H1 persistence images, squared Frobenius distance;
* `sorted` — the sorted H0 deaths and sorted H1 persistences. With equal cardinalities the
  squared distance of sorted vectors is (n times) the squared 2-Wasserstein distance between the
  two bar-length distributions, and the W2 barycentre of real subsets is the mean of their
  sorted vectors: its optimum is a typical real cloud, and a near-duplicate pair (an H0 death
  near 0) costs exactly what it deviates from the real smallest merge distance.
A `Reference` also carries the expected distance of a real subset to it (`baseline`), so a loss
divided by it reads the same (a real subset scores ~1) at any resolution, grid or cloud size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import gudhi
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from reta.errors import RetaError

INFINITE_POLICIES = ("one", "max_edge", "drop")

# Rows of real features per block in `class_cutoff`, so a large class never materialises N x N.
_CUTOFF_BLOCK = 1024


def _cross_squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances [n, m] between rows of a [n, d] and b [m, d], clamped >= 0."""
    # Gram trick: O(n m) memory instead of the O(n m d) of broadcasting; no sqrt, so smooth.
    sq_a = (a * a).sum(dim=1)
    sq_b = (b * b).sum(dim=1)
    return (sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)).clamp_min(0.0)


def squared_distances(z: Tensor) -> Tensor:
    """Pairwise squared distances D [n, n] of z [n, d]: symmetric, exact zeros on the diagonal.

    Differentiable with finite gradients everywhere (the diagonal is a constant 0).
    """
    d = _cross_squared_distances(z, z)
    # matmul need not be bit-symmetric; the pairing and the mask assume D == D.T.
    d = 0.5 * (d + d.T)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return d.masked_fill(eye, 0.0)


@torch.no_grad()
def class_cutoff(real_features: Tensor) -> float:
    """kappa = the largest squared distance among real_features [N, d]; 1.0 if it is 0."""
    x = real_features.detach()
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    # Rounding in the Gram trick leaves ~1e-7 between identical rows; test identity exactly.
    if x.shape[0] < 2 or bool((x == x[0]).all()):
        return 1.0
    kappa = max(
        _cross_squared_distances(x[i : i + _CUTOFF_BLOCK], x).max().item()
        for i in range(0, x.shape[0], _CUTOFF_BLOCK)
    )
    return kappa if kappa > 0.0 else 1.0


@torch.no_grad()
def mutual_knn_mask(dist: Tensor, k: int) -> Tensor:
    """Mutual k-NN adjacency [n, n] (bool) from squared distances dist [n, n].

    Edge (i, j) iff j is among the k_eff = min(k, n-1) nearest neighbours of i and vice versa.
    Symmetric, False on the diagonal. Ties are broken by the lower index (stable sort).
    """
    n = dist.shape[0]
    mask = torch.zeros((n, n), dtype=torch.bool, device=dist.device)
    k_eff = min(k, n - 1)
    if k_eff <= 0:
        return mask
    d = dist.detach().clone()
    d.fill_diagonal_(float("inf"))
    nearest = torch.sort(d, dim=1, stable=True).indices[:, :k_eff]
    mask.scatter_(1, nearest, True)
    return mask & mask.T


@dataclass(frozen=True)
class PersistencePairing:
    """Which edge gives each bar end. Edges are LongTensors [m, 2] of vertex indices (CPU).

    Finite H0 bars are born at 0 and die at their merge edge; H1 bars are born at `h1_birth`
    and (if finite) die at `h1_death`. Essential H0 bars (one per connected component) are born
    at 0; essential H1 bars at `h1_essential_birth`. `max_edge` is the largest filtration value
    of any edge in the graph (1.0 if the graph has no edges), the death for policy "max_edge".
    """

    h0_death: Tensor  # [m0, 2]
    h0_essential: int
    h1_birth: Tensor  # [m1, 2]
    h1_death: Tensor  # [m1, 2]
    h1_essential_birth: Tensor  # [e1, 2]
    max_edge: float


def _edges(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64).reshape(-1, 2))


def persistence_pairing(dist: Tensor | np.ndarray, kappa: float, k: int) -> PersistencePairing:
    """Non-differentiable H0/H1 pairing of the mutual k-NN flag filtration of dist [n, n].

    Vertices enter at 0, mutual k-NN edges at D_ij / kappa (absent if > 1), triangles at the
    max of their edges. Zero-length bars are dropped.
    """
    if kappa <= 0.0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    d = torch.as_tensor(dist).detach().to(device="cpu", dtype=torch.float64)
    f = (d / kappa).numpy()
    mask = mutual_knn_mask(d, k).numpy()
    # Absent edges are +inf so that create_from_array's max_filtration skips them with f > 1.
    filt = np.where(mask, f, np.inf)
    np.fill_diagonal(filt, 0.0)
    st = gudhi.SimplexTree.create_from_array(filt, max_filtration=1.0)
    st.expansion(2)
    # gudhi skips the top dimension unless asked; without triangles that top dimension is H1
    # (or H0 without edges), which we need. With triangles, H2 is not worth computing.
    st.compute_persistence(
        homology_coeff_field=2, min_persistence=0.0, persistence_dim_max=st.dimension() < 2
    )
    fin0, fin_hi, ess0, ess_hi = st.flag_persistence_generators()

    h0_death = np.asarray(fin0, dtype=np.int64).reshape(-1, 3)[:, 1:]
    h0_death = h0_death[f[h0_death[:, 0], h0_death[:, 1]] > 0.0]
    h1 = np.asarray(fin_hi[0] if len(fin_hi) else [], dtype=np.int64).reshape(-1, 4)
    h1 = h1[f[h1[:, 2], h1[:, 3]] > f[h1[:, 0], h1[:, 1]]]
    present = f[np.triu(mask, 1) & (f <= 1.0)]
    return PersistencePairing(
        h0_death=_edges(h0_death),
        h0_essential=len(ess0),
        h1_birth=_edges(h1[:, :2]),
        h1_death=_edges(h1[:, 2:]),
        h1_essential_birth=_edges(ess_hi[0] if len(ess_hi) else []),
        max_edge=float(present.max()) if present.size else 1.0,
    )


def _check_policy(infinite: str) -> None:
    if infinite not in INFINITE_POLICIES:
        allowed = "|".join(INFINITE_POLICIES)
        raise RetaError(f"infinite-bar policy must be one of {allowed}, got {infinite!r}")


def diagrams_from_pairing(
    dist: Tensor, kappa: float, pairing: PersistencePairing, infinite: str = "one"
) -> tuple[Tensor, Tensor]:
    """(H0 [m0, 2], H1 [m1, 2]) diagrams of (birth, death) rows, differentiable w.r.t. dist.

    Bar ends are read off the live `dist / kappa` at the pairing's edges. Essential bars die at
    1.0 ("one"), at `pairing.max_edge` ("max_edge"), or are removed ("drop"); finite rows come
    first, essential rows last.
    """
    _check_policy(infinite)
    f = dist / kappa

    def at(edges: Tensor) -> Tensor:
        edges = edges.to(f.device)
        return f[edges[:, 0], edges[:, 1]]

    d0 = at(pairing.h0_death)
    h0 = [torch.stack([torch.zeros_like(d0), d0], dim=1)]
    h1 = [torch.stack([at(pairing.h1_birth), at(pairing.h1_death)], dim=1)]
    if infinite != "drop":
        end = 1.0 if infinite == "one" else pairing.max_edge
        ess0 = f.new_tensor([[0.0, end]]).expand(pairing.h0_essential, 2)
        b1 = at(pairing.h1_essential_birth)
        h0.append(ess0)
        h1.append(torch.stack([b1, torch.full_like(b1, end)], dim=1))
    return torch.cat(h0), torch.cat(h1)


def diagrams(dist: Tensor, kappa: float, k: int, infinite: str = "one") -> tuple[Tensor, Tensor]:
    """Pairing + differentiable diagrams of squared distances dist [n, n] in one call."""
    _check_policy(infinite)
    return diagrams_from_pairing(dist, kappa, persistence_pairing(dist, kappa, k), infinite)


def persistence_images_batched(
    dgms: Sequence[Tensor] | Tensor, grid: int = 32, sigma: float | None = None
) -> Tensor:
    """Persistence images [B, G, G] of B diagrams (a list of [m_i, 2] or a padded [B, M, 2]).

    Axis 1 (rows) is birth, axis 2 (columns) is persistence p = death - birth; cell (a, c) is
    centred at ((a + 0.5) / G, (c + 0.5) / G) on [0, 1]^2. Each bar adds p * exp(-r^2 / (2
    sigma^2)) (unnormalised Gaussian, sigma = 1/G by default). Ragged lists are zero-padded:
    a (0, 0) row has p = 0 and so contributes nothing.
    """
    pts = dgms if isinstance(dgms, Tensor) else pad_sequence(list(dgms), batch_first=True)
    sigma = 1.0 / grid if sigma is None else sigma
    birth, pers = pts[..., 0], pts[..., 1] - pts[..., 0]
    centres = (torch.arange(grid, dtype=pts.dtype, device=pts.device) + 0.5) / grid
    # The Gaussian factorises over the two axes: B*M*G work per axis, one contraction.
    gb = torch.exp(-((centres - birth[..., None]) ** 2) / (2.0 * sigma**2))
    gp = torch.exp(-((centres - pers[..., None]) ** 2) / (2.0 * sigma**2))
    return torch.einsum("bm,bma,bmc->bac", pers, gb, gp)


def persistence_image(dgm: Tensor, grid: int = 32, sigma: float | None = None) -> Tensor:
    """Persistence image [G, G] of one diagram [m, 2]; see `persistence_images_batched`."""
    return persistence_images_batched(dgm[None], grid, sigma)[0]


def betti_curves(dgm0: Tensor, dgm1: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Betti numbers (beta_0 [t], beta_1 [t]) at thresholds [t]: bars with birth <= s < death."""

    def curve(dgm: Tensor) -> Tensor:
        s = thresholds[:, None]
        return ((dgm[None, :, 0] <= s) & (s < dgm[None, :, 1])).sum(dim=1)

    return curve(dgm0), curve(dgm1)


SIGNATURES = ("image", "sorted")


def sorted_bars(h0: Tensor, h1: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(n,) ascending H0 deaths, padded with 1.0 for bars the graph never merges; (m,) descending H1 persistences."""
    deaths = h0[:, 1]
    if len(deaths) < n:
        deaths = torch.cat([deaths, deaths.new_ones(n - len(deaths))])
    return torch.sort(deaths[:n]).values, torch.sort(h1[:, 1] - h1[:, 0], descending=True).values


def signature(z: Tensor, kappa: float, k: int, distance: str = "image", grid: int = 32,
              infinite: str = "one") -> tuple[Tensor, Tensor]:
    """Differentiable (H0, H1) signature of one cloud z [n, d]: persistence images or sorted bars."""
    h0, h1 = diagrams(squared_distances(z), kappa, k, infinite)
    if distance == "image":
        pi = persistence_images_batched([h0, h1], grid)
        return pi[0], pi[1]
    if distance == "sorted":
        return sorted_bars(h0, h1, z.shape[0])
    raise RetaError(f"topology distance must be one of {'|'.join(SIGNATURES)}, got {distance!r}")


def _pad_to(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad the shorter of two 1-D vectors: a missing bar is a bar of length 0 (on the diagonal)."""
    if a.dim() != 1 or len(a) == len(b):
        return a, b
    m = max(len(a), len(b))
    return F.pad(a, (0, m - len(a))), F.pad(b, (0, m - len(b)))


def signature_distance(sig: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor], gamma: float = 1.0) -> Tensor:
    """||H0 - H0_ref||^2 + gamma ||H1 - H1_ref||^2 (vectors zero-padded to a common length)."""
    h1, r1 = _pad_to(sig[1], ref[1].to(sig[1]))
    return (sig[0] - ref[0].to(sig[0])).square().sum() + gamma * (h1 - r1).square().sum()


def class_loss(distance: Tensor, baseline: float, margin: float = 0.0, normalise: bool = True) -> Tensor:
    """A class's topology loss from its signature distance: hinged at `margin` real spreads
    (max(0, d - margin*baseline)), so a cloud as close to the real barycentre as a typical real
    subset is not pushed further, then divided by the baseline if `normalise`."""
    if margin:
        distance = F.relu(distance - margin * baseline)
    return distance / baseline if normalise else distance


@dataclass(frozen=True)
class Reference:
    """A class's real topology for clouds of `n` points: mean signature and a real subset's expected distance."""

    kappa: float
    signature: tuple[Tensor, Tensor]
    baseline: float
    n: int


def _mean_signature(sigs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    h0 = torch.stack([s[0] for s in sigs]).mean(dim=0)
    if sigs[0][1].dim() == 1:  # sorted bars: ragged H1, pad with zero-length bars
        m = max(len(s[1]) for s in sigs)
        h1 = torch.stack([F.pad(s[1], (0, m - len(s[1]))) for s in sigs]).mean(dim=0)
    else:
        h1 = torch.stack([s[1] for s in sigs]).mean(dim=0)
    return h0, h1


@torch.no_grad()
def build_reference(real_features: Tensor, n: int, num_subsets: int, k: int, kappa: float, generator: torch.Generator,
                    distance: str = "image", grid: int = 32, infinite: str = "one", gamma: float = 1.0) -> Reference:
    """Mean signature of `num_subsets` random size-n real subsets, and the unbiased expected
    distance of a fresh real subset to it (each subset against the mean of the others, averaged)."""
    total = real_features.shape[0]
    if not 0 < n <= total:
        raise RetaError(f"a reference subset needs 1..{total} real points (the class size), got n={n}")
    if num_subsets < 2:
        raise RetaError(f"the reference needs at least two real subsets, got num_subsets={num_subsets}")
    sigs = []
    for _ in range(num_subsets):
        idx = torch.randperm(total, generator=generator, device=generator.device)[:n]
        sigs.append(signature(real_features[idx.to(real_features.device)], kappa, k, distance, grid, infinite))
    mean = _mean_signature(sigs)
    q = num_subsets
    # Subset j against the mean of the other q-1 has expected distance V*q/(q-1) (V: a subset's
    # variance about the true mean); a fresh subset against the mean of all q has V*(q+1)/q.
    loo = [float(signature_distance(s, _mean_signature(sigs[:j] + sigs[j + 1:]), gamma)) for j, s in enumerate(sigs)]
    loo = [d * (q * q - 1) / (q * q) for d in loo]
    baseline = sum(loo) / q
    return Reference(kappa=kappa, signature=mean, baseline=baseline if baseline > 1e-12 else 1.0, n=n)
