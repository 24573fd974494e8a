"""nitp-eval design: each primary's minimum detectable effect from a pilot's spread, against the power formula
computed here with scipy, and the refusal of a design that cannot resolve the paper's effect."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from test_study import make_study


def _spec(tmp_path, pilot, seeds=5):
    spec = tmp_path / "design.yaml"
    spec.write_text(
        f"runs: [{pilot}]\n"
        f"study: {{out: {tmp_path / 'runs'}, preset: tiny-dense, seeds: {list(range(seeds))}, report: {tmp_path / 'rep'}, "
        "train: {steps: 20}}\n"
        "endpoints: {primary: [{row: last_erank, direction: higher}, {row: val_ce, direction: non-inferior, margin: 0.04}]}\n"
    )
    return spec


def _design(*args):
    return subprocess.run([sys.executable, "-m", "nitp_eval.cli", "design", *map(str, args)], capture_output=True,
                          text=True)  # fmt: skip


def test_mde_follows_the_power_formula_at_the_planned_seeds(tmp_path):
    val, erank = [-0.02, -0.05, 0.01], [2.0, 3.0, 4.0]
    pilot = make_study(tmp_path / "pilot", val, [0.0] * 3, erank)
    out = tmp_path / "d.json"
    res = _design(_spec(tmp_path, pilot), "--json", out, "--accept-underpowered")
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    assert d["seeds"] == 5
    m, n = 2, 5  # two declared primaries; one-sided at alpha/m, 80 % power, df = n - 1
    k = stats.t.ppf(1 - 0.05 / m, n - 1) + stats.t.ppf(0.8, n - 1)
    by_row = {e["row"]: e for e in d["endpoints"]}
    assert by_row["last_erank"]["mde"] == pytest.approx(k * np.std(erank, ddof=1) / np.sqrt(n), rel=1e-9)
    assert by_row["val_ce"]["mde"] == pytest.approx(k * np.std(val, ddof=1) / np.sqrt(n), rel=1e-9)
    # erank's paper effect is +140 % of NTP's value (~21): resolvable; the CE margin 0.04 is below its MDE (0.050)
    assert not by_row["last_erank"]["underpowered"] and by_row["val_ce"]["underpowered"]
    assert "time: training" in res.stdout


def test_an_underpowered_design_is_refused_unless_accepted(tmp_path):
    pilot = make_study(tmp_path / "pilot", [-0.02, -0.05, 0.01], [0.0] * 3, [2.0, 3.0, 4.0])
    res = _design(_spec(tmp_path, pilot))
    assert res.returncode == 2 and "val_ce cannot resolve the paper's effect at 5 seeds" in res.stderr
    assert "Traceback" not in res.stderr and "MDE" in res.stdout  # the table is printed before the refusal
    more = _design(_spec(tmp_path, pilot), "--seeds", "400")
    assert more.returncode == 0, more.stderr  # enough seeds resolve the 0.04 margin
