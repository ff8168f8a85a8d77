"""Precision is part of the result (issue 16): a contrast trained again at another `train.amp`, beside the grid.

Each variant given is trained and evaluated by the pipeline's own stage commands (pipeline.train_variant,
pipeline.evaluate_variant), with params.yaml as it is except `train.amp`: the same data, `pretrain` backbone,
seeds and executor as the committed grid, so the only change is the precision the detector trains in (the
backbone keeps the precision it was pretrained in). Then the comparison is printed beside the grid's own
metrics (reports/metrics/<variant>.json): AP per variant and precision, the contrast's Δ ± SE and verdict
in each precision (tood.report.results, as tables.md), and what the precision moved.

    # after `dvc repro` (needs data/ and runs/pretrain/); ~35 min on 2 cores for two 3-seed variants in fp32
    .venv/bin/python -m bench.precision --amp fp32 --out bench/precision/fp32 ab_parallel_atss ab_thead_atss
    # only the comparison, from metrics already there
    .venv/bin/python -m bench.precision --compare-only --out bench/precision/fp32 ab_parallel_atss ab_thead_atss

Run from the repo root. Runs and their MLflow store go to --work (default /tmp/tood-precision), out of the pipeline's runs/ and
mlflow.db; --out keeps the params file used and each variant's metrics JSON. The first variant is the
contrast's baseline, the second the treated one; --paper-delta gives the paper's Δ for the verdict (default:
Table 1's anchor-based +1.8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tood.report import stats
from tood.report.results import Stat, fmt_ci, stat


def comparison_rows(base: dict[str, dict], treated: dict[str, dict], paper_delta: float) -> list[dict]:
    """One row per precision: the contrast treated - base in AP (0-100), Welch's test and verdict.

    base / treated: {precision label: metrics dict as evaluate_variant writes it}. Each row is one contrast
    on its own (no family correction, alpha 0.05, tood.report.stats); tables.md judges it within its family
    through `stats.replications`.
    """
    rows = []
    for label, base_metrics in base.items():
        a, b = stat(base_metrics, "AP"), stat(treated[label], "AP")
        t = stats.welch(a.values, b.values, margin=0.5)
        v = stats.verdict(paper_delta, t, t.p, t.p_tost, alpha=0.05)
        rows.append(
            {
                "precision": label,
                "base": a,
                "treated": b,
                "delta": t.delta,
                "se": t.se,
                "test": t,
                "verdict": v,
            }
        )
    return rows


def shift(first: Stat, second: Stat) -> tuple[float, float]:
    """What changing precision moved: mean(second) - mean(first) and its Welch SE."""
    t = stats.welch(first.values, second.values)
    return t.delta, t.se


def precisions(metrics: dict) -> str:
    """The resolved precision(s) and device(s) the seeds of one metrics file record."""
    seen = sorted({(s.get("precision", "?"), s.get("device", "?")) for s in metrics["seeds"].values()})
    return "; ".join(f"{p} on {d}" for p, d in seen)


def train_and_evaluate(variants: list[str], amp: str, out: Path, work: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["train"]["amp"] = amp
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    params_path = out / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{work.resolve() / 'mlflow.db'}"}
    py = [sys.executable, "-m"]
    for v in variants:
        subprocess.run(
            [
                *py,
                "pipeline.train_variant",
                "--params",
                str(params_path),
                "--variant",
                v,
                "--out",
                str(work / v),
                "--work-dir",
                str(work / ".work"),
            ],
            env=env,
            check=True,
        )
        subprocess.run(
            [
                *py,
                "pipeline.evaluate_variant",
                "--params",
                str(params_path),
                "--variant",
                v,
                "--runs",
                str(work / v),
                "--out",
                str(out / f"{v}.json"),
            ],
            env=env,
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs=2, help="baseline and treated variant of params.yaml")
    parser.add_argument("--amp", default="fp32", help="train.amp of the new runs (default fp32)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the params used and the metrics")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tood-precision"), help="runs + MLflow store")
    parser.add_argument("--grid", type=Path, default=Path("reports/metrics"), help="the grid's metrics")
    parser.add_argument("--paper-delta", type=float, default=1.8, help="the paper's Δ AP of the contrast")
    parser.add_argument("--compare-only", action="store_true", help="do not train; read --out's metrics")
    args = parser.parse_args(argv)

    if not args.compare_only:
        train_and_evaluate(args.variants, args.amp, args.out, args.work)
    read = {
        v: {
            "grid": json.loads((args.grid / f"{v}.json").read_text()),
            "new": json.loads((args.out / f"{v}.json").read_text()),
        }
        for v in args.variants
    }
    base, treated = (read[v] for v in args.variants)
    for v in args.variants:
        for side in ("grid", "new"):
            s = stat(read[v][side], "AP")
            print(f"{v:<20} {side:<4} AP {s.fmt()} (n {s.n}; {s.fmt_seeds()}) [{precisions(read[v][side])}]")
    for v in args.variants:
        d, se = shift(stat(read[v]["grid"], "AP"), stat(read[v]["new"], "AP"))
        print(f"{v:<20} new - grid: {d:+.2f} ± {se:.2f}")
    rows = comparison_rows(base, treated, args.paper_delta)
    for r in rows:
        print(
            f"{args.variants[1]} - {args.variants[0]} ({r['precision']}): "
            f"{r['delta']:+.2f} ± {r['se']:.2f}, 95% CI {fmt_ci('AP', r['delta'], r['test'].ci95)}, "
            f"p {stats.fmt_p(r['test'].p)} (paper {args.paper_delta:+.1f}): {r['verdict']}"
        )
    moved = rows[1]["delta"] - rows[0]["delta"]
    print(f"the contrast moved by {moved:+.2f} ± {(rows[0]['se'] ** 2 + rows[1]['se'] ** 2) ** 0.5:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
