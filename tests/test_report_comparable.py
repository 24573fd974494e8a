"""The report compares geometry only when it was measured the same way (nitp_eval/report/comparable.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_geometry_cli import run as geometry  # the in-process `nitp-eval geometry` runner
from test_report_build import _edit, make_run
from typer.testing import CliRunner

from nitp_eval.cli import app
from nitp_eval.report.build import build_report
from nitp_eval.report.comparable import (
    erank_bias_note,
    geometry_settings_mismatch,
    isotropic_erank_fraction,
)
from nitp_eval.report.load import Result
from nitp_eval.report.spec import load_spec, spec_from_paths
from nitp_train.errors import UserError

SETTINGS = {"text_sha256": "a" * 64, "seq_len": 64, "bos": True, "exclude_positions": [], "exclude_massive": None}


def _result(name: str, tokens: int = 1000, dim: int = 64, massive: int = 0, **settings) -> Result:
    data = {
        "settings": {**SETTINGS, **settings},
        "tokens": tokens,
        "dim": dim,
        "massive": {"excluded": {"massive": massive} if massive else {}},
    }
    return Result(path=f"eval/geometry/{name}.json", data=data, arm=name, step=None)


def test_mismatch_names_both_files_and_every_differing_setting():
    base = _result("ntp")
    assert geometry_settings_mismatch([base, _result("nitp")]) == []
    [line] = geometry_settings_mismatch([base, _result("nitp", tokens=500, seq_len=32, bos=False)])
    assert "eval/geometry/ntp.json and eval/geometry/nitp.json" in line
    assert "tokens 1000 vs 500" in line and "seq_len 64 vs 32" in line and "bos True vs False" in line
    assert "text_sha256" not in line
    [line] = geometry_settings_mismatch([base, _result("x", text_sha256="b" * 64, exclude_positions=[0])])
    assert "text_sha256 aaaaaaaaaaaa vs bbbbbbbbbbbb" in line and "exclude_positions [] vs [0]" in line
    # one --exclude-massive K leaves out different counts in different models: the same measurement
    same_rule = [
        _result("ntp", 990, massive=10, exclude_massive=20.0),
        _result("nitp", 980, massive=20, exclude_massive=20.0),
    ]
    assert geometry_settings_mismatch(same_rule) == []
    assert "exclude_massive None vs 20.0" in geometry_settings_mismatch([base, same_rule[0]])[0]


def test_erank_bias_note_follows_the_isotropic_curve():
    assert isotropic_erank_fraction(1) == pytest.approx(0.6065, abs=1e-4)
    assert isotropic_erank_fraction(0.5) == pytest.approx(0.5 * 0.7788, abs=1e-4)  # fewer tokens than dim
    assert erank_bias_note([_result("ntp", tokens=64 * 50)]) is None
    note = erank_bias_note([_result("ntp", tokens=64 * 20), _result("nitp", tokens=64 * 20)])
    assert "at 20 tokens/dim" in note and f"~{100 * isotropic_erank_fraction(20):.1f} %" in note


def test_report_refuses_arms_measured_on_different_tokens(tiny_run, tmp_path):
    pair = tmp_path / "cmp"
    for arm, tokens in (("ntp", 1000), ("nitp", 500)):
        geometry(
            tiny_run / arm, "--tokens", tokens, "--seq-len", 64, "--n-pairs", 100, "--out", pair / "eval" / "geometry"
        )
    args = ["report", str(pair), "--sections", "geometry", "--out", str(tmp_path / "rep")]
    proc = subprocess.run([sys.executable, "-m", "nitp_eval.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the progress bar: the error, one line, no traceback
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert line.startswith("error: geometry table: not comparable: ")
    assert "ntp-step-000006.json and " in line and "nitp-step-000006.json" in line and "tokens 1000 vs 500" in line
    assert "re-run nitp-eval geometry with the same --tokens/--seq-len/--text, or pass --allow-mismatch" in line
    assert not (tmp_path / "rep").exists()

    result = CliRunner().invoke(app, [*args, "--allow-mismatch"])
    assert result.exit_code == 0, result.output
    caveats = (tmp_path / "rep" / "report.md").read_text().split("## Missing inputs")[1]
    assert "NOT COMPARABLE: geometry table: " in caveats and "tokens 1000 vs 500" in caveats


def test_same_measurement_passes_with_the_bias_note(tiny_run, tmp_path):
    pair = tmp_path / "cmp"
    for arm in ("ntp", "nitp"):
        geometry(
            tiny_run / arm, "--tokens", 1000, "--seq-len", 64, "--n-pairs", 100, "--out", pair / "eval" / "geometry"
        )
    spec = spec_from_paths([pair])
    spec.sections = ["geometry"]
    md = build_report(spec, tmp_path / "rep", progress=False).read_text()
    assert "NOT COMPARABLE" not in md and "could not be verified" not in md
    ratio = json.loads((pair / "eval" / "geometry" / "ntp-step-000006.json").read_text())["tokens_per_dim"]
    assert ratio < 50 and f"at {round(ratio, 1):g} tokens/dim" in md.split("## Missing inputs")[0]


def test_dynamics_series_must_be_measured_alike(tmp_path):
    run = make_run(tmp_path)
    for f in (run / "eval" / "geometry").glob("*.json"):
        _edit(f, lambda d: d["settings"].update(SETTINGS))
    _edit(run / "eval" / "geometry" / "ntp-step-000100.json", lambda d: d.update(tokens=2048))
    spec = spec_from_paths([run])
    spec.sections = ["geometry"]  # the table compares step 200 only: comparable
    assert "NOT COMPARABLE" not in build_report(spec, tmp_path / "a", progress=False).read_text()
    spec.sections = ["dynamics"]
    with pytest.raises(UserError, match=r"dynamics figure .*ntp-step-000100.json.*tokens 2048 vs 4096"):
        build_report(spec, tmp_path / "b", progress=False)
    spec.allow_mismatch = True
    md = build_report(spec, tmp_path / "b", progress=False).read_text()
    assert "NOT COMPARABLE: tiny: dynamics figure" in md


def test_older_results_without_the_hash_are_a_caveat_not_an_error(tmp_path):
    run = make_run(tmp_path)  # hand-made results: settings {}
    spec = spec_from_paths([run])
    spec.sections = ["geometry"]
    md = build_report(spec, tmp_path / "out", progress=False).read_text()
    assert "record(s) no settings.text_sha256 (older results)" in md.split("## Missing inputs")[1]


def test_spec_allow_mismatch(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("runs: [runs/x]\nallow_mismatch: true\n")
    assert load_spec(f).allow_mismatch is True
    f.write_text("runs: [runs/x]\n")
    assert load_spec(f).allow_mismatch is False
    f.write_text("runs: [runs/x]\nallow_mismatch: maybe\n")
    with pytest.raises(UserError, match="allow_mismatch: 'maybe' is not true or false"):
        load_spec(f)
