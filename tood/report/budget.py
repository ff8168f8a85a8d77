"""Verdicts over the budget (issue 16): the runs' budget curves -> Δ [95% CI] per step, stability, two figures,
and the one-line-per-claim summary that opens tables.md.

Input: each seed's "curve" in reports/metrics/<variant>.json (tood.engine.curve: AP of the run's weights
after every `eval.curve_every_epochs`-th epoch and the last, with its step). A variant's curve is taken on
the steps every one of its seeds measured; a contrast's on the steps both sides measured.

At each step, Δ, its 95% CI and the verdict follow tood.report.stats exactly (Welch's t over seeds, Holm within
the contrast's family at that step, TOST), so the last point on the evaluate stage's images is the tables' verdict.
A verdict *holds over the last part of training* ("stable") when it is the same at the last BUDGET_POINTS
points of the curve; otherwise it is "budget-dependent": the run's own schedule changes the answer late, so
the verdict describes this budget rather than the design (issue 16: T-Head + ATSS at 1,056 steps).
These are points of one schedule (its lr drops included), not the ends of shorter runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tood.report import stats
from tood.report.figures import _save, loss_groups, variant_colours
from tood.report.paper import ABLATIONS, MAIN_CONTRASTS, TABLE4_CHOSEN, Ablation
from tood.report.results import (
    DASH,
    UNRECORDED,
    Comparison,
    Runs,
    Stat,
    compare,
    family_of,
    fmt_ci,
    fmt_value,
    hardware_text,
    json_num,
    margin_for,
    md_table,
    replicate,
    replicated,
    same_test,
)

BUDGET_POINTS = 3  # the "last part of training": the last 3 curve points (epochs 6, 9, 12 by default)
MAIN_ABLATIONS = MAIN_CONTRASTS  # issue 10's five
FIGURES = ("budget_curves.png", "budget_deltas.png")
RISING_AP = 1.0  # a side still gaining this much AP over the curve's last interval is not at its plateau
STABLE, DEPENDENT = "stable", "budget-dependent"


# ---------------------------------------------------------------------------------------------------
# curves and Δ per step


@dataclass(frozen=True)
class VariantCurve:
    """AP (0-100) of one variant's seeds on the steps all of them measured."""

    steps: tuple[int, ...]
    per_seed: dict[str, tuple[float, ...]]  # seed -> AP at each step (NaN: undefined)

    def stat(self, i: int) -> Stat:
        """The seeds' AP at step index i, as tood.report.results computes everything else."""
        return Stat("AP", tuple(v[i] for v in self.per_seed.values() if math.isfinite(v[i])))


def variant_curve(metrics: dict[str, Any]) -> VariantCurve | None:
    """The variant's curve, or None when a seed has none (metrics from before issue 16, curves off)."""
    curves = [r.get("curve") or {} for r in metrics["seeds"].values()]
    if not curves or not all(c.get("step") for c in curves):
        return None
    steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
    per_seed = {}
    for seed, c in zip(metrics["seeds"], curves):
        ap = dict(zip(c["step"], c["AP"]))
        per_seed[seed] = tuple(100.0 * ap[t] if ap[t] is not None and ap[t] >= 0 else math.nan for t in steps)
    return VariantCurve(tuple(steps), per_seed)


@dataclass(frozen=True)
class BudgetPoint:
    step: int
    delta: float  # mean(treated) - mean(baseline), AP 0-100
    se: float  # Welch SE (NaN below 2 seeds a side)
    verdict: str  # the family's verdict at this step (tood.report.stats, as the tables')
    base_ap: float = math.nan  # mean AP of each side at this step
    treated_ap: float = math.nan
    ci95: tuple[float, float] = (math.nan, math.nan)
    p_holm: float = math.nan


def _curves(ablation: Ablation, runs: Runs) -> tuple[VariantCurve, VariantCurve] | None:
    (base, _), (treated, _) = runs.ours(ablation.baseline), runs.ours(ablation.treated)
    if base is None or treated is None:
        return None
    ca, cb = variant_curve(base), variant_curve(treated)
    return None if ca is None or cb is None else (ca, cb)


