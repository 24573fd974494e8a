"""Config layering (preset < --config file < options < --set), the LR schedule and the AdamW groups."""

from __future__ import annotations

import os
import platform
import sys

import pytest
import torch

from nitp_train.config import load_config
from nitp_train.errors import UserError
from nitp_train.model import make_optimizer


def test_layers_preset_file_options_set(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("steps: 50\nseq_len: 128\nobjective:\n  lambda: 0.5\n  loss: smooth_l1\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["objective.lambda=0.25", "optim.betas=[0.8, 0.9]"], steps=45, seed=7)
    assert cfg.objective.lam == 0.25  # --set beats the file
    assert cfg.objective.loss == "smooth_l1"  # the file beats the default
    assert cfg.steps == 45 and cfg.seed == 7  # options beat the file
    assert cfg.seq_len == 128 and cfg.optim.lr == 1e-3
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.objective.target_layer == 2 and cfg.global_batch == 16  # from the tiny-dense preset
    # the paper presets carry their target layer and lambda
    paper = load_config(sets=["model.preset=moe-9b-a1b"])
    assert (paper.objective.target_layer, paper.objective.lam, paper.seq_len) == (5, 0.8, 8192)


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["stepz=3"], "unknown config field"),
        (["optim.lr=fast"], "optim.lr='fast' must be a number"),
        (["save_every=0"], "save_every=0 must be >= 1"),
        (["eval_every=-1"], "eval_every=-1 must be >= 0"),
        (["objective=3"], "objective"),
        (["precision=fp8"], "precision"),
        (["compile=maybe"], "compile='maybe' must be true or false"),
        (["device=gpu"], "device='gpu' is unknown"),
        (["steps=10", "tokens=1e9"], "steps or tokens, not both"),
    ],
)
def test_bad_fields(sets, needle):
    with pytest.raises(UserError, match=needle):
        load_config(sets=sets)


def test_config_file_must_exist_and_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="YAML mapping"):
        load_config(tmp_path / "list.yaml")


def test_warmup_stable_decay_schedule():
    # 100 steps, 10 warm-up, decay ratio 0.2: linear 0 -> lr over 10 steps, flat to step 80, linear to 0 at 100
    cfg = load_config(sets=["steps=100", "optim.warmup_steps=10", "optim.lr=1.0"])
    opt, sched = make_optimizer(cfg, torch.nn.Linear(2, 2))
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    want = [s / 10 if s < 10 else 1.0 if s < 80 else (100 - s) / 20 for s in range(100)]
    assert lrs == pytest.approx(want, abs=1e-9)


def test_weight_decay_spares_norms_and_biases():
    cfg = load_config(sets=["optim.weight_decay=0.1"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt, _ = make_optimizer(cfg, model)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]  # the Linear weight only
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(4,), (4,), (4,)]  # bias, norm weight, norm bias
    assert opt.defaults["betas"] == (0.9, 0.95)


HEAP_PROBE = """
import os, sys, torch
from nitp_train.config import load_config
from nitp_train.distributed import release_host_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

print(release_host_memory(load_config(sets=sys.argv[1:])))
for mb in (24, 24, 64):  # twice 24 MiB: glibc raises its own threshold to a freed block's size
    x = torch.ones(mb << 18)  # fp32: mb MiB, every page touched
    before = rss_mb()
    del x
    print(round(before - rss_mb()))  # MiB handed back to the OS by the free
"""


@pytest.mark.parametrize(
    "sets, policy, returned",
    [
        (["parallel=fsdp"], "always", [24, 24, 64]),  # auto under FSDP: every large block goes back
        (["device=cpu"], "never", [0, 0, 0]),  # auto for one process on a CPU: kept for reuse
        (["device=cpu", "release_host_memory=always"], "always", [24, 24, 64]),
        (["parallel=fsdp", "release_host_memory=never"], "never", [0, 0, 0]),
        (["device=cpu", "release_host_memory=glibc"], "None", [24, 0, 64]),  # nothing set: glibc's own
    ],
)
def test_release_host_memory_sets_what_glibc_does_with_a_freed_block(sets, policy, returned):
    """What each `release_host_memory` policy makes glibc do, measured in a fresh process (the setting lasts
    for the process): the RSS a free of a 24 or 64 MiB tensor hands back. glibc's own keeps the second
    24 MiB block and returns the 64 MiB one, so `always` and `never` each differ from doing nothing."""
    if not sys.platform.startswith("linux") or "glibc" not in platform.libc_ver()[0]:
        pytest.skip("glibc's malloc on Linux only")
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, *sets], capture_output=True, text=True, env=env,
                         check=True).stdout.split()  # fmt: skip
    assert out[0] == policy
    assert [int(x) for x in out[1:]] == pytest.approx(returned, abs=3)


@pytest.mark.parametrize(
    "env", [{"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}]
)
def test_release_host_memory_leaves_glibc_alone_where_the_environment_sets_it(env):
    import subprocess

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, "parallel=fsdp"], capture_output=True, text=True,
                         env=env, check=True).stdout.split()  # fmt: skip
    assert out[0] == "None"


def test_release_host_memory_auto_and_unknown_values():
    """auto: `always` under FSDP (any device), `never` for one process or DDP on a CPU, glibc's own on a GPU."""
    from nitp_train.distributed import host_memory_policy

    def policy(*sets):
        return host_memory_policy(load_config(sets=list(sets)))

    assert policy("parallel=fsdp", "device=cpu") == policy("parallel=fsdp", "device=cuda") == "always"
    assert policy("device=cpu") == policy("device=cpu", "parallel=ddp") == "never"
    assert policy("device=cuda") == "glibc" and policy("device=cuda", "release_host_memory=never") == "never"
    with pytest.raises(UserError, match="release_host_memory='on' is unknown"):
        load_config(sets=["release_host_memory='on'"])
