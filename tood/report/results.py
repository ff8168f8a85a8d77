"""What the grid measured and how each paper ablation compares: the inputs of tables.md and the figures.

Inputs (one explicit list of variants from params.yaml, never a glob):
    reports/metrics/<variant>.json   evaluate output: "seeds" ({seed: {metric: value, "mlflow_run_id"}}),
                                     "setting" (dataset, depth, switches) and "complexity" (tood.report.complexity)

Every statistic is computed here from the per-seed values (the file's mean/std are the same numbers).
Our COCO APs are stored in [0, 1] and shown on the paper's 0-100 scale.

Verdict of an ablation (treated - baseline) on one metric: tood.report.stats (Welch's t and its 95% CI,
Holm over the comparison's family of claims, paper.FAMILIES; TOST within stats.margin_ap for "equivalent").
Fewer than 2 seeds on a side: no variance, no test ("not measured").
Seeds are not paired across variants. The same seed gives two variants the same data order, but training
is chaotic (issue 10: one variant, one seed, two machines: losses drift apart after step 4 and AP moves
by ~1); bench.variance measured pairing by seed and found it helps one contrast of five, so Welch's
unpaired test, which allows unequal seed counts, judges every one.

Replications (`stats.replications`): folders holding some variants' metrics measured again in another
setting (precision, CPU, seeds) with the grid's data, model and budget. A contrast whose two sides a folder
holds is judged again on that folder's seeds, in its family, the family's other members taken from the
folder where it holds both of their sides and from the grid otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tood.config import (
    ConfigError,
    StatsConfig,
    load_stats_config,
    resolve_repo_path,
    resolve_run_config,
    variant_names,
)
from tood.report import paper, stats
from tood.report.paper import TABLE4, Ablation, PaperRow
from tood.report.stats import Judgement, Welch

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCO AP in [0, 1] in the metrics files
# = tood.engine.evaluate.ALIGN_KEYS
ALIGN_KEYS = ("pcc_top50", "iou_top10", "n_correct", "n_redundant", "n_error")
METRIC_KEYS = AP_KEYS + ALIGN_KEYS
SETTING_KEYS = ("dataset", "depth", "img_scale", "epochs")
SWITCHES = ("head", "assigner", "anchor", "alpha", "beta", "topk", "tap", "cls_target")  # checked vs params
COMPLEXITY_KEYS = ("head_params", "params", "all_params", "head_gflops", "gflops")
VERDICTS = (*stats.VERDICTS, "not run", "no paper number")
DASH = "—"
UNRECORDED = "not recorded (metrics files from before issue 16)"


class ReportError(RuntimeError):
    """Inputs of the report are missing, malformed or stale; the message names the file and the variant."""


# ---------------------------------------------------------------------------------------------------
# one metric of one variant


def fmt_value(key: str, x: float | None, signed: bool = False) -> str:
    """A value as the tables show it: AP 1 decimal, PCC/IoU 3, box counts whole (1 decimal for a mean)."""
    if x is None:
        return DASH
    if math.isnan(x):
        return "n/a"
    if key in AP_KEYS:
        text = f"{x:.1f}"
    elif key in ("pcc_top50", "iou_top10"):
        text = f"{x:.3f}"
    else:
        text = f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"
    if float(text.replace(",", "")) == 0:
        return text.lstrip("-")  # a value that shows as zero has no sign: never "-0.0"
    return f"+{text}" if signed and x > 0 else text


def fmt_ci(key: str, delta: float, ci: tuple[float, float]) -> str:
    """Δ with its confidence interval, e.g. "-1.5 [-3.0, +0.1]"; the interval "n/a" when not measured."""
    if math.isnan(ci[0]):
        return f"{fmt_value(key, delta, signed=True)} [n/a]"
    lo, hi = (fmt_value(key, x, signed=True) for x in ci)
    return f"{fmt_value(key, delta, signed=True)} [{lo}, {hi}]"


def displays_as_zero(key: str, x: float) -> bool:
    return float(fmt_value(key, x).replace(",", "")) == 0


@dataclass(frozen=True)
class Stat:
    """One metric of one variant on the display scale (AP x100): its defined per-seed values in seed order."""

    key: str
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def var(self) -> float:
        """Sample variance (ddof=1); NaN below two seeds."""
        if self.n < 2:
            return math.nan
        return sum((v - self.mean) ** 2 for v in self.values) / (self.n - 1)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def fmt(self) -> str:
        """mean ± std with two or more seeds, the single value with one, n/a with none."""
        if self.n > 1:
            return f"{fmt_value(self.key, self.mean)} ± {fmt_value(self.key, self.std)}"
        return fmt_value(self.key, self.mean)

    def fmt_seeds(self) -> str:
        return ", ".join(fmt_value(self.key, v) for v in self.values) or "n/a"


def stat(metrics: dict[str, Any], key: str) -> Stat:
    """Per-seed values of one metric; COCO's -1 (no objects of that size) and null are left out."""
    scale = 100.0 if key in AP_KEYS else 1.0
    values = []
    for per_seed in metrics["seeds"].values():
        v = per_seed.get(key)
        if v is None or (key in AP_KEYS and v < 0) or not math.isfinite(v):
            continue
        values.append(float(v) * scale)
    return Stat(key, tuple(values))