def budget_points(ablation: Ablation, runs: Runs) -> list[BudgetPoint] | None:
    """Δ, its CI and verdict of an ablation's AP at every step both sides measured; None without curves.

    At each step the ablation is judged in its family (tood.report.results.family_of) on that step's values,
    with Holm over the members measured at that step, so the last point on the evaluate stage's images is
    the tables' verdict."""
    own = _curves(ablation, runs)
    if own is None:
        return None
    family, members = family_of(ablation, "AP")
    curves = {a.key: (a, c) for a, m in members if m == "AP" and (c := _curves(a, runs)) is not None}
    own_key = next(k for k, (a, _) in curves.items() if same_test(a, ablation))
    cfg = runs.stats
    points = []
    for step in sorted(set(own[0].steps) & set(own[1].steps)):
        tests, deltas = {}, {}
        for key, (a, (ca, cb)) in curves.items():
            if step in ca.steps and step in cb.steps:
                sa, sb = ca.stat(ca.steps.index(step)), cb.stat(cb.steps.index(step))
                tests[key] = stats.welch(sa.values, sb.values, margin_for("AP", cfg))
                deltas[key] = a.paper_delta("AP")
        j = stats.judge_family(tests, deltas, family, cfg.alpha, cfg.power)[own_key]
        ca, cb = own
        a, b = ca.stat(ca.steps.index(step)), cb.stat(cb.steps.index(step))
        points.append(
            BudgetPoint(step, b.mean - a.mean, j.test.se, j.verdict, a.mean, b.mean, j.test.ci95, j.p_holm)
        )
    return points or None


def rising(points: list[BudgetPoint]) -> list[tuple[str, float]]:
    """The sides whose mean AP still rose by RISING_AP or more over the curve's last interval:
    [("baseline" | "treated", gain)]. Such a side has not reached its plateau, so a verdict that looks
    steady over the last points can still change with a longer budget."""
    if len(points) < 2:
        return []
    gains = {
        "baseline": points[-1].base_ap - points[-2].base_ap,
        "treated": points[-1].treated_ap - points[-2].treated_ap,
    }
    return [(side, g) for side, g in gains.items() if g >= RISING_AP]


def stability(points: list[BudgetPoint] | None, k: int = BUDGET_POINTS) -> str:
    """STABLE (one verdict at the last k points and neither side still rising), DEPENDENT (more than one
    verdict, or a side still rising: see `rising`), or why it is not known."""
    if points is None:
        return "no curve"
    if len(points) < k:
        return f"{len(points)} curve point(s), {k} needed"
    if any(p.verdict == "not measured" for p in points[-k:]):  # no SE (n < 2 a side): nothing can be stable
        return "not measured (fewer than 2 seeds a side)"
    steady = len({p.verdict for p in points[-k:]}) == 1 and not rising(points)
    return STABLE if steady else DEPENDENT


def stability_text(points: list[BudgetPoint] | None, k: int = BUDGET_POINTS) -> str:
    """e.g. "stable: contradicts at steps 704, 880, 1,056" or "budget-dependent: inconclusive → contradicts → ..."."""
    word = stability(points, k)
    if word not in (STABLE, DEPENDENT):
        return word
    last = points[-k:]
    steps = ", ".join(f"{p.step:,}" for p in last)
    verdicts = last[0].verdict if len({p.verdict for p in last}) == 1 else " → ".join(p.verdict for p in last)
    text = f"{word}: {verdicts} at steps {steps}"
    for side, gain in rising(points):
        text += f"; the {side} still gains {gain:+.1f} AP over the last {points[-1].step - points[-2].step:,} steps"
    return text


# ---------------------------------------------------------------------------------------------------
# tables.md: the section over the budget


