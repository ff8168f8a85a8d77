"""The meaningful-default targets, read from what the last `dvc repro` wrote: headline AP and SE(Δ) per contrast.

    .venv/bin/python -m bench.targets [--summary reports/summary.json] [--grid-time bench/grid_time.json]

Targets (issue 10): the headline `tood` reaches a mean AP of at least 30 (goal; 15 at the least) over at least
3 seeds, and each main contrast has SE(Δ) = sqrt(sa²/na + sb²/nb) of at most 0.5 AP with at least 3 seeds a
side. Every figure comes from reports/summary.json (tood.report.tables.build_summary), which the `tabulate` stage
writes from the metrics files of the runs it just tabulated; nothing is recomputed or typed in here.
--grid-time adds the wall time and compute share that bench.grid_time measured for that repro.

Each contrast also prints the paired-by-seed SE, sd(a_k - b_k)/sqrt(n) over the seeds both sides ran, for
information only: the verdicts in tables.md use the unpaired (Welch) SE above. Seed k gives both variants the
same data order and the same pretrained backbone, so pairing can remove noise they share; with 3 pairs its
own uncertainty is large (2 degrees of freedom), which is why it is not the verdict's basis.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tood.report.paper import ABLATIONS

HEADLINE_GOAL, HEADLINE_FLOOR, SE_TARGET, MIN_SEEDS = 30.0, 15.0, 0.5, 3
CURVE_COST_TARGET = 0.10  # issue 16: budget curves at most 10% of the training time
MAIN_CONTRASTS = ("t1_af_thead", "t1_ab_thead", "t2_tal", "t3_af_tood", "t3_ab_tood")


def headline_line(variant: dict) -> tuple[str, bool]:
    mean, std, n = variant["AP"], variant["AP_std"], variant["n_seeds"]
    per_seed = ", ".join(f"{ap:.1f}" for ap in variant["AP_per_seed"].values())
    met = mean is not None and mean >= HEADLINE_FLOOR and n >= MIN_SEEDS
    level = "goal met" if met and mean >= HEADLINE_GOAL else ("floor met" if met else "NOT met")
    std_text = "-" if std is None else f"{std:.2f}"
    return f"headline tood: AP {mean:.2f} ± {std_text} (std, n={n}; per seed {per_seed}): {level}", met


def contrast_line(key: str, ablation: dict) -> tuple[str, bool]:
    ap = ablation["AP"]
    delta, se, n_a, n_b = ap["delta"], ap["se"], ap["n_a"], ap["n_b"]
    met = se is not None and se <= SE_TARGET and min(n_a, n_b) >= MIN_SEEDS
    delta_text = "-" if delta is None else f"{delta:+.2f}"
    se_text = "-" if se is None else f"{se:.2f}"
    line = (
        f"{key:12s} Δ {delta_text} ± {se_text} (SE, n {n_a}/{n_b}; paper {ap['paper_delta']:+.1f}) "
        f"verdict {ap['verdict']}: SE ≤ {SE_TARGET} {'met' if met else 'NOT met'}"
    )
    return line, met


def paired_line(key: str, summary: dict) -> str:
    ablation = next(a for a in ABLATIONS if a.key == key)
    a = summary["variants"][ablation.treated.variant]["AP_per_seed"]
    b = summary["variants"][ablation.baseline.variant]["AP_per_seed"]
    diffs = [a[k] - b[k] for k in a if k in b and a[k] is not None and b[k] is not None]
    if len(diffs) < 2:
        return f"{'':12s} paired by seed: fewer than 2 common seeds"
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{'':12s} paired by seed (information only): Δ {statistics.fmean(diffs):+.2f} ± {se:.2f}, n {len(diffs)}"


def curve_cost_line(cost: dict | None) -> str:
    """Issue 16: the budget curves' seconds against the epochs' over the grid's runs, at most 10%."""
    if not cost or cost["share"] is None:
        return "budget curves: no run records their cost (metrics from before issue 16)"
    met = "met" if cost["share"] <= CURVE_COST_TARGET else "NOT met"
    return (
        f"budget curves: {cost['curve_s']:.0f} s of {cost['curve_s'] + cost['train_s']:.0f} s training "
        f"({100 * cost['share']:.1f}%, {cost['runs']} runs): ≤ {100 * CURVE_COST_TARGET:.0f}% {met}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, default=Path("reports/summary.json"), help="tabulate's JSON")
    parser.add_argument("--grid-time", type=Path, help="bench.grid_time --json output of the same repro")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    if summary.get("trial"):
        print("note: this summary comes from a trial profile (trial: true); it supports no conclusions")
    line, _ = headline_line(summary["variants"]["tood"])
    print(line)
    needed = []
    for key in MAIN_CONTRASTS:
        line, met = contrast_line(key, summary["ablations"][key])
        print(line)
        print(paired_line(key, summary))
        ap = summary["ablations"][key]["AP"]
        if not met and ap["se"]:  # seeds a side for SE_TARGET at this noise, if both sides had n seeds
            needed.append(ap["se"] ** 2 * min(ap["n_a"], ap["n_b"]) / SE_TARGET**2)
    if needed:
        print(
            f"seeds a side for SE ≤ {SE_TARGET} at the measured noise: about {max(needed):.0f} (worst contrast)"
        )
    print(curve_cost_line(summary.get("curve_cost")))
    if args.grid_time:
        grid = json.loads(args.grid_time.read_text())
        print(
            f"grid wall time {grid['total_s'] / 60:.1f} min; training + inference compute "
            f"{100 * grid['compute_share']:.1f}% of it"
        )


if __name__ == "__main__":
    main()
