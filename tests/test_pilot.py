"""nitp-eval pilot: the effective-rank peak after the warm-up, on curves whose answer is known."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from nitp_eval.pilot import find_peak


def test_a_rise_and_collapse_peaks_where_it_was_built():
    steps = np.arange(0, 4001, 25)
    curve = np.where(steps < 100, 30 - 0.25 * steps, 5 + 40 * np.exp(-(((steps - 2000) / 700) ** 2)))
    noisy = curve + np.random.default_rng(0).normal(0, 0.5, len(steps))
    p = find_peak(steps, noisy, after_step=100)
    assert p.is_peak and abs(p.step - 2000) <= 75 and p.drop > 0.5


def test_a_curve_still_rising_or_flat_has_no_peak():
    steps = np.arange(0, 2001, 25)
    rising = 40 * (1 - np.exp(-steps / 800))
    p = find_peak(steps, rising, after_step=100)
    assert not p.is_peak and "no peak" in p.why and p.step >= 1900
    flat = np.full(len(steps), 10.0)
    assert not find_peak(steps, flat, after_step=100).is_peak
    assert not find_peak([0, 50], [1.0, 2.0], after_step=100).is_peak  # nothing after the warm-up


def test_the_command_writes_the_finding_with_its_inputs(tmp_path):
    arm = tmp_path / "ntp"
    arm.mkdir()
    (arm / "config.yaml").write_text(
        "model: {preset: micro-dense}\nobjective: {name: ntp}\nseed: 0\noptim: {warmup_steps: 100}\n"
    )
    steps = np.arange(0, 3001, 25)
    erank = 5 + 40 * np.exp(-(((steps - 1500) / 500) ** 2))
    (arm / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": int(s), "probe_erank": float(e), "probe_cosine": 0.2}) + "\n"
            for s, e in zip(steps, erank)
        )
    )
    out = tmp_path / "pilot"
    res = subprocess.run([sys.executable, "-m", "nitp_eval.cli", "pilot", str(arm), "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    peak = json.loads((out / "peak.json").read_text())
    assert peak["is_peak"] and peak["step"] == 1500 and peak["after_step"] == 100
    assert (out / "results" / "metrics.jsonl").read_bytes() == (arm / "metrics.jsonl").read_bytes()
    assert (out / "figures" / "pilot.png").is_file()
    again = subprocess.run([sys.executable, "-m", "nitp_eval.cli", "pilot", str(arm), "--out", str(out)],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_a_corrupt_config_is_one_line(tmp_path):
    arm = tmp_path / "ntp"
    arm.mkdir()
    (arm / "config.yaml").write_text("model: {preset: [unclosed\n")
    (arm / "metrics.jsonl").write_text('{"step": 1, "probe_erank": 3.0}\n')
    res = subprocess.run([sys.executable, "-m", "nitp_eval.cli", "pilot", str(arm), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "not valid YAML" in res.stderr and "Traceback" not in res.stderr