def render_budget(runs: Runs) -> str:
    """One row per main contrast: Δ [95% CI] and verdict at each of the last BUDGET_POINTS points."""
    body = []
    for key in MAIN_ABLATIONS:
        ablation = _ablation(key)
        points = budget_points(ablation, runs)
        last = (points or [])[-BUDGET_POINTS:]
        cells = [f"{p.step:,}: {fmt_ci('AP', p.delta, p.ci95)} ({p.verdict})" for p in last]
        body.append([ablation.name, "<br>".join(cells) or DASH, stability_text(points)])
    header = [
        "Contrast (AP)",
        f"Δ [95% CI] at the last {BUDGET_POINTS} curve points (step: Δ, verdict)",
        "Verdict",
    ]
    note = (
        "Each training run measures AP after every `eval.curve_every_epochs`-th epoch and after the last, "
        "on the first `eval.curve_max_images` val images (0: all; tood/engine/curve.py). A verdict is "
        f"*stable* when it is the same at the last {BUDGET_POINTS} points and neither side still gains "
        f"{RISING_AP:g} AP or more over the last interval, *budget-dependent* otherwise: it then describes "
        "this budget, not the design. The points belong to one schedule (lr drops included), not to shorter "
        "runs, and a curve cannot show a take-off that only a longer budget would bring (issue 16: T-Head + "
        "ATSS at twice the steps); longer runs are bench/calibration's. Figures: budget_curves.png, "
        "budget_deltas.png. " + curve_images_text(runs)
    )
    return md_table(header, body) + "\n\n" + note


def curve_images_text(runs: Runs) -> str:
    """How many val images the grid's curve points used, against the evaluate stage's count."""
    counts = {
        n
        for m in runs.metrics.values()
        for r in m["seeds"].values()
        for n in (r.get("curve") or {}).get("num_images", [])
    }
    evaluated = {r.get("num_images") for m in runs.metrics.values() for r in m["seeds"].values()} - {None}
    if not counts:
        return ""  # no curves (or none saying how many images): the table says "no curve"
    text = f"Curve points: {', '.join(map(str, sorted(counts)))} val images"
    if counts == evaluated:
        return text + ", the evaluate stage's: the last point's Δ is the Verdict column's."
    return (
        text + f" (the evaluate stage: {', '.join(map(str, sorted(evaluated))) or '?'}): the last point's Δ "
        "can differ a little from the tables' and so, near the threshold, its verdict."
    )


def _ablation(key: str) -> Ablation:
    (ablation,) = [a for a in ABLATIONS if a.key == key]
    return ablation


# ---------------------------------------------------------------------------------------------------
# tables.md: the summary, one line per paper claim


@dataclass(frozen=True)
class Claim:
    label: str  # e.g. "Table 1: T-Head > parallel head (ATSS, anchor-free)"
    comparison: Comparison | None  # the Δ shown (None: no ablation of that claim ran)
    verdict: str
    budget: str  # stability_text, or why not
    setting: str


def claims(runs: Runs) -> list[Claim]:
    """Tables 1, 2, 3 (one line per contrast), Table 6 (PCC of T-Head + TAL vs neither), the α/β choice."""
    out = []
    titles = {
        "t1_af_thead": "Table 1: T-Head beats the parallel head (ATSS, anchor-free)",
        "t1_ab_thead": "Table 1: T-Head beats the parallel head (ATSS, anchor-based)",
        "t2_tal": "Table 2: TAL beats ATSS (parallel head)",
        "t3_af_tood": "Table 3: TOOD beats ATSS (anchor-free)",
        "t3_ab_tood": "Table 3: TOOD beats ATSS (anchor-based)",
    }
    for key, label in titles.items():
        ablation = _ablation(key)
        c = compare(ablation, runs)[0]
        points = budget_points(ablation, runs)
        out.append(Claim(label, c, c.verdict, stability_text(points), _setting(runs, ablation, points)))
    t6 = next(c for c in compare(_ablation("t6_both"), runs) if c.metric == "pcc_top50")
    t6_budget = "end of training only (alignment is not on the curve)"
    label6 = "Table 6: T-Head + TAL aligns the two tasks better (PCC top-50, vs parallel + ATSS)"
    out.append(Claim(label6, t6, t6.verdict, t6_budget, _setting(runs, t6.ablation, None)))
    out.append(_alpha_beta_claim(runs))
    return out


