"""Stage `pretrain`: train our stand-in for ImageNet once (tood/engine/pretrain.py) -> the backbone every run loads.

    python -m pipeline.pretrain_backbone --params params.yaml --out runs/pretrain/backbone.pt \
        --metrics reports/pretrain.json

The classifier (ResNet of model.depth on shape crops) is logged to MLflow as its own run ("pretrain ...",
tag variant=pretrain, in experiment tood-pretrain) with its loss, lr and accuracy. --metrics gets only its
top-1 accuracy on held-out and on training crops (null when nothing was trained): it is a row of `dvc metrics
show`, which is one table for every stage, so a key here is a column there (issue 18); the rest of the
summary (loss, steps, time) is in the checkpoint and the MLflow run.
When params.yaml's model.pretrained is not --out (the COCO profile uses imagenet), nothing is trained:
--out then records that it is unused, so the stage still has its outputs and costs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import prog, run

METRICS = ("top1_val", "top1_train")  # --metrics: the columns this stage adds to `dvc metrics show`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params file (sections pretrain, model)")
    parser.add_argument("--out", type=Path, required=True, help="backbone checkpoint to write")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON with the held-out accuracy")
    args = parser.parse_args(argv)

    from tood.config import HEADLINE, load_run_config, resolve_repo_path

    cfg = load_run_config(args.params, HEADLINE)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    if resolve_repo_path(cfg.model.pretrained).resolve() != resolve_repo_path(args.out).resolve():
        note = f"not used: model.pretrained is {cfg.model.pretrained!r}, not {args.out}"
        _write_unused(args.out, note)
        args.metrics.write_text(json.dumps(dict.fromkeys(METRICS), indent=2) + "\n")
        print(f"pretrain: {note}")
        return 0
    summary = pretrain(cfg, args.out)
    args.metrics.write_text(json.dumps({k: summary[k] for k in METRICS}, indent=2) + "\n")
    print(f"pretrain: top-1 {summary['top1_val']:.3f} on {cfg.pretrain.num_val} held-out crops -> {args.out}")
    return 0


def pretrain(cfg, out: Path) -> dict:
    """Render the crops, train and save the classifier's body, inside its own MLflow run."""
    import mlflow
    import torch

    from tood.engine import tracking
    from tood.engine.pretrain import make_crops, save_backbone, train_classifier
    from tood.engine.runtime import AMP_DTYPES, device_name, resolve_amp

    p = cfg.pretrain
    tracking.configure_tracking(tracking.PRETRAIN_EXPERIMENT)  # not a detection run: not in their table
    train, val = (make_crops(p, split, cfg.shapes.jpeg_quality) for split in ("train", "val"))
    precision = resolve_amp(cfg.train.amp, torch.device("cpu"))  # tood.engine.pretrain trains on the CPU
    print(f"pretrain: train.amp {cfg.train.amp} -> {precision}")
    name = f"pretrain r{cfg.model.depth} {p.num_classes}-way / seed{p.seed}"
    hardware = {"precision": precision, "device": device_name(torch.device("cpu"))}  # issue 16
    with mlflow.start_run(run_name=name, tags={"variant": "pretrain", "seed": str(p.seed), **hardware}):
        extra = {"model.depth": cfg.model.depth, "train.amp_resolved": precision}
        mlflow.log_params({f"pretrain.{k}": v for k, v in vars(p).items()} | extra)
        model, summary = train_classifier(
            p, cfg.model.depth, train, val, mean=cfg.data.mean, std=cfg.data.std, amp=AMP_DTYPES[precision],
            channels_last=cfg.train.channels_last, log=lambda step, m: tracking.log_metrics(m, step=step),
        )  # fmt: skip
        tracking.log_metrics({k: v for k, v in summary.items() if k != "chance"})
    save_backbone(out, model, cfg.model.depth, p, summary)
    return summary | hardware


def _write_unused(out: Path, note: str) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"unused": note}, out)


if __name__ == "__main__":
    run(main)
