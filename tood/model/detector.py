"""The one-stage detector: backbone + FPN + head, the training loss and test-time post-processing.

Glossary used across tood/ (STYLE.md B4):
    B batch, A priors summed over levels, A_l priors at level l, G padded GTs per image, C classes,
    K top-k, L levels (P3-P7, strides 8..128), N stacked head convs, F feature channels, H, W map size.
Boxes are xyxy absolute pixels unless a suffix says otherwise; labels are 0-based, background is C.

The ablation switches are each read in exactly one place: `build_head` (head, TAP), the heads' constructor
(anchor type), `choose_assigner` (assigner and the ATSS warm-up), `Detector.assign` (the phase's assigner
function), `choose_loss` (the phase's loss, loss.cls_target). Nothing here branches on the head type: both
heads return the same HeadOutput.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tood.config import AssignConfig, EvalConfig, LossConfig, ModelConfig
from tood.model.assigners import Assignment, atss_assign, choose_assigner, tal_assign
from tood.model.backbone import build_backbone
from tood.model.fixed_assigners import fcos_assign, fovea_assign, max_iou_assign
from tood.model.heads import HeadOutput, build_head
from tood.model.losses import choose_loss
from tood.model.priors import Priors, make_priors

STRIDES = (8, 16, 32, 64, 128)  # P3-P7 [R]


@dataclass
class Detections:
    """Final detections of one image, in the original image's pixels."""

    boxes: Tensor  # (K, 4) xyxy
    scores: Tensor  # (K,)
    labels: Tensor  # (K,) long, 0-based


