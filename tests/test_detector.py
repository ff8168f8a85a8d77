"""Detector post-processing (score threshold, per-level top-k, class-wise NMS, max detections, mapping back to
the original image) and the loss dispatch between the ATSS warm-up and TAL."""

import dataclasses
import math

import pytest
import torch

import tood.model.detector
from tood.config import AssignConfig, EvalConfig, LossConfig, ModelConfig
from tood.model.detector import Detector
from tood.model.heads import HeadOutput

SMALL = ModelConfig(depth=18, fpn_channels=16, stacked_convs=2, gn_groups=4, la_reduction=4)
IMAGE = (64, 64)  # padded size -> levels 8x8, 4x4, 2x2, 1x1, 1x1 = 86 priors
A = 64 + 16 + 4 + 1 + 1
META = {"img_size": (64, 64), "scale_factor": 0.5, "scale_xy": (0.5, 0.5), "flipped": False}


def _detector(num_classes=3) -> Detector:
    torch.manual_seed(0)
    return Detector(SMALL, num_classes).eval()


def _output(scores: torch.Tensor, boxes: torch.Tensor, centerness=None) -> HeadOutput:
    return HeadOutput(scores=scores[None], boxes=boxes[None], centerness=centerness)


def _boxes_at(*xyxy) -> torch.Tensor:
    boxes = torch.zeros(A, 4)
    boxes[:, 2:] = 1.0  # tiny distinct-ish default boxes
    for i, b in enumerate(xyxy):
        boxes[i] = torch.tensor(b, dtype=torch.float32)
    return boxes


def test_threshold_nms_and_mapping_to_the_original_image():
    scores = torch.zeros(A, 3)
    scores[0, 1], scores[1, 1], scores[2, 1], scores[3, 2] = 0.9, 0.8, 0.04, 0.7
    boxes = _boxes_at((10, 10, 30, 30), (11, 11, 31, 31), (40, 40, 50, 50), (11, 11, 31, 31))
    (det,) = _detector().postprocess(
        _output(scores, boxes), [META], IMAGE, EvalConfig(), use_centerness=False
    )
    # prior 1 is suppressed by prior 0 (same class, IoU 0.82 > 0.6); prior 2 is under score_thr 0.05;
    # prior 3 overlaps as much but has another class, so class-wise NMS keeps it
    assert det.labels.tolist() == [1, 2]
    assert torch.allclose(det.scores, torch.tensor([0.9, 0.7]))
    assert torch.allclose(det.boxes, torch.tensor([[20.0, 20, 60, 60], [22, 22, 62, 62]]))  # / scale 0.5


def test_max_detections_and_per_level_topk():
    scores = torch.zeros(A, 3)
    scores[:64, 0] = torch.linspace(0.9, 0.1, 64)  # level P3 only
    boxes = torch.stack([torch.tensor([i * 10.0, 0, i * 10 + 5, 5]) for i in range(A)])  # no overlaps
    detector = _detector()
    (det,) = detector.postprocess(_output(scores, boxes), [META], IMAGE, EvalConfig(max_per_img=7), False)
    assert len(det.scores) == 7 and torch.all(det.scores[:-1] >= det.scores[1:]) and det.scores[0] == 0.9
    (det,) = detector.postprocess(_output(scores, boxes), [META], IMAGE, EvalConfig(nms_pre=5), False)
    assert len(det.scores) == 5  # top-5 pairs of the level before NMS


