"""Tests of the issue-20 losses in tood/model/losses.py: fixed_loss (max-IoU, FoveaBox), gfl_loss (ATSS + QFL)
and the phase -> loss pairing; QFL against GFL's mmdetection quality_focal_loss on logits."""

from __future__ import annotations

import math

import pytest
import torch
from mmdet_reference import quality_focal_loss as mmdet_qfl
from test_losses import FakeHeadOutput, _giou, bce, toy_batch

from tood.config import LossConfig
from tood.model.assigners import Assignment, atss_assign
from tood.model.fixed_assigners import fcos_assign, fovea_assign, max_iou_assign
from tood.model.losses import (
    atss_loss,
    choose_loss,
    fixed_loss,
    focal_loss_prob,
    gfl_loss,
    quality_focal_loss,
    tal_loss,
)

CFG = LossConfig()


def _assignment(fg, labels, target_boxes, ignore=None) -> Assignment:
    fg = torch.tensor([fg])
    return Assignment(
        labels=torch.tensor([labels]), fg_mask=fg, gt_index=torch.zeros_like(fg, dtype=torch.long),
        target_boxes=torch.tensor([target_boxes], dtype=torch.float32), target_scores=fg.float(),
        overlaps=torch.zeros(fg.shape), ignore_mask=None if ignore is None else torch.tensor([ignore]),
    )  # fmt: skip


def _focal(p, y, alpha=0.25, gamma=2.0):
    return bce(p, y) * (alpha if y else 1 - alpha) * abs(y - p) ** gamma


def test_qfl_on_probabilities_equals_mmdet_quality_focal_loss_on_logits():
    """GFL's QFL [mmdet quality_focal_loss, use_sigmoid=True] on logits x = ours on sigmoid(x), per prior."""
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(40, 5, generator=gen)
    labels = torch.randint(0, 6, (40,), generator=gen)  # 5 = background
    score = torch.rand(40, generator=gen)  # IoU targets (ignored on background)
    expected = mmdet_qfl(logits, labels, score, beta=2.0)  # (40,)
    ours = quality_focal_loss(logits.sigmoid()[None], labels[None], score[None], beta=2.0, reduction="none")
    # rtol 1e-4: BCE on a probability near 0 or 1 keeps less of fp32 than BCE-with-logits (logits up to ~9)
    torch.testing.assert_close(ours[0].sum(-1), expected, rtol=1e-4, atol=1e-6)


def test_fixed_loss_known_value_and_ignored_priors():
    """Three priors, C = 2: prior 0 positive of class 0 (scores 0.6, 0.1), box [0,0,2,2] vs GT [0,0,2,4]
    (GIoU 0.5); prior 1 ignored (scores 0.9, 0.9: left out); prior 2 background (0.2, 0.3).
    cls = focal(0.6, 1) + focal(0.1, 0) + focal(0.2, 0) + focal(0.3, 0); num_pos = 1; box = 2 * (1 - 0.5)."""
    out = FakeHeadOutput(
        torch.tensor([[[0.6, 0.1], [0.9, 0.9], [0.2, 0.3]]]),
        torch.tensor([[[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]]]),
    )
    asg = _assignment(
        [True, False, False], [0, 2, 2], [[0, 0, 2, 4], [0] * 4, [0] * 4], ignore=[False, True, False]
    )
    losses = fixed_loss(out, asg, CFG, torch.zeros(3, 2))
    expected = _focal(0.6, 1) + _focal(0.1, 0) + _focal(0.2, 0) + _focal(0.3, 0)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(2 * (1 - 0.5), rel=1e-5)
    asg.ignore_mask = None  # without the band, prior 1 adds its two negatives
    more = fixed_loss(out, asg, CFG, torch.zeros(3, 2))["loss_cls"].item()
    assert more == pytest.approx(expected + 2 * _focal(0.9, 0), rel=1e-5)


def test_fixed_loss_weighs_every_positive_alike_over_num_pos():
    """Two positives, GIoU 0.5 and 1.0: box = 2 * ((1 - 0.5) + 0) / 2 whatever their centerness."""
    out = FakeHeadOutput(torch.full((1, 2, 2), 0.5), torch.tensor([[[0.0, 0, 2, 2], [0, 0, 3, 3]]]))
    asg = _assignment([True, True], [0, 1], [[0, 0, 2, 4], [0, 0, 3, 3]])
    assert fixed_loss(out, asg, CFG, torch.zeros(2, 2))["loss_box"].item() == pytest.approx(0.5, rel=1e-5)


