"""The metrics beyond effective rank and anisotropy against independent references on data with known answers.

TwoNN against scikit-dimension (the `test` extra) on points of known intrinsic dimension; RankMe and
alpha-ReQ against short numpy references on spectra with a known power-law decay; the matrix entropies
against numpy on Gram matrices with a closed-form answer; curvature on a straight line and a zig-zag.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nitp_eval.geometry.estimators import (
    MetricOptions,
    SequenceAccumulator,
    TokenSample,
    curvature,
    twonn_dimension,
    unembedding_metrics,
)
from nitp_train.metrics import CovarianceAccumulator, alpha_req, rankme, renyi_entropy


def np_rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, eq. 1: singular values of the raw embedding matrix, p = s / |s|_1 + eps."""
    s = np.linalg.svd(x, compute_uv=False)
    p = s / np.abs(s).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def np_alpha(lam: np.ndarray, ranks: np.ndarray, weighted: bool) -> float:
    """log lambda = c - alpha log i by np.polyfit (its weights multiply residuals, so sqrt(1/i) for 1/i)."""
    w = np.sqrt(1.0 / ranks) if weighted else None
    slope, _ = np.polyfit(np.log(ranks), np.log(lam[ranks - 1]), 1, w=w)
    return float(-slope)


def test_rankme_matches_numpy_and_relates_to_erank_sv():
    rng = np.random.default_rng(0)
    d = 40
    x = rng.standard_normal((3000, d)) * np.arange(1, d + 1) ** -1.0 + 2.0  # decaying spectrum, an offset
    acc = CovarianceAccumulator(d)
    for s in range(0, len(x), 500):
        acc.update(x[s : s + 500])
    assert acc.rankme() == pytest.approx(np_rankme(x), rel=1e-9)
    # centred, without eps, it is the singular-value effective rank
    assert acc.rankme(eps=0.0, center=True) == pytest.approx(acc.erank_sv(), rel=1e-12)
    assert rankme([1.0, 1.0, 1.0, 1.0], eps=0.0) == pytest.approx(4.0)
    assert math.isnan(rankme([0.0, 0.0]))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_a_known_power_law(alpha):
    lam = np.arange(1, 201, dtype=float) ** -alpha
    assert alpha_req(lam) == pytest.approx(alpha, rel=1e-10)
    assert alpha_req(lam, fit_range=(1, 200), weighted=False) == pytest.approx(alpha, rel=1e-10)


def test_alpha_req_matches_numpy_on_a_noisy_spectrum_and_from_states():
    rng = np.random.default_rng(1)
    lam = np.sort(np.arange(1, 129, dtype=float) ** -1.3 * np.exp(rng.normal(0, 0.2, 128)))[::-1]
    ranks = np.arange(11, 101)
    assert alpha_req(lam) == pytest.approx(np_alpha(lam, ranks, True), rel=1e-9)
    assert alpha_req(lam, (5, 60), weighted=False) == pytest.approx(np_alpha(lam, np.arange(5, 61), False), rel=1e-9)
    # from streamed states: the eigenvalues of the centred covariance, as numpy has them
    d = 128
    x = rng.standard_normal((4000, d)) * np.arange(1, d + 1) ** -0.6
    acc = CovarianceAccumulator(d).update(x)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
    assert acc.alpha_req() == pytest.approx(np_alpha(eig, ranks, True), rel=1e-6)
    assert math.isnan(alpha_req(lam[:12]))  # ranks 11..12: too few to fit
    with pytest.raises(ValueError):
        alpha_req(lam, (0, 10))


def test_renyi_entropy_closed_forms():
    # A = I_k / k: every Renyi entropy is log k
    for alpha in (0.5, 1.0, 2.0, 3.0):
        assert renyi_entropy(np.ones(7), alpha) == pytest.approx(math.log(7))
    # eigenvalues (1/2, 1/4, 1/4): von Neumann 1.5 log 2, collision entropy -log(3/8)
    assert renyi_entropy([2.0, 1.0, 1.0], 1.0) == pytest.approx(1.5 * math.log(2))
    assert renyi_entropy([2.0, 1.0, 1.0], 2.0) == pytest.approx(-math.log(0.375))


