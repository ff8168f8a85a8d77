"""The statistics every verdict rests on (issue 27): one floor under tables, summary, budget lines and the
extended grid. Distributions and corrections come from scipy and statsmodels, never hand-rolled.

One contrast, treated - baseline, on per-seed values (independent runs; seeds are not paired: see
tood.report.results):
    Welch's t-test        scipy.stats.ttest_ind(equal_var=False): delta, SE, Welch-Satterthwaite df,
                          two-sided p, 95% CI on the t distribution with that df.
    TOST equivalence      statsmodels ttost_ind(usevar="unequal") at +-margin: p_tost = the larger of the two
                          one-sided p; p_tost < alpha exactly when the (1 - 2 alpha) = 90% CI lies inside
                          (-margin, +margin) (Schuirmann 1987).
A family of claims (tood.report.paper.FAMILIES: e.g. the five main contrasts, the five alpha/beta cells):
    Holm's step-down correction (statsmodels multipletests(method="holm")) of the t-tests' p and, separately,
    of the TOSTs' p, over the family's contrasts that were measured. It keeps the chance of any false
    verdict in the family <= alpha, whatever the number of claims (a 2-SE rule on 3 seeds a side gives
    11.5% per claim, ~57% over seven claims: issue 27).
Verdict (VERDICTS), in this order:
    not measured    fewer than 2 seeds on a side (no variance, no test);
    reproduces /    Holm-adjusted p < alpha: the 95% CI excludes 0 with room for the family, and the sign
    contradicts     of delta is the paper's / the opposite;
    equivalent      Holm-adjusted TOST p < alpha: the 90% CI lies inside +-margin (AP contrasts only: the
                    margin is in AP; a paper claim of a difference that we find this small is not reproduced);
    inconclusive    otherwise: the runs cannot tell, and `seeds_for_power` says what would.
Seed plans:
    seeds_for_power       statsmodels TTestIndPower: seeds a side for `power` at the paper's delta with the
                          pooled std, at alpha / k (Holm's first step in a family of k: the worst case).
    seeds_for_halfwidth   seeds a side for a 95% CI half-width <= h at the two sides' stds (Welch df).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.weightstats import ttost_ind

VERDICTS = ("reproduces", "contradicts", "equivalent", "different", "inconclusive", "not measured")
# "different": a Holm-significant difference where the paper claims no direction (the top-m sweep)
MAX_SEEDS = 1000  # a seed plan beyond this is reported as "> 1000"


@dataclass(frozen=True)
class Welch:
    """Welch's two-sample t-test of treated - baseline (and TOST where a margin is given)."""

    delta: float  # mean(treated) - mean(baseline)
    se: float  # sqrt(s_a^2 / n_a + s_b^2 / n_b)
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # two-sided p of delta = 0
    ci95: tuple[float, float]
    ci90: tuple[float, float]  # the interval TOST at alpha = 0.05 reads
    p_tost: float  # TOST p of |delta| >= margin (NaN without a margin)
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float

    @property
    def measured(self) -> bool:
        return self.n_a >= 2 and self.n_b >= 2 and math.isfinite(self.p)

    @property
    def pooled_sd(self) -> float:
        """sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)): the std power analysis assumes."""
        if self.n_a < 2 or self.n_b < 2:
            return math.nan
        dof = self.n_a + self.n_b - 2
        return math.sqrt(((self.n_a - 1) * self.sd_a**2 + (self.n_b - 1) * self.sd_b**2) / dof)


def welch(baseline: Sequence[float], treated: Sequence[float], margin: float | None = None) -> Welch:
    """The t-test, its CIs and (with a margin) TOST for treated - baseline; NaNs below 2 values a side."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(treated, dtype=float)
    n_a, n_b = len(a), len(b)
    delta = float(b.mean() - a.mean()) if n_a and n_b else math.nan
    sd_a = float(a.std(ddof=1)) if n_a > 1 else math.nan
    sd_b = float(b.std(ddof=1)) if n_b > 1 else math.nan
    nan2 = (math.nan, math.nan)
    if n_a < 2 or n_b < 2:
        return Welch(delta, math.nan, math.nan, math.nan, nan2, nan2, math.nan, n_a, n_b, sd_a, sd_b)
    se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)
    if se == 0:  # identical values on both sides: no t statistic, nothing to test
        return Welch(delta, se, math.nan, math.nan, nan2, nan2, math.nan, n_a, n_b, sd_a, sd_b)
    res = sps.ttest_ind(b, a, equal_var=False)
    ci95 = tuple(float(x) for x in res.confidence_interval(0.95))
    ci90 = tuple(float(x) for x in res.confidence_interval(0.90))
    p_tost = math.nan
    if margin is not None:
        p_tost = float(ttost_ind(b, a, -margin, margin, usevar="unequal")[0])
    return Welch(delta, se, float(res.df), float(res.pvalue), ci95, ci90, p_tost, n_a, n_b, sd_a, sd_b)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p over the finite entries (statsmodels); NaN entries stay NaN and do not count."""
    return list(_holm(tuple(float(p) for p in pvalues)))