def test_boxes_are_clipped_and_flips_undone():
    scores = torch.zeros(A, 3)
    scores[0, 0] = 0.9
    boxes = _boxes_at((-5, 10, 20, 80))
    meta = {**META, "img_size": (60, 64), "flipped": True}
    (det,) = _detector().postprocess(_output(scores, boxes), [meta], IMAGE, EvalConfig(), False)
    # clipped to (0, 10, 20, 60) in the 64-wide resized image, unflipped to (44, 10, 64, 60), then / 0.5
    assert torch.allclose(det.boxes, torch.tensor([[88.0, 20, 128, 120]]))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_centerness_multiplies_after_the_threshold_not_before():
    """Hand-worked [mmdet ATSSHead: filter_scores_and_topk on sigmoid(cls), then x score_factors]:
    prior 0: cls 0.08 > 0.05, centerness 0.5 -> product 0.04 < 0.05, still kept with score 0.04;
    prior 1: cls 0.04 < 0.05, centerness 0.99 -> dropped by the threshold on the raw score;
    prior 2: cls 0.30, centerness 0.5 -> 0.15. Without the factor prior 0 keeps its raw 0.08."""
    scores = torch.zeros(A, 3)
    scores[0, 1], scores[1, 0], scores[2, 2] = 0.08, 0.04, 0.30
    centerness = torch.full((1, A), _logit(0.5))
    centerness[0, 1] = _logit(0.99)
    boxes = _boxes_at((0, 0, 10, 10), (20, 20, 30, 30), (40, 40, 50, 50))
    out = _output(scores, boxes, centerness)
    detector = _detector()
    (det,) = detector.postprocess(out, [META], IMAGE, EvalConfig(), use_centerness=True)
    assert det.labels.tolist() == [2, 1]
    assert torch.allclose(det.scores, torch.tensor([0.15, 0.04]))
    (raw,) = detector.postprocess(out, [META], IMAGE, EvalConfig(), use_centerness=False)
    assert raw.labels.tolist() == [2, 1] and torch.allclose(raw.scores, torch.tensor([0.30, 0.08]))


def test_nms_pre_topk_ranks_by_the_raw_class_score():
    """nms_pre=1 on P3: prior 0 (cls 0.9, centerness 0.1 -> 0.09) beats prior 1 (cls 0.5, centerness 0.9
    -> 0.45) on the raw score, so prior 0 is the one kept, with its product 0.09."""
    scores = torch.zeros(A, 3)
    scores[0, 0], scores[1, 0] = 0.9, 0.5
    centerness = torch.zeros(1, A)
    centerness[0, 0], centerness[0, 1] = _logit(0.1), _logit(0.9)
    boxes = _boxes_at((0, 0, 10, 10), (20, 20, 30, 30))
    out = _output(scores, boxes, centerness)
    (det,) = _detector().postprocess(out, [META], IMAGE, EvalConfig(nms_pre=1), use_centerness=True)
    assert torch.allclose(det.scores, torch.tensor([0.09])) and torch.allclose(
        det.boxes[0, 2:], torch.tensor([20.0, 20.0])
    )


def test_centerness_is_ignored_when_not_asked_or_absent():
    scores = torch.zeros(A, 3)
    scores[0, 0] = 0.5
    boxes = _boxes_at((0, 0, 10, 10))
    detector = _detector()
    for out, use in (
        (_output(scores, boxes, torch.full((1, A), -100.0)), False),
        (_output(scores, boxes), True),
    ):
        (det,) = detector.postprocess(out, [META], IMAGE, EvalConfig(), use)
        assert det.scores.tolist() == [0.5]


def test_zero_area_boxes_after_clipping_are_dropped():
    """mmdet 3.x min_bbox_size=0 keeps only w > 0 and h > 0: a zero-width box, and a box that clipping to
    the 64x60 resized image flattens to zero width (x 70..90 -> 64..64), are dropped; the third is kept."""
    scores = torch.zeros(A, 3)
    scores[0, 0], scores[1, 1], scores[2, 2] = 0.9, 0.8, 0.7
    boxes = _boxes_at((10, 10, 10, 30), (70, 10, 90, 30), (5, 61, 20, 70), (30, 30, 40, 40))
    scores[3, 0] = 0.6
    meta = {**META, "img_size": (60, 64)}
    (det,) = _detector().postprocess(_output(scores, boxes), [meta], IMAGE, EvalConfig(), False)
    # (5, 61, 20, 70) clips to h = 60 - 60 = 0 as well: only prior 3 survives
    assert det.labels.tolist() == [0] and torch.allclose(det.scores, torch.tensor([0.6]))
    assert torch.allclose(det.boxes, torch.tensor([[60.0, 60, 80, 80]]))


