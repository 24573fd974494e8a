"""Run defaults shared by `nitp-train plan` and the trainer, and what a run meets before and around its loop:
the warm-up of a short run, the micro-batch sized to a device's memory, a run that cannot fit, the torch floor,
errors on one rank of a torchrun launch, export cadence/retention/dtype, the timers, the known warnings."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from nitp_train.config import load_config
from nitp_train.errors import UserError
from nitp_train.plan import memory_plan, resolve_grad_sync, resolve_micro_batch, resolve_run, resolve_sizing
from nitp_train.presets import get_preset, param_counts, preset_names
from nitp_train.train import train

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
PAPER = [n for n in preset_names() if get_preset(n).description.startswith("paper")]
_PORT = iter(range(29720, 29760))


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(next(_PORT))]
    return subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    # another rank's progress bar may share the line (two processes write to one stderr): start at "error:"
    return [line[line.index("error:") :] for line in stderr.splitlines() if "error:" in line]


# ---------------------------------------------------------------------------- one source of defaults


def test_paper_presets_are_all_covered():
    assert len(PAPER) == 7 and {"dense-0.5b", "moe-9b-a1b", "moe-45b-a5.5b"} <= set(PAPER)


@pytest.mark.parametrize("preset", PAPER)
def test_planner_and_trainer_resolve_the_same_defaults(preset):
    """`nitp-train plan` (its CLI, as a user runs it) and the trainer's own resolution (`resolve_run`, what
    `setup` calls with the device's memory) agree on every default of a paper preset on 8 x 80 GB."""
    res = subprocess.run([sys.executable, "-m", "nitp_train", "plan", "--preset", preset, "--gpus", "8",
                          "--gpu-mem", "80", "--json"], capture_output=True, text=True, env=ENV)  # fmt: skip
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    from nitp_train.cli import _config  # what `nitp-train run/pair --preset P` resolves

    cfg = _config(preset, None, None, None, None, None, None)
    vocab = get_preset(preset).hf["vocab_size"]
    if plan["fits"]["with_ac" if cfg.activation_checkpointing else "without_ac"]:
        trainer = resolve_run(cfg, 8, vocab, 80e9)
    else:  # the trainer refuses it (moe-45b-a5.5b needs more GPUs); its sizing is the same function's
        with pytest.raises(UserError, match="per device"):
            resolve_run(cfg, 8, vocab, 80e9)
        trainer = resolve_sizing(cfg, 8, vocab, 80e9)
    assert plan["micro_batch"] == trainer.micro_batch
    assert plan["fsdp_grad_sync"] == trainer.fsdp_grad_sync != "auto"
    assert plan["activation_checkpointing"] == trainer.activation_checkpointing
    assert plan["parallel"] == trainer.parallel == "fsdp"  # the paper presets shard, in the plan and the run
    assert plan["precision"] == trainer.precision
    assert plan["export_every"] == (trainer.export_every or trainer.save_every)
    assert plan["export_dtype"] == trainer.export_dtype == "bf16"
    assert plan["warmup_steps"] == trainer.optim.warmup_steps == 2000
    assert plan["disk_gb"]["exports"] >= 2 and plan["disk_gb"]["total_gb"] > 0


def test_micro_batch_is_the_largest_that_fits_a_given_memory():
    """dense-0.5b on 8 GPUs: the chosen micro-batch fits 90 % of the memory by the planner's model; the
    next divisor of the per-GPU share (64 sequences) does not."""
    cfg = load_config(sets=["model.preset=dense-0.5b"])
    vocab = get_preset("dense-0.5b").hf["vocab_size"]

    def peak(m: int) -> float:
        return memory_plan(dataclasses.replace(cfg, micro_batch=m), vocab, 8).total(False)

    for gb in (40, 80, 141):
        micro = resolve_micro_batch(cfg, 8, vocab, gb * 1e9)
        share = 512 // 8
        assert share % micro == 0 and peak(micro) <= 0.9 * gb * 1e9
        bigger = [m for m in range(micro + 1, share + 1) if share % m == 0]
        assert not bigger or peak(bigger[0]) > 0.9 * gb * 1e9
    assert resolve_micro_batch(cfg, 8, vocab, 40e9) < resolve_micro_batch(cfg, 8, vocab, 141e9)
    # without a memory to size it from (a CPU): the largest divisor of the share up to 8; a set one is kept
    assert resolve_micro_batch(cfg, 8, vocab, None) == 8
    assert resolve_micro_batch(load_config(sets=["global_batch=12"]), 1, 8192, None) == 6
    assert resolve_micro_batch(load_config(sets=["model.preset=dense-0.5b", "micro_batch=2"]), 8, vocab, 80e9) == 2


