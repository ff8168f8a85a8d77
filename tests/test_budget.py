"""Verdicts over the budget (tood/report/budget.py): Δ ± SE per curve step, stable / budget-dependent, the
summary that opens tables.md, the hardware record, the two figures; on the report tests' fake metrics with
hand-made curves (known answers)."""

from __future__ import annotations

import json
import math

import pytest
from test_report import line_with, make_inputs, run_tabulate, section  # the report tests' fake inputs

from tood.config import load_params
from tood.report import budget
from tood.report.results import load_runs

STEPS = [2, 4, 6, 8]
# TEST-ONLY invented curves, AP in [0, 1] per step; the three seeds are the value + 0.005, - 0.005 and + 0 (as
# test_report's fakes), so s = 0.5 AP and every 3-vs-3 delta has SE 0.41 AP on 4 df. The main family at a step
# holds the two contrasts with curves (Holm over 2):
#   thead_atss - parallel_atss  = -10, -5, 0, +3   (paper +1.9): p < 0.002 but at 0 -> contradicts,
#                                 contradicts, inconclusive, reproduces -> budget-dependent
#   parallel_tal - parallel_atss = +1.5 everywhere (paper +1.1): p 0.021 (x2 = 0.043 where the other is
#                                 larger) -> reproduces at every step -> stable
CURVES = {
    "parallel_atss": [0.30, 0.30, 0.30, 0.30],
    "thead_atss": [0.20, 0.25, 0.30, 0.33],
    "parallel_tal": [0.315, 0.315, 0.315, 0.315],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """tables.md, summary.json and the runs of two-seed fake metrics, three variants with curves."""
    tmp = make_inputs(tmp_path_factory.mktemp("budget"), [0, 1, 2])
    for path in (tmp / "metrics").glob("*.json"):
        m = json.loads(path.read_text())
        for seed, sign in zip(("0", "1", "2"), (1, -1, 0)):
            m["seeds"][seed] |= {"precision": "bf16", "device": "Test CPU", "eval_device": "Test CPU"}
            m["seeds"][seed]["num_images"] = 512  # the evaluate stage's
            m["seeds"][seed] |= {"train_time_s": 90.0, "curve_time_s": 10.0} if seed == "0" else {}
            if m["variant"] in CURVES:
                ap = [v + sign * 0.005 for v in CURVES[m["variant"]]]
                m["seeds"][seed]["curve"] = {
                    "step": STEPS,
                    "epoch": [1, 2, 3, 4],
                    "AP": ap,
                    "AP50": ap,
                    "AP75": ap,
                    "num_images": [256] * 4,
                }
        path.write_text(json.dumps(m))
    text = run_tabulate(tmp)
    runs = load_runs(load_params(tmp / "params.yaml"), tmp / "metrics")
    return text, json.loads((tmp / "summary.json").read_text()), runs, tmp


def test_delta_and_se_per_step_on_hand_made_curves(report):
    *_, runs, _ = report
    points = budget.budget_points(budget._ablation("t1_af_thead"), runs)
    assert [p.step for p in points] == STEPS
    assert [p.delta for p in points] == pytest.approx([-10.0, -5.0, 0.0, 3.0])
    assert all(p.se == pytest.approx(math.sqrt(0.25 / 3 + 0.25 / 3)) for p in points)  # s = 0.5
    assert [p.verdict for p in points] == ["contradicts", "contradicts", "inconclusive", "reproduces"]
    assert budget.stability(points) == budget.DEPENDENT
    assert budget.stability_text(points) == (
        "budget-dependent: contradicts → inconclusive → reproduces at steps 4, 6, 8; "
        "the treated still gains +3.0 AP over the last 2 steps"
    )
    tal = budget.budget_points(budget._ablation("t2_tal"), runs)
    assert budget.stability_text(tal) == "stable: reproduces at steps 4, 6, 8"
    assert budget.stability(budget.budget_points(budget._ablation("t1_ab_thead"), runs)) == "no curve"
    assert budget.stability(tal[:2]) == "2 curve point(s), 3 needed"
    # the same verdict at the last 3 points, but the treated side still rising by 2 AP: not stable
    steady = [budget.BudgetPoint(t, 3.0, 0.5, "reproduces", 30.0, 33.0 + (t == 8) * 2.0) for t in STEPS]
    assert budget.stability(steady[:3]) == budget.STABLE
    # one seed a side: no SE, so no verdict at any point can be called stable (a quick-profile table said
    # "stable: not measured at steps 8, 16, 24")
    single = [budget.BudgetPoint(t, 0.3, math.nan, "not measured", 30.0, 30.3) for t in STEPS]
    assert budget.stability_text(single) == "not measured (fewer than 2 seeds a side)"
    assert budget.stability_text(steady) == (
        "budget-dependent: reproduces at steps 4, 6, 8; the treated still gains +2.0 AP over the last 2 steps"
    )


def test_a_variant_curve_keeps_the_steps_every_seed_measured():
    metrics = {"seeds": {
        "0": {"curve": {"step": [2, 4, 6], "AP": [0.1, 0.2, -1.0]}},
        "1": {"curve": {"step": [2, 6], "AP": [0.3, 0.4]}},
    }}  # fmt: skip
    curve = budget.variant_curve(metrics)
    assert curve.steps == (2, 6)
    assert curve.per_seed["0"][0] == pytest.approx(10.0) and math.isnan(curve.per_seed["0"][1])  # COCO -1
    assert curve.stat(1).values == pytest.approx((40.0,))  # an undefined AP is left out, as in the tables
    assert budget.variant_curve({"seeds": {"0": {"curve": {"step": [2], "AP": [0.1]}}, "1": {}}}) is None


def test_summary_opens_tables_md_one_line_per_claim(report):
    text, *_ = report
    assert text.index("## Summary") < text.index("## Table 1")
    summary = section(text, "Summary")
    t1 = line_with(summary, "Table 1: T-Head beats the parallel head (ATSS, anchor-free)")
    # 3 seeds a side, +3.0 on 4 df: p 0.0018; Holm over the main family's 5 contrasts at the end: 0.0073
    assert "| +1.9 | +3.0 [+1.9, +4.1] | 0.0018 / 0.0073 (main) | **reproduces** | 3/3; power: " in t1
    assert "| budget-dependent: contradicts → inconclusive → reproduces at steps 4, 6, 8;" in t1
    assert "`shapes`, R-18, 128x128, 12 epochs = 8 steps, n 3/3; bf16 on Test CPU" in t1
    tal = line_with(summary, "Table 2: TAL")
    assert (
        "| 0.021 / 0.043 (main) | **reproduces** |" in tal
        and "| stable: reproduces at steps 4, 6, 8 |" in tal
    )
    assert "| no curve |" in line_with(summary, "Table 3: TOOD beats ATSS (anchor-based)")
    t6 = line_with(summary, "Table 6:")
    assert "| +0.044 | +0.100 [+0.089, +0.111] |" in t6 and "(alignment) | **reproduces** |" in t6
    assert "| end of training only" in t6
    ab = line_with(summary, "Table 4: α=1, β=6 is the best cell")  # strongest other cell: a05_b4, -0.5
    assert (
        "strongest other cell: (alpha=0.5, beta=4) - (alpha=1, beta=6) | -0.2 | -0.5 [-1.6, +0.6] | 0.29 / 0.29 "
        "(alpha_beta) | **inconclusive** |" in ab
    )
    assert len([x for x in summary.splitlines() if x.startswith("| Table")]) == 7


def test_over_the_budget_section_summary_json_and_hardware(report):
    text, summary, *_ = report
    row = line_with(section(text, "Over the budget"), "T-Head - parallel (ATSS, anchor-free)")
    assert (
        "4: -5.0 [-6.1, -3.9] (contradicts)<br>6: 0.0 [-1.1, +1.1] (inconclusive)<br>8: +3.0 [+1.9, +4.1] (reproduces)"
        in row
    )
    assert summary["budget"]["t1_af_thead"]["stability"] == "budget-dependent"
    assert [p["verdict"] for p in summary["budget"]["t2_tal"]["points"]] == ["reproduces"] * 4
    assert summary["hardware"] == "bf16 on Test CPU"
    assert summary["curve_cost"] == {"runs": 12, "curve_s": 120.0, "train_s": 1080.0, "share": 0.1}  # seed 0s
    from bench.targets import curve_cost_line

    assert curve_cost_line(summary["curve_cost"]) == (
        "budget curves: 120 s of 1200 s training (10.0%, 12 runs): ≤ 10% met"
    )
    assert "NOT met" in curve_cost_line(summary["curve_cost"] | {"share": 0.11})
    assert "Curve points: 256 val images (the evaluate stage: 512): the last point's Δ can differ" in text
    assert "Trained in bf16 on Test CPU" in text


def test_hardware_of_old_metrics_files_is_said_to_be_unrecorded():
    old = {"seeds": {"0": {"AP": 0.3}}}
    assert budget.hardware_text(old) == budget.UNRECORDED
    mixed = {
        "seeds": {"0": {"precision": "fp32", "device": "EPYC"}, "1": {"precision": "bf16", "device": "Xeon"}}
    }
    assert budget.hardware_text(mixed) == "bf16 on Xeon; fp32 on EPYC"


def test_budget_figures_are_valid_pngs(report):
    text, _, _, tmp = report
    for name in budget.FIGURES:
        data = (tmp / "fig" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"({'fig'}/{name})" in text or f"/{name})" in text
    assert "No budget curve" in text and "tood" in text.split("No budget curve")[1]
