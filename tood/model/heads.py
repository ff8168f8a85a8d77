"""The two heads of the ablation: TOOD's T-Head [P §3.1, Fig. 3b] and the ATSS-style parallel head (Fig. 3a).

Both return the same HeadOutput (scores as probabilities, boxes decoded to xyxy pixels), flattened
level-major then row-major (h, w) within a level, the order of Priors.points, so the assigner, losses
and post-processing never branch on the head type. All convs are shared across levels; each level has
one learnable scalar Scale (init 1.0) [R]. The anchor type is chosen once, in the constructor.

Decode (both heads, as in the reference T-Head [R]), per level with stride s:
    anchor-free:  ltrb = Scale_l * exp(raw) in units of s;  B0 = decode_ltrb(point / s, ltrb)
    anchor-based: B0 = decode_deltas(8s anchor, Scale_l * raw) / s
    T-Head only:  B0 is resampled per side at learned offsets (below), then boxes = B * s in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tood.config import ModelConfig
from tood.model.coders import decode_deltas, decode_ltrb
from tood.model.priors import Priors

PARALLEL_TOWER_CONVS = 4  # convs per tower of the parallel (ATSS) head [P Fig. 3a]


@dataclass
class HeadOutput:
    scores: Tensor  # (B, A, C) probabilities in [0, 1]: the score of assigner, loss and test
    boxes: Tensor  # (B, A, 4) xyxy pixels
    centerness: Tensor | None  # (B, A) centerness logits (parallel head) or None (T-Head)


# ---------------------------------------------------------------------------------------------------
# pure pieces


def decode_free_in_stride(
    raw: Tensor, scale: Tensor, points: Tensor, anchors: Tensor, strides: Tensor
) -> Tensor:
    """Anchor-free B0 [R]: raw (B, A_l, 4) -> (B, A_l, 4) xyxy in stride units around c = point / s.

    Scale is applied after exp (Scale_l * exp(raw)); `anchors` is unused, kept for a common signature.
    """
    ltrb = scale * raw.exp()  # (B, A_l, 4) distances in strides
    return decode_ltrb(points / strides[:, None], ltrb)


def decode_based_in_stride(
    raw: Tensor, scale: Tensor, points: Tensor, anchors: Tensor, strides: Tensor
) -> Tensor:
    """Anchor-based B0 [R]: delta-xywh (stds .1,.1,.2,.2) on the 8s anchor, then / s -> (B, A_l, 4)."""
    return decode_deltas(anchors, scale * raw) / strides[:, None]


def choose_decoder(anchor: str) -> Callable[..., Tensor]:
    if anchor == "free":
        return decode_free_in_stride
    elif anchor == "based":
        return decode_based_in_stride
    raise ValueError(f"anchor must be 'free' or 'based', got {anchor!r}")


def sample_at_offsets(boxes_map: Tensor, offsets: Tensor) -> Tensor:
    """Resample each box side at its own offset location [P eq.8][R deform_sampling].

    boxes_map (B, 4, H, W), offsets (B, 8, H, W) in cells -> (B, 4, H, W). Side c at cell (i, j) reads
    boxes_map[c] bilinearly at (row i + offsets[2c], col j + offsets[2c+1]), zero outside the map:
    mmcv's deformable-conv offset layout is (dy, dx) per deform group. The reference does this with a
    depthwise DeformConv2d (1x1 all-ones kernel, 4 groups, 4 deform groups), which is exactly per-channel
    bilinear sampling, so grid_sample computes the same thing. align_corners=False with pixel-centre
    normalisation (2x+1)/W-1 equals align_corners=True's 2x/(W-1)-1 for W > 1 and also holds for the
    1-cell-wide maps P7 has on small inputs, where the align_corners=True formula divides by zero.
    """
    B, _, H, W = boxes_map.shape
    off = offsets.reshape(B, 4, 2, H, W)  # (B, side, (dy, dx), H, W)
    rows = torch.arange(H, device=offsets.device, dtype=offsets.dtype)[:, None]  # (H, 1)
    cols = torch.arange(W, device=offsets.device, dtype=offsets.dtype)[None, :]  # (1, W)
    y = rows + off[:, :, 0]  # (B, 4, H, W)
    x = cols + off[:, :, 1]
    grid = torch.stack(((2 * x + 1) / W - 1, (2 * y + 1) / H - 1), dim=-1)  # (B, 4, H, W, 2) as (x, y)
    sampled = F.grid_sample(
        boxes_map.reshape(B * 4, 1, H, W),
        grid.reshape(B * 4, H, W, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*4, 1, H, W)
    return sampled.reshape(B, 4, H, W)


def fallback_invalid(sampled: Tensor, unsampled: Tensor) -> Tensor:
    """Where a sampled box is inverted (x1 > x2 or y1 > y2) use the un-sampled one [mmdet PR #7567].

    sampled, unsampled (..., 4) xyxy -> (..., 4). fcjian/TOOD instead clamps w, h at 0 in the IoU
    (commit 93b3a87); we follow mmdet's guard (tood.model.boxes also clamps, so both hold).
    """
    invalid = (sampled[..., 0] > sampled[..., 2]) | (sampled[..., 1] > sampled[..., 3])  # (...)
    return torch.where(invalid[..., None], unsampled, sampled)


def aligned_score(cls_logits: Tensor, prob_logits: Tensor) -> Tensor:
    """sqrt(sigmoid(cls) * sigmoid(M)) [P eq.6-7]: (B, C, H, W), (B, 1, H, W) -> (B, C, H, W) fp32.

    Computed as exp((logsigmoid(cls) + logsigmoid(M)) / 2): same value, but its gradient stays finite
    where the reference's sqrt of an underflowed product would give inf * 0 = NaN.
    """
    return torch.exp(0.5 * (F.logsigmoid(cls_logits.float()) + F.logsigmoid(prob_logits.float())))


def flatten_level(x: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H*W, K), row-major over (h, w) like Priors.points."""
    B, K = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(B, -1, K)


def split_priors(priors: Priors, feats: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per level (points (A_l, 2), anchors (A_l, 4), strides (A_l,)); checks the maps match the priors."""
    sizes = [tuple(f.shape[-2:]) for f in feats]
    if sizes != [tuple(s) for s in priors.sizes]:
        raise ValueError(f"feature map sizes {sizes} do not match the priors' sizes {list(priors.sizes)}")
    n = priors.num_per_level
    return list(zip(priors.points.split(n), priors.anchors.split(n), priors.strides.split(n)))


def conv_gn_relu(in_channels: int, out_channels: int, gn_groups: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias: GN follows) + GroupNorm + ReLU, mmdet's ConvModule(norm_cfg=GN)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(gn_groups, out_channels),
        nn.ReLU(inplace=True),
    )


def normal_init(conv: nn.Conv2d, std: float, bias: float = 0.0) -> None:
    nn.init.normal_(conv.weight, mean=0.0, std=std)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


def prior_bias(prior_prob: float) -> float:
    """Bias giving sigmoid = prior_prob at init (RetinaNet / [R] bias_init_with_prob)."""
    return -math.log((1 - prior_prob) / prior_prob)


# ---------------------------------------------------------------------------------------------------
# T-Head


class TaskDecomposition(nn.Module):
    """Layer attention + 1x1 reduction of the stacked inter features for one task [P eq.3-5][R].

    w = sigmoid(fc2(relu(fc1(pool(X))))) weighs each of the N layers; F_task = relu(GN(conv1x1(w * X))).
    fc1: N*F -> F // la_reduction: the reference passes la_down_rate = N*8 on N*F channels, i.e. F/8.
    """

    def __init__(self, feat_channels: int, stacked_convs: int, la_reduction: int, gn_groups: int):
        super().__init__()
        in_channels = feat_channels * stacked_convs
        hidden = max(feat_channels // la_reduction, 1)
        self.layer_attention = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, stacked_convs, 1)
        )
        self.reduction = nn.Conv2d(in_channels, feat_channels, 1, bias=False)
        self.norm = nn.GroupNorm(gn_groups, feat_channels)
        for conv in (self.layer_attention[0], self.layer_attention[2]):
            normal_init(conv, std=0.001)  # [R] normal_init: zero bias on both
        normal_init(self.reduction, std=0.01)

    def forward(self, inter_cat: Tensor, pooled: Tensor) -> Tensor:
        """inter_cat (B, N*F, H, W), pooled (B, N*F, 1, 1) -> task feature (B, F, H, W)."""
        B, NF, H, W = inter_cat.shape
        Fc, N = self.reduction.out_channels, NF // self.reduction.out_channels
        w = self.layer_attention(pooled).sigmoid().reshape(B, 1, N, 1)  # (B, 1, N, 1)
        # fold w into the conv weight instead of scaling X: same math [R], no (B, N*F, H, W) copy
        weight = (self.reduction.weight.reshape(1, Fc, N, Fc) * w).reshape(B, Fc, NF)  # (B, F, N*F)
        if inter_cat.is_contiguous(memory_format=torch.channels_last):
            # NHWC memory already is (B, HW, N*F): contract it from the left, so neither the input nor the
            # output is copied to another layout (reshaping it to (B, N*F, HW) copied all of inter_cat)
            x = inter_cat.permute(0, 2, 3, 1).reshape(B, H * W, NF)  # (B, HW, N*F) view
            out = torch.bmm(x, weight.transpose(1, 2))  # (B, HW, N*F) x (B, N*F, F) -> (B, HW, F)
            out = out.reshape(B, H, W, Fc).permute(0, 3, 1, 2)  # (B, F, H, W) channels_last view
        else:
            x = inter_cat.reshape(B, NF, H * W)  # (B, N*F, HW)
            out = torch.bmm(weight, x).reshape(B, Fc, H, W)  # (B, F, N*F) x (B, N*F, HW) -> (B, F, H, W)
        return F.relu(self.norm(out))


class TOODHead(nn.Module):
    """T-Head [P §3.1][R]: N task-interactive convs, two TaskDecompositions, prob map M and offsets O."""

    def __init__(
        self,
        num_classes: int,
        feat_channels: int = 256,
        stacked_convs: int = 6,
        la_reduction: int = 8,
        gn_groups: int = 32,
        anchor: str = "free",
        num_levels: int = 5,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.decode_in_stride = choose_decoder(anchor)
        Fc, NF, mid = feat_channels, feat_channels * stacked_convs, max(feat_channels // 4, 1)
        self.inter_convs = nn.ModuleList([conv_gn_relu(Fc, Fc, gn_groups) for _ in range(stacked_convs)])
        self.cls_decomp = TaskDecomposition(Fc, stacked_convs, la_reduction, gn_groups)
        self.reg_decomp = TaskDecomposition(Fc, stacked_convs, la_reduction, gn_groups)
        self.cls_conv = nn.Conv2d(Fc, num_classes, 3, padding=1)
        self.reg_conv = nn.Conv2d(Fc, 4, 3, padding=1)
        self.prob_branch = nn.Sequential(
            nn.Conv2d(NF, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, 1, 3, padding=1)
        )
        self.offset_branch = nn.Sequential(
            nn.Conv2d(NF, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, 8, 3, padding=1)
        )
        self.scales = nn.Parameter(torch.ones(num_levels))
        # inits [R TOODHead.init_weights]; TaskDecomposition initialises itself
        for block in self.inter_convs:
            normal_init(block[0], std=0.01)
        normal_init(self.prob_branch[0], std=0.01)
        normal_init(self.prob_branch[2], std=0.01, bias=prior_bias(prior_prob))
        normal_init(self.offset_branch[0], std=0.001)
        normal_init(self.offset_branch[2], std=0.001)  # offsets start ~0: B starts ~B0
        normal_init(self.cls_conv, std=0.01, bias=prior_bias(prior_prob))  # initial score sqrt(.01*.01)
        normal_init(self.reg_conv, std=0.01)

    def forward(self, feats: list[Tensor], priors: Priors) -> HeadOutput:
        """feats: L maps (B, F, H_l, W_l) -> HeadOutput with scores (B, A, C), boxes (B, A, 4), no centerness."""
        per_level = [
            self.forward_level(x, self.scales[level], *prior)
            for level, (x, prior) in enumerate(zip(feats, split_priors(priors, feats)))
        ]
        scores, boxes = zip(*per_level)
        return HeadOutput(scores=torch.cat(scores, 1), boxes=torch.cat(boxes, 1), centerness=None)

    def forward_level(
        self, x: Tensor, scale: Tensor, points: Tensor, anchors: Tensor, strides: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One level [tood.md §3(a)]: x (B, F, H, W) -> scores (B, H*W, C), boxes (B, H*W, 4) pixels."""
        B, _, H, W = x.shape
        inter = []
        for conv in self.inter_convs:
            x = conv(x)
            inter.append(x)
        inter_cat = torch.cat(inter, 1)  # (B, N*F, H, W)
        pooled = F.adaptive_avg_pool2d(inter_cat, 1)  # (B, N*F, 1, 1)
        cls_feat = self.cls_decomp(inter_cat, pooled)  # (B, F, H, W)
        reg_feat = self.reg_decomp(inter_cat, pooled)
        scores = aligned_score(self.cls_conv(cls_feat), self.prob_branch(inter_cat))  # (B, C, H, W)
        # box branch in fp32 so autocast cannot touch exp/decode/sampling [R casts it to float]
        raw = flatten_level(self.reg_conv(reg_feat)).float()  # (B, HW, 4)
        box0 = self.decode_in_stride(raw, scale.float(), points, anchors, strides)  # (B, HW, 4) strides
        box0_map = box0.reshape(B, H, W, 4).permute(0, 3, 1, 2)  # (B, 4, H, W)
        offsets = self.offset_branch(inter_cat).float()  # (B, 8, H, W) in cells
        sampled = flatten_level(sample_at_offsets(box0_map, offsets))  # (B, HW, 4)
        boxes = fallback_invalid(sampled, box0) * strides[:, None]  # (B, HW, 4) pixels
        return flatten_level(scores), boxes


# ---------------------------------------------------------------------------------------------------
# parallel head


class TaskAlignedPredictor(nn.Module):
    """TAP on the parallel head [P §3.1 eq. 6-8, Table 2 "TAL + TAP"] (issue 20).

    The T-Head's prob map M and offsets O (same layers and inits [R]), fed with the last layer of the parallel
    head's two towers, concatenated (2F channels), where the T-Head feeds them all N task-interactive layers:
    the paper's note to Table 2 says TAP "aligns the predictions using the cls and loc features from the last
    layer of the head tower"; it does not say how the two are combined, so concatenating them is ours.
    score = sqrt(sigmoid(cls) * sigmoid(M)); each box side is resampled at its own offset (eq. 8).
    """

    def __init__(self, feat_channels: int, prior_prob: float = 0.01):
        super().__init__()
        in_channels, mid = 2 * feat_channels, max(feat_channels // 4, 1)
        self.prob_branch = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, 1, 3, padding=1)
        )
        self.offset_branch = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, 8, 3, padding=1)
        )
        normal_init(self.prob_branch[0], std=0.01)  # as TOODHead's M and O [R TOODHead.init_weights]
        normal_init(self.prob_branch[2], std=0.01, bias=prior_bias(prior_prob))
        normal_init(self.offset_branch[0], std=0.001)
        normal_init(self.offset_branch[2], std=0.001)  # offsets start ~0: boxes start ~B0

    def forward(self, cls_logits: Tensor, box0: Tensor, tower_feats: Tensor) -> tuple[Tensor, Tensor]:
        """cls_logits (B, C, H, W), box0 (B, HW, 4) in strides, tower_feats (B, 2F, H, W) ->
        scores (B, HW, C) fp32 and aligned boxes (B, HW, 4) in strides."""
        B, _, H, W = cls_logits.shape
        scores = aligned_score(cls_logits, self.prob_branch(tower_feats))  # (B, C, H, W)
        box0_map = box0.reshape(B, H, W, 4).permute(0, 3, 1, 2)  # (B, 4, H, W)
        offsets = self.offset_branch(tower_feats).float()  # (B, 8, H, W) in cells
        sampled = flatten_level(sample_at_offsets(box0_map, offsets))  # (B, HW, 4)
        return flatten_level(scores), fallback_invalid(sampled, box0)


