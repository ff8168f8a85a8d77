"""The PNG figures of the `tabulate` stage (matplotlib Agg, object API: no pyplot global state).

    alpha_beta.png   Table 4: paper AP per (alpha, beta) cell beside ours, each panel with its colour bar
    ablations.png    each ablation's AP delta: the paper's (COCO) and ours with its 95% CI on separate axes
    losses.png       training losses per variant, one distinct colour each, the ATSS -> TAL switch marked
    alignment.png    Table 6: PCC (top-50) and IoU (top-10), paper vs ours

Loss curves: runs/<variant>/seed<k>/losses.csv (step,epoch,lr,loss,loss_cls,loss_box[,loss_ctr]) or
<curves_dir>/<variant>.csv (the same columns, with a `seed` column when it holds several seeds).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tood.config import HEADLINE
from tood.report.paper import ABLATIONS, EXTENDED_VARIANTS, TABLE4, TABLE6, TOPK_ROWS
from tood.report.results import Comparison, Runs, compare, ours_only, stat

FIGURES = ("alpha_beta.png", "ablations.png", "losses.png", "alignment.png")
LOSS_KEYS = ("loss_cls", "loss_box")


# ---------------------------------------------------------------------------------------------------
# loss curves


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
    """Mean over seeds of loss_cls / loss_box on the steps every seed logged (+ their epoch); None if none.

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
    if "epoch" in curves[0]:
        out["epoch"] = curves[0]["epoch"][np.isin(curves[0]["step"], steps)]  # (T,) same for every seed
    for key in LOSS_KEYS:
        out[key] = np.mean([c[key][np.isin(c["step"], steps)] for c in curves], axis=0)  # (S, T) -> (T,)
    return out


def switch_step(curve: dict[str, np.ndarray], warmup_epochs: int) -> float | None:
    """Where a TAL run leaves the ATSS warm-up: midway between the last logged step of epoch
    warmup_epochs - 1 and the first of epoch warmup_epochs (0-based epochs); None if not inside the curve."""
    if "epoch" not in curve or warmup_epochs <= 0:
        return None
    before, after = (
        curve["step"][curve["epoch"] < warmup_epochs],
        curve["step"][curve["epoch"] >= warmup_epochs],
    )
    if not len(before) or not len(after):
        return None
    return float(before.max() + after.min()) / 2


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """n distinct colours: tab10 up to 10 (the most separable set), else tab20's ten strong shades first,
    then its ten light ones (distinct up to 20, but a light shade is easily taken for its strong pair)."""
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return [cmap(order[i % 20]) for i in range(n)]


HEADLINE_COLOUR = "black"  # the headline `tood` is in both rows of losses.png, in the same colour


def loss_groups(variants: list[str]) -> list[tuple[str, list[str]]]:
    """losses.png's rows: the main variants, then Table 4's alpha/beta cells beside the headline (their
    reference cell). Twelve curves on one axes were unreadable (issue 18); at most ~7 per row are not."""
    cells = {r.variant for r in TABLE4} - {HEADLINE}
    topk = {r.variant for r in TOPK_ROWS} - {HEADLINE}
    schemes = EXTENDED_VARIANTS - topk  # issue 20's Table 2 rows (none in the default grid)
    main = [v for v in variants if v not in cells | EXTENDED_VARIANTS]
    table4 = [v for v in variants if v in cells]
    groups = [("main variants", main)]
    if table4:
        groups.append(("Table 4 α/β cells (headline for reference)", [HEADLINE, *table4]))
    if any(v in schemes for v in variants):
        reference = [v for v in ("parallel_atss", "parallel_tal") if v in variants]
        groups.append(
            (
                "Table 2 schemes, parallel head (ATSS, TAL for reference)",
                [*reference, *(v for v in variants if v in schemes)],
            )
        )
    if any(v in topk for v in variants):
        groups.append(
            ("top-m of TAL (headline m=13 for reference)", [HEADLINE, *(v for v in variants if v in topk)])
        )
    return [(title, vs) for title, vs in groups if vs]


def variant_colours(variants: list[str]) -> dict[str, Any]:
    """The headline in black, the others in distinct palette colours (one figure row's variants)."""
    others = [v for v in variants if v != HEADLINE]
    return {HEADLINE: HEADLINE_COLOUR, **dict(zip(others, palette(len(others))))}


