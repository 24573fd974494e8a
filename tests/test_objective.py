"""Known-answer tests for the NITP objective (nitp_train/objective.py).

Expectations are computed by hand (literals, with the arithmetic in comments) or with
independent numpy / math references, never by calling the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nitp_train.objective import (
    PROJECTOR_FILE,
    NITPObjective,
    ObjectiveConfig,
    alignment_loss,
    masked_mean,
    mean_pairwise_cosine,
    resolve_target_layer,
    shifted_pairs,
)

# ---------------------------------------------------------------------------- a hand-made case
# One sequence, T = 3, d = 2. "h" is the last hidden state, "z" the target layer's state.
#   next pairs:    A = (h0, z1) = ([1,0], [1,1])      B = (h1, z2) = ([0,1], [3,.5])
#   current pairs: C = (h0, z0) = ([1,0], [-2,0])     D = (h1, z1) = ([0,1], [1,1])
#                  E = (h2, z2) = ([1,1], [3,.5])
H = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
Z = [[-2.0, 0.0], [1.0, 1.0], [3.0, 0.5]]


def _kl(p_logits, q_logits):
    """KL(softmax(q) || softmax(p)) with math only: the target distribution is q = softmax(z)."""
    p = [math.exp(x) / sum(math.exp(y) for y in p_logits) for x in p_logits]
    q = [math.exp(x) / sum(math.exp(y) for y in q_logits) for x in q_logits]
    return sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))


S2, S925 = math.sqrt(2.0), math.sqrt(9.25)  # |[1,1]|, |[3,.5]|
PER_PAIR = {
    # 1 - cos: A: 1/sqrt2; B: .5/sqrt(9.25); C: cos = -1; D: as A; E: (3 + .5)/(sqrt2 sqrt9.25)
    "cosine": dict(A=1 - 1 / S2, B=1 - 0.5 / S925, C=2.0, D=1 - 1 / S2, E=1 - 3.5 / (S2 * S925)),
    # mean over d of (h - z)^2: A [0,-1] -> .5; B [-3,.5] -> 4.625; C [3,0] -> 4.5; D [-1,0] -> .5; E [-2,.5] -> 2.125
    "mse": dict(A=0.5, B=4.625, C=4.5, D=0.5, E=2.125),
    # f(x) = .5 x^2 if |x| < 1 else |x| - .5, mean over d: f(0)=0 f(.5)=.125 f(1)=.5 f(2)=1.5 f(3)=2.5
    # A (0+.5)/2 = .25; B (2.5+.125)/2 = 1.3125; C (2.5+0)/2 = 1.25; D (.5+0)/2 = .25; E (1.5+.125)/2 = .8125
    "smooth_l1": dict(A=0.25, B=1.3125, C=1.25, D=0.25, E=0.8125),
    "kl": dict(A=_kl(H[0], Z[1]), B=_kl(H[1], Z[2]), C=_kl(H[0], Z[0]), D=_kl(H[1], Z[1]), E=_kl(H[2], Z[2])),
}


def _expected(loss, shift, pairs=None):
    pairs = pairs or ("AB" if shift == "next" else "CDE")
    return sum(PER_PAIR[loss][p] for p in pairs) / len(pairs)


def _states(h, z, num_layers=2, target=1, requires_grad=False):
    """A hidden_states tuple of num_layers + 1 leaves: z at `target`, h at -1, zeros elsewhere."""
    h = torch.tensor(h, dtype=torch.float32, requires_grad=requires_grad)
    z = torch.tensor(z, dtype=torch.float32, requires_grad=requires_grad)
    states = [torch.zeros_like(h) for _ in range(num_layers + 1)]
    states[target], states[-1] = z, h
    return tuple(states), h, z


def _objective(num_layers=2, target=1, **cfg):
    cfg.setdefault("projector", "none")
    return NITPObjective(ObjectiveConfig(target_layer=target, **cfg), hidden_size=2, num_layers=num_layers)


@pytest.mark.parametrize("shift", ["next", "current"])
@pytest.mark.parametrize("loss", ["cosine", "mse", "smooth_l1", "kl"])
def test_hand_computed_loss(loss, shift):
    states, _, _ = _states([H], [Z])
    out = _objective(loss=loss, shift=shift)(states, torch.ones(1, 3))
    assert out.raw.item() == pytest.approx(_expected(loss, shift), rel=1e-6)
    assert out.loss.item() == pytest.approx(_expected(loss, shift), rel=1e-6)  # lambda = 1


def test_hand_computed_kl_values():
    # Independent of _kl: A is KL([.5,.5] || softmax([1,0])) = -log 2 - .5 (log s(1) + log s(-1)),
    # s the logistic function, log s(1) + log s(-1) = -1 - 2 log(1 + e^-1).
    assert PER_PAIR["kl"]["A"] == pytest.approx(-math.log(2) + 0.5 + math.log(1 + math.exp(-1)))
    got = alignment_loss(torch.tensor(H[0]), torch.tensor(Z[1]), "kl")
    assert got.item() == pytest.approx(0.5 - math.log(2) + math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("shift", ["next", "current"])
def test_linear_projector_with_set_weights(shift):
    # W is not symmetric so a transposed product would give other numbers.
    # P(h) = W h: h0 [1,0] -> [1,0]; h1 [0,1] -> [2,1]; h2 [1,1] -> [3,1]
    obj = _objective(projector="linear", shift=shift)
    with torch.no_grad():
        obj.projector.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    states, _, _ = _states([H], [Z])
    got = obj(states, torch.ones(1, 3)).raw.item()
    if shift == "next":  # A ([1,0],[1,1]); B ([2,1],[3,.5]): 6.5 / (sqrt5 sqrt9.25)
        want = (1 - 1 / S2 + 1 - 6.5 / (math.sqrt(5) * S925)) / 2
    else:  # C ([1,0],[-2,0]) -> 2; D ([2,1],[1,1]) -> 1 - 3/(sqrt5 sqrt2); E ([3,1],[3,.5]) -> 1 - 9.5/(sqrt10 sqrt9.25)
        want = (2 + 1 - 3 / (math.sqrt(5) * S2) + 1 - 9.5 / (math.sqrt(10) * S925)) / 3
    assert got == pytest.approx(want, rel=1e-6)


def test_swiglu_projector_matches_numpy():
    torch.manual_seed(0)
    obj = NITPObjective(ObjectiveConfig(), hidden_size=3, num_layers=5)
    h = torch.randn(2, 4, 3)
    got = obj.projector(h).detach().numpy()
    w1, w2, w3 = (getattr(obj.projector, n).weight.detach().numpy().astype(np.float64) for n in ("w1", "w2", "w3"))
    x = h.numpy().astype(np.float64)
    a, b = x @ w1.T, x @ w3.T  # [.., 4d]
    want = ((a / (1 + np.exp(-a))) * b) @ w2.T
    assert w1.shape == (12, 3) and w3.shape == (12, 3) and w2.shape == (3, 12)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "mask, shift, pairs",
    [
        ([1, 1, 0], "next", "A"),  # t=1 has a padded t+1; t=2 is padded
        ([1, 1, 0], "current", "CD"),
        ([0, 1, 1], "next", "B"),  # left padding: t=0 is padded
        ([0, 1, 1], "current", "DE"),
        ([1, 0, 1], "next", None),  # no t with both t and t+1 real
        ([1, 0, 1], "current", "CE"),
    ],
)
def test_mask_selects_positions(mask, shift, pairs):
    states, _, _ = _states([H], [Z])
    got = _objective(shift=shift)(states, torch.tensor([mask])).raw.item()
    assert got == pytest.approx(_expected("cosine", shift, pairs) if pairs else 0.0, rel=1e-6)


def test_shifted_pairs_validity():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    x = torch.zeros(2, 4, 1)
    _, _, valid = shifted_pairs(x, x, mask, "next")
    assert valid.tolist() == [[True, True, False], [False, True, True]]  # last position never
    _, _, valid = shifted_pairs(x, x, None, "next")
    assert valid.shape == (2, 3) and bool(valid.all())
    _, _, valid = shifted_pairs(x, x, mask, "current")
    assert valid.tolist() == mask.bool().tolist()


def _np_reference(h, z, mask, shift, loss):
    """Loop over (b, t) with the masking rule written out; cosine and mse only."""
    terms = []
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            u = t + 1 if shift == "next" else t
            if u >= h.shape[1] or not (mask[b, t] and mask[b, u]):
                continue
            p, q = h[b, t], z[b, u]
            terms.append(
                1 - p @ q / (np.linalg.norm(p) * np.linalg.norm(q)) if loss == "cosine" else np.mean((p - q) ** 2)
            )
    return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("shift", ["next", "current"])
@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_random_batch_matches_numpy_loop(shift, loss):
    rng = np.random.default_rng(0)
    h, z = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 4))
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    obj = NITPObjective(ObjectiveConfig(target_layer=1, projector="none", shift=shift, loss=loss), 4, 2)
    states = (torch.zeros(3, 6, 4), torch.tensor(z, dtype=torch.float32), torch.tensor(h, dtype=torch.float32))
    got = obj(states, torch.tensor(mask)).raw.item()
    assert got == pytest.approx(_np_reference(h, z, mask, shift, loss), rel=1e-5)


@pytest.mark.parametrize("shift", ["next", "current"])
@pytest.mark.parametrize("projector", ["none", "swiglu"])
def test_padded_values_change_nothing(shift, projector):
    torch.manual_seed(0)
    obj = NITPObjective(ObjectiveConfig(target_layer=1, projector=projector, shift=shift), 4, 2)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left- and right-padded rows
    h, z = torch.randn(2, 5, 4), torch.randn(2, 5, 4)

    def run(h, z):
        h, z = h.clone().requires_grad_(), z.clone().requires_grad_()
        loss = obj((torch.zeros_like(h), z, h), mask).loss
        obj.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in obj.parameters()]
        return loss.item(), h.grad, grads

    pad = ~mask.bool()
    h2, z2 = h.clone(), z.clone()
    h2[pad], z2[pad] = 1e3 * torch.randn(int(pad.sum()), 4), -1e3 * torch.randn(int(pad.sum()), 4)
    (l1, g1, p1), (l2, g2, p2) = run(h, z), run(h2, z2)
    assert l1 == l2
    assert torch.equal(g1, g2) and not g1[pad].any()  # no gradient into padded positions
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


@pytest.mark.parametrize("shift", ["next", "current"])
def test_left_padding_equals_unpadded(shift):
    torch.manual_seed(1)
    h, z = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    obj = NITPObjective(ObjectiveConfig(target_layer=1, shift=shift), 3, 2)
    plain = obj((h, z, h), torch.ones(1, 4)).raw
    pad = lambda x: torch.cat([torch.randn(1, 2, 3), x], dim=1)  # noqa: E731
    hp, zp = pad(h), pad(z)
    padded = obj((hp, zp, hp), torch.tensor([[0, 0, 1, 1, 1, 1]])).raw
    assert padded.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["nitp", "cosine_reg"])
def test_all_masked_gives_zero(name):
    h = torch.randn(2, 3, 4, requires_grad=True)
    obj = NITPObjective(ObjectiveConfig(name=name, target_layer=1), 4, 2)
    out = obj((torch.zeros(2, 3, 4), torch.randn(2, 3, 4), h), torch.zeros(2, 3))
    assert out.loss.item() == 0.0 and out.raw.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(h.grad).all() and not h.grad.any()
    assert masked_mean(torch.tensor([float("1e30")]), torch.tensor([False])).item() == 0.0


# ---------------------------------------------------------------------------- stop-gradient


@pytest.mark.parametrize("stop_grad", [True, False])
@pytest.mark.parametrize("shift", ["next", "current"])
def test_stop_gradient(stop_grad, shift):
    torch.manual_seed(0)
    obj = NITPObjective(ObjectiveConfig(target_layer=2, stop_grad=stop_grad, shift=shift), 4, 3)
    z = torch.randn(2, 5, 4, requires_grad=True)
    h = torch.randn(2, 5, 4, requires_grad=True)
    others = [torch.randn(2, 5, 4, requires_grad=True) for _ in range(2)]
    states = (others[0], others[1], z, h)  # index 2 = target, index -1 = last
    obj(states, torch.ones(2, 5)).loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    if stop_grad:
        assert z.grad is None or not z.grad.any()
    else:
        assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(o.grad is None for o in others)  # only the target and the last layer are read


# ---------------------------------------------------------------------------- projectors


@pytest.mark.parametrize("d", [2, 8, 24])
def test_projector_parameter_counts(d):
    count = lambda **cfg: sum(p.numel() for p in NITPObjective(ObjectiveConfig(**cfg), d, 6).parameters())  # noqa: E731
    assert count(projector="none") == 0
    assert count(projector="linear") == d * d
    assert count(projector="swiglu") == 12 * d * d
    assert count(projector="swiglu", projector_mult=2) == 6 * d * d
    assert count(name="ntp") == 0  # the baseline holds no projector whatever `projector` says
    assert count(name="cosine_reg") == 0


# ---------------------------------------------------------------------------- target layer


def test_target_layer_ints():
    for k in range(0, 7):
        assert resolve_target_layer(k, 6) == k
        assert NITPObjective(ObjectiveConfig(target_layer=k), 4, 6).target_layer == k
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="objective.target_layer"):
            NITPObjective(ObjectiveConfig(target_layer=bad), 4, 6)


@pytest.mark.parametrize(
    "frac, layers, want",
    [(0.2, 24, 5), (0.2, 28, 6), (0.2, 17, 4), (0.2, 16, 4), (0.2, 25, 5), (0.2, 10, 2), (0.01, 12, 1), (0.99, 12, 12)],
)
def test_target_layer_fractions(frac, layers, want):
    # ceil: 0.2 x 24 = 4.8 -> 5; x 28 = 5.6 -> 6; x 17 = 3.4 -> 4 (the paper's 4/17); x 16 = 3.2 -> 4 (the paper
    # uses 3/16, given as an int); x 25 = 5.000000000000001 -> 5, not 6; never the embeddings (index 0)
    assert resolve_target_layer(frac, layers) == want


def test_paper_targets_are_explicit_ints():
    # Table 4: 3/16, 4/17, 5/24, 6/28. 3/16 is not ceil(0.2 x 16), so presets must carry ints.
    for k, layers in [(3, 16), (4, 17), (5, 24), (6, 28)]:
        assert NITPObjective(ObjectiveConfig(target_layer=k), 8, layers).target_layer == k


@pytest.mark.parametrize(
    "preset, k, layers, lam",
    [
        ("moe-1.9b-a0.3b", 3, 16, 1.0),
        ("moe-3b-a0.5b", 4, 17, 1.0),
        ("moe-9b-a1b", 5, 24, 0.8),
        ("dense-0.5b", 5, 24, 1.0),
        ("dense-2b", 6, 28, 1.0),
        ("dense-3b", 6, 28, 0.8),
        ("moe-45b-a5.5b", 5, 24, 0.6),
    ],
)
def test_paper_presets_carry_table4_targets(preset, k, layers, lam):
    from nitp_train.presets import get_preset

    p = get_preset(preset)
    assert p.num_layers == layers and p.nitp["target_layer"] == k and p.nitp["lambda"] == lam
    assert type(p.nitp["target_layer"]) is int  # an index, not a fraction


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, True, "4", None])
def test_target_layer_bad_types(bad):
    with pytest.raises(ValueError, match="objective.target_layer"):
        ObjectiveConfig(target_layer=bad)


def test_wrong_number_of_hidden_states():
    obj = NITPObjective(ObjectiveConfig(target_layer=1), 4, 3)
    with pytest.raises(ValueError, match="expected 4 hidden states"):
        obj(tuple(torch.zeros(1, 2, 4) for _ in range(3)))


# ---------------------------------------------------------------------------- weighting and objectives


@pytest.mark.parametrize("lam", [0.0, 0.6, 2.5])
def test_lambda_and_start_step(lam):
    states, _, _ = _states([H], [Z])
    obj = _objective(lam=lam, start_step=100)
    raw = _expected("cosine", "next")
    for step in (0, 99):
        out = obj(states, torch.ones(1, 3), step=step)
        assert out.loss.item() == 0.0  # exactly 0, not merely small
        assert out.raw.item() == pytest.approx(raw, rel=1e-6)  # still logged
    for step in (100, 5000, None):  # step None: no schedule, always on
        assert obj(states, torch.ones(1, 3), step=step).loss.item() == pytest.approx(lam * raw, rel=1e-6)


def test_ntp_objective_is_zero():
    states, _, _ = _states([H], [Z])
    obj = _objective(name="ntp", projector="swiglu")
    out = obj(states, torch.ones(1, 3), step=10)
    assert out.loss.item() == 0.0 and out.raw is None and out.metrics == {}
    assert not obj.needs_hidden_states and list(obj.parameters()) == []


def _np_mean_pairwise_cosine(h, mask):
    per_seq = []
    for b in range(h.shape[0]):
        idx = [t for t in range(h.shape[1]) if mask[b, t]]
        cos = [
            h[b, i] @ h[b, j] / (np.linalg.norm(h[b, i]) * np.linalg.norm(h[b, j])) for i in idx for j in idx if i != j
        ]
        if cos:
            per_seq.append(np.mean(cos))
    return float(np.mean(per_seq))


def test_cosine_reg_matches_numpy_double_loop():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(3, 5, 4)) + 0.5  # some shared direction, so the answer is not ~0
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])  # the last row has no pair
    want = _np_mean_pairwise_cosine(h, mask)
    ht = torch.tensor(h, dtype=torch.float32)
    assert mean_pairwise_cosine(ht, torch.tensor(mask)).item() == pytest.approx(want, rel=1e-5)
    obj = NITPObjective(ObjectiveConfig(name="cosine_reg", lam=0.5, target_layer=1), 4, 2)
    out = obj((torch.zeros_like(ht), torch.zeros_like(ht), ht), torch.tensor(mask))
    assert out.raw.item() == pytest.approx(want, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.5 * want, rel=1e-5)


def test_cosine_reg_hand_case():
    # tokens [1,0], [0,1], [1,1]: cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2/3
    h = torch.tensor([H])
    assert mean_pairwise_cosine(h).item() == pytest.approx(math.sqrt(2) / 3, rel=1e-6)


def test_non_cosine_losses_log_the_cosine():
    states, _, _ = _states([H], [Z])
    metrics = _objective(loss="mse")(states, torch.ones(1, 3)).metrics
    assert float(metrics["loss_nitp"]) == pytest.approx(_expected("mse", "next"), rel=1e-6)
    assert float(metrics["nitp_cos"]) == pytest.approx(1 - _expected("cosine", "next"), rel=1e-6)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("loss", "l2", "objective.loss"),
        ("projector", "mlp", "objective.projector"),
        ("shift", "prev", "objective.shift"),
        ("name", "mtp", "objective.name"),
        ("lam", -0.1, "objective.lambda"),
        ("lam", float("nan"), "objective.lambda"),
        ("start_step", -1, "objective.start_step"),
        ("projector_mult", 0, "objective.projector_mult"),
        ("projector_mult", 1.5, "objective.projector_mult"),
        ("stop_grad", "maybe", "objective.stop_grad"),
        ("lam", "0.5", "objective.lambda"),
        ("start_step", 1.5, "objective.start_step"),
    ],
)
def test_config_validation(field, value, key):
    with pytest.raises(ValueError, match=key):
        ObjectiveConfig(**{field: value})


def test_config_from_dict():
    cfg = ObjectiveConfig.from_dict({"lambda": 0.8, "target_layer": 5})
    assert cfg.lam == 0.8 and cfg.target_layer == 5
    assert cfg.to_dict()["lambda"] == 0.8 and "lam" not in cfg.to_dict()
    assert ObjectiveConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="stopgrad"):
        ObjectiveConfig.from_dict({"stopgrad": False})
    with pytest.raises(ValueError, match="objective.lambda"):
        ObjectiveConfig.from_dict({"lambda": -1})
    with pytest.raises(ValueError, match="objective.lambda='much' must be a number"):
        ObjectiveConfig.from_dict({"lambda": "much"})


def test_exponent_floats_from_set_and_yaml(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; the config loader reads it as the float it means
    from nitp_train.config import load_config

    cfg = load_config(sets=["objective.lambda=1e-3", "objective.target_layer=2.5e-1", "optim.lr=3E-4", "steps=1e3"])
    assert (cfg.objective.lam, cfg.objective.target_layer, cfg.optim.lr, cfg.steps) == (1e-3, 0.25, 3e-4, 1000)
    (tmp_path / "c.yaml").write_text("objective:\n  lambda: 5e-1\n")
    assert load_config(tmp_path / "c.yaml").objective.lam == 0.5
    assert load_config(sets=["data.tokenizer=train:8192"]).data.tokenizer == "train:8192"  # strings stay strings


# ---------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("projector", ["swiglu", "linear", "none"])
def test_save_load_round_trip(tmp_path, projector):
    torch.manual_seed(0)
    cfg = ObjectiveConfig(lam=0.8, target_layer=4, projector=projector, loss="smooth_l1", start_step=7)
    obj = NITPObjective(cfg, hidden_size=6, num_layers=17)
    path = obj.save(tmp_path)
    assert path == tmp_path / PROJECTOR_FILE and path.exists()
    back = NITPObjective.load(tmp_path)
    assert back.config == cfg and back.hidden_size == 6 and back.num_layers == 17 and back.target_layer == 4
    a, b = obj.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.device.type == "cpu" for p in back.parameters())
    h = torch.randn(1, 3, 6)
    states = tuple(torch.randn(1, 3, 6) for _ in range(17)) + (h,)
    assert torch.equal(obj(states).raw, back(states).raw)

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["target_layer"] == "4" and meta["hidden_size"] == "6" and '"lambda": 0.8' in meta["config"]


def test_load_without_projector_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no NITP projector"):
        NITPObjective.load(tmp_path)


# ---------------------------------------------------------------------------- replication knobs


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_cross_document_false_drops_pairs_whose_source_is_an_eos(loss):
    states, _, _ = _states([H], [Z])
    eos_at_1 = torch.tensor([[False, True, False]])  # position 1 ends a document: pair B = (h1, z2) crosses it
    kept = _objective(loss=loss, cross_document=False)(states, None, boundaries=eos_at_1)
    assert kept.raw.item() == pytest.approx(_expected(loss, "next", pairs="A"), rel=1e-6)
    across = _objective(loss=loss)(states, None, boundaries=eos_at_1)  # the default ignores boundaries
    assert across.raw.item() == pytest.approx(_expected(loss, "next"), rel=1e-6)
    with pytest.raises(ValueError, match="needs the document boundaries"):
        _objective(cross_document=False)(states, None)


def test_target_norm_rms_divides_z_by_its_root_mean_square():
    states, _, _ = _states([H], [Z])
    # rms of z1 = [1, 1] is 1; of z2 = [3, .5]: sqrt((9 + .25) / 2) = sqrt(4.625)
    r2 = math.sqrt(4.625)
    z2 = [3 / r2, 0.5 / r2]
    want_b = ((0 - z2[0]) ** 2 + (1 - z2[1]) ** 2) / 2  # mse of h1 = [0, 1] against z2 / rms
    want = (PER_PAIR["mse"]["A"] + want_b) / 2
    got = _objective(loss="mse", target_norm="rms")(states, None).raw.item()
    assert got == pytest.approx(want, rel=1e-5)
    # cosine is scale-free: unchanged
    cos = _objective(loss="cosine", target_norm="rms")(states, None).raw.item()
    assert cos == pytest.approx(_expected("cosine", "next"), rel=1e-5)


@pytest.mark.parametrize("field, value", [("cross_document", "no"), ("target_norm", "l2"), ("freeze_projector", 1)])
def test_knob_validation(field, value):
    with pytest.raises(ValueError, match=f"objective.{field}"):
        ObjectiveConfig(**{field: value})
