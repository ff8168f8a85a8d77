"""Table 2's fixed assignment schemes on our priors (issue 20), batched over padded GTs like assigners.py.

  max_iou_assign  RetinaNet [mmdet MaxIoUAssigner, retinanet_r50_fpn.py]: anchor-box IoU >= pos positive,
                  < neg negative, in between ignored; then each GT's best anchors positive (low quality);
  fovea_assign    FoveaBox [mmdet FoveaHead._get_target_single]: points in the GT box shrunk by sigma about
                  its centre, on the levels whose scale range holds sqrt(w*h); the smallest GT wins;
  fcos_assign     FCOS [mmdet FCOSHead._get_targets_single, center_sampling=False]: points strictly inside the
                  box whose largest side distance lies in the level's regression range; the smallest GT wins.

Each returns an Assignment with target_scores 1.0 on positives (the "fixed" Weight of Table 2; GFL's IoU
target is the loss's, tood.model.losses.gfl_loss). They use the detector's own priors: points at (j*s, i*s)
[R: center_offset 0] and one 8*s square anchor per location (as ATSS in TOOD); mmdet's FCOS and FoveaBox put
points at cell centres ((j + 0.5) * s) and RetinaNet has 9 anchors per location. With one anchor per
location, a GT smaller than the anchors lies inside many of them at the same IoU, and the low-quality rule
(all ties) makes every one of them positive; that is MaxIoUAssigner's rule on these priors, and why the
max-IoU variant regresses from anchors (a point outside its GT could never cover it with ltrb >= 0).
tests/test_fixed_assigners.py checks each against a functional re-implementation of the mmdet rule.
Every (B, G, A) tensor below is a bool or one fp32 plane, as in TAL; nothing loops over GTs or images.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from tood.model.assigners import Assignment, _background, _build_assignment
from tood.model.boxes import pairwise_iou


@torch.no_grad()
def max_iou_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    num_classes: int,
    *,
    pos_iou: float,
    neg_iou: float,
    min_pos_iou: float,
) -> Assignment:
    """Max-IoU assignment [mmdet MaxIoUAssigner.assign_wrt_overlaps, gt_max_assign_all=True].

    Steps, per image, all GTs at once:
      1. U = IoU(anchor box, GT) (B, G, A); per prior its best GT (ties: the lowest GT index, torch.max).
      2. negative iff max U < neg_iou; positive (to its best GT) iff max U >= pos_iou; otherwise ignored.
      3. low-quality matches: every prior whose U equals its GT's best U (all ties) becomes positive for that
         GT when that best U >= min_pos_iou; mmdet loops over GTs in order, so a prior that is the best of
         several GTs goes to the LAST of them, overriding step 2 (we take the highest GT index).
    Deviation: mmdet with min_pos_iou=0 (RetinaNet's setting) would make every prior with U = 0 positive for
    a GT that overlaps no prior at all; we skip such a GT (best U = 0), which cannot happen for a GT inside
    the image with our priors (their 8*s squares cover it) but would flood the loss with false positives.

    Args:
        anchors: (A, 4) xyxy. gt_boxes: (B, G, 4) xyxy pixels; gt_labels: (B, G) long; gt_mask: (B, G) bool.
        num_classes: C (background label). pos_iou, neg_iou, min_pos_iou: RetinaNet 0.5, 0.4, 0.
    Returns:
        Assignment with ignore_mask (B, A) set, target_scores 1.0, overlaps the anchor IoU of its GT.
    """
    A = anchors.shape[0]
    B, G = gt_mask.shape
    if G == 0 or A == 0:
        return _background(B, A, num_classes, anchors.device)
    gt_boxes = gt_boxes.float()
    iou = pairwise_iou(gt_boxes, anchors.float()).masked_fill_(~gt_mask[:, :, None], -1.0)  # (B, G, A)
    max_iou, best_gt = iou.max(dim=1)  # (B, A) each
    fg_mask = max_iou >= pos_iou  # (B, A)
    negative = max_iou < neg_iou  # -1 on images without GTs: all negative, as mmdet's num_gts == 0 case
    gt_best = iou.amax(dim=2, keepdim=True)  # (B, G, 1)
    low_quality = (iou == gt_best) & (gt_best >= min_pos_iou) & (gt_best > 0)  # (B, G, A); padded: -1 < 0
    has_low = low_quality.any(dim=1)  # (B, A)
    last_gt = (G - 1) - low_quality.flip(1).to(torch.uint8).argmax(dim=1)  # (B, A): highest GT index
    gt_index = torch.where(has_low, last_gt, best_gt)  # (B, A)
    fg_mask |= has_low
    overlaps = iou.gather(1, gt_index[:, None, :]).squeeze(1).masked_fill_(~fg_mask, 0.0)  # (B, A)
    asg = _build_assignment(
        gt_index.masked_fill(~fg_mask, 0),
        fg_mask,
        gt_boxes,
        gt_labels,
        num_classes,
        fg_mask.float(),
        overlaps,
    )
    asg.ignore_mask = ~fg_mask & ~negative  # (B, A)
    return asg


@torch.no_grad()
def fovea_assign(
    points: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    num_classes: int,
    *,
    sigma: float,
    scale_ranges: Sequence[tuple[float, float]],
) -> Assignment:
    """FoveaBox centre-region assignment [mmdet FoveaHead._get_target_single; Kong et al. 2020, §3.2].

    Per GT g of size sqrt(w*h) and per level l whose scale_ranges[l] = [lo, hi] holds it (inclusive; ranges
    overlap, so a GT can train two levels): positives are the level's points inside the "fovea", g shrunk by
    sigma about its centre: |x - cx| <= sigma*w/2 and |y - cy| <= sigma*h/2 (closed, as mmdet's ceil/floor
    of the cell range). A point claimed by several GTs goes to the smallest (mmdet writes the GTs in
    decreasing size, the last write wins); equal sizes go to the lowest GT index. Deviation: mmdet clamps the
    cell range to the map, which marks a border cell positive when a fovea lies wholly outside the grid.

    Args:
        points: (A, 2) prior points in pixels. num_per_level: A_l (one per entry of scale_ranges).
        gt_boxes, gt_labels, gt_mask: (B, G, 4), (B, G), (B, G). sigma: 0.4 [mmdet]. scale_ranges: in pixels.
    Returns:
        Assignment with target_scores 1.0 on positives and overlaps 0 (no box is matched: a point rule).
    """
    A = points.shape[0]
    B, G = gt_mask.shape
    if len(scale_ranges) != len(num_per_level):
        raise ValueError(f"{len(scale_ranges)} scale ranges for {len(num_per_level)} levels")
    if G == 0 or A == 0:
        return _background(B, A, num_classes, points.device)
    gt_boxes, points = gt_boxes.float(), points.float()
    ranges = _per_prior(torch.tensor(scale_ranges, dtype=torch.float32, device=points.device), num_per_level)
    wh = gt_boxes[..., 2:] - gt_boxes[..., :2]  # (B, G, 2)
    size = wh.prod(dim=-1).clamp(min=0).sqrt()[:, :, None]  # (B, G, 1)
    on_level = (size >= ranges[:, 0]) & (size <= ranges[:, 1])  # (B, G, A)
    centre, half = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2, sigma * wh / 2  # (B, G, 2) each
    in_fovea = (points[:, 0] - centre[..., 0, None]).abs() <= half[..., 0, None]  # (B, G, A)
    in_fovea &= (points[:, 1] - centre[..., 1, None]).abs() <= half[..., 1, None]
    positive = on_level & in_fovea & gt_mask[:, :, None]  # (B, G, A)
    return _smallest_gt_wins(positive, size.squeeze(-1), gt_boxes, gt_labels, num_classes)


@torch.no_grad()
def fcos_assign(
    points: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    num_classes: int,
    *,
    range_bounds: Sequence[float],
) -> Assignment:
    """FCOS assignment [mmdet FCOSHead._get_targets_single, center_sampling=False; Tian et al. 2019 §3.2].

    A point is positive for GT g iff it lies strictly inside g (min(l, t, r, b) > 0, no margin) and its
    largest distance max(l, t, r, b) lies in its level's regression range [lo, hi] (both ends inclusive, as
    mmdet): level l spans [range_bounds[l-1], range_bounds[l]], from -1 on P3 to infinity on P7 (mmdet's
    ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))). A point claimed by several GTs goes to the
    one of smallest area, ties to the lowest GT index (torch.min, as mmdet).

    Args:
        points: (A, 2) prior points in pixels. num_per_level: A_l, len(range_bounds) + 1 levels.
        gt_boxes, gt_labels, gt_mask: (B, G, 4), (B, G), (B, G). range_bounds: the L - 1 level boundaries.
    Returns:
        Assignment with target_scores 1.0 on positives and overlaps 0 (no box is matched: a point rule).
    """
    A = points.shape[0]
    B, G = gt_mask.shape
    if len(range_bounds) + 1 != len(num_per_level):
        raise ValueError(f"{len(range_bounds)} range bounds for {len(num_per_level)} levels")
    if G == 0 or A == 0:
        return _background(B, A, num_classes, points.device)
    gt_boxes, points = gt_boxes.float(), points.float()
    bounds = [-1.0, *map(float, range_bounds), float("inf")]
    ranges = _per_prior(torch.tensor(list(pairwise(bounds)), device=points.device), num_per_level)
    x, y = points[:, 0], points[:, 1]  # (A,)
    sides = (x - gt_boxes[..., 0, None], y - gt_boxes[..., 1, None])  # (B, G, A) each: l, t
    sides += (gt_boxes[..., 2, None] - x, gt_boxes[..., 3, None] - y)  # r, b
    nearest = torch.minimum(torch.minimum(sides[0], sides[1]), torch.minimum(sides[2], sides[3]))  # (B, G, A)
    farthest = torch.maximum(torch.maximum(sides[0], sides[1]), torch.maximum(sides[2], sides[3]))
    positive = (nearest > 0) & (farthest >= ranges[:, 0]) & (farthest <= ranges[:, 1])  # (B, G, A)
    positive &= gt_mask[:, :, None]
    wh = gt_boxes[..., 2:] - gt_boxes[..., :2]  # (B, G, 2)
    return _smallest_gt_wins(positive, wh[..., 0] * wh[..., 1], gt_boxes, gt_labels, num_classes)


def _per_prior(per_level: Tensor, num_per_level: Sequence[int]) -> Tensor:
    """(L, ...) per-level values -> (A, ...) per prior (priors are flattened level-major)."""
    counts = torch.tensor(list(num_per_level), device=per_level.device)
    return per_level.repeat_interleave(counts, dim=0)


def _smallest_gt_wins(
    positive: Tensor, size: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int
) -> Assignment:
    """Each prior to its positive GT of smallest `size` (B, G), ties to the lowest GT index.

    positive (B, G, A) bool -> Assignment (fg where any GT claims the prior), target_scores 1.0, overlaps 0.
    """
    inf = torch.tensor(float("inf"), device=size.device)
    claim = torch.where(positive, size[:, :, None], inf)  # (B, G, A)
    smallest, gt_index = claim.min(dim=1)  # (B, A) each
    fg_mask = torch.isfinite(smallest)  # (B, A)
    return _build_assignment(
        gt_index.masked_fill(~fg_mask, 0), fg_mask, gt_boxes, gt_labels, num_classes, fg_mask.float(),
        torch.zeros_like(smallest),
    )  # fmt: skip
