"""Streaming extraction against in-memory references: all hidden states stacked, numpy metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitp_eval.geometry import extract
from nitp_eval.models import load_model


def np_erank(s):
    s = np.clip(np.asarray(s, dtype=np.float64), 0, None)
    s = s[s > 1e-12 * s.max()]
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def np_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model, tok = load_model(tiny_checkpoint)
    text = ("The quick brown fox jumps over the lazy dog. " * 3 + "Colourless green ideas sleep furiously. ") * 12
    ids = extract.select_tokens([text, "A second, shorter document about something else entirely."], tok, 450)
    assert len(ids) == 450
    return model, tok, ids


def stacked_reference(model, windows, bos_id=None):
    """Every window alone through the model (no padding at all): lists of [n, d] states per layer."""
    per_layer = None
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([([bos_id] if bos_id is not None else []) + w.tolist()])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            hs = [h[0, (1 if bos_id is not None else 0) :].double().numpy() for h in hs]
            per_layer = [[h] for h in hs] if per_layer is None else [a + [h] for a, h in zip(per_layer, hs)]
    return [np.concatenate(a) for a in per_layer]


def test_select_tokens_packs_documents_with_eos(tiny_checkpoint):
    _, tok = load_model(tiny_checkpoint)
    ids = extract.select_tokens(["hello world", "good night"], tok, 100)
    assert ids.dtype == np.int32  # 4 bytes per token, not a Python list
    assert ids.tolist() == (
        tok("hello world")["input_ids"] + [tok.eos_token_id] + tok("good night")["input_ids"] + [tok.eos_token_id]
    )
    assert extract.select_tokens(["hello world", "good night"], tok, 3).tolist() == ids[:3].tolist()
    windows = extract.make_windows(np.arange(7), 3)
    assert [w.tolist() for w in windows] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(w.base is not None for w in windows)  # views, not copies


@pytest.mark.parametrize("bos", [False, True])
def test_streamed_metrics_match_stacked_reference(tiny, bos):
    model, tok, ids = tiny
    L = model.config.num_hidden_layers
    windows = extract.make_windows(ids, 96)  # 450 = 4 x 96 + 66: the last window is padded in its batch
    bos_id = tok.eos_token_id if bos else None
    res = extract.analyse_model(
        model,
        windows,
        layers=list(range(L + 1)),
        batch_size=3,
        n_pairs=2000,
        seed=0,
        pad_id=tok.pad_token_id,
        bos_id=bos_id,
        cka_matrix=True,
        target_layer=1,
        progress=False,
    )
    ref = stacked_reference(model, windows, bos_id)
    assert res["tokens"] == 450 and res["layers"] == list(range(L + 1))
    pl = res["per_layer"]
    for i, x in enumerate(ref):
        xc = x - x.mean(0)
        sv = np.linalg.svd(xc, compute_uv=False)
        assert pl["erank_cov"][i] == pytest.approx(np_erank(sv**2), rel=1e-6)
        assert pl["erank_sv"][i] == pytest.approx(np_erank(sv), rel=1e-6)
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = u @ u.T
        assert pl["anisotropy_exact"][i] == pytest.approx((c.sum() - np.trace(c)) / (450 * 449), abs=1e-6)
        # cross-window pairs only, exactly (windows are the "sequences")
        seq = np.repeat(np.arange(len(windows)), [len(w) for w in windows])
        cross = seq[:, None] != seq[None, :]
        assert pl["anisotropy_cross_exact"][i] == pytest.approx(c[cross].mean(), abs=1e-6)
        assert pl["anisotropy"][i] == pytest.approx(c[cross].mean(), abs=0.03)
        assert pl["cka_to_last"][i] == pytest.approx(np_cka(x, ref[-1]), abs=1e-6)
        assert pl["mean_norm"][i] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-5)
        for j in range(L + 1):
            assert res["cka_matrix"][i][j] == pytest.approx(np_cka(x, ref[j]), abs=1e-6)
    assert res["pairs"] == 2000
    # cos(h_t, z_{t+1}) over consecutive positions inside each window
    h, z = ref[-1], ref[1]
    starts = np.cumsum([0] + [len(w) for w in windows])
    cos = [
        h[a : b - 1][k] @ z[a + 1 : b][k] / np.linalg.norm(h[a : b - 1][k]) / np.linalg.norm(z[a + 1 : b][k])
        for a, b in zip(starts[:-1], starts[1:])
        for k in range(b - a - 1)
    ]
    assert res["alignment"]["cos_next"] == pytest.approx(np.mean(cos), abs=1e-5)
    assert res["alignment"]["positions"] == 450 - len(windows)
    assert res["alignment"]["projector_cos"] is None


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_projector_cos_is_one_minus_nitp_loss(tiny, loss):
    from nitp_train.objective import NITPObjective, ObjectiveConfig

    model, tok, ids = tiny
    L = model.config.num_hidden_layers
    torch.manual_seed(1)
    # the projector's layer (2) differs from the layer asked for cos_next (3): each must use its own
    obj = NITPObjective(ObjectiveConfig(target_layer=2, loss=loss), model.config.hidden_size, L).eval()
    windows = extract.make_windows(ids[:384], 96)  # equal lengths: one batch has no padding
    res = extract.analyse_model(
        model,
        windows,
        layers=[L],
        batch_size=len(windows),
        n_pairs=10,
        seed=0,
        pad_id=tok.pad_token_id,
        target_layer=3,
        projector=obj,
        progress=False,
    )
    with torch.no_grad():
        hs = model(input_ids=torch.from_numpy(np.stack(windows)).long(), output_hidden_states=True).hidden_states
        out = obj(hs, None)
    # the trainer logs 1 - L_NITP for the cosine loss, and the cosine s as nitp_cos for the others
    expected = 1 - out.raw.item() if loss == "cosine" else float(out.metrics["nitp_cos"])
    assert res["alignment"]["projector_cos"] == pytest.approx(expected, abs=1e-6)
    assert res["alignment"]["projector_target_layer"] == 2 and res["alignment"]["target_layer"] == 3
    h, z = hs[L][:, :-1].double().numpy(), hs[3][:, 1:].double().numpy()
    cos = (h * z).sum(-1) / np.linalg.norm(h, axis=-1) / np.linalg.norm(z, axis=-1)
    assert res["alignment"]["cos_next"] == pytest.approx(cos.mean(), abs=1e-6)


def test_batch_size_and_order_do_not_change_exact_metrics(tiny):
    model, tok, ids = tiny
    windows = extract.make_windows(ids, 64)
    kw = dict(layers=[0, 2, 4], n_pairs=500, pad_id=tok.pad_token_id, target_layer=1, progress=False)
    a = extract.analyse_model(model, windows, batch_size=2, seed=0, **kw)
    b = extract.analyse_model(model, windows, batch_size=5, seed=7, **kw)
    for key in ("erank_cov", "erank_sv", "anisotropy_exact", "anisotropy_cross_exact", "cka_to_last", "mean_norm"):
        np.testing.assert_allclose(a["per_layer"][key], b["per_layer"][key], rtol=1e-5, atol=1e-6)
    assert a["alignment"]["cos_next"] == pytest.approx(b["alignment"]["cos_next"], abs=1e-6)
    c = extract.analyse_model(model, windows, batch_size=2, seed=0, **kw)
    assert a["per_layer"]["anisotropy"] == c["per_layer"]["anisotropy"]  # seeded


def test_states_file_analysis_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1000, 16)).astype(np.float32)
    x[1] = x[0] @ rng.standard_normal((16, 16)).astype(np.float32) + 2
    np.save(tmp_path / "s.npy", x)
    loaded = extract.load_states(tmp_path / "s.npy")
    res = extract.analyse_states(loaded, layers=[0, 1, 2], n_pairs=100, seed=0, chunk=300, progress=False)
    for i in range(3):
        xi = x[i].astype(np.float64)
        assert res["per_layer"]["erank_cov"][i] == pytest.approx(np_erank(np.linalg.eigvalsh(np.cov(xi.T))), rel=1e-6)
        assert res["per_layer"]["cka_to_last"][i] == pytest.approx(np_cka(xi, x[2].astype(np.float64)), abs=1e-6)
    assert res["pairs"] == 100 and res["alignment"]["cos_next"] is None
    # 2-D files are one layer; .pt and .safetensors give the same numbers
    from safetensors.numpy import save_file

    torch.save(torch.from_numpy(x[1]), tmp_path / "s.pt")
    save_file({"hidden_states": x[1]}, str(tmp_path / "s.safetensors"))
    for name in ("s.pt", "s.safetensors"):
        one = extract.load_states(tmp_path / name)
        assert one.shape == (1, 1000, 16)
        r = extract.analyse_states(one, layers=[0], n_pairs=0, seed=0, progress=False)
        assert r["per_layer"]["erank_cov"][0] == pytest.approx(res["per_layer"]["erank_cov"][1], rel=1e-6)


def test_parse_layers():
    assert extract.parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert extract.parse_layers("last", 4) == [4]
    assert extract.parse_layers("0, -1,2", 4) == [0, 2, 4]
    from nitp_train.errors import UserError

    with pytest.raises(UserError, match="out of range"):
        extract.parse_layers("5", 4)
    with pytest.raises(UserError, match="comma-separated"):
        extract.parse_layers("first", 4)


@pytest.fixture(scope="module")
def gpt2(shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    tok.model_max_length = 10**9  # we window the stream ourselves
    return tok


@pytest.mark.parametrize("source", ["tinystories", "one line"])
def test_long_documents_tokenised_in_pieces_give_the_whole_documents_ids(gpt2, shared_data, source, monkeypatch):
    text = (shared_data / "corpus" / "tinystories" / "validation.txt").read_text()[:200_000]
    if source == "one line":  # no newlines at all: the cuts fall between words
        text = " ".join(text.split())
    monkeypatch.setattr(extract, "PIECE_CHARS", 20_000)  # more cuts
    pieces = list(extract.text_pieces(text, 20_000))
    assert len(pieces) >= 10 and max(map(len, pieces)) <= 20_000 and "".join(pieces) == text
    ids = extract.select_tokens([text, "A short one."], gpt2, 10**9)
    whole = gpt2(text, add_special_tokens=False)["input_ids"] + [gpt2.eos_token_id]
    whole += gpt2("A short one.", add_special_tokens=False)["input_ids"] + [gpt2.eos_token_id]
    assert ids.tolist() == whole
    assert list(extract.text_pieces("x" * 25, size=10)) == ["x" * 10, "x" * 10, "x" * 5]  # no cut point: anywhere


def test_select_tokens_reads_only_what_it_needs(gpt2, shared_data):
    class Counting:  # a tokenizer that records how many characters it was given
        def __init__(self, tok):
            self.tok, self.chars = tok, 0
            self.eos_token_id, self.sep_token_id = tok.eos_token_id, tok.sep_token_id

        def __call__(self, texts, **kw):
            self.chars += sum(map(len, texts))
            return self.tok(texts, **kw)

    big = (shared_data / "corpus" / "tinystories" / "train.txt").read_text()  # 4 MB, one document
    tok = Counting(gpt2)
    ids = extract.select_tokens([big], tok, 2000)
    assert len(ids) == 2000 and tok.chars <= 2 * extract.PIECE_CHARS
    assert ids.tolist() == gpt2(big[:20_000], add_special_tokens=False)["input_ids"][:2000]
    consumed = []

    def docs():  # many short documents: stop pulling them once enough tokens are in
        for i in range(100_000):
            consumed.append(i)
            yield f"Document number {i} says hello."

    assert len(extract.select_tokens(docs(), gpt2, 500)) == 500
    assert len(consumed) < 100


def test_read_text_streams_hf_datasets(monkeypatch, gpt2):
    import datasets

    calls, pulled = [], []

    def fake_load_dataset(name, config=None, split=None, streaming=False, revision=None):
        calls.append((name, config, split, streaming))

        def records():
            for i in range(10_000):
                pulled.append(i)
                yield {"text": f"Record {i} of a large split." if i % 7 else "", "id": i}

        return records()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ids = extract.select_tokens(extract.read_text("someone/corpus:en", "test"), gpt2, 300)
    assert calls == [("someone/corpus", "en", "test", True)]
    assert len(ids) == 300 and len(pulled) < 200  # stopped early, never read the whole split
    first = [f"Record {i} of a large split." for i in range(1, 7)]
    expect = [t for d in first for t in gpt2(d, add_special_tokens=False)["input_ids"] + [gpt2.eos_token_id]]
    assert ids[: len(expect)].tolist() == expect  # empty records skipped, like the trainer's reader

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter([{"content": "no text field"}]))
    from nitp_train.errors import UserError

    with pytest.raises(UserError, match="no 'text' field"):
        extract.select_tokens(extract.read_text("someone/other"), gpt2, 10)

    def unreachable(*a, **k):
        raise ConnectionError("hub unreachable\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError, match="not loadable as an HF dataset .ConnectionError: hub unreachable.$"):
        extract.select_tokens(extract.read_text("someone/missing"), gpt2, 10)


def test_pair_quotas_follow_cross_pairs():
    assert extract.cross_pairs([3, 2]) == 12 and extract.cross_pairs([5]) == 0
    # the last batch holds one window: no cross pairs, so its share goes to the others
    q = extract.pair_quotas(
        1000, [extract.cross_pairs([96, 96]), extract.cross_pairs([96, 96]), extract.cross_pairs([66])]
    )
    assert q == [500, 500, 0]
    q = extract.pair_quotas(7, [2, 12, 0, 6])
    assert sum(q) == 7 and q[2] == 0
    assert extract.pair_quotas(10, [0, 0]) == [0, 0]


def test_requested_pairs_are_honoured_when_a_batch_holds_one_window(tiny):
    model, tok, ids = tiny
    windows = extract.make_windows(ids, 96)  # 5 windows, batches of 2: the last batch is one window
    res = extract.analyse_model(
        model, windows, layers=[4], batch_size=2, n_pairs=1000, seed=0, pad_id=tok.pad_token_id, progress=False
    )
    assert res["pairs"] == 1000
    x = np.random.default_rng(0).standard_normal((1, 8193, 4)).astype(np.float32)  # last chunk: one row
    assert extract.analyse_states(x, layers=[0], n_pairs=999, seed=0, progress=False)["pairs"] == 999


def test_bfloat16_states_and_bad_states_files(tmp_path):
    from safetensors.torch import save_file

    from nitp_train.errors import UserError

    x = (torch.randn(2, 600, 12) * torch.logspace(0, -1, 12) + 1).to(torch.bfloat16)
    torch.save(x, tmp_path / "s.pt")
    save_file({"hidden_states": x}, str(tmp_path / "s.safetensors"))
    ref = x.double().numpy()  # the bf16 values, exactly
    for name in ("s.pt", "s.safetensors"):
        res = extract.analyse_states(
            extract.load_states(tmp_path / name), layers=[0, 1], n_pairs=0, seed=0, chunk=256, progress=False
        )
        for i in range(2):
            assert res["per_layer"]["erank_cov"][i] == pytest.approx(
                np_erank(np.linalg.eigvalsh(np.cov(ref[i].T))), rel=1e-9
            )
            assert res["per_layer"]["mean_norm"][i] == pytest.approx(np.linalg.norm(ref[i], axis=1).mean(), rel=1e-9)
    torch.save([x[0], x[1]], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list, not one tensor"):
        extract.load_states(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="unreadable states file"):
        extract.load_states(tmp_path / "junk.pt")
