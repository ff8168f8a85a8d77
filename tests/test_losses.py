"""Tests of tood/model/losses.py: known values, empty images, degenerate inputs, gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from tood.config import LossConfig
from tood.model.assigners import atss_assign, tal_assign
from tood.model.losses import (
    atss_loss,
    centerness_targets,
    focal_loss_prob,
    giou_loss,
    quality_focal_loss,
    reduce_mean,
    tal_loss,
)

CFG = LossConfig()


@dataclass
class FakeHeadOutput:  # duck-typed stand-in for tood.model.heads.HeadOutput
    scores: torch.Tensor  # (B, A, C) probabilities
    boxes: torch.Tensor  # (B, A, 4) xyxy pixels
    centerness: torch.Tensor | None = None  # (B, A) logits


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# ------------------------------------------------------------------------------------------ element losses


def test_quality_focal_loss_known_value():
    """One positive prior of class 1 with t_hat 0.8 and scores (0.2, 0.3); one background prior (0.1, 0.6)."""
    scores = torch.tensor([[[0.2, 0.3], [0.1, 0.6]]])
    loss = quality_focal_loss(scores, torch.tensor([[1, 2]]), torch.tensor([[0.8, 0.5]]), beta=2.0)
    expected = (
        bce(0.2, 0) * 0.2**2 + bce(0.3, 0.8) * 0.5**2  # positive prior: y = (0, 0.8)
        + bce(0.1, 0) * 0.1**2 + bce(0.6, 0) * 0.6**2  # background: y = 0, its target score is ignored
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    per_element = quality_focal_loss(
        scores, torch.tensor([[1, 2]]), torch.tensor([[0.8, 0.5]]), reduction="none"
    )
    assert per_element.shape == (1, 2, 2) and per_element.sum().item() == pytest.approx(expected, rel=1e-5)


def test_qfl_equals_focal_without_alpha_on_binary_targets():
    """With t_hat = 1 on positives, QFL(beta) is focal(gamma=beta) without the alpha balance: alpha=0.5 halves it."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 50, 5, generator=gen)
    labels = torch.randint(0, 6, (2, 50), generator=gen)  # 5 = background
    qfl = quality_focal_loss(scores, labels, torch.ones(2, 50), beta=2.0)
    focal = focal_loss_prob(scores, labels, alpha=0.5, gamma=2.0)
    torch.testing.assert_close(qfl, 2 * focal)


def test_focal_loss_prob_known_value():
    scores = torch.tensor([[[0.7, 0.2]]])
    loss = focal_loss_prob(scores, torch.tensor([[0]]), alpha=0.25, gamma=2.0)
    expected = 0.25 * bce(0.7, 1) * 0.3**2 + 0.75 * bce(0.2, 0) * 0.2**2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_giou_loss_known_values():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 4.0, 5.0, 9.0]])
    assert giou_loss(boxes, boxes, torch.ones(2)).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint unit squares one apart: IoU 0, enclosing area 3, union 2 -> GIoU -1/3, loss 4/3
    pred, target = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert giou_loss(pred, target, torch.tensor([0.5])).item() == pytest.approx(0.5 * 4 / 3, rel=1e-5)
    # scale invariance: the reference's stride-unit boxes give the same loss as pixels
    assert giou_loss(pred * 8, target * 8, torch.tensor([0.5])).item() == pytest.approx(0.5 * 4 / 3, rel=1e-5)


def test_centerness_targets_known_values():
    points = torch.tensor([[5.0, 5.0], [1.0, 2.0]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]]])
    # centre -> 1; (l, r) = (1, 3), (t, b) = (2, 2) -> sqrt(1/3 * 1)
    torch.testing.assert_close(centerness_targets(points, boxes), torch.tensor([[1.0, math.sqrt(1 / 3)]]))
    assert torch.isfinite(centerness_targets(points, torch.zeros(1, 2, 4))).all()  # background rows


def test_reduce_mean_is_identity_without_distributed():
    x = torch.tensor(3.5)
    assert reduce_mean(x) is x


def test_unknown_reduction_raises():
    with pytest.raises(ValueError):
        giou_loss(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1), reduction="mean")


# ----------------------------------------------------------------------------------- degenerate inputs


def test_finite_for_extreme_probabilities_and_degenerate_boxes():
    scores = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 1e-30]]], requires_grad=True)
    labels = torch.tensor([[0, 1, 2]])
    for loss in (
        quality_focal_loss(scores, labels, torch.tensor([[1.0, 0.3, 0.0]])),
        focal_loss_prob(scores, labels),
    ):
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, scores)
        assert torch.isfinite(grad).all()
    pred = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 9.0], [9.0, 9.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]],
        requires_grad=True,
    )  # zero-area, zero-width, inverted, ordinary
    target = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]]
    )
    loss = giou_loss(pred, target, torch.ones(4))
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------- phase losses


