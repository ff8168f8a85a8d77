"""Per-level prior grids: one prior per feature-map location, flattened level-major then row-major.

A prior is the location (i, j) of level l with stride s. Its point is (j*s, i*s) in pixels: the
reference's anchor generator uses center offset 0, so points sit on the top-left corner of each cell,
not its centre [R: AnchorGenerator(center_offset=0)]. Its anchor is the 8*s square centred on the point
(octave_base_scale 8, one scale, ratio 1) [R]; anchor-free heads only use the point, anchor-based heads
regress deltas from the anchor, and the ATSS assigner uses the anchor box in both modes [R].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Priors:
    points: Tensor  # (A, 2) xy pixels: (j*s, i*s) for cell (i, j) of a level with stride s
    strides: Tensor  # (A,) float stride of each prior's level
    anchors: Tensor  # (A, 4) xyxy 8*stride squares centred on points
    num_per_level: tuple[int, ...]  # A_l, sum == A
    sizes: tuple[tuple[int, int], ...]  # (H_l, W_l) per level


def make_priors(
    feat_sizes: list[tuple[int, int]],
    strides: tuple[int, ...],
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    octave_scale: float = 8,
) -> Priors:
    """Points, strides and square anchors of every level, in the order the heads flatten their maps.

    Args:
        feat_sizes: (H_l, W_l) of each level.
        strides: stride s_l of each level, same length as feat_sizes.
        octave_scale: anchor side in strides (8 in the reference).
    """
    if len(feat_sizes) != len(strides):
        raise ValueError(f"{len(feat_sizes)} feature sizes but {len(strides)} strides")
    points, level_strides = [], []
    for (h, w), s in zip(feat_sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s  # (H,)
        xs = torch.arange(w, device=device, dtype=dtype) * s  # (W,)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each: row-major order
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))  # (A_l, 2)
        level_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))  # (A_l,)
    points_all = torch.cat(points)  # (A, 2)
    strides_all = torch.cat(level_strides)  # (A,)
    half = (octave_scale * strides_all / 2)[:, None]  # (A, 1)
    anchors = torch.cat((points_all - half, points_all + half), dim=-1)  # (A, 4)
    return Priors(
        points=points_all,
        strides=strides_all,
        anchors=anchors,
        num_per_level=tuple(h * w for h, w in feat_sizes),
        sizes=tuple((int(h), int(w)) for h, w in feat_sizes),
    )
