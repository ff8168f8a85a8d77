"""mmdetection-side test material, written here independently of tood/model/mmdet_import.py.

1. State dicts carrying mmdetection's key names and shapes, spelled out from mmdet's documented module
   structure: ResNet (mmdet/models/backbones/resnet.py: conv1, bn1, layer{i}.{b}.conv/bn, downsample.0/1),
   FPN (necks/fpn.py: lateral_convs.{i}.conv, fpn_convs.{i}.conv with the two 'on_output' extra convs
   appended as fpn_convs.3 / .4), TOODHead (dense_heads/tood_head.py) and ATSSHead (dense_heads/atss_head.py)
   whose ConvModules hold `.conv` (no bias: GN follows) and `.gn`; mmcv's Scale is a 0-d `.scale`.
   fcjian/TOOD's T-Head names three pieces differently (la_conv1/2, cls_prob_conv1/2, reg_offset_conv1/2).
2. A functional forward of the mmdet heads (F.conv2d, F.group_norm, torchvision's deform_conv2d), following
   mmdet's TOODHead.forward / ATSSHead.forward_single step by step, reading the mmdet-named tensors only.
3. mmdet's MaxIoUAssigner, FoveaHead and FCOSHead target rules and GFL's quality_focal_loss, per image and
   literal (issue 20; tests/test_fixed_assigners.py, tests/test_losses.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

STRIDES = (8, 16, 32, 64, 128)
RESNET = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}  # mmdet ResNet.arch_settings


def _add_bn(sd: dict, prefix: str, channels: int, gen: torch.Generator) -> None:
    sd[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=gen)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=gen)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=gen)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _add_conv(
    sd: dict, prefix: str, out_c: int, in_c: int, k: int, gen: torch.Generator, bias: bool = True
) -> None:
    sd[f"{prefix}.weight"] = torch.randn(out_c, in_c, k, k, generator=gen) / math.sqrt(in_c * k * k)
    if bias:
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(out_c, generator=gen)


def mmdet_resnet(depth: int, gen: torch.Generator) -> dict[str, Tensor]:
    """backbone.* of mmdet ResNet(depth, style='pytorch'), BN with running stats."""
    block, counts = RESNET[depth]
    expansion = 4 if block == "bottleneck" else 1
    sd: dict[str, Tensor] = {}
    _add_conv(sd, "backbone.conv1", 64, 3, 7, gen, bias=False)
    _add_bn(sd, "backbone.bn1", 64, gen)
    inplanes = 64
    for i, count in enumerate(counts):
        planes = 64 * 2**i
        for b in range(count):
            p = f"backbone.layer{i + 1}.{b}"
            if block == "bottleneck":  # conv1 1x1, conv2 3x3 (stride), conv3 1x1 x4
                _add_conv(sd, f"{p}.conv1", planes, inplanes, 1, gen, bias=False)
                _add_conv(sd, f"{p}.conv2", planes, planes, 3, gen, bias=False)
                _add_conv(sd, f"{p}.conv3", planes * 4, planes, 1, gen, bias=False)
                for n, c in ((1, planes), (2, planes), (3, planes * 4)):
                    _add_bn(sd, f"{p}.bn{n}", c, gen)
            else:  # BasicBlock: two 3x3
                _add_conv(sd, f"{p}.conv1", planes, inplanes, 3, gen, bias=False)
                _add_conv(sd, f"{p}.conv2", planes, planes, 3, gen, bias=False)
                _add_bn(sd, f"{p}.bn1", planes, gen)
                _add_bn(sd, f"{p}.bn2", planes, gen)
            if b == 0 and (i > 0 or inplanes != planes * expansion):  # ResLayer's downsample
                _add_conv(sd, f"{p}.downsample.0", planes * expansion, inplanes, 1, gen, bias=False)
                _add_bn(sd, f"{p}.downsample.1", planes * expansion, gen)
            inplanes = planes * expansion
    return sd


def mmdet_fpn(in_channels: tuple[int, ...], out_c: int, gen: torch.Generator) -> dict[str, Tensor]:
    """neck.* of FPN(start_level=1, add_extra_convs='on_output', num_outs=5) on C3-C5."""
    sd: dict[str, Tensor] = {}
    for i, c in enumerate(in_channels):
        _add_conv(sd, f"neck.lateral_convs.{i}.conv", out_c, c, 1, gen)
        _add_conv(sd, f"neck.fpn_convs.{i}.conv", out_c, out_c, 3, gen)
    for i in (3, 4):  # the two extra levels, appended to fpn_convs
        _add_conv(sd, f"neck.fpn_convs.{i}.conv", out_c, out_c, 3, gen)
    return sd


def _add_conv_gn(sd: dict, prefix: str, out_c: int, in_c: int, k: int, gen: torch.Generator) -> None:
    _add_conv(sd, f"{prefix}.conv", out_c, in_c, k, gen, bias=False)  # ConvModule: bias off before a norm
    sd[f"{prefix}.gn.weight"] = 1 + 0.1 * torch.randn(out_c, generator=gen)
    sd[f"{prefix}.gn.bias"] = 0.1 * torch.randn(out_c, generator=gen)


def _scales(sd: dict, gen: torch.Generator) -> None:
    for level in range(len(STRIDES)):
        sd[f"bbox_head.scales.{level}.scale"] = 0.5 + torch.rand((), generator=gen)  # mmcv Scale: 0-d


def mmdet_tood_head(feat: int, n: int, num_classes: int, gen: torch.Generator) -> dict[str, Tensor]:
    """bbox_head.* of mmdet TOODHead(stacked_convs=n, feat_channels=feat); la_down_rate = 8n."""
    sd: dict[str, Tensor] = {}
    for i in range(n):
        _add_conv_gn(sd, f"bbox_head.inter_convs.{i}", feat, feat, 3, gen)
    for task in ("cls", "reg"):
        p = f"bbox_head.{task}_decomp"
        _add_conv(sd, f"{p}.layer_attention.0", feat * n // (8 * n), feat * n, 1, gen)
        _add_conv(sd, f"{p}.layer_attention.2", n, feat * n // (8 * n), 1, gen)
        _add_conv_gn(sd, f"{p}.reduction_conv", feat, feat * n, 1, gen)
    _add_conv(sd, "bbox_head.tood_cls", num_classes, feat, 3, gen)
    _add_conv(sd, "bbox_head.tood_reg", 4, feat, 3, gen)
    for name, out_c in (("cls_prob_module", 1), ("reg_offset_module", 8)):
        _add_conv(sd, f"bbox_head.{name}.0", feat // 4, feat * n, 1, gen)
        _add_conv(sd, f"bbox_head.{name}.2", out_c, feat // 4, 3, gen)
    sd["bbox_head.reg_offset_module.2.weight"] *= 8  # offsets of a few cells: sampling moves the boxes
    _scales(sd, gen)
    return sd


FCJIAN_NAMES = {  # mmdet TOODHead name -> fcjian/TOOD name (fcjian's tood_head.py _init_layers)
    "layer_attention.0": "la_conv1", "layer_attention.2": "la_conv2",
    "cls_prob_module.0": "cls_prob_conv1", "cls_prob_module.2": "cls_prob_conv2",
    "reg_offset_module.0": "reg_offset_conv1", "reg_offset_module.2": "reg_offset_conv2",
}  # fmt: skip


def as_fcjian(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        for mm, fc in FCJIAN_NAMES.items():
            key = key.replace(f".{mm}.", f".{fc}.")
        out[key] = value
    return out


def mmdet_atss_head(feat: int, num_classes: int, gen: torch.Generator) -> dict[str, Tensor]:
    """bbox_head.* of mmdet ATSSHead(stacked_convs=4, feat_channels=feat), one anchor per location."""
    sd: dict[str, Tensor] = {}
    for task in ("cls", "reg"):
        for i in range(4):
            _add_conv_gn(sd, f"bbox_head.{task}_convs.{i}", feat, feat, 3, gen)
    _add_conv(sd, "bbox_head.atss_cls", num_classes, feat, 3, gen)
    _add_conv(sd, "bbox_head.atss_reg", 4, feat, 3, gen)
    _add_conv(sd, "bbox_head.atss_centerness", 1, feat, 3, gen)
    _scales(sd, gen)
    return sd


def mmdet_checkpoint(depth: int, feat: int, head: str, gen: torch.Generator, n: int = 6, classes: int = 80):
    """{"state_dict": backbone + neck + head, "meta": {}} as mmdetection saves it."""
    c3_c5 = (512, 1024, 2048) if RESNET[depth][0] == "bottleneck" else (128, 256, 512)
    head_sd = (
        mmdet_tood_head(feat, n, classes, gen) if head == "tood" else mmdet_atss_head(feat, classes, gen)
    )
    return {"state_dict": {**mmdet_resnet(depth, gen), **mmdet_fpn(c3_c5, feat, gen), **head_sd}, "meta": {}}


# ---------------------------------------------------------------------------------------------------
# functional forward of the mmdet heads


def _conv_module(x: Tensor, sd: dict, prefix: str, groups: int, padding: int) -> Tensor:
    x = F.conv2d(x, sd[f"{prefix}.conv.weight"], None, padding=padding)
    return F.relu(F.group_norm(x, groups, sd[f"{prefix}.gn.weight"], sd[f"{prefix}.gn.bias"]))


def _apply(x: Tensor, sd: dict, prefix: str, padding: int = 0) -> Tensor:
    return F.conv2d(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], padding=padding)


def _task_decomposition(feat: Tensor, avg: Tensor, sd: dict, prefix: str, n: int, groups: int) -> Tensor:
    """mmdet TaskDecomposition.forward: the layer attention folded into the 1x1 reduction conv's weight."""
    B, NF = feat.shape[:2]
    Fc = NF // n
    weight = torch.sigmoid(
        _apply(F.relu(_apply(avg, sd, f"{prefix}.layer_attention.0")), sd, f"{prefix}.layer_attention.2")
    )
    conv_w = weight.reshape(B, 1, n, 1) * sd[f"{prefix}.reduction_conv.conv.weight"].reshape(1, Fc, n, Fc)
    conv_w = conv_w.reshape(B, Fc, NF, 1, 1)  # one 1x1 conv per image
    out = torch.cat([F.conv2d(feat[b : b + 1], conv_w[b]) for b in range(B)])  # (B, F, H, W)
    gn = f"{prefix}.reduction_conv.gn"
    return F.relu(F.group_norm(out, groups, sd[f"{gn}.weight"], sd[f"{gn}.bias"]))


