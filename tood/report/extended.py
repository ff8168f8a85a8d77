"""The extended grid's part of tables.md and summary.json (issue 20): Table 2 in full, its comparisons, and
the top-m sweep of TAL. Rendered only when params.yaml lists one of its variants (`present`): the default grid's
tables.md and summary.json do not change.

Numbers come from tood.report.results, tests and verdicts from tood.report.stats (Welch's t, Holm, TOST) and tood.report.budget
(over the budget); the paper's rows from tood.report.paper (TABLE2_FULL, EXTENDED_ABLATIONS, TOPK_ROWS).
"""

from __future__ import annotations

import math
from typing import Any

from tood.config import HEADLINE
from tood.report import budget, paper, stats
from tood.report.paper import EXTENDED_ABLATIONS, EXTENDED_VARIANTS, TABLE2_FULL, TOPK_AP_RANGE, TOPK_ROWS
from tood.report.results import (
    DASH,
    Runs,
    compare,
    comparison_json,
    fmt_ci,
    fmt_value,
    json_num,
    md_table,
    render_comparisons,
    seeds_note,
    stat,
)

TOPK_SPREAD = TOPK_AP_RANGE[1] - TOPK_AP_RANGE[0]  # 0.5 AP: the paper's five m lie within 42.0-42.5
KEYS = ("AP", "AP50", "AP75")


def present(runs: Runs) -> bool:
    """Whether params.yaml lists any variant of the extended grid."""
    return bool(EXTENDED_VARIANTS & set(runs.switches))


def rows_for(variant: str) -> list[str]:
    """The extended tables' rows a variant makes beyond its default-table rows (tables.md "Which runs")."""
    titles = [
        r.row.title
        for r in TABLE2_FULL
        if r.row is not None and r.row.variant == variant and r.row not in paper.ALL_ROWS
    ]
    return titles + [f"top-m of TAL: {r.label}" for r in TOPK_ROWS if r.variant == variant]


# ---------------------------------------------------------------------------------------------------
# Table 2 in full


def render_table2(runs: Runs) -> str:
    body, not_run, measured = [], [], []
    for r in TABLE2_FULL:
        cells = [r.label, r.posneg, r.weight]
        if r.row is None:
            body.append([*cells, f"{r.epochs} / {DASH}", DASH, DASH, *_pairs(r.metrics, None, "not run")])
            not_run.append(f"- **{r.label}**: {r.why}.")
            continue
        ours, why = runs.ours(r.row)
        epochs = runs.switches.get(r.row.variant, {}).get("epochs", DASH)
        n = str(len(runs.seeds[r.row.variant])) if ours is not None else DASH
        body.append(
            [*cells, f"{r.epochs} / {epochs}", f"`{r.row.variant}`", n, *_pairs(r.metrics, ours, why)]
        )
        measured += [r.row.variant] if ours is not None else []
    header = ["Assignment", "Pos/neg", "Weight", "Epochs paper / ours", "Variant", "n"]
    header += [f"{k} {side}" for k in KEYS for side in ("paper", "ours")]
    note = (
        "Every row we run is the parallel head (Table 2's TAL row is Table 6's parallel head + TAL) with "
        "the detector's own losses, so that only the assignment and the positives' weights differ: focal "
        "loss and GIoU, weighted by the centerness for ATSS and FCOS (which train and use it), by nothing "
        "for max-IoU and FoveaBox, by the score for ATSS + QFL (IoU as the class target, no centerness). The "
        "paper's rows are the published detectors. The IoU-based row regresses from anchors (anchor-based, "
        "as RetinaNet); every other row is anchor-free. Rows marked * train 1.5x the epochs with the lr "
        "steps scaled alike (the paper: 18 instead of 12)."
    )
    text = md_table(header, body) + "\n\n" + seeds_note(measured, runs) + " " + note
    if not_run:
        text += "\n\nNot run (no variant; the paper's numbers are shown for completeness):\n"
        text += "\n".join(not_run)
    return text


def _pairs(paper_metrics: dict[str, float], ours: dict[str, Any] | None, why: str) -> list[str]:
    out = []
    for k in KEYS:
        out += [fmt_value(k, paper_metrics.get(k)), stat(ours, k).fmt() if ours is not None else why]
    return out


def render_budget_column(runs: Runs) -> str:
    """Each Table 2 contrast over the runs' budget curves (tood.report.budget), where both sides share a
    schedule; a 1.5x run's curve points are other steps of another schedule, so it has no such line."""
    body = []
    for a in EXTENDED_ABLATIONS:
        (base, _), (treated, _) = runs.ours(a.baseline), runs.ours(a.treated)
        if (
            base is not None
            and treated is not None
            and base["setting"]["epochs"] != treated["setting"]["epochs"]
        ):
            text = "different schedules (12 vs 18 epochs in the paper's terms): the final values only"
        else:
            text = budget.stability_text(budget.budget_points(a, runs))
        body.append([a.name, text])
    return md_table(["Contrast (AP)", "Over the budget"], body)


# ---------------------------------------------------------------------------------------------------
# top-m of TAL


