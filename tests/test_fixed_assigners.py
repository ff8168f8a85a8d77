"""Tests of tood/model/fixed_assigners.py (issue 20: Table 2's max-IoU, FoveaBox and FCOS schemes).

Hand-worked answers on tiny grids, then parity with the literal per-image mmdetection 3.3 rules of
tests/mmdet_reference.py on random GTs, then the batch invariants every assigner here keeps (padding rows
change nothing, batched = per image).
"""

from __future__ import annotations

import pytest
import torch
from mmdet_reference import fcos_labels, fovea_labels, max_iou_gt_inds
from test_assigners import make_grid

from tood.model.fixed_assigners import fcos_assign, fovea_assign, max_iou_assign

C = 3  # classes; background label = 3


def _one(boxes, labels=None):
    """One image: gt_boxes (1, G, 4), gt_labels (1, G), gt_mask (1, G)."""
    boxes = torch.tensor(boxes, dtype=torch.float32)[None]
    labels = torch.zeros(boxes.shape[:2], dtype=torch.long) if labels is None else torch.tensor([labels])
    return boxes, labels, torch.ones(boxes.shape[:2], dtype=torch.bool)


# ------------------------------------------------------------------------------------------- max-IoU


def _max_iou(anchors, *gts, pos=0.5, neg=0.4, min_pos=0.0):
    anchors = torch.tensor(anchors, dtype=torch.float32)
    return max_iou_assign(anchors, *gts, C, pos_iou=pos, neg_iou=neg, min_pos_iou=min_pos)


def test_max_iou_thresholds_ignore_band_and_low_quality_match():
    """g0 = [0,0,10,10], g1 = [20,0,30,10]; anchors with hand-computed IoUs:
    a0 IoU(g0) 1 -> positive; a1 100/200 = 0.5 -> positive (>= 0.5); a2 100/220 = 0.45 -> ignored;
    a3 100/300 = 0.33 -> negative; a4 IoU(g1) 100/250 = 0.4 -> in the band, but it is g1's best anchor, so the
    low-quality rule makes it positive; a5 IoU(g1) 100/400 = 0.25 -> negative; a6 overlaps nothing:
    negative."""
    anchors = [[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 22], [0, 0, 10, 30], [20, 0, 30, 25],
               [20, 0, 30, 40], [50, 50, 60, 60]]  # fmt: skip
    asg = _max_iou(anchors, *_one([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 2]))
    assert asg.fg_mask[0].tolist() == [True, True, False, False, True, False, False]
    assert asg.ignore_mask[0].tolist() == [False, False, True, False, False, False, False]
    assert asg.labels[0].tolist() == [1, 1, C, C, 2, C, C]
    assert asg.gt_index[0, [0, 1, 4]].tolist() == [0, 0, 1]
    torch.testing.assert_close(asg.overlaps[0], torch.tensor([1.0, 0.5, 0, 0, 0.4, 0, 0]))
    assert asg.target_scores[0].tolist() == [1.0, 1.0, 0, 0, 1.0, 0, 0]
    torch.testing.assert_close(asg.target_boxes[0, 4], torch.tensor([20.0, 0, 30, 10]))


def test_max_iou_a_prior_best_for_two_gts_goes_to_the_later_one():
    """mmdet's own docstring case, extended: g0 = [0,0,10,10], g1 = [0,0,10,9].
    a0 = [0,0,10,10]: IoU 1 with g0, 0.9 with g1, and it is the best anchor of BOTH; the low-quality loop runs
    over GTs in order, so g1 (later) takes it, overriding the threshold step that gave it to g0.
    a1 = [0,0,10,8]: IoU 0.8 with g0, 80/90 = 0.889 with g1 -> positive for g1 by threshold.
    g0 ends with no positive at all: that is mmdet's rule, kept."""
    asg = _max_iou([[0, 0, 10, 10], [0, 0, 10, 8]], *_one([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 1]))
    assert asg.fg_mask[0].tolist() == [True, True]
    assert asg.gt_index[0].tolist() == [1, 1] and asg.labels[0].tolist() == [1, 1]
    torch.testing.assert_close(asg.overlaps[0], torch.tensor([0.9, 80 / 90]))


def test_max_iou_ties_make_every_tied_anchor_positive_and_min_pos_iou_gates_them():
    """A 4x4 GT inside two 16x16 anchors: both IoU 16/256 = 0.0625, both g's best (gt_max_assign_all)."""
    anchors = [[0, 0, 16, 16], [2, 0, 18, 16], [40, 40, 56, 56]]
    gts = _one([[4, 4, 8, 8]])
    assert _max_iou(anchors, *gts).fg_mask[0].tolist() == [True, True, False]
    assert _max_iou(anchors, *gts, min_pos=0.1).fg_mask[0].tolist() == [False, False, False]


