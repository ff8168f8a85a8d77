"""Detection metrics: COCO box AP (pycocotools, called directly) and the paper's Table 6 alignment analysis.

Pure metric code: no model, no data loading, no training loop. The evaluation driver runs the detector,
then calls `detections_to_coco` + `coco_eval` for AP and `alignment_stats` (per image) +
`summarize_alignment` (over the split) for Table 6.

Table 6 of the paper [P §4.3] reports, per variant, PCC (top-50), IoU (top-10) and the numbers of
correct / redundant / error boxes after NMS, but describes them only in prose. The exact definitions
below are OUR reading of that prose (the reference code fcjian/TOOD ships no script for them):

Candidates of a GT instance g (pre-NMS, every prior of every level):
    the priors whose predicted box overlaps g more than any other GT of the image
    (argmax over the image's GTs of IoU(pred box, GT), and that IoU > 0). Each prior is a candidate
    of at most one GT. They are ranked by their score for g's class (the final score the head emits,
    e.g. sqrt(P*M) for the T-Head) and the 50 most confident are kept.
PCC_top50:
    per instance, the Pearson correlation between the classification ranking (rank by score) and
    the localisation ranking (rank by IoU with g) of those <= 50 candidates, i.e. Spearman's rho with
    tied values given their average rank. Instances with < 2 candidates or with a constant ranking
    (all scores or all IoUs equal) are skipped (counted in `instances - pcc_count`). Averaged over
    instances of the whole split.
IoU_top10:
    per instance, the mean IoU with g of its 10 most confident candidates (fewer if it has fewer;
    instances with none are skipped), averaged over instances.
Box counts after NMS (final detections, all classes), keys n_correct / n_redundant / n_error:
    each detection is matched to the GT *of its own class* with the highest IoU (its best IoU is 0
    when the image has no GT of that class);
    correct   = for each GT, the highest-scoring detection matched to it with IoU >= 0.5 (<= 1 per GT);
    redundant = every other detection matched with IoU >= 0.5 (its GT is already claimed);
    error     = detections whose best same-class IoU is in (0.1, 0.5);
    the rest (best IoU <= 0.1) are not counted. Counts are totals over the split, as the paper's are
    totals over COCO minival. Unlike COCOeval's greedy matching, a detection never falls back to its
    second-best GT, so "correct" counts the GTs that are found at IoU 0.5 (a recall count).
    The keys carry an `n_` prefix because DVC reads a key named `error` anywhere in a metrics file as a
    failed load ("DVC failed to load some metrics"; issue 12).
GTs given to `alignment_stats` must be the image's non-crowd instances; crowd regions are left out.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from tood.model.boxes import pairwise_iou

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # order of COCOeval.stats[:6]
ALIGN_KEYS = ("pcc_top50", "iou_top10", "n_correct", "n_redundant", "n_error")
IGNORED, CORRECT, REDUNDANT, ERROR = 0, 1, 2, 3  # codes returned by classify_detections


# ---------------------------------------------------------------------------------------------------
# COCO AP


def coco_eval(coco_gt: COCO, results: list[dict]) -> dict[str, Any]:
    """COCO bbox metrics of `results` against `coco_gt`, with pycocotools' console output swallowed.

    Args:
        coco_gt: ground truth (crowd annotations are handled by COCOeval as "ignore" regions).
        results: COCO results format, [{image_id, category_id, bbox: [x, y, w, h], score}, ...];
            may be empty (pycocotools' loadRes crashes on [], so an empty detection set is built here).
    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl": float, "per_class": {category name: AP}}.
        Values are fractions in [0, 1]. Where a metric is undefined (no GT in that area range, or a
        category without GT) we keep pycocotools' value -1.0 rather than inventing NaN/None: it is
        what COCOeval.summarize prints and it is constant across seeds of one split. With no
        detections every defined metric is 0.0. Per-class AP is the mean of E.eval["precision"]
        over IoU .50:.95 and the 101 recall points at area "all", maxDets 100, over entries > -1
        (the same reduction COCOeval.summarize applies to all classes together).
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = _load_results(coco_gt, results)
        E = COCOeval(coco_gt, coco_dt, iouType="bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    metrics: dict[str, Any] = {k: float(v) for k, v in zip(COCO_KEYS, E.stats[:6])}
    metrics["per_class"] = _per_class_ap(coco_gt, E)
    return metrics


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    if results:
        return coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys in place: copy
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _per_class_ap(coco_gt: COCO, E: COCOeval) -> dict[str, float]:
    precision = E.eval["precision"]  # (T, R, K, A, M): IoU thr, recall pts, class, area range, maxDets
    area = E.params.areaRngLbl.index("all")
    max_dets = E.params.maxDets.index(100)
    per_class = {}
    for k, cat_id in enumerate(E.params.catIds):
        p = precision[:, :, k, area, max_dets]  # (T, R)
        valid = p[p > -1]
        per_class[coco_gt.cats[cat_id]["name"]] = float(valid.mean()) if valid.size else -1.0
    return per_class


def detections_to_coco(
    detections: Sequence[Any], metas: Sequence[Mapping[str, Any]], cat_ids: Sequence[int]
) -> list[dict]:
    """Per-image detections -> COCO results list.

    Args:
        detections: one per image, a dataclass or mapping with boxes (K, 4) xyxy in ORIGINAL image
            pixels, scores (K,), labels (K,) contiguous 0-based class indices (tensors or arrays).
        metas: one per image, each with "image_id".
        cat_ids: COCO category id of each contiguous label (dataset.cat_ids).
    Returns:
        [{image_id, category_id, bbox: [x, y, w, h], score}, ...] with plain Python numbers.
    """
    results = []
    for det, meta in zip(detections, metas, strict=True):
        boxes, scores, labels = (
            torch.as_tensor(_field(det, k)).detach().cpu() for k in ("boxes", "scores", "labels")
        )
        boxes_xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).double()  # (K, 4)
        image_id = int(meta["image_id"])
        for box, score, label in zip(boxes_xywh.tolist(), scores.double().tolist(), labels.tolist()):
            results.append(
                {"image_id": image_id, "category_id": int(cat_ids[int(label)]), "bbox": box, "score": score}
            )
    return results


def _field(det: Any, name: str) -> Any:
    return det[name] if isinstance(det, Mapping) else getattr(det, name)


# ---------------------------------------------------------------------------------------------------
# Table 6 alignment analysis (definitions in the module docstring)


@torch.no_grad()
def alignment_stats(
    scores: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    *,
    pcc_topk: int = 50,
    iou_topk: int = 10,
) -> dict[str, float]:
    """Sums and counts of the Table 6 analysis for one image, to add up with `summarize_alignment`.

    All boxes are xyxy in ONE pixel frame (e.g. the head's pre-NMS boxes divided by the image's
    scale_factor, next to original-frame GTs and detections); IoU is scale-invariant, not frame-invariant.

    Args:
        scores: (A, C) final pre-NMS class scores of every prior (probabilities).
        boxes: (A, 4) pre-NMS predicted boxes.
        gt_boxes: (G, 4) non-crowd GT boxes; gt_labels: (G,) long in [0, C).
        det_boxes: (D, 4), det_scores: (D,), det_labels: (D,) final detections after NMS.
    Returns:
        {"instances", "pcc_sum", "pcc_count", "iou10_sum", "iou10_count", "n_correct", "n_redundant",
        "n_error"}
        as Python numbers (one host sync per image).
    """
    device = scores.device
    gt_boxes, gt_labels = gt_boxes.to(device, torch.float32), gt_labels.to(device, torch.long)
    pcc, iou10 = _instance_alignment(scores.float(), boxes.float(), gt_boxes, gt_labels, pcc_topk, iou_topk)
    codes = classify_detections(
        det_boxes.to(device), det_scores.to(device), det_labels.to(device), gt_boxes, gt_labels
    )
    counts = torch.bincount(codes, minlength=4)  # (4,)
    pcc_ok, iou_ok = ~pcc.isnan(), ~iou10.isnan()
    sums = [pcc[pcc_ok].sum(), pcc_ok.sum(), iou10[iou_ok].sum(), iou_ok.sum(), *counts[1:4]]
    values = torch.stack([v.double() for v in sums]).tolist()  # one sync point per image
    return {
        "instances": int(gt_boxes.shape[0]),
        "pcc_sum": values[0],
        "pcc_count": int(values[1]),
        "iou10_sum": values[2],
        "iou10_count": int(values[3]),
        "n_correct": int(values[4]),
        "n_redundant": int(values[5]),
        "n_error": int(values[6]),
    }


def summarize_alignment(stats: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add up per-image `alignment_stats` -> {pcc_top50, iou_top10, n_correct, n_redundant, n_error}.

    PCC and IoU are means over instances (NaN when no instance qualified); the counts are totals.
    """
    total: dict[str, float] = {}
    for s in stats:
        for key, value in s.items():
            total[key] = total.get(key, 0) + value
    return {
        "pcc_top50": total["pcc_sum"] / total["pcc_count"] if total.get("pcc_count") else math.nan,
        "iou_top10": total["iou10_sum"] / total["iou10_count"] if total.get("iou10_count") else math.nan,
        "n_correct": int(total.get("n_correct", 0)),
        "n_redundant": int(total.get("n_redundant", 0)),
        "n_error": int(total.get("n_error", 0)),
    }


def _instance_alignment(
    scores: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, pcc_topk: int, iou_topk: int
) -> tuple[Tensor, Tensor]:
    """Per-GT PCC of the top-`pcc_topk` candidates and mean IoU of the top-`iou_topk`: (G,), (G,), NaN = skipped."""
    A = scores.shape[0]
    G = gt_boxes.shape[0]
    if G == 0 or A == 0:
        empty = scores.new_full((G,), math.nan)
        return empty, empty.clone()
    iou = pairwise_iou(boxes, gt_boxes)  # (A, G)
    best_iou, best_gt = iou.max(dim=1)  # (A,)
    owner = torch.where(best_iou > 0, best_gt, -1)  # (A,) the GT a prior is a candidate of, -1 none
    is_cand = owner[None, :] == torch.arange(G, device=scores.device)[:, None]  # (G, A)
    cls_score = scores[:, gt_labels].T.masked_fill(~is_cand, -math.inf)  # (G, A) score of g's class
    top_scores, top_idx = cls_score.topk(min(pcc_topk, A), dim=1)  # (G, K) most confident first
    valid = top_scores > -math.inf  # (G, K)
    top_ious = iou.T.gather(1, top_idx)  # (G, K)

    pcc = _masked_pearson(_average_ranks(top_scores, valid), _average_ranks(top_ious, valid), valid)
    valid10 = valid[:, :iou_topk]  # (G, k10)
    n10 = valid10.sum(1)  # (G,)
    iou10 = (top_ious[:, :iou_topk] * valid10).sum(1) / n10.clamp(min=1)
    return pcc, iou10.masked_fill(n10 == 0, math.nan)


def _average_ranks(x: Tensor, valid: Tensor) -> Tensor:
    """1-based ascending ranks within each row over the valid entries, ties sharing their mean rank.

    x, valid: (G, K) -> (G, K) float; invalid entries get meaningless ranks (masked later).
    """
    less = ((x[:, None, :] < x[:, :, None]) & valid[:, None, :]).sum(-1)  # (G, K, K) -> (G, K)
    equal = ((x[:, None, :] == x[:, :, None]) & valid[:, None, :]).sum(-1)  # includes the entry itself
    return less + (equal + 1) / 2


def _masked_pearson(x: Tensor, y: Tensor, valid: Tensor) -> Tensor:
    """Pearson correlation per row over the valid entries: (G, K) x (G, K) -> (G,), NaN if undefined."""
    x, y, w = x.double(), y.double(), valid.double()
    n = w.sum(1)  # (G,)
    dx = (x - (x * w).sum(1, keepdim=True) / n.clamp(min=1)[:, None]) * w  # (G, K) centred, 0 where invalid
    dy = (y - (y * w).sum(1, keepdim=True) / n.clamp(min=1)[:, None]) * w
    var_x, var_y = (dx * dx).sum(1), (dy * dy).sum(1)
    ok = (n >= 2) & (var_x > 1e-12) & (var_y > 1e-12)  # constant ranks have no correlation
    pcc = (dx * dy).sum(1) / (var_x * var_y).clamp(min=1e-24).sqrt()
    return pcc.masked_fill(~ok, math.nan).float()


def classify_detections(
    det_boxes: Tensor, det_scores: Tensor, det_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> Tensor:
    """Label each final detection IGNORED / CORRECT / REDUNDANT / ERROR (Table 6 box counts).

    Args:
        det_boxes: (D, 4), det_scores: (D,), det_labels: (D,) after NMS; gt_boxes: (G, 4), gt_labels: (G,).
    Returns:
        (D,) long codes 0..3 (module constants). For each GT the highest-scoring detection matched to
        it at IoU >= 0.5 is CORRECT and the others REDUNDANT; best same-class IoU in (0.1, 0.5) is ERROR.
    """
    D, G = det_boxes.shape[0], gt_boxes.shape[0]
    codes = torch.full((D,), IGNORED, dtype=torch.long, device=det_boxes.device)
    if D == 0 or G == 0:
        return codes
    iou = pairwise_iou(det_boxes.float(), gt_boxes.float())  # (D, G)
    iou = iou.masked_fill(det_labels[:, None] != gt_labels[None, :], 0.0)  # same class only
    best_iou, best_gt = iou.max(dim=1)  # (D,)
    matched = best_iou >= 0.5  # (D,)
    order = torch.argsort(det_scores, descending=True, stable=True)  # (D,)
    score_rank = torch.empty_like(order).scatter_(0, order, torch.arange(D, device=order.device))  # (D,)
    rank_or_inf = torch.where(matched, score_rank, D)  # (D,)
    first = torch.full((G,), D, dtype=torch.long, device=codes.device)
    first = first.scatter_reduce(0, best_gt, rank_or_inf, reduce="amin")  # (G,) best rank claiming each GT
    is_first = matched & (score_rank == first[best_gt])  # (D,)
    codes[matched] = REDUNDANT
    codes[is_first] = CORRECT
    codes[(best_iou > 0.1) & (best_iou < 0.5)] = ERROR
    return codes
