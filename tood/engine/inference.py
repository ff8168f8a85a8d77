"""Evaluation runner: a trained detector over a loader -> COCO results, Table 6 alignment stats, metrics.

`run_inference` is the loop (no metrics); `evaluate_checkpoint` is what the pipeline's evaluate stage
calls: load last.pt (weights_only), run the val split, return one flat metrics dict with COCO AP
(tood.engine.evaluate.coco_eval) and the alignment analysis (tood.engine.evaluate.summarize_alignment).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import Tensor

from tood.config import AssignConfig, EvalConfig, LossConfig, RunConfig, from_dict
from tood.data.dataset import Batch, build_dataset, build_loader
from tood.engine.evaluate import alignment_stats, coco_eval, detections_to_coco, summarize_alignment
from tood.engine.runtime import device_name, pick_device, print_timing, process_age_s
from tood.model.assigners import choose_assigner
from tood.model.backbone import NO_WEIGHTS
from tood.model.detector import Detections, Detector, centerness_factor
from tood.model.heads import HeadOutput
from tood.model.losses import atss_loss, choose_loss
from tood.progress import progress as progress_bar  # the `progress` argument below is a bool


def uses_centerness(assign: AssignConfig, loss: LossConfig, epochs: int) -> bool:
    """Whether test scores are multiplied by the centerness: only when the final epoch's loss trained it.

    Standard ATSS and FCOS multiply the cls score by centerness at test time [mmdet ATSSHead, FCOSHead]; their
    loss (tood.model.losses.atss_loss) is what trains the centerness branch. After TAL (the final assigner of
    a TOOD run) the scores are already IoU-aware and the reference uses them as they are [R]; GFL's are too
    (IoU targets), and RetinaNet and FoveaBox have no centerness.
    """
    phase = choose_assigner(assign.assigner, epochs - 1, assign.warmup_epochs)
    return choose_loss(phase, loss.cls_target) is atss_loss


@torch.no_grad()
def run_inference(
    detector: Detector,
    loader,
    eval_cfg: EvalConfig,
    use_centerness: bool,
    cat_ids: list[int],
    *,
    progress: bool = True,
    alignment: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Run `detector` over every batch of `loader` (eval mode, no grad).

    Returns:
        results: COCO results [{image_id, category_id, bbox xywh in original pixels, score}, ...].
        stats: one tood.engine.evaluate.alignment_stats dict per image (add up with summarize_alignment);
            empty with alignment=False (the budget curve's AP-only points skip that analysis).
    """
    detector.eval()
    device = next(detector.parameters()).device
    results: list[dict] = []
    stats: list[dict] = []
    for batch in progress_bar(loader, desc="eval", unit="batch", disable=not progress):
        images = batch.images.to(device)
        out = detector(images)
        detections = detector.postprocess(
            out, batch.metas, tuple(images.shape[-2:]), eval_cfg, use_centerness
        )
        results += detections_to_coco(detections, batch.metas, cat_ids)
        if not alignment:
            continue
        scores = test_scores(out, use_centerness)  # (B, A, C)
        stats += [image_alignment(scores[i], out.boxes[i], batch, i, det) for i, det in enumerate(detections)]
    return results, stats


def test_scores(out: HeadOutput, use_centerness: bool) -> Tensor:
    """(B, A, C) pre-NMS scores of every prior: the score its detection would carry.

    For the parallel ATSS head that is sigmoid(cls) x sigmoid(centerness) (`centerness_factor`), for the
    T-Head sqrt(P*M). The Table 6 analysis ranks candidates by this score, because it is the one that
    ranks the final detections (NMS and COCO AP). Detector.postprocess *selects* (score_thr, nms_pre) on
    the raw class score and multiplies afterwards [mmdet ATSSHead]; the analysis takes every prior, so
    that selection order does not enter it.
    """
    scores = out.scores.float()
    factors = centerness_factor(out, use_centerness)  # (B, A) or None
    return scores if factors is None else scores * factors[..., None]


