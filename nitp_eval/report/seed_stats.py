"""Inference over training seeds: what a NITP − NTP difference measured on n paired seeds supports.

Two sources of noise move a study's deltas: the training seed (init and data order) and, for benchmark
scores, the documents. Every seed scores the *same* documents, so documents are crossed with seeds, not
nested in them: a hard document is hard for every seed, and resampling documents independently within
each seed (a nested bootstrap) averages that shared noise away and gives intervals that are too narrow.

Here the paired difference of seed s on document c is modelled as a two-way crossed random-effects
design, d[s, c] = mu + a_s + b_c + e_sc, and the variance of the grand mean is estimated without bias
from the ANOVA mean squares (Var = sigma_a^2/R + sigma_b^2/C + sigma_e^2/(RC) = (MS_A + MS_B - MS_E)/(RC)),
with Satterthwaite's degrees of freedom for a Student-t interval. Without documents it is the one-sample
t test over the seeds (scipy). `tests/test_seed_stats.py` simulates crossed studies with known variance
components and checks that these intervals cover at ~95 % while the nested bootstrap undercovers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEEDS = 3  # below this an interval over seeds rests on one or two degrees of freedom: not estimable
POWER = 0.8  # minimum detectable effects are stated at 80 % power


@dataclass(frozen=True)
class Estimate:
    """A mean difference over seeds with its standard error, degrees of freedom and what they cover.

    `se` and `df` are None when the row is not estimable (fewer than MIN_SEEDS seeds, or no spread at
    all: identical per-seed deltas give no variance, which is no evidence of certainty)."""

    mean: float
    se: float | None
    df: float | None
    covers: str  # "seeds" or "seeds × documents"
    why_not: str = ""  # why it is not estimable
    seed_var: float | None = None  # variance of the per-seed deltas (what more seeds average down)
    doc_var: float = 0.0  # the document term of the variance (what more seeds do not average down)

    @property
    def estimable(self) -> bool:
        return self.se is not None

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        """Two-sided Student-t interval."""
        if not self.estimable:
            return None
        half = stats.t.ppf((1 + level) / 2, self.df) * self.se
        return self.mean - half, self.mean + half

    def p_value(self, alternative: str = "two-sided", margin: float = 0.0) -> float | None:
        """p of H0: delta = margin (two-sided), delta <= margin ('greater') or delta >= margin ('less')."""
        if not self.estimable:
            return None
        t = (self.mean - margin) / self.se
        if alternative == "two-sided":
            return float(2 * stats.t.sf(abs(t), self.df))
        return float(stats.t.sf(t, self.df) if alternative == "greater" else stats.t.cdf(t, self.df))

    def mde(self, alpha: float = 0.05, sided: int = 2, power: float = POWER) -> float | None:
        """The smallest true difference a test at `alpha` detects with `power`, at this SE and df."""
        if not self.estimable:
            return None
        return minimum_detectable(self.se, self.df, alpha, sided, power)


def minimum_detectable(se: float, df: float, alpha: float = 0.05, sided: int = 2, power: float = POWER) -> float:
    """(t_{1-alpha/sided} + t_{power}) x SE: the standard normal-approximation-free power formula."""
    return float((stats.t.ppf(1 - alpha / sided, df) + stats.t.ppf(power, df)) * se)


def _not_estimable(mean: float, n: int, covers: str, spread: bool) -> Estimate | None:
    if n < MIN_SEEDS:
        return Estimate(mean, None, None, covers, f"{n} seed{'s' if n != 1 else ''} (at least {MIN_SEEDS} needed)")
    if not spread:
        return Estimate(mean, None, None, covers, "identical deltas on every seed (no spread to estimate)")
    return None


def over_seeds(per_seed) -> Estimate:
    """The one-sample t estimate of the mean per-seed delta (scipy.stats.ttest_1samp gives the same p)."""
    d = np.asarray(per_seed, dtype=np.float64)
    mean = float(d.mean()) if len(d) else float("nan")
    bad = _not_estimable(mean, len(d), "seeds", bool(len(d)) and bool(np.ptp(d) > 0))
    return bad or Estimate(
        mean, float(d.std(ddof=1) / np.sqrt(len(d))), float(len(d) - 1), "seeds", seed_var=float(d.var(ddof=1))
    )


def crossed(tasks: list[np.ndarray]) -> Estimate:
    """The estimate of the mean over tasks of each task's mean paired difference, documents crossed with seeds.

    `tasks`: per task an (R seeds x C_t documents) array of paired differences (other − baseline) on the
    documents every seed scored. With T tasks the seed term is taken from the per-seed task averages (a
    seed's effect is shared by its tasks), and each task adds its document term:

        Var = S_y^2 / R + sum_t max(0, MS_B,t − MS_E,t) / (R C_t T^2),

    where y_s is seed s's average over tasks and over documents, MS_B,t the task's between-document mean
    square and MS_E,t its residual. With one task this is (MS_A + MS_B − MS_E)/(RC), the unbiased ANOVA
    estimate. Degrees of freedom: Satterthwaite over the terms kept.
    """
    R = tasks[0].shape[0]
    y = np.mean([t.mean(axis=1) for t in tasks], axis=0)  # per-seed average over tasks
    mean = float(y.mean())
    bad = _not_estimable(mean, R, "seeds × documents", any(np.ptp(t) > 0 for t in tasks))
    if bad:
        return bad
    T = len(tasks)
    terms = [(float(y.var(ddof=1)) / R, R - 1)]  # (variance term, its degrees of freedom)
    for t in tasks:
        C = t.shape[1]
        if C < 2:
            continue
        resid = t - t.mean(axis=1, keepdims=True) - t.mean(axis=0, keepdims=True) + t.mean()
        ms_b = R * float(t.mean(axis=0).var(ddof=1))
        ms_e = float((resid**2).sum()) / ((R - 1) * (C - 1))
        if ms_b > ms_e:  # a negative document component is estimated as 0 (the usual truncation)
            scale = 1.0 / (R * C * T * T)
            terms += [(scale * ms_b, C - 1), (-scale * ms_e, (R - 1) * (C - 1))]
    var = sum(v for v, _ in terms)
    if var <= 0:
        return Estimate(mean, None, None, "seeds × documents", "no spread to estimate")
    df = var**2 / sum(v**2 / d for v, d in terms)
    seed_var = float(y.var(ddof=1))
    return Estimate(mean, float(np.sqrt(var)), float(df), "seeds × documents", "", seed_var, var - seed_var / R)


def adjust(p_values: list[float | None], method: str) -> list[float | None]:
    """Multiplicity-adjusted p-values (statsmodels' multipletests: 'holm' or 'fdr_bh').

    A row that is not estimable keeps its place in the family with p = 1: the family is what was
    declared, not what happened to be estimable."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    filled = [1.0 if p is None else p for p in p_values]
    adjusted = multipletests(filled, method=method)[1]
    return [None if p is None else float(a) for p, a in zip(p_values, adjusted)]