def test_max_iou_empty_image_is_all_negative_and_padding_changes_nothing():
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 22], [30, 30, 40, 40]], dtype=torch.float32)
    boxes = torch.tensor([[[0, 0, 10, 10], [float("nan")] * 4], [[float("nan")] * 4, [0, 0, 10, 20]]])
    mask = torch.tensor([[True, False], [False, False]])  # image 1: padding only (a NaN box and junk)
    asg = max_iou_assign(anchors, boxes, torch.tensor([[0, 5], [7, 0]]), mask, C, pos_iou=0.5, neg_iou=0.4,
                         min_pos_iou=0.0)  # fmt: skip
    assert asg.fg_mask.tolist() == [[True, False, False], [False, False, False]]
    assert asg.ignore_mask.tolist() == [[False, True, False], [False, False, False]]
    assert not asg.target_boxes.isnan().any()


# ------------------------------------------------------------------------------------------- FoveaBox

POINTS, ANCHORS, NUM = make_grid([(4, 4), (2, 2)], (8, 16))  # P3 x, y in {0, 8, 16, 24}; P4 in {0, 16}
RANGES = ((1, 32), (16, 64))


def test_fovea_region_is_the_box_shrunk_by_sigma():
    """g0 = [0,0,20,20], size 20: levels P3 (1-32) and P4 (16-64). sigma 0.4: |x - 10| <= 4 -> only x = y = 8
    on P3 (prior 1*4+1 = 5); none of P4's {0, 16}. sigma 1: the whole box, closed: P3 x, y in {0, 8, 16}
    (9 priors) and P4 {0, 16} (4 priors, indices 16-19)."""
    asg = fovea_assign(POINTS, NUM, *_one([[0, 0, 20, 20]]), C, sigma=0.4, scale_ranges=RANGES)
    assert asg.fg_mask[0].nonzero().flatten().tolist() == [5]
    asg = fovea_assign(POINTS, NUM, *_one([[0, 0, 20, 20]]), C, sigma=1.0, scale_ranges=RANGES)
    assert asg.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 16, 17, 18, 19]


def test_fovea_scale_ranges_and_the_smaller_gt_wins():
    """g1 = [4,4,12,12], size 8: P3 only; its sigma-1 fovea holds x = y = 8 (prior 5), which g0 (size 20)
    claims too: the smaller GT takes it. A GT of size 100 fits no range here: no positive at all."""
    gts = _one([[0, 0, 20, 20], [4, 4, 12, 12], [0, 0, 100, 100]], [0, 1, 2])
    asg = fovea_assign(POINTS, NUM, *gts, C, sigma=1.0, scale_ranges=RANGES)
    assert asg.labels[0, 5].item() == 1 and asg.gt_index[0, 5].item() == 1
    assert asg.labels[0, [0, 1, 16]].tolist() == [0, 0, 0]
    assert 2 not in asg.labels[0].tolist()
    assert asg.overlaps.abs().sum() == 0


# ------------------------------------------------------------------------------------------------ FCOS


def test_fcos_inside_box_and_regression_range_inclusive_on_both_levels():
    """g0 = [0,0,20,20], bounds [16]: P3 takes max(l,t,r,b) in [-1, 16], P4 in [16, inf].
    Strictly inside: x, y in {8, 16} on P3 (priors 5, 6, 9, 10; x = 0 has l = 0, not > 0), max distances
    12 or 16 -> all in P3's range; on P4 only (16, 16) is inside, max distance 16 -> in [16, inf] too (prior
    19): the boundary belongs to both levels, as mmdet's >= and <=."""
    asg = fcos_assign(POINTS, NUM, *_one([[0, 0, 20, 20]]), C, range_bounds=[16.0])
    assert asg.fg_mask[0].nonzero().flatten().tolist() == [5, 6, 9, 10, 19]


def test_fcos_smallest_area_wins_and_range_filters():
    """g1 = [6,6,18,18] (area 144 < 400) holds all four P3 points of g0 with max distance 10: they go to g1.
    P4's (16, 16) is inside g1 too but its max distance 10 is below P4's 16: it stays g0's."""
    asg = fcos_assign(POINTS, NUM, *_one([[0, 0, 20, 20], [6, 6, 18, 18]], [0, 1]), C, range_bounds=[16.0])
    assert asg.labels[0, [5, 6, 9, 10, 19]].tolist() == [1, 1, 1, 1, 0]
    assert asg.target_scores[0, [5, 19]].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------- parity with the mmdet rules

SIZES, STRIDES = [(8, 8), (4, 4), (2, 2)], (8, 16, 32)  # a 64 x 64 image
GRID_POINTS, GRID_ANCHORS, GRID_NUM = make_grid(SIZES, STRIDES)


def _random_gts(gen: torch.Generator, n: int, margin: float = 16.0, max_side: float = 60.0) -> torch.Tensor:
    """n boxes with centres in [margin, 64 - margin] and sides in [4, max_side] px (float: no exact ties)."""
    centre = margin + (64 - 2 * margin) * torch.rand(n, 2, generator=gen)
    side = 4 + (max_side - 4) * torch.rand(n, 2, generator=gen)
    return torch.cat((centre - side / 2, centre + side / 2), dim=1)


