"""Losses of the two training phases, as pure functions on (B, A, ...) tensors.

  TAL phase  [P eq.11-12][R]: quality focal loss on probabilities with soft targets t_hat, and t_hat-weighted
             GIoU; both divided by D = max(1, GPU-mean of sum t_hat).
  ATSS phase [R initial phase, first `warmup_epochs`]: focal loss on probabilities, centerness-weighted GIoU
             and, for the parallel head only, the standard ATSS centerness BCE. FCOS trains the same way.
  Table 2's other schemes (issue 20): max-IoU and FoveaBox with focal loss and unweighted GIoU
             (`fixed_loss`); ATSS + QFL with IoU soft targets and score-weighted GIoU (`gfl_loss`).
`choose_loss` is the one place that pairs a phase with its loss.

Everything is computed in fp32 with autocast disabled: BCE on probabilities is unsafe in half precision
(pitfall 6; torch's autocast refuses F.binary_cross_entropy), so callers may keep the head under autocast.
The element losses take `reduction` ("sum" | "none"); the reference always sums and normalises outside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from tood.config import LossConfig
from tood.model.assigners import Assignment
from tood.model.boxes import aligned_giou, aligned_iou

if TYPE_CHECKING:
    from tood.model.heads import HeadOutput

EPS_NORMALISER = 1e-12  # fcjian/TOOD resets a normaliser below this to 1 (`if avg_factor < EPS`)


def quality_focal_loss(
    scores: Tensor, labels: Tensor, target_scores: Tensor, beta: float = 2.0, reduction: str = "sum"
) -> Tensor:
    """QFL on probabilities [P eq.11][mmdet quality_focal_loss_with_prob]: BCE(s, y) * |y - s|^beta.

    y = t_hat on the label's class of a positive prior, 0 for every other (prior, class) pair.
    Args: scores (B, A, C) probabilities; labels (B, A) long in 0..C (C = background);
    target_scores (B, A) soft targets (ignored on background). Returns a scalar, or (B, A, C) for "none".
    """
    B, A, C = scores.shape
    with torch.autocast(scores.device.type, enabled=False):
        scores = scores.float()
        soft = scores.new_zeros(B, A, C + 1)  # extra column swallows the background label
        soft.scatter_(-1, labels.long()[..., None], target_scores.float()[..., None].detach())
        soft = soft[..., :C]  # (B, A, C)
        loss = _bce_prob(scores, soft) * (soft - scores).abs().pow(beta)
    return _reduce(loss, reduction)


def focal_loss_prob(
    scores: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "sum"
) -> Tensor:
    """Sigmoid focal loss on already-activated probabilities [R initial_loss_cls, `activated=True`].

    loss = BCE(s, y) * (alpha y + (1 - alpha)(1 - y)) * |y - s|^gamma with one-hot y (all 0 on background).
    Args: scores (B, A, C) probabilities; labels (B, A) long in 0..C. Returns a scalar, or (B, A, C).
    """
    C = scores.shape[-1]
    with torch.autocast(scores.device.type, enabled=False):
        scores = scores.float()
        onehot = F.one_hot(labels.long(), C + 1)[..., :C].float()  # (B, A, C)
        balance = alpha * onehot + (1 - alpha) * (1 - onehot)
        loss = _bce_prob(scores, onehot) * balance * (onehot - scores).abs().pow(gamma)
    return _reduce(loss, reduction)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor, weight: Tensor, reduction: str = "sum") -> Tensor:
    """weight * (1 - GIoU) [R GIoULoss]: (..., 4), (..., 4), (...) -> scalar, or (...) for "none".

    The reference feeds boxes in stride units (targets = gt / s); GIoU is scale-invariant, so pixel boxes
    give the same value (up to the 1e-7 eps inside aligned_giou).
    """
    with torch.autocast(pred_boxes.device.type, enabled=False):
        giou = aligned_giou(pred_boxes.float(), target_boxes.float())
        loss = weight.float() * (1.0 - giou)
    return _reduce(loss, reduction)


def centerness_targets(points: Tensor, target_boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """FCOS/ATSS centerness [R centerness_target]: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)).

    Args: points (A, 2) prior centres; target_boxes (B, A, 4) xyxy. Returns (B, A) in [0, 1]. Only
    meaningful for positives (centre inside the GT); elsewhere the ratios are clamped to stay finite.
    """
    left_top = points - target_boxes[..., :2]  # (B, A, 2)
    right_bottom = target_boxes[..., 2:] - points  # (B, A, 2)
    ratio = torch.minimum(left_top, right_bottom).clamp(min=0) / torch.maximum(left_top, right_bottom).clamp(
        min=eps
    )  # (B, A, 2): horizontal, vertical
    return ratio.prod(dim=-1).sqrt()


def reduce_mean(x: Tensor) -> Tensor:
    """Mean over ranks when torch.distributed is initialised, identity otherwise [R reduce_mean].

    The reference averages loss normalisers across GPUs so every rank divides by the same number.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.detach().clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def tal_loss(out: HeadOutput, asg: Assignment, cfg: LossConfig, points: Tensor) -> dict[str, Tensor]:
    """TAL-phase loss [P eq.11-12][R]: QFL(t_hat) and t_hat-weighted GIoU, both over D = max(1, sum t_hat).

    D follows mmdet (clamp >= 1); fcjian/TOOD keeps the raw sum unless it is < 1e-12, which differs only
    when a whole batch has sum t_hat < 1. `points` is unused (kept for a signature shared with atss_loss).
    Returns {"loss_cls", "loss_box"} scalars; loss_box is exactly 0 when there are no positives.
    """
    fg = asg.fg_mask  # (B, A)
    t_hat = asg.target_scores.float().detach()  # (B, A)
    normaliser = reduce_mean(t_hat.sum()).clamp(min=1.0)
    loss_cls = quality_focal_loss(out.scores, asg.labels, t_hat, beta=cfg.qfl_beta)
    # boolean indexing syncs with the host, and keeps background boxes (possibly inf early on) out of the graph
    loss_box = giou_loss(out.boxes[fg], asg.target_boxes[fg], t_hat[fg])  # (P, 4) pairs
    return {
        "loss_cls": cfg.cls_weight * loss_cls / normaliser,
        "loss_box": cfg.box_weight * loss_box / normaliser,
    }