@functools.lru_cache(maxsize=4096)
def _holm(pvalues: tuple[float, ...]) -> tuple[float, ...]:
    # cached: tables.md judges each family many times over (every table, budget step and summary line), and
    # statsmodels' Holm branch runs a full gc.collect() per call (~60 ms in a process that has torch loaded)
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.sum() == 1:
        out[ok] = p[ok]  # one test: nothing to adjust
    elif ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return tuple(float(x) for x in out)


def verdict(paper_delta: float, test: Welch, p_holm: float, p_tost_holm: float, alpha: float) -> str:
    """One of VERDICTS (rule in the module docstring). paper_delta = 0 or NaN: no direction to reproduce,
    so a difference reads "contradicts" only against a direction; with none it is "different"."""
    if not test.measured:
        return "not measured"
    if p_holm < alpha:
        if math.isnan(paper_delta) or paper_delta == 0:
            return "different"
        return "reproduces" if (test.delta > 0) == (paper_delta > 0) else "contradicts"
    if p_tost_holm < alpha:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class Judgement:
    """A contrast judged within its family."""

    test: Welch
    family: str
    family_size: int  # measured contrasts in the family (what Holm adjusted over)
    p_holm: float
    p_tost_holm: float
    verdict: str
    paper_delta: float = math.nan
    alpha: float = 0.05
    power: float = 0.8

    @property
    def seeds_power(self) -> float:
        """Seeds a side for `power` at the paper's delta with our pooled std, at alpha / k (Holm's first step
        in a family of k, the worst case); NaN without a std or a paper delta."""
        level = self.alpha / max(self.family_size, 1)
        return seeds_for_power(self.paper_delta, self.test.pooled_sd, level, self.power)


def judge_family(
    tests: dict[str, Welch],
    paper_deltas: dict[str, float],
    family: str,
    alpha: float,
    power: float,
) -> dict[str, Judgement]:
    """Holm over the family's measured contrasts, then each one's verdict (and, on demand, seed plan)."""
    keys = list(tests)
    p_holm = dict(zip(keys, holm([tests[k].p if tests[k].measured else math.nan for k in keys])))
    p_tost = dict(zip(keys, holm([tests[k].p_tost if tests[k].measured else math.nan for k in keys])))
    k = sum(t.measured for t in tests.values())
    out = {}
    for key, t in tests.items():
        pd = paper_deltas.get(key, math.nan)
        v = verdict(pd, t, p_holm[key], p_tost[key], alpha)
        out[key] = Judgement(t, family, k, p_holm[key], p_tost[key], v, pd, alpha, power)
    return out


# ---------------------------------------------------------------------------------------------------
# seed plans


def seeds_for_power(effect: float, sd: float, alpha: float, power: float) -> float:
    """Seeds a side (rounded up, >= 2) for a two-sided Welch/Student test at level alpha to detect `effect`
    with probability `power` when each run's std is `sd` (statsmodels TTestIndPower); NaN when unknown,
    inf beyond MAX_SEEDS."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or sd <= 0:
        return math.nan
    d, analysis = abs(effect) / sd, TTestIndPower()
    if analysis.power(d, 2, alpha) >= power:  # the solver has no root below 2 a side
        return 2.0
    with warnings.catch_warnings():  # a failed root search warns and returns NaN: handled below
        warnings.simplefilter("ignore")
        n = float(np.squeeze(analysis.solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0)))
    if not math.isfinite(n):  # the root finder gave up: the first n whose power reaches the target
        n = next((k for k in range(2, MAX_SEEDS + 1) if analysis.power(d, k, alpha) >= power), math.inf)
    return math.inf if n > MAX_SEEDS else float(math.ceil(n - 1e-9))


def ci_halfwidth(sd_a: float, sd_b: float, n: int, conf: float = 0.95) -> float:
    """Half-width of Welch's CI for n seeds a side at these stds: t_{(1+conf)/2, df} sqrt((s_a^2 + s_b^2)/n)."""
    va, vb = sd_a**2 / n, sd_b**2 / n
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    return float(sps.t.ppf((1 + conf) / 2, df) * math.sqrt(va + vb))


def seeds_for_halfwidth(sd_a: float, sd_b: float, h: float, conf: float = 0.95) -> float:
    """The fewest seeds a side (>= 2) whose 95% CI half-width is <= h; NaN when a std is unknown."""
    if not (math.isfinite(sd_a) and math.isfinite(sd_b)):
        return math.nan
    for n in range(2, MAX_SEEDS + 1):
        if ci_halfwidth(sd_a, sd_b, n, conf) <= h:
            return float(n)
    return math.inf


def fmt_seeds_needed(n: float) -> str:
    if math.isnan(n):
        return "n/a"
    return f"> {MAX_SEEDS}" if math.isinf(n) else f"{n:.0f}"


def fmt_p(p: float) -> str:
    """p as a reviewer reads it: 2 significant digits, '< 0.001' below that."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"
