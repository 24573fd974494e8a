"""The trainer: run-dir contract, pairing, lambda = 0, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nitp_train.config import load_config
from nitp_train.errors import UserError
from nitp_train.train import train


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _losses(arm: Path, key: str = "loss_ntp") -> list[float]:
    return [json.loads(line)[key] for line in (arm / "metrics.jsonl").read_text().splitlines()]


def test_pair_writes_the_run_directory_contract(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pair = json.loads((tiny_run / "pair.json").read_text())
    assert set(pair["arms"]) == {"ntp", "nitp"}
    assert all(pair["paired"].values())
    names = {}
    for arm in ("ntp", "nitp"):
        ckpts = sorted((tiny_run / arm / "checkpoints").iterdir())
        assert [c.name for c in ckpts] == ["step-000003", "step-000006"]
        model = AutoModelForCausalLM.from_pretrained(ckpts[-1])
        tok = AutoTokenizer.from_pretrained(ckpts[-1])
        assert tok("Once upon a time")["input_ids"]
        names[arm] = [n for n, _ in model.named_parameters()]
        assert (ckpts[-1] / "nitp_projector.safetensors").exists() == (arm == "nitp")
        records = [json.loads(line) for line in (tiny_run / arm / "metrics.jsonl").read_text().splitlines()]
        # log_every (10) is beyond this run: the probes (1, 3), the decay start's save (5) and the end log
        assert [r["step"] for r in records] == [1, 3, 5, 6]
        for key in ("tokens", "lr", "loss_ntp", "loss_total", "grad_norm", "tokens_per_s", "skipped_total"):
            assert all(key in r for r in records)
        r3 = records[1]
        assert "val_ce" in r3 and "probe_erank" in r3 and "probe_cosine" in r3
        assert 0 < r3["probe_top1pct_share"] < 1 and r3["probe_norm_max"] >= r3["probe_norm_median"]
        assert r3["probe_excluded_norm_median"] > 0  # the left-out first positions
        assert ("loss_nitp" in records[0]) == (arm == "nitp")
    # the exported NITP model has exactly the NTP architecture and parameter names
    assert names["ntp"] == names["nitp"]
    a = json.loads((tiny_run / "ntp" / "checkpoints" / "step-000006" / "config.json").read_text())
    b = json.loads((tiny_run / "nitp" / "checkpoints" / "step-000006" / "config.json").read_text())
    assert a == b


def test_arms_start_from_identical_weights_and_batches(tiny_run):
    prov = {a: json.loads((tiny_run / a / "provenance.json").read_text()) for a in ("ntp", "nitp")}
    for key in ("init_weights_sha256", "data_sha256", "order_sha256"):
        assert prov["ntp"][key] == prov["nitp"][key]
    # identical init and batches: the first step's NTP loss is bit-identical, later ones differ
    ntp, nitp = _losses(tiny_run / "ntp"), _losses(tiny_run / "nitp")
    assert ntp[0] == nitp[0]
    assert ntp[-1] != nitp[-1]


def test_pairing_records_the_consumed_batches_and_catches_a_mismatch(tiny_run, tmp_path):
    import shutil

    from nitp_train.pair import check_paired

    prov = {a: json.loads((tiny_run / a / "provenance.json").read_text()) for a in ("ntp", "nitp")}
    assert prov["ntp"]["consumed_steps"] == 6 and len(prov["ntp"]["consumed_order_sha256"]) == 64
    config = json.loads((tiny_run / "ntp" / "checkpoints" / "step-000006" / "config.json").read_text())
    assert prov["ntp"]["vocab_size"] == config["vocab_size"]  # what the report's FLOPs accounting reads
    assert prov["ntp"]["consumed_order_sha256"] == prov["nitp"]["consumed_order_sha256"]
    assert json.loads((tiny_run / "pair.json").read_text())["paired"]["consumed_order_sha256"] is True
    # an arm that saw other batches is caught
    copy = tmp_path / "copy"
    for a in ("ntp", "nitp"):
        (copy / a).mkdir(parents=True)
        shutil.copy(tiny_run / a / "provenance.json", copy / a)
    tampered = dict(prov["nitp"], consumed_order_sha256="0" * 64)
    (copy / "nitp" / "provenance.json").write_text(json.dumps(tampered))
    with pytest.raises(UserError, match="not paired"):
        check_paired(copy, ["ntp", "nitp"])


def test_pairing_compares_the_arms_settings_with_the_trainers_defaults(tiny_run, tmp_path):
    """Arms trained apart (`--arms`) must share their settings: a different learning rate is caught, while a
    field missing from one arm's config.yaml (written by an older trainer) reads as its default."""
    import shutil

    import yaml

    from nitp_train.pair import check_paired

    copy = tmp_path / "copy"
    for a in ("ntp", "nitp"):
        (copy / a).mkdir(parents=True)
        for f in ("provenance.json", "config.yaml"):
            shutil.copy(tiny_run / a / f, copy / a)
    saved = yaml.safe_load((copy / "nitp" / "config.yaml").read_text())
    assert saved.pop("release_host_memory") == "never"  # a field this trainer added, resolved (auto on a CPU)
    (copy / "nitp" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_paired(copy, ["ntp", "nitp"])["settings"] is True
    saved.pop("ce_chunk_tokens")  # not a resumable field: only the default merge makes this pass
    (copy / "nitp" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_paired(copy, ["ntp", "nitp"])["settings"] is True
    saved["optim"]["lr"] *= 2
    (copy / "nitp" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="not paired.*'settings': False"):
        check_paired(copy, ["ntp", "nitp"])


def test_projector_init_leaves_the_backbone_and_global_rng_alone(tiny_sets, tiny_corpus, tmp_path):
    from nitp_train.data import prepare_data
    from nitp_train.model import build_meta_module, hf_config, materialise, weights_sha256

    base = tiny_sets + [f"data.path={tiny_corpus}"]
    tok = prepare_data(load_config(sets=base).data, tmp_path / "cache").tokenizer
    after = {}
    for name in ("ntp", "nitp"):
        cfg = load_config(sets=base + [f"objective.name={name}"])
        config = hf_config(cfg, tok)
        module = build_meta_module(cfg, config)
        rng = torch.get_rng_state()
        sha = materialise(module, cfg, config, torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), rng)  # every draw came from its own (seed, module) stream
        assert sha == weights_sha256(module.model, prefix="model.")  # the hash is of the weights really there
        assert module.model.lm_head.weight is module.model.model.embed_tokens.weight  # still tied
        after[name] = (sha, sum(p.numel() for p in module.objective.parameters()))
    assert after["ntp"][0] == after["nitp"][0]  # bit-identical backbones
    assert after["ntp"][1] == 0 and after["nitp"][1] == 12 * 64 * 64  # and the projector exists in the NITP arm
    other = load_config(sets=base + ["seed=5"])
    module = build_meta_module(other, hf_config(other, tok))
    assert materialise(module, other, hf_config(other, tok), torch.device("cpu")) != after["ntp"][0]  # seed matters


def test_lambda_zero_reproduces_ntp(tmp_path, tiny_sets, tiny_corpus):
    sets = tiny_sets + [f"data.path={tiny_corpus}", "steps=4", "save_every=4", "optim.warmup_steps=0"]
    train(load_config(sets=sets + ["objective.name=ntp"]), tmp_path / "ntp", progress=False)
    train(load_config(sets=sets + ["objective.name=nitp", "objective.lambda=0"]), tmp_path / "nitp0", progress=False)
    assert _losses(tmp_path / "ntp") == pytest.approx(_losses(tmp_path / "nitp0"), abs=1e-6)
    a = _weights(tmp_path / "ntp" / "checkpoints" / "step-000004")
    b = _weights(tmp_path / "nitp0" / "checkpoints" / "step-000004")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    # and lambda > 0 does change the backbone (the test can fail)
    train(load_config(sets=sets + ["objective.name=nitp", "objective.lambda=1"]), tmp_path / "nitp1", progress=False)
    c = _weights(tmp_path / "nitp1" / "checkpoints" / "step-000004")
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4


def test_resume_after_sigkill_is_bit_identical(tmp_path, tiny_sets, tiny_corpus):
    sets = tiny_sets + [f"data.path={tiny_corpus}", "steps=10", "save_every=2", "objective.name=nitp"]
    ref = tmp_path / "ref"
    train(load_config(sets=sets), ref, progress=False)

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "nitp_train", "run", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "state" / "step-000006").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / "step-000010").exists()
    subprocess.run(args + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    a = _weights(ref / "checkpoints" / "step-000010")
    b = _weights(out / "checkpoints" / "step-000010")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa = load_file(str(ref / "checkpoints" / "step-000010" / "nitp_projector.safetensors"))
    pb = load_file(str(out / "checkpoints" / "step-000010" / "nitp_projector.safetensors"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert _losses(ref, "loss_total") == _losses(out, "loss_total")  # metrics.jsonl has no duplicate steps


def test_resume_refuses_a_changed_config_and_a_new_horizon(tmp_path, tiny_sets, tiny_corpus):
    sets = tiny_sets + [f"data.path={tiny_corpus}", "steps=3", "save_every=2", "eval_every=0", "probe_every=0"]
    out = tmp_path / "run"
    train(load_config(sets=sets), out, progress=False)
    before = sorted(p.name for p in (out / "state").iterdir())
    with pytest.raises(UserError, match=r"different config \(objective: .*lambda"):
        train(load_config(sets=sets + ["objective.lambda=0.5"]), out, resume=True, progress=False)
    with pytest.raises(UserError, match=r"LR horizon of 3 steps .*--extend-from"):
        train(load_config(sets=sets + ["steps=6"]), out, resume=True, progress=False)
    assert sorted(p.name for p in (out / "state").iterdir()) == before
    train(load_config(sets=sets + ["log_every=2"]), out, resume=True, progress=False)  # allowed: nothing left to do


# FSDP's gradient sync under accumulation (2 micro-batches a rank here): once a step, or once per micro-batch,
# which `auto` picks on a CPU (no rank then holds the whole model's gradients: nitp_train/plan.py)
@pytest.mark.parametrize(
    "parallel, grad_sync, resolved",
    [("ddp", "auto", "last_micro"), ("fsdp", "last_micro", "last_micro"), ("fsdp", "auto", "every_micro")],
)
def test_two_processes_match_one(tmp_path, tiny_sets, tiny_corpus, parallel, grad_sync, resolved):
    sets = tiny_sets + [
        f"fsdp_grad_sync={grad_sync}",
        f"data.path={tiny_corpus}",
        "steps=3",
        "save_every=3",
        "micro_batch=2",
        "eval_every=0",
        "probe_every=0",
        f"parallel={parallel}",
        "optim.warmup_steps=0",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one" / "nitp", tmp_path / "two" / "nitp"
    train(load_config(sets=sets), one, progress=False)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29533 + (parallel == "fsdp") + 2 * (grad_sync == "auto")),
            "-m",
            "nitp_train",
            "run",
            "--out",
            str(two),
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((two / "provenance.json").read_text())["world_size"] == 2
    assert yaml.safe_load((two / "config.yaml").read_text())["fsdp_grad_sync"] == resolved  # recorded resolved
    for key in ("loss_total", "loss_ntp", "loss_nitp"):
        a, b = _losses(one, key), _losses(two, key)
        assert b == pytest.approx(a, rel=1e-4)
    a, b = _weights(one / "checkpoints" / "step-000003"), _weights(two / "checkpoints" / "step-000003")
    # Adam moves a weight by ~lr = 3e-3 per early step whatever its gradient's size, so a gradient element near
    # rounding level (summed in another order over 2 processes) can move by a fraction of that: 3e-4 = lr / 10
    # (measured 1.4e-4 with the chunked cross-entropy, 0.7e-4 with HF's loss)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 3e-4


def test_existing_run_dir_needs_resume_or_overwrite(tiny_run, tiny_sets, tiny_corpus):
    cfg = load_config(sets=tiny_sets + [f"data.path={tiny_corpus}", "steps=6"])
    before = sorted(p.name for p in (tiny_run / "nitp" / "checkpoints").iterdir())
    with pytest.raises(UserError, match="--resume .* --overwrite"):
        train(cfg, tiny_run / "nitp", progress=False)
    assert sorted(p.name for p in (tiny_run / "nitp" / "checkpoints").iterdir()) == before


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["data.path={empty}"], "empty corpus"),
        (["data.path={tmp}/missing.txt"], "not a local path"),
        (["seq_len=100000"], "max_position_embeddings"),
        (["model.preset=nope"], "unknown preset"),
        (["objective.lambda=-1"], "lambda"),
        (["objective.target_layer=99"], "target_layer"),
        (["objective.loss=l3"], "objective.loss"),
        (["global_batch=7"], "split evenly"),
        (["save_every=0"], "save_every"),
        (["objective.lambda=1e-3", "objective.stop_grad=maybe"], "stop_grad"),
    ],
)
def test_bad_input_raises_a_clear_error(tmp_path, tiny_sets, tiny_corpus, sets, needle):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    sets = [s.format(empty=empty, tmp=tmp_path) for s in sets]
    with pytest.raises(UserError, match=needle):
        train(load_config(sets=tiny_sets + [f"data.path={tiny_corpus}"] + sets), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: the corrected rerun needs no --overwrite


def test_cli_bad_input_is_one_line_on_stderr(tmp_path):
    for args, needle in [
        (["run", "--out", str(tmp_path / "a"), "--preset", "nope"], "unknown preset"),
        (["flops", "--preset", "moe-9b-a1b", "--projector", "mlp"], "--projector"),
    ]:
        res = subprocess.run([sys.executable, "-m", "nitp_train", *args], capture_output=True, text=True)
        assert res.returncode == 2
        assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error:") and needle in res.stderr
        assert not (tmp_path / "a").exists()


def test_nan_loss_ends_the_run_after_max_consecutive_skips_and_keeps_the_last_checkpoint(
    tmp_path, tiny_sets, tiny_corpus, capsys
):
    """lr=1e12 blows the weights up at step 1; every later step is non-finite and skipped (the weights stay
    as they are), so the run ends at the third skip in a row, with one line; the exports stay finite."""
    sets = tiny_sets + [
        f"data.path={tiny_corpus}",
        "steps=40",
        "save_every=1",
        "optim.lr=1e12",
        "optim.grad_clip=1e30",
        "optim.warmup_steps=0",
        "eval_every=0",
        "probe_every=0",
        "max_consecutive_skips=3",
    ]
    with pytest.raises(UserError, match=r"3 non-finite step\(s\) in a row, the last at step \d+ \(non-finite loss"):
        train(load_config(sets=sets), tmp_path / "nan", progress=False)
    assert capsys.readouterr().err.count("warning: non-finite loss") == 2  # the skips before the third
    records = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_total"] for r in records[-2:]] == [1, 2]  # counted, one per step (save_every=1 logs each)
    assert records[-1]["loss_ntp"] is None  # non-finite values are null in the JSON, never NaN
    kept = sorted((tmp_path / "nan" / "checkpoints").glob("step-*"))
    assert kept, "no checkpoint before the loss blew up"
    weights = _weights(kept[-1])
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_one_skipped_step_does_not_end_the_run(tmp_path, tiny_sets, tiny_corpus, capsys):
    """lambda=1e30 from start_step 1 keeps the loss finite (~1e30 in fp32) but overflows the squared gradients
    at steps 2 and 3: the first skip is counted, announced and the run goes on (it saves and exports step 2);
    max_consecutive_skips=2 ends it at the second, with one line."""
    sets = tiny_sets + [
        f"data.path={tiny_corpus}",
        "objective.name=nitp",
        "objective.lambda=1e30",
        "objective.start_step=1",
        "steps=3",
        "save_every=1",
        "eval_every=0",
        "probe_every=0",
        "max_consecutive_skips=2",
    ]
    out = tmp_path / "inf"
    with pytest.raises(UserError, match=r"2 non-finite step\(s\) in a row, the last at step 3 \(non-finite gradient"):
        train(load_config(sets=sets), out, progress=False)
    assert "warning: non-finite gradient norm at step 2: its update was skipped" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"], r["skipped_total"]) for r in records] == [(1, 0, 0), (2, 1, 1)]
    # step 2's update was skipped: its state and export hold step 1's weights, finite
    w1, w2 = (_weights(out / "checkpoints" / f"step-00000{i}") for i in (1, 2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert all(torch.isfinite(t).all() for t in w2.values())


def test_pair_under_torchrun(tmp_path, tiny_sets, tiny_corpus):
    """`torchrun ... -m nitp_train pair`: one process writes pair.json, both arms train on 2 processes."""
    sets = tiny_sets + [
        f"data.path={tiny_corpus}",
        "steps=2",
        "save_every=2",
        "micro_batch=2",
        "eval_every=0",
        "probe_every=0",
    ]
    out = tmp_path / "pair"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29541",
            "-m",
            "nitp_train",
            "pair",
            "--out",
            str(out),
            *[a for s in sets for a in ("--set", s)],
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert all(json.loads((out / "pair.json").read_text())["paired"].values())
    for arm in ("ntp", "nitp"):
        assert json.loads((out / arm / "provenance.json").read_text())["world_size"] == 2
        assert (out / arm / "checkpoints" / "step-000002" / "model.safetensors").exists()


def test_frozen_projector_is_untouched_before_start_step(tmp_path, tiny_sets, tiny_corpus):
    from transformers import AutoTokenizer

    sets = tiny_sets + [f"data.path={tiny_corpus}", "steps=5", "save_every=1", "eval_every=0", "probe_every=0",
                        "objective.start_step=3", "optim.warmup_steps=0", "keep_last=0"]  # fmt: skip
    proj = {}
    for frozen in (True, False):
        out = tmp_path / f"frozen-{frozen}"
        train(load_config(sets=sets + [f"objective.freeze_projector={str(frozen).lower()}"]), out, progress=False)
        proj[frozen] = [load_file(str(out / "checkpoints" / f"step-{s:06d}" / "nitp_projector.safetensors"))
                        for s in range(1, 6)]  # fmt: skip
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(proj[True], proj[True][1:])]
    assert same == [True, True, False, False]  # frozen through the update of step 3 (start_step), then trained
    # and untouched by the very first update too: equal to its initial weights
    from nitp_train.model import build_meta_module, hf_config, materialise

    cfg = load_config(sets=sets + ["objective.freeze_projector=true"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "frozen-True" / "checkpoints" / "step-000001")
    module = build_meta_module(cfg, hf_config(cfg, tok))
    materialise(module, cfg, hf_config(cfg, tok), torch.device("cpu"))
    init = {k: v for k, v in module.objective.state_dict().items()}
    assert all(torch.equal(init[k], proj[True][0][k]) for k in init)
    # without the knob, AdamW's decoupled weight decay moves it even while its loss weight is 0
    assert not all(torch.equal(proj[False][0][k], proj[False][1][k]) for k in proj[False][0])


def test_cross_document_false_changes_the_nitp_loss_only(tmp_path, tiny_sets, tiny_corpus):
    # the stories of the text, one jsonl document each: packed windows then hold document boundaries
    stories = [s for s in tiny_corpus.read_text().split("\n\n") if s.strip()][:400]
    docs = tmp_path / "stories.jsonl"
    docs.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    sets = [s for s in tiny_sets if not s.startswith("data.cache_dir")] + [
        f"data.path={docs}", "steps=1", "eval_every=0", "probe_every=0", "optim.warmup_steps=0",
        f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    a, b = tmp_path / "across", tmp_path / "within"
    train(load_config(sets=sets), a, progress=False)
    train(load_config(sets=sets + ["objective.cross_document=false"]), b, progress=False)
    ra, rb = _losses(a, "loss_nitp"), _losses(b, "loss_nitp")
    assert _losses(a) == _losses(b)  # the NTP loss of step 1 (same init and batch) is untouched
    assert ra != rb  # TinyStories windows contain document boundaries: some pairs were dropped


def test_seeds_are_an_axis_of_paired_runs(tmp_path, tiny_sets, tiny_corpus):
    from nitp_train.pair import train_study

    sets = tiny_sets + [f"data.path={tiny_corpus}", "steps=2", "save_every=2", "eval_every=0", "probe_every=0",
                        "optim.warmup_steps=0"]  # fmt: skip
    prov = {}
    for name, extra in {"varied": [], "fixed": ["data_seed=7"]}.items():
        study = train_study(load_config(sets=sets + extra), tmp_path / name, [0, 1], progress=False)
        record = json.loads((tmp_path / name / "study.json").read_text())
        assert record["seeds"] == [0, 1] and all(all(v.values()) for v in record["pairs"].values())
        assert set(study["paired"]) == {"seed-0", "seed-1"}
        prov[name] = {
            s: json.loads((tmp_path / name / f"seed-{s}" / "nitp" / "provenance.json").read_text()) for s in (0, 1)
        }
    for name in ("varied", "fixed"):  # the init changes with the seed either way
        assert prov[name][0]["init_weights_sha256"] != prov[name][1]["init_weights_sha256"]
    assert prov["varied"][0]["order_sha256"] != prov["varied"][1]["order_sha256"]
    assert prov["fixed"][0]["order_sha256"] == prov["fixed"][1]["order_sha256"]  # data_seed holds the order
    res = subprocess.run([sys.executable, "-m", "nitp_train", "pair", "--out", str(tmp_path / "x"), "--seeds", "1,1"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "distinct" in res.stderr


def test_resume_accepts_a_config_saved_before_a_field_existed_and_refuses_a_real_change(tmp_path):
    """A study spans sessions: a field the saved config.yaml predates reads as its default; a changed one refuses."""
    from nitp_train.config import TrainConfig
    from nitp_train.errors import UserError
    from nitp_train.train import check_resume_config

    cfg = TrainConfig()
    saved = cfg.to_dict()
    del saved["max_consecutive_skips"]  # written by a trainer before this field
    del saved["optim"]["weight_decay"]
    check_resume_config(cfg, saved, tmp_path / "state" / "step-000010")
    saved["seq_len"] = cfg.seq_len * 2
    with pytest.raises(UserError, match="seq_len"):
        check_resume_config(cfg, saved, tmp_path / "state" / "step-000010")
