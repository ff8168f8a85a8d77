"""The two box codings of the ablation: ltrb distances from points and delta-xywh from anchors.

Both are pure and broadcast over leading dims. Units follow the inputs: the heads call the ltrb coder
on points and distances in stride units (the T-Head builds its box map on the grid, c = point / s [R]),
the losses may call it in pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tood.model.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

DELTA_STDS = (0.1, 0.1, 0.2, 0.2)  # DeltaXYWHBBoxCoder target_stds of the anchor-based TOOD [R]; means are 0
MAX_RATIO = abs(math.log(16 / 1000))  # mmdet delta2bbox wh_ratio_clip=16/1000: |dw|, |dh| <= log(62.5)


def encode_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances from each point to the four sides of its box.

    points (..., 2) xy, boxes (..., 4) xyxy -> (..., 4) (left, top, right, bottom); negative when the
    point lies outside the box.
    """
    x, y = points.unbind(-1)
    return torch.stack((x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1)


def decode_ltrb(points: Tensor, ltrb: Tensor) -> Tensor:
    """Inverse of encode_ltrb [R: distance2bbox, without clipping]: (..., 2), (..., 4) -> (..., 4) xyxy."""
    x, y = points.unbind(-1)
    return torch.stack((x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]), dim=-1)


def encode_deltas(anchors: Tensor, boxes: Tensor, stds: tuple[float, ...] = DELTA_STDS) -> Tensor:
    """Delta-xywh targets of boxes w.r.t. anchors, divided by stds (means 0) [mmdet bbox2delta].

    anchors (..., 4), boxes (..., 4) xyxy -> (..., 4) (dx, dy, dw, dh):
    dx = (gx - px) / pw / std_x,  dw = log(gw / pw) / std_w  (likewise y, h).
    """
    pa = xyxy_to_cxcywh(anchors)  # (..., 4)
    gb = xyxy_to_cxcywh(boxes)
    dxy = (gb[..., :2] - pa[..., :2]) / pa[..., 2:]
    dwh = torch.log(gb[..., 2:] / pa[..., 2:])
    return torch.cat((dxy, dwh), dim=-1) / dxy.new_tensor(stds)


def decode_deltas(
    anchors: Tensor, deltas: Tensor, stds: tuple[float, ...] = DELTA_STDS, max_ratio: float = MAX_RATIO
) -> Tensor:
    """Boxes from anchors and deltas, inverse of encode_deltas [mmdet delta2bbox, no border clipping].

    anchors (..., 4) xyxy, deltas (..., 4) -> (..., 4) xyxy. The log-size deltas are clamped to
    [-max_ratio, max_ratio] after de-normalisation, as mmdet's DeltaXYWHBBoxCoder does, so that exp()
    cannot overflow on a wild prediction.
    """
    pa = xyxy_to_cxcywh(anchors)  # (..., 4)
    d = deltas * deltas.new_tensor(stds)
    cxy = pa[..., :2] + d[..., :2] * pa[..., 2:]
    wh = pa[..., 2:] * d[..., 2:].clamp(min=-max_ratio, max=max_ratio).exp()
    return cxcywh_to_xyxy(torch.cat((cxy, wh), dim=-1))