def loss_figure(runs: Runs, runs_dir: Path, curves_dir: Path | None = None) -> tuple[Figure, list[str]]:
    """Training loss curves (mean over seeds), cls and box, one row per loss_groups() group; returns the
    figure and the variants with no loss curve."""
    curves = {v: mean_loss_curve(runs_dir, v, list(m["seeds"]), curves_dir) for v, m in runs.metrics.items()}
    missing = [v for v, c in curves.items() if c is None]
    groups = loss_groups([v for v, c in curves.items() if c is not None]) or [("", [])]
    fig = Figure(figsize=(12, 4.2 * len(groups)))
    axes = np.atleast_2d(fig.subplots(len(groups), 2))  # (rows, 2)
    for row, (title, variants) in zip(axes, groups):
        switches = {}
        for v, colour in variant_colours(variants).items():
            if v not in variants:
                continue
            for ax, key in zip(row, LOSS_KEYS):
                ax.plot(curves[v]["step"], curves[v][key], lw=1, color=colour, label=v)
            sw = runs.switches[v]
            step = switch_step(curves[v], sw["warmup_epochs"]) if sw["assigner"] == "tal" else None
            if step is not None:
                switches.setdefault((step, sw["warmup_epochs"]), []).append(v)
        _mark_switches(row, switches)
        for ax, key in zip(row, LOSS_KEYS):
            ax.set_title(f"{title}: {key} (mean over seeds)" if title else key, fontsize=9)
            ax.set_xlabel("step")
        if variants:  # outside the axes: the curves fill the whole plot area
            row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig, missing


def _mark_switches(row, switches: dict[tuple[float, int], list[str]]) -> None:
    """A dotted line at each ATSS -> TAL switch, labelled on the side of it with more room."""
    for (step, epochs), _ in sorted(switches.items()):
        for ax in row:
            lo, hi = ax.get_xlim()
            side = 1 if step - lo < (hi - lo) / 2 else -1
            ax.axvline(step, color="0.3", ls=":", lw=1.2)
            ax.annotate(
                f"ATSS → TAL\n(after epoch {epochs};\nfocal before, task-aligned after)", (step, 1),
                xycoords=("data", "axes fraction"), xytext=(3 * side, -3), textcoords="offset points",
                va="top", ha="left" if side > 0 else "right", fontsize=7, color="0.3",
            )  # fmt: skip


def plot_losses(runs: Runs, runs_dir: Path, path: Path, curves_dir: Path | None = None) -> list[str]:
    """losses.png (see loss_figure); returns the variants with no loss curve."""
    fig, missing = loss_figure(runs, runs_dir, curves_dir)
    _save(fig, path)
    return missing


# ---------------------------------------------------------------------------------------------------
# paper vs ours


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _heatmap(ax, cells: dict, values: dict, alphas: list, betas: list, title: str, label: str) -> None:
    grid = np.full((len(alphas), len(betas)), np.nan)  # (alpha, beta)
    for (a, b), v in values.items():
        grid[alphas.index(a), betas.index(b)] = v
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.figure.colorbar(image, ax=ax, label=label)
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
        ours_text[cell] = [f"{stat(m, 'AP').fmt()} (n={len(runs.seeds[r.variant])})" if m else "not run"]
    for variant, a, b in extra:
        ours_vals.setdefault((a, b), stat(runs.metrics[variant], "AP").mean)
        ours_text.setdefault((a, b), []).append(f"*{variant}: {stat(runs.metrics[variant], 'AP').fmt()}")
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 2)
    paper_text = {k: [f"{v:.1f}"] for k, v in paper_vals.items()}
    _heatmap(axes[0], paper_text, paper_vals, alphas, betas, "paper AP (COCO, R-50)", "paper AP")
    _heatmap(axes[1], ours_text, ours_vals, alphas, betas, "ours AP (* = ours only)", "our AP (own scale)")
    _save(fig, path)


def _ablation_rows(runs: Runs) -> list[Comparison]:
    """The AP comparison of each distinct (baseline, treated) pair: Table 6's AP deltas repeat Tables 1-3."""
    seen, rows = set(), []
    for a in ABLATIONS:
        pair = (a.baseline.variant, a.treated.variant)
        if pair not in seen:
            seen.add(pair)
            rows.append(compare(a, runs)[0])
    return rows