# ---------------------------------------------------------------------------------------------------
# what was run


@dataclass(frozen=True)
class Runs:
    """What was measured: metrics file per listed variant, each variant's resolved switches and seeds."""

    metrics: dict[str, dict[str, Any]]  # variant -> metrics JSON
    # variant -> {head, assigner, anchor, alpha, beta, warmup_epochs; issue 20: topk, tap, cls_target, epochs,
    # schedule (its epochs / the shared train.epochs)}
    switches: dict[str, dict[str, Any]]
    seeds: dict[str, tuple[int, ...]]  # variant -> its seeds (its own `seeds:` or the top-level list)
    trial: bool = False  # params.yaml `trial: true`: a try-out whose tables support no conclusions
    stats: StatsConfig = field(
        default_factory=StatsConfig
    )  # params.yaml `stats:`: alpha, margin, seed-plan targets
    replications: tuple[Replication, ...] = ()  # `stats.replications`, in the order listed
    replications_skipped: tuple[str, ...] = ()  # metrics there that no longer match the grid, and why

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


def trial_flag(params: dict[str, Any], where: str = "params.yaml") -> bool:
    """The top-level `trial` key (absent = false): the run only tries the pipeline out."""
    value = params.get("trial", False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: trial: {value!r} should be true or false")
    return value


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
    switches, seeds = {}, {}
    shared_epochs = resolve_run_config(
        params, variants[0], where
    ).train.epochs  # the headline has no schedule
    for v in variants:
        cfg = resolve_run_config(params, v, where)
        model, assign = cfg.model, cfg.assign
        switches[v] = {"head": model.head, "assigner": assign.assigner, "anchor": model.anchor}
        switches[v] |= {"alpha": assign.alpha, "beta": assign.beta, "warmup_epochs": assign.warmup_epochs}
        switches[v] |= {"topk": assign.topk, "tap": model.tap, "cls_target": cfg.loss.cls_target}
        switches[v] |= {"epochs": cfg.train.epochs, "schedule": cfg.train.epochs / shared_epochs}
        seeds[v] = cfg.seeds
    metrics = {v: _read_metrics(paths[v], v, switches[v], seeds[v], where) for v in variants}
    cfg = load_stats_config(params, where)
    replications, skipped = [], []
    for folder in cfg.replications:
        rep, left_out = _read_replication(folder, metrics, switches, where)
        replications.append(rep)
        skipped += left_out
    return Runs(metrics, switches, seeds, trial_flag(params, where), cfg, tuple(replications), tuple(skipped))


@dataclass(frozen=True)
class Replication:
    """One `stats.replications` folder: some of the grid's variants measured again in one other setting."""

    folder: str  # as listed in params.yaml
    hardware: str  # the one precision and device its runs record, e.g. "fp32 on Intel(R) Xeon(R) Processor"
    metrics: dict[str, dict[str, Any]]  # variant -> metrics JSON, each with its own seeds

    @property
    def label(self) -> str:
        return f"{self.hardware} (`{self.folder}`)"


def _read_replication(
    folder: str, metrics: dict[str, dict], switches: dict, where: str
) -> tuple[Replication, list[str]]:
    """Read one `stats.replications` folder: every `<variant>.json` there of a variant the grid lists, measured
    with the grid's switches and setting (any seeds); why any such file was left out (after a change of
    params.yaml it no longer matches the grid). Its runs must record one precision and one device."""
    path = resolve_repo_path(folder)
    if not path.is_dir():
        raise ReportError(f"{where}: stats.replications: {folder!r} is not a folder")
    checked, skipped = {}, []
    for v, sw in switches.items():
        file = path / f"{v}.json"
        if not file.is_file():
            continue
        try:
            m = _read_metrics(file, v, sw, None, where)
        except ReportError as e:
            skipped.append(f"`{v}` in {folder}: {str(e).split(': ', 1)[-1]}")
            continue
        other = [k for k in SETTING_KEYS if m["setting"][k] != metrics[v]["setting"][k]]
        if other:
            skipped.append(f"`{v}` in {folder}: measured with another {', '.join(other)} than the grid")
            continue
        checked[v] = m
    combos = {(r.get("precision"), r.get("device")) for m in checked.values() for r in m["seeds"].values()}
    if len(combos) > 1:
        raise ReportError(
            f"{where}: stats.replications: {folder!r} mixes (precision, device) {sorted(combos, key=str)}: "
            "keep one setting per folder"
        )
    return Replication(folder, hardware_text(*checked.values()) if checked else "empty", checked), skipped


def hardware_text(*metrics: dict[str, Any]) -> str:
    """e.g. "bf16 on Intel(R) Xeon(R) Processor", from the seeds' precision/device records."""
    combos = sorted(
        {(r.get("precision"), r.get("device")) for m in metrics for r in m["seeds"].values()}, key=str
    )
    if all(p is None and d is None for p, d in combos):
        return UNRECORDED
    return "; ".join(f"{p or '?'} on {d or 'an unrecorded device'}" for p, d in combos)


def _read_metrics(
    path: Path, variant: str, switches: dict, seeds: tuple[int, ...] | None, where: str
) -> dict:
    """A metrics file checked against what params.yaml resolves for its variant (seeds: None, any seeds)."""
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} (variant '{variant}'): not valid JSON: {e}") from None
    stale = "the metrics are stale, re-run `dvc repro`"
    absent = [k for k in ("seeds", "setting", "complexity") if k not in m]
    absent += [f"setting.{k}" for k in SETTING_KEYS if k not in m.get("setting", {})]
    absent += [f"complexity.{c}" for c in ("run", "paper_config") if c not in m.get("complexity", {})]
    absent += [f"seeds.{s}.{k}" for s, r in m.get("seeds", {}).items() for k in METRIC_KEYS if k not in r]
    if absent:
        raise ReportError(f"{path} (variant '{variant}'): missing key(s) {absent[:6]}; {stale}")
    if seeds is not None and sorted(m["seeds"]) != sorted(str(s) for s in seeds):
        raise ReportError(
            f"{path} (variant '{variant}'): seeds {sorted(m['seeds'])} but {where} gives this variant "
            f"{list(seeds)}; {stale}"
        )
    for k in SWITCHES:
        got, want = m["setting"].get(k, switches[k]), switches[k]
        if got != want and not (isinstance(want, float) and math.isclose(float(got), want)):
            raise ReportError(
                f"{path} (variant '{variant}'): measured with {k}={got} but {where} resolves {k}={want}; "
                f"{stale}"
            )
    return m


