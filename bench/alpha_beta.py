"""Table 4 at three seeds a cell: the `stats.replications` folder bench/alpha_beta/<setting>/, read as tables.md
reads it, with what pairing by seed would add (information only).

    .venv/bin/python -m bench.alpha_beta [--folder bench/alpha_beta/epyc_bf16]

The folder is made by `bash bench/alpha_beta/run.sh <folder>` in a fresh clone (its README says where and how)
and listed under `stats.replications` in params.yaml. Printed:
  * each cell's AP (mean ± std, per seed) beside the headline (alpha=1, beta=6) of the same folder;
  * the verdict tables.md gives (Welch's t, Holm over the five cells, TOST within stats.margin_ap):
    tood.report.results.replicate, the same call as the report;
  * the same five contrasts paired by seed (scipy `ttest_rel`, Holm over the five): the cells differ only in
    alpha and beta, which act from the end of the ATSS warm-up (`assign.warmup_epochs`) on, so the same seed
    trains every cell identically up to there; the script checks that on the budget curve's first point
    (AP after epoch 4, equal across cells per seed) and prints the largest difference. Pairing is not the
    declared rule (params.yaml `stats`, issue 27): the paired figures are for planning the next run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from scipy import stats as sps

from tood.config import load_params
from tood.report import stats
from tood.report.paper import ABLATIONS
from tood.report.results import fmt_ci, load_runs, replicated, stat

REPO = Path(__file__).resolve().parents[1]


def paired(base: list[float], treated: list[float]) -> tuple[float, tuple[float, float], float, int]:
    """Mean of the per-seed differences treated - base, its 95% CI, two-sided p and df (scipy ttest_rel)."""
    res = sps.ttest_rel(treated, base)
    ci = res.confidence_interval(0.95)
    return (
        float(np.mean(np.subtract(treated, base))),
        (float(ci.low), float(ci.high)),
        float(res.pvalue),
        int(res.df),
    )


def warmup_gap(metrics: dict[str, dict]) -> float:
    """Largest AP difference (0-100) between any two variants' first budget-curve point at the same seed."""
    gaps = []
    seeds = set.intersection(*(set(m["seeds"]) for m in metrics.values()))
    for s in sorted(seeds):
        first = [m["seeds"][s]["curve"]["AP"][0] * 100 for m in metrics.values()]
        gaps.append(max(first) - min(first))
    return max(gaps)


def report(folder: str) -> str:
    runs = load_runs(load_params(REPO / "params.yaml"), REPO / "reports" / "metrics")
    cells = [a for a in ABLATIONS if a.key.startswith("t4_")]
    rep, rows = next(((r, cs) for r, cs in replicated(cells, runs) if r.folder == folder), (None, []))
    if rep is None:
        raise SystemExit(
            f"bench.alpha_beta: {folder!r} is not listed under stats.replications in params.yaml or holds no Table 4 cell"
        )
    head = stat(rep.metrics["tood"], "AP")
    lines = [
        f"Setting: {rep.label}. Headline (alpha=1, beta=6): AP {head.fmt()} (per seed {head.fmt_seeds()})."
    ]
    header = "| cell | AP | per seed | Δ vs (1, 6) [95% CI], Welch | Holm p | verdict (tables.md) | paired Δ [95% CI] "
    lines += ["", header + "| paired p / Holm p |", "|---|---:|---|---:|---:|---|---:|---:|"]
    paired_p = [paired(list(c.base.values), list(c.treated.values)) for c in rows]
    holm = stats.holm([p for _, _, p, _ in paired_p])
    for c, (d, ci, p, df), ph in zip(rows, paired_p, holm):
        lines.append(
            f"| {c.ablation.treated.variant} | {c.treated.fmt()} | {c.treated.fmt_seeds()} | {fmt_ci('AP', c.delta, c.test.ci95)} | "
            f"{stats.fmt_p(c.judgement.p_holm)} | {c.verdict} | {fmt_ci('AP', d, ci)} ({df} df) | "
            f"{stats.fmt_p(p)} / {stats.fmt_p(ph)} |"
        )
    gap = warmup_gap({v: rep.metrics[v] for v in ("tood", *(a.treated.variant for a in cells))})
    lines += [
        "",
        f"Budget curve's first point (end of the ATSS warm-up), largest AP gap between cells at one seed: {gap:.3g}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alpha_beta", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folder", default="bench/alpha_beta/epyc_bf16", help="as listed in stats.replications"
    )
    args = parser.parse_args(argv)
    os.chdir(REPO)  # stats.replications paths are relative to the repo root
    print(report(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
