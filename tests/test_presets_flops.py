"""Presets (parameter counts on the meta device) and the Appendix G FLOPs accounting."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from nitp_train.errors import UserError
from nitp_train.flops import flops_per_token
from nitp_train.presets import get_preset, param_counts, preset_names

PAPER = [n for n in preset_names() if get_preset(n).description.startswith("paper ")]


def _sizes_from_name(name: str) -> tuple[float, float]:
    """'moe-3b-a0.5b' -> (3e9, 0.5e9); 'dense-2b' -> (2e9, 2e9)."""
    m = re.match(r"(dense|moe)-([\d.]+)b(?:-a([\d.]+)b)?$", name)
    total = float(m.group(2)) * 1e9
    return total, float(m.group(3)) * 1e9 if m.group(3) else total


def test_all_paper_models_are_presets():
    assert set(PAPER) == {
        "dense-0.5b",
        "dense-2b",
        "dense-3b",
        "moe-1.9b-a0.3b",
        "moe-3b-a0.5b",
        "moe-9b-a1b",
        "moe-45b-a5.5b",
    }


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_match_their_names_within_10_percent(name):
    total, activated = _sizes_from_name(name)
    counts = param_counts(get_preset(name))
    assert counts["total"] == pytest.approx(total, rel=0.10)
    assert counts["activated"] == pytest.approx(activated, rel=0.10)


def test_paper_target_layers_and_lambdas():
    expect = {
        "moe-1.9b-a0.3b": (3, 16, 1.0),
        "moe-3b-a0.5b": (4, 17, 1.0),
        "moe-9b-a1b": (5, 24, 0.8),
        "dense-0.5b": (5, 24, 1.0),
        "dense-2b": (6, 28, 1.0),
        "dense-3b": (6, 28, 0.8),
        "moe-45b-a5.5b": (5, 24, 0.6),
    }
    for name, (k, layers, lam) in expect.items():
        p = get_preset(name)
        assert (p.nitp["target_layer"], p.num_layers, p.nitp["lambda"]) == (k, layers, lam)


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_tiny_presets_build_real_transformers_models(name):
    from transformers import AutoModelForCausalLM

    preset = get_preset(name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(preset.hf_config(vocab_size=512))
    x = torch.randint(0, 512, (2, 16))
    out = model(input_ids=x, labels=x, output_hidden_states=True)
    assert torch.isfinite(out.loss)
    assert len(out.hidden_states) == preset.num_layers + 1
    if preset.is_moe:  # routed + shared experts, top-k routing, a dense first layer
        assert type(model).__name__ == "Qwen2MoeForCausalLM"
        assert not hasattr(model.model.layers[0].mlp, "experts")
        assert hasattr(model.model.layers[1].mlp, "experts") and hasattr(model.model.layers[1].mlp, "shared_expert")


def test_moe_9b_overhead_is_the_papers_2_3_percent():
    r = flops_per_token(get_preset("moe-9b-a1b"))
    d, d_e, k, L, V = 1280, 640, 9, 24, 152064  # Appendix G, written out independently
    assert r.paper_baseline == L * (18 * d * d + 18 * k * d * d_e) + 6 * V * d
    assert r.paper_baseline == pytest.approx(5.06e9, rel=0.002)
    assert r.paper_nitp_extra == pytest.approx(1.18e8, rel=0.002)
    assert 100 * r.paper_overhead == pytest.approx(2.3, abs=0.1)


def test_exact_count_is_six_times_the_weights_a_token_touches():
    """Dense tiny model: exact baseline - attention scores = 6 x (matmul weights) from the real model."""
    from transformers import AutoModelForCausalLM

    preset = get_preset("tiny-dense")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset.hf_config(vocab_size=8192))
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    lm_head = model.config.vocab_size * model.config.hidden_size  # tied: the head still costs a matmul
    r = flops_per_token(preset, vocab_size=8192)
    assert r.exact_baseline - r.exact_parts["attention_scores"] == pytest.approx(6 * (matmul + lm_head), rel=1e-9)
    assert r.exact_nitp_extra == 6 * 12 * 192**2 + 18 * 192


def test_cli_presets_and_flops_json():
    res = subprocess.run(
        [sys.executable, "-m", "nitp_train", "presets", "--json"], capture_output=True, text=True, check=True
    )
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["moe-3b-a0.5b"]["target_layer"] == 4 and rows["moe-3b-a0.5b"]["layers"] == 17
    res = subprocess.run(
        [sys.executable, "-m", "nitp_train", "flops", "--preset", "moe-9b-a1b", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert 100 * json.loads(res.stdout)["paper_overhead"] == pytest.approx(2.33, abs=0.01)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown preset 'dense-7b'"):
        get_preset("dense-7b")
