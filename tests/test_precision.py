"""CPU precision: what `precision=auto` picks (and records), and bf16 autocast's loss curve against fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from nitp_train.config import load_config
from nitp_train.distributed import cpu_bf16_is_faster, cpu_vendor, resolve_precision
from nitp_train.throughput import device_peak
from nitp_train.train import check_resume_config, train

CPU = torch.device("cpu")


def _cpu_flags() -> set[str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    return {f for line in path.read_text().splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}


def test_auto_picks_bf16_only_on_cpus_measured_faster_in_it():
    flags = _cpu_flags()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    assert {line.split(":")[1].strip() for line in lines if line.startswith("vendor_id")} == {cpu_vendor()}
    amd = cpu_vendor() == "AuthenticAMD"
    if cpu_bf16_is_faster():  # AMX (the kernel reports AMX-BF16 whenever torch can use the tiles), or Zen 4+
        assert "amx_bf16" in flags or (amd and "avx512_bf16" in flags)
    if "amx_bf16" not in flags and not (amd and "avx512_bf16" in flags):  # e.g. an Intel CPU with AVX512-BF16
        assert not cpu_bf16_is_faster()  # alone: bf16 measured 1.43x slower there
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_bf16_is_faster() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_cpu_peak_is_measured_at_the_run_dtype():
    _, fp32_source = device_peak(CPU, dtype=None)
    peak, source = device_peak(CPU, dtype=torch.bfloat16)
    assert peak > 0 and "bfloat16 matmul" in source and "float32 matmul" in fp32_source


def _losses(arm: Path) -> list[float]:
    return [json.loads(line)["loss_total"] for line in (arm / "metrics.jsonl").read_text().splitlines()]


def test_bf16_loss_curve_follows_fp32_and_auto_is_recorded_resolved(tmp_path, tiny_sets, tiny_corpus, capsys):
    """10 steps of a tiny NITP run: bf16 autocast within 0.2 % (relative) of fp32 at every step, not equal to it.

    The tolerance is one bf16 rounding (8 mantissa bits: 2^-9 = 0.2 %); the curves differed by at most 0.008 %
    when this was written (tiny model, fp32 master weights, fp32 softmax and norms). An explicit bf16 run
    warns, in one line, exactly on an x86 CPU whose /proc/cpuinfo lacks AVX-512 BW, VL or DQ (what oneDNN's
    bf16 matmul needs; torch's own fallback is ~100x slower)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = _cpu_flags() if cpuinfo.exists() and "flags" in cpuinfo.read_text() else None  # None: not x86 Linux
    sets = tiny_sets + [
        f"data.path={tiny_corpus}",
        "steps=10",
        "save_every=10",
        "eval_every=0",
        "probe_every=0",
        "log_every=1",
    ]  # every step's loss
    curves = {}
    for precision in ("fp32", "bf16", "auto"):
        arm = tmp_path / precision
        train(load_config(sets=sets + [f"precision={precision}"]), arm, progress=False)
        warned = [line for line in capsys.readouterr().err.splitlines() if "no bf16 matmul kernel" in line]
        if flags is not None:
            emulated = not {"avx512bw", "avx512vl", "avx512dq"} <= flags
            assert len(warned) == (precision == "bf16" and emulated), warned
        curves[precision] = _losses(arm)
        recorded = yaml.safe_load((arm / "config.yaml").read_text())["precision"]
        assert recorded == resolve_precision(precision, CPU)  # config.yaml says what ran, never "auto"
        provenance = json.loads((arm / "provenance.json").read_text())["precision"]
        assert provenance == {"bf16": "bfloat16", "fp32": "fp32"}[recorded]
    assert len(curves["fp32"]) == 10
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=2e-3)
    assert curves["bf16"] != pytest.approx(curves["fp32"], rel=1e-6)  # it did run in bf16
    assert curves["auto"] == curves[resolve_precision("auto", CPU)]  # auto is exactly the resolved run
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    check_resume_config(load_config(sets=sets + ["precision=auto"]), saved, tmp_path / "auto")  # resumes as given
