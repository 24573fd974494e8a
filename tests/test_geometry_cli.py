"""nitp-eval geometry end to end on a real tiny trainer run, a plain HF model and a states file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from nitp_eval.cli import app
from nitp_train.errors import UserError

REQUIRED = ("erank_cov", "erank_sv", "anisotropy", "anisotropy_exact", "cka_to_last", "mean_norm")


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
        assert r["schema"] == "nitp.geometry" and r["arm"] == arm and r["step"] == 6
        assert r["tokens"] == 2000 and r["settings"]["tokens_requested"] == 2000
        assert r["settings"]["text_source"].startswith("run validation tokens")
        L = r["num_layers"]
        assert r["layers"] == list(range(L + 1))
        assert all(len(r["per_layer"][k]) == L + 1 for k in REQUIRED)
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
    with pytest.raises(UserError, match="--overwrite"):
        run(tiny_run / "nitp", "--all-steps", "--tokens", 1000, "--out", tmp_path)
    run(tiny_run / "nitp" / "checkpoints" / "step-000003", "--tokens", 500, "--out", tmp_path, "--overwrite")
    assert json.loads((tmp_path / files[0]).read_text())["tokens"] == 500


def test_any_hf_model_with_text_file_and_target_layer(tiny_checkpoint, shared_data, tmp_path):
    text = shared_data / "corpus" / "tinystories" / "validation.txt"
    out = run(tiny_checkpoint, "--text", text, "--tokens", 1500, "--seq-len", 128, "--target-layer", 2,
              "--n-pairs", 300, "--out", tmp_path)
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
    assert r["settings"]["target_layer_source"] == "default round(0.2 L)" and r["alignment"]["target_layer"] == 1


def test_states_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 500, 8)).astype(np.float32)
    np.save(tmp_path / "states.npy", x)
    run(tmp_path / "states.npy", "--out", tmp_path / "eval")
    r = json.loads((tmp_path / "eval" / "states.npy.json").read_text())
    assert r["tokens"] == 500 and r["layers"] == [0, 1] and r["settings"]["text_source"] == "states file"
    assert 7.0 < r["per_layer"]["erank_cov"][0] <= 8.0  # isotropic Gaussian


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "no such file"),
    (["{tmp}"], "not a run dir"),
    (["{model}", "--layers", "9"], "out of range"),
    (["{model}", "--tokens", "1"], "too few"),
    (["{model}", "--target-layer", "7"], "out of range"),
    (["{model}", "--tokens", "50", "--seq-len", "100"], "2 different sequences"),
    (["{model}", "--seq-len", "5000"], "max_position_embeddings"),
])
def test_bad_input_is_one_clear_line(tiny_checkpoint, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, model=tiny_checkpoint) for a in args]
    with pytest.raises(UserError, match=message):
        run(*args, "--out", tmp_path / "out")


def test_cli_error_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nitp_eval.cli", "geometry", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