def choose_loss(phase: str, cls_target: str) -> Callable[..., dict[str, Tensor]]:
    """The loss of an assignment phase (tood.model.assigners.choose_assigner): the one place that pairs them.

    tal -> tal_loss; cls_target "iou" -> gfl_loss (GFL: any fixed scheme, "ATSS + QFL" in Table 2);
    atss, fcos -> atss_loss (centerness-weighted GIoU + centerness branch [mmdet ATSSHead, FCOSHead]);
    max_iou, fovea -> fixed_loss (RetinaNet and FoveaBox weigh every positive alike, no centerness).
    """
    if phase == "tal":
        return tal_loss
    elif cls_target == "iou":
        return gfl_loss
    elif phase in ("atss", "fcos"):
        return atss_loss
    elif phase in ("max_iou", "fovea"):
        return fixed_loss
    raise ValueError(f"no loss for phase {phase!r} with cls_target {cls_target!r}")


def atss_loss(out: HeadOutput, asg: Assignment, cfg: LossConfig, points: Tensor) -> dict[str, Tensor]:
    """ATSS-phase loss [R initial phase; standard ATSS head for the centerness term].

    cls: focal on probabilities / max(1, num_pos); box: sum ctr * (1 - GIoU) / sum ctr (reset to 1 below
    1e-12, as fcjian/TOOD); centerness (only when out.centerness is not None): BCE-with-logits against ctr
    summed over positives / max(1, num_pos). num_pos and sum ctr are GPU-means [R reduce_mean].
    Args: points (A, 2) prior centres in pixels (anchor centres for the anchor-based head).
    """
    fg = asg.fg_mask  # (B, A)
    num_pos = reduce_mean(fg.sum().float()).clamp(min=1.0)
    loss_cls = focal_loss_prob(out.scores, asg.labels, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    ctr = centerness_targets(points.float(), asg.target_boxes.float())[fg]  # (P,)
    ctr_sum = reduce_mean(ctr.sum())
    box_normaliser = torch.where(ctr_sum < EPS_NORMALISER, torch.ones_like(ctr_sum), ctr_sum)
    loss_box = giou_loss(out.boxes[fg], asg.target_boxes[fg], ctr)
    losses = {
        "loss_cls": cfg.cls_weight * loss_cls / num_pos,
        "loss_box": cfg.box_weight * loss_box / box_normaliser,
    }
    if out.centerness is not None:
        with torch.autocast(out.centerness.device.type, enabled=False):
            logits = out.centerness[fg].float()  # (P,)
            losses["loss_ctr"] = F.binary_cross_entropy_with_logits(logits, ctr, reduction="sum") / num_pos
    return losses


def fixed_loss(out: HeadOutput, asg: Assignment, cfg: LossConfig, points: Tensor) -> dict[str, Tensor]:
    """Max-IoU and FoveaBox schemes: focal on probabilities and GIoU, each over max(1, num_pos) (GPU-mean).

    The detector's losses with Table 2's "fixed" weights: every positive counts 1 and no centerness is
    trained, as in RetinaNet and FoveaBox [mmdet RetinaHead, FoveaHead]; their own box losses (L1 on deltas,
    smooth L1 on log distances) are replaced by our GIoU so that only the assignment differs between rows.
    Priors in asg.ignore_mask (max-IoU's band between its thresholds) are left out of the focal loss.
    `points` is unused (the signature is shared with atss_loss).
    """
    fg = asg.fg_mask  # (B, A)
    num_pos = reduce_mean(fg.sum().float()).clamp(min=1.0)
    loss_box = giou_loss(out.boxes[fg], asg.target_boxes[fg], torch.ones_like(asg.target_scores[fg]))
    return {
        "loss_cls": cfg.cls_weight * _focal_cls(out, asg, cfg) / num_pos,
        "loss_box": cfg.box_weight * loss_box / num_pos,
    }


def gfl_loss(out: HeadOutput, asg: Assignment, cfg: LossConfig, points: Tensor) -> dict[str, Tensor]:
    """GFL's pairing on a fixed assignment (Table 2's "ATSS + QFL (GFL)") [mmdet GFLHead.loss_by_feat_single].

    cls: QFL (exponent qfl_beta) towards y = IoU(predicted box, its GT) on a positive's class (detached), 0
    elsewhere, / max(1, num_pos); box: GIoU weighted by the prediction's highest class score (detached) /
    max(1, sum of those weights), both GPU-means; no centerness. GFL's distribution focal loss belongs to its
    integral box representation, which our heads do not have: left out. `points` is unused.
    """
    fg = asg.fg_mask  # (B, A)
    num_pos = reduce_mean(fg.sum().float()).clamp(min=1.0)
    with torch.autocast(out.boxes.device.type, enabled=False):
        iou = aligned_iou(out.boxes.detach().float(), asg.target_boxes.float())  # (B, A)
    soft = torch.where(fg, iou, 0.0)  # (B, A)
    loss_cls = quality_focal_loss(out.scores, asg.labels, soft, beta=cfg.qfl_beta, reduction="none")
    loss_cls = _drop_ignored(loss_cls, asg).sum()
    weight = out.scores.detach().float().amax(dim=-1)[fg]  # (P,)
    box_normaliser = reduce_mean(weight.sum()).clamp(min=1.0)
    loss_box = giou_loss(out.boxes[fg], asg.target_boxes[fg], weight)
    return {
        "loss_cls": cfg.cls_weight * loss_cls / num_pos,
        "loss_box": cfg.box_weight * loss_box / box_normaliser,
    }


def _focal_cls(out: HeadOutput, asg: Assignment, cfg: LossConfig) -> Tensor:
    """Summed focal loss on probabilities over the priors not in asg.ignore_mask."""
    loss = focal_loss_prob(out.scores, asg.labels, cfg.focal_alpha, cfg.focal_gamma, reduction="none")
    return _drop_ignored(loss, asg).sum()


def _drop_ignored(loss: Tensor, asg: Assignment) -> Tensor:
    """loss (B, A, C) with the rows of ignored priors zeroed (mmdet: label weight 0 for MaxIoU's ignored)."""
    if asg.ignore_mask is None:
        return loss
    return loss.masked_fill(asg.ignore_mask[..., None], 0.0)


def _bce_prob(probs: Tensor, targets: Tensor) -> Tensor:
    """Element-wise BCE on probabilities; torch clamps each log at -100, so 0 and 1 stay finite.

    The clamp to [0, 1] guards against rounding just outside the range, which would make the CUDA kernel
    assert (fcjian/TOOD#11); it changes nothing for valid probabilities.
    """
    return F.binary_cross_entropy(probs.clamp(0.0, 1.0), targets, reduction="none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    elif reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}; expected 'sum' or 'none'")
