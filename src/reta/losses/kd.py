"""Student losses for evaluation: KL knowledge distillation and hard-label CutMix cross-entropy.

The temperature and the T^2 factor are explicit arguments because the field disagrees on them
(FADRM/SRe2L: KL at T=20 without T^2; Hinton et al. and DD-Ranking's option: with T^2), and a
silent difference here makes numbers across papers incomparable (method-reference §2.8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            t_squared: bool = False) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch ('batchmean').

    Args: student_logits (B,K) and teacher_logits (B,K), any float dtype (computed in fp32);
    the teacher logits are those of the already-mixed view, so no label mixing happens here.
    Returns a scalar; multiplied by T^2 when `t_squared` (keeps gradient scale independent of T).
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / t, dim=1)
    loss = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return loss * (t * t) if t_squared else loss


def hard_cutmix_loss(logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor | None,
                     lam: float) -> torch.Tensor:
    """lam * CE(logits, labels) + (1 - lam) * CE(logits, partner_labels); scalar.

    Args: logits (B,K), labels int64 (B,), partner_labels int64 (B,) the labels of each image's
    CutMix partner, i.e. labels[perm] of the batch (None for an unmixed batch, then plain CE),
    lam the own-image area fraction.
    """
    own = F.cross_entropy(logits.float(), labels)
    if partner_labels is None:
        return own
    other = F.cross_entropy(logits.float(), partner_labels.to(labels.device))
    return lam * own + (1.0 - lam) * other
