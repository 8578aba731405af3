"""Known answers for the distillation losses (reta.losses.kd)."""

import math

import pytest
import torch
import torch.nn.functional as F

from reta.losses.kd import hard_cutmix_loss, kd_loss


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    for t in (1.0, 4.0, 20.0):
        assert kd_loss(logits, logits.clone(), t).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_known_value_and_batchmean():
    # Teacher uniform over 2 classes, student q = (0.8, 0.2): KL = 0.5 log(0.5/0.8) + 0.5 log(0.5/0.2).
    student = torch.tensor([[math.log(0.8), math.log(0.2)]])
    teacher = torch.zeros(1, 2)
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # 'batchmean': a batch of copies has the same loss as one row.
    assert kd_loss(student.repeat(3, 1), teacher.repeat(3, 1), 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_t_squared_scales_by_t_squared():
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    plain = kd_loss(student, teacher, 20.0)
    assert plain.item() > 0
    assert kd_loss(student, teacher, 20.0, t_squared=True).item() == pytest.approx(400.0 * plain.item(), rel=1e-5)


def test_hard_cutmix_loss_mixes_the_two_cross_entropies():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 0])
    perm = torch.tensor([1, 2, 3, 0])
    own, other = F.cross_entropy(logits, labels), F.cross_entropy(logits, labels[perm])
    assert hard_cutmix_loss(logits, labels, labels[perm], 1.0).item() == pytest.approx(own.item())
    assert hard_cutmix_loss(logits, labels, labels[perm], 0.0).item() == pytest.approx(other.item())
    assert hard_cutmix_loss(logits, labels, labels[perm], 0.3).item() == pytest.approx(0.3 * own.item() + 0.7 * other.item())
    assert hard_cutmix_loss(logits, labels, None, 0.3).item() == pytest.approx(own.item())
