"""Known-answer tests for persistent topology (RETA PTA): diagrams, images, loss gradients."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pytest
import torch

from reta.errors import RetaError
from reta.topology import (
    betti_curves,
    build_reference,
    class_cutoff,
    diagrams,
    diagrams_from_pairing,
    mutual_knn_mask,
    persistence_image,
    persistence_images_batched,
    persistence_pairing,
    signature,
    signature_distance,
    squared_distances,
)


def _circle(n: int) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([t.cos(), t.sin()], dim=1)


def _finite(dgm: torch.Tensor) -> np.ndarray:
    """Sorted (birth, death) rows of a finite diagram, for order-free comparison."""
    arr = np.asarray(dgm.detach(), dtype=np.float64).reshape(-1, 2)
    return arr[np.lexsort((arr[:, 1], arr[:, 0]))]


def _upper_edges(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(i, j) for i, j in torch.nonzero(torch.triu(mask)).tolist()}


def test_squared_distances_exact_diagonal_and_finite_gradient():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    dist = squared_distances(z)
    assert torch.equal(dist.diagonal(), torch.zeros(6, dtype=torch.float64))
    assert torch.equal(dist, dist.T)
    expected = ((z[:, None] - z[None]) ** 2).sum(-1)
    torch.testing.assert_close(dist, expected)
    dist.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_class_cutoff_is_max_squared_distance_and_one_when_degenerate():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    assert class_cutoff(x) == pytest.approx(10.0)
    assert class_cutoff(torch.ones(5, 3) * 0.3) == 1.0


def test_circle_has_one_dominant_h1_bar():
    gen = torch.Generator().manual_seed(0)
    z = _circle(24) + 0.05 * torch.randn(24, 2, generator=gen, dtype=torch.float64)
    _, h1 = diagrams(squared_distances(z), class_cutoff(z), k=23, infinite="drop")
    pers = (h1[:, 1] - h1[:, 0]).sort(descending=True).values
    assert pers[0] > 0.5
    assert (pers > 0.05).sum() == 1
    assert pers[0] > 20 * pers[1:].sum()


def test_circle_cycle_without_triangles_is_one_essential_h1_bar():
    z = _circle(24)
    kappa = class_cutoff(z)
    h0, h1 = diagrams(squared_distances(z), kappa, k=2, infinite="one")
    adjacent = (2 * math.sin(math.pi / 24)) ** 2 / kappa
    assert h0.shape == (24, 2)  # 23 merges along the cycle + one component
    torch.testing.assert_close(h1, torch.tensor([[adjacent, 1.0]], dtype=torch.float64))


def test_two_clusters_give_one_long_finite_h0_bar():
    gen = torch.Generator().manual_seed(0)
    a = 0.05 * torch.randn(10, 3, generator=gen, dtype=torch.float64)
    b = a[:, [1, 2, 0]] + torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)
    z = torch.cat([a, b])
    h0, _ = diagrams(squared_distances(z), class_cutoff(z), k=19, infinite="one")
    finite, essential = h0[:-1], h0[-1]
    torch.testing.assert_close(essential, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert finite.shape == (19, 2) and (finite[:, 0] == 0).all()
    deaths = finite[:, 1].sort(descending=True).values
    assert deaths[0] > 0.8 and deaths[0] > 100 * deaths[1]


def test_complete_graph_matches_gudhi_rips():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    dist = squared_distances(z)
    kappa = class_cutoff(z)
    h0, h1 = diagrams(dist, kappa, k=15, infinite="drop")

    rips = gudhi.RipsComplex(distance_matrix=(dist / kappa).numpy(), max_edge_length=1.0)
    st = rips.create_simplex_tree(max_dimension=2)
    st.compute_persistence(homology_coeff_field=2, min_persistence=0.0)
    for dim, ours in ((0, h0), (1, h1)):
        ref = st.persistence_intervals_in_dimension(dim)
        ref = ref[np.isfinite(ref[:, 1]) & (ref[:, 1] > ref[:, 0])]
        assert len(ref) > 0
        np.testing.assert_allclose(_finite(ours), _finite(torch.from_numpy(ref)), atol=1e-12)


def test_loss_gradient_matches_finite_differences_under_fixed_pairing():
    gen = torch.Generator().manual_seed(2)
    # A noisy circle in 3-D: general position, with a finite H1 bar so both bar ends get gradient.
    z0 = torch.cat([_circle(10), torch.zeros(10, 1, dtype=torch.float64)], dim=1)
    z0 = z0 + 0.1 * torch.randn(10, 3, generator=gen, dtype=torch.float64)
    kappa = class_cutoff(z0)
    pairing = persistence_pairing(squared_distances(z0), kappa, k=9)
    assert len(pairing.h0_death) == 9 and len(pairing.h1_birth) == 1
    ref0 = 0.1 * torch.rand(16, 16, generator=gen, dtype=torch.float64)
    ref1 = 0.1 * torch.rand(16, 16, generator=gen, dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        h0, h1 = diagrams_from_pairing(squared_distances(z), kappa, pairing, "one")
        pi = persistence_images_batched([h0, h1], grid=16)
        return signature_distance((pi[0], pi[1]), (ref0, ref1), gamma=0.7)

    z = z0.clone().requires_grad_(True)
    loss(z).backward()
    eps = 1e-6
    numeric = torch.zeros_like(z0)
    for idx in np.ndindex(*z0.shape):
        step = torch.zeros_like(z0)
        step[idx] = eps
        numeric[idx] = (loss(z0 + step) - loss(z0 - step)) / (2 * eps)
    assert z.grad.abs().max() > 1e-3
    torch.testing.assert_close(z.grad, numeric, rtol=1e-5, atol=1e-7)


def test_persistence_image_single_point_on_cell_centre():
    grid = 16
    b, p = (3 + 0.5) / grid, (9 + 0.5) / grid
    dgm = torch.tensor([[b, b + p]], dtype=torch.float64)
    img = persistence_image(dgm, grid=grid)
    assert img.shape == (grid, grid)
    assert divmod(int(img.argmax()), grid) == (3, 9)  # rows = birth, columns = persistence
    assert img[3, 9].item() == pytest.approx(p, rel=1e-12)


def test_persistence_image_zero_persistence_empty_and_batched():
    dgm = torch.tensor([[0.1, 0.4], [0.2, 0.9]])
    with_zero = torch.cat([dgm, torch.tensor([[0.3, 0.3], [0.0, 0.0]])])
    torch.testing.assert_close(persistence_image(with_zero), persistence_image(dgm))
    assert torch.equal(persistence_image(torch.zeros(0, 2)), torch.zeros(32, 32))

    dgms = [dgm, torch.zeros(0, 2), torch.tensor([[0.5, 0.7]])]
    batched = persistence_images_batched(dgms, grid=8, sigma=0.2)
    assert batched.shape == (3, 8, 8)
    for one, img in zip(dgms, batched):
        torch.testing.assert_close(img, persistence_image(one, grid=8, sigma=0.2))


def test_mutual_knn_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    dist = squared_distances(x)
    m1 = mutual_knn_mask(dist, 1)
    assert torch.equal(m1, m1.T) and not m1.diagonal().any()
    assert _upper_edges(m1) == {(0, 1)}
    assert _upper_edges(mutual_knn_mask(dist, 2)) == {(0, 1), (0, 2), (1, 2)}
    assert _upper_edges(mutual_knn_mask(dist, 10)) == _upper_edges(~torch.eye(4, dtype=torch.bool))


def test_mutual_knn_breaks_ties_by_lower_index():
    dist = squared_distances(torch.tensor([[0.0], [1.0], [2.0]]))
    # Point 1 is equidistant from 0 and 2 and picks 0, so only (0, 1) is mutual.
    assert torch.nonzero(torch.triu(mutual_knn_mask(dist, 1))).tolist() == [[0, 1]]


@pytest.mark.parametrize("infinite", ["one", "max_edge", "drop"])
def test_infinite_bar_policies(infinite):
    # A 1 x 1.2 rectangle with k=2 is a 4-cycle without diagonals: its loop never dies.
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.2], [0.0, 1.2]], dtype=torch.float64)
    h0, h1 = diagrams(squared_distances(z), kappa=4.0, k=2, infinite=infinite)
    short, long = 0.25, 1.44 / 4
    np.testing.assert_allclose(_finite(h0[:3]), [[0, short], [0, short], [0, long]])
    end = {"one": 1.0, "max_edge": long}.get(infinite)
    if end is None:
        assert h0.shape == (3, 2) and h1.shape == (0, 2)
    else:
        np.testing.assert_allclose(h0[3:].numpy(), [[0.0, end]])
        np.testing.assert_allclose(h1.numpy(), [[long, end]])


def test_unknown_infinite_policy_is_rejected():
    with pytest.raises(RetaError):
        diagrams(squared_distances(torch.randn(4, 2)), 1.0, 2, infinite="forever")


def test_betti_curves_hand_made():
    dgm0 = torch.tensor([[0.0, 0.2], [0.0, 0.5], [0.0, 1.0]])
    dgm1 = torch.tensor([[0.3, 0.6]])
    s = torch.tensor([0.0, 0.2, 0.3, 0.55, 0.6, 1.0])
    b0, b1 = betti_curves(dgm0, dgm1, s)
    assert b0.tolist() == [3, 2, 2, 1, 1, 0]
    assert b1.tolist() == [0, 0, 1, 1, 0, 0]


def test_class_terms_reference_and_loss():
    gen = torch.Generator().manual_seed(3)
    real = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    kappa = class_cutoff(real)
    refs = [build_reference(real, 10, 3, k=4, kappa=kappa, generator=torch.Generator().manual_seed(5), grid=8)
            for _ in range(2)]
    ref0, ref1 = refs[0].signature
    assert ref0.shape == ref1.shape == (8, 8) and not ref0.requires_grad and ref1.abs().sum() > 0
    assert torch.equal(ref0, refs[1].signature[0]) and torch.equal(ref1, refs[1].signature[1])
    assert refs[0].baseline > 0 and refs[0].n == 10

    z = real[:10].clone().requires_grad_(True)
    pi0, pi1 = signature(z, kappa, k=4, distance="image", grid=8, infinite="one")
    assert signature_distance((pi0, pi1), (pi0.detach(), pi1.detach())).item() == 0.0
    signature_distance((pi0, pi1), (ref0, ref1), gamma=2.0).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(RetaError):
        build_reference(real, 41, 2, 4, kappa, gen, grid=8)
