"""nitp-eval geometry end to end on a real tiny trainer run, a plain HF model and a states file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nitp_eval.cli import app
from nitp_train.errors import UserError

REQUIRED = ("erank_cov", "erank_sv", "anisotropy", "anisotropy_exact", "cka_to_last", "mean_norm")
EXTRA = ("rankme", "alpha_req", "twonn", "prompt_entropy", "dataset_entropy", "curvature")  # schema 2


def run(*args):
    result = CliRunner().invoke(app, ["geometry", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_run_dir_both_arms_side_by_side(tiny_run, tmp_path):
    out = run(tiny_run, "--tokens", 2000, "--out", tmp_path)  # the run holds out ~2.5k tokens
    ntp = json.loads((tmp_path / "ntp-step-000006.json").read_text())
    nitp = json.loads((tmp_path / "nitp-step-000006.json").read_text())
    for r, arm in ((ntp, "ntp"), (nitp, "nitp")):
        assert r["schema"] == "nitp.geometry" and r["schema_version"] == 2 and r["arm"] == arm and r["step"] == 6
        assert {"nitp", "torch", "transformers", "numpy"} <= set(r["versions"])
        assert r["versions"]["torch"] == torch.__version__
        assert r["checkpoint"] == str((tiny_run / arm / "checkpoints" / "step-000006").resolve())
        assert r["notes"] == []  # 2000 tokens > dim: no rank-cap note
        assert r["tokens"] == 2000 and r["settings"]["tokens_requested"] == 2000
        assert r["settings"]["text_source"].startswith("run validation tokens")
        L = r["num_layers"]
        assert r["layers"] == list(range(L + 1))
        assert all(len(r["per_layer"][k]) == L + 1 for k in REQUIRED + EXTRA)
        assert r["settings"]["metrics"]["rankme_eps"] == 1e-7 and r["samples"]["twonn"]["seed"] == 0
        assert r["samples"]["twonn"]["tokens"] == 1024 and r["samples"]["twonn"]["of"] == 2000
        assert 0 < r["unembedding"]["erank"] <= r["dim"] and 0 <= r["unembedding"]["top_k_share"] <= 1
        assert all(0 < h <= 1 for h in r["per_layer"]["prompt_entropy"] + r["per_layer"]["dataset_entropy"])
        assert all(0 < c < np.pi for c in r["per_layer"]["curvature"])
        assert r["per_layer"]["cka_to_last"][-1] == 1.0
        assert r["cka_matrix"] is None
        assert r["rank_cap"] == min(1999, r["dim"])
        assert all(0 < e <= r["rank_cap"] for e in r["per_layer"]["erank_cov"])
        assert -1 <= r["alignment"]["cos_next"] <= 1
    # the same tokens and the same k in both arms, so the numbers are comparable
    assert ntp["alignment"]["target_layer"] == nitp["alignment"]["target_layer"]
    assert ntp["settings"]["text"] == nitp["settings"]["text"]
    assert nitp["settings"]["target_layer_source"] == "nitp_projector.safetensors"
    assert ntp["settings"]["target_layer_source"] == "run objective.target_layer"
    assert ntp["alignment"]["projector_cos"] is None
    assert -1 <= nitp["alignment"]["projector_cos"] <= 1
    assert "ntp-step-000006" in out and "nitp-step-000006" in out and "proj_cos" in out  # summary table


def test_all_steps_trajectory_and_no_silent_overwrite(tiny_run, tmp_path):
    run(tiny_run / "nitp", "--all-steps", "--tokens", 1000, "--layers", "0,-1", "--cka-matrix", "--out", tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["nitp-step-000003.json", "nitp-step-000006.json"]
    r3 = json.loads((tmp_path / files[0]).read_text())
    r6 = json.loads((tmp_path / files[1]).read_text())
    assert r3["layers"] == [0, r3["num_layers"]]
    assert len(r3["cka_matrix"]) == 2 and r3["cka_matrix"][0][1] == r3["cka_matrix"][1][0]
    assert r3["per_layer"]["erank_cov"] != r6["per_layer"]["erank_cov"]  # training changed the states
    # every destination is checked before any work: step 3 is not analysed when step 6 would be refused
    (tmp_path / files[0]).unlink()
    with pytest.raises(UserError, match="--overwrite"):
        run(tiny_run / "nitp", "--all-steps", "--tokens", 1000, "--out", tmp_path)
    assert not (tmp_path / files[0]).exists()
    run(tiny_run / "nitp" / "checkpoints" / "step-000003", "--tokens", 500, "--out", tmp_path, "--overwrite")
    assert json.loads((tmp_path / files[0]).read_text())["tokens"] == 500


def test_any_hf_model_with_text_file_and_target_layer(tiny_checkpoint, shared_data, tmp_path):
    text = shared_data / "corpus" / "tinystories" / "validation.txt"
    out = run(
        tiny_checkpoint,
        "--text",
        text,
        "--tokens",
        1500,
        "--seq-len",
        128,
        "--target-layer",
        2,
        "--n-pairs",
        300,
        "--out",
        tmp_path,
    )
    r = json.loads((tmp_path / "model.json").read_text())
    assert r["arm"] is None and r["settings"]["text"] == str(text) and r["settings"]["text_source"] == "--text"
    assert r["settings"]["seq_len"] == 128 and r["pairs"] == 300
    assert r["alignment"]["target_layer"] == 2 and r["settings"]["target_layer_source"] == "--target-layer"
    assert "cos(h_t, layer 2 at t+1)" in out


def test_builtin_fallback_text_for_models_outside_runs(tiny_checkpoint, tmp_path):
    run(tiny_checkpoint, "--tokens", 600, "--seq-len", 100, "--out", tmp_path)
    r = json.loads((tmp_path / "model.json").read_text())
    assert r["settings"]["text"].endswith("shakespeare-validation.jsonl.gz")
    assert r["settings"]["text_source"].startswith("built-in")
    assert (
        r["settings"]["target_layer_source"] == "default ceil(0.2 L), the trainer's rule"
        and r["alignment"]["target_layer"] == 1
    )


def test_states_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 500, 8)).astype(np.float32)
    np.save(tmp_path / "states.npy", x)
    run(tmp_path / "states.npy", "--tokens", 500, "--out", tmp_path / "eval")
    r = json.loads((tmp_path / "eval" / "states.npy.json").read_text())
    assert r["tokens"] == 500 and r["layers"] == [0, 1] and r["settings"]["text_source"] == "states file"
    assert 7.0 < r["per_layer"]["erank_cov"][0] <= 8.0  # isotropic Gaussian
    assert r["checkpoint"] == str((tmp_path / "states.npy").resolve()) and r["notes"] == []


def test_states_file_notes_rank_cap_short_file_and_ignored_options(tmp_path):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32))
    result = CliRunner().invoke(
        app,
        [
            "geometry",
            str(tmp_path / "few.npy"),
            "--text",
            "x.txt",
            "--seq-len",
            "8",
            "--bos",
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "eval" / "few.npy.json").read_text())
    assert r["tokens"] == 40 and r["rank_cap"] == 39
    assert any("only 40 token states" in n for n in r["notes"])  # the default --tokens is 100000
    assert any("capped at tokens - 1 = 39 < dim" in n for n in r["notes"])
    err = result.stderr
    assert "--text, --seq-len, --bos ignored" in err and "only 40 token states" in err and "capped" in err


def test_rank_cap_note_for_a_model(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "geometry",
            str(tiny_checkpoint),
            "--tokens",
            "60",
            "--seq-len",
            "20",
            "--n-pairs",
            "50",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "model.json").read_text())
    assert r["tokens"] == 60 and r["dim"] == 64 and r["rank_cap"] == 59 and r["pairs"] == 50
    assert len(r["notes"]) == 1 and "capped at tokens - 1 = 59 < dim" in r["notes"][0] and "capped" in result.stderr


def test_results_record_the_hash_of_the_analysed_tokens_and_tokens_per_dim(tiny_run, tmp_path):
    """settings.text_sha256 is the sha256 of the analysed token ids as little-endian int32, whatever their storage."""
    import hashlib

    arm = tiny_run / "ntp"
    for name, tokens in (("a", 1000), ("b", 1000), ("c", 900)):
        run(arm, "--tokens", tokens, "--seq-len", 64, "--n-pairs", 100, "--out", tmp_path / name)
    a, b, c = (json.loads((tmp_path / name / "ntp-step-000006.json").read_text()) for name in "abc")
    assert a["settings"]["text_sha256"] == b["settings"]["text_sha256"] != c["settings"]["text_sha256"]
    # independently: the run's validation tokens (val.bin, stored in the token cache's own dtype) as int32 bytes
    val = Path(a["settings"]["text"])
    meta = json.loads((val.parent / "meta.json").read_text())
    ids = np.fromfile(val, dtype=meta["dtype"])[:1000]
    assert hashlib.sha256(ids.astype("<i4").tobytes()).hexdigest() == a["settings"]["text_sha256"]
    assert a["tokens_per_dim"] == a["tokens"] / a["dim"] and c["tokens_per_dim"] == c["tokens"] / c["dim"]
    # a states file: the bytes of the analysed rows of every layer
    x = np.random.default_rng(0).standard_normal((2, 300, 8)).astype(np.float32)
    np.save(tmp_path / "states.npy", x)
    for name, tokens in (("s1", 300), ("s2", 200)):
        run(tmp_path / "states.npy", "--tokens", tokens, "--out", tmp_path / name)
    s1, s2 = (json.loads((tmp_path / name / "states.npy.json").read_text()) for name in ("s1", "s2"))
    assert s1["settings"]["text_sha256"] == hashlib.sha256(x.tobytes()).hexdigest()  # every layer's rows
    assert s2["settings"]["text_sha256"] == hashlib.sha256(np.ascontiguousarray(x[:, :200]).tobytes()).hexdigest()
    assert s1["tokens_per_dim"] == 300 / 8


def test_run_without_its_validation_tokens_says_so(tiny_run, tmp_path):
    import shutil

    arm = tmp_path / "run" / "nitp"
    shutil.copytree(tiny_run / "nitp" / "checkpoints" / "step-000003", arm / "checkpoints" / "step-000003")
    shutil.copy(tiny_run / "nitp" / "config.yaml", arm / "config.yaml")
    prov = json.loads((tiny_run / "nitp" / "provenance.json").read_text())
    (arm / "provenance.json").write_text(json.dumps({**prov, "data_dir": str(tmp_path / "gone")}))
    result = CliRunner().invoke(
        app, ["geometry", str(arm), "--tokens", "300", "--seq-len", "64", "--out", str(tmp_path / "eval")]
    )
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "eval" / "nitp-step-000003.json").read_text())
    assert r["settings"]["text_source"].startswith("built-in")
    assert "validation tokens" in result.stderr and "were not found" in result.stderr
    assert any("were not found" in n for n in r["notes"])


def test_hf_dataset_id_is_streamed(tiny_checkpoint, tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False, revision=None):
        calls.append((name, config, split, streaming))
        return ({"text": f"Line {i} of a dataset that only exists in this test."} for i in range(100_000))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    run(
        tiny_checkpoint,
        "--text",
        "someone/corpus:en",
        "--text-split",
        "test",
        "--tokens",
        700,
        "--seq-len",
        100,
        "--out",
        tmp_path,
    )
    r = json.loads((tmp_path / "model.json").read_text())
    assert calls == [("someone/corpus", "en", "test", True)]
    assert r["tokens"] == 700 and r["settings"]["text"] == "someone/corpus:en" and r["settings"]["text_split"] == "test"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{model}", "--target-layer", "7"], "out of range"),
        (["{model}", "--tokens", "50", "--seq-len", "100"], "2 different sequences"),
        (["{model}", "--seq-len", "5000"], "max_position_embeddings"),
        (["{model}", "--device", "cuda:0"], "--device"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_checkpoint, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = [a.format(tmp=tmp_path, model=tiny_checkpoint) for a in args]
    with pytest.raises(UserError, match=message):
        run(*args, "--out", tmp_path / "out")


def _no_weights(tmp_path, model):
    d = tmp_path / "no-weights"
    d.mkdir()
    (d / "config.json").write_text((model / "config.json").read_text())
    return d


def _list_pt(tmp_path, model):
    torch.save([torch.zeros(10, 4), torch.zeros(10, 4)], tmp_path / "list.pt")
    return tmp_path / "list.pt"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp, model: [tmp / "nope"], "nope: no such file"),
        (lambda tmp, model: [tmp], "not a run dir"),
        (lambda tmp, model: [_no_weights(tmp, model)], "cannot load the model"),
        (lambda tmp, model: [model, "--layers", "9"], "--layers 9: out of range"),
        (lambda tmp, model: [model, "--tokens", "1"], "--tokens 1: too few"),
        (lambda tmp, model: [model, "--dtype", "float8"], "--dtype float8: unknown"),
        (lambda tmp, model: [_list_pt(tmp, model)], "holds a list, not one tensor"),
    ],
    ids=["missing-path", "not-a-model", "no-weights", "layer-out-of-range", "too-few-tokens", "bad-dtype", "pt-list"],
)
def test_cli_error_exit_code_and_single_line(tiny_checkpoint, tmp_path, make_args, message):
    (tmp_path / "in").mkdir()
    args = [str(a) for a in make_args(tmp_path / "in", tiny_checkpoint)]
    proc = subprocess.run(
        [sys.executable, "-m", "nitp_eval.cli", "geometry", *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_schema_1_and_schema_2_results_load_side_by_side(tmp_path):
    """A schema-1 file (shipped with the CPU study) and a schema-2 file written now load into one run."""
    from nitp_eval.report.load import load_run

    root = Path(__file__).resolve().parent.parent
    old = root / "reports" / "replication-cpu" / "results" / "seed-0" / "eval" / "geometry" / "ntp-step-000050.json"
    geo = tmp_path / "eval" / "geometry"
    geo.mkdir(parents=True)
    (geo / old.name).write_bytes(old.read_bytes())
    states = tmp_path / "states.npy"
    np.save(states, np.random.default_rng(0).standard_normal((2, 300, 16)).astype(np.float32))
    run(states, "--out", tmp_path / "new", "--n-pairs", 100, "--twonn-sample", 200)
    new = json.loads((tmp_path / "new" / "states.npy.json").read_text())
    assert new["schema_version"] == 2 and json.loads(old.read_text())["schema_version"] == 1
    assert new["per_layer"]["prompt_entropy"] == [None, None]  # no sequence ids in a states file
    assert all(t > 0 for t in new["per_layer"]["twonn"]) and new["samples"]["twonn"]["tokens"] == 200
    (geo / "nitp-step-000050.json").write_text(json.dumps(new))
    loaded = load_run(tmp_path)
    assert not [m for m in loaded.missing if "geometry" in m]
    assert {arm: sorted(by) for arm, by in loaded.results["geometry"].items()} == {"ntp": [50], "nitp": [50]}
    assert "rankme" not in loaded.latest("geometry", "ntp").data["per_layer"]
    assert len(loaded.latest("geometry", "nitp").data["per_layer"]["rankme"]) == 2
