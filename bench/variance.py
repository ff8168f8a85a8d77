"""How noisy is one run, and how many seeds does each main contrast need? (issue 27 item 4, from runs we have)

    .venv/bin/python -m bench.variance            # prints the tables; writes bench/variance/README.md + .png

Sources (AP on the 0-100 scale; every one a measured run of the 24-epoch default, 2,112 steps):
    grid       reports/metrics/<variant>.json: the committed 3-seed grid (bf16, 2-core AMX Xeon, 512 val images)
    trial      bench/variance/trial_5seed.json: seeds 3 and 4 of the 5-seed trial (same machine and setting;
               its reports were lost, the values are its MLflow records as bench/RESULTS.md §4 gives them)
    fp32       bench/precision/fp32/<variant>.json: two variants again in fp32 at seeds 0-2 (bench/precision)
    epyc       bench/variance/epyc_bf16/<variant>.json: the two ATSS anchor-free variants at seeds 3-7, trained
               and evaluated by the pipeline's own stage commands on a 2-core AMD EPYC (Zen 4) in bf16
               (bench/variance/epyc_bf16/README.md says how)
    calib      bench/calibration/budget.csv at 24 epochs: 2 seeds of 4 variants, another pretrained backbone and
               256 val images: shown, not pooled (a different setting's noise)

1. Seed std per variant, pooled over settings: s_p^2 = sum (n_i - 1) s_i^2 / sum (n_i - 1), each setting's own
   mean removed (precision moves the mean, bench/precision), with a chi-square 95% CI (scipy).
2. How much of it the val set's size makes. Each grid run measured the same final weights twice: on the first
   256 val images (its budget curve's last point) and on all 512 (evaluate). With a run-specific evaluation
   error of variance tau^2 / N on N images, and the 256 a subset of the 512, Var over runs of
   (AP_256 - AP_512) = tau^2/256 - tau^2/512 = tau^2/512: the evaluation noise at 512 images, measured on
   the runs themselves (the part shared by every run, the val set's own difficulty, cancels in a contrast).
   A val set of N' images leaves s^2 - tau^2/512 + tau^2/N'.
3. Pairing by seed: the same seed gives two variants the same data order; paired differences' SE against
   Welch's on the grid's seeds 0-2.
4. Seeds for each main contrast (tood.report.stats): 95% CI half-width <= 1 AP and 80% power at the paper's
   delta (alpha / 5, Holm's first step over the main family), at the pooled stds; and the half-width curve.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats as sps

from tood.report import stats
from tood.report.paper import ABLATIONS, MAIN_CONTRASTS
from tood.report.results import fmt_ci

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "variance"
MAIN_VARIANTS = (
    "parallel_atss",
    "thead_atss",
    "parallel_tal",
    "tood",
    "ab_parallel_atss",
    "ab_thead_atss",
    "ab_tood",
)


def grid_runs(metrics_dir: Path) -> dict[str, dict[str, dict]]:
    """variant -> seed -> its metrics (AP 0-100, curve)."""
    out = {}
    for v in MAIN_VARIANTS:
        m = json.loads((metrics_dir / f"{v}.json").read_text())
        out[v] = m["seeds"]
    return out


def samples(metrics_dir: Path) -> dict[str, dict[str, list[float]]]:
    """variant -> setting -> per-seed AP (0-100)."""
    out: dict[str, dict[str, list[float]]] = {v: {} for v in MAIN_VARIANTS}
    trial = json.loads((OUT / "trial_5seed.json").read_text())["AP"]
    for v, seeds in grid_runs(metrics_dir).items():
        out[v]["grid"] = [100 * r["AP"] for r in seeds.values()] + [
            float(x) for x in trial.get(v, {}).values()
        ]
    for label, folder in (("fp32", REPO / "bench" / "precision" / "fp32"), ("epyc", OUT / "epyc_bf16")):
        for path in sorted(folder.glob("*.json")):
            m = json.loads(path.read_text())
            if m["variant"] in out:
                out[m["variant"]][label] = [100 * r["AP"] for r in m["seeds"].values()]
    with open(REPO / "bench" / "calibration" / "budget.csv") as f:
        for row in csv.DictReader(f):
            if json.loads(row["cell"]).get("train.epochs") == 24 and row["variant"] in out:
                out[row["variant"]].setdefault("calib", []).append(100 * float(row["AP"]))
    return out


def _pair(key: str) -> tuple[str, str]:
    a = next(a for a in ABLATIONS if a.key == key)
    return a.baseline.variant, a.treated.variant


def pooled(groups: list[list[float]]) -> tuple[float, int]:
    """Pooled std over groups (each its own mean) and its degrees of freedom."""
    ss = sum(float(np.sum((np.array(g) - np.mean(g)) ** 2)) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(ss / df) if df else math.nan), df


def sd_ci(s: float, df: int, conf: float = 0.95) -> tuple[float, float]:
    lo, hi = sps.chi2.ppf([(1 + conf) / 2, (1 - conf) / 2], df)
    return s * math.sqrt(df / lo), s * math.sqrt(df / hi)


def eval_noise(metrics_dir: Path) -> tuple[dict[str, list[float]], float, int]:
    """Per variant the runs' AP_256 - AP_512 (same weights), and the pooled std of those differences."""
    diffs = {}
    for v, seeds in grid_runs(metrics_dir).items():
        diffs[v] = [
            100 * (r["curve"]["AP"][-1] - r["AP"])
            for r in seeds.values()
            if r["curve"]["step"][-1] and r["curve"]["num_images"][-1] == 256 and r["num_images"] == 512
        ]
    tau, df = pooled(list(diffs.values()))  # each variant its own mean: the shared image-set effect removed
    return diffs, tau, df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-dir", type=Path, default=REPO / "reports" / "metrics")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    lines = ["# Seed noise and seed plans (`python -m bench.variance`, issue 27 item 4)", ""]
    lines += [
        "Generated by bench/variance.py from the runs the repo holds; its docstring says what each part assumes.",
        "",
    ]

    data = samples(args.metrics_dir)
    diffs, tau512, tau_df = eval_noise(args.metrics_dir)
    lines += ["## 1. Seed std per variant (AP 0-100), pooled over the settings at 512 val images", ""]
    header = "| variant | grid (+trial) | fp32 | EPYC bf16 | calib (256 imgs, not pooled) | pooled std [95% CI], df "
    lines += [header + "| eval noise share |"]
    lines += ["|---|---|---|---|---|---|---|"]
    sd = {}
    for v, by in data.items():
        groups = [by[k] for k in ("grid", "fp32", "epyc") if k in by]
        s, df = pooled(groups)
        sd[v] = s
        lo, hi = sd_ci(s, df)
        cells = [
            f"{np.std(by[k], ddof=1):.2f} (n {len(by[k])})" if k in by and len(by[k]) > 1 else "—"
            for k in ("grid", "fp32", "epyc", "calib")
        ]
        share = min(1.0, tau512**2 / s**2)
        lines.append(f"| `{v}` | {' | '.join(cells)} | {s:.2f} [{lo:.2f}, {hi:.2f}], {df} | {share:.0%} |")
    lines += [
        "",
        (
            f"Evaluation noise at 512 images (pooled std of AP_256 − AP_512 over {tau_df + len(diffs)} grid "
            f"runs, {tau_df} df): **τ/√512 = {tau512:.2f} AP**. A 2,048-image val set would leave "
            f"{tau512 / 2:.2f} of it; the seed std left per variant:"
        ),
        "",
        "| variant | pooled std at 512 | at 2,048 val images (projected) |",
        "|---|---|---|",
    ]
    for v, s in sd.items():
        s2048 = math.sqrt(max(s**2 - tau512**2 * 0.75, 0.0))
        lines.append(f"| `{v}` | {s:.2f} | {s2048:.2f} |")

    replicas = [k for k in MAIN_CONTRASTS if all("epyc" in data[v] for v in _pair(k))]
    if replicas:
        lines += ["", "### The same contrasts on other seeds and another CPU (EPYC bf16, seeds 3-7)", ""]
        header = "| contrast | grid (Xeon, seeds 0-2) Δ [95% CI] | EPYC Δ [95% CI], p (one test, no family) |"
        lines += [header + " means grid → EPYC |", "|---|---|---|---|"]
        for key in replicas:
            base, treated = _pair(key)
            g = stats.welch(data[base]["grid"][:3], data[treated]["grid"][:3])
            e = stats.welch(data[base]["epyc"], data[treated]["epyc"])
            means = "; ".join(
                f"`{v}` {np.mean(data[v]['grid'][:3]):.1f} → {np.mean(data[v]['epyc']):.1f}"
                for v in (base, treated)
            )
            ci_g, ci_e = fmt_ci("AP", g.delta, g.ci95), fmt_ci("AP", e.delta, e.ci95)
            lines.append(f"| {key} | {ci_g} | {ci_e}, p {stats.fmt_p(e.p)} | {means} |")
    lines += [
        "",
        "## 2. Pairing by seed (grid seeds 0-2)",
        "",
        "| contrast | Welch SE | paired SE | r across seeds |",
        "|---|---|---|---|",
    ]
    grid = {v: [100 * r["AP"] for r in seeds.values()] for v, seeds in grid_runs(args.metrics_dir).items()}
    main_abl = {a.key: a for a in ABLATIONS if a.key in MAIN_CONTRASTS}
    for key in MAIN_CONTRASTS:
        a = main_abl[key]
        x, y = np.array(grid[a.baseline.variant]), np.array(grid[a.treated.variant])
        welch = stats.welch(x, y).se
        paired = float(np.std(y - x, ddof=1) / math.sqrt(len(x)))
        r = float(np.corrcoef(x, y)[0, 1])
        lines.append(f"| {a.name} | {welch:.2f} | {paired:.2f} | {r:+.2f} |")

    lines += ["", "## 3. Seeds a side per main contrast, at the pooled stds", ""]
    lines += [
        "| contrast | paper Δ | stds (base, treated) | 95% CI half-width at 3 | seeds for ±1.0 AP | at 2,048 val images | 80% power at paper Δ (α/5) |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    ns = np.arange(2, 16)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key in MAIN_CONTRASTS:
        a = main_abl[key]
        sa, sb = sd[a.baseline.variant], sd[a.treated.variant]
        sa2, sb2 = (math.sqrt(max(s**2 - tau512**2 * 0.75, 0.0)) for s in (sa, sb))
        need = stats.fmt_seeds_needed(stats.seeds_for_halfwidth(sa, sb, 1.0))
        need2048 = stats.fmt_seeds_needed(stats.seeds_for_halfwidth(sa2, sb2, 1.0))
        power = stats.fmt_seeds_needed(
            stats.seeds_for_power(a.paper_delta("AP"), math.sqrt((sa**2 + sb**2) / 2), 0.01, 0.8)
        )
        h3 = stats.ci_halfwidth(sa, sb, 3)
        lines.append(
            f"| {a.name} | {a.paper_delta('AP'):+.1f} | {sa:.2f}, {sb:.2f} | {h3:.2f} | {need} | {need2048} | {power} |"
        )
        ax.plot(ns, [stats.ci_halfwidth(sa, sb, int(n)) for n in ns], marker="o", ms=3, label=a.name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("seeds a side")
    ax.set_ylabel("95% CI half-width of Δ AP (Welch t)")
    ax.set_title("Seed plan at the pooled stds", fontsize=10)
    ax.legend(fontsize=7)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "halfwidth.png", dpi=110, bbox_inches="tight")
    lines += ["", "![half-width vs seeds](halfwidth.png)", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "README.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