class ParallelHead(nn.Module):
    """Parallel head [P Fig. 3a]: the standard ATSS head (two 4-conv GN towers, cls / reg / centerness).

    scores = sigmoid(cls); centerness logits come from the reg tower (ATSS); boxes decode like the
    T-Head's B0 (no sampling). Parameter count 4,918,618 at F=256, C=80 = Table 1's 4.92M. With `tap`, a
    TaskAlignedPredictor on the towers' last layer aligns scores and boxes (Table 2 "TAL + TAP").
    """

    def __init__(
        self,
        num_classes: int,
        feat_channels: int = 256,
        stacked_convs: int = PARALLEL_TOWER_CONVS,
        gn_groups: int = 32,
        anchor: str = "free",
        num_levels: int = 5,
        prior_prob: float = 0.01,
        tap: bool = False,
    ):
        super().__init__()
        self.decode_in_stride = choose_decoder(anchor)
        Fc = feat_channels
        self.cls_tower = nn.Sequential(*[conv_gn_relu(Fc, Fc, gn_groups) for _ in range(stacked_convs)])
        self.reg_tower = nn.Sequential(*[conv_gn_relu(Fc, Fc, gn_groups) for _ in range(stacked_convs)])
        self.cls_conv = nn.Conv2d(Fc, num_classes, 3, padding=1)
        self.reg_conv = nn.Conv2d(Fc, 4, 3, padding=1)
        self.centerness_conv = nn.Conv2d(Fc, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for block in (*self.cls_tower, *self.reg_tower):  # [mmdet ATSSHead.init_weights]
            normal_init(block[0], std=0.01)
        normal_init(self.cls_conv, std=0.01, bias=prior_bias(prior_prob))
        normal_init(self.reg_conv, std=0.01)
        normal_init(self.centerness_conv, std=0.01)
        # created last, so the layers above draw the same initial weights with and without TAP
        self.tap = TaskAlignedPredictor(Fc, prior_prob) if tap else None

    def forward(self, feats: list[Tensor], priors: Priors) -> HeadOutput:
        """feats: L maps (B, F, H_l, W_l) -> scores (B, A, C), boxes (B, A, 4), centerness (B, A)."""
        per_level = [
            self.forward_level(x, self.scales[level], *prior)
            for level, (x, prior) in enumerate(zip(feats, split_priors(priors, feats)))
        ]
        scores, boxes, centerness = zip(*per_level)
        return HeadOutput(
            scores=torch.cat(scores, 1), boxes=torch.cat(boxes, 1), centerness=torch.cat(centerness, 1)
        )

    def forward_level(
        self, x: Tensor, scale: Tensor, points: Tensor, anchors: Tensor, strides: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, F, H, W) -> scores (B, HW, C), boxes (B, HW, 4) pixels, centerness logits (B, HW)."""
        cls_feat, reg_feat = self.cls_tower(x), self.reg_tower(x)  # (B, F, H, W) each
        if self.tap is not None:
            return self._forward_tap(cls_feat, reg_feat, scale, points, anchors, strides)
        scores = flatten_level(self.cls_conv(cls_feat)).float().sigmoid()  # (B, HW, C)
        raw = flatten_level(self.reg_conv(reg_feat)).float()  # (B, HW, 4)
        boxes = self.decode_in_stride(raw, scale.float(), points, anchors, strides) * strides[:, None]
        centerness = flatten_level(self.centerness_conv(reg_feat)).float().squeeze(-1)  # (B, HW)
        return scores, boxes, centerness

    def _forward_tap(
        self,
        cls_feat: Tensor,
        reg_feat: Tensor,
        scale: Tensor,
        points: Tensor,
        anchors: Tensor,
        strides: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """forward_level with TAP: the towers' last layers (B, F, H, W) each -> scores, boxes, centerness."""
        raw = flatten_level(self.reg_conv(reg_feat)).float()  # (B, HW, 4)
        box0 = self.decode_in_stride(raw, scale.float(), points, anchors, strides)  # (B, HW, 4) in strides
        tower_feats = torch.cat((cls_feat, reg_feat), 1)  # (B, 2F, H, W)
        scores, boxes = self.tap(self.cls_conv(cls_feat), box0, tower_feats)  # (B, HW, C), (B, HW, 4)
        centerness = flatten_level(self.centerness_conv(reg_feat)).float().squeeze(-1)  # (B, HW)
        return scores, boxes * strides[:, None], centerness


def build_head(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The only place that reads cfg.head and cfg.tap."""
    if cfg.head == "tood":
        return TOODHead(
            num_classes, cfg.fpn_channels, cfg.stacked_convs, cfg.la_reduction, cfg.gn_groups, cfg.anchor
        )
    elif cfg.head == "parallel":
        return ParallelHead(
            num_classes, cfg.fpn_channels, PARALLEL_TOWER_CONVS, cfg.gn_groups, cfg.anchor, tap=cfg.tap
        )
    raise ValueError(f"model.head must be 'tood' or 'parallel', got {cfg.head!r}")
