"""No tracebacks: every failure a user can cause is one `error:` line, a non-zero exit and nothing written.

One test per category of bad input (issue 13, item 5); each case runs the real command in-process
(`nitp_eval.cli.main`, as the console script does), so an exception that escapes `run_cli` fails the
test with its traceback. Add a case here for every new input that is checked.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch


def fails(capsys, monkeypatch, *args, code: int = 2) -> str:
    """Run `nitp-eval ARGS`; assert one `error:` line on stderr, no traceback, exit `code`; return the line."""
    from nitp_eval.cli import main

    monkeypatch.setattr(sys, "argv", ["nitp-eval", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0], err  # the error is the last word
    return errors[0]


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------- files cut short or corrupt


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_cut_short_or_corrupt_files(tiny_checkpoint, tiny_run, shared_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    # model weights cut short
    weights = copy_model(tiny_checkpoint, tmp_path / "cut")
    _truncate(weights / "model.safetensors")
    line = fails(capsys, monkeypatch, "geometry", weights, "--out", out)
    assert "cannot load the model (SafetensorError" in line and "saved completely" in line
    # config.json corrupt
    cfg = copy_model(tiny_checkpoint, tmp_path / "badcfg")
    _truncate(cfg / "config.json")
    assert "cannot load the model" in fails(capsys, monkeypatch, "geometry", cfg, "--out", out)
    # states files: .npy and .safetensors cut short, a .pt that is not a pickle
    from safetensors.torch import save_file

    np.save(tmp_path / "s.npy", np.zeros((50, 8), np.float32))
    save_file({"hidden_states": torch.zeros(50, 8)}, tmp_path / "s.safetensors")
    (tmp_path / "s.pt").write_bytes(b"not a pickle")
    for name in ("s.npy", "s.safetensors"):
        _truncate(tmp_path / name)
    for name in ("s.npy", "s.safetensors", "s.pt"):
        line = fails(capsys, monkeypatch, "geometry", tmp_path / name, "--out", out)
        assert "unreadable states file" in line and "cut short" in line
    # a run's projector and token cache cut short
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    ckpt = sorted((run / "nitp" / "checkpoints").iterdir())[-1]
    _truncate(ckpt / "nitp_projector.safetensors")
    line = fails(capsys, monkeypatch, "geometry", ckpt, "--out", out)
    assert "nitp_projector.safetensors: unreadable" in line and "remove it" in line
    prov = json.loads((run / "ntp" / "provenance.json").read_text())
    bad_cache = tmp_path / "cache"
    shutil.copytree(prov["data_dir"], bad_cache)
    (bad_cache / "val.bin").write_bytes((bad_cache / "val.bin").read_bytes()[:-1])  # half a token
    prov["data_dir"] = str(bad_cache)
    (run / "ntp" / "provenance.json").write_text(json.dumps(prov))
    line = fails(capsys, monkeypatch, "geometry", run / "ntp", "--out", out)
    assert "val.bin: unreadable" in line and "re-tokenise" in line
    # lm-eval local data cut short: found before lm-eval starts, with file and line
    lm = tmp_path / "lm" / "arc_challenge"
    lm.mkdir(parents=True)
    for f in (shared_data / "lm" / "arc_challenge").glob("*.jsonl"):
        (lm / f.name).write_bytes(f.read_bytes()[:3000])
    line = fails(capsys, monkeypatch, "lm", tiny_checkpoint, "--tasks", "arc_challenge", "--data-dir", lm.parent)
    assert "jsonl:" in line and "not valid JSON" in line
    # an analysis spec that is not YAML
    (tmp_path / "spec.yaml").write_text("runs: [a\n  b: {")
    assert "not valid YAML" in fails(capsys, monkeypatch, "report", "--spec", tmp_path / "spec.yaml", "--out", out)
    assert not out.exists()


def test_cut_short_mteb_copy_is_named_and_the_rest_runs(tiny_checkpoint, shared_data, tmp_path, capsys, monkeypatch):
    """MTEB lists a broken local copy, file and line, with the tasks it could not run; the others are scored."""
    from nitp_eval.cli import main

    for task in ("STSBenchmark", "SICK-R"):
        shutil.copytree(shared_data / "mteb" / task, tmp_path / "mteb" / task)
    _truncate(tmp_path / "mteb" / "STSBenchmark" / "test.jsonl", 0.3)
    args = ["mteb", tiny_checkpoint, "--tasks", "STSBenchmark,SICK-R", "--data-dir", tmp_path / "mteb", "--limit", 20]
    monkeypatch.setattr(sys, "argv", ["nitp-eval", *map(str, args), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        main()
    printed = capsys.readouterr()
    assert e.value.code == 0, printed.err
    assert "Traceback" not in printed.err
    assert "STSBenchmark: missing" in printed.out and "test.jsonl:" in printed.out and "not valid JSON" in printed.out
    r = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert r["missing"] == ["STSBenchmark"] and "SICK-R" in r["tasks"]


# ---------------------------------------------------------------------------- non-finite values


def test_non_finite_values_are_counted_and_located(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    x = np.random.default_rng(0).standard_normal((2, 100, 8)).astype(np.float32)
    x[1, 3, 2], x[1, 7, 1] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", x)
    line = fails(capsys, monkeypatch, "geometry", tmp_path / "nan.npy", "--out", out)
    assert "non-finite values" in line and "layer 1: 2" in line and "layer 0" not in line
    # weights with NaN: named before any evaluation, for every command that loads a model
    from transformers import AutoModelForCausalLM

    broken = copy_model(tiny_checkpoint, tmp_path / "nan-model")
    model = AutoModelForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, :5] = float("nan")
    model.save_pretrained(broken)
    for cmd in (["geometry", broken, "--tokens", 300], ["mteb", broken, "--tasks", "STSBenchmark"]):
        line = fails(capsys, monkeypatch, *cmd, "--out", out)
        assert "model.layers.1.mlp.down_proj.weight: 5" in line and "earlier checkpoint" in line
    assert not out.exists()


# ---------------------------------------------------------------------------- numeric settings out of range


@pytest.mark.parametrize(
    "args, message",
    [
        (["geometry", "{model}", "--exclude-massive", "0.5"], "--exclude-massive 0.5: must be a finite factor > 1"),
        (["geometry", "{model}", "--exclude-massive", "nan"], "--exclude-massive nan"),
        (["geometry", "{model}", "--n-pairs", "-1"], "--n-pairs -1: must be >= 0"),
        (["geometry", "{model}", "--seq-len", "1"], "--seq-len 1: must be at least 2"),
        (["geometry", "{model}", "--tokens", "1"], "--tokens 1: too few"),
        (["geometry", "{model}", "--exclude-positions", "x"], "--exclude-positions 'x'"),
        (["lm", "{model}", "--tasks", "arc_challenge", "--limit", "0"], "--limit 0.0: must be > 0"),
        (["lm", "{model}", "--tasks", "arc_challenge", "--num-fewshot", "-1"], "--num-fewshot -1"),
        (["lm", "{model}", "--tasks", "arc_challenge", "--batch-size", "0"], "--batch-size 0"),
        (["lm", "{model}", "--tasks", "arc_challenge", "--batch-size", "abc"], "--batch-size abc"),
        (["lm", "{model}", "--tasks", "gsm8k", "--gen-kwargs", "max_gen_toks=x"], "max_gen_toks=x"),
        (["mteb", "{model}", "--batch-size", "0"], "--batch-size 0"),
        (["mteb", "{model}", "--max-length", "0"], "--max-length 0"),
        (["mteb", "{model}", "--limit", "0"], "--limit 0"),
        (["report", "{model}", "--n-boot", "50"], "--n-boot 50"),
    ],
)
def test_numeric_settings_out_of_range(tiny_checkpoint, tmp_path, capsys, monkeypatch, args, message):
    args = [a.format(model=tiny_checkpoint) for a in args]
    assert message in fails(capsys, monkeypatch, *args, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- settings that cannot work together


@pytest.mark.parametrize(
    "args, message",
    [
        (["geometry", "{model}", "--seq-len", "5000"], "max_position_embeddings"),
        (["geometry", "{model}", "--seq-len", "3", "--exclude-positions", "0,1,2"], "leaves out 3 of --seq-len 3"),
        (["geometry", "{model}", "--tokens", "50", "--seq-len", "100"], "2 different sequences"),
        # 600 new tokens cannot fit 512 positions; mmlu_pro_law asks for 2048 and --strict refuses to cap it
        (["lm", "{model}", "--tasks", "gsm8k", "--gen-kwargs", "max_gen_toks=600"], "give max_gen_toks=256 or less"),
        (["lm", "{model}", "--tasks", "mmlu_pro_law", "--strict"], "max_gen_toks=2048"),
        (["report", "{model}", "--sections", "downstream,nope"], "--sections: unknown"),
    ],
)
def test_settings_that_cannot_work_together(tiny_checkpoint, tmp_path, capsys, monkeypatch, args, message):
    args = [a.format(model=tiny_checkpoint) for a in args]
    assert message in fails(capsys, monkeypatch, *args, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- models of the wrong kind


def test_models_of_the_wrong_kind(tiny_checkpoint, tiny_encoder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    line = fails(capsys, monkeypatch, "lm", tiny_encoder, "--tasks", "arc_challenge", "--out", out)
    assert "an encoder (BertModel), not a causal LM" in line and "nitp-eval mteb" in line
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", no_weights)
    assert "cannot load the model" in fails(capsys, monkeypatch, "geometry", no_weights, "--out", out)
    assert "not a run dir" in fails(capsys, monkeypatch, "mteb", tmp_path, "--out", out)
    assert not out.exists()
