"""The effective-rank bias curve of benchmarks/erank_bias.py, and the docs table made from its recorded file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import erank_bias  # noqa: E402

from nitp_eval.report.comparable import isotropic_erank_fraction  # noqa: E402


def reference_erank(x: np.ndarray) -> float:
    """exp(entropy) of the eigenvalues of the centred covariance, normalised to sum 1, in plain numpy."""
    xc = x - x.mean(0)
    eig = np.linalg.eigvalsh(xc.T @ xc / len(x))
    p = eig[eig > 1e-12 * eig.max()] / eig[eig > 1e-12 * eig.max()].sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("dim, ratio", [(48, 0.5), (48, 3), (32, 20)])
def test_isotropic_erank_is_the_plain_numpy_computation(dim, ratio):
    n = int(ratio * dim)
    x = np.concatenate(list(erank_bias.states(dim, n, seed=1)))
    assert x.shape == (n, dim)
    assert erank_bias.isotropic_erank(dim, n, seed=1) == pytest.approx(reference_erank(x), rel=1e-10)


def test_isotropic_erank_approaches_dim_monotonically_as_the_limit_says():
    dim = 96
    ratios = [1, 2, 5, 20, 100]
    fractions = [erank_bias.isotropic_erank(dim, r * dim, seed=0) / dim for r in ratios]
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] < 0.62 and fractions[-1] > 0.99  # far below the cap at 1 token/dim, near d at 100
    for r, f in zip(ratios, fractions):  # the large-d limit the report's note uses, within finite-d noise
        assert f == pytest.approx(isotropic_erank_fraction(r), abs=0.01)


def test_footguns_table_is_the_recorded_curve():
    recorded = json.loads((REPO / "benchmarks" / "results" / "erank_bias.json").read_text())
    assert erank_bias.markdown(recorded["curve"]) in (REPO / "docs" / "footguns.md").read_text()
    for row in recorded["curve"]:
        assert row["limit"] == pytest.approx(isotropic_erank_fraction(row["tokens_per_dim"]))