def _grid(h: int, w: int, stride: int) -> tuple[Tensor, Tensor]:
    """mmdet AnchorGenerator(octave_base_scale=8, ratios=[1], center_offset=0): centres (j*s, i*s) and the
    8s squares around them, row-major. Returns centres (HW, 2) and anchors (HW, 4) in pixels."""
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    centres = torch.stack((xs.reshape(-1), ys.reshape(-1)), -1).float()
    return centres, torch.cat((centres - 4 * stride, centres + 4 * stride), -1)


def delta2bbox(anchors: Tensor, deltas: Tensor, stds=(0.1, 0.1, 0.2, 0.2), clip=16 / 1000) -> Tensor:
    """mmdet DeltaXYWHBBoxCoder.decode (means 0, no max_shape): (N, 4), (N, 4) -> (N, 4) xyxy."""
    d = deltas * deltas.new_tensor(stds)
    max_ratio = abs(math.log(clip))
    pxy, pwh = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(-max_ratio, max_ratio).exp()
    return torch.cat((gxy - gwh / 2, gxy + gwh / 2), -1)


def tood_head_forward(feats: list[Tensor], sd: dict, n: int, groups: int, anchor_type: str):
    """mmdet TOODHead.forward, plus the test-time view: scores (B, A, C), boxes (B, A, 4) in pixels.

    Includes mmdet's invalid-box guard (mmdet PR #7567, in 2.x since v2.24 and in 3.x): where the sampled
    box has x1 > x2 or y1 > y2 the un-sampled box is kept.
    """
    all_scores, all_boxes = [], []
    for level, (x, stride) in enumerate(zip(feats, STRIDES)):
        B, _, H, W = x.shape
        inter = []
        for i in range(n):
            x = _conv_module(x, sd, f"bbox_head.inter_convs.{i}", groups, padding=1)
            inter.append(x)
        feat = torch.cat(inter, 1)  # (B, N*F, H, W)
        avg = F.adaptive_avg_pool2d(feat, (1, 1))
        cls_feat = _task_decomposition(feat, avg, sd, "bbox_head.cls_decomp", n, groups)
        reg_feat = _task_decomposition(feat, avg, sd, "bbox_head.reg_decomp", n, groups)
        cls_logits = _apply(cls_feat, sd, "bbox_head.tood_cls", padding=1)
        cls_prob = _apply(
            F.relu(_apply(feat, sd, "bbox_head.cls_prob_module.0")), sd, "bbox_head.cls_prob_module.2", 1
        )
        score = (cls_logits.sigmoid() * cls_prob.sigmoid()).sqrt()  # (B, C, H, W)
        scale = sd[f"bbox_head.scales.{level}.scale"]
        centres, anchors = _grid(H, W, stride)
        raw = _apply(reg_feat, sd, "bbox_head.tood_reg", padding=1)
        if anchor_type == "anchor_free":
            dist = (scale * raw.exp()).permute(0, 2, 3, 1).reshape(-1, 4)  # (B*HW, 4) in strides
            c = (centres / stride).repeat(B, 1)
            bbox = torch.cat((c - dist[:, :2], c + dist[:, 2:]), -1)
        else:
            deltas = (scale * raw).permute(0, 2, 3, 1).reshape(-1, 4)
            bbox = delta2bbox(anchors.repeat(B, 1), deltas) / stride
        bbox = bbox.reshape(B, H, W, 4).permute(0, 3, 1, 2).contiguous()  # (B, 4, H, W)
        offset = _apply(
            F.relu(_apply(feat, sd, "bbox_head.reg_offset_module.0")), sd, "bbox_head.reg_offset_module.2", 1
        )
        sampled = deform_conv2d(
            bbox, offset.contiguous(), bbox.new_ones(4, 1, 1, 1)
        )  # 4 groups, 4 offset groups
        invalid = (sampled[:, [0]] > sampled[:, [2]]) | (sampled[:, [1]] > sampled[:, [3]])
        sampled = torch.where(invalid.expand_as(sampled), bbox, sampled)
        all_scores.append(score.permute(0, 2, 3, 1).reshape(B, H * W, -1))
        all_boxes.append((sampled * stride).permute(0, 2, 3, 1).reshape(B, H * W, 4))
    return torch.cat(all_scores, 1), torch.cat(all_boxes, 1)