def test_deferred_fsdp_gradients_are_counted_and_taken_only_where_they_fit():
    """FSDP2 keeps the whole model's unsharded fp32 gradients between the micro-batches of a step when their
    reduce-scatter waits for the last one: 4 bytes a parameter on every GPU, which the plan counts, and
    which `auto` takes only where it fits (else it reduce-scatters every micro-batch)."""
    cfg = load_config(sets=["model.preset=dense-0.5b", "micro_batch=4"])  # 64 sequences a GPU: 16 micro-batches
    vocab = get_preset("dense-0.5b").hf["vocab_size"]
    nitp = 3 * cfg.objective.projector_mult * 896**2  # the SwiGLU projector (d = 896)
    n_params = param_counts(get_preset("dense-0.5b"), vocab_size=vocab)["total"] + nitp

    def plan(**change):
        return memory_plan(dataclasses.replace(cfg, **change), vocab, 8)

    deferred, every = plan(fsdp_grad_sync="last_micro"), plan(fsdp_grad_sync="every_micro")
    assert deferred.unsharded_gradients == 4 * n_params and every.unsharded_gradients == 0
    assert deferred.total(False) - every.total(False) == pytest.approx(4 * n_params)
    assert plan(fsdp_grad_sync="last_micro", micro_batch=64).unsharded_gradients == 0  # no accumulation
    assert plan(fsdp_grad_sync="last_micro", parallel="ddp").unsharded_gradients == 0  # DDP: counted in gradients
    assert resolve_grad_sync(cfg, 8, vocab, 80e9) == "last_micro"  # +2 GB fits
    assert resolve_grad_sync(cfg, 8, vocab, None) == "every_micro"  # a CPU: ranks share the host's memory
    assert resolve_grad_sync(dataclasses.replace(cfg, parallel="ddp"), 8, vocab, None) == "last_micro"
    explicit = dataclasses.replace(cfg, fsdp_grad_sync="last_micro")
    assert resolve_grad_sync(explicit, 8, vocab, None) == "last_micro"
    # moe-9b-a1b on 8 x 80 GB: its 9B parameters' unsharded gradients (36 GB) do not fit beside the rest
    moe = load_config(sets=["model.preset=moe-9b-a1b"])
    moe_vocab = get_preset("moe-9b-a1b").hf["vocab_size"]
    moe = resolve_run(moe, 8, moe_vocab, 80e9)
    assert moe.fsdp_grad_sync == "every_micro" and moe.global_batch // 8 // moe.micro_batch > 1
    held = memory_plan(dataclasses.replace(moe, fsdp_grad_sync="last_micro"), moe_vocab, 8)
    assert held.total(moe.activation_checkpointing) > 0.9 * 80e9


def test_a_run_that_cannot_fit_is_refused_in_one_line_naming_the_fix():
    cfg = load_config(sets=["model.preset=dense-2b", "parallel=ddp"])
    vocab = get_preset("dense-2b").hf["vocab_size"]
    with pytest.raises(UserError) as e:
        resolve_run(cfg, 8, vocab, 24e9)
    message = str(e.value)
    assert "\n" not in message and "parallel=fsdp" in message and "GB per device" in message
    with pytest.raises(UserError, match="activation_checkpointing=true"):
        resolve_run(load_config(sets=["model.preset=dense-2b"]), 8, vocab, 40e9)


