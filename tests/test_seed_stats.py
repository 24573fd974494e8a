"""Inference over seeds against independent references: simulated crossed studies with known variance
components (coverage), scipy's t test, statsmodels' multiplicity corrections on hand-made p-values,
non-inferiority on a constructed case, and the rows that must be "not estimable"."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from nitp_eval.report.seed_stats import adjust, crossed, minimum_detectable, over_seeds


def simulate(rng, R, C, sa, sb, se, mu=0.3, T=1):
    """One crossed study: per task an R x C matrix mu + a_s + b_c + e_sc (a_s shared by the seed's tasks)."""
    a = rng.normal(0, sa, size=(R, 1))
    return [mu + a + rng.normal(0, sb, size=(1, C)) + rng.normal(0, se, size=(R, C)) for _ in range(T)]


def nested_bootstrap(tasks, rng, n_boot=400, level=0.95):
    """The old scheme (an independent reimplementation): seeds resampled, then each drawn seed's documents
    resampled independently of the other seeds'."""
    R = tasks[0].shape[0]
    reps = np.empty(n_boot)
    for i in range(n_boot):
        seeds = rng.integers(0, R, R)
        reps[i] = np.mean(
            [np.mean([t[s, rng.integers(0, t.shape[1], t.shape[1])].mean() for t in tasks]) for s in seeds]
        )
    return np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])


@pytest.mark.parametrize(
    "R,C,sa,sb,se,T", [(5, 40, 0.5, 2.0, 1.0, 1), (3, 60, 0.3, 1.5, 1.0, 1), (5, 30, 0.4, 1.0, 1.0, 3)]
)
def test_crossed_intervals_cover_and_the_nested_bootstrap_does_not(R, C, sa, sb, se, T):
    rng = np.random.default_rng(R * 100 + T)
    mu, n = 0.3, 3000
    hits = 0
    for _ in range(n):
        lo, hi = crossed(simulate(rng, R, C, sa, sb, se, mu, T)).interval()
        hits += lo <= mu <= hi
    coverage = hits / n
    assert 0.93 <= coverage <= 0.97, coverage
    # the nested bootstrap on the same kind of studies (fewer: it is slow) misses the shared document noise
    m = 300
    nested_hits = sum(
        (lambda iv: iv[0] <= mu <= iv[1])(nested_bootstrap(simulate(rng, R, C, sa, sb, se, mu, T), rng))
        for _ in range(m)
    )
    assert nested_hits / m < 0.9, nested_hits / m


def test_without_document_noise_the_crossed_interval_is_the_seed_t_interval():
    """No document main effect and no interaction: only the seed term is left, i.e. the t interval over seeds."""
    rng = np.random.default_rng(3)
    per_seed = rng.normal(0.2, 1.0, 5)
    matrix = np.repeat(per_seed[:, None], 20, axis=1)  # every document gives the seed's delta
    est, ref = crossed([matrix]), stats.ttest_1samp(per_seed, 0.0)
    lo, hi = est.interval()
    ref_lo, ref_hi = ref.confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-9)
    assert est.p_value() == pytest.approx(ref.pvalue, rel=1e-9)


def test_the_seed_estimate_is_scipys_one_sample_t_test():
    d = np.array([0.1, -0.3, 0.25, 0.4, 0.05])
    est = over_seeds(d)
    for alt in ("two-sided", "greater", "less"):
        assert est.p_value(alt) == pytest.approx(stats.ttest_1samp(d, 0.0, alternative=alt).pvalue, rel=1e-10)
    ref = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert est.interval() == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_non_inferiority_on_a_constructed_case():
    """CE deltas well below a 0.05-nat margin but not below 0: non-inferior, though not 'better'."""
    d = np.array([0.010, -0.004, 0.012, 0.002, 0.006])
    est = over_seeds(d)
    p = est.p_value("less", margin=0.05)  # H0: delta >= margin
    assert p == pytest.approx(stats.ttest_1samp(d, 0.05, alternative="less").pvalue, rel=1e-10)
    assert p < 0.001
    assert est.p_value("two-sided") > 0.05  # not different from 0: "preserved" is the right claim
    # a margin the data do not clear
    assert over_seeds(d + 0.05).p_value("less", margin=0.05) > 0.5


def test_zero_variance_and_fewer_than_three_seeds_are_not_estimable():
    for d in ([0.25, 0.25, 0.25], [0.0] * 5, [1.0, 2.0], [0.4]):
        est = over_seeds(d)
        assert not est.estimable and est.interval() is None and est.p_value() is None and est.mde() is None
        assert est.why_not
    rng = np.random.default_rng(0)
    x = rng.random((3, 50))
    assert not crossed([x - x]).estimable  # identical arms on every document
    assert not crossed([rng.random((2, 50))]).estimable  # two seeds
    assert crossed([rng.random((3, 50))]).estimable


def test_holm_and_bh_are_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    p = [0.035, 0.004, 0.018, 0.030, 0.41, 0.002, 0.9]
    for method in ("holm", "fdr_bh"):
        assert adjust(p, method) == pytest.approx(list(multipletests(p, method=method)[1]), rel=1e-12)
    # by hand: Holm multiplies the k-th smallest by (m - k + 1) and keeps the running maximum
    assert adjust([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    # BH: p_(k) m / k with the running minimum from the top
    assert adjust([0.01, 0.04, 0.03], "fdr_bh") == pytest.approx([0.03, 0.04, 0.04])
    # a row that is not estimable stays in the family with p = 1
    assert adjust([0.01, None, 0.03], "holm") == pytest.approx([0.03, None, 0.06])


def test_minimum_detectable_effect_has_the_stated_power():
    """Simulate t tests at the MDE: they reject about 80 % of the time."""
    rng = np.random.default_rng(5)
    n, sd = 5, 1.0
    mde = minimum_detectable(sd / np.sqrt(n), n - 1)
    # the noncentral t gives the exact power of the one-sample t test at that effect
    nc = mde / (sd / np.sqrt(n))
    crit = stats.t.ppf(0.975, n - 1)
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=0.03)
    rejections = np.mean([stats.ttest_1samp(rng.normal(mde, sd, n), 0).pvalue < 0.05 for _ in range(4000)])
    assert rejections == pytest.approx(0.8, abs=0.04)
