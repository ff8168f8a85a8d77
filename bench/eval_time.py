"""Where evaluation time goes: model forward, post-processing, alignment stats and COCOeval.

Setting: a trained checkpoint (default runs/tood/seed0/last.pt, the headline run of the default
profile) over the val split of --params, loaded and run as tood.engine.inference.evaluate_checkpoint does
(model and test-score rule from the checkpoint's config, data and eval settings from params.yaml,
loader of eval.batch_size, no flips). Two timed passes after one untimed forward:

  1. end to end: tood.engine.inference.run_inference, then tood.engine.evaluate.coco_eval on its results: what the
     pipeline's evaluate stage pays per seed (less MLflow logging).
  2. split: the calls run_inference makes per batch, with a timestamp between them (after
     torch.cuda.synchronize on CUDA): data (loader + move to the device), forward (detector(images)),
     post-processing (Detector.postprocess: per-level top-k, score threshold, class-wise NMS),
     to COCO (detections_to_coco), alignment (test_scores + image_alignment per image, then
     summarize_alignment once). COCOeval is taken from pass 1.
The split pass's sum and pass 1's run_inference time should agree to within noise.

    .venv/bin/python -m bench.eval_time --threads 2
    .venv/bin/python -m bench.eval_time --checkpoint runs/parallel_atss/seed0/last.pt --json eval_time.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import PhaseClock, choose_device, print_table, setting_line, sync, write_json
from tood.config import HEADLINE, load_run_config
from tood.data.dataset import build_dataset, build_loader
from tood.engine.evaluate import coco_eval, detections_to_coco, summarize_alignment
from tood.engine.inference import image_alignment, load_detector, run_inference, test_scores, uses_centerness

SPLIT_PHASES = ("data", "forward", "postprocess", "to_coco", "alignment")
LABELS = {
    "data": "data (loader + to device)",
    "forward": "model forward",
    "postprocess": "post-processing (top-k, NMS)",
    "to_coco": "detections -> COCO results",
    "alignment": "alignment stats (Table 6)",
    "cocoeval": "COCOeval (pycocotools)",
}


def end_to_end(detector, loader, dataset, eval_cfg, use_ctr: bool, device) -> tuple[dict, dict]:
    """Pass 1: run_inference + coco_eval, each timed; returns (seconds, metrics)."""
    sync(device)
    start = time.perf_counter()
    results, stats = run_inference(detector, loader, eval_cfg, use_ctr, dataset.cat_ids, progress=False)
    sync(device)
    inference = time.perf_counter() - start
    metrics = coco_eval(dataset.coco, results)
    cocoeval = time.perf_counter() - start - inference
    metrics |= summarize_alignment(stats)
    seconds = {"run_inference": inference, "cocoeval": cocoeval}
    return seconds, {**metrics, "num_detections": len(results)}


@torch.no_grad()
def split_pass(detector, loader, dataset, eval_cfg, use_ctr: bool, device) -> dict[str, float]:
    """Pass 2: run_inference's per-batch calls with a lap after each; returns seconds per phase."""
    detector.eval()
    clock = PhaseClock(device)
    results, stats = [], []
    clock.start()
    for batch in loader:
        images = batch.images.to(device)
        clock.lap("data")
        out = detector(images)
        clock.lap("forward")
        detections = detector.postprocess(out, batch.metas, tuple(images.shape[-2:]), eval_cfg, use_ctr)
        clock.lap("postprocess")
        results += detections_to_coco(detections, batch.metas, dataset.cat_ids)
        clock.lap("to_coco")
        scores = test_scores(out, use_ctr)  # (B, A, C)
        stats += [image_alignment(scores[i], out.boxes[i], batch, i, det) for i, det in enumerate(detections)]
        clock.lap("alignment")
    summarize_alignment(stats)
    clock.lap("alignment")
    return clock.seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/tood/seed0/last.pt"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="data + eval settings")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--allow-unfinished", action="store_true", help="accept a mid-training checkpoint")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    if not args.checkpoint.exists():
        raise SystemExit(f"{args.checkpoint} is missing: train it first (`dvc repro train_tood`)")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if ckpt.get("summary") is None and not args.allow_unfinished:
        raise SystemExit(f"{args.checkpoint}: training is not finished; pass --allow-unfinished to time it")
    cfg = load_run_config(args.params, HEADLINE)  # only data + eval are read, as in evaluate_checkpoint
    detector, train_cfg = load_detector(ckpt, device, where=str(args.checkpoint))
    dataset = build_dataset(cfg, None, train=False)
    if list(dataset.cat_ids) != list(ckpt["cat_ids"]):
        raise SystemExit(f"{args.checkpoint}: category ids differ from the val set's {dataset.cat_ids}")
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, seed=0, drop_last=False)
    use_ctr = uses_centerness(train_cfg.assign, train_cfg.train.epochs)
    print(setting_line(device))
    print(
        f"checkpoint={args.checkpoint} depth={train_cfg.model.depth} head={train_cfg.model.head} "
        f"val images={len(dataset)} batch={cfg.eval.batch_size} img_scale={list(cfg.data.img_scale)} "
        f"centerness at test={use_ctr}"
    )
    with torch.no_grad():  # untimed warm-up: first-call allocations and kernel selection
        detector(next(iter(loader)).images.to(device))
    e2e, metrics = end_to_end(detector, loader, dataset, cfg.eval, use_ctr, device)
    split = split_pass(detector, loader, dataset, cfg.eval, use_ctr, device)
    report(args, split, e2e, metrics, len(dataset))


def report(args: argparse.Namespace, split: dict, e2e: dict, metrics: dict, num_images: int) -> None:
    seconds = {**{p: split[p] for p in SPLIT_PHASES}, "cocoeval": e2e["cocoeval"]}
    total = sum(seconds.values())
    rows = [
        [LABELS[p], f"{s:.3f}", f"{1000 * s / num_images:.2f}", f"{100 * s / total:.1f}"]
        for p, s in seconds.items()
    ]
    rows.append(
        ["total (split pass + COCOeval)", f"{total:.3f}", f"{1000 * total / num_images:.2f}", "100.0"]
    )
    print_table(["phase", "s", "ms/image", "share %"], rows)
    end_to_end_s = e2e["run_inference"] + e2e["cocoeval"]
    print(
        f"end to end (run_inference {e2e['run_inference']:.3f} s + coco_eval {e2e['cocoeval']:.3f} s) = "
        f"{end_to_end_s:.3f} s for {num_images} images: {num_images / end_to_end_s:.1f} images/s; "
        f"forward only: {num_images / split['forward']:.1f} images/s"
    )
    print(f"AP={metrics['AP']:.4f} AP50={metrics['AP50']:.4f} detections={metrics['num_detections']}")
    figures = {
        "checkpoint": str(args.checkpoint),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "num_images": num_images,
        "split_s": seconds,
        "split_total_s": total,
        "end_to_end_s": {**e2e, "total": end_to_end_s},
        "images_per_s": num_images / end_to_end_s,
        "forward_images_per_s": num_images / split["forward"],
        "AP": metrics["AP"],
    }
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