def topk_rows(runs: Runs) -> list[dict[str, Any]]:
    """Per m: our AP stat and its test against m = 13, judged as one family (Holm over the measured m):
    TOST within ±TOPK_SPREAD (the paper's 42.0-42.5 range) -> "equivalent"; a Holm-significant difference ->
    "different"; else "inconclusive" (tood.report.stats, with no paper direction)."""
    (ref, _) = runs.ours(TOPK_ROWS[paper.TOPK_VALUES.index(paper.TOPK_CHOSEN)])
    out, tests = [], {}
    for row in TOPK_ROWS:
        ours, why = runs.ours(row)
        item: dict[str, Any] = {"row": row, "ours": ours, "why": why, "delta": math.nan, "se": math.nan}
        if ours is not None and ref is not None and row.variant != HEADLINE:
            a, b = stat(ref, "AP"), stat(ours, "AP")
            tests[row.variant] = stats.welch(a.values, b.values, TOPK_SPREAD)
            item |= {
                "delta": b.mean - a.mean,
                "n": (a.n, b.n),
                "per_seed": f"{a.fmt_seeds()} → {b.fmt_seeds()}",
            }
        out.append(item)
    cfg = runs.stats
    judged = stats.judge_family(tests, {}, "topk", cfg.alpha, cfg.power)
    for item in out:
        j = judged.get(item["row"].variant)
        if j is not None:
            item |= {"se": j.test.se, "judgement": j, "verdict": j.verdict}
    return out


def render_topk(runs: Runs) -> str:
    body, measured = [], []
    paper_ap = f"{TOPK_AP_RANGE[0]:.1f}–{TOPK_AP_RANGE[1]:.1f} (all m)"
    for item in topk_rows(runs):
        row, ours = item["row"], item["ours"]
        variant = f"`{row.variant}`" + (" (headline, reference)" if row.variant == HEADLINE else "")
        n = str(len(runs.seeds[row.variant])) if ours is not None else DASH
        cells = [str(row.config["topk"]), variant, n, paper_ap]
        cells += [stat(ours, k).fmt() if ours is not None else item["why"] for k in KEYS]
        if "judgement" not in item:
            cells += [DASH, DASH, DASH, "reference" if row.variant == HEADLINE else DASH]
        else:
            j = item["judgement"]
            cells += [
                fmt_ci("AP", item["delta"], j.test.ci95),
                f"{stats.fmt_p(j.p_tost_holm)} / {stats.fmt_p(j.p_holm)}",
                item["per_seed"],
                item["verdict"],
            ]
        body.append(cells)
        measured += [row.variant] if ours is not None else []
    header = ["m", "Variant", "n", "AP paper", "AP ours", "AP50 ours", "AP75 ours", "Δ AP vs m=13 [95% CI]"]
    header += ["Holm p: TOST / difference", "Per seed (m=13 → m)", f"Within ±{TOPK_SPREAD:.1f} AP of m=13?"]
    note = (
        f"The paper (§4.1) gives no AP per m, only that m ∈ {{5, 9, 13, 17, 21}} all land in "
        f"{TOPK_AP_RANGE[0]:.1f}–{TOPK_AP_RANGE[1]:.1f} AP and that m = 13 is used: a bound, not a "
        f"direction. Each m against m = 13 in one family (Holm): *equivalent* when TOST within ±{TOPK_SPREAD:.1f} "
        "AP has Holm p < α (our m changes AP no more than the paper's range allows), *different* when Welch's "
        "t has Holm p < α, else *inconclusive*; fewer than 2 seeds a side: *not measured*. Every m is T-Head + "
        "TAL, anchor-free, α=1, β=6; m = 13 is the "
        "headline run, on its row only when the top-level α, β are 1, 6."
    )
    return md_table(header, body) + "\n\n" + seeds_note(measured, runs) + " " + note


# ---------------------------------------------------------------------------------------------------
# tables.md section and summary.json


def render_extended(runs: Runs) -> str:
    return "\n\n".join(
        [
            (
                "## Extended grid: Table 2 in full and the top-m sweep\n\nThe `extended` profile's runs "
                "(issue 20): Table 2's other assignment schemes on the parallel head, TAL and TAL + TAP at "
                "1.5x the epochs, and TAL's top-m."
            ),
            "### Table 2: training-sample assignment schemes\n\n" + render_table2(runs),
            render_comparisons(list(EXTENDED_ABLATIONS), runs),
            render_budget_column(runs),
            "### Top-m of TAL (§4.1, text only in the paper)\n\n" + render_topk(runs),
        ]
    )


def summary_json(runs: Runs) -> dict[str, Any]:
    """summary.json's "extended" entry: each contrast's Δ, SE, n, verdict (AP 0-100) and the top-m sweep."""
    ablations = {a.key: {c.metric: comparison_json(c) for c in compare(a, runs)} for a in EXTENDED_ABLATIONS}
    topk = {}
    for item in topk_rows(runs):
        m = item["row"].config["topk"]
        ap = stat(item["ours"], "AP").mean if item["ours"] is not None else math.nan
        topk[str(m)] = {"variant": item["row"].variant, "AP": json_num(ap), "delta": json_num(item["delta"])}
        topk[str(m)] |= {"se": json_num(item["se"]), "verdict": item.get("verdict")}
        if "judgement" in item:
            j = item["judgement"]
            topk[str(m)] |= {"ci95": [json_num(x) for x in j.test.ci95], "p_holm": json_num(j.p_holm)}
            topk[str(m)] |= {"p_tost_holm": json_num(j.p_tost_holm)}
    return {"ablations": ablations, "topk": topk, "topk_paper_AP_range": list(TOPK_AP_RANGE)}
