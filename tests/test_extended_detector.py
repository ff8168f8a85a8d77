"""The detector trains every issue-20 variant: each assigner and loss switch through Detector.compute_loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tood.config import AssignConfig, LossConfig, ModelConfig
from tood.model.detector import Detector

SMALL = ModelConfig(depth=18, fpn_channels=16, stacked_convs=2, gn_groups=4, la_reduction=4, head="parallel")
GTS = (
    torch.tensor([[[8.0, 8.0, 40.0, 30.0], [30.0, 20.0, 60.0, 60.0]], [[0.0, 0.0, 0.0, 0.0]] * 2]),
    torch.tensor([[0, 2], [0, 0]]),
    torch.tensor([[True, True], [False, False]]),  # image 1 has no GT
)


@pytest.mark.parametrize(
    ("assigner", "cls_target", "anchor", "tap", "loss_keys"),
    [
        ("max_iou", "hard", "based", False, {"loss_cls", "loss_box"}),
        ("fovea", "hard", "free", False, {"loss_cls", "loss_box"}),
        ("fcos", "hard", "free", False, {"loss_cls", "loss_box", "loss_ctr"}),
        ("atss", "iou", "free", False, {"loss_cls", "loss_box"}),
        ("tal", "hard", "free", True, {"loss_cls", "loss_box"}),
    ],
)
def test_each_scheme_gives_finite_losses_and_gradients_to_every_parameter(
    assigner, cls_target, anchor, tap, loss_keys
):
    torch.manual_seed(0)
    detector = Detector(dataclasses.replace(SMALL, anchor=anchor, tap=tap), num_classes=3)
    out = detector(torch.randn(2, 3, 64, 64))
    assign_cfg = AssignConfig(assigner=assigner, warmup_epochs=1)
    losses = detector.compute_loss(
        out, *GTS, (64, 64), epoch=1, assign_cfg=assign_cfg, loss_cfg=LossConfig(cls_target=cls_target)
    )
    assert set(losses) == loss_keys | {"loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    frozen = {n for n, p in detector.named_parameters() if not p.requires_grad}
    for name, p in detector.named_parameters():
        if name not in frozen and name.startswith("head."):
            assert p.grad is not None, name  # centerness too, through the zero-weighted term (DDP)


def test_tal_warm_up_phase_is_atss_and_the_fixed_schemes_have_none():
    detector = Detector(SMALL, num_classes=3)
    out = detector(torch.randn(2, 3, 64, 64))
    for assigner, epoch, phase in (
        ("tal", 0, "atss"),
        ("tal", 4, "tal"),
        ("fovea", 0, "fovea"),
        ("fcos", 0, "fcos"),
    ):
        got, _ = detector.assign(out, *GTS, (64, 64), epoch=epoch, assign_cfg=AssignConfig(assigner=assigner))
        assert got == phase