def plot_ablations(runs: Runs, path: Path) -> Figure:
    """AP delta per ablation: the paper's (left) and ours with its 95% CI (right), on separate axes and scales."""
    rows = _ablation_rows(runs)
    y = np.arange(len(rows))
    datasets = sorted({m["setting"]["dataset"] for m in runs.metrics.values()})
    fig = Figure(figsize=(12, 0.45 * len(rows) + 1.8))
    ax_paper, ax_ours = fig.subplots(1, 2, sharey=True)
    ax_paper.barh(y, [c.paper_delta for c in rows], height=0.6, color="tab:gray")
    ax_paper.set_xlabel("paper Δ AP (COCO val2017, ResNet-50)")
    measured = np.array([not math.isnan(c.se) for c in rows])  # (R,)
    ours = np.array([0.0 if math.isnan(c.delta) else c.delta for c in rows])  # (R,)
    half = np.array([c.test.ci95[1] - c.test.delta if c.test is not None else np.nan for c in rows])  # (R,)
    ax_ours.barh(
        y[measured], ours[measured], height=0.6, xerr=half[measured], capsize=3, label="95% CI (Welch t)"
    )
    ax_ours.barh(
        y[~measured],
        ours[~measured],
        height=0.6,
        color="tab:orange",
        label="no CI: fewer than 2 seeds a side",
    )
    for i, c in enumerate(rows):
        note = "not run" if math.isnan(c.delta) else None if measured[i] else f"n={c.n_a}/{c.n_b}"
        if note:  # beyond the bar's end, on whichever side that is
            side = 1 if ours[i] >= 0 else -1
            ax_ours.annotate(
                note, (ours[i], i), xytext=(4 * side, 0), textcoords="offset points", va="center",
                ha="left" if side > 0 else "right", fontsize=7,
            )  # fmt: skip
    ax_ours.margins(x=0.2)  # room for those notes inside the axes (they were clipped at its edge)
    # above the axes: every corner inside may hold a bar (it covered the last one, issue 18)
    ax_ours.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, frameon=False)
    ax_ours.set_xlabel(f"our Δ AP, 95% CI ({', '.join(datasets)}; our setting, own scale)")
    ax_paper.set_yticks(y, [f"{c.ablation.treated.table}: {c.ablation.name}" for c in rows], fontsize=8)
    for ax in (ax_paper, ax_ours):
        ax.axvline(0, color="k", lw=0.8)
    ax_paper.invert_yaxis()
    _save(fig, path)
    return fig


def plot_alignment(runs: Runs, path: Path) -> Figure:
    """Table 6: PCC (top-50) and IoU (top-10), paper vs ours (± std over seeds)."""
    fig = Figure(figsize=(10, 4.2))
    x = np.arange(len(TABLE6))
    datasets = ", ".join(sorted({m["setting"]["dataset"] for m in runs.metrics.values()}))
    axes = fig.subplots(1, 2)
    metrics = (
        ("pcc_top50", "PCC of cls and loc rankings (top-50)"),
        ("iou_top10", "mean IoU of the top-10 boxes"),
    )
    for ax, (key, label) in zip(axes, metrics):
        stats = [stat(m, key) if (m := runs.ours(r)[0]) is not None else None for r in TABLE6]
        ax.bar(x - 0.2, [r.metrics[key] for r in TABLE6], width=0.4, label="paper (COCO)")
        means = [s.mean if s is not None else math.nan for s in stats]
        err = [s.std if s is not None and s.n > 1 else 0.0 for s in stats]
        ax.bar(x + 0.2, means, width=0.4, yerr=err, label=f"ours ({datasets}; ± std over seeds)")
        ax.set_xticks(x, [r.label for r in TABLE6], fontsize=7, rotation=15)
        ax.set_ylabel(label)
    # one legend above the panels: with paired bars in every slot no corner inside is free (issue 18)
    axes[0].legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=2, frameon=False)
    fig.suptitle("Table 6: alignment of the top predictions", fontsize=10)
    _save(fig, path)
    return fig


def write_figures(runs: Runs, runs_dir: Path, figures_dir: Path, curves_dir: Path | None = None) -> list[str]:
    """Every figure of FIGURES under figures_dir; returns the variants without a loss curve."""
    plot_alpha_beta(runs, figures_dir / "alpha_beta.png")
    plot_ablations(runs, figures_dir / "ablations.png")
    no_losses = plot_losses(runs, runs_dir, figures_dir / "losses.png", curves_dir)
    plot_alignment(runs, figures_dir / "alignment.png")
    return no_losses
