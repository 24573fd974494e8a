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
    per_layer, pairs = None, []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([([bos_id] if bos_id is not None else []) + w])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            hs = [h[0, (1 if bos_id is not None else 0):].double().numpy() for h in hs]
            per_layer = [[h] for h in hs] if per_layer is None else [a + [h] for a, h in zip(per_layer, hs)]
    return [np.concatenate(a) for a in per_layer]


def test_select_tokens_packs_documents_with_eos(tiny_checkpoint):
    _, tok = load_model(tiny_checkpoint)
    ids = extract.select_tokens(["hello world", "good night"], tok, 100)
    assert ids == tok("hello world")["input_ids"] + [tok.eos_token_id] + tok("good night")["input_ids"] + [tok.eos_token_id]
    assert extract.select_tokens(["hello world", "good night"], tok, 3) == ids[:3]
    assert extract.make_windows(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("bos", [False, True])
def test_streamed_metrics_match_stacked_reference(tiny, bos):
    model, tok, ids = tiny
    L = model.config.num_hidden_layers
    windows = extract.make_windows(ids, 96)  # 450 = 4 x 96 + 66: the last window is padded in its batch
    bos_id = tok.eos_token_id if bos else None
    res = extract.analyse_model(model, windows, layers=list(range(L + 1)), batch_size=3, n_pairs=2000, seed=0,
                                pad_id=tok.pad_token_id, bos_id=bos_id, cka_matrix=True, target_layer=1, progress=False)
    ref = stacked_reference(model, windows, bos_id)
    assert res["tokens"] == 450 and res["layers"] == list(range(L + 1))
    pl = res["per_layer"]
    for i, x in enumerate(ref):
        xc = x - x.mean(0)
        sv = np.linalg.svd(xc, compute_uv=False)
        assert pl["erank_cov"][i] == pytest.approx(np_erank(sv ** 2), rel=1e-6)
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
    cos = [h[a:b - 1][k] @ z[a + 1:b][k] / np.linalg.norm(h[a:b - 1][k]) / np.linalg.norm(z[a + 1:b][k])
           for a, b in zip(starts[:-1], starts[1:]) for k in range(b - a - 1)]
    assert res["alignment"]["cos_next"] == pytest.approx(np.mean(cos), abs=1e-5)
    assert res["alignment"]["positions"] == 450 - len(windows)
    assert res["alignment"]["projector_cos"] is None


def test_projector_cos_is_one_minus_nitp_loss(tiny):
    from nitp_train.objective import NITPObjective, ObjectiveConfig

    model, tok, ids = tiny
    L = model.config.num_hidden_layers
    torch.manual_seed(1)
    obj = NITPObjective(ObjectiveConfig(target_layer=2), model.config.hidden_size, L).eval()
    windows = extract.make_windows(ids[:384], 96)  # equal lengths: one batch has no padding
    res = extract.analyse_model(model, windows, layers=[L], batch_size=len(windows), n_pairs=10, seed=0,
                                pad_id=tok.pad_token_id, target_layer=2, projector=obj, progress=False)
    with torch.no_grad():
        hs = model(input_ids=torch.tensor(windows), output_hidden_states=True).hidden_states
        raw = obj(hs, None).raw.item()
    assert res["alignment"]["projector_cos"] == pytest.approx(1 - raw, abs=1e-6)
    assert res["alignment"]["projector_target_layer"] == 2


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
    assert extract.default_target_layer(4) == 1 and extract.default_target_layer(24) == 5
