"""The chunked cross-entropy (nitp_train/loss.py) against HF's own causal-LM loss, gradients included."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SETS
from transformers.loss.loss_utils import ForCausalLMLoss

from nitp_train.config import load_config
from nitp_train.errors import UserError
from nitp_train.loss import IGNORE_INDEX, causal_lm_loss, chunked_cross_entropy
from nitp_train.model import SizedVocab, build_meta_module, hf_config, materialise

V, D = 97, 16


def _leaves(seed: int = 0, batch: int = 3, seq: int = 11, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, D, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, D, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, V, (batch, seq), generator=g)
    labels[0, 3:6] = IGNORE_INDEX  # padding inside a row
    labels[2, -4:] = IGNORE_INDEX  # right padding
    return hidden, weight, labels


def _grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("chunk", [1, 5, 32, 10_000])  # one row, a ragged split, an even split, one chunk
def test_loss_and_gradients_equal_hf_loss(chunk):
    hidden, weight, labels = _leaves()
    want = ForCausalLMLoss(hidden @ weight.T, labels, V)  # transformers' own loss, on the full logits
    got = chunked_cross_entropy(hidden, weight, labels, chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(_grads(got, hidden, weight), _grads(want, hidden, weight)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_upstream_gradient_scales_both_gradients():
    hidden, weight, labels = _leaves(seed=1)
    got = _grads(2.5 * chunked_cross_entropy(hidden, weight, labels, 4), hidden, weight)
    want = _grads(2.5 * ForCausalLMLoss(hidden @ weight.T, labels, V), hidden, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_ignored_positions_get_no_gradient_and_no_weight():
    hidden, weight, labels = _leaves(seed=2)
    (gh,) = _grads(chunked_cross_entropy(hidden, weight, labels, 4), hidden)
    assert gh[0, 2:5].abs().max() == 0  # position t predicts labels[t + 1]: 3..5 are ignored
    assert gh[:, -1].abs().max() == 0  # the last position has no next token
    changed = labels.clone()
    changed[0, 3:6] = 7  # what an ignored label holds does not matter ... unless it is counted
    assert chunked_cross_entropy(hidden, weight, labels, 4) != chunked_cross_entropy(hidden, weight, changed, 4)


def test_no_grad_gives_the_same_loss():
    hidden, weight, labels = _leaves(seed=3)
    with torch.no_grad():
        got = chunked_cross_entropy(hidden, weight, labels, 4)
    assert not got.requires_grad
    torch.testing.assert_close(got, ForCausalLMLoss(hidden @ weight.T, labels, V).detach(), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_is_close_to_hf_loss_under_autocast():
    hidden, weight, labels = _leaves(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy(hidden, weight, labels, 4)
        want = ForCausalLMLoss(torch.nn.functional.linear(hidden, weight), labels, V)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for g, w in zip(_grads(got, hidden, weight), _grads(want, hidden, weight)):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)


def test_peak_memory_holds_one_chunk_of_logits():
    """Measured with torch's MemTracker: the chunked loss's forward + backward peak stays below one
    [tokens, vocab] fp32 tensor, while the plain loss's exceeds three of them."""
    from torch.distributed._tools.mem_tracker import MemTracker

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 512, 32, generator=g).requires_grad_()
    weight = torch.randn(4096, 32, generator=g).requires_grad_()
    labels = torch.randint(0, 4096, (2, 512), generator=g)
    logits_bytes = 2 * 512 * 4096 * 4

    def peak(fn) -> int:
        tracker = MemTracker()
        with tracker:
            fn().backward()
        return max(v["Total"] for v in tracker.get_tracker_snapshot("peak").values())

    chunked = peak(lambda: chunked_cross_entropy(hidden, weight, labels, 64))
    plain = peak(lambda: ForCausalLMLoss(hidden @ weight.T, labels, 4096))
    assert chunked < 0.5 * logits_bytes < 3 * logits_bytes < plain


def test_chunk_size_must_be_positive():
    hidden, weight, labels = _leaves()
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy(hidden, weight, labels, 0)
    with pytest.raises(UserError, match="ce_chunk_tokens"):
        load_config(sets=["ce_chunk_tokens=-1"])


# ---------------------------------------------------------------------------- the trainer's module


def _module(preset_sets: list[str], chunk: int):
    cfg = load_config(sets=TINY_SETS + preset_sets + [f"ce_chunk_tokens={chunk}"])
    config = hf_config(cfg, SizedVocab(301))
    module = build_meta_module(cfg, config)
    materialise(module, cfg, config, torch.device("cpu"))
    return module


@pytest.mark.parametrize(
    "preset_sets",
    [
        ["objective.name=ntp"],
        ["objective.name=nitp"],
        # tiny-moe, shrunk: its router's load-balancing loss is part of the total
        ["model.preset=tiny-moe", "model.hf_overrides.num_hidden_layers=3", "objective.target_layer=1",
         "model.hf_overrides.num_attention_heads=2", "model.hf_overrides.num_key_value_heads=1"],
    ],
    ids=["dense-ntp", "dense-nitp", "moe-nitp"],
)  # fmt: skip
def test_train_module_chunked_equals_plain(preset_sets):
    """Every logged part and every parameter's gradient, chunked (3 chunks of 50 + a ragged one) vs HF's loss."""
    x = torch.randint(0, 301, (2, 64), generator=torch.Generator().manual_seed(6))
    results = []
    for chunk in (0, 50):
        module = _module(preset_sets, chunk)  # the same seeded init for both
        total, parts = module(x, step=0)
        total.backward()
        results.append((parts, {n: p.grad for n, p in module.named_parameters()}))
    (p0, g0), (p1, g1) = results
    assert p0.keys() == p1.keys() and "loss_ntp" in p0
    if "moe" in str(preset_sets):
        assert p0["loss_router"] > 0
    for k in p0:
        torch.testing.assert_close(p1[k], p0[k], rtol=1e-6, atol=1e-6, msg=k)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


def test_causal_lm_loss_returns_the_states_and_one_position_of_logits():
    module = _module(["objective.name=ntp"], 16)
    x = torch.randint(0, 301, (2, 64), generator=torch.Generator().manual_seed(7))
    loss, out = causal_lm_loss(module.model, x, 16, use_cache=False)
    assert out.logits.shape == (2, 1, 301)  # never [2, 64, 301]
    assert len(out.hidden_states) == module.model.config.num_hidden_layers + 1
    torch.testing.assert_close(loss, module.model(input_ids=x, labels=x).loss, rtol=1e-6, atol=1e-6)