def test_loss_switches_from_atss_warmup_to_tal_by_explicit_epoch():
    detector = _detector().train()
    images = torch.randn(2, 3, *IMAGE)
    gt_boxes = torch.tensor([[[8.0, 8, 40, 40]], [[0, 0, 0, 0]]])
    gt_labels = torch.tensor([[1], [0]])
    gt_mask = torch.tensor([[True], [False]])
    assign = AssignConfig(assigner="tal", warmup_epochs=1)
    out = detector(images)
    warm = detector.compute_loss(
        out, gt_boxes, gt_labels, gt_mask, IMAGE, epoch=0, assign_cfg=assign, loss_cfg=LossConfig()
    )
    tal = detector.compute_loss(
        out, gt_boxes, gt_labels, gt_mask, IMAGE, epoch=1, assign_cfg=assign, loss_cfg=LossConfig()
    )
    assert warm["loss_box"] > 0 and tal["loss_cls"] > 0
    assert not torch.equal(warm["loss_cls"], tal["loss_cls"])  # focal vs quality-focal
    assert torch.isclose(tal["loss"], tal["loss_cls"] + tal["loss_box"])
    tal["loss"].backward()
    assert all(p.grad is not None for p in detector.head.parameters())


@pytest.mark.parametrize("head", ["tood", "parallel"])
@pytest.mark.parametrize("epoch", [0, 1], ids=["atss-warmup", "tal"])
def test_bf16_autocast_forward_and_backward_stay_finite_with_fp32_assignment(head, epoch, monkeypatch):
    """Mixed precision as tood.engine.train runs it: the model under CPU bf16 autocast (channels_last), then
    assignment and losses in fp32 (reference/tood.md pitfall 6: beta=6 underflows in half precision)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, head=head)
    detector = Detector(cfg, 3).train().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, *IMAGE).contiguous(memory_format=torch.channels_last)
    gt_boxes = torch.tensor([[[8.0, 8, 40, 40], [30, 20, 60, 50]], [[4, 4, 20, 36], [0, 0, 0, 0]]])
    gt_labels, gt_mask = torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, True], [True, False]])
    seen = []
    for name in ("tal_assign", "atss_assign"):
        original = getattr(tood.model.detector, name)

        def spy(*args, _original=original, **kwargs):
            seen.extend(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
            assert not torch.is_autocast_enabled("cpu")
            return _original(*args, **kwargs)

        monkeypatch.setattr(tood.model.detector, name, spy)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert detector.backbone(images)[0].dtype == torch.bfloat16  # autocast really is on
        out = detector(images)
        with torch.autocast("cpu", enabled=False):  # as tood.engine.loop.compute_loss
            losses = detector.compute_loss(
                out, gt_boxes, gt_labels, gt_mask, IMAGE, epoch=epoch,
                assign_cfg=AssignConfig(assigner="tal", warmup_epochs=1), loss_cfg=LossConfig(),
            )  # fmt: skip
    assert seen and all(dtype == torch.float32 for dtype in seen)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0
    losses["loss"].backward()
    grads = {n: p.grad for n, p in detector.named_parameters() if p.requires_grad}
    bad = [
        (n, None if g is None else g.abs().max().item())
        for n, g in grads.items()
        if g is None or not torch.isfinite(g).all()
    ]
    assert not bad, f"missing or non-finite gradients: {bad}"
    if head == "parallel" and epoch == 1:  # TAL leaves centerness untrained: an exact zero gradient
        assert grads["head.centerness_conv.weight"].abs().sum() == 0