def atss_head_forward(feats: list[Tensor], sd: dict, groups: int):
    """mmdet ATSSHead.forward_single + anchor decoding: scores (B, A, C), boxes (B, A, 4), centerness (B, A)."""
    out = ([], [], [])
    for level, (x, stride) in enumerate(zip(feats, STRIDES)):
        B, _, H, W = x.shape
        cls_feat, reg_feat = x, x
        for i in range(4):
            cls_feat = _conv_module(cls_feat, sd, f"bbox_head.cls_convs.{i}", groups, padding=1)
            reg_feat = _conv_module(reg_feat, sd, f"bbox_head.reg_convs.{i}", groups, padding=1)
        cls_score = _apply(cls_feat, sd, "bbox_head.atss_cls", padding=1).sigmoid()
        bbox_pred = sd[f"bbox_head.scales.{level}.scale"] * _apply(
            reg_feat, sd, "bbox_head.atss_reg", padding=1
        )
        centerness = _apply(reg_feat, sd, "bbox_head.atss_centerness", padding=1)
        _, anchors = _grid(H, W, stride)
        boxes = delta2bbox(anchors.repeat(B, 1), bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4))
        out[0].append(cls_score.permute(0, 2, 3, 1).reshape(B, H * W, -1))
        out[1].append(boxes.reshape(B, H * W, 4))
        out[2].append(centerness.reshape(B, H * W))
    return tuple(torch.cat(parts, 1) for parts in out)


