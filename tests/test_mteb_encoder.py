"""The mean-pooling encoder: exact against numpy references on tiny real checkpoints
(Qwen2: rotary positions; GPT-2: absolute positions, so padding mistakes show)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitp_train.errors import UserError

TEXTS = [
    "A man is playing a guitar.",
    "hello",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally wakes up.",
    "Tokens, tokens: more tokens!",
    "x",
]


def test_mean_pool_hand_cases():
    from nitp_eval.mteb_eval.encoder import mean_pool

    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [float("nan"), 0.0]],
            [[float("nan"), 9.0], [5.0, 6.0], [7.0, 10.0]],
            [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    out = mean_pool(hidden, mask).numpy()
    # right padding, left padding (a NaN at the padded position must not leak), no token at all
    np.testing.assert_allclose(out, [[2.0, 3.0], [6.0, 8.0], [0.0, 0.0]])


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint):
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    return MeanPoolEncoder.from_pretrained(tiny_checkpoint, batch_size=2)


def _reference(encoder, texts, layer):
    """One text at a time, no padding, numpy mean + normalisation."""
    out = []
    for t in texts:
        ids = torch.tensor([encoder.tokenizer(t)["input_ids"]])
        with torch.no_grad():
            h = encoder.model(ids, output_hidden_states=True).hidden_states[layer][0].numpy()
        v = h.mean(0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.mark.parametrize("layer", [-1, 2])
def test_batched_sorted_embeddings_match_one_at_a_time(encoder, layer):
    encoder.layer = layer
    try:
        got = encoder.embed(TEXTS, show_progress_bar=False)
    finally:
        encoder.layer = -1
    np.testing.assert_allclose(got, _reference(encoder, TEXTS, layer), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_layer_zero_is_the_mean_input_embedding(encoder):
    encoder.layer = 0
    try:
        got = encoder.embed(TEXTS[:2], show_progress_bar=False)
    finally:
        encoder.layer = -1
    table = encoder.model.get_input_embeddings().weight.detach().numpy()
    for row, text in zip(got, TEXTS[:2]):
        v = table[encoder.tokenizer(text)["input_ids"]].mean(0)
        np.testing.assert_allclose(row, v / np.linalg.norm(v), atol=1e-5)


@pytest.fixture(scope="module")
def gpt2(shared_data):
    """A tiny random GPT-2: learned absolute positions (32 of them), so a text shifted by left
    padding without matching position ids gets different hidden states (Qwen2's rotary
    attention is shift-invariant and would not show it)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    tok.pad_token = tok.eos_token
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(cfg).eval(), tok


def _gpt2_reference(model, tok, texts, max_length=None):
    """One text at a time, no padding, no mask: numpy mean over the text's tokens, normalised."""
    out = []
    for t in texts:
        ids = tok(t)["input_ids"][:max_length]
        with torch.no_grad():
            h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].numpy()
        v = h.mean(0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_side_does_not_change_embeddings(gpt2, side):
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    model, tok = gpt2
    enc = MeanPoolEncoder(model, tok, padding_side=side, batch_size=len(TEXTS))  # one padded batch
    np.testing.assert_allclose(enc.embed(TEXTS, show_progress_bar=False), _gpt2_reference(model, tok, TEXTS), atol=2e-5)
    if side == "left":  # the check has teeth: without position ids, left padding shifts the positions
        enc._takes_positions = False
        shifted = enc.embed(TEXTS, show_progress_bar=False)
        assert not np.allclose(shifted, _gpt2_reference(model, tok, TEXTS), atol=1e-3)


def test_left_padding_gives_the_same_embeddings(encoder):
    right = encoder.embed(TEXTS, show_progress_bar=False)
    encoder.padding_side = "left"
    try:
        left = encoder.embed(TEXTS, show_progress_bar=False)
    finally:
        encoder.padding_side = "right"
    np.testing.assert_allclose(left, right, atol=2e-5)


def test_max_length_is_capped_at_the_position_limit(gpt2):
    """GPT-2 has 32 positions: a longer text would raise IndexError; it is truncated to 32 instead."""
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    model, tok = gpt2
    enc = MeanPoolEncoder(model, tok, max_length=1000)
    assert enc.max_length == 32 and enc.mteb_model_meta.max_tokens == 32
    long = TEXTS[2] * 3
    assert len(tok(long)["input_ids"]) > 32
    np.testing.assert_allclose(
        enc.embed([long, "x"], show_progress_bar=False),
        _gpt2_reference(model, tok, [long, "x"], max_length=32),
        atol=2e-5,
    )
    assert MeanPoolEncoder(model, tok, max_length=20).max_length == 20  # below the limit: as given


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_texts_with_no_token_get_the_zero_vector(encoder, batch_size):
    """GPT-2/Qwen tokenizers give "" no token; such texts may fill whole batches (TweetSentiment's train
    split has an empty text)."""
    texts = ["", "hello", "", "", "x"]
    assert encoder.tokenizer("")["input_ids"] == []
    got = encoder.embed(texts, batch_size=batch_size, show_progress_bar=False)
    np.testing.assert_array_equal(got[[0, 2, 3]], 0.0)
    np.testing.assert_allclose(got[[1, 4]], _reference(encoder, ["hello", "x"], -1), atol=2e-5)
    assert encoder.embed(["", ""], show_progress_bar=False).shape == (2, encoder.model.config.hidden_size)


def test_truncation_to_max_length(encoder):
    long = TEXTS[2]
    ids = encoder.tokenizer(long)["input_ids"]
    encoder.max_length = 5
    try:
        got = encoder.embed([long], show_progress_bar=False)
    finally:
        encoder.max_length = 512
    prefix = encoder.tokenizer.decode(ids[:5])
    np.testing.assert_allclose(got, _reference(encoder, [prefix], -1), atol=2e-5)


def test_encode_follows_mteb_protocol(encoder):
    """mteb hands over batches of {"text": [...]} and expects one row per text, in order."""
    from types import SimpleNamespace

    batches = [{"text": TEXTS[:3]}, {"text": TEXTS[3:]}]
    got = encoder.encode(
        batches,
        task_metadata=SimpleNamespace(name="X"),
        hf_split="test",
        hf_subset="default",
        batch_size=4,
        show_progress_bar=False,
    )
    assert got.shape == (len(TEXTS), encoder.model.config.hidden_size)
    np.testing.assert_allclose(got, encoder.embed(TEXTS, show_progress_bar=False), atol=1e-6)
    assert encoder.mteb_model_meta.similarity_fn_name.value == "cosine"


def test_bad_settings_are_user_errors(tiny_checkpoint, encoder):
    from nitp_eval.mteb_eval.encoder import MeanPoolEncoder

    with pytest.raises(UserError, match="--layer 5"):
        MeanPoolEncoder(encoder.model, encoder.tokenizer, layer=5)  # 4 layers: 0..4
    MeanPoolEncoder(encoder.model, encoder.tokenizer, layer=-5)  # = embeddings, valid
    with pytest.raises(UserError, match="--padding-side middle"):
        MeanPoolEncoder(encoder.model, encoder.tokenizer, padding_side="middle")
    with pytest.raises(UserError, match="--max-length 0"):
        MeanPoolEncoder(encoder.model, encoder.tokenizer, max_length=0)