def _alpha_beta_claim(runs: Runs) -> Claim:
    """Table 4: α=1, β=6 beats every other cell. Shown: the strongest other cell, (cell) − (1, 6)."""
    label = (
        f"Table 4: α={TABLE4_CHOSEN.config['alpha']:g}, β={TABLE4_CHOSEN.config['beta']:g} is the best cell"
    )
    comps = [compare(a, runs)[0] for a in ABLATIONS if a.key.startswith("t4_")]
    measured = [c for c in comps if not math.isnan(c.delta)]
    if not measured:
        return Claim(label, None, "not run", DASH, DASH)
    strongest = max(measured, key=lambda c: c.delta)
    overall = _alpha_beta_overall(comps)
    points = budget_points(strongest.ablation, runs)
    return Claim(
        label, strongest, overall, stability_text(points), _setting(runs, strongest.ablation, points)
    )


def _alpha_beta_overall(comps: list[Comparison]) -> str:
    """Table 4's claim from its five cells' verdicts: every cell below (1, 6) reproduces it, every cell within
    the margin makes the choice not matter here (equivalent), any cell above it contradicts it."""
    verdicts = {c.verdict for c in comps}
    if verdicts == {"reproduces"}:
        return "reproduces"
    if verdicts == {"equivalent"}:
        return "equivalent"
    if "contradicts" in verdicts:
        return "contradicts"
    if verdicts & {"not measured", "not run"}:
        return "not measured"
    return "inconclusive"


def _setting(runs: Runs, ablation: Ablation, points: list[BudgetPoint] | None) -> str:
    """What the line holds for: data, backbone, scale, budget, seeds a side, precision and device."""
    (base, _), (treated, _) = runs.ours(ablation.baseline), runs.ours(ablation.treated)
    if base is None or treated is None:
        return DASH
    s = base["setting"]
    scale = "x".join(map(str, s["img_scale"])) if isinstance(s["img_scale"], list) else s["img_scale"]
    budget = f"{s['epochs']} epochs" + (f" = {points[-1].step:,} steps" if points else "")
    n = f"n {len(base['seeds'])}/{len(treated['seeds'])}"
    return f"`{s['dataset']}`, R-{s['depth']}, {scale}, {budget}, {n}; {hardware_text(base, treated)}"


def replication_text(comp: Comparison, runs: Runs) -> str:
    """Whether a contrast's verdict holds in each `stats.replications` folder holding both its sides."""
    parts = []
    for rep, comps in replicate(comp.ablation, runs):
        j = next((c.judgement for c in comps if c.metric == comp.metric), None)
        if j is None:
            continue
        word = "holds" if j.verdict == comp.verdict else "changes"
        n = f"n {j.test.n_a}/{j.test.n_b}"
        parts.append(
            f"{word} in {rep.label}, {n}: {fmt_ci(comp.metric, j.test.delta, j.test.ci95)}, {j.verdict}"
        )
    return "; ".join(parts) or "not measured in another setting"


def _alpha_beta_replications(runs: Runs) -> str:
    """Table 4's claim in each replication holding every cell and the headline: its overall verdict."""
    cells = [a for a in ABLATIONS if a.key.startswith("t4_")]
    parts = []
    for rep, comps in replicated(cells, runs):
        comps = [c for c in comps if c.metric == "AP"]
        if len(comps) != len(cells):
            continue
        strongest = max(comps, key=lambda c: c.delta)
        ci = fmt_ci("AP", strongest.delta, strongest.test.ci95)
        parts.append(
            f"in {rep.label}, n {strongest.n_a}/{strongest.n_b}: {_alpha_beta_overall(comps)}; strongest "
            f"other cell {strongest.ablation.name}: {ci}, {strongest.verdict}"
        )
    return "; ".join(parts) or "not measured in another setting"


