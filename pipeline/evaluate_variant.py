"""Stage `evaluate@<variant>`: COCO + alignment metrics of every seed -> reports/metrics/<variant>.json.

    python -m pipeline.evaluate_variant --variant tood --runs runs/tood --out reports/metrics/tood.json

Each seed's metrics are added to that seed's training MLflow run (runs/<variant>/seed<k>/mlflow_run.json).
The file holds the mean over seeds at the top level, "std" (sample std, ddof=1; 0 for one seed),
"seeds" (per-seed values + mlflow_run_id), "setting" (what the numbers were measured under) and
"complexity" (Table 1's params and GFLOPs of the trained model, at the run's input and at the paper's
configuration; tood.report.complexity). The seeds are the variant's own (`variants.<name>.seeds`) or the
top-level list. Each seed also carries its budget curve ("curve": AP, AP50, AP75 per step, from the run's
curve.csv; tood.engine.curve) and what it was measured on: "precision", "device" (the training machines)
and "eval_device" (issue 16).

--means writes what `dvc metrics show` shows for the variant (issue 18: every key of every seed made it
322 KB in 19 lines): the means on COCO's 0-100 AP scale and the seed count, one row per variant. The full
file is a DVC plot instead (its `ap_per_seed` list: AP per seed), so DVC keeps it, the run-cache
restores it, and the metrics table stays narrow.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import RunConfig, load_run_config
from tood.engine import tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="variant name in params.yaml (or 'tood')")
    parser.add_argument("--runs", type=Path, required=True, help="the variant's run folder (train --out)")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument(
        "--means", type=Path, default=None, help="also write the means `dvc metrics show` shows"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="overrides data.root of params.yaml")
    args = parser.parse_args(argv)

    cfg = load_run_config(args.params, args.variant)
    from tood.engine.curve import CURVE_FILE, curve_columns
    from tood.engine.inference import evaluate_checkpoint
    from tood.report.complexity import (
        checkpoint_complexity,  # torch + pycocotools: after parsing (fast --help)
    )

    tracking.configure_tracking()
    complexity = checkpoint_complexity(args.runs / f"seed{cfg.seeds[0]}" / "last.pt")  # same model every seed
    per_seed = {}
    for seed in cfg.seeds:
        run_dir = args.runs / f"seed{seed}"
        metrics = evaluate_checkpoint(cfg, run_dir / "last.pt", data_root=args.data_root)
        metrics["curve"] = curve_columns(run_dir / CURVE_FILE)
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        log_to_run(cfg, seed, run_id, metrics, complexity)
        per_seed[str(seed)] = {**_clean(metrics), "mlflow_run_id": run_id}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = aggregate(cfg, per_seed) | {"complexity": complexity}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.means is not None:
        args.means.parent.mkdir(parents=True, exist_ok=True)
        args.means.write_text(json.dumps(dvc_means(result), indent=2) + "\n")
    return 0


# per-seed entries that are not one number: the budget curve (logged by training as val/<key> at its steps)
# and the hardware record (MLflow tags device / precision from training, eval_device here)
# and the run's times (logged by training at step 0)
NOT_LOGGED = ("curve", "precision", "device", "eval_device", "train_time_s", "curve_time_s")


def log_to_run(cfg: RunConfig, seed: int, run_id: str, metrics: dict, complexity: dict) -> None:
    """Add the metrics (per-class AP as per_class/<name>, ...; COCO's -1 "undefined" left out) and their
    JSON to the seed's training run. The complexity figures are tags, complexity.run.<key> and
    complexity.paper_config.<key> (issue 29): as metrics, MLflow drew twenty charts of one constant each,
    first on the run's Model metrics tab, before the loss and AP curves."""
    clean = _clean(metrics)
    numbers = {k: v for k, v in clean.items() if k not in NOT_LOGGED}  # the curve: val/* at each step
    with tracking.start_run(cfg, seed, run_id=run_id):
        tracking.log_eval_metrics(numbers)
        tracking.set_tags({"eval_device": clean["eval_device"], "complexity": complexity})
        tracking.log_dict(clean, f"metrics_seed{seed}.json")


def aggregate(cfg: RunConfig, per_seed: dict[str, dict]) -> dict:
    """Mean and sample std over the seeds that define a metric; one that no seed defines (None or NaN, e.g.
    an alignment metric without error detections) becomes null."""
    from tood.engine.evaluate import ALIGN_KEYS, COCO_KEYS

    mean, std = {}, {}
    for key in (*COCO_KEYS, *ALIGN_KEYS):
        values = [s[key] for s in per_seed.values() if s.get(key) is not None and not math.isnan(s[key])]
        mean[key] = statistics.fmean(values) if values else None
        std[key] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    ap_per_seed = [{"seed": int(k), "AP": _ap_scale("AP", s.get("AP"))} for k, s in per_seed.items()]
    return {
        "variant": cfg.variant, **mean, "std": std, "seeds": per_seed, "setting": setting(cfg),
        "ap_per_seed": ap_per_seed,  # a list, so `dvc metrics show` skips it; `dvc plots show` draws it
    }  # fmt: skip


# what `dvc metrics show` shows per variant: COCO AP (0-100, as in the paper) and Table 6's two alignment metrics
DVC_MEANS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "pcc_top50", "iou_top10")


def dvc_means(result: dict) -> dict:
    """The variant's row of `dvc metrics show`: DVC_MEANS (null where no seed defines it) and the seed count."""
    return {k: _ap_scale(k, result.get(k)) for k in DVC_MEANS} | {"seeds": len(result["seeds"])}


def _ap_scale(key: str, value: float | None) -> float | None:
    """AP keys x100 (0-100), rounded for a terminal; others rounded to 3 decimals; None, NaN and COCO's -1
    ("no object of that size", e.g. APl at 128 px) become None, which DVC shows as '-'."""
    if (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (key.startswith("AP") and value < 0)
    ):
        return None
    return round(100 * value, 2) if key.startswith("AP") else round(value, 3)


def setting(cfg: RunConfig) -> dict:
    return {
        "dataset": cfg.data.dataset, "depth": cfg.model.depth, "img_scale": list(cfg.data.img_scale),
        "epochs": cfg.train.epochs, "head": cfg.model.head, "assigner": cfg.assign.assigner,
        "anchor": cfg.model.anchor, "alpha": cfg.assign.alpha, "beta": cfg.assign.beta,
        # issue 20's switches (tables.md checks them against params.yaml like the ones above)
        "topk": cfg.assign.topk, "tap": cfg.model.tap, "cls_target": cfg.loss.cls_target,
    }  # fmt: skip


def _clean(value):
    """JSON-safe copy: NaN/inf -> None (strict JSON for DVC), nested dicts kept."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    run(main)
