"""Distillation losses: Hinton's logit KD and Decoupled KD (Zhao et al., CVPR 2022).

Both take raw logits [B, C]. KL terms are batch means scaled by T^2, so that the soft-target
gradient keeps the same size as the temperature changes (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets).

    `targets` are class indices [B] or probabilities [B, C] (mixup/cutmix)."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if alpha >= 1.0:
        return soft
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              targets: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a T^2-scaled batch mean.

    TCKD: KL between the binary distributions [p(target), p(all others)] of teacher and student.
    NCKD: KL between their distributions over the non-target classes alone (softmax of the
    non-target logits), so the target's confidence no longer damps it as it does in plain KD,
    where KD = TCKD + (1 - p_target^teacher) * NCKD."""
    t = float(temperature)
    b, c = student_logits.shape
    is_target = F.one_hot(targets, c).bool()
    s, te = student_logits / t, teacher_logits / t
    # Dropping the target column (rather than masking it with -inf) keeps every term finite.
    s_rest, t_rest = s[~is_target].view(b, c - 1), te[~is_target].view(b, c - 1)

    def binary_log_probs(z: torch.Tensor, z_rest: torch.Tensor) -> torch.Tensor:
        # log p(target) and log(1 - p(target)) without forming 1 - p: both are differences of
        # log-sum-exps, exact when p(target) is close to 1.
        total = torch.logsumexp(z, dim=1)
        target = z.gather(1, targets[:, None]).squeeze(1)
        return torch.stack([target - total, torch.logsumexp(z_rest, dim=1) - total], dim=1)

    tckd = F.kl_div(binary_log_probs(s, s_rest), binary_log_probs(te, t_rest),
                    reduction="batchmean", log_target=True)
    nckd = F.kl_div(F.log_softmax(s_rest, dim=1), F.log_softmax(t_rest, dim=1),
                    reduction="batchmean", log_target=True)
    return tckd * (t * t), nckd * (t * t)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
             alpha: float, beta: float, temperature: float, *,
             warmup: float = 1.0) -> torch.Tensor:
    """CE + warmup * (alpha * TCKD + beta * NCKD) with hard labels.

    Soft targets [B, C] are reduced to their argmax: DKD splits the distribution at one target
    class. `warmup` in [0, 1] ramps the distillation term in, as the paper's training does."""
    hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, hard, temperature)
    return F.cross_entropy(student_logits, hard) + warmup * (alpha * tckd + beta * nckd)
