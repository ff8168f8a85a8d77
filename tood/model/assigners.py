"""Label assignment: which priors are positives for which GT, and their soft targets.

Two assigners, both batched over padded GTs as (B, G, A) tensors with no Python loop over images or GTs:

  tal_assign   task-aligned assignment [P §3.2 eq. 9-10], as fcjian/TOOD's TaskAlignedAssigner + t_hat;
  atss_assign  ATSS (Zhang et al., CVPR 2020), which the reference uses for the first `initial_epoch`
               epochs [R]; `choose_assigner` picks the phase from the epoch.
Table 2's other fixed schemes (max-IoU, FoveaBox, FCOS) are in tood.model.fixed_assigners (issue 20).

Padded GT rows (gt_mask False) may hold any boxes and labels (even NaN): every per-GT selection is
and-ed with gt_mask before it can reach a prior, so padding never claims or blocks a prior.

Memory and time (reference/tood.md pitfall 4): only what needs every (GT, prior) pair is dense. TAL holds
at most three (B, G, A) fp32 tensors (IoU, metric and one temporary) until its top-k; ATSS only one
(B, G, A_l) distance per level. Everything after the top-k (centre test, IoU threshold, conflict
resolution, t_hat) runs on the (B, G, K) candidates and scatters into (B, A): a positive is always a
candidate. bench/assigners.py measures both against ultralytics' TaskAlignedAssigner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tood.model.boxes import aligned_iou, pairwise_iou

CENTER_MARGIN = 0.01  # prior centre must be inside the GT by more than this on every side [R: both assigners]


@dataclass
class Assignment:
    labels: Tensor  # (B, A) long, C for background
    fg_mask: Tensor  # (B, A) bool
    gt_index: Tensor  # (B, A) long index into the padded G axis (0 where background)
    target_boxes: Tensor  # (B, A, 4) xyxy pixels of the assigned GT (0 where background)
    target_scores: Tensor  # (B, A) float soft target: t_hat for TAL [P eq.10], 1.0 for ATSS fg, 0 bg
    overlaps: Tensor  # (B, A) IoU of the prediction (TAL) / anchor box (ATSS, max_iou) with its GT (0 bg)
    # (B, A) bool: priors left out of the classification loss (max_iou's band between its thresholds), or None
    ignore_mask: Tensor | None = None


FIXED_ASSIGNERS = ("atss", "max_iou", "fovea", "fcos")  # Table 2's fixed schemes (tood.model.fixed_assigners)


def choose_assigner(assigner: str, epoch: int, warmup_epochs: int) -> str:
    """The assignment phase of `epoch`: ATSS while `epoch < warmup_epochs` for TAL, else the configured one.

    This is the reference's `initial_epoch=4` warm-up [R], not described in the paper: early scores and
    IoUs are ~0, so t = s^alpha * u^beta carries no signal yet (fcjian/TOOD#15). The fixed schemes need
    no predictions and have no warm-up. The epoch is passed explicitly (0-based), not pushed in by a hook.
    """
    if assigner == "tal":
        return "atss" if epoch < warmup_epochs else "tal"
    elif assigner in FIXED_ASSIGNERS:
        return assigner
    raise ValueError(f"unknown assigner {assigner!r}; expected 'tal' or one of {FIXED_ASSIGNERS}")


@torch.no_grad()
def tal_assign(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    alpha: float,
    beta: float,
    topk: int,
    eps: float = 1e-7,
) -> Assignment:
    """Task-aligned assignment [P §3.2.1 eq. 9-10][R TaskAlignedAssigner].

    Steps (as the reference, per GT g, all GTs and images at once):
      1. U = IoU(predicted box, g) -- the prediction, not the anchor; S = score of g's class.
      2. t = S^alpha * U^beta, in fp32 (beta=6 underflows in half precision, pitfall 6).
      3. candidates = top-`topk` priors by t over ALL levels jointly.
      4. positive iff candidate, t > 0 and the prior centre lies inside g by > 0.01 px. The centre test
         comes AFTER top-k as in the reference, so a GT can get fewer than `topk` positives
         (ultralytics applies it before top-k).
      5. a prior positive for several GTs goes to the one with the highest U. The paper's SM says
         "minimal area"; fcjian/TOOD and mmdet use max IoU and we follow the code.
      6. t_hat = t / (max t over g's positives + eps) * (max U over g's positives) [P eq.10], over the
         positives that g keeps after step 5, exactly as the reference, which loops over GTs; this is the
         vectorised equivalent. eps=1e-7 is the reference's `10e-8` (the contract's 1e-9 is ultralytics').

    Args:
        pred_scores: (B, A, C) probabilities (detached here). pred_boxes: (B, A, 4) xyxy pixels.
        points: (A, 2) prior centres in pixels. gt_boxes: (B, G, 4) xyxy pixels; gt_labels: (B, G) long
            in 0..C-1; gt_mask: (B, G) bool, False for padding.
        alpha, beta: exponents of eq. 9 (no defaults: every call site shows them). topk: m of §3.2.1.
    Returns:
        Assignment; target_scores holds t_hat and overlaps the predicted-box IoU with the assigned GT.
    """
    B, A, C = pred_scores.shape
    G = gt_boxes.shape[1]
    if G == 0 or A == 0:
        return _background(B, A, C, pred_scores.device)
    gt_boxes = gt_boxes.float()
    valid = gt_mask[:, :, None]  # (B, G, 1)
    metric = alignment_metric(pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, alpha, beta)  # (B,G,A)
    cand_t, cand_index = metric.topk(min(topk, A), dim=-1)  # (B, G, K), K = min(topk, A)
    del metric  # the dense part ends here; U is recomputed for the candidates (same values)
    cand_boxes = pred_boxes.float().gather(1, cand_index.view(B, -1, 1).expand(-1, -1, 4)).view(B, G, -1, 4)
    cand_iou = aligned_iou(gt_boxes[:, :, None, :], cand_boxes).masked_fill_(~valid, 0.0)  # (B, G, K)
    keep = (cand_t > 0) & valid  # (B, G, K)
    keep &= _centres_inside(points.float()[cand_index], gt_boxes[:, :, None, :])  # (B,G,K,2) vs (B,G,1,4)

    gt_index, fg_mask, best_iou, final = _resolve_by_max_iou(cand_index, keep, cand_iou, A)
    t_hat = _normalised_metric(cand_t, cand_iou, cand_index, final, A, eps)  # (B, A)
    return _build_assignment(gt_index, fg_mask, gt_boxes, gt_labels, C, t_hat, best_iou)


@torch.no_grad()
def atss_assign(
    anchors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    num_classes: int,
    *,
    topk: int,
) -> Assignment:
    """ATSS assignment [R ATSSAssigner], batched over images and padded GTs.

    Per GT g: on each level take the `topk` priors whose anchor centres are closest (L2) to g's centre (all
    priors of a level with fewer than `topk`); thr = mean + std (unbiased, torch default) of the anchor-box
    IoUs of these candidates; positive iff IoU >= thr and the anchor centre lies inside g by > 0.01 px.
    A prior positive for several GTs goes to the one with the highest anchor IoU. With a single candidate
    in total the std is taken as 0 (torch's unbiased std would be NaN and assign nothing).

    Args:
        anchors: (A, 4) xyxy 8*stride squares (also for anchor-free TOOD [R]). num_per_level: A_l, sum A.
        gt_boxes: (B, G, 4) xyxy pixels; gt_labels: (B, G) long; gt_mask: (B, G) bool.
        num_classes: C (background label). topk: candidates per level (9 [R]).
    Returns:
        Assignment with target_scores 1.0 on positives and overlaps the anchor-box IoU.
    """
    A = anchors.shape[0]
    B, G = gt_mask.shape
    if sum(num_per_level) != A:
        raise ValueError(f"num_per_level {tuple(num_per_level)} does not sum to A={A}")
    if G == 0 or A == 0:
        return _background(B, A, num_classes, anchors.device)
    anchors, gt_boxes = anchors.float(), gt_boxes.float()
    valid = gt_mask[:, :, None]  # (B, G, 1)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    cand_index = _closest_per_level(anchor_centres, num_per_level, gt_boxes, topk)  # (B, G, K)
    cand_iou = aligned_iou(gt_boxes[:, :, None, :], anchors[cand_index]).masked_fill_(~valid, 0)  # (B, G, K)
    correction = 1 if cand_index.shape[-1] > 1 else 0
    thr = cand_iou.mean(-1, keepdim=True) + cand_iou.std(-1, correction=correction, keepdim=True)  # (B,G,1)
    keep = (cand_iou >= thr) & valid  # (B, G, K)
    keep &= _centres_inside(anchor_centres[cand_index], gt_boxes[:, :, None, :])

    gt_index, fg_mask, best_iou, _ = _resolve_by_max_iou(cand_index, keep, cand_iou, A)  # (B, A) each
    return _build_assignment(gt_index, fg_mask, gt_boxes, gt_labels, num_classes, fg_mask.float(), best_iou)


@torch.no_grad()
def alignment_metric(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    alpha: float,
    beta: float,
) -> Tensor:
    """t = S^alpha * U^beta [P eq.9] with U = IoU(predicted box, GT): (B, G, A) fp32, 0 on padded GTs.

    Computed in place in the IoU buffer (U itself is not kept: tal_assign needs it on K candidates only).
    S is one row per GT of the (B, C, A) transposed scores (whole-row copies, 3x faster on CPU than an
    element-wise gather), never a (B, G, A, C) one-hot.
    """
    B, C = pred_scores.shape[0], pred_scores.shape[2]
    invalid = ~gt_mask[:, :, None]  # (B, G, 1)
    metric = pairwise_iou(gt_boxes.float(), pred_boxes.float()).pow_(beta)  # (B, G, A): U^beta
    class_index = gt_labels.long().clamp(0, C - 1)  # (B, G); padded labels may be junk
    scores_by_class = pred_scores.float().transpose(1, 2).contiguous()  # (B, C, A)
    scores = scores_by_class[torch.arange(B, device=class_index.device)[:, None], class_index]  # (B, G, A)
    if alpha != 1.0:  # s^1 == s exactly; skipping saves a pass
        scores.pow_(alpha)
    return metric.mul_(scores).masked_fill_(invalid, 0.0)  # pow(0, 0) = 1 on padded rows is masked too


def _closest_per_level(
    anchor_centres: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, k: int
) -> Tensor:
    """Indices of the k priors per level nearest (L2, centre to centre) to each GT: (B, G, sum_l min(k, A_l)).

    One loop over the L levels (not over GTs); each iteration holds one (B, G, A_l) distance tensor.
    """
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
    index_per_level, start = [], 0
    for n in num_per_level:
        if n > 0:
            level_centres = anchor_centres[start : start + n]  # (A_l, 2)
            dx = gt_centres[..., 0, None] - level_centres[:, 0].contiguous()  # (B, G, A_l)
            dy = gt_centres[..., 1, None] - level_centres[:, 1].contiguous()
            distances = dx.mul_(dx).add_(dy.mul_(dy)).sqrt_()  # (B, G, A_l), no (B, G, A_l, 2) temporaries
            index_per_level.append(distances.topk(min(k, n), dim=-1, largest=False).indices + start)
        start += n
    return torch.cat(index_per_level, dim=-1)  # (B, G, K)


def _centres_inside(centres: Tensor, boxes: Tensor, margin: float = CENTER_MARGIN) -> Tensor:
    """Aligned counterpart of boxes.points_in_boxes, same rule: min(l, t, r, b) > margin.

    centres (..., 2) and boxes (..., 4) broadcast against each other -> (...) bool. It is used on the top-k
    candidates only, which avoids the (B, G, A, 4) distance tensor a full points_in_boxes would build.
    """
    ltrb = torch.cat((centres - boxes[..., :2], boxes[..., 2:] - centres), dim=-1)  # (..., 4)
    return ltrb.amin(dim=-1) > margin


def _resolve_by_max_iou(
    cand_index: Tensor, keep: Tensor, cand_iou: Tensor, A: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Give each prior to the positive GT with the highest IoU [R both assigners; paper SM says min area].

    Works on the candidates only: positives (`keep`, (B, G, K)) sit at priors `cand_index` (B, G, K) with
    IoU `cand_iou`. Per prior, the highest IoU wins; ties go to the lowest GT index, as a max over G does.
    Returns gt_index (B, A) long (0 for background), fg_mask (B, A) bool, best IoU (B, A) (0 for
    background), and final (B, G, K) bool: the candidates that remain positives of their own GT.
    """
    B, G, K = cand_index.shape
    flat_index = cand_index.reshape(B, G * K)
    iou = cand_iou.masked_fill(~keep, -1.0).reshape(B, G * K)
    best_iou = iou.new_full((B, A), -1.0).scatter_reduce_(1, flat_index, iou, "amax")  # (B, A)
    gt_of_cand = torch.arange(G, device=cand_index.device)[None, :, None].expand(B, G, K)  # (B, G, K)
    wins = keep & (cand_iou == best_iou.gather(1, flat_index).view(B, G, K))  # (B, G, K)
    gt_index = torch.full((B, A), G, dtype=torch.long, device=cand_index.device)
    gt_index.scatter_reduce_(1, flat_index, gt_of_cand.masked_fill(~wins, G).reshape(B, G * K), "amin")
    fg_mask = gt_index < G  # (B, A)
    final = keep & (gt_index.gather(1, flat_index).view(B, G, K) == gt_of_cand)  # (B, G, K)
    return gt_index.masked_fill_(~fg_mask, 0), fg_mask, best_iou.masked_fill_(~fg_mask, 0.0), final


def _normalised_metric(
    cand_t: Tensor, cand_iou: Tensor, cand_index: Tensor, final: Tensor, A: int, eps: float
) -> Tensor:
    """t_hat [P eq.10][R]: per GT, rescale t so that its max over the GT's final positives equals their max IoU.

    cand_t, cand_iou, cand_index, final: (B, G, K) over the top-k candidates. Returns t_hat (B, A), 0 on
    background (each prior is the final positive of at most one GT, so the scatter has one writer).
    """
    B, G, K = cand_t.shape
    max_t = cand_t.masked_fill(~final, 0.0).amax(dim=-1, keepdim=True)  # (B, G, 1)
    max_iou = cand_iou.masked_fill(~final, 0.0).amax(dim=-1, keepdim=True)  # (B, G, 1)
    cand_t_hat = (cand_t / (max_t + eps) * max_iou).masked_fill_(~final, 0.0)  # (B, G, K)
    t_hat = cand_t.new_zeros(B, A)
    return t_hat.scatter_reduce_(1, cand_index.reshape(B, G * K), cand_t_hat.reshape(B, G * K), "amax")


def _build_assignment(
    gt_index: Tensor,
    fg_mask: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    target_scores: Tensor,
    overlaps: Tensor,
) -> Assignment:
    """Gather per-prior labels and boxes of the assigned GTs; background gets label C and zero boxes."""
    B, A = gt_index.shape
    labels = gt_labels.long().gather(1, gt_index)  # (B, A)
    boxes = gt_boxes.gather(1, gt_index[:, :, None].expand(B, A, 4))  # (B, A, 4)
    return Assignment(
        labels=labels.masked_fill(~fg_mask, num_classes),
        fg_mask=fg_mask,
        gt_index=gt_index,
        target_boxes=torch.where(fg_mask[:, :, None], boxes, 0.0),  # where, not *: padded rows may be NaN
        target_scores=target_scores.masked_fill(~fg_mask, 0.0),
        overlaps=overlaps,
    )


def _background(B: int, A: int, num_classes: int, device: torch.device) -> Assignment:
    """Every prior is background (no GT rows at all, or no priors)."""
    return Assignment(
        labels=torch.full((B, A), num_classes, dtype=torch.long, device=device),
        fg_mask=torch.zeros(B, A, dtype=torch.bool, device=device),
        gt_index=torch.zeros(B, A, dtype=torch.long, device=device),
        target_boxes=torch.zeros(B, A, 4, device=device),
        target_scores=torch.zeros(B, A, device=device),
        overlaps=torch.zeros(B, A, device=device),
    )