def seeds_text(comp: Comparison, runs: Runs) -> str:
    """Seeds a side now, for 80% power at the paper's Δ, and for a 95% CI half-width <= stats.ci_halfwidth_ap."""
    t, j = comp.test, comp.judgement
    if t is None or not t.measured:
        return DASH
    power = stats.fmt_seeds_needed(j.seeds_power)
    text = f"{t.n_a}/{t.n_b}; power: {power}"
    if comp.metric == "AP":
        h = runs.stats.ci_halfwidth_ap
        text += f"; CI ±{h:g}: {stats.fmt_seeds_needed(stats.seeds_for_halfwidth(t.sd_a, t.sd_b, h))}"
    return text


def render_summary(runs: Runs) -> str:
    body = []
    for c in claims(runs):
        comp = c.comparison
        if comp is None or math.isnan(comp.delta):
            paper_d = DASH if comp is None else fmt_value(comp.metric, comp.paper_delta, signed=True)
            body.append([c.label, paper_d, DASH, DASH, f"**{c.verdict}**", DASH, c.budget, DASH, c.setting])
            continue
        t4 = comp.ablation.key.startswith("t4_")
        shown = f"; strongest other cell: {comp.ablation.name}" if t4 else ""
        t = comp.test
        p = f"{stats.fmt_p(t.p)} / {stats.fmt_p(comp.judgement.p_holm)} ({comp.judgement.family})"
        body.append(
            [
                c.label + shown,
                fmt_value(comp.metric, comp.paper_delta, signed=True),
                fmt_ci(comp.metric, comp.delta, t.ci95),
                p,
                f"**{c.verdict}**",
                seeds_text(comp, runs),
                c.budget,
                _alpha_beta_replications(runs) if t4 else replication_text(comp, runs),
                c.setting,
            ]
        )
    header = ["Paper claim", "Paper Δ", "Ours Δ [95% CI]", "p / Holm p (family)", "Verdict"]
    header += [
        "Seeds a side: now; 80% power; CI half-width",
        "Over the budget",
        "Other setting",
        "Holds for",
    ]
    cfg = runs.stats
    note = (
        f"Verdicts as below (α = {cfg.alpha:g} after Holm within each family; *equivalent*: TOST at ±"
        f"{cfg.margin_ap:g} AP). *Seeds*: seeds a side now, then what {cfg.power:.0%} power at the paper's Δ "
        f"would need (pooled std, α/k) and what a 95% CI half-width ≤ {cfg.ci_halfwidth_ap:g} AP would "
        f"need. *Over the budget*: the same verdict at the last {BUDGET_POINTS} points of the runs' budget "
        "curves (*stable*) or not (*budget-dependent*: the verdict measures how fast each side learns at this "
        "budget, not which design is better). *Other setting*: the contrast measured again in another precision, "
        "CPU or seed list (`stats.replications`: its folder, the precision and CPU its runs record, n a side), "
        "judged in the same family on that folder's seeds (the tables below list each such comparison). "
        "Table 4's line shows the strongest other cell, (cell) − (α=1, β=6); its verdict needs every cell "
        "measured."
    )
    if runs.replications_skipped:
        note += " Left out of *Other setting*: " + "; ".join(runs.replications_skipped) + "."
    return "## Summary: the paper's claims at this budget\n\n" + md_table(header, body) + "\n\n" + note


def grid_hardware(runs: Runs) -> str:
    """One sentence for the setting paragraph: the precision and device every run was trained with."""
    text = hardware_text(*runs.metrics.values())
    if text == UNRECORDED:
        return f"Precision and CPU: {text}."
    return f"Trained in {text} (per seed: `precision`, `device` in reports/metrics/)."


def summary_json(runs: Runs) -> dict[str, Any]:
    """The budget part of summary.json: per main contrast, Δ, SE, verdict per curve step and the stability."""
    out = {}
    for key in MAIN_ABLATIONS:
        points = budget_points(_ablation(key), runs)
        out[key] = {
            "stability": stability(points),
            "points": [
                {"step": p.step, "delta": json_num(p.delta), "se": json_num(p.se), "verdict": p.verdict}
                for p in points or []
            ],
        }
    return out


