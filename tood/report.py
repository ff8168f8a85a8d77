"""Paper vs ours: reports/tables.md, reports/summary.json and the PNG figures of the `tabulate` stage.

Inputs (one explicit list of variants from params.yaml, never a glob):
    reports/metrics/<variant>.json   evaluate output: mean over seeds at the top level, "std", "seeds"
                                     ({seed: {... "mlflow_run_id"}}) and "setting" (dataset, depth, ...)
    runs/<variant>/seed<k>/losses.csv   step,epoch,lr,loss,loss_cls,loss_box[,loss_ctr]

Our COCO APs are stored in [0, 1] and shown on the paper's 0-100 scale. An ablation's verdict compares the
sign of our delta with the paper's, against the seed noise sqrt(std_a^2 + std_b^2) (std over seeds of each
variant; conservative, as it is the spread of single runs, not of the means). With one seed the noise is
not measured and the verdict says only whether the direction matches.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tood import paper
from tood.config import HEADLINE, resolve_run_config, variant_names
from tood.paper import ABLATIONS, TABLE4, TABLE4_CHOSEN, TABLE6, TABLES, Ablation, PaperRow

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCO AP in [0, 1] in the metrics files
ALIGN_KEYS = ("pcc_top50", "iou_top10", "correct", "redundant", "error")
METRIC_KEYS = AP_KEYS + ALIGN_KEYS
SETTING_KEYS = ("dataset", "depth", "img_scale", "epochs")
SWITCHES = ("head", "assigner", "anchor", "alpha", "beta")
LABELS = {"pcc_top50": "PCC (top-50)", "iou_top10": "IoU (top-10)", "correct": "#correct"}
LABELS |= {"redundant": "#redundant", "error": "#error"}
DASH = "—"


class ReportError(RuntimeError):
    """Inputs of the report are missing, malformed or stale; the message names the file and the variant."""


@dataclass(frozen=True)
class Stat:
    """One metric of one variant on the display scale (AP x100): mean and std over `n` seeds."""

    key: str
    mean: float
    std: float
    n: int

    def fmt(self) -> str:
        if self.n > 1 and not math.isnan(self.mean):
            return f"{fmt_value(self.key, self.mean)} ± {fmt_value(self.key, self.std)}"
        return fmt_value(self.key, self.mean)


def fmt_value(key: str, x: float | None, signed: bool = False) -> str:
    if x is None:
        return DASH
    if math.isnan(x):
        return "n/a"
    sign = "+" if signed else ""
    if key in AP_KEYS:
        return f"{x:{sign}.1f}"
    if key in ("pcc_top50", "iou_top10"):
        return f"{x:{sign}.3f}"
    return f"{x:{sign},.0f}" if float(x).is_integer() else f"{x:{sign},.1f}"  # box counts (means over seeds)


def stat(metrics: dict[str, Any], key: str) -> Stat:
    """Read one metric; COCO's -1 (no objects of that size) becomes NaN, AP keys are scaled to 0-100."""
    scale = 100.0 if key in AP_KEYS else 1.0
    mean, std = metrics[key], metrics.get("std", {}).get(key, 0.0)
    mean = math.nan if mean is None or (key in AP_KEYS and mean < 0) else float(mean) * scale
    std = math.nan if std is None or math.isnan(mean) else float(std) * scale
    return Stat(key, mean, std, len(metrics["seeds"]))


def verdict(paper_delta: float, ours_delta: float, noise: float, n_seeds: int) -> str:
    """Does our delta go the paper's way? Same sign and |ours| > 2 x noise: reproduces; opposite: contradicts.

    `noise` = sqrt(std_a^2 + std_b^2) over seeds; with fewer than 2 seeds it is not measured and only the
    direction is reported.
    """
    if math.isnan(paper_delta):
        return "no paper number"
    if math.isnan(ours_delta):
        return "not run"
    agree = paper_delta * ours_delta
    if n_seeds < 2:
        word = "direction matches" if agree > 0 else "direction opposite" if agree < 0 else "no difference"
        return f"{word} (1 seed: noise not measured)"
    if abs(ours_delta) > 2 * noise and agree > 0:
        return "reproduces the paper's direction"
    if abs(ours_delta) > 2 * noise and agree < 0:
        return "contradicts the paper"
    return "inconclusive at the measured noise"


