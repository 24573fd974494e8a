"""Paired bootstrap against exact references: full enumeration of resamples, closed-form bootstrap variance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nitp_eval.report.stats import bootstrap_replicates, mean_delta, paired_samples


def test_pairs_by_doc_id_not_by_position():
    base = [{"doc_id": 2, "acc": 1}, {"doc_id": 0, "acc": 0}, {"doc_id": 1, "acc": 1}, {"doc_id": 10, "acc": 0}]
    other = [{"doc_id": 1, "acc": 0}, {"doc_id": 0, "acc": 1}, {"doc_id": 2, "acc": 1}, {"doc_id": 3, "acc": 1}]
    a, b = paired_samples(base, other, "acc")
    assert a.tolist() == [0, 1, 1] and b.tolist() == [1, 0, 1]  # docs 0, 1, 2; 3 and 10 are unpaired


@pytest.mark.parametrize("max_distinct", [64, 0], ids=["value-counts", "index-resampling"])
def test_matches_exact_bootstrap_distribution(max_distinct):
    # n = 4 documents: the 4^4 equally likely resamples give the exact bootstrap distribution
    a = np.array([0.0, 1.0, 0.0, 1.0])
    b = np.array([1.0, 1.0, 0.0, 0.0])
    diff = b - a
    exact = np.array([diff[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
    reps = bootstrap_replicates(a, b, n_boot=40_000, seed=3, max_distinct=max_distinct)
    for v in np.unique(exact):  # the replicate distribution has the exact probabilities
        assert np.mean(reps == v) == pytest.approx(np.mean(exact == v), abs=0.01)


@pytest.mark.parametrize("binary", [True, False], ids=["accuracy", "continuous"])
def test_bootstrap_spread_is_the_closed_form(binary):
    rng = np.random.default_rng(1)
    a, b = rng.random(500), rng.random(500) + 0.1
    if binary:
        a, b = (a < 0.4).astype(float), (b < 0.5).astype(float)
    reps = bootstrap_replicates(a, b, n_boot=20_000, seed=0)
    d = b - a
    assert reps.mean() == pytest.approx(d.mean(), abs=0.002)
    assert reps.std() == pytest.approx(d.std() / np.sqrt(len(d)), rel=0.03)  # population sd / sqrt(n)


def test_pairing_removes_shared_variance():
    # the other arm = the baseline plus one extra correct answer: a paired CI is tight and excludes 0
    a = np.array([1.0] * 50 + [0.0] * 50)
    b = a.copy()
    b[60] = 1.0
    deltas, _ = mean_delta({"t": (a, b)}, n_boot=5000)
    assert deltas["t"].value == pytest.approx(0.01)
    assert deltas["t"].lo >= 0 and deltas["t"].hi <= 0.04
    same, _ = mean_delta({"t": (a, a)}, n_boot=500)
    assert (same["t"].lo, same["t"].hi) == (0.0, 0.0) and not same["t"].significant


def test_average_of_tasks_and_independent_streams():
    rng = np.random.default_rng(2)
    pairs = {
        t: ((rng.random(n) < 0.3).astype(float), (rng.random(n) < 0.35).astype(float))
        for t, n in (("x", 300), ("y", 800), ("z", 120))
    }
    per, avg = mean_delta(pairs, n_boot=20_000, seed=5)
    assert avg.value == pytest.approx(np.mean([(b - a).mean() for a, b in pairs.values()]))
    # tasks resampled independently: variance of the average = sum of task variances / T^2
    sd = np.sqrt(sum(((b - a).std() ** 2) / len(a) for a, b in pairs.values())) / 3
    assert (avg.hi - avg.lo) == pytest.approx(2 * 1.96 * sd, rel=0.05)
    # a task's interval does not depend on which other tasks are in the table
    alone, _ = mean_delta({"y": pairs["y"]}, n_boot=20_000, seed=5)
    assert (alone["y"].lo, alone["y"].hi) == (per["y"].lo, per["y"].hi)
    again, _ = mean_delta(pairs, n_boot=20_000, seed=5)
    assert again == per
