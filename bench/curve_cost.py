"""What the budget curve costs (issue 16: at most 10% of a run's wall time): train a short run of the
default profile with a point after every epoch, then time points of its final weights on N val images.

Setting: params.yaml's `tood` variant (T-Head + TAL; the default shapes profile: 704 train / 512 val images
at 128 px, ResNet-18, batch 8), `--epochs` epochs instead of 12, a point after every epoch on the first
`--in-run-images` val images (tood.engine.curve.BudgetCurve inside tood.engine.train.train, as a pipeline
run does), then `--repeats` points of the final weights on each `--images` count.

Measured in CPU seconds of this process at one intra-op thread (`--threads 1`), not wall seconds: on a
machine shared with other work, wall time is mostly waiting for a core (a first try at 2 threads, load 3-5,
gave 1.6 s and 22 s for the same 128-image point), while one thread's CPU time counts only its own work.
Training and evaluation scale alike with threads, so the share carries over to 2 threads (an assumption,
stated with the figure). The cost of "every k epochs, N images" on a 12-epoch run is

    (points(12, k) x CPU s per point(N) + building the val set once) / (12 x CPU s per epoch + start-up CPU s)

CPU s per epoch: the short run's CPU time outside its points, over its epochs (model build and image cache
included, a few seconds); start-up: the CPU seconds of imports before training, as every train stage pays.

    .venv/bin/python -m bench.curve_cost --epochs 3 --json bench/curve_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import cpu_summary, print_table, write_json
from tood.config import HEADLINE, load_run_config
from tood.engine.curve import CURVE_FILE, BudgetCurve, curve_epochs, read_curve
from tood.engine.inference import load_detector
from tood.engine.train import train


class _NoLog:
    """Stands in for RunLogger: the timed points after training log nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    startup_cpu_s = time.process_time()  # imports: what a train stage pays before its first step
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the short run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (train.num_threads)")
    parser.add_argument("--in-run-images", type=int, default=256, help="curve images of the short run")
    parser.add_argument("--images", default="128,256,512", help="val image counts to time a point on")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cfg = load_run_config(args.params, HEADLINE)
    budget_epochs = cfg.train.epochs
    short = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, epochs=args.epochs, num_threads=args.threads),
        eval=dataclasses.replace(cfg.eval, curve_every_epochs=1, curve_max_images=args.in_run_images),
    )  # fmt: skip
    point_cpu: list[float] = []
    record = BudgetCurve.record

    def timed_record(self, *a, **kw):  # CPU seconds of each point (eval_s in curve.csv is wall time)
        start = time.process_time()
        record(self, *a, **kw)
        point_cpu.append(time.process_time() - start)

    BudgetCurve.record = timed_record
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"  # never the repo's store
        start_cpu, start = time.process_time(), time.perf_counter()
        summary = train(short, 0, Path(tmp) / "run")
        run_cpu_s, wall_s = time.process_time() - start_cpu, time.perf_counter() - start
        points = read_curve(Path(tmp) / "run" / CURVE_FILE)
        ckpt = torch.load(Path(tmp) / "run" / "last.pt", map_location="cpu", weights_only=True)
    in_run_cpu = list(point_cpu)  # the first also builds the val set, as in a pipeline run
    epoch_cpu_s = (run_cpu_s - sum(in_run_cpu)) / args.epochs
    detector, _ = load_detector(ckpt, torch.device("cpu"))
    if short.train.channels_last:
        detector = detector.to(memory_format=torch.channels_last)  # as the training run evaluates it
    per_point = {}
    for n in (int(x) for x in args.images.split(",")):
        ncfg = dataclasses.replace(short, eval=dataclasses.replace(short.eval, curve_max_images=n))
        point_cpu.clear()
        with tempfile.TemporaryDirectory() as tmp:
            curve = BudgetCurve(ncfg, Path(tmp) / CURVE_FILE, 0, _NoLog(), None)
            for _ in range(args.repeats + 1):  # the first also builds the val set
                curve.record(detector, args.epochs, summary["iterations"])
            ap = read_curve(Path(tmp) / CURVE_FILE)[-1]["AP"]
        per_point[n] = {
            "cpu_s": statistics.median(point_cpu[1:]),
            "first_extra_cpu_s": point_cpu[0] - statistics.median(point_cpu[1:]),
            "AP": ap,
        }
    run_cpu_12 = budget_epochs * epoch_cpu_s + startup_cpu_s
    cost = {
        f"every {k}, {n} images": (len(curve_epochs(budget_epochs, k)) * p["cpu_s"] + p["first_extra_cpu_s"])
        / run_cpu_12
        for k in (1, 2, 3, 4)
        for n, p in per_point.items()
    }
    in_run_s = statistics.median(in_run_cpu)  # points of weights still training (more low-score boxes)
    for k in (1, 2, 3, 4):
        extra = in_run_cpu[0] - in_run_s
        cost[f"every {k}, {args.in_run_images} images (in-run points)"] = (
            len(curve_epochs(budget_epochs, k)) * in_run_s + extra
        ) / run_cpu_12
    print_table(["images", "CPU s per point (median)", "AP of the final weights"],
                [[str(n), f"{p['cpu_s']:.2f}", f"{p['AP']:.4f}"] for n, p in per_point.items()])  # fmt: skip
    print(f"epoch: {epoch_cpu_s:.1f} CPU s ({args.epochs} epochs, {args.threads} thread(s), amp {ckpt['amp']}); "
          f"in-run points ({args.in_run_images} images): " + ", ".join(f"{c:.2f}" for c in in_run_cpu) + " CPU s")  # fmt: skip
    print_table(["setting", f"cost, share of a {budget_epochs}-epoch run's CPU time"],
                [[k, f"{100 * v:.1f}%"] for k, v in cost.items()])  # fmt: skip
    write_json(args.json, {
        "cpu": cpu_summary(), "threads": args.threads, "precision": ckpt["amp"], "epochs": args.epochs,
        "epoch_cpu_s": epoch_cpu_s, "startup_cpu_s": startup_cpu_s, "run_cpu_s": run_cpu_s, "wall_s": wall_s,
        "load_avg_1_5_15": os.getloadavg(), "in_run_images": args.in_run_images,
        "in_run_points": [r | {"cpu_s": c} for r, c in zip(points, in_run_cpu)],
        "per_point": per_point, "cost_share": cost,
    })  # fmt: skip


if __name__ == "__main__":
    main()