# ---------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Runs:
    """What was measured: metrics file per listed variant and each variant's resolved switches."""

    metrics: dict[str, dict[str, Any]]  # variant -> metrics JSON
    switches: dict[str, dict[str, Any]]  # variant -> {head, assigner, anchor, alpha, beta} from params.yaml
    seeds: tuple[int, ...]

    def ours(self, row: PaperRow) -> tuple[dict[str, Any] | None, str]:
        """Our metrics for a paper row, or None and why ("not run ...") when no run sits on that row."""
        sw = self.switches.get(row.variant)
        if sw is None:
            return None, "not run"
        if not paper.on_cell(row.config, sw["alpha"], sw["beta"]):
            return None, "not run"
        wrong = [f"{k}={sw[k]}" for k in row.config if k not in ("alpha", "beta") and sw[k] != row.config[k]]
        if wrong:
            return None, f"not run (`{row.variant}` is {', '.join(wrong)})"
        return self.metrics[row.variant], ""


def load_runs(params: dict[str, Any], metrics_dir: Path, where: str = "params.yaml") -> Runs:
    """Read reports/metrics/<variant>.json for every variant listed in params.yaml and check it is current."""
    variants = variant_names(params)
    paths = {v: Path(metrics_dir) / f"{v}.json" for v in variants}
    missing = [f"{paths[v]} (variant '{v}')" for v in variants if not paths[v].is_file()]
    if missing:
        many = "s" if len(missing) > 1 else ""
        raise ReportError(
            f"missing metrics file{many} for variant{many} listed in {where}: {'; '.join(missing)}. "
            "Run the evaluate stage first (`dvc repro`)."
        )
    switches = {}
    for v in variants:
        cfg = resolve_run_config(params, v, where)
        model, assign = cfg.model, cfg.assign
        switches[v] = {"head": model.head, "assigner": assign.assigner, "anchor": model.anchor}
        switches[v] |= {"alpha": assign.alpha, "beta": assign.beta}
    seeds = tuple(params.get("seeds", [0]))
    metrics = {v: _read_metrics(paths[v], v, switches[v], seeds) for v in variants}
    return Runs(metrics, switches, seeds)


def _read_metrics(path: Path, variant: str, switches: dict[str, Any], seeds: tuple[int, ...]) -> dict:
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} (variant '{variant}'): not valid JSON: {e}") from None
    absent = [k for k in (*METRIC_KEYS, "seeds", "setting") if k not in m]
    absent += [f"setting.{k}" for k in SETTING_KEYS if k not in m.get("setting", {})]
    if absent:
        raise ReportError(f"{path} (variant '{variant}'): missing key(s) {absent}")
    if sorted(m["seeds"]) != sorted(str(s) for s in seeds):
        raise ReportError(
            f"{path} (variant '{variant}'): seeds {sorted(m['seeds'])} but params.yaml has {list(seeds)}; "
            "the metrics are stale, re-run `dvc repro`"
        )
    for k in SWITCHES:
        got, want = m["setting"].get(k, switches[k]), switches[k]
        if got != want and not (isinstance(want, float) and math.isclose(float(got), want)):
            raise ReportError(
                f"{path} (variant '{variant}'): measured with {k}={got} but params.yaml resolves {k}={want}; "
                "the metrics are stale, re-run `dvc repro`"
            )
    return m