def np_prompt_entropy(z: np.ndarray, alpha: float = 1.0) -> float:
    """Skean et al.: centre the sequence, unit rows, K = Z Z^T / tr, Renyi entropy / log min(n, d)."""
    z = z - z.mean(0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    k = z @ z.T
    lam = np.clip(np.linalg.eigvalsh(k / np.trace(k)), 0, None)
    lam = lam[lam > 1e-15]
    h = -(lam * np.log(lam)).sum() if alpha == 1 else np.log((lam**alpha).sum()) / (1 - alpha)
    return float(h / math.log(min(z.shape)))


def test_prompt_entropy_closed_form_on_a_simplex():
    # n points whose centred rows form a regular simplex: the Gram matrix is I - 11^T / n (scaled),
    # eigenvalues 1/(n-1) with multiplicity n-1, so the entropy is log(n-1) at every order
    n, d = 6, 10
    x = np.eye(n, d) * 3.0 + 1.0
    for alpha in (1.0, 2.0):
        acc = SequenceAccumulator(d, alpha=alpha).update(torch.tensor(x), torch.zeros(n, dtype=torch.long))
        assert acc.prompt_entropy() == pytest.approx(math.log(n - 1) / math.log(n), rel=1e-6)
        assert acc.prompt_entropy() == pytest.approx(np_prompt_entropy(x, alpha), rel=1e-6)


def test_prompt_and_dataset_entropy_match_numpy_over_sequences():
    rng = np.random.default_rng(2)
    d, lengths = 16, [9, 30, 5, 12]  # one sequence longer than d: the d x d side of the Gram is used
    seqs = [rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) for n in lengths]
    x = torch.tensor(np.concatenate(seqs))
    groups = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    acc = SequenceAccumulator(d, prompt_sequences=3).update(x[:44], groups[:44]).update(x[44:], groups[44:])
    assert acc.prompt_n_ == 3  # the first three sequences only
    assert acc.prompt_entropy() == pytest.approx(np.mean([np_prompt_entropy(s) for s in seqs[:3]]), rel=1e-5)
    # dataset entropy: the Gram matrix of the mean-pooled preprocessed sequences
    pooled = []
    for s in seqs:
        z = s - s.mean(0)
        pooled.append((z / np.linalg.norm(z, axis=1, keepdims=True)).mean(0))
    p = np.stack(pooled)
    k = p @ p.T
    lam = np.clip(np.linalg.eigvalsh(k / np.trace(k)), 1e-300, None)
    expected = -(lam * np.log(lam)).sum() / math.log(min(len(lengths), d))
    assert acc.dataset_entropy() == pytest.approx(expected, rel=1e-5)
    raw = SequenceAccumulator(d, normalization="raw").update(x, groups)
    assert raw.dataset_entropy() == pytest.approx(expected * math.log(len(lengths)), rel=1e-5)


def test_curvature_straight_line_and_zigzag():
    t = np.arange(20, dtype=float)[:, None]
    line = t * np.array([[1.0, 2.0, -0.5]]) + 4.0
    assert curvature(line) == pytest.approx(0.0, abs=1e-7)
    # a zig-zag: steps alternate between (1, 1) and (1, -1): every turn is 90 degrees
    steps = np.array([[1.0, 1.0] if i % 2 == 0 else [1.0, -1.0] for i in range(15)])
    zigzag = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    assert curvature(zigzag) == pytest.approx(math.pi / 2)
    # going back and forth: pi, or 0 with the absolute cosine of Skean et al.'s code
    back = np.array([[0.0], [1.0], [0.0], [1.0], [0.0]])
    assert curvature(back) == pytest.approx(math.pi)
    assert curvature(back, absolute=True) == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(curvature(line[:2]))
    # streamed over sequences without the preprocessing: the mean of per-sequence means
    x = torch.tensor(np.vstack([line, zigzag[:, :1].repeat(3, 1) * 0 + zigzag[:, [0, 1, 1]]]))
    groups = torch.tensor([0] * len(line) + [1] * len(zigzag))
    acc = SequenceAccumulator(3, center=False, normalize_rows=False).update(x, groups)
    assert acc.curvature() == pytest.approx((0.0 + curvature(zigzag[:, [0, 1, 1]])) / 2, abs=1e-7)


def test_twonn_matches_scikit_dimension_on_known_manifolds():
    skdim = pytest.importorskip("skdim", reason="pip install scikit-dimension (the test extra)")
    rng = np.random.default_rng(3)
    # a 3-d linear subspace of R^20 and a 2-sphere in R^3 embedded in R^10
    flat = rng.uniform(size=(1500, 3)) @ rng.standard_normal((3, 20))
    sphere = rng.standard_normal((1500, 3))
    sphere = np.hstack([sphere / np.linalg.norm(sphere, axis=1, keepdims=True), np.zeros((1500, 7))])
    for x, dim in ((flat, 3), (sphere, 2)):
        ours = twonn_dimension(x)
        ref = skdim.id.TwoNN().fit(x).dimension_
        assert ours == pytest.approx(ref, rel=1e-6)
        assert ours == pytest.approx(dim, rel=0.15)
    assert twonn_dimension(flat, discard_fraction=0.3) == pytest.approx(
        skdim.id.TwoNN(discard_fraction=0.3).fit(flat).dimension_, rel=1e-6
    )


