"""Pure, batched box operations. Boxes are xyxy absolute pixels unless a suffix says otherwise.

Every function broadcasts over leading dims, so one code path serves (A,4), (B,A,4) and (B,G,A,4).
"""

from __future__ import annotations

import torch
from torch import Tensor


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes; inverted boxes count as 0 (fcjian clamps w, h at 0, commit 93b3a87)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of every pair: (..., N, 4) x (..., M, 4) -> (..., N, M).

    Built one (..., N, M) plane at a time in three buffers, so the peak is three (..., N, M) tensors
    instead of the eight of a (..., N, M, 2) corner formulation (assigners at COCO scale, reference/tood.md
    pitfall 4; bench/assigners.py). Coordinates are made contiguous first: broadcasting strided columns
    halves the speed of every pass. Same values as the textbook formula.
    """
    x1a, y1a, x2a, y2a = (c.contiguous()[..., :, None] for c in boxes1.unbind(-1))  # (..., N, 1) each
    x1b, y1b, x2b, y2b = (c.contiguous()[..., None, :] for c in boxes2.unbind(-1))  # (..., 1, M) each
    inter = torch.minimum(x2a, x2b)  # (..., N, M); becomes the width, then the intersection
    buf1 = torch.maximum(x1a, x1b)
    inter.sub_(buf1).clamp_(min=0)
    buf2 = torch.minimum(y2a, y2b)
    torch.maximum(y1a, y1b, out=buf1)
    inter.mul_(buf2.sub_(buf1).clamp_(min=0))  # width * height
    del buf1
    union = torch.add(box_area(boxes1)[..., :, None], box_area(boxes2)[..., None, :], out=buf2)
    return inter.div_(union.sub_(inter).clamp_(min=eps))


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of matching rows: (..., 4) x (..., 4) -> (...)."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=eps)


def aligned_giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of matching rows (Rezatofighi et al. 2019): (..., 4) x (..., 4) -> (...), in [-1, 1]."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (box_area(boxes1) + box_area(boxes2) - inter).clamp(min=eps)
    iou = inter / union
    enclose_wh = torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(
        boxes1[..., :2], boxes2[..., :2]
    )
    enclose = (enclose_wh.clamp(min=0)[..., 0] * enclose_wh.clamp(min=0)[..., 1]).clamp(min=eps)
    return iou - (enclose - union) / enclose


def points_in_boxes(points: Tensor, boxes: Tensor, margin: float = 0.01) -> Tensor:
    """Whether each point lies strictly inside each box by more than `margin` pixels on every side.

    points (A, 2), boxes (..., G, 4) -> (..., G, A) bool. The 0.01 margin is the reference's
    `min(l, t, r, b) > 0.01` test [R: TaskAlignedAssigner / ATSSAssigner].
    """
    x, y = points[:, 0], points[:, 1]  # (A,)
    left = x - boxes[..., :, None, 0]  # (..., G, A)
    top = y - boxes[..., :, None, 1]
    right = boxes[..., :, None, 2] - x
    bottom = boxes[..., :, None, 3] - y
    return torch.stack((left, top, right, bottom), dim=-1).amin(dim=-1) > margin