@pytest.mark.parametrize("seed", range(8))
def test_max_iou_matches_mmdet_max_iou_assigner(seed):
    gen = torch.Generator().manual_seed(seed)
    gts = _random_gts(gen, 1 + seed % 5)
    expected = max_iou_gt_inds(GRID_ANCHORS, gts, 0.5, 0.4, 0.0)
    labels, mask = torch.arange(len(gts))[None], torch.ones(1, len(gts), dtype=bool)
    asg = max_iou_assign(GRID_ANCHORS, gts[None], labels, mask, C, pos_iou=0.5, neg_iou=0.4, min_pos_iou=0.0)
    ours = torch.where(asg.fg_mask[0], asg.gt_index[0] + 1, torch.where(asg.ignore_mask[0], -1, 0))
    assert ours.tolist() == expected.tolist()
    assert asg.fg_mask.any()  # every GT gets at least its best anchor


@pytest.mark.parametrize("sigma", [0.4, 0.8])
@pytest.mark.parametrize("seed", range(8))
def test_fovea_matches_mmdet_fovea_head_targets(seed, sigma):
    """Both on mmdet's cell-centre points ((j + 0.5) * s): ours takes any points, mmdet's are built in."""
    gen = torch.Generator().manual_seed(seed)
    gts = _random_gts(gen, 1 + seed % 5)
    G, ranges = len(gts), ((1, 24), (16, 48), (32, 128))
    expected = fovea_labels(gts, torch.arange(G), SIZES, STRIDES, ranges, sigma, G)
    centres = GRID_POINTS + torch.repeat_interleave(torch.tensor(STRIDES, dtype=torch.float32) / 2,
                                                     torch.tensor(GRID_NUM))[:, None]  # fmt: skip
    labels, mask = torch.arange(G)[None], torch.ones(1, G, dtype=bool)
    asg = fovea_assign(centres, GRID_NUM, gts[None], labels, mask, G, sigma=sigma, scale_ranges=ranges)
    assert asg.labels[0].tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(8))
def test_fcos_matches_mmdet_fcos_head_targets(seed):
    gen = torch.Generator().manual_seed(seed)
    gts = _random_gts(gen, 1 + seed % 5, margin=8.0)
    G, bounds = len(gts), (16.0, 32.0)
    regress_ranges = ((-1, 16.0), (16.0, 32.0), (32.0, 1e8))
    expected = fcos_labels(GRID_POINTS, gts, torch.arange(G), regress_ranges, GRID_NUM, G)
    labels, mask = torch.arange(G)[None], torch.ones(1, G, dtype=bool)
    asg = fcos_assign(GRID_POINTS, GRID_NUM, gts[None], labels, mask, G, range_bounds=bounds)
    assert asg.labels[0].tolist() == expected.tolist()
    assert asg.fg_mask.any()


# ------------------------------------------------------------------------------------------ invariants


def _run(name, boxes, labels, mask):
    if name == "max_iou":
        return max_iou_assign(GRID_ANCHORS, boxes, labels, mask, C, pos_iou=0.5, neg_iou=0.4, min_pos_iou=0.0)
    if name == "fovea":
        return fovea_assign(GRID_POINTS, GRID_NUM, boxes, labels, mask, C, sigma=0.4,
                            scale_ranges=((1, 24), (16, 48), (32, 128)))  # fmt: skip
    return fcos_assign(GRID_POINTS, GRID_NUM, boxes, labels, mask, C, range_bounds=(16.0, 32.0))


@pytest.mark.parametrize("name", ["max_iou", "fovea", "fcos"])
def test_batched_equals_per_image_and_padding_changes_nothing(name):
    gen = torch.Generator().manual_seed(3)
    per_image = [_random_gts(gen, 3), _random_gts(gen, 1)]
    G = 5  # padded, with NaN boxes and junk labels in the padding
    boxes = torch.full((2, G, 4), float("nan"))
    labels = torch.full((2, G), 99)
    mask = torch.zeros(2, G, dtype=torch.bool)
    for b, gts in enumerate(per_image):
        boxes[b, : len(gts)], labels[b, : len(gts)], mask[b, : len(gts)] = gts, b + 1, True
    batched = _run(name, boxes, labels, mask)
    for b, gts in enumerate(per_image):
        alone = _run(name, gts[None], torch.full((1, len(gts)), b + 1), torch.ones(1, len(gts), dtype=bool))
        for field in ("labels", "fg_mask", "gt_index", "target_boxes", "target_scores", "overlaps"):
            torch.testing.assert_close(getattr(batched, field)[b], getattr(alone, field)[0], msg=field)
        if name == "max_iou":
            assert batched.ignore_mask[b].tolist() == alone.ignore_mask[0].tolist()
    assert not batched.target_boxes.isnan().any()
    assert (batched.labels[batched.fg_mask] != 99).all()


@pytest.mark.parametrize("name", ["max_iou", "fovea", "fcos"])
def test_no_gt_rows_at_all_is_all_background(name):
    asg = _run(name, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=bool))
    assert not asg.fg_mask.any() and (asg.labels == C).all()
