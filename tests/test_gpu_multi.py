"""Several GPUs over NCCL (`bash benchmarks/gpu_check.sh` runs this file when it sees 2 or more GPUs):
DDP and FSDP parity against one process, and a state written by 2 ranks resumed on 1.

NITP_MULTI_DEVICE=cpu runs the same checks with gloo on a CPU (how they are tested without GPUs); by
default they need 2 CUDA GPUs and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nitp_train.config import load_config
from nitp_train.train import train

DEVICE = os.environ.get("NITP_MULTI_DEVICE", "cuda")
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (bash benchmarks/gpu_check.sh)"
)
# TF32 matmuls on CUDA: runs agree closely, not bit for bit; gloo on a CPU in fp32 agrees to 1e-4
REL = 2e-3 if DEVICE == "cuda" else 1e-4
_PORT = iter(range(29780, 29800))


def _records(arm: Path) -> list[dict]:
    return [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> list[str]:
    """The trainer tests' tiny model on the built-in corpus (a GPU host has no ../shared/data), 2 micro-batches
    per rank and step on 2 ranks, so that the deferred gradient reduction is exercised."""
    from conftest import TINY_SETS

    cache = tmp_path_factory.mktemp("tokens")
    return [s for s in TINY_SETS if not s.startswith(("precision", "micro_batch"))] + [
        f"data.cache_dir={cache}", f"device={DEVICE}", "precision=fp32", "micro_batch=2", "eval_every=3",
        "probe_every=0", "save_every=3", "steps=6", "keep_last=0",
    ]  # fmt: skip


def _torchrun(out: Path, sets: list[str], *extra: str) -> None:
    flags = [a for s in sets for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(next(_PORT)),
           "-m", "nitp_train", "run", "--out", str(out), *flags, *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def one(tmp_path_factory, sets) -> Path:
    out = tmp_path_factory.mktemp("one") / "nitp"
    train(load_config(sets=sets), out, progress=False)
    return out


def _same_run(got: Path, want: Path) -> None:
    a, b = _records(want), _records(got)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for key in ("loss_total", "loss_ntp", "loss_nitp", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=REL)
    wa = load_file(str(want / "checkpoints" / "step-000006" / "model.safetensors"))
    wb = load_file(str(got / "checkpoints" / "step-000006" / "model.safetensors"))
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 10 * REL


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, sets, one, parallel):
    two = tmp_path / "nitp"
    _torchrun(two, [*sets, f"parallel={parallel}"])
    assert json.loads((two / "provenance.json").read_text())["world_size"] == 2
    _same_run(two, one)


def test_a_two_rank_state_resumes_on_one(tmp_path, sets, one):
    out = tmp_path / "nitp"
    _torchrun(out, [*sets, "parallel=fsdp"])
    for state in (out / "state").glob("step-*"):  # what a kill after step 3 leaves
        if int(state.name.split("-")[1]) > 3:
            subprocess.run(["rm", "-r", str(state)], check=True)
    train(load_config(sets=sets), out, resume=True, progress=False)
    _same_run(out, one)