def image_alignment(scores: Tensor, boxes: Tensor, batch: Batch, i: int, det: Detections) -> dict:
    """Table 6 stats of image i: pre-NMS scores (A, C) and boxes (A, 4) in the resized frame, moved with
    the batch's (non-crowd, clipped) GTs into the original frame where the detections already are."""
    meta = batch.metas[i]
    if meta.get("flipped", False):
        raise ValueError(f"image {meta['image_id']}: evaluation images must not be flipped")
    sx, sy = meta.get("scale_xy", (meta["scale_factor"], meta["scale_factor"]))
    to_orig = boxes.new_tensor([sx, sy, sx, sy]).float()  # (4,)
    mask = batch.gt_mask[i]  # (G,)
    gt_boxes = batch.gt_boxes[i][mask].to(boxes.device) / to_orig  # (G_i, 4)
    return alignment_stats(
        scores, boxes.float() / to_orig, gt_boxes, batch.gt_labels[i][mask], det.boxes, det.scores, det.labels
    )


def config_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> RunConfig:
    """The resolved RunConfig a checkpoint was trained with."""
    return from_dict(RunConfig, ckpt["config"], where)


def load_detector(ckpt: dict, device: torch.device, where: str = "checkpoint") -> tuple[Detector, RunConfig]:
    """Rebuild the trained detector from a checkpoint dict (model from the checkpoint's own config)."""
    train_cfg = config_from_checkpoint(ckpt, where)
    # the checkpoint holds every weight: never load (or download) the initial backbone again
    detector = Detector(dataclasses.replace(train_cfg.model, pretrained=NO_WEIGHTS), len(ckpt["cat_ids"]))
    detector.load_state_dict(ckpt["model"])
    return detector.to(device).eval(), train_cfg


def evaluate_checkpoint(
    cfg: RunConfig, checkpoint_path: Path, data_root: Path | None = None, *, allow_unfinished: bool = False
) -> dict:
    """COCO + alignment metrics of a training checkpoint on cfg's val split.

    The model (and the ATSS/TAL test-score rule) comes from the checkpoint's own config; data and
    post-processing settings from `cfg`. Returns {AP, AP50, AP75, APs, APm, APl, pcc_top50, iou_top10,
    n_correct, n_redundant, n_error, per_class: {name: AP}, num_images, num_detections, epochs} and what
    the result was measured on (issue 16: precision and CPU are part of the result): precision (the
    resolved train.amp), device (the CPU model or GPU of each machine that trained it, "; "-joined; null
    for a checkpoint older than that record) and eval_device (this machine; evaluation runs in fp32); and
    the run's train_time_s (its epochs) and curve_time_s (its budget-curve points; null before issue 16).
    """
    path = Path(checkpoint_path)
    # mmap: only the tensors used are read; the optimizer's momentum (half of last.pt) never is
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if ckpt.get("summary") is None and not allow_unfinished:
        raise ValueError(f"{path}: training is not finished (epoch {ckpt['epoch']}); resume it first")
    device = pick_device()
    detector, train_cfg = load_detector(ckpt, device, where=str(path))
    dataset = build_dataset(cfg, data_root, train=False)
    if list(dataset.cat_ids) != list(ckpt["cat_ids"]):
        raise ValueError(
            f"{path}: category ids {ckpt['cat_ids']} differ from the val set's {dataset.cat_ids}"
        )
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, seed=0, drop_last=False)
    use_ctr = uses_centerness(train_cfg.assign, train_cfg.loss, train_cfg.train.epochs)
    startup_s, startup_cpu_s, start = process_age_s(), time.process_time(), time.perf_counter()
    results, stats = run_inference(detector, loader, cfg.eval, use_ctr, dataset.cat_ids)
    inference_s = time.perf_counter() - start
    metrics = {**coco_eval(dataset.coco, results), **summarize_alignment(stats)}
    print_timing(
        startup_s=startup_s, startup_cpu_s=startup_cpu_s, inference_s=inference_s,
        cocoeval_s=time.perf_counter() - start - inference_s,
    )  # fmt: skip
    summary = ckpt.get("summary") or {}  # the run's own time: what the budget curve cost it (issue 16)
    hardware = {
        "train_time_s": summary.get("train_time_s"),
        "curve_time_s": summary.get("curve_time_s"),
        "precision": ckpt.get("amp"),
        "device": "; ".join(ckpt.get("devices", [])) or None,
        "eval_device": device_name(device),
    }
    counts = {"num_images": len(dataset), "num_detections": len(results), "epochs": ckpt["epoch"]}
    return {**metrics, **counts, **hardware}
