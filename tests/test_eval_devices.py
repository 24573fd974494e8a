"""Eval commands on any device: weights dtype `auto` (bfloat16 on CUDA, float32 on CPU) and where the
float64 statistics accumulate (--stats-device); the CUDA side is in tests/test_gpu.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from nitp_eval.cli import app
from nitp_train.errors import UserError


def test_auto_dtype_is_float32_on_cpu_and_explicit_dtypes_pass():
    from nitp_eval.models import resolve_dtype, stats_device

    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(UserError, match="--dtype fp8"):
        resolve_dtype("fp8", "cpu")
    assert stats_device("auto", "cpu") == "cpu" and stats_device("cpu", "cpu") == "cpu"


def test_geometry_records_the_resolved_dtype_and_stats_device_and_they_change_nothing_on_cpu(tiny_run, tmp_path):
    results = {}
    for name, extra in {"default": [], "explicit": ["--dtype", "float32", "--stats-device", "cpu"]}.items():
        out = tmp_path / name
        res = CliRunner().invoke(
            app, ["geometry", str(tiny_run / "nitp"), "--tokens", "1000", "--out", str(out), *extra]
        )
        assert res.exit_code == 0, res.output
        results[name] = json.loads((out / "nitp-step-000006.json").read_text())
    for r in results.values():
        assert r["settings"]["dtype"] == "float32" and r["settings"]["stats_device"] == "cpu"
    assert results["default"]["per_layer"] == results["explicit"]["per_layer"]
