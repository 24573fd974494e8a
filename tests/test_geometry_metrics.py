"""Geometry metrics against independent numpy computations on matrices with known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nitp_eval.geometry import (
    CovarianceAccumulator,
    CrossMomentAccumulator,
    effective_rank,
    linear_cka,
    probe_metrics,
    sample_cross_pairs,
)


def np_erank(s):
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 1e-12 * s.max()]
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def accumulate(x, chunk=97, **kw):
    acc = CovarianceAccumulator(x.shape[1])
    for i in range(0, len(x), chunk):
        acc.update(x[i : i + chunk])
    return acc


def test_effective_rank_hand_cases():
    assert effective_rank([1, 1, 1, 1]) == pytest.approx(4.0)
    assert effective_rank([5.0, 0, 0]) == pytest.approx(1.0)
    assert effective_rank([1, 1, 0, -1e-17]) == pytest.approx(2.0)  # round-off negatives clipped
    p = np.array([0.5, 0.25, 0.25])
    assert effective_rank(p * 7) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert math.isnan(effective_rank([0.0, 0.0]))


def test_isotropic_gaussian_erank_close_to_dim():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 32))
    acc = accumulate(x, chunk=1000)
    assert 31.0 < acc.erank_cov() <= 32.0
    assert acc.erank_sv() > acc.erank_cov()  # sqrt flattens the spectrum


def test_rank_r_data_erank_close_to_r():
    rng = np.random.default_rng(1)
    r, d = 5, 48
    x = rng.standard_normal((4000, r)) @ np.linalg.qr(rng.standard_normal((d, r)))[0].T + 3.0
    acc = accumulate(x)
    assert acc.erank_cov() == pytest.approx(r, abs=0.2)
    assert acc.erank_sv() == pytest.approx(r, abs=0.1)


def test_streaming_matches_numpy_in_memory():
    rng = np.random.default_rng(2)
    # a known anisotropic spectrum, a large common offset (tests the shifted accumulation)
    scales = np.geomspace(10.0, 0.01, 24)
    x = rng.standard_normal((3001, 24)) * scales + 50.0
    acc = accumulate(torch.from_numpy(x).float(), chunk=256)
    xf = torch.from_numpy(x).float().double().numpy()
    xc = xf - xf.mean(0)
    np.testing.assert_allclose(acc.covariance(), xc.T @ xc / len(xf), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(acc.covariance(center=False), xf.T @ xf / len(xf), rtol=1e-9)
    sv = np.linalg.svd(xc, compute_uv=False)
    assert acc.erank_sv() == pytest.approx(np_erank(sv), rel=1e-9)
    assert acc.erank_cov() == pytest.approx(np_erank(sv**2), rel=1e-9)
    assert acc.effective_rank("cov", center=False) == pytest.approx(
        np_erank(np.linalg.svd(xf, compute_uv=False) ** 2), rel=1e-6
    )
    np.testing.assert_allclose(acc.mean(), xf.mean(0), rtol=1e-12)
    assert acc.mean_norm() == pytest.approx(np.linalg.norm(xf, axis=1).mean(), rel=1e-12)


def test_anisotropy_exact_and_identical_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)) + 0.5
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    ref = (c.sum() - np.trace(c)) / (300 * 299)
    assert accumulate(x, chunk=64).anisotropy_exact() == pytest.approx(ref, rel=1e-10)
    same = np.tile(rng.standard_normal((1, 8)) * 3, (50, 1))
    assert accumulate(same).anisotropy_exact() == pytest.approx(1.0, abs=1e-12)
    groups = np.repeat(np.arange(5), 10)
    pairs = sample_cross_pairs(groups, 100, torch.Generator().manual_seed(0))
    acc = CovarianceAccumulator(8).update(same, groups=groups, pairs=pairs)
    assert acc.anisotropy_sampled() == pytest.approx(1.0)
    assert acc.anisotropy_cross_exact() == pytest.approx(1.0)


def test_anisotropy_exact_with_zero_rows():
    # a zero row has no direction: its cosine with anything counts as 0 (u = 0), so the
    # all-pairs sum loses its diagonal term for that row (sum |u_i|^2 is not n)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 5)) + 1.0
    x[[3, 17, 18]] = 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    c = u @ u.T
    off_diag = ~np.eye(40, dtype=bool)
    ref = c[off_diag].mean()
    groups = np.repeat(np.arange(4), 10)
    acc = CovarianceAccumulator(5)
    for s in range(0, 40, 10):  # one sequence per update
        acc.update(x[s : s + 10], groups=groups[s : s + 10])
    assert acc.anisotropy_exact() == pytest.approx(ref, rel=1e-12)
    cross = groups[:, None] != groups[None, :]
    assert acc.anisotropy_cross_exact() == pytest.approx(c[cross].mean(), rel=1e-12)
    all_zero = CovarianceAccumulator(5).update(np.zeros((4, 5)))
    assert all_zero.anisotropy_exact() == 0.0


def test_cross_sequence_exact_and_sampled_agree_with_brute_force():
    rng = np.random.default_rng(4)
    sizes = [7, 30, 1, 12, 50]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    # per-sequence offsets: within-sequence pairs are more similar than cross pairs
    x = rng.standard_normal((len(groups), 6)) + rng.standard_normal((len(sizes), 6))[groups] * 2
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u @ u.T
    cross = groups[:, None] != groups[None, :]
    ref = c[cross].mean()
    gen = torch.Generator().manual_seed(0)
    pairs = sample_cross_pairs(groups, 200_000, gen)
    acc = CovarianceAccumulator(6).update(x, groups=groups, pairs=pairs)
    assert acc.anisotropy_cross_exact() == pytest.approx(ref, rel=1e-10)
    assert acc.anisotropy_sampled() == pytest.approx(ref, abs=0.01)
    assert acc.anisotropy_exact() != pytest.approx(ref, abs=0.01)  # the definitions really differ here
    i, j = pairs
    assert (groups[i.numpy()] != groups[j.numpy()]).all()
    # uniform over ordered cross pairs: every cross pair equally likely
    counts = np.zeros((len(groups), len(groups)))
    np.add.at(counts, (i.numpy(), j.numpy()), 1)
    expected = 200_000 / cross.sum()
    assert counts[cross].mean() == pytest.approx(expected)
    assert counts[~cross].sum() == 0
    # pair-of-groups frequencies match n_a * n_b / n_cross
    ga, gb = groups[i.numpy()], groups[j.numpy()]
    freq = np.mean((ga == 4) & (gb == 1))
    assert freq == pytest.approx(50 * 30 / cross.sum(), abs=0.003)


def test_sample_cross_pairs_seeded_and_degenerate():
    g = np.repeat(np.arange(3), 4)
    a = sample_cross_pairs(g, 10, torch.Generator().manual_seed(5))
    b = sample_cross_pairs(g, 10, torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    i, j = sample_cross_pairs(np.zeros(9, dtype=int), 10)
    assert len(i) == len(j) == 0


def test_linear_cka_streaming_matches_in_memory_and_numpy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 12))
    y = np.tanh(x @ rng.standard_normal((12, 20))) + 0.3 * rng.standard_normal((2000, 20)) + 4
    xc, yc = x - x.mean(0), y - y.mean(0)
    # the HSIC form over n x n Gram matrices: an independent reference
    k, l_ = xc @ xc.T, yc @ yc.T
    ref = (k * l_).sum() / (np.linalg.norm(k) * np.linalg.norm(l_))
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-9)
    ax, ay, xy = CovarianceAccumulator(12), CovarianceAccumulator(20), CrossMomentAccumulator(12, 20)
    for s in range(0, 2000, 300):
        ax.update(x[s : s + 300]), ay.update(y[s : s + 300]), xy.update(x[s : s + 300], y[s : s + 300])
    assert xy.cka(ax, ay) == pytest.approx(ref, rel=1e-9)
    # invariances: orthogonal transform and isotropic scaling leave CKA at 1
    q = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)


@pytest.mark.parametrize("exclude", [(), (0,), (0, -1)])
def test_probe_metrics_matches_definitions(exclude):
    torch.manual_seed(0)
    h = torch.randn(4, 16, 8) + 1.0
    h[:, 0] *= 300.0  # an attention-sink-like first position
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[2, 10:] = 0
    out = probe_metrics(h, mask, n_pairs=50_000, seed=0, exclude_positions=exclude)
    keep = mask.bool().clone()
    for b, length in enumerate(mask.sum(1).tolist()):
        for p in exclude:
            keep[b, p % 16 if p >= 0 else length + p] = False
    x = h[keep].double().numpy()
    xc = x - x.mean(0)
    assert out["tokens"] == 58 - sum(1 for p in exclude) * 4
    assert out["erank_cov"] == pytest.approx(np_erank(np.linalg.eigvalsh(xc.T @ xc)), rel=1e-8)
    seqs = np.repeat(np.arange(4), keep.sum(1).numpy())
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cross = seqs[:, None] != seqs[None, :]
    assert out["anisotropy"] == pytest.approx((u @ u.T)[cross].mean(), abs=0.01)
    # the norm diagnostics, against numpy
    norms = np.linalg.norm(x, axis=1)
    top = int(np.ceil(0.01 * len(norms)))
    assert out["norm_median"] == pytest.approx(np.median(norms))
    assert out["norm_max"] == pytest.approx(norms.max())
    assert out["top1pct_share"] == pytest.approx(np.sort(norms**2)[::-1][:top].sum() / (norms**2).sum())
    assert out["outliers"] == int((norms > 20 * np.median(norms)).sum())
    if 0 in exclude:  # the sink is gone from what is counted, and its size is reported
        assert out["outliers"] == 0
        ex = torch.cat([h[:, 0], h[[0, 1, 3], 15], h[2:3, 9]]) if -1 in exclude else h[:, 0]
        assert out["excluded_norm_median"] == pytest.approx(np.median(ex.double().norm(dim=1).numpy()))
    else:
        assert (
            out["outliers"] == 4 and out["top1pct_share"] > 0.2
        )  # 1 token of 4 equal sinks: ~0.25 and math.isnan(out["excluded_norm_median"])
    again = probe_metrics(h, mask, n_pairs=100, seed=1, exclude_positions=exclude)
    assert again["anisotropy"] == probe_metrics(h, mask, n_pairs=100, seed=1, exclude_positions=exclude)["anisotropy"]
    assert math.isnan(probe_metrics(h[:1])["anisotropy"])  # one sequence: no cross-sequence pairs


def test_sampled_anisotropy_estimates_the_within_batch_cross_mean():
    """With several batches the pairs come from inside each batch: anisotropy_batch_cross_exact is the target."""
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(3):  # batches that differ in their mean direction: within-batch pairs are more alike
        offset = rng.standard_normal(6) * 2
        batches.append([rng.standard_normal((20, 6)) + offset for _ in range(4)])
    acc = CovarianceAccumulator(6)
    gen = torch.Generator().manual_seed(0)
    for windows in batches:
        x = np.concatenate(windows)
        groups = np.repeat(np.arange(4), 20)
        acc.update(x, groups=groups, pairs=sample_cross_pairs(groups, 100_000, gen))

    # numpy: the mean cosine over pairs from different windows of the same batch, and over all windows
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    within = []
    for windows in batches:
        u, g = unit(np.concatenate(windows)), np.repeat(np.arange(4), 20)
        within.append((u @ u.T)[g[:, None] != g[None, :]])
    u_all = unit(np.concatenate([np.concatenate(w) for w in batches]))
    g_all = np.repeat(np.arange(12), 20)
    assert acc.anisotropy_batch_cross_exact() == pytest.approx(np.concatenate(within).mean(), rel=1e-10)
    assert acc.anisotropy_cross_exact() == pytest.approx((u_all @ u_all.T)[g_all[:, None] != g_all[None, :]].mean())
    assert acc.anisotropy_sampled() == pytest.approx(acc.anisotropy_batch_cross_exact(), abs=0.01)
    assert abs(acc.anisotropy_batch_cross_exact() - acc.anisotropy_cross_exact()) > 0.05  # they really differ