def cost_json(runs: Runs) -> dict[str, Any]:
    """What the budget curves cost the grid: their seconds against the epochs' over every run that records
    both (issue 16's target: at most 10%); share null when no run does."""
    seeds = [r for m in runs.metrics.values() for r in m["seeds"].values()]
    timed = [r for r in seeds if r.get("curve_time_s") is not None and r.get("train_time_s")]
    curve_s, train_s = sum(r["curve_time_s"] for r in timed), sum(r["train_time_s"] for r in timed)
    share = curve_s / (curve_s + train_s) if timed else None
    return {"runs": len(timed), "curve_s": round(curve_s, 1), "train_s": round(train_s, 1), "share": share}


# ---------------------------------------------------------------------------------------------------
# figures


def plot_budget_curves(runs: Runs, path: Path) -> list[str]:
    """AP vs step per variant: the seed mean and a band from the lowest to the highest seed; one panel per
    losses.png group (main variants; Table 4's cells beside the headline), so no panel has 12 curves."""
    curves = {v: variant_curve(m) for v, m in runs.metrics.items()}
    missing = [v for v, c in curves.items() if c is None]
    groups = loss_groups([v for v, c in curves.items() if c is not None]) or [("", [])]
    fig = Figure(figsize=(12, 4.2 * len(groups)))
    axes = np.atleast_1d(fig.subplots(len(groups), 1))
    for ax, (title, variants) in zip(axes, groups):
        for v, colour in variant_colours(variants).items():
            if v not in variants:
                continue
            values = np.array(list(curves[v].per_seed.values()))  # (S, T)
            ax.plot(
                curves[v].steps, np.nanmean(values, axis=0), marker="o", ms=3, lw=1.2, color=colour, label=v
            )
            if len(values) > 1:
                lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
                ax.fill_between(curves[v].steps, lo, hi, color=colour, alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel("AP (0-100, curve images)")
        what = "AP over the budget: mean over seeds, band = lowest to highest seed"
        ax.set_title(f"{title}: {what}" if title else what, fontsize=10)
        if variants:  # outside the axes, as in losses.png
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if missing:
        axes[0].annotate(
            f"no curve: {', '.join(missing)}", (0.01, 0.99), xycoords="axes fraction", va="top", fontsize=7
        )
    _save(fig, path)
    return missing


def plot_budget_deltas(runs: Runs, path: Path) -> None:
    """Δ AP vs step per main contrast with its 95% CI band (Welch's t) and the paper's Δ."""
    fig = Figure(figsize=(15, 3.6))
    axes = fig.subplots(1, len(MAIN_ABLATIONS), sharey=True)
    for ax, key in zip(axes, MAIN_ABLATIONS):
        ablation = _ablation(key)
        points = budget_points(ablation, runs)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(ablation.paper_delta("AP"), color="tab:gray", ls="--", lw=1, label="paper Δ (COCO)")
        ax.set_title(f"{ablation.name}\n{stability(points)}", fontsize=8)
        ax.set_xlabel("step")
        if points is None:
            ax.text(0.5, 0.5, "no curve", transform=ax.transAxes, ha="center")
            continue
        steps = np.array([p.step for p in points])  # (T,)
        delta = np.array([p.delta for p in points])  # (T,)
        lo, hi = np.array([p.ci95 for p in points]).T  # (T,) each; NaN below 2 seeds a side
        ax.plot(steps, delta, marker="o", ms=3, color="tab:blue", label="ours Δ")
        ax.fill_between(steps, lo, hi, color="tab:blue", alpha=0.2, label="95% CI (Welch t)")
    axes[0].set_ylabel("Δ AP (treated − baseline)")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def write_budget_figures(runs: Runs, figures_dir: Path) -> list[str]:
    """FIGURES under figures_dir; returns the variants without a curve."""
    missing = plot_budget_curves(runs, Path(figures_dir) / FIGURES[0])
    plot_budget_deltas(runs, Path(figures_dir) / FIGURES[1])
    return missing
