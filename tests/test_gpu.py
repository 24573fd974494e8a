"""Device-parametrised checks that need a CUDA GPU (marker `gpu`; `bash benchmarks/gpu_check.sh` runs them).

On a machine without one every test here is skipped with that reason, and nothing else is. Each
compares the CUDA result with the CPU one or with an independent reference, so it can fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nitp_train.config import load_config
from nitp_train.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run bash benchmarks/gpu_check.sh on one)"
    ),
]


def _records(arm: Path) -> list[dict]:
    return [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> list[str]:
    """The trainer tests' tiny model on the built-in corpus (a GPU host has no ../shared/data)."""
    from conftest import TINY_SETS

    cache = tmp_path_factory.mktemp("tokens")
    return [s for s in TINY_SETS if not s.startswith("precision")] + [
        f"data.cache_dir={cache}", "eval_every=3", "probe_every=3", "save_every=3", "steps=6",
    ]  # fmt: skip


def test_trainer_on_cuda_matches_cpu_in_fp32_and_runs_bf16(tmp_path, sets):
    runs = {}
    for name, extra in {"cpu": ["device=cpu", "precision=fp32"], "cuda": ["device=cuda", "precision=fp32"],
                        "bf16": ["device=cuda", "precision=bf16"]}.items():  # fmt: skip
        train(load_config(sets=sets + extra), tmp_path / name, progress=False)
        runs[name] = [r["loss_total"] for r in _records(tmp_path / name)]
    assert runs["cuda"] == pytest.approx(runs["cpu"], rel=1e-3)  # TF32 matmuls: close, not bit-equal
    assert runs["bf16"] == pytest.approx(runs["cpu"], rel=3e-2)
    assert json.loads((tmp_path / "bf16" / "provenance.json").read_text())["precision"] == "bfloat16"
    records = _records(tmp_path / "bf16")
    assert records[0]["mfu"] is None  # step 1 alone: compile and warm-up, timed apart from compute
    assert all(r["mfu"] is not None and 0 < r["mfu"] < r["mfu_torchtitan"] < 1 for r in records[1:])


def test_compile_on_cuda_matches_eager(tmp_path, sets):
    losses = {}
    for name, extra in {"eager": [], "compiled": ["compile=true"]}.items():
        train(load_config(sets=sets + ["device=cuda", "precision=bf16", "eval_every=0", "probe_every=0"] + extra),
              tmp_path / name, progress=False)  # fmt: skip
        losses[name] = [r["loss_total"] for r in _records(tmp_path / name)]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-2)


def test_sigkill_resume_on_cuda_is_bit_identical_when_deterministic(tmp_path, sets):
    det = sets + ["device=cuda", "precision=bf16", "deterministic=true", "steps=10", "save_every=2"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    train(load_config(sets=det), ref, progress=False)
    args = [sys.executable, "-m", "nitp_train", "run", "--out", str(out), *[a for s in det for a in ("--set", s)]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "state" / "step-000006").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = load_file(str(ref / "checkpoints" / "step-000010" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-000010" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_objective_on_cuda_equals_cpu():
    from nitp_train.objective import NITPObjective, ObjectiveConfig

    torch.manual_seed(0)
    states = [torch.randn(2, 16, 32) for _ in range(5)]
    objective = NITPObjective(ObjectiveConfig(target_layer=1), hidden_size=32, num_layers=4)
    cpu = objective(states, None).raw
    gpu = objective.to("cuda")([s.cuda() for s in states], None).raw
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)


def test_geometry_statistics_from_cuda_states_equal_numpy():
    from nitp_train.metrics import CovarianceAccumulator

    torch.manual_seed(0)
    x = torch.randn(4096, 64) @ torch.randn(64, 64)
    acc = CovarianceAccumulator(64)
    for chunk in x.cuda().split(1000):
        acc.update(chunk)
    ev = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False, bias=True))
    p = np.clip(ev, 0, None) / np.clip(ev, 0, None).sum()
    p = p[p > 0]
    assert acc.erank_cov() == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_mteb_encoder_on_cuda_equals_cpu(tmp_path, sets):
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    train(load_config(sets=sets + ["device=cpu", "steps=1", "optim.warmup_steps=0"]), tmp_path / "run", progress=False)
    tiny_checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    texts = ["A man is playing a guitar.", "hello", "Tokens, tokens: more tokens!"]
    cpu = MeanPoolEncoder.from_pretrained(tiny_checkpoint, device="cpu", batch_size=2).embed(
        texts, show_progress_bar=False
    )
    gpu = MeanPoolEncoder.from_pretrained(tiny_checkpoint, device="cuda", batch_size=2).embed(
        texts, show_progress_bar=False
    )
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)


def test_eval_commands_default_to_bf16_weights_on_cuda_with_float64_statistics(tmp_path, sets):
    from typer.testing import CliRunner

    from nitp_eval.cli import app

    train(load_config(sets=sets + ["device=cpu", "steps=1", "optim.warmup_steps=0"]), tmp_path / "nitp", progress=False)
    got = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        res = CliRunner().invoke(
            app, ["geometry", str(tmp_path / "nitp"), "--tokens", "1000", "--device", device, "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        got[device] = json.loads((out / "nitp-step-000001.json").read_text())
    assert got["cpu"]["settings"]["dtype"] == "float32" and got["cuda"]["settings"]["dtype"] == "bfloat16"
    # bf16 weights change the states a little; the float64 statistics of the two agree closely
    assert got["cuda"]["per_layer"]["erank_cov"] == pytest.approx(got["cpu"]["per_layer"]["erank_cov"], rel=5e-2)
