"""DRC scoring: known answers on hand-made pools, and the complexity proxy's ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reta.retrieval.score import choose, complexity, retrieval_scores, shared_anchor_fraction, squared_fit


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_complexity_orders_flat_smooth_checkerboard():
    size = 32
    flat = torch.full((1, 3, size, size), 0.5)
    ramp = torch.linspace(0, 1, size)
    smooth = (0.5 + 0.5 * torch.sin(2 * math.pi * ramp)).view(1, 1, 1, size).expand(1, 3, size, size)
    i = torch.arange(size)
    checker = (((i[:, None] // 4) + (i[None] // 4)) % 2).float().expand(1, 3, size, size)
    c = complexity(torch.cat([flat, smooth, checker]))
    assert c[0] == 0.0
    assert c[0] < c[1] < c[2]


def test_squared_fit_is_squared_distance_of_unit_vectors():
    q, z = _unit([1, 0]), _unit([1, 0], [0, 1], [-1, 0])
    assert torch.allclose(squared_fit(q, z), torch.tensor([[0.0, 2.0, 4.0]]), atol=1e-6)


def test_lambda_zero_is_pure_nearest_neighbour():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(5, 8), dim=1)
    z = F.normalize(torch.randn(40, 8), dim=1)
    comp = torch.rand(40)
    picked, _ = choose(squared_fit(q, z), comp, lam=0.0, prefilter=32, distinct=False)
    assert torch.equal(picked, squared_fit(q, z).argmin(1))


def test_hand_computed_argmin_with_complexity():
    # fits 0.0, 0.1, 0.2, 3.0 (candidate 3 outside the prefilter of 3); complexities 10, 5, 0, 0
    fit = torch.tensor([[0.0, 0.1, 0.2, 3.0]])
    comp = torch.tensor([10.0, 5.0, 0.0, 0.0])
    # inside the prefilter: fit~ = (0, .5, 1), c~ = (1, .5, 0)
    # lam=0.1 -> J = (.1, .5, .9) -> candidate 0; lam=0.9 -> J = (.9, .5, .1) -> candidate 2
    idx, score = retrieval_scores(fit, comp, lam=0.1, prefilter=3)
    assert idx.tolist() == [[0, 1, 2]]
    assert torch.allclose(score, torch.tensor([[0.1, 0.5, 0.9]]))
    assert choose(fit, comp, 0.1, 3, False)[0].tolist() == [0]
    assert choose(fit, comp, 0.9, 3, False)[0].tolist() == [2]
    # without the prefilter, candidate 3 (bad fit, simplest texture) stays unreachable at lam=0.5:
    # fit~ = (0, .033, .067, 1), c~ = (1, .5, 0, 0) -> J = (.5, .267, .033, .5)
    assert choose(fit, comp, 0.5, 0, False)[0].tolist() == [2]


def test_distinct_assignment_never_repeats_and_prefers_prefilter():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(6, 4) * 0.01 + torch.tensor([1.0, 0, 0, 0]), dim=1)  # all queries alike
    z = F.normalize(torch.randn(30, 4), dim=1)
    comp = torch.rand(30)
    fit = squared_fit(q, z)
    shared, _ = choose(fit, comp, 0.1, 8, distinct=False)
    assert shared_anchor_fraction(shared.numpy()) == 1.0  # independent argmin collapses onto one anchor
    distinct, _ = choose(fit, comp, 0.1, 8, distinct=True)
    assert len(set(distinct.tolist())) == 6
    assert shared_anchor_fraction(distinct.numpy()) == 0.0
    top8 = set(fit[0].topk(8, largest=False).indices.tolist())
    assert set(distinct.tolist()) <= top8


def test_shared_anchor_fraction():
    assert shared_anchor_fraction(np.array([1, 1, 2, 3])) == 0.5
    assert shared_anchor_fraction(np.array([], dtype=np.int64)) == 0.0