class Detector(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = build_backbone(cfg)  # ResNet + FPN -> 5 maps
        self.head = build_head(cfg, num_classes)

    def forward(self, images: Tensor) -> HeadOutput:
        """images (B, 3, H, W), H and W multiples of 32 -> HeadOutput over all A priors."""
        feats = self.backbone(images)
        return self.head(feats, self.priors_for(feats))

    @staticmethod
    def priors_for(feats: list[Tensor]) -> Priors:
        sizes = [tuple(f.shape[-2:]) for f in feats]
        return make_priors(sizes, STRIDES, device=feats[0].device)

    @staticmethod
    def priors_for_image_size(height: int, width: int, device: torch.device | str = "cpu") -> Priors:
        """Priors of a padded input of this size. Each stride-2 stage maps n -> ceil(n / 2)."""
        sizes = [(-(-height // s), -(-width // s)) for s in STRIDES]
        return make_priors(sizes, STRIDES, device=device)

    def compute_loss(
        self,
        out: HeadOutput,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        image_size: tuple[int, int],
        *,
        epoch: int,
        assign_cfg: AssignConfig,
        loss_cfg: LossConfig,
    ) -> dict[str, Tensor]:
        """Assign targets and compute the losses of one batch; returns each term and their sum 'loss'.

        gt_boxes (B, G, 4), gt_labels (B, G), gt_mask (B, G) bool; image_size is the padded (H, W).
        `epoch` is explicit: the first `warmup_epochs` use ATSS + focal loss, later epochs the
        configured assigner (the official `initial_epoch`; mmdet reaches it through a hook).
        Assignment and losses run in fp32, outside any autocast region.
        """
        out = HeadOutput(scores=out.scores.float(), boxes=out.boxes.float(), centerness=out.centerness)
        phase, assignment = self.assign(
            out, gt_boxes, gt_labels, gt_mask, image_size, epoch=epoch, assign_cfg=assign_cfg
        )
        return self.losses(out, phase, assignment, image_size, loss_cfg)

    def assign(
        self,
        out: HeadOutput,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        image_size: tuple[int, int],
        *,
        epoch: int,
        assign_cfg: AssignConfig,
    ) -> tuple[str, Assignment]:
        """The first half of compute_loss: the phase of `epoch` (tood.model.assigners.choose_assigner) and its
        Assignment."""
        priors = self.priors_for_image_size(*image_size, device=out.scores.device)
        phase = choose_assigner(assign_cfg.assigner, epoch, assign_cfg.warmup_epochs)
        gts, C, c = (gt_boxes, gt_labels, gt_mask), self.num_classes, assign_cfg
        if phase == "tal":
            assignment = tal_assign(
                out.scores.detach().float(), out.boxes.detach().float(), priors.points, *gts,
                alpha=c.alpha, beta=c.beta, topk=c.topk,
            )  # fmt: skip
        elif phase == "atss":
            assignment = atss_assign(priors.anchors, priors.num_per_level, *gts, C, topk=c.atss_topk)
        elif phase == "max_iou":
            assignment = max_iou_assign(
                priors.anchors, *gts, C,
                pos_iou=c.max_iou_pos, neg_iou=c.max_iou_neg, min_pos_iou=c.max_iou_min_pos,
            )  # fmt: skip
        elif phase == "fovea":
            assignment = fovea_assign(
                priors.points, priors.num_per_level, *gts, C,
                sigma=c.fovea_sigma, scale_ranges=c.fovea_scale_ranges,
            )  # fmt: skip
        elif phase == "fcos":
            assignment = fcos_assign(
                priors.points, priors.num_per_level, *gts, C, range_bounds=c.fcos_range_bounds
            )
        else:
            raise ValueError(f"no assigner for phase {phase!r}")
        return phase, assignment

    def losses(
        self,
        out: HeadOutput,
        phase: str,
        assignment: Assignment,
        image_size: tuple[int, int],
        loss_cfg: LossConfig,
    ) -> dict[str, Tensor]:
        """The second half of compute_loss: the phase's loss terms and their sum 'loss' (out in fp32)."""
        points = self.priors_for_image_size(*image_size, device=out.scores.device).points
        losses = choose_loss(phase, loss_cfg.cls_target)(out, assignment, loss_cfg, points)
        losses["loss"] = sum(losses.values())
        if out.centerness is not None and "loss_ctr" not in losses:
            # TAL (and max-IoU, FoveaBox, GFL) do not train the parallel head's centerness. A zero-weighted
            # term keeps that output in the graph, so DDP's reducer gets a (zero) gradient for every
            # parameter in every phase and needs no unused-parameter search; nothing else changes (adding
            # exact zeros).
            losses["loss"] = losses["loss"] + 0.0 * out.centerness.sum()
        return losses

    @torch.no_grad()
    def postprocess(
        self,
        out: HeadOutput,
        metas: list[dict],
        image_size: tuple[int, int],
        eval_cfg: EvalConfig,
        use_centerness: bool,
    ) -> list[Detections]:
        """Score threshold and top-k per level, clip, drop empty boxes, class-wise NMS, max detections.

        metas[i] needs img_size (h, w) after resize, scale_factor and flipped; image_size is the padded (H, W).
        Boxes come back in original-image pixels. The source of each step is in `_postprocess_image`.

        `use_centerness` multiplies the selected scores by sigmoid(centerness), as the standard ATSS
        detector does at test time; the threshold and the top-k see the raw class score [mmdet ATSSHead]
        (`centerness_factor`). TOOD's sqrt(P*M) score is used as is [R].
        """
        scores = out.scores.float()  # (B, A, C)
        factors = centerness_factor(out, use_centerness)  # (B, A) or None
        num_per_level = self.priors_for_image_size(*image_size).num_per_level
        detections = []
        for i in range(scores.shape[0]):
            factors_i = None if factors is None else factors[i]  # (A,)
            detections.append(
                _postprocess_image(
                    scores[i], out.boxes[i].float(), factors_i, num_per_level, metas[i], eval_cfg
                )
            )
        return detections


def centerness_factor(out: HeadOutput, use_centerness: bool) -> Tensor | None:
    """(B, A) sigmoid(centerness) that multiplies the class scores at test time, or None (T-Head, TAL).

    Applied after the score threshold and the per-level top-k, never before: mmdet's ATSSHead
    (`filter_scores_and_topk` on the raw sigmoid score, then `_bbox_post_process` multiplies the
    `score_factors`) and the original ATSS (`box_cls > pre_nms_thresh` before `box_cls * centerness`).
    """
    if not use_centerness or out.centerness is None:
        return None
    return out.centerness.float().sigmoid()


def _postprocess_image(
    scores: Tensor,
    boxes: Tensor,
    factors: Tensor | None,
    num_per_level: tuple[int, ...],
    meta: dict,
    cfg: EvalConfig,
) -> Detections:
    """scores (A, C), boxes (A, 4) in the resized image, factors (A,) | None -> Detections in the original.

    Step by step, with the source each follows (docs/faithfulness.md):
    1. per level, (prior, class) pairs with raw score > score_thr, then the top nms_pre of them
       [mmdet TOOD/ATSS heads since 2.18, and 3.x: filter_scores_and_topk; fcjian keeps the top
       nms_pre priors by max class score and thresholds after];
    2. scores x centerness factor, parallel ATSS head only [mmdet ATSSHead score_factors];
    3. clip to the resized image [fcjian bbox_limited; mmdet ATSS clips in decode, mmdet TOOD does not],
       undo flip and resize;
    4. drop boxes with w <= 0 or h <= 0 [mmdet 3.x _bbox_post_process, min_bbox_size=0];
    5. class-wise NMS at nms_iou, keep max_per_img [all sources: batched_nms].
    """
    priors, labels, det_scores = _select_candidates(scores, num_per_level, cfg)  # (K,) each
    if factors is not None:
        det_scores = det_scores * factors[priors]
    det_boxes = _to_original(boxes[priors], meta)  # (K, 4)
    nonempty = (det_boxes[:, 2] > det_boxes[:, 0]) & (det_boxes[:, 3] > det_boxes[:, 1])  # (K,)
    det_boxes, det_scores, labels = det_boxes[nonempty], det_scores[nonempty], labels[nonempty]
    keep = batched_nms(det_boxes, det_scores, labels, cfg.nms_iou)[: cfg.max_per_img]  # class-wise NMS
    return Detections(boxes=det_boxes[keep], scores=det_scores[keep], labels=labels[keep])


def _select_candidates(
    scores: Tensor, num_per_level: tuple[int, ...], cfg: EvalConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Per level: (prior, class) pairs scoring > score_thr, then the nms_pre best [mmdet filter_scores_and_topk].

    scores (A, C) -> prior indices (K,) into A, labels (K,), their scores (K,); levels concatenated.
    """
    C = scores.shape[1]
    priors, labels, kept = [], [], []
    offset = 0
    for level_scores in scores.split(num_per_level):
        flat = level_scores.reshape(-1)  # (A_l * C,)
        candidates = (flat > cfg.score_thr).nonzero().squeeze(1)
        if candidates.numel() > cfg.nms_pre:
            candidates = candidates[flat[candidates].topk(cfg.nms_pre).indices]
        priors.append(candidates // C + offset)
        labels.append(candidates % C)
        kept.append(flat[candidates])
        offset += level_scores.shape[0]
    return torch.cat(priors), torch.cat(labels), torch.cat(kept)


def _to_original(boxes: Tensor, meta: dict) -> Tensor:
    """Clip to the resized image (before padding), then undo the resize and any flip."""
    h, w = meta["img_size"]
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)),
        1,
    )
    if meta.get("flipped", False):
        boxes = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), 1)
    sx, sy = _scale_xy(meta.get("scale_xy", meta["scale_factor"]))  # per-axis: sides are rounded
    return boxes / boxes.new_tensor([sx, sy, sx, sy])


def _scale_xy(scale_factor) -> tuple[float, float]:
    if isinstance(scale_factor, (int, float)):
        return float(scale_factor), float(scale_factor)
    sx, sy = scale_factor[:2]
    return float(sx), float(sy)