# ---------------------------------------------------------------------------------------------------
# comparisons: every test, CI and verdict comes from tood.report.stats


def same_test(a: Ablation, b: Ablation) -> bool:
    """Whether two ablations compare the same two variants (and so, on one metric, are one test)."""
    return (a.baseline.variant, a.treated.variant) == (b.baseline.variant, b.treated.variant)


def family_of(ablation: Ablation, metric: str) -> tuple[str, list[tuple[Ablation, str]]]:
    """The family (paper.FAMILIES) a comparison is judged in and its members; a comparison repeating a
    family member's test (same two variants, same metric) takes that family. One outside every family is a
    family of its own."""
    by_key = {a.key: a for a in (*paper.ABLATIONS, *paper.EXTENDED_ABLATIONS)}
    for name, members in paper.FAMILIES.items():
        ablations = [(by_key[k], m) for k, m in members]
        if any(m == metric and same_test(a, ablation) for a, m in ablations):
            return name, ablations
    return ablation.key, [(ablation, metric)]


def margin_for(metric: str, cfg: StatsConfig) -> float | None:
    """The equivalence margin: `stats.margin_ap` for AP; none for the alignment metrics (no declared unit)."""
    return cfg.margin_ap if metric == "AP" else None


def welch_of(ablation: Ablation, metric: str, runs: Runs) -> Welch | None:
    """The t-test of one comparison on the grid's seeds; None when a side has no run."""
    (base, _), (treated, _) = runs.ours(ablation.baseline), runs.ours(ablation.treated)
    if base is None or treated is None:
        return None
    a, b = stat(base, metric), stat(treated, metric)
    return stats.welch(a.values, b.values, margin_for(metric, runs.stats))