def toy_batch(num_gts, seed=0, with_centerness=False):
    """Two 64 x 64 images on a stride-8 grid of 64 points; image 1 has no GT at all."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(8) * 8.0, torch.arange(8) * 8.0, indexing="ij")
    points = torch.stack((xs.flatten(), ys.flatten()), -1)  # (64, 2)
    anchors = torch.cat((points - 32, points + 32), -1)
    scores = torch.rand(2, 64, 3, generator=gen).mul(0.8).add(0.1).requires_grad_()
    wh = 8 + 24 * torch.rand(2, 64, 2, generator=gen)
    boxes = torch.cat((points - wh / 2, points + wh / 2), -1).requires_grad_()
    gt_boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [30.0, 5.0, 60.0, 30.0]])[:num_gts]
    gt_boxes = torch.stack((gt_boxes, torch.zeros_like(gt_boxes)))  # (2, G, 4)
    gt_labels = torch.tensor([[1, 2][:num_gts]] * 2)
    gt_mask = torch.tensor([[True] * num_gts, [False] * num_gts])
    centerness = torch.randn(2, 64, generator=gen).requires_grad_() if with_centerness else None
    out = FakeHeadOutput(scores, boxes, centerness)
    return out, points, anchors, (gt_boxes, gt_labels, gt_mask)


def assign_both(out, points, anchors, gts):
    tal = tal_assign(out.scores, out.boxes, points, *gts, alpha=1.0, beta=6.0, topk=13)
    atss = atss_assign(anchors, (64,), *gts, 3, topk=9)
    return tal, atss


@pytest.mark.parametrize("phase", ["tal", "atss"])
def test_empty_images_give_zero_box_loss_and_positive_cls_loss(phase):
    out, points, anchors, gts = toy_batch(num_gts=1)
    gts = (gts[0], gts[1], torch.zeros_like(gts[2]))  # no valid GT in either image
    asg = assign_both(out, points, anchors, gts)[phase == "atss"]
    assert not asg.fg_mask.any()
    loss_fn = tal_loss if phase == "tal" else atss_loss
    losses = loss_fn(out, asg, CFG, points)
    assert losses["loss_box"].item() == 0.0 and not torch.isnan(losses["loss_box"])
    assert losses["loss_cls"].item() > 0 and torch.isfinite(losses["loss_cls"])
    sum(losses.values()).backward()  # the graph stays usable on an empty batch
    assert torch.isfinite(out.scores.grad).all() and (out.boxes.grad == 0).all()


@pytest.mark.parametrize("phase", ["tal", "atss"])
def test_losses_positive_and_gradients_flow(phase):
    out, points, anchors, gts = toy_batch(num_gts=2, with_centerness=True)
    asg = assign_both(out, points, anchors, gts)[phase == "atss"]
    assert asg.fg_mask[0].any() and not asg.fg_mask[1].any()
    losses = (tal_loss if phase == "tal" else atss_loss)(out, asg, CFG, points)
    expected_keys = {"loss_cls", "loss_box"} | ({"loss_ctr"} if phase == "atss" else set())
    assert set(losses) == expected_keys
    for name, value in losses.items():
        assert value.ndim == 0 and value.dtype == torch.float32 and torch.isfinite(value) and value > 0, name
    sum(losses.values()).backward()
    assert out.scores.grad.abs().sum() > 0 and out.boxes.grad.abs().sum() > 0
    assert (out.boxes.grad[~asg.fg_mask] == 0).all()  # only positives are regressed
    if phase == "atss":
        assert out.centerness.grad[asg.fg_mask].abs().sum() > 0


def test_atss_loss_without_centerness_has_no_ctr_term():
    out, points, anchors, gts = toy_batch(num_gts=2)
    losses = atss_loss(out, assign_both(out, points, anchors, gts)[1], CFG, points)
    assert set(losses) == {"loss_cls", "loss_box"}


def test_tal_loss_matches_hand_formula():
    """L_cls = QFL / D, L_box = 2 * sum t_hat (1 - GIoU) / D, D = max(1, sum t_hat)."""
    out, points, anchors, gts = toy_batch(num_gts=2)
    asg = assign_both(out, points, anchors, gts)[0]
    fg, t_hat = asg.fg_mask, asg.target_scores
    denom = max(1.0, t_hat.sum().item())
    losses = tal_loss(out, asg, CFG, points)
    qfl = quality_focal_loss(out.scores, asg.labels, t_hat, beta=2.0)
    box = (t_hat[fg] * (1 - _giou(out.boxes[fg], asg.target_boxes[fg]))).sum()
    assert losses["loss_cls"].item() == pytest.approx(qfl.item() / denom, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(2.0 * box.item() / denom, rel=1e-5)


def test_tal_normaliser_is_clamped_to_one():
    """A single positive with t_hat 0.5: D = max(1, 0.5) = 1, so the box loss is 2 * 0.5 * (1 - GIoU)."""
    out, points, anchors, gts = toy_batch(num_gts=1)
    asg = assign_both(out, points, anchors, gts)[0]
    keep = asg.fg_mask.nonzero()[0]
    asg.fg_mask = torch.zeros_like(asg.fg_mask)
    asg.fg_mask[keep[0], keep[1]] = True
    asg.target_scores = torch.where(asg.fg_mask, 0.5, 0.0)
    asg.labels = torch.where(asg.fg_mask, asg.labels, 3)
    losses = tal_loss(out, asg, CFG, points)
    giou = _giou(out.boxes[asg.fg_mask], asg.target_boxes[asg.fg_mask])
    assert losses["loss_box"].item() == pytest.approx(2 * 0.5 * (1 - giou.item()), rel=1e-5)


def test_losses_are_fp32_under_autocast():
    out, points, anchors, gts = toy_batch(num_gts=2, with_centerness=True)
    tal, atss = assign_both(out, points, anchors, gts)
    half = FakeHeadOutput(out.scores.bfloat16(), out.boxes.bfloat16(), out.centerness.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for losses in (tal_loss(half, tal, CFG, points), atss_loss(half, atss, CFG, points)):
            assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def _giou(a, b):
    """Independent GIoU for matching rows (Rezatofighi et al. 2019)."""
    area = lambda r: (r[:, 2] - r[:, 0]).clamp(min=0) * (r[:, 3] - r[:, 1]).clamp(min=0)
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area(a) + area(b) - inter
    enclose = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return inter / union - (enclose - union) / enclose