def test_gfl_loss_known_value():
    """GFL on two positives, C = 2 [mmdet GFLHead]:
    prior 0: class 0, scores (0.6, 0.2), box [0,0,2,2] vs GT [0,0,2,4]: IoU 0.5 = its class target, GIoU 0.5;
    prior 1: class 1, scores (0.1, 0.3), box = GT [0,0,3,3]: IoU 1, GIoU 1; prior 2: background (0.2, 0.1).
    cls = [bce(.6,.5)|.5-.6|^2 + bce(.2,0) .2^2] + [bce(.1,0) .1^2 + bce(.3,1) .7^2] + [bce(.2,0) .2^2 +
    bce(.1,0) .1^2], over num_pos = 2. box weights = the highest score of each positive (0.6, 0.3):
    box = 2 * (0.6 (1 - 0.5) + 0.3 (1 - 1)) / max(1, 0.9) = 0.6."""
    out = FakeHeadOutput(
        torch.tensor([[[0.6, 0.2], [0.1, 0.3], [0.2, 0.1]]]),
        torch.tensor([[[0.0, 0, 2, 2], [0, 0, 3, 3], [5, 5, 6, 6]]]),
    )
    asg = _assignment([True, True, False], [0, 1, 2], [[0, 0, 2, 4], [0, 0, 3, 3], [0] * 4])
    losses = gfl_loss(out, asg, CFG, torch.zeros(3, 2))
    cls = bce(0.6, 0.5) * 0.1**2 + bce(0.2, 0) * 0.2**2 + bce(0.1, 0) * 0.1**2 + bce(0.3, 1) * 0.7**2
    cls += bce(0.2, 0) * 0.2**2 + bce(0.1, 0) * 0.1**2
    assert set(losses) == {"loss_cls", "loss_box"}  # no centerness: GFL has none
    assert losses["loss_cls"].item() == pytest.approx(cls / 2, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(0.6, rel=1e-5)


def test_gfl_targets_and_weights_carry_no_gradient():
    """The IoU target and the box weight are detached [mmdet: .detach()]: d(loss_box)/d(scores) = 0."""
    out, points, anchors, gts = toy_batch(num_gts=2)
    asg = atss_assign(anchors, (64,), *gts, 3, topk=9)
    losses = gfl_loss(out, asg, CFG, points)
    (grad_scores,) = torch.autograd.grad(losses["loss_box"], out.scores, allow_unused=True, retain_graph=True)
    assert grad_scores is None or (grad_scores == 0).all()
    (grad_boxes,) = torch.autograd.grad(losses["loss_cls"], out.boxes, allow_unused=True)
    assert grad_boxes is None or (grad_boxes == 0).all()


def test_each_phase_is_paired_with_its_loss():
    assert choose_loss("tal", "hard") is tal_loss
    assert choose_loss("atss", "hard") is atss_loss and choose_loss("fcos", "hard") is atss_loss
    assert choose_loss("max_iou", "hard") is fixed_loss and choose_loss("fovea", "hard") is fixed_loss
    for phase in ("atss", "max_iou", "fovea", "fcos"):
        assert choose_loss(phase, "iou") is gfl_loss
    assert choose_loss("tal", "iou") is tal_loss  # the config refuses this pairing; TAL keeps t_hat
    with pytest.raises(ValueError, match="phase 'simota'"):
        choose_loss("simota", "hard")


def _assign(name, out, points, anchors, gts):
    if name == "max_iou":
        return max_iou_assign(anchors, *gts, 3, pos_iou=0.5, neg_iou=0.4, min_pos_iou=0.0)
    if name == "fovea":
        return fovea_assign(points, (64,), *gts, 3, sigma=0.4, scale_ranges=((1, 64),))
    if name == "fcos":
        return fcos_assign(points, (64,), *gts, 3, range_bounds=())
    return atss_assign(anchors, (64,), *gts, 3, topk=9)


@pytest.mark.parametrize(("name", "cls_target"), [("max_iou", "hard"), ("fovea", "hard"), ("fcos", "hard"),
                                                  ("atss", "iou"), ("max_iou", "iou")])  # fmt: skip
def test_every_scheme_trains_finite_and_regresses_only_positives(name, cls_target):
    out, points, anchors, gts = toy_batch(num_gts=2, with_centerness=True)
    asg = _assign(name, out, points, anchors, gts)
    assert asg.fg_mask[0].any() and not asg.fg_mask[1].any()  # image 1 has no GT
    losses = choose_loss(name, cls_target)(out, asg, CFG, points)
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and value > 0, key
    sum(losses.values()).backward()
    assert out.scores.grad.abs().sum() > 0 and (out.boxes.grad[~asg.fg_mask] == 0).all()
    assert ("loss_ctr" in losses) == (name == "fcos" and cls_target == "hard")


@pytest.mark.parametrize("loss_fn", [fixed_loss, gfl_loss])
def test_empty_batch_gives_zero_box_loss(loss_fn):
    out, points, anchors, gts = toy_batch(num_gts=1)
    gts = (gts[0], gts[1], torch.zeros_like(gts[2]))
    asg = atss_assign(anchors, (64,), *gts, 3, topk=9)
    losses = loss_fn(out, asg, CFG, points)
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() > 0
    assert math.isfinite(sum(losses.values()).item())


def test_focal_helper_is_focal_loss_prob_when_nothing_is_ignored():
    out, points, anchors, gts = toy_batch(num_gts=2)
    asg = atss_assign(anchors, (64,), *gts, 3, topk=9)
    num_pos = max(1.0, asg.fg_mask.sum().item())
    expected = focal_loss_prob(out.scores, asg.labels).item() / num_pos
    assert fixed_loss(out, asg, CFG, points)["loss_cls"].item() == pytest.approx(expected, rel=1e-6)
    giou = _giou(out.boxes[asg.fg_mask], asg.target_boxes[asg.fg_mask])
    expected_box = 2 * (1 - giou).sum().item() / num_pos
    assert fixed_loss(out, asg, CFG, points)["loss_box"].item() == pytest.approx(expected_box, rel=1e-5)