def read_losses(path: Path) -> list[dict[str, np.ndarray]]:
    """A losses CSV -> one {column: (T,) float array} per seed, sorted by step.

    runs/<variant>/seed<k>/losses.csv is one curve; a file with a `seed` column (one CSV per variant) is
    split by it. An empty cell (a loss a phase does not have, e.g. loss_ctr) is NaN; a step logged twice
    (a resumed run) keeps its last row.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}
    seeds = np.unique(cols["seed"]) if "seed" in cols else [None]
    return [_last_row_per_step(cols, None if s is None else cols["seed"] == s) for s in seeds]


def _last_row_per_step(cols: dict[str, np.ndarray], mask: np.ndarray | None) -> dict[str, np.ndarray]:
    cols = cols if mask is None else {k: v[mask] for k, v in cols.items()}
    steps = cols["step"][::-1]
    _, first_in_reversed = np.unique(steps, return_index=True)  # unique steps, ascending
    keep = len(steps) - 1 - first_in_reversed  # (T,) index of each step's last row
    return {k: v[keep] for k, v in cols.items()}


def mean_loss_curve(
    runs_dir: Path, variant: str, seeds: list[str], curves_dir: Path | None = None
) -> dict[str, np.ndarray] | None:
    """Mean over seeds of loss_cls / loss_box on the steps every seed logged; None if no curve exists.

    Reads <curves_dir>/<variant>.csv when that exists, else runs/<variant>/seed<k>/losses.csv per seed.
    """
    per_variant = Path(curves_dir) / f"{variant}.csv" if curves_dir is not None else None
    if per_variant is not None and per_variant.is_file():
        paths = [per_variant]
    else:
        paths = [p for s in seeds if (p := Path(runs_dir) / variant / f"seed{s}" / "losses.csv").is_file()]
    curves = [c for p in paths if p.stat().st_size for c in read_losses(p)]
    curves = [c for c in curves if "step" in c and len(c["step"])]
    if not curves:
        return None
    steps = curves[0]["step"]
    for c in curves[1:]:
        steps = np.intersect1d(steps, c["step"])  # (T,)
    out = {"step": steps}
    for key in ("loss_cls", "loss_box"):
        out[key] = np.mean([c[key][np.isin(c["step"], steps)] for c in curves], axis=0)  # (S, T) -> (T,)
    return out


# ---------------------------------------------------------------------------------------------------
# comparisons


@dataclass(frozen=True)
class Comparison:
    ablation: Ablation
    metric: str
    paper_delta: float
    ours_delta: float  # NaN when a side was not run
    noise: float  # sqrt(std_a^2 + std_b^2); NaN when not run
    n_seeds: int

    @property
    def verdict(self) -> str:
        return verdict(self.paper_delta, self.ours_delta, self.noise, self.n_seeds)


def compare(ablation: Ablation, runs: Runs) -> list[Comparison]:
    """Paper delta vs our delta (treated - baseline) for each metric of an ablation."""
    (base, _), (treat, _) = runs.ours(ablation.baseline), runs.ours(ablation.treated)
    out = []
    for key in ablation.metrics:
        if base is None or treat is None:
            out.append(Comparison(ablation, key, ablation.paper_delta(key), math.nan, math.nan, 0))
            continue
        a, b = stat(base, key), stat(treat, key)
        noise = math.sqrt(a.std**2 + b.std**2)
        out.append(
            Comparison(ablation, key, ablation.paper_delta(key), b.mean - a.mean, noise, min(a.n, b.n))
        )
    return out


def ours_only(runs: Runs) -> list[tuple[str, float, float]]:
    """Table-4 variants (the headline included) that ran at an (alpha, beta) other than their paper cell."""
    out = []
    for row in TABLE4:
        sw = runs.switches.get(row.variant)
        if sw is not None and not paper.on_cell(row.config, sw["alpha"], sw["beta"]):
            out.append((row.variant, sw["alpha"], sw["beta"]))
    return out


# ---------------------------------------------------------------------------------------------------
# tables.md


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _pair_header(keys: tuple[str, ...]) -> list[str]:
    return [f"{LABELS.get(k, k)} {side}" for k in keys for side in ("paper", "ours")]


def _pair_cells(row: PaperRow, runs: Runs, keys: tuple[str, ...]) -> list[str]:
    ours, why = runs.ours(row)
    out = []
    for k in keys:
        out += [fmt_value(k, row.metrics.get(k)), stat(ours, k).fmt() if ours is not None else why]
    return out


def render_rows(rows: tuple[PaperRow, ...], runs: Runs, keys: tuple[str, ...] = AP_KEYS) -> str:
    body = [[row.label, f"`{row.variant}`", *_pair_cells(row, runs, keys)] for row in rows]
    return md_table(["Paper row", "Variant", *_pair_header(keys)], body)


def render_table1(runs: Runs) -> str:
    head = ["Paper row", "Params M head/full (paper)", "Variant", *_pair_header(AP_KEYS)]
    body = []
    for row in TABLES["Table 1"]:
        params = f"{row.metrics['head_params_m']:.2f} / {row.metrics['params_m']:.2f}"
        body.append([row.label, params, f"`{row.variant}`", *_pair_cells(row, runs, AP_KEYS)])
    note = "Parameter counts are the paper's (R-50, 256 channels); the metrics files do not record ours."
    return md_table(head, body) + "\n\n" + note


def render_table4(runs: Runs) -> str:
    body = []
    for row in TABLE4:
        variant = f"`{row.variant}`" + (" (headline)" if row.variant == HEADLINE else "")
        body.append(
            [f"{row.config['alpha']:g}", f"{row.config['beta']:g}", variant, *_pair_cells(row, runs, AP_KEYS)]
        )
    for variant, alpha, beta in ours_only(runs):
        ours = [c for k in AP_KEYS for c in (DASH, stat(runs.metrics[variant], k).fmt())]
        body.append([f"{alpha:g}", f"{beta:g}", f"`{variant}` (ours only: no paper cell)", *ours])
    return md_table(["α", "β", "Variant", *_pair_header(AP_KEYS)], body)


def render_comparisons(ablations: list[Ablation], runs: Runs) -> str:
    body = []
    for c in (c for a in ablations for c in compare(a, runs)):
        noise = "not measured (1 seed)" if c.n_seeds < 2 else "±" + fmt_value(c.metric, c.noise)
        noise = DASH if math.isnan(c.ours_delta) else noise
        ours = DASH if math.isnan(c.ours_delta) else fmt_value(c.metric, c.ours_delta, signed=True)
        paper_d = fmt_value(c.metric, c.paper_delta, signed=True)
        body.append([c.ablation.name, LABELS.get(c.metric, c.metric), paper_d, ours, noise, c.verdict])
    return md_table(["Ablation", "Metric", "Paper Δ", "Ours Δ", "Noise (seeds)", "Verdict"], body)


def _ablations_of(table: str) -> list[Ablation]:
    return [a for a in ABLATIONS if a.treated.table == table]


def render_setting(runs: Runs) -> str:
    values = {k: sorted({json.dumps(m["setting"][k]) for m in runs.metrics.values()}) for k in SETTING_KEYS}
    setting = {k: json.loads(v[0]) if len(v) == 1 else "varies by variant" for k, v in values.items()}
    scale = setting["img_scale"]
    scale = "x".join(map(str, scale)) if isinstance(scale, list) else scale
    ours = (
        f"dataset `{setting['dataset']}`, ResNet-{setting['depth']}, image scale {scale}, "
        f"{setting['epochs']} epochs, seeds {list(runs.seeds)}"
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
    return f'Produced by the runs listed under "Which runs make each row", measured with: {ours}.\n{verdict_line}'


def render_runs(runs: Runs) -> str:
    body = []
    for v, m in runs.metrics.items():
        sw = runs.switches[v]
        rows = "<br>".join(paper.paper_rows_for(v, alpha=sw["alpha"], beta=sw["beta"])) or DASH
        ab = f"α={sw['alpha']:g}, β={sw['beta']:g}" if sw["assigner"] == "tal" else "— (ATSS)"
        first = [f"`{v}`", rows, f"{sw['head']} / {sw['assigner']} / {sw['anchor']}", ab]
        for i, (seed, per_seed) in enumerate(m["seeds"].items()):
            cells = first if i == 0 else ["", "", "", ""]
            body.append([*cells, str(seed), f"`{per_seed.get('mlflow_run_id', DASH)}`"])
    head = ["Variant", "Paper rows", "head / assigner / anchor", "TAL α, β", "Seed", "MLflow run id"]
    return md_table(head, body)


VERDICT_RULE = (
    "Verdicts: same sign as the paper and |ours Δ| > 2 x noise, noise = sqrt(std_a² + std_b²) over seeds: "
    "*reproduces the paper's direction*; opposite sign beyond that: *contradicts the paper*; otherwise "
    "*inconclusive at the measured noise*. The noise is the spread of single runs, so it is conservative "
    "for a difference of means. With one seed only the direction is reported."
)

MLFLOW_HOWTO = """\
```
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false uv run mlflow server --backend-store-uri sqlite:///mlflow.db \\
    --host 127.0.0.1 --port 5000 --workers 1
```
Then open http://127.0.0.1:5000, experiment `tood-ablations`, and filter runs, e.g. `params.head = 'tood'`
or `tags.variant = 'parallel_atss'`; the run ids above open a run directly."""


def headline_note(runs: Runs) -> str:
    sw = runs.switches.get(HEADLINE)
    if sw is None or paper.on_cell(TABLE4_CHOSEN.config, sw["alpha"], sw["beta"]):
        return ""
    return (
        f"\n\nNote: the headline `{HEADLINE}` runs at α={sw['alpha']:g}, β={sw['beta']:g} (top-level params), "
        "while the paper's TOOD rows use α=1, β=6."
    )


def render_report(runs: Runs) -> str:
    t6_ap = "AP50/AP75 of Table 6 are not printed in the paper; they are cross-linked from Tables 1-3."
    counts = (
        "Box counts: the paper's are totals over 5k minival images; ours over our val set (compare signs)."
    )
    parts = [
        "# TOOD: paper vs this reproduction",
        f"Paper numbers: {paper.SOURCE}. Ours: mean ± std over seeds (a single value with one seed), "
        "COCO AP on the paper's 0-100 scale.\n\n" + render_setting(runs),
        VERDICT_RULE,
        "## Table 1: parallel head vs T-Head (ATSS)\n\n" + render_table1(runs),
        render_comparisons(_ablations_of("Table 1"), runs),
        "## Table 2: ATSS vs TAL (parallel head)\n\n" + render_rows(TABLES["Table 2"], runs),
        render_comparisons(_ablations_of("Table 2"), runs),
        "## Table 3: complete TOOD vs ATSS\n\n" + render_rows(TABLES["Table 3"], runs) + headline_note(runs),
        render_comparisons(_ablations_of("Table 3"), runs),
        "## Table 4: α, β of t = s^α·u^β\n\n" + render_table4(runs),
        render_comparisons(_ablations_of("Table 4"), runs),
        "## Table 6: head x assigner and task alignment\n\n" + render_rows(TABLE6, runs) + "\n\n" + t6_ap,
        render_rows(TABLE6, runs, ("AP", *ALIGN_KEYS)) + "\n\n" + counts + headline_note(runs),
        render_comparisons(_ablations_of("Table 6"), runs),
        "## Which runs make each row\n\n" + render_runs(runs),
        "## How to open the MLflow UI\n\n" + MLFLOW_HOWTO,
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------
# summary.json


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 4)


def build_summary(runs: Runs) -> dict[str, Any]:
    """The numbers of tables.md as plain JSON (NaN -> null), for `dvc metrics show`."""
    variants = {}
    for v, m in runs.metrics.items():
        stats = [stat(m, k) for k in METRIC_KEYS]
        variants[v] = {s.key: _num(s.mean) for s in stats} | {f"{s.key}_std": _num(s.std) for s in stats}
        variants[v]["n_seeds"] = len(m["seeds"])
    ablations = {}
    for a in ABLATIONS:
        ablations[a.key] = {
            c.metric: {"paper_delta": _num(c.paper_delta), "ours_delta": _num(c.ours_delta)}
            | {"noise": _num(c.noise) if c.n_seeds > 1 else None, "verdict": c.verdict}
            for c in compare(a, runs)
        }
    return {"paper": paper.SOURCE, "ap_scale": "0-100", "variants": variants, "ablations": ablations}


# ---------------------------------------------------------------------------------------------------
# figures (matplotlib Agg, object API: no pyplot global state)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _heatmap(
    ax, cells: dict[tuple[float, float], list[str]], values: dict, alphas, betas, title: str
) -> None:
    grid = np.full((len(alphas), len(betas)), np.nan)  # (alpha, beta)
    for (a, b), v in values.items():
        grid[alphas.index(a), betas.index(b)] = v
    ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    box = {"facecolor": "white", "alpha": 0.7, "linewidth": 0}
    for (a, b), texts in cells.items():
        ax.text(
            betas.index(b), alphas.index(a), "\n".join(texts), ha="center", va="center", fontsize=8, bbox=box
        )
    ax.set_xticks(range(len(betas)), [f"β={b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"α={a:g}" for a in alphas])
    ax.set_title(title)


def plot_alpha_beta(runs: Runs, path: Path) -> None:
    """Table 4: paper AP per (alpha, beta) cell beside ours (ours-only points marked '*')."""
    extra = ours_only(runs)
    alphas = sorted({r.config["alpha"] for r in TABLE4} | {a for _, a, _ in extra})
    betas = sorted({r.config["beta"] for r in TABLE4} | {b for _, _, b in extra})
    paper_vals = {(r.config["alpha"], r.config["beta"]): r.metrics["AP"] for r in TABLE4}
    ours_vals, ours_text = {}, {}
    for r in TABLE4:
        m, _ = runs.ours(r)
        cell = (r.config["alpha"], r.config["beta"])
        ours_vals[cell] = stat(m, "AP").mean if m is not None else math.nan
        ours_text[cell] = [stat(m, "AP").fmt() if m is not None else "not run"]
    for variant, a, b in extra:
        ours_vals.setdefault((a, b), stat(runs.metrics[variant], "AP").mean)
        ours_text.setdefault((a, b), []).append(f"*{variant}: {stat(runs.metrics[variant], 'AP').fmt()}")
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 2)
    _heatmap(axes[0], {k: [f"{v:.1f}"] for k, v in paper_vals.items()}, paper_vals, alphas, betas, "paper AP")
    _heatmap(axes[1], ours_text, ours_vals, alphas, betas, "ours AP (* = ours only)")
    _save(fig, path)


def plot_ablations(runs: Runs, path: Path) -> None:
    """Paper AP delta vs ours per ablation (each variant pair once), ours with +-noise error bars."""
    seen, rows = set(), []
    for a in ABLATIONS:
        pair = (a.baseline.variant, a.treated.variant)  # Table 6's AP deltas repeat Tables 1-3
        if pair not in seen:
            seen.add(pair)
            rows.append(compare(a, runs)[0])
    y = np.arange(len(rows))
    fig = Figure(figsize=(9, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    ax.barh(y - 0.2, [c.paper_delta for c in rows], height=0.4, label="paper")
    err = [c.noise if c.n_seeds > 1 else 0.0 for c in rows]
    ax.barh(y + 0.2, [c.ours_delta for c in rows], height=0.4, xerr=err, label="ours (± seed noise)")
    ax.set_yticks(y, [f"{c.ablation.treated.table}: {c.ablation.name}" for c in rows], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ AP (0-100 scale)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_losses(runs: Runs, runs_dir: Path, path: Path, curves_dir: Path | None = None) -> list[str]:
    """Training loss curves (mean over seeds), cls and box; returns the variants with no losses.csv."""
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2)
    missing = []
    for v, m in runs.metrics.items():
        curve = mean_loss_curve(runs_dir, v, list(m["seeds"]), curves_dir)
        if curve is None:
            missing.append(v)
            continue
        for ax, key in zip(axes, ("loss_cls", "loss_box")):
            ax.plot(curve["step"], curve[key], lw=1, label=v)
    for ax, key in zip(axes, ("loss_cls", "loss_box")):
        ax.set_title(f"{key} (mean over seeds)")
        ax.set_xlabel("step")
    if len(missing) < len(runs.metrics):
        axes[1].legend(fontsize=7, loc="upper right", ncol=2)
    _save(fig, path)
    return missing


def plot_alignment(runs: Runs, path: Path) -> None:
    """Table 6: PCC (top-50) and IoU (top-10), paper vs ours (± std over seeds)."""
    fig = Figure(figsize=(10, 3.8))
    x = np.arange(len(TABLE6))
    for ax, key in zip(fig.subplots(1, 2), ("pcc_top50", "iou_top10")):
        ours = [runs.ours(r)[0] for r in TABLE6]
        stats = [stat(m, key) if m is not None else Stat(key, math.nan, 0.0, 1) for m in ours]
        ax.bar(x - 0.2, [r.metrics[key] for r in TABLE6], width=0.4, label="paper")
        err = [s.std if s.n > 1 else 0.0 for s in stats]
        ax.bar(x + 0.2, [s.mean for s in stats], width=0.4, yerr=err, label="ours")
        ax.set_xticks(x, [r.label for r in TABLE6], fontsize=7, rotation=15)
        ax.set_title(LABELS[key])
        ax.legend(fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# the stage


FIGURES = ("alpha_beta.png", "ablations.png", "losses.png", "alignment.png")


def render_figures(figures_rel: str, no_losses: list[str]) -> str:
    links = "\n".join(f"![{name[:-4]}]({figures_rel}/{name})" for name in FIGURES)
    text = (
        "## Figures\n\nα/β cells (paper vs ours), ablation deltas (paper vs ours, ± seed noise), training "
        "losses (mean over seeds) and Table 6's alignment metrics.\n\n" + links
    )
    if no_losses:
        text += f"\n\nNo loss curve found (not in losses.png) for: {', '.join(f'`{v}`' for v in no_losses)}."
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
    plot_alpha_beta(runs, figures_dir / "alpha_beta.png")
    plot_ablations(runs, figures_dir / "ablations.png")
    no_losses = plot_losses(runs, Path(runs_dir), figures_dir / "losses.png", curves_dir)
    plot_alignment(runs, figures_dir / "alignment.png")
    figures_rel = Path(os.path.relpath(figures_dir, out.parent)).as_posix()
    out.write_text(render_report(runs) + "\n" + render_figures(figures_rel, no_losses) + "\n")
    summary_path.write_text(json.dumps(build_summary(runs), indent=2) + "\n")