def test_the_trainer_records_the_resolved_micro_batch(tmp_path, tiny_sets, tiny_corpus):
    """On a CPU (no memory to size by) an unset micro-batch is the largest divisor of the share up to 8."""
    sets = [s for s in tiny_sets if not s.startswith("micro_batch=")]
    out = tmp_path / "run"
    train(
        load_config(sets=sets + [f"data.path={tiny_corpus}", "steps=1", "optim.warmup_steps=0", "global_batch=12"]),
        out,
        progress=False,
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["micro_batch"] == 6


# ---------------------------------------------------------------------------- warm-up of a short run


def test_the_default_warmup_fits_a_short_run_and_is_recorded(tmp_path, tiny_corpus):
    res = subprocess.run([sys.executable, "-m", "nitp_train", "run", "--out", str(tmp_path / "smoke"), "--steps", "8",
                          "--data", str(tiny_corpus), "--set", "data.tokenizer=train:512", "--set", "seq_len=32",
                          "--set", "model.hf_overrides.num_hidden_layers=2", "--set", "probe_every=0",
                          "--set", "eval_every=0"], capture_output=True, text=True, env=ENV)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    notes = [line for line in res.stderr.splitlines() if "warmup_steps" in line]
    assert notes == ["note: optim.warmup_steps 30 -> 1: the default warm-up does not fit before the decay of a "
                     "8-step run (step 6); set optim.warmup_steps to choose"]  # fmt: skip
    assert yaml.safe_load((tmp_path / "smoke" / "config.yaml").read_text())["optim"]["warmup_steps"] == 1
    assert json.loads((tmp_path / "smoke" / "provenance.json").read_text())["schedule"]["warmup_steps"] == 1
    # a paper preset's 2,000-step warm-up in a 1,000-step run: 10 % of the run, printed and resolved alike
    assert load_config(sets=["model.preset=moe-9b-a1b"], steps=1000).optim.warmup_steps == 100


def test_an_explicit_warmup_that_cannot_fit_stays_an_error():
    with pytest.raises(UserError, match=r"warmup_steps=2000 does not fit before the decay of a 1000-step run"):
        load_config(sets=["model.preset=moe-9b-a1b", "optim.warmup_steps=2000"], steps=1000)
    res = subprocess.run([sys.executable, "-m", "nitp_train", "run", "--out", "/nonexistent/x", "--steps", "8",
                          "--set", "optim.warmup_steps=7"], capture_output=True, text=True, env=ENV)  # fmt: skip
    assert res.returncode == 2 and _error_lines(res.stderr) == [res.stderr.strip()]
    assert "optim.warmup_steps=7 does not fit" in res.stderr


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("optim.lr=0", "optim.lr=0"),
        ("optim.lr=-1e-3", "optim.lr"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=0.9", "optim.betas"),
        ("optim.betas=[0.9, x]", "must be a number"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.grad_clip=0", "optim.grad_clip"),
        ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
        ("optim.decay_ratio=1.5", "optim.decay_ratio"),
        ("optim.decay_type=step", "optim.decay_type"),
        ("micro_batch=0", "micro_batch"),
        ("micro_batch=two", "must be a number"),
        ("max_consecutive_skips=0", "max_consecutive_skips"),
        ("export_dtype=fp16", "export_dtype"),
        ("export_steps=5", "export_steps"),
        ("keep_exports=-1", "keep_exports"),
    ],
)
def test_every_optimiser_and_schedule_setting_is_checked_before_torch(setting, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        load_config(sets=[setting])


# ---------------------------------------------------------------------------- errors under torchrun


def test_an_error_on_rank_1_only_reaches_the_user_as_one_line(tmp_path):
    """Rank 1 gives up waiting (dist_timeout_s=1) for the token files rank 0 is still writing (the built-in
    corpus takes ~20 s here): an error on one rank alone, printed once, by that rank, over gloo."""
    res = _torchrun(2, "-m", "nitp_train", "run", "--out", str(tmp_path / "x"), "--set", "dist_timeout_s=1",
                    "--set", "data.tokenizer=train:1024", "--steps", "2")  # fmt: skip
    assert res.returncode != 0
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: waited 1 s for rank 0's token files"), res.stderr[-3000:]


def test_a_batch_that_cannot_split_over_the_processes_is_one_line(tmp_path, tiny_corpus):
    res = _torchrun(2, "-m", "nitp_train", "run", "--out", str(tmp_path / "x"), "--data", str(tiny_corpus),
                    "--set", "global_batch=3", "--steps", "2")  # fmt: skip
    assert res.returncode != 0
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "global_batch=3 must split evenly over 2 process(es)" in lines[0], res.stderr[-3000:]
    assert not (tmp_path / "x").exists()  # refused before tokenising and before any process group


def test_resume_without_a_state_says_it_starts_from_step_0(tmp_path, tiny_sets, tiny_corpus, capsys):
    out = tmp_path / "run"
    train(
        load_config(sets=tiny_sets + [f"data.path={tiny_corpus}", "steps=1", "optim.warmup_steps=0"]),
        out,
        resume=True,
        progress=False,
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "--resume" in line]
    assert err == [f"note: --resume: no training state in {out / 'state'} yet; starting from step 0"]


# ---------------------------------------------------------------------------- versions


def test_the_pyproject_torch_floor_is_the_start_up_check():
    from nitp_train.version import TORCH_FLOOR, check_torch

    pyproject = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([0-9.]+)', pyproject).group(1)
    assert floor == TORCH_FLOOR
    assert re.search(r'"accelerate>=', pyproject)  # imported by nitp_train.model: declared
    check_torch(f"{TORCH_FLOOR}.0+cu128")
    older = f"{TORCH_FLOOR.split('.')[0]}.{int(TORCH_FLOOR.split('.')[1]) - 1}.1"
    with pytest.raises(UserError, match=f"torch {older} is older than {TORCH_FLOOR}"):
        check_torch(older)
    # the installed torch (>= the floor) has every call the floor stands for
    import inspect

    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (public since 2.6)
    from torch.distributed.tensor import distribute_tensor

    assert "src_data_rank" in inspect.signature(distribute_tensor).parameters
    assert "no_dist" in inspect.signature(dcp.async_save).parameters
    writer = inspect.signature(dcp.HuggingFaceStorageWriter).parameters
    assert {"save_distributed", "enable_consolidation"} <= set(writer)


# ---------------------------------------------------------------------------- MFU and the peak table


def test_peak_table_matches_device_names_exactly():
    from nitp_train.throughput import gpu_peak

    assert gpu_peak("NVIDIA L40") == 181e12 and gpu_peak("NVIDIA L40S") == 362e12 and gpu_peak("NVIDIA L4") == 121e12
    assert gpu_peak("NVIDIA H200") == 989e12 and gpu_peak("NVIDIA H200 NVL") == 835e12
    assert gpu_peak("NVIDIA H100 80GB HBM3") == 989e12 and gpu_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak("NVIDIA H100 NVL") == 835e12 and gpu_peak("NVIDIA GH200 480GB") == 989e12
    assert gpu_peak("NVIDIA A100-SXM4-80GB") == 312e12 and gpu_peak("NVIDIA A10") == 125e12
    assert gpu_peak("NVIDIA A10G") is None and gpu_peak("NVIDIA L400") is None  # unknown: set peak_tflops


def test_the_torchtitan_flop_convention_counts_all_keys():
    """torchtitan's get_num_flop_per_token: 6 x the weights a token passes through + 12 L H d_head T (no causal
    halving). Compared with the parameters counted on the meta device (biases and norms add ~1e-4)."""
    from nitp_train.flops import flops_per_token

    p = get_preset("dense-0.5b")
    hf = p.hf
    r = flops_per_token(p)
    L, H, T = hf["num_hidden_layers"], hf["num_attention_heads"], 8192
    hd = hf["hidden_size"] // H
    # tied embeddings: the embedding lookup is free, the LM head (the same matrix) is a matmul: 6 x total once
    reference = 6 * param_counts(p, vocab_size=hf["vocab_size"])["total"] + 12 * L * H * hd * T
    assert r.torchtitan_baseline == pytest.approx(reference, rel=1e-3)
    assert r.exact_baseline / r.torchtitan_baseline == pytest.approx(0.79, abs=0.01)  # the 0.79x


def test_metrics_time_compute_apart_from_the_rest(tmp_path, tiny_sets, tiny_corpus):
    out = tmp_path / "run"
    train(load_config(sets=tiny_sets + [f"data.path={tiny_corpus}", "steps=6", "save_every=3", "peak_tflops=1"]),
          out, progress=False)  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "first_step" in records[0]["time_s"] and records[0]["tokens_per_s"] is None  # step 1: warm-up only
    for r in records[1:]:
        t = r["time_s"]
        assert t["compute"] + sum(v for k, v in t.items() if k not in ("compute", "wall")) == pytest.approx(t["wall"])
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / 1e12)
        assert r["mfu_torchtitan"] > r["mfu"]  # the same time, more FLOPs counted
        assert r["tokens_per_s_e2e"] > 0
    assert any("eval" in r["time_s"] for r in records) and any("save" in r["time_s"] for r in records)
    assert any("export" in r["time_s"] for r in records) and any("probe" in r["time_s"] for r in records)


# ---------------------------------------------------------------------------- HF exports


def test_exports_have_their_own_cadence_retention_and_dtype(tmp_path, tiny_sets, tiny_corpus):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    sets = ["steps=8", "save_every=4", "export_every=2", "keep_exports=2", "export_steps=[2]", "export_dtype=bf16"]
    train(load_config(sets=tiny_sets + [f"data.path={tiny_corpus}", *sets]), out, progress=False)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-000002", "step-000006", "step-000008"]  # the last 2, and step 2 by name
    with safe_open(str(out / "checkpoints" / "step-000008" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000008", dtype="auto")
    assert model.dtype == torch.bfloat16
    assert sorted(p.name for p in (out / "state").iterdir()) == ["step-000006", "step-000008"]  # keep_last=2


# ---------------------------------------------------------------------------- known third-party warnings


def test_known_third_party_warnings_are_filtered_and_others_are_not():
    import logging

    from sklearn.metrics import precision_score

    from nitp_train.quiet import filter_known_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_warnings()
        precision_score([0, 1], [0, 0])  # sklearn's UndefinedMetricWarning
        warnings.warn("The task 'Banking77Classification' is superseded by 'Banking77Classification.v2'.", stacklevel=1)
        warnings.warn("something new", stacklevel=1)
    assert [str(w.message) for w in caught] == ["something new"]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mteb.abstasks.abstask")
    logger.addHandler(handler)
    try:
        logger.warning("The task 'X' is superseded by 'X.v2'.")
        logger.warning("another notice")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another notice"]
