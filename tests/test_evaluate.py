"""Known-answer tests of COCO AP (pycocotools on an in-memory GT) and the Table 6 alignment analysis."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import pytest
import torch
from pycocotools.coco import COCO

from tood.engine.evaluate import (
    CORRECT,
    ERROR,
    IGNORED,
    REDUNDANT,
    alignment_stats,
    classify_detections,
    coco_eval,
    detections_to_coco,
    summarize_alignment,
)

CATS = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 11, "name": "triangle"}]
# (image_id, category_id, [x, y, w, h]): small 40x20 (area 800), medium 80x30 (2400), large 120x100 (12000)
GT_BOXES = [
    (1, 3, [10, 10, 40, 20]),
    (1, 7, [60, 50, 80, 30]),
    (2, 11, [20, 20, 120, 100]),
    (2, 3, [10, 200, 80, 30]),
    (5, 7, [200, 200, 40, 20]),
    (5, 11, [50, 50, 40, 20]),
]


def make_coco(boxes=GT_BOXES) -> COCO:
    d = {
        "images": [{"id": i, "width": 300, "height": 300, "file_name": f"{i}.jpg"} for i in (1, 2, 5)],
        "categories": CATS,
        "annotations": [
            {
                "id": k + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for k, (img, cat, box) in enumerate(boxes)
        ],
    }
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results_from(boxes, shift_frac=0.0, score=0.9):
    """Detections equal to the GT boxes, shifted right by shift_frac * w (IoU = (1-f)/(1+f))."""
    return [
        {"image_id": img, "category_id": cat, "bbox": [x + shift_frac * w, y, w, h], "score": score}
        for img, cat, (x, y, w, h) in boxes
    ]


def test_perfect_predictions_give_ap_one():
    m = coco_eval(make_coco(), results_from(GT_BOXES))
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[key] == pytest.approx(1.0), key
    assert m["per_class"] == pytest.approx({"circle": 1.0, "square": 1.0, "triangle": 1.0})


def test_boxes_at_iou_0_6_pass_three_of_ten_thresholds():
    # a shift of w/4 gives inter 3w/4*h, union 5w/4*h: IoU exactly 0.6 (all widths are multiples of 4);
    # COCOeval matches at IoU >= t, so t = .50, .55, .60 count and .65 ... .95 do not: AP = 3/10
    m = coco_eval(make_coco(), results_from(GT_BOXES, shift_frac=0.25))
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.3)
    assert [m["APs"], m["APm"], m["APl"]] == pytest.approx([0.3, 0.3, 0.3])


def test_per_class_ap_uses_category_names_and_non_contiguous_ids():
    shifted = [b for b in GT_BOXES if b[1] == 7]  # only "square" is off by IoU 0.6
    exact = [b for b in GT_BOXES if b[1] != 7]
    m = coco_eval(make_coco(), results_from(exact) + results_from(shifted, shift_frac=0.25))
    assert m["per_class"] == pytest.approx({"circle": 1.0, "square": 0.3, "triangle": 1.0})
    assert m["AP"] == pytest.approx((1.0 + 0.3 + 1.0) / 3)


def test_low_scoring_false_positive_leaves_ap_unchanged():
    fp = {"image_id": 1, "category_id": 3, "bbox": [200, 200, 30, 30], "score": 0.01}
    m = coco_eval(make_coco(), results_from(GT_BOXES) + [fp])
    assert m["AP"] == pytest.approx(1.0)
    assert m["AP50"] == pytest.approx(1.0)


def test_high_scoring_false_positive_lowers_ap():
    fp = {"image_id": 1, "category_id": 3, "bbox": [200, 200, 30, 30], "score": 0.99}
    m = coco_eval(make_coco(), results_from(GT_BOXES) + [fp])
    assert m["per_class"]["circle"] < 1.0
    assert m["per_class"]["square"] == pytest.approx(1.0)


def test_empty_results_give_zeros_without_crashing():
    m = coco_eval(make_coco(), [])
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[key] == 0.0, key
    assert m["per_class"] == {"circle": 0.0, "square": 0.0, "triangle": 0.0}


def test_undefined_area_range_keeps_pycocotools_minus_one():
    small_only = [b for b in GT_BOXES if b[2][2] == 40]
    m = coco_eval(make_coco(small_only), results_from(small_only))
    assert m["APs"] == pytest.approx(1.0)
    assert m["APm"] == -1.0 and m["APl"] == -1.0
    assert m["per_class"]["circle"] == pytest.approx(1.0)  # every category still has a small box


def test_coco_eval_does_not_mutate_results_or_print(capsys):
    results = results_from(GT_BOXES)
    before = [dict(r) for r in results]
    coco_eval(make_coco(), results)
    assert results == before
    assert capsys.readouterr().out == ""


@dataclass
class Dets:
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def test_detections_to_coco_converts_xyxy_and_labels_and_round_trips():
    cat_ids = [3, 7, 11]
    dets, metas = [], []
    for img in (1, 2, 5):
        rows = [(cat_ids.index(c), b) for i, c, b in GT_BOXES if i == img]
        xyxy = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in rows], dtype=torch.float32)
        labels = torch.tensor([label for label, _ in rows])
        dets.append(Dets(xyxy, torch.full((len(rows),), 0.8), labels))
        metas.append({"image_id": img, "scale_factor": 1.0})
    dets[1] = {
        "boxes": dets[1].boxes,
        "scores": dets[1].scores,
        "labels": dets[1].labels,
    }  # mappings work too
    results = detections_to_coco(dets, metas, cat_ids)
    assert results[0] == {
        "image_id": 1,
        "category_id": 3,
        "bbox": [10.0, 10.0, 40.0, 20.0],
        "score": pytest.approx(0.8),
    }
    assert {r["category_id"] for r in results} == {3, 7, 11}
    assert coco_eval(make_coco(), results)["AP"] == pytest.approx(1.0)


def test_detections_to_coco_handles_an_image_without_detections():
    empty = Dets(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert detections_to_coco([empty], [{"image_id": 1}], [3]) == []


# ---------------------------------------------------------------------------------------------------
# alignment analysis: GT [0, 0, 10, 10]; a prediction [0, 0, 10, h] has IoU h / 10 with it


def strip_boxes(heights) -> torch.Tensor:
    h = torch.as_tensor(heights, dtype=torch.float32)
    return torch.stack([torch.zeros_like(h), torch.zeros_like(h), torch.full_like(h, 10.0), h], dim=1)


GT0 = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
LABEL0 = torch.tensor([0])
NO_DETS = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))


def class_scores(score_of_class0, C=2):
    s = torch.zeros(len(score_of_class0), C)
    s[:, 0] = torch.as_tensor(score_of_class0)
    s[:, 1] = 0.99  # another class's score must not be used for this GT
    return s


def test_pcc_is_one_when_score_ranking_equals_iou_ranking():
    heights = torch.arange(1, 11, dtype=torch.float32)
    st = alignment_stats(class_scores(heights / 20), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    assert st["pcc_count"] == 1 and st["pcc_sum"] == pytest.approx(1.0)
    assert summarize_alignment([st])["pcc_top50"] == pytest.approx(1.0)


def test_pcc_is_minus_one_when_rankings_are_reversed():
    heights = torch.arange(1, 11, dtype=torch.float32)
    st = alignment_stats(class_scores(1 - heights / 20), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    assert summarize_alignment([st])["pcc_top50"] == pytest.approx(-1.0)


def test_pcc_uses_only_the_top_50_most_confident_candidates():
    heights = torch.arange(1, 61, dtype=torch.float32) / 6  # 60 candidates, IoU (i+1)/60
    scores = torch.cat(
        [0.5 + torch.arange(50) / 200, 0.01 * torch.arange(10, 0, -1)]
    )  # best 10 IoUs score lowest
    st = alignment_stats(class_scores(scores), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    assert st["pcc_sum"] == pytest.approx(1.0)
    st60 = alignment_stats(class_scores(scores), strip_boxes(heights), GT0, LABEL0, *NO_DETS, pcc_topk=60)
    assert st60["pcc_sum"] < 0.5


def test_pcc_matches_spearman_with_tied_average_ranks():
    heights = torch.tensor([2.0, 4.0, 4.0, 8.0])  # IoU ranks 1, 2.5, 2.5, 4
    scores = torch.tensor([0.1, 0.3, 0.2, 0.4])  # score ranks 1, 3, 2, 4
    st = alignment_stats(class_scores(scores), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    a, b = torch.tensor([1, 2.5, 2.5, 4]), torch.tensor([1.0, 3, 2, 4])
    a, b = a - a.mean(), b - b.mean()
    assert st["pcc_sum"] == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())))


def test_constant_ranking_or_single_candidate_is_skipped():
    st = alignment_stats(class_scores([0.3, 0.5, 0.7]), strip_boxes([5.0, 5.0, 5.0]), GT0, LABEL0, *NO_DETS)
    assert st["instances"] == 1 and st["pcc_count"] == 0
    assert st["iou10_count"] == 1 and st["iou10_sum"] == pytest.approx(0.5)
    assert math.isnan(summarize_alignment([st])["pcc_top50"])


def test_iou_top10_is_mean_iou_of_the_ten_most_confident():
    heights = torch.arange(1, 13, dtype=torch.float32) / 2  # IoU 0.05 ... 0.60
    scores = torch.cat([torch.arange(1, 11) / 20, torch.tensor([0.01, 0.02])])  # two best IoUs score lowest
    st = alignment_stats(class_scores(scores), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    assert st["iou10_sum"] == pytest.approx(sum(range(1, 11)) / 20 / 10)  # mean of 0.05 ... 0.50 = 0.275


def test_each_prediction_is_a_candidate_of_its_best_overlapping_gt_only():
    gts = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    labels = torch.tensor([0, 1])
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 24, 10], [20, 0, 30, 10], [50, 50, 60, 60]])
    # [4,0,24,10]: IoU 60/240 = 0.25 with GT0 and 40/260 with GT1 -> GT0's; [50,50,60,60] overlaps none
    scores = torch.tensor([[0.9, 0.0], [0.1, 0.8], [0.0, 0.7], [0.9, 0.9]])
    st = alignment_stats(scores, boxes, gts, labels, *NO_DETS)
    assert st["instances"] == 2
    assert st["pcc_count"] == 1 and st["pcc_sum"] == pytest.approx(1.0)  # GT1 has 1 candidate: skipped
    assert st["iou10_count"] == 2
    assert st["iou10_sum"] == pytest.approx((1.0 + 0.25) / 2 + 1.0)


def test_detection_counts_on_a_hand_built_set():
    gts = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    gt_labels = torch.tensor([0, 1])
    det_boxes = torch.cat([strip_boxes([10.0, 8.0, 6.0, 3.0, 0.5]), torch.tensor([[20.0, 0, 30, 10]])])
    det_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.95])
    det_labels = torch.tensor([0, 0, 0, 0, 0, 0])  # the last one sits on GT1 with the wrong class
    codes = classify_detections(det_boxes, det_scores, det_labels, gts, gt_labels)
    assert codes.tolist() == [CORRECT, REDUNDANT, REDUNDANT, ERROR, IGNORED, IGNORED]

    st = alignment_stats(
        torch.zeros(0, 2), torch.zeros(0, 4), gts, gt_labels, det_boxes, det_scores, det_labels
    )
    assert (st["n_correct"], st["n_redundant"], st["n_error"]) == (1, 2, 1)
    s = summarize_alignment([st, st])
    assert (s["n_correct"], s["n_redundant"], s["n_error"]) == (2, 4, 2)


def test_correct_is_the_highest_scoring_match_not_the_best_overlap():
    det_boxes = strip_boxes([10.0, 8.0])
    codes = classify_detections(det_boxes, torch.tensor([0.2, 0.9]), torch.tensor([0, 0]), GT0, LABEL0)
    assert codes.tolist() == [REDUNDANT, CORRECT]


def test_image_without_gt_counts_nothing():
    det = strip_boxes([10.0])
    st = alignment_stats(
        class_scores([0.5]),
        det,
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        det,
        torch.tensor([0.5]),
        torch.tensor([0]),
    )
    assert st == {
        "instances": 0,
        "pcc_sum": 0.0,
        "pcc_count": 0,
        "iou10_sum": 0.0,
        "iou10_count": 0,
        "n_correct": 0,
        "n_redundant": 0,
        "n_error": 0,
    }


def test_summarize_averages_over_instances_of_all_images():
    heights = torch.arange(1, 11, dtype=torch.float32)
    up = alignment_stats(class_scores(heights / 20), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    down = alignment_stats(class_scores(1 - heights / 20), strip_boxes(heights), GT0, LABEL0, *NO_DETS)
    s = summarize_alignment([up, up, down])
    assert s["pcc_top50"] == pytest.approx(1 / 3)
    assert set(s) == {"pcc_top50", "iou_top10", "n_correct", "n_redundant", "n_error"}