def judge(ablation: Ablation, metric: str, runs: Runs, substitute: dict | None = None) -> Judgement | None:
    """The comparison judged in its family (Holm over the family's measured members); None when not run.

    substitute: {(ablation key, metric): Welch} replacing members' tests: a replication's (`replicate`)."""
    family, members = family_of(ablation, metric)
    tests, deltas = {}, {}
    for a, m in members:
        t = (substitute or {}).get((a.key, m)) or welch_of(a, m, runs)
        if t is not None:
            tests[(a.key, m)], deltas[(a.key, m)] = t, a.paper_delta(m)
    own = next(((a.key, m) for a, m in members if m == metric and same_test(a, ablation)), None)
    if own not in tests:
        return None
    cfg = runs.stats
    return stats.judge_family(tests, deltas, family, cfg.alpha, cfg.power)[own]


@dataclass(frozen=True)
class Comparison:
    ablation: Ablation
    metric: str
    paper_delta: float
    base: Stat | None  # None when that side was not run
    treated: Stat | None
    judgement: Judgement | None = None  # None when a side was not run

    @property
    def delta(self) -> float:
        return math.nan if self.base is None or self.treated is None else self.treated.mean - self.base.mean

    @property
    def test(self) -> Welch | None:
        return None if self.judgement is None else self.judgement.test

    @property
    def se(self) -> float:
        return math.nan if self.test is None else self.test.se

    @property
    def n_a(self) -> int:
        return self.base.n if self.base is not None else 0

    @property
    def n_b(self) -> int:
        return self.treated.n if self.treated is not None else 0

    @property
    def verdict(self) -> str:
        """One of VERDICTS: "not run" when a side has no run, "no paper number" when the paper gives no
        direction, else the family's verdict (tood.report.stats)."""
        if self.judgement is None:
            return "not run"
        if math.isnan(self.paper_delta) or self.paper_delta == 0:
            return "no paper number"
        return self.judgement.verdict


def compare(ablation: Ablation, runs: Runs) -> list[Comparison]:
    """Paper delta vs our delta (treated - baseline) for each metric of an ablation, judged in its family."""
    (base, _), (treat, _) = runs.ours(ablation.baseline), runs.ours(ablation.treated)
    out = []
    for key in ablation.metrics:
        a = stat(base, key) if base is not None else None
        b = stat(treat, key) if treat is not None else None
        j = judge(ablation, key, runs) if a is not None and b is not None else None
        out.append(Comparison(ablation, key, ablation.paper_delta(key), a, b, j))
    return out


def _sides_in(ablation: Ablation, rep: Replication, runs: Runs) -> tuple[dict, dict] | None:
    """The replication's metrics of both sides of an ablation the grid runs, or None."""
    if runs.ours(ablation.baseline)[0] is None or runs.ours(ablation.treated)[0] is None:
        return None
    base, treated = rep.metrics.get(ablation.baseline.variant), rep.metrics.get(ablation.treated.variant)
    return None if base is None or treated is None else (base, treated)


def replicate(ablation: Ablation, runs: Runs) -> list[tuple[Replication, list[Comparison]]]:
    """The ablation's comparisons judged again in each `stats.replications` folder holding both its sides:
    on the folder's seeds, in the same family, whose members the folder holds both sides of are its tests
    too (the rest as in the grid)."""
    out = []
    for rep in runs.replications:
        sides = _sides_in(ablation, rep, runs)
        if sides is None:
            continue
        comps = []
        for metric in ablation.metrics:
            substitute = {}
            for member, m in family_of(ablation, metric)[1]:
                pair = _sides_in(member, rep, runs)
                if pair is not None:
                    a, b = stat(pair[0], m), stat(pair[1], m)
                    substitute[(member.key, m)] = stats.welch(a.values, b.values, margin_for(m, runs.stats))
            base, treated = stat(sides[0], metric), stat(sides[1], metric)
            judgement = judge(ablation, metric, runs, substitute)
            comps.append(Comparison(ablation, metric, ablation.paper_delta(metric), base, treated, judgement))
        out.append((rep, comps))
    return out


def replicated(ablations: list[Ablation], runs: Runs) -> list[tuple[Replication, list[Comparison]]]:
    """Each `stats.replications` folder holding some of these ablations, with their comparisons judged there
    (`replicate`), in the order of the ablations."""
    by_folder: dict[str, list[Comparison]] = {rep.folder: [] for rep in runs.replications}
    for a in ablations:
        for rep, comps in replicate(a, runs):
            by_folder[rep.folder] += comps
    return [(rep, by_folder[rep.folder]) for rep in runs.replications if by_folder[rep.folder]]