def test_twonn_skips_duplicates_and_token_sample_is_seeded_and_uniform():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 5))
    dup = np.vstack([x, x[:50]])  # 50 exact duplicates: 100 rows with r1 = 0 are left out
    assert twonn_dimension(dup) == pytest.approx(twonn_dimension(x[50:]), rel=0.3)
    assert math.isfinite(twonn_dimension(dup))
    states = torch.tensor(np.arange(1000, dtype=np.float32)[:, None].repeat(2, 1))

    def sample(seed, chunk):
        s = TokenSample(100, seed)
        for i in range(0, 1000, chunk):
            s.update({0: states[i : i + chunk], 5: 2 * states[i : i + chunk]})
        return s

    a, b, c = sample(0, 64), sample(0, 64), sample(1, 64)
    assert torch.equal(a.rows_[0], b.rows_[0]) and not torch.equal(a.rows_[0], c.rows_[0])
    assert torch.equal(a.rows_[5], 2 * a.rows_[0])  # the same tokens in every layer
    assert a.n_ == 100 and a.seen_ == 1000 and len(set(a.rows_[0][:, 0].tolist())) == 100
    means = [sample(seed, 64).rows_[0][:, 0].mean().item() for seed in range(20)]
    assert np.mean(means) == pytest.approx(499.5, rel=0.05)  # uniform over the stream, not its start


def test_unembedding_metrics_against_numpy():
    rng = np.random.default_rng(5)
    v, d = 300, 20
    w = rng.standard_normal((v, d)) * np.arange(1, d + 1) ** -0.5
    s = np.linalg.svd(w, compute_uv=False)
    p = s / s.sum()
    out = unembedding_metrics(torch.tensor(w), top_k=3)
    assert out["erank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)  # W^T W in float32
    # states that live in W's top-3 right singular directions: share 1; orthogonal to them: share 0
    vt = np.linalg.svd(w)[2]
    inside = rng.standard_normal((500, 3)) @ vt[:3]
    outside = rng.standard_normal((500, d - 3)) @ vt[3:]
    for states, share in ((inside, 1.0), (outside, 0.0)):
        out = unembedding_metrics(torch.tensor(w), np.cov(states, rowvar=False), top_k=3)
        assert out["top_k_share"] == pytest.approx(share, abs=1e-6)
    assert out["isotropic_share"] == pytest.approx(3 / d)
    assert unembedding_metrics(torch.tensor(w))["top_k"] == 2  # ceil(d / 10)


def test_metric_options_record_every_choice():
    o = MetricOptions()
    d = o.to_dict()
    assert d["alpha_fit_range"] == [11, 100] and d["rankme_eps"] == 1e-7 and d["twonn_discard"] == 0.1
    json.dumps(d)  # a results-header field


def test_geometry_settings_from_a_spec_mapping_and_checks():
    from nitp_eval.geometry.settings import GeometrySettings
    from nitp_train.errors import UserError

    s = GeometrySettings.from_mapping({"tokens": 4096, "metrics": {"alpha_fit_range": [5, 50], "twonn_sample": 256}})
    assert s.tokens == 4096 and s.metrics.alpha_fit_range == (5, 50) and s.metrics.twonn_sample == 256
    assert s.to_dict()["metrics"]["alpha_fit_range"] == [5, 50] and s.to_dict()["layers"] == "all"
    s.check()
    with pytest.raises(UserError, match="unknown tokenz"):
        GeometrySettings.from_mapping({"tokenz": 1})
    with pytest.raises(UserError, match="unknown rankme"):
        GeometrySettings.from_mapping({"metrics": {"rankme": 1}})
    for bad, match in (
        ({"tokens": 1}, "--tokens"),
        ({"metrics": {"twonn_sample": 2}}, "--twonn-sample"),
        ({"metrics": {"alpha_fit_range": [50, 5]}}, "--alpha-range"),
        ({"metrics": {"entropy_alpha": 0}}, "--entropy-alpha"),
        ({"metrics": {"entropy_normalization": "logN"}}, "max or raw"),
    ):
        with pytest.raises(UserError, match=match):
            GeometrySettings.from_mapping(bad).check()


def test_dataset_entropy_same_with_more_windows_than_dimensions():
    """More pooled windows than d: the d x d sum of outer products replaces the rows, same spectrum."""
    rng = np.random.default_rng(6)
    d, n_seq, n = 4, 11, 5
    x = rng.standard_normal((n_seq * n, d)) + rng.standard_normal((n_seq, d)).repeat(n, axis=0)
    groups = torch.arange(n_seq).repeat_interleave(n)
    acc = SequenceAccumulator(d, normalization="raw")
    for s in range(0, n_seq * n, 2 * n):
        acc.update(torch.tensor(x[s : s + 2 * n]), groups[s : s + 2 * n])
    assert acc.pooled_rows_ is None  # folded into the d x d sum
    z = x.reshape(n_seq, n, d)
    z = z - z.mean(1, keepdims=True)
    p = (z / np.linalg.norm(z, axis=2, keepdims=True)).mean(1)
    lam = np.linalg.eigvalsh(p @ p.T)
    lam = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
    lam = lam[lam > 1e-15]
    assert acc.dataset_entropy() == pytest.approx(float(-(lam * np.log(lam)).sum()), rel=1e-6)
