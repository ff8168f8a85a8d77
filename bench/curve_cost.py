"""What the budget curve costs (issue 16: at most 10% of a run's wall time): train a short run of the
default profile with a point after every epoch, then time points of its final weights on N val images.

Setting: params.yaml's `tood` variant (T-Head + TAL; the default shapes profile: 704 train / 512 val images
at 128 px, ResNet-18, batch 8), `--epochs` epochs instead of 12, a point after every epoch on the
evaluate stage's 512 images (tood.engine.curve.BudgetCurve inside tood.engine.train.train, as a pipeline
run does), and afterwards `--repeats` timed points of the final weights on each `--images` count. The
cost of a setting (every k epochs, N images) on a 12-epoch run is

    points(12, k) x seconds per point(N) / (12 x seconds per epoch)

with seconds per epoch = train_time_s / epochs of the short run (the epochs' own time, without
start-up) and seconds per point measured here. Training runs alone: pause other work first.

    .venv/bin/python -m bench.curve_cost --epochs 2 --json bench/curve_cost.json
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the short run")
    parser.add_argument("--images", default="128,256,512", help="val image counts to time a point on")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pretrained", default=None, help="overrides model.pretrained (a backbone.pt)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cfg = load_run_config(args.params, HEADLINE)
    budget_epochs = cfg.train.epochs
    model = (
        cfg.model if args.pretrained is None else dataclasses.replace(cfg.model, pretrained=args.pretrained)
    )
    short = dataclasses.replace(
        cfg, model=model,
        train=dataclasses.replace(cfg.train, epochs=args.epochs),
        eval=dataclasses.replace(cfg.eval, curve_every_epochs=1, curve_max_images=0),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"  # never the repo's store
        start = time.perf_counter()
        summary = train(short, 0, Path(tmp) / "run")
        wall_s = time.perf_counter() - start
        points = read_curve(Path(tmp) / "run" / CURVE_FILE)
        ckpt = torch.load(Path(tmp) / "run" / "last.pt", map_location="cpu", weights_only=True)
    detector, _ = load_detector(ckpt, torch.device("cpu"))
    if short.train.channels_last:
        detector = detector.to(memory_format=torch.channels_last)  # as the training run evaluates it
    per_point = {}
    for n in (int(x) for x in args.images.split(",")):
        ncfg = dataclasses.replace(short, eval=dataclasses.replace(short.eval, curve_max_images=n))
        with tempfile.TemporaryDirectory() as tmp:
            curve = BudgetCurve(ncfg, Path(tmp) / CURVE_FILE, 0, _NoLog(), None)
            for _ in range(args.repeats + 1):  # the first builds the val set: timed too, as in a run
                curve.record(detector, args.epochs, summary["iterations"])
            rows = read_curve(Path(tmp) / CURVE_FILE)
        per_point[n] = {"s": statistics.median(r["eval_s"] for r in rows), "AP": rows[-1]["AP"]}
    epoch_s = summary["train_time_s"] / args.epochs
    cost = {
        f"every {k}, {n} images": len(curve_epochs(budget_epochs, k)) * p["s"] / (budget_epochs * epoch_s)
        for k in (1, 2, 3, 4)
        for n, p in per_point.items()
    }
    print_table(["images", "s per point (median)", "AP of the final weights"],
                [[str(n), f"{p['s']:.2f}", f"{p['AP']:.4f}"] for n, p in per_point.items()])  # fmt: skip
    print(f"epoch: {epoch_s:.1f} s ({args.epochs} epochs, amp {ckpt['amp']}); in-run points: "
          + ", ".join(f"{r['eval_s']:.2f} s" for r in points))  # fmt: skip
    print_table(["setting", f"cost, share of {budget_epochs} epochs"],
                [[k, f"{100 * v:.1f}%"] for k, v in cost.items()])  # fmt: skip
    write_json(args.json, {
        "cpu": cpu_summary(), "threads": torch.get_num_threads(), "precision": ckpt["amp"],
        "epochs": args.epochs, "epoch_s": epoch_s, "wall_s": wall_s, "in_run_points": points,
        "per_point": per_point, "cost_share": cost,
    })  # fmt: skip


if __name__ == "__main__":
    main()
