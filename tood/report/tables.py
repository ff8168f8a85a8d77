"""Paper vs ours: reports/tables.md and reports/summary.json of the `tabulate` stage (figures: tood.report.figures).

The numbers come from tood.report.results, every test and verdict from tood.report.stats (Welch's t, Holm, TOST);
Table 1's params/GFLOPs of our models from the metrics files' "complexity" (tood.report.complexity).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tood.config import HEADLINE
from tood.engine import tracking
from tood.report import budget, extended, figures, paper
from tood.report.paper import ABLATIONS, TABLE4, TABLE4_CHOSEN, TABLE6, TABLES, Ablation, PaperRow
from tood.report.results import (
    ALIGN_KEYS,
    AP_KEYS,
    COMPLEXITY_KEYS,
    DASH,
    LABELS,
    METRIC_KEYS,
    SETTING_KEYS,
    Runs,
    compare,
    comparison_json,
    fmt_value,
    hardware_text,
    json_num,
    load_runs,
    md_table,
    ours_only,
    render_comparisons,
    replicate,
    seeds_note,
    stat,
)

HEAD_NAMES = {"tood": "T-Head", "parallel": "parallel head"}

TRIAL_BANNER = (
    "> **Trial run: these tables support no conclusions.** params.yaml sets `trial: true` (e.g. the `quick` "
    "profile): the budget only checks that every stage runs. Use the default profile for numbers to read."
)


def verdict_rule(runs: Runs) -> str:
    """How to read every comparison table (the rule of tood.report.stats, with params.yaml's `stats:`)."""
    cfg = runs.stats
    lvl = f"{1 - 2 * cfg.alpha:.0%}"
    return (
        "How to read the comparisons. Ours Δ = mean(treated) − mean(baseline) over each side's seeds (independent "
        "runs: seeds are not paired), with its 95% CI from Welch's t-test (Welch–Satterthwaite df; scipy; the "
        "contrast's own interval, not adjusted for the family). *p*: "
        "the test of Δ = 0; *Holm p*: adjusted by Holm's step-down method over the family the claim belongs to "
        "(statsmodels; *main*: the five AP contrasts of Tables 1–3; *alpha_beta*: Table 4's five cells against "
        "(α=1, β=6); *alignment*: Table 6's alignment metrics; Table 6's AP rows are the main contrasts). "
        f"Verdicts at α = {cfg.alpha:g}: Holm p < α and Δ has the paper's sign: *reproduces*; the opposite sign: "
        f"*contradicts*; otherwise, for AP, a TOST (statsmodels `ttost_ind`, Welch) within ±{cfg.margin_ap:g} AP "
        f"with Holm p < α, i.e. the {lvl} CI inside the margin: *equivalent* (no effect larger than the margin, "
        "which does not reproduce a claimed gain); otherwise *inconclusive*: these runs cannot tell. The margin "
        f"({cfg.margin_ap:g} AP) was declared before the verdicts were computed: a third to a sixth of the "
        "paper's main gains (+1.1 to +3.3 AP) and about what a change of CPU or precision moved one variant "
        "(bench/precision). Fewer than 2 seeds on a side: no variance, no test (*not measured*). *Seeds*: what "
        f"a side would need for {cfg.power:.0%} power at the paper's Δ, with the pooled std of our seeds at "
        "level α/k (Holm's first step in a family of k; statsmodels `TTestIndPower`); the paper's Δ is on COCO "
        "with ResNet-50, so this is a yardstick, not a promise. Per seed: the baseline's values → the treated "
        "variant's, in seed order. Compare directions, not sizes, with the paper."
    )


MLFLOW_HOWTO = """\
```
uv run python -m pipeline.mlflow_ui      # mlflow server on 127.0.0.1:5000 over mlflow.db; prints the link
```
Open the link it prints (the runs table of experiment `tood-ablations`, columns AP, head, assigner, anchor,
alpha, beta): it first sets the browser to MLflow's model-training view, which the bare address does not.
Filter runs with e.g. `params.head = 'tood'` or `tags.variant = 'parallel_atss'`; the run links above open
a run in the same view while `pipeline.mlflow_ui` serves on its default port.
Those ids are in the MLflow store of the machine that trained these runs: a fresh clone has no such runs
until its own `dvc repro` logs them, and then this table lists the new ids."""


# ---------------------------------------------------------------------------------------------------
# tables


def _pair_header(keys: tuple[str, ...]) -> list[str]:
    return [f"{LABELS.get(k, k)} {side}" for k in keys for side in ("paper", "ours")]


def _pair_cells(row: PaperRow, runs: Runs, keys: tuple[str, ...]) -> list[str]:
    ours, why = runs.ours(row)
    out = []
    for k in keys:
        out += [fmt_value(k, row.metrics.get(k)), stat(ours, k).fmt() if ours is not None else why]
    return out


def _n_cell(row: PaperRow, runs: Runs) -> str:
    return str(len(runs.seeds[row.variant])) if runs.ours(row)[0] is not None else DASH


def render_rows(rows: tuple[PaperRow, ...], runs: Runs, keys: tuple[str, ...] = AP_KEYS) -> str:
    body = [
        [row.label, f"`{row.variant}`", _n_cell(row, runs), *_pair_cells(row, runs, keys)] for row in rows
    ]
    table = md_table(["Paper row", "Variant", "n", *_pair_header(keys)], body)
    return table + "\n\n" + seeds_note([r.variant for r in rows if runs.ours(r)[0] is not None], runs)


def render_table4(runs: Runs) -> str:
    body = []
    for row in TABLE4:
        variant = f"`{row.variant}`" + (" (headline)" if row.variant == HEADLINE else "")
        cells = [f"{row.config['alpha']:g}", f"{row.config['beta']:g}", variant, _n_cell(row, runs)]
        body.append(cells + _pair_cells(row, runs, AP_KEYS))
    extra = ours_only(runs)
    for variant, alpha, beta in extra:
        ours = [c for k in AP_KEYS for c in (DASH, stat(runs.metrics[variant], k).fmt())]
        n = str(len(runs.seeds[variant]))
        body.append([f"{alpha:g}", f"{beta:g}", f"`{variant}` (ours only: no paper cell)", n, *ours])
    variants = [r.variant for r in TABLE4 if runs.ours(r)[0] is not None] + [v for v, _, _ in extra]
    table = md_table(["α", "β", "Variant", "n", *_pair_header(AP_KEYS)], body)
    return table + "\n\n" + seeds_note(variants, runs)


def _ablations_of(table: str) -> list[Ablation]:
    return [a for a in ABLATIONS if a.treated.table == table]


def _seeds_text(runs: Runs) -> str:
    """'seeds [0, 1, 2]' for every variant, or the top list and the variants that use their own."""
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for v, s in runs.seeds.items():
        by_seeds.setdefault(s, []).append(v)
    common = runs.seeds.get(HEADLINE) or max(by_seeds, key=lambda s: len(by_seeds[s]))
    own = [f"{', '.join(f'`{v}`' for v in vs)}: {list(s)}" for s, vs in by_seeds.items() if s != common]
    return f"seeds {list(common)}" + (f" (own seeds: {'; '.join(own)})" if own else " for every variant")


def _epochs_text(runs: Runs, epochs: Any) -> str:
    """ "12 epochs", or, where variants train longer (issue 20's 1.5x rows), the shared count and theirs."""
    if epochs != "varies by variant":
        return f"{epochs} epochs"
    shared = runs.metrics[HEADLINE]["setting"]["epochs"] if HEADLINE in runs.metrics else None
    others = [
        f"`{v}`: {m['setting']['epochs']}"
        for v, m in runs.metrics.items()
        if m["setting"]["epochs"] != shared
    ]
    return f"{shared} epochs ({'; '.join(others)})"


def render_setting(runs: Runs) -> str:
    values = {k: sorted({json.dumps(m["setting"][k]) for m in runs.metrics.values()}) for k in SETTING_KEYS}
    setting = {k: json.loads(v[0]) if len(v) == 1 else "varies by variant" for k, v in values.items()}
    scale = setting["img_scale"]
    scale = "x".join(map(str, scale)) if isinstance(scale, list) else scale
    ours = (
        f"dataset `{setting['dataset']}`, ResNet-{setting['depth']}, image scale {scale}, "
        f"{_epochs_text(runs, setting['epochs'])}, {_seeds_text(runs)}"
    )
    same = all(
        json.dumps(setting[k]) == json.dumps(list(v) if isinstance(v, tuple) else v)
        for k, v in paper.PAPER_SETTING.items()
    )
    verdict_line = (
        "This matches the paper's recipe in dataset, backbone, scale and schedule."
        if same
        else "This is **not** the paper's setting (COCO 2017, ResNet-50, 1333x800, 12 epochs): "
        "compare the *direction* of each ablation, not absolute numbers."
    )
    where = 'Produced by the runs listed under "Which runs make each row"'
    return f"{where}, measured with: {ours}. {budget.grid_hardware(runs)}\n{verdict_line}"


ASSIGNER_NAMES = {"atss": "ATSS", "max_iou": "max-IoU", "fovea": "FoveaBox", "fcos": "FCOS"}


def render_runs(runs: Runs) -> str:
    body = []
    with_extended = extended.present(runs)
    for v, m in runs.metrics.items():
        sw = runs.switches[v]
        titles = paper.paper_rows_for(v, alpha=sw["alpha"], beta=sw["beta"])
        titles += extended.rows_for(v) if with_extended else []
        rows = "<br>".join(titles) or DASH
        ab = f"α={sw['alpha']:g}, β={sw['beta']:g}" if sw["assigner"] == "tal" else "— (ATSS)"
        if sw["assigner"] not in ("tal", "atss"):
            ab = f"— ({ASSIGNER_NAMES[sw['assigner']]})"
        first = [f"`{v}`", rows, _switches_text(sw), ab]
        for i, (seed, per_seed) in enumerate(m["seeds"].items()):
            cells = first if i == 0 else ["", "", "", ""]
            ap = stat({"seeds": {seed: per_seed}}, "AP").fmt()
            body.append([*cells, str(seed), ap, _run_link(per_seed.get("mlflow_run_id"))])
    head = ["Variant", "Paper rows", "head / assigner / anchor", "TAL α, β", "Seed", "AP", "MLflow run"]
    return md_table(head, body)


def _switches_text(sw: dict[str, Any]) -> str:
    """ "head / assigner / anchor"; issue 20's switches only where they are not at their default, e.g.
    "parallel + TAP / TAL m=5 / free, 1.5x epochs" (so the default grid's table reads as before)."""
    head = sw["head"] + (" + TAP" if sw.get("tap") else "")
    assigner = sw["assigner"] + (" + QFL" if sw.get("cls_target") == "iou" else "")
    if sw["assigner"] == "tal" and sw.get("topk", 13) != 13:
        assigner += f" m={sw['topk']}"
    schedule = f", {sw['schedule']:g}x epochs" if sw.get("schedule", 1.0) != 1.0 else ""
    return f"{head} / {assigner} / {sw['anchor']}{schedule}"


def _run_link(run_id: str | None) -> str:
    """The run's id, linked to its page in the model-training view of `pipeline.mlflow_ui` (issue 18)."""
    return f"[`{run_id}`]({tracking.run_page_url(run_id)})" if run_id else DASH


def headline_note(runs: Runs) -> str:
    sw = runs.switches.get(HEADLINE)
    if sw is None or paper.on_cell(TABLE4_CHOSEN.config, sw["alpha"], sw["beta"]):
        return ""
    return (
        f"\n\nNote: the headline `{HEADLINE}` runs at α={sw['alpha']:g}, β={sw['beta']:g} "
        "(top-level params), while the paper's TOOD rows use α=1, β=6."
    )


# ---------------------------------------------------------------------------------------------------
# Table 1: params and GFLOPs


def _millions(n: float) -> str:
    return _short(n / 1e6)


def _short(x: float) -> str:
    """2 decimals as the paper prints them, 3 significant digits below 1 (our small models)."""
    return f"{x:.2f}" if x >= 1 else f"{x:#.3g}"


def _pair(c: dict[str, Any], head: str, full: str, scale: float) -> str:
    return f"{_short(c[head] / scale)} / {_short(c[full] / scale)}"


def _config_text(c: dict[str, Any]) -> str:
    return (
        f"ResNet-{c['depth']}, FPN/head width {c['fpn_channels']}, {c['num_classes']} classes, "
        f"{c['input_w']}×{c['input_h']} input"
    )


def render_complexity(runs: Runs) -> str:
    """Table 1's params and GFLOPs: the paper's, ours at the paper's configuration, ours as we ran."""
    body, run_configs = [], set()
    for row in paper.TABLE1:
        m, why = runs.ours(row)
        p = row.metrics
        cells = [row.label, f"`{row.variant}`", f"{p['head_params_m']:.2f} / {p['params_m']:.2f}"]
        if m is None:
            body.append([*cells, why, f"{p['head_gflops']:.2f} / {p['gflops']:.2f}", why, why, why])
            continue
        at_paper, ours = m["complexity"]["paper_config"], m["complexity"]["run"]
        run_configs.add(_config_text(ours))
        cells += [
            _pair(at_paper, "head_params", "params", 1e6),
            f"{p['head_gflops']:.2f} / {p['gflops']:.2f}",
        ]
        cells += [_pair(at_paper, "head_gflops", "gflops", 1)]
        cells += [_pair(ours, "head_params", "params", 1e6), _pair(ours, "head_gflops", "gflops", 1)]
        body.append(cells)
    header = ["Paper row", "Variant", "Params M head / full: paper", "ours, paper config"]
    header += ["GFLOPs head / full: paper", "ours, paper config", "Params M: our run", "GFLOPs: our run"]
    return md_table(header, body) + "\n\n" + complexity_note(runs, sorted(run_configs))


def complexity_note(runs: Runs, run_configs: list[str]) -> str:
    all_params = {
        f"{HEAD_NAMES[r.config['head']]} {_millions(m['complexity']['paper_config']['all_params'])} M"
        for r in paper.TABLE1
        if (m := runs.ours(r)[0]) is not None
    }
    paper_cfg = (
        f"ResNet-50, FPN/head width 256, T-Head N=6, GN 32, {paper.TABLE1_NUM_CLASSES} classes, "
        f"{paper.TABLE1_INPUT_HW[1]}×{paper.TABLE1_INPUT_HW[0]} input"
    )
    return (
        "Ours are measured on the model itself (tood/report/complexity.py: the detector built without weights and "
        "run once under torch.utils.flop_counter.FlopCounterMode on shape-only tensors), by the evaluate "
        f"stage. Paper config: {paper_cfg}. Our run: {'; '.join(run_configs) or DASH}. "
        "GFLOPs use the paper's convention (mmcv get_flops: one multiply-add = 1 FLOP), i.e. torch's count "
        "/ 2; torch counts convolutions and matrix products only, mmcv also norms, activations and bias "
        "adds, so ours read slightly lower. Full-model params count the parameters that train, as mmcv "
        "does: the recipe freezes the stem and stage 1 of the pretrained ResNet. Every parameter, paper "
        f"config: {', '.join(sorted(all_params)) or DASH}."
    )


# ---------------------------------------------------------------------------------------------------
# tables.md


def render_report(runs: Runs) -> str:
    t6_ap = "AP50/AP75 of Table 6 are not printed in the paper; they are cross-linked from Tables 1-3."
    counts = (
        "Box counts: the paper's are totals over 5k minival images; ours over our val set (compare signs)."
    )
    parts = [
        "# TOOD: paper vs this reproduction",
        *([TRIAL_BANNER] if runs.trial else []),
        budget.render_summary(runs),
        f"Paper numbers: {paper.SOURCE}. Ours: mean ± std over seeds (a single value with one seed; column "
        "n: seeds), COCO AP on the paper's 0-100 scale.\n\n" + render_setting(runs),
        verdict_rule(runs),
        "## Table 1: parallel head vs T-Head (ATSS)\n\n" + render_rows(paper.TABLE1, runs),
        render_comparisons(_ablations_of("Table 1"), runs),
        "### Params and GFLOPs (Table 1)\n\n" + render_complexity(runs),
        "## Table 2: ATSS vs TAL (parallel head)\n\n" + render_rows(TABLES["Table 2"], runs),
        render_comparisons(_ablations_of("Table 2"), runs),
        "## Table 3: complete TOOD vs ATSS\n\n" + render_rows(TABLES["Table 3"], runs) + headline_note(runs),
        render_comparisons(_ablations_of("Table 3"), runs),
        "## Table 4: α, β of t = s^α·u^β\n\n" + render_table4(runs),
        render_comparisons(_ablations_of("Table 4"), runs),
        "## Table 6: head x assigner and task alignment\n\n" + render_rows(TABLE6, runs) + "\n\n" + t6_ap,
        render_rows(TABLE6, runs, ("AP", *ALIGN_KEYS)) + "\n\n" + counts + headline_note(runs),
        render_comparisons(_ablations_of("Table 6"), runs),
        *([extended.render_extended(runs)] if extended.present(runs) else []),
        "## Over the budget: does each verdict hold late in training?\n\n" + budget.render_budget(runs),
        "## Which runs make each row\n\n" + render_runs(runs),
        "## How to open the MLflow UI\n\n" + MLFLOW_HOWTO,
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------
# summary.json


def build_summary(runs: Runs) -> dict[str, Any]:
    """The numbers of tables.md as plain JSON (NaN -> null), for `dvc metrics show`."""
    variants = {}
    for v, m in runs.metrics.items():
        stats = [stat(m, k) for k in METRIC_KEYS]
        variants[v] = {s.key: json_num(s.mean) for s in stats} | {
            f"{s.key}_std": json_num(s.std) for s in stats
        }
        variants[v] |= {"n_seeds": len(runs.seeds[v]), "AP_per_seed": _per_seed(m, "AP")}
        variants[v]["complexity"] = {
            where: {k: m["complexity"][where][k] for k in COMPLEXITY_KEYS}
            for where in ("run", "paper_config")
        }
    ablations = {a.key: {c.metric: comparison_json(c) for c in compare(a, runs)} for a in ABLATIONS}
    for a in ABLATIONS:  # the same comparisons in each `stats.replications` folder holding both sides
        for rep, comps in replicate(a, runs):
            for c in comps:
                other = {"folder": rep.folder, "setting": rep.hardware} | comparison_json(c)
                ablations[a.key][c.metric].setdefault("replications", []).append(other)
    head = {"paper": paper.SOURCE, "ap_scale": "0-100", "trial": runs.trial}
    head["stats"] = dataclasses.asdict(runs.stats)
    extra = {"budget": budget.summary_json(runs), "hardware": hardware_text(*runs.metrics.values())}
    extra["curve_cost"] = budget.cost_json(runs)
    if extended.present(runs):  # issue 20's runs; absent from the default grid's summary
        extra["extended"] = extended.summary_json(runs)
    return head | {"variants": variants, "ablations": ablations} | extra


def _per_seed(m: dict[str, Any], key: str) -> dict[str, float | None]:
    return {seed: json_num(stat({"seeds": {seed: r}}, key).mean) for seed, r in m["seeds"].items()}


# ---------------------------------------------------------------------------------------------------
# the stage


def render_figures(figures_rel: str, no_losses: list[str], no_curves: list[str] = ()) -> str:
    names = (*figures.FIGURES, *budget.FIGURES)
    links = "\n".join(f"![{name[:-4]}]({figures_rel}/{name})" for name in names)
    text = (
        "## Figures\n\nα/β cells (paper vs ours, each with its own colour bar), ablation deltas (paper's on "
        "COCO and ours with its 95% CI, on separate axes), training losses (mean over seeds; the dotted line is the "
        "switch from the ATSS warm-up to TAL) and Table 6's alignment metrics.\n\n" + links
    )
    if no_losses:
        text += f"\n\nNo loss curve found (not in losses.png) for: {', '.join(f'`{v}`' for v in no_losses)}."
    text += (
        "\n\nBudget curves: AP over the steps of each variant (seed band) and Δ over the steps of each main "
    )
    text += "contrast with its 95% CI band (Welch t)."
    if no_curves:
        text += f" No budget curve (metrics from before issue 16, or curves off) for: {', '.join(no_curves)}."
    return text


def tabulate(
    params: dict[str, Any],
    metrics_dir: Path,
    runs_dir: Path,
    out: Path,
    summary_path: Path,
    figures_dir: Path,
    where: str = "params.yaml",
    curves_dir: Path | None = None,
) -> None:
    """Read every listed variant's metrics, write tables.md, summary.json and the PNG figures."""
    runs = load_runs(params, Path(metrics_dir), where)
    out, summary_path, figures_dir = Path(out), Path(summary_path), Path(figures_dir)
    for folder in (out.parent, summary_path.parent, figures_dir):
        folder.mkdir(parents=True, exist_ok=True)
    no_losses = figures.write_figures(runs, Path(runs_dir), figures_dir, curves_dir)
    no_curves = budget.write_budget_figures(runs, figures_dir)
    figures_rel = Path(os.path.relpath(figures_dir, out.parent)).as_posix()
    out.write_text(render_report(runs) + "\n" + render_figures(figures_rel, no_losses, no_curves) + "\n")
    summary_path.write_text(json.dumps(build_summary(runs), indent=2) + "\n")
