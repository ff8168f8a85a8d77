"""Peak memory and time of tal_assign / atss_assign on CPU at COCO scale (reference/tood.md pitfall 4).

Setting: B=2 images of 1333 x 800 padded to 1344 x 800 (size_divisor 32), FPN P3-P7 (strides 8..128),
one prior per location -> A = sum_l ceil(800/s) * ceil(1344/s) = 22,400 priors; G=300 GTs per image
(COCO's max is ~90; 300 is the ultralytics PR #25240 stress setting); C=80.

Peak memory is measured as the ru_maxrss increase of a fresh subprocess per function: inputs are built
first, then one call raises the high-water mark by what the call needed (tracemalloc cannot see torch's
CPU allocations). pairwise_iou alone is measured too, since its intermediates dominate both assigners.

    .venv/bin/python -m bench.assigner_memory [--gts 300] [--batch 2] [--threads 1] [--repeats 3]   (repo root)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from tood.assigners import atss_assign, tal_assign
from tood.boxes import pairwise_iou

STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (800, 1344)  # (1333, 800) resized and padded to a multiple of 32


def make_inputs(batch: int, num_gts: int, num_classes: int = 80, seed: int = 0) -> dict:
    """Priors of the padded image and random GTs, scores and predicted boxes."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(IMAGE_HW[0] / s), math.ceil(IMAGE_HW[1] / s)) for s in STRIDES]
    points, anchors = [], []
    for (h, w), s in zip(sizes, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h) * float(s), torch.arange(w) * float(s), indexing="ij")
        p = torch.stack((xs.flatten(), ys.flatten()), -1)  # (A_l, 2)
        points.append(p)
        anchors.append(torch.cat((p - 4 * s, p + 4 * s), -1))  # 8s squares
    points, anchors = torch.cat(points), torch.cat(anchors)  # (A, 2), (A, 4)
    A = points.shape[0]
    wh_max = torch.tensor([IMAGE_HW[1], IMAGE_HW[0]]) / 3
    centres = torch.rand(batch, num_gts, 2, generator=gen) * torch.tensor([IMAGE_HW[1], IMAGE_HW[0]])
    wh = 2 + torch.rand(batch, num_gts, 2, generator=gen) * wh_max
    pred_wh = 4 + torch.rand(batch, A, 2, generator=gen) * 200
    return {
        "points": points,
        "anchors": anchors,
        "num_per_level": tuple(h * w for h, w in sizes),
        "pred_scores": torch.rand(batch, A, num_classes, generator=gen),
        "pred_boxes": torch.cat((points - pred_wh / 2, points + pred_wh / 2), -1),
        "gt_boxes": torch.cat((centres - wh / 2, centres + wh / 2), -1),
        "gt_labels": torch.randint(0, num_classes, (batch, num_gts), generator=gen),
        "gt_mask": torch.ones(batch, num_gts, dtype=torch.bool),
    }


def run_once(name: str, x: dict):
    if name == "tal":
        return tal_assign(
            x["pred_scores"], x["pred_boxes"], x["points"], x["gt_boxes"], x["gt_labels"], x["gt_mask"],
            alpha=1.0, beta=6.0, topk=13,
        )  # fmt: skip
    if name == "atss":
        num_classes = x["pred_scores"].shape[-1]
        return atss_assign(
            x["anchors"], x["num_per_level"], x["gt_boxes"], x["gt_labels"], x["gt_mask"], num_classes, topk=9
        )
    if name == "pairwise_iou":
        return pairwise_iou(x["gt_boxes"], x["pred_boxes"])
    raise ValueError(name)


def child(name: str, batch: int, num_gts: int, repeats: int) -> dict:
    """Runs in a fresh process: peak RSS increase of the first call, then the median time of `repeats` calls."""
    x = make_inputs(batch, num_gts)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = run_once(name, x)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    num_pos = int(result.fg_mask.sum()) if hasattr(result, "fg_mask") else None
    del result
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(name, x)
        times.append(time.perf_counter() - start)
    return {
        "name": name,
        "priors": x["points"].shape[0],
        "peak_mib": (peak_kib - before_kib) / 1024,
        "median_s": sorted(times)[len(times) // 2],
        "num_pos": num_pos,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--gts", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU is shared)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["tal", "atss", "pairwise_iou"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.gts, args.repeats)))
        return
    bgaf_mib = args.batch * args.gts * make_inputs(1, 1)["points"].shape[0] * 4 / 2**20
    print(
        f"B={args.batch} G={args.gts} C=80 threads={args.threads}; one (B,G,A) fp32 tensor = {bgaf_mib:.1f} MiB"
    )
    for name in ("pairwise_iou", "tal", "atss"):
        cmd = [sys.executable, "-m", "bench.assigner_memory", "--child", name]
        cmd += ["--batch", str(args.batch), "--gts", str(args.gts), "--threads", str(args.threads)]
        cmd += ["--repeats", str(args.repeats)]
        repo_root = Path(__file__).resolve().parents[1]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=repo_root).stdout)
        print(
            f"{name:>12}: A={r['priors']}  peak +{r['peak_mib']:.0f} MiB ({r['peak_mib'] / bgaf_mib:.1f}x B*G*A*4)"
            f"  median {r['median_s'] * 1000:.0f} ms  positives={r['num_pos']}"
        )


if __name__ == "__main__":
    main()