def comparison_json(c: Comparison) -> dict[str, Any]:
    """One comparison's numbers for summary.json: Δ, SE, df, CI, p, Holm p, TOST, n, seed plan, verdict."""
    out = {"paper_delta": json_num(c.paper_delta), "delta": json_num(c.delta), "se": json_num(c.se)}
    out |= {"n_a": c.n_a, "n_b": c.n_b, "verdict": c.verdict}
    if c.judgement is not None:
        t, j = c.test, c.judgement
        out |= {
            "df": json_num(t.df),
            "ci95": [json_num(x) for x in t.ci95],
            "ci90": [json_num(x) for x in t.ci90],
        }
        out |= {
            "p": json_num(t.p),
            "p_holm": json_num(j.p_holm),
            "p_tost": json_num(t.p_tost),
            "p_tost_holm": json_num(j.p_tost_holm),
        }
        out |= {"family": j.family, "family_size": j.family_size, "seeds_for_power": _plan(j.seeds_power)}
    return out


def _plan(n: float) -> int | str | None:
    return None if math.isnan(n) else "more than 1000" if math.isinf(n) else int(n)


def json_num(x: float | None) -> float | None:
    """A number as summary.json stores it: 4 decimals, NaN (not measured) as null."""
    return None if x is None or math.isnan(x) else round(x, 4)


def ours_only(runs: Runs) -> list[tuple[str, float, float]]:
    """Table-4 variants (the headline included) that ran at an (alpha, beta) other than their paper cell."""
    out = []
    for row in TABLE4:
        sw = runs.switches.get(row.variant)
        if sw is not None and not paper.on_cell(row.config, sw["alpha"], sw["beta"]):
            out.append((row.variant, sw["alpha"], sw["beta"]))
    return out


# ---------------------------------------------------------------------------------------------------
# Markdown shared by tables.md's sections (tables, budget, extended)

LABELS = {"pcc_top50": "PCC (top-50)", "iou_top10": "IoU (top-10)", "n_correct": "#correct"}
LABELS |= {"n_redundant": "#redundant", "n_error": "#error"}


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def seeds_note(variants: list[str], runs: Runs) -> str:
    """How many seeds a table's ours-values rest on, in one sentence."""
    counts = sorted({len(runs.seeds[v]) for v in variants if v in runs.seeds})
    if not counts:
        return "No variant of this table was run."
    if counts == [1]:
        return "Ours rest on 1 seed per row: single runs, no spread and no SE."
    if len(counts) == 1:
        return f"Ours: mean ± std over {counts[0]} seeds per row."
    return f"Ours rest on {counts[0]} to {counts[-1]} seeds; column n gives each row's count."


COMPARISON_HEADER = ["Ablation", "Metric", "Paper Δ", "Ours Δ [95% CI]", "p / Holm p", "Family"]
COMPARISON_HEADER += ["n (base / treated); seeds a side for 80% power", "Per seed", "Verdict"]


def comparison_row(c: Comparison) -> list[str]:
    """One line of a comparisons table (COMPARISON_HEADER)."""
    key, label = c.metric, LABELS.get(c.metric, c.metric)
    paper_d = fmt_value(key, c.paper_delta, signed=True)
    if c.test is None or math.isnan(c.delta):
        return [c.ablation.name, label, paper_d, *[DASH] * 5, c.verdict]
    j = c.judgement
    p = f"{stats.fmt_p(c.test.p)} / {stats.fmt_p(j.p_holm)}"
    per_seed = f"{c.base.fmt_seeds()} → {c.treated.fmt_seeds()}"
    seeds = (
        f"{c.n_a} / {c.n_b}; {stats.fmt_seeds_needed(j.seeds_power)}"
        if c.test.measured
        else f"{c.n_a} / {c.n_b}"
    )
    return [
        c.ablation.name,
        label,
        paper_d,
        fmt_ci(key, c.delta, c.test.ci95),
        p,
        j.family,
        seeds,
        per_seed,
        c.verdict,
    ]


def render_comparisons(ablations: list[Ablation], runs: Runs) -> str:
    """The comparisons table of one paper table, then the same comparisons in each replication holding them."""
    body = [comparison_row(c) for a in ablations for c in compare(a, runs)]
    return md_table(COMPARISON_HEADER, body) + render_replications(ablations, runs)


def render_replications(ablations: list[Ablation], runs: Runs) -> str:
    """Per `stats.replications` folder holding some of these ablations: their comparisons judged there
    (`replicate`); empty when none does."""
    return "".join(
        f"\n\nMeasured again in {rep.label}: the same comparisons on that folder's seeds, each judged in its "
        "family with the folder's tests where it holds both sides.\n\n"
        + md_table(COMPARISON_HEADER, [comparison_row(c) for c in comps])
        for rep, comps in replicated(ablations, runs)
    )