def fpn_forward(c3_c5: list[Tensor], sd: dict) -> list[Tensor]:
    """mmdet FPN.forward: laterals, nearest top-down sum, 3x3 outputs, P6 = conv/2(P5 out), P7 = conv/2(P6)."""
    laterals = [_apply(c, sd, f"neck.lateral_convs.{i}.conv") for i, c in enumerate(c3_c5)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(
            laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
        )
    outs = [_apply(x, sd, f"neck.fpn_convs.{i}.conv", padding=1) for i, x in enumerate(laterals)]
    p6 = F.conv2d(
        outs[-1], sd["neck.fpn_convs.3.conv.weight"], sd["neck.fpn_convs.3.conv.bias"], stride=2, padding=1
    )
    p7 = F.conv2d(
        p6, sd["neck.fpn_convs.4.conv.weight"], sd["neck.fpn_convs.4.conv.bias"], stride=2, padding=1
    )
    return [*outs, p6, p7]


# ---------------------------------------------------------------------------------------------------
# 3. assignment rules and QFL of mmdetection 3.3, per image and literal (issue 20: Table 2's schemes).
# Each follows the named mmdet function step by step, loops over GTs included, so it shares nothing with the
# batched tood.model.fixed_assigners / tood.model.losses code it is compared with.


def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """mmdet BboxOverlaps2D / bbox_overlaps(mode='iou'): (N, 4), (M, 4) -> (N, M), union clamped at eps."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


def max_iou_gt_inds(
    priors: Tensor, gt_bboxes: Tensor, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float
) -> Tensor:
    """mmdet MaxIoUAssigner.assign + assign_wrt_overlaps (gt_max_assign_all=True, match_low_quality=True,
    no ignore boxes): gt_inds (A,) long, -1 ignored, 0 negative, i + 1 positive for GT i."""
    num_gts, num_bboxes = gt_bboxes.shape[0], priors.shape[0]
    assigned_gt_inds = torch.full((num_bboxes,), -1, dtype=torch.long)
    if num_gts == 0 or num_bboxes == 0:
        if num_gts == 0:
            assigned_gt_inds[:] = 0
        return assigned_gt_inds
    overlaps = bbox_overlaps(gt_bboxes, priors)  # (G, A)
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, _ = overlaps.max(dim=1)
    assigned_gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos_inds = max_overlaps >= pos_iou_thr
    assigned_gt_inds[pos_inds] = argmax_overlaps[pos_inds] + 1
    for i in range(num_gts):
        if gt_max_overlaps[i] >= min_pos_iou:
            max_iou_inds = overlaps[i, :] == gt_max_overlaps[i]
            assigned_gt_inds[max_iou_inds] = i + 1
    return assigned_gt_inds


def fovea_labels(
    gt_bboxes_raw: Tensor,
    gt_labels_raw: Tensor,
    featmap_sizes,
    strides,
    scale_ranges,
    sigma: float,
    num_classes: int,
) -> Tensor:
    """mmdet FoveaHead._get_targets_single's labels, flattened level-major (A,): num_classes = background.

    Its points are cell centres: cell (i, j) of a level is ((j + 0.5) * s, (i + 0.5) * s) [FoveaHead
    get_points / MlvlPointGenerator offset 0.5]; the fovea is found as a range of cells with ceil/floor.
    """
    gt_areas = torch.sqrt(
        (gt_bboxes_raw[:, 2] - gt_bboxes_raw[:, 0]) * (gt_bboxes_raw[:, 3] - gt_bboxes_raw[:, 1])
    )
    label_list = []
    for (lower_bound, upper_bound), stride, featmap_size in zip(scale_ranges, strides, featmap_sizes):
        labels = gt_labels_raw.new_zeros(featmap_size) + num_classes
        hit_indices = ((gt_areas >= lower_bound) & (gt_areas <= upper_bound)).nonzero().flatten()
        if len(hit_indices) == 0:
            label_list.append(labels.flatten())
            continue
        _, hit_index_order = torch.sort(-gt_areas[hit_indices])
        hit_indices = hit_indices[hit_index_order]
        gt_bboxes = gt_bboxes_raw[hit_indices, :] / stride
        gt_labels = gt_labels_raw[hit_indices]
        half_w = 0.5 * (gt_bboxes[:, 2] - gt_bboxes[:, 0])
        half_h = 0.5 * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
        pos_left = (
            torch.ceil(gt_bboxes[:, 0] + (1 - sigma) * half_w - 0.5).long().clamp(0, featmap_size[1] - 1)
        )
        pos_right = (
            torch.floor(gt_bboxes[:, 0] + (1 + sigma) * half_w - 0.5).long().clamp(0, featmap_size[1] - 1)
        )
        pos_top = (
            torch.ceil(gt_bboxes[:, 1] + (1 - sigma) * half_h - 0.5).long().clamp(0, featmap_size[0] - 1)
        )
        pos_down = (
            torch.floor(gt_bboxes[:, 1] + (1 + sigma) * half_h - 0.5).long().clamp(0, featmap_size[0] - 1)
        )
        for px1, py1, px2, py2, label in zip(pos_left, pos_top, pos_right, pos_down, gt_labels):
            labels[py1 : py2 + 1, px1 : px2 + 1] = label
        label_list.append(labels.flatten())
    return torch.cat(label_list)


def fcos_labels(
    points: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, regress_ranges, num_points_per_lvl, num_classes: int
) -> Tensor:
    """mmdet FCOSHead._get_targets_single (center_sampling=False): labels (A,), num_classes = background."""
    INF = 1e8
    num_points, num_gts = points.size(0), gt_labels.size(0)
    if num_gts == 0:
        return gt_labels.new_full((num_points,), num_classes)
    ranges = torch.cat(
        [points.new_tensor(r)[None].expand(n, 2) for r, n in zip(regress_ranges, num_points_per_lvl)]
    )
    areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    areas = areas[None].repeat(num_points, 1)
    ranges = ranges[:, None, :].expand(num_points, num_gts, 2)
    gt_bboxes = gt_bboxes[None].expand(num_points, num_gts, 4)
    xs = points[:, 0][:, None].expand(num_points, num_gts)
    ys = points[:, 1][:, None].expand(num_points, num_gts)
    left, right = xs - gt_bboxes[..., 0], gt_bboxes[..., 2] - xs
    top, bottom = ys - gt_bboxes[..., 1], gt_bboxes[..., 3] - ys
    bbox_targets = torch.stack((left, top, right, bottom), -1)
    inside_gt_bbox_mask = bbox_targets.min(-1)[0] > 0
    max_regress_distance = bbox_targets.max(-1)[0]
    inside_regress_range = (max_regress_distance >= ranges[..., 0]) & (max_regress_distance <= ranges[..., 1])
    areas[inside_gt_bbox_mask == 0] = INF
    areas[inside_regress_range == 0] = INF
    min_area, min_area_inds = areas.min(dim=1)
    labels = gt_labels[min_area_inds]
    labels[min_area == INF] = num_classes
    return labels


def quality_focal_loss(pred: Tensor, label: Tensor, score: Tensor, beta: float = 2.0) -> Tensor:
    """mmdet quality_focal_loss (GFL, use_sigmoid=True) on logits: pred (N, C), label (N,) (C: background),
    score (N,) IoU targets -> (N,) loss summed over classes."""
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)
