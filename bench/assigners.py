"""Assigner time and peak memory: our tal_assign / atss_assign against ultralytics' TaskAlignedAssigner.

Same inputs for all three: B images, FPN P3-P7 priors (strides 8..128, one per location) of a padded input,
G random GTs per image (all valid), C=80, random probabilities and predicted boxes around the priors.
  priors "8.5k":  640 x 640    -> 80*80 + 40*40 + 20*20 + 10*10 + 5*5 = 8,525 priors
  priors "22k":   800 x 1344   -> 1333 x 800 padded to 32 (the COCO recipe)    = 22,400 priors
Grid: batch 2 and 16 x the two prior sets x 5/20/100/300 GTs per image (ultralytics PR #25240 stresses 300).

Each (implementation, shape) runs in a fresh subprocess: inputs first, then one call whose peak-memory
increase is recorded (CPU: ru_maxrss high-water mark; CUDA: max_memory_allocated), then the median time of
`--repeats` further calls. Figures are meant to be read as ratios within one run: absolute CPU times on a
shared machine are noisy. ultralytics is the `bench` dependency group (`uv sync --group bench`), never vendored.

What each call does differs slightly, which the ratios should be read with:
  ours TAL:  IoU of every (GT, prior) pair, t = s^a u^b over all priors, top-13, then the centre test [R];
             returns (B, A) targets (the loss scatters the class).
  ultra TAL: centre test first, CIoU only on the pairs inside a GT, top-13; returns (B, A, C) targets.
  ours ATSS: 9 nearest anchors per level, mean+std IoU threshold (no scores involved).

    .venv/bin/python -m bench.assigners [--batches 2 16] [--gts 5 20 100 300] [--threads 2] [--repeats 3]
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

from tood.model.assigners import atss_assign, tal_assign

STRIDES = (8, 16, 32, 64, 128)
PRIOR_SETS = {"8.5k": (640, 640), "22k": (800, 1344)}  # padded (H, W)
NUM_CLASSES = 80
IMPLEMENTATIONS = ("ours_tal", "ultralytics_tal", "ours_atss")


def make_inputs(batch: int, num_gts: int, image_hw: tuple[int, int], device: str, seed: int = 0) -> dict:
    """Priors of the padded image and random GTs (2 px to 1/3 of the image), scores and predicted boxes."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image_hw
    points, anchors, num_per_level = [], [], []
    for s in STRIDES:
        h, w = math.ceil(H / s), math.ceil(W / s)
        ys, xs = torch.meshgrid(torch.arange(h) * float(s), torch.arange(w) * float(s), indexing="ij")
        p = torch.stack((xs.flatten(), ys.flatten()), -1)  # (A_l, 2)
        points.append(p)
        anchors.append(torch.cat((p - 4 * s, p + 4 * s), -1))  # 8s squares
        num_per_level.append(h * w)
    points, anchors = torch.cat(points), torch.cat(anchors)  # (A, 2), (A, 4)
    A = points.shape[0]
    size = torch.tensor([W, H], dtype=torch.float32)
    centres = torch.rand(batch, num_gts, 2, generator=gen) * size  # (B, G, 2)
    wh = 2 + torch.rand(batch, num_gts, 2, generator=gen) * size / 3
    pred_wh = 4 + torch.rand(batch, A, 2, generator=gen) * 200  # (B, A, 2)
    x = {
        "points": points,
        "anchors": anchors,
        "pred_scores": torch.rand(batch, A, NUM_CLASSES, generator=gen),
        "pred_boxes": torch.cat((points - pred_wh / 2, points + pred_wh / 2), -1),
        "gt_boxes": torch.cat((centres - wh / 2, centres + wh / 2), -1),
        "gt_labels": torch.randint(0, NUM_CLASSES, (batch, num_gts), generator=gen),
        "gt_mask": torch.ones(batch, num_gts, dtype=torch.bool),
    }
    x = {k: v.to(device) for k, v in x.items()}
    x["num_per_level"] = tuple(num_per_level)
    return x


def make_call(name: str, x: dict):
    """A zero-argument function running one assignment; returns its fg mask (B, A)."""
    if name == "ours_tal":
        args = (x["pred_scores"], x["pred_boxes"], x["points"], x["gt_boxes"], x["gt_labels"], x["gt_mask"])
        return lambda: tal_assign(*args, alpha=1.0, beta=6.0, topk=13).fg_mask
    if name == "ours_atss":
        args = (x["anchors"], x["num_per_level"], x["gt_boxes"], x["gt_labels"], x["gt_mask"], NUM_CLASSES)
        return lambda: atss_assign(*args, topk=9).fg_mask
    if name == "ultralytics_tal":
        from ultralytics.utils.tal import TaskAlignedAssigner

        assigner = TaskAlignedAssigner(
            topk=13, num_classes=NUM_CLASSES, alpha=1.0, beta=6.0, stride=list(STRIDES)
        )
        labels, mask = x["gt_labels"][..., None], x["gt_mask"][..., None].float()  # (B, G, 1) as it expects
        args = (x["pred_scores"], x["pred_boxes"], x["points"], labels, x["gt_boxes"], mask)
        return lambda: assigner(*args)[3]
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLEMENTATIONS}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def child(name: str, batch: int, num_gts: int, priors: str, device: str, repeats: int) -> dict:
    """In a fresh process: peak memory added by the first call, then the median time of `repeats` calls."""
    x = make_inputs(batch, num_gts, PRIOR_SETS[priors], device)
    call = make_call(name, x)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    fg = call()
    _sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    num_pos = int(fg.sum())
    del fg
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"peak_mib": peak / 2**20, "ms": 1000 * sorted(times)[len(times) // 2], "num_pos": num_pos}


def run_child(args: argparse.Namespace, name: str, batch: int, gts: int, priors: str) -> dict:
    cmd = [sys.executable, "-m", "bench.assigners", "--child", name, "--batches", str(batch)]
    cmd += [
        "--gts",
        str(gts),
        "--priors",
        priors,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    cmd += ["--device", args.device]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--gts", type=int, nargs="+", default=[5, 20, 100, 300])
    parser.add_argument("--priors", nargs="+", choices=sorted(PRIOR_SETS), default=["8.5k", "22k"])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        fig = child(args.child, args.batches[0], args.gts[0], args.priors[0], args.device, args.repeats)
        print(json.dumps(fig))
        return
    print(f"device={args.device} threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    header = "  B  priors    G | ours TAL ms  ultra ms  speed-up | ours MiB  ultra MiB  mem ratio | ATSS ms  ATSS MiB"
    print(header)
    rows = []
    for batch in args.batches:
        for priors in args.priors:
            for gts in args.gts:
                fig = {name: run_child(args, name, batch, gts, priors) for name in IMPLEMENTATIONS}
                ours, ultra, atss = fig["ours_tal"], fig["ultralytics_tal"], fig["ours_atss"]
                rows.append({"batch": batch, "priors": priors, "gts": gts, **fig})
                print(
                    f"{batch:3d}  {priors:>6} {gts:4d} | {ours['ms']:11.1f} {ultra['ms']:9.1f} "
                    f"{ultra['ms'] / ours['ms']:8.2f}x | {ours['peak_mib']:8.0f} {ultra['peak_mib']:10.0f} "
                    f"{ours['peak_mib'] / max(ultra['peak_mib'], 1e-9):9.2f}x | {atss['ms']:7.1f} "
                    f"{atss['peak_mib']:9.0f}",
                    flush=True,
                )
    print(
        "speed-up = ultralytics time / ours (>1: ours faster); mem ratio = ours peak / ultralytics peak (<1: leaner)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
