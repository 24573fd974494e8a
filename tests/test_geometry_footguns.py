"""The numbers quoted in docs/footguns.md, recomputed from the code printed there."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nitp_eval.geometry import CovarianceAccumulator, sample_cross_pairs

DOC = Path(__file__).resolve().parent.parent / "docs" / "footguns.md"


def test_footguns_table_matches_its_code():
    code = DOC.read_text().split("```python")[1].split("```")[0]
    scope: dict = {}
    exec(code, scope)  # the page's own snippet builds x, groups, acc
    acc, x, groups, d = scope["acc"], scope["x"], scope["groups"], scope["d"]
    assert acc.erank_cov() == pytest.approx(29.42, abs=0.005)
    assert acc.erank_sv() == pytest.approx(44.68, abs=0.005)
    assert acc.effective_rank("cov", center=False) == pytest.approx(10.57, abs=0.005)
    assert acc.effective_rank("sv", center=False) == pytest.approx(38.88, abs=0.005)
    assert acc.anisotropy_sampled() == pytest.approx(0.493, abs=0.0005)
    assert acc.anisotropy_cross_exact() == pytest.approx(0.492, abs=0.0005)
    assert acc.anisotropy_exact() == pytest.approx(0.503, abs=0.0005)
    seeds = [
        CovarianceAccumulator(d)
        .update(x, pairs=sample_cross_pairs(groups, 1000, torch.Generator().manual_seed(s)))
        .anisotropy_sampled()
        for s in range(20)
    ]
    assert np.mean(seeds) == pytest.approx(0.492, abs=0.0005) and np.std(seeds) == pytest.approx(0.004, abs=0.0005)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    same = (groups[:, None] == groups[None, :]) & ~np.eye(len(x), dtype=bool)
    assert (u @ u.T)[same].mean() == pytest.approx(0.715, abs=0.0005)
    assert (x @ x.T)[groups[:, None] != groups[None, :]].mean() == pytest.approx(12.4, abs=0.05)
    np.testing.assert_allclose(scope["too_few"], [10.1, 22.4, 27.9, 29.4], atol=0.05)
    # the table's own numbers are quoted in the text
    text = DOC.read_text()
    for quoted in ("29.42", "44.68", "10.57", "38.88", "0.503", "0.715"):
        assert re.search(re.escape(quoted), text)
