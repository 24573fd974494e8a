"""Geometry metrics of hidden states: pure functions and streaming (constant-memory) estimators.

Definitions (docs/geometry.md; docs/footguns.md shows how much the choices matter):

* effective rank (Roy & Vetterli 2007): exp(H(p)), p = spectrum / sum(spectrum), H = Shannon entropy.
  `erank_cov` uses the eigenvalues of the mean-centred covariance (the paper's Appendix D);
  `erank_sv` the singular values of the centred matrix (= sqrt of those eigenvalues). Both are
  capped by min(tokens, dim) (by min(tokens - 1, dim) once centred).
* anisotropy: mean cosine similarity of randomly sampled pairs of tokens from *different*
  sequences (the paper, seeded); `anisotropy_exact`: the exact mean over all pairs i != j,
  (|sum_i u_i|^2 - sum_i |u_i|^2) / (n (n - 1)) with u_i = x_i / |x_i| (a zero row has u_i = 0:
  its cosine with anything counts as 0, so sum |u_i|^2 is the number of non-zero rows, not n).
* linear CKA (Kornblith et al. 2019) between two layers, from centred (cross-)covariances:
  |C_xy|_F^2 / (|C_xx|_F |C_yy|_F).
* RankMe (Garrido et al. 2023): exp of the entropy of p_k = s_k / sum(s) + eps over the singular values
  s_k of the *uncentred* matrix, eps = 1e-7 (the source's). With centring and eps = 0 it is `erank_sv`.
* alpha-ReQ (Agrawal et al. 2022): the power-law decay alpha of the covariance eigenvalues, lambda_i ~ i^-alpha,
  from a least-squares line of log lambda_i on log i over the ranks `fit_range` (11..100, weights 1/i, as the
  authors' `reptrix` library does).
* `renyi_entropy`: the matrix-based Renyi entropy of order alpha of a PSD matrix from its eigenvalues,
  normalised to sum 1 (trace-normalised), in nats: -sum p log p at alpha = 1, log(sum p^alpha) / (1 - alpha) else.
* massive activations (`norm_summary`): the distribution of token-state norms (median, max), the
  share of the summed squared norms carried by the top 1 % of tokens, and how many tokens (and at
  which window positions) exceed `k` x the median norm. Real LLMs put norms ~100x the median on the
  first position of every window (the attention sink); a handful of such tokens then decides the
  covariance, so the effective rank and CKA describe them, not the text (docs/footguns.md).

Every statistic is accumulated in float64 from running sums, so memory is O(dim^2) whatever
the token count.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "effective_rank",
    "rankme",
    "alpha_req",
    "renyi_entropy",
    "linear_cka",
    "sample_cross_pairs",
    "CovarianceAccumulator",
    "CrossMomentAccumulator",
    "norm_summary",
    "massive_mask",
    "probe_metrics",
    "MASSIVE_K",
    "DOMINATED_SHARE",
]

MASSIVE_K = 20.0  # a token is an outlier when its norm exceeds this many times the median norm
DOMINATED_SHARE = 0.5  # a layer is flagged when its top 1 % of tokens carry this share of the squared norms


def _as_float64(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"expected a [tokens, dim] matrix, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def effective_rank(spectrum) -> float:
    """Roy & Vetterli effective rank: exp of the Shannon entropy of the spectrum normalised to sum 1.

    Negative values (round-off of eigenvalues that are really 0) are clipped to 0; 0 log 0 = 0.
    Returns nan for an all-zero spectrum (no variance: the rank is undefined).
    """
    s = np.clip(np.asarray(spectrum, dtype=np.float64).ravel(), 0.0, None)
    total = s.sum()
    if not total > 0:
        return float("nan")
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def rankme(singular_values, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp(-sum p_k log p_k), p_k = s_k / sum(s) + eps, over singular values s_k.

    eps = 1e-7 is the source's; it adds about min(n, d) x eps x (-log eps) to the entropy (so RankMe >
    `effective_rank` of the same values by a hair, and is > 1 for an all-zero spectrum instead of nan).
    """
    s = np.abs(np.asarray(singular_values, dtype=np.float64).ravel())
    total = s.sum()
    if not total > 0:
        return float("nan")
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def alpha_req(eigenvalues, fit_range: tuple[int, int] = (11, 100), weighted: bool = True) -> float:
    """alpha-ReQ (Agrawal et al. 2022): alpha of lambda_i ~ i^-alpha, fitted by least squares in log-log space.

    `eigenvalues` are sorted descending; ranks i (1-based) in `fit_range` (inclusive, clipped to the
    positive eigenvalues) are fitted by log lambda_i = c - alpha log i, each point weighted by 1/i when
    `weighted` (the authors' reptrix library, after Stringer et al. 2019). The default skips the first
    10 ranks (the head of real spectra is not a power law). nan when fewer than 3 ranks are left.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    lo, hi = fit_range
    if not 1 <= lo <= hi:
        raise ValueError(f"fit_range={fit_range!r}: need 1 <= first rank <= last rank")
    i = np.arange(lo, min(hi, lam.size) + 1)
    i = i[lam[i - 1] > 0] if i.size else i
    if i.size < 3:
        return float("nan")
    x, y = np.log(i), np.log(lam[i - 1])
    w = 1.0 / i if weighted else np.ones_like(x)
    xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum()
    return float(-slope)


def renyi_entropy(eigenvalues, alpha: float = 1.0) -> float:
    """Matrix-based Renyi entropy (nats) of order `alpha` of a PSD matrix from its eigenvalues, trace-normalised.

    alpha = 1 is the von Neumann entropy -sum p log p (its limit); exp of it is `effective_rank`.
    Negative round-off eigenvalues are clipped to 0. nan for an all-zero matrix.
    """
    if not alpha > 0:
        raise ValueError(f"alpha={alpha}: the Renyi order must be > 0")
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64).ravel(), 0.0, None)
    total = lam.sum()
    if not total > 0:
        return float("nan")
    p = lam[lam > 0] / total
    if alpha == 1:
        return float(-(p * np.log(p)).sum())
    return float(np.log((p**alpha).sum()) / (1 - alpha))


def linear_cka(x, y) -> float:
    """Linear CKA of two in-memory matrices [n, d1], [n, d2] (same tokens, rows paired), centred."""
    x = _as_float64(x)
    y = _as_float64(y)
    x = x - x.mean(0)
    y = y - y.mean(0)
    xy = (x.T @ y).pow(2).sum()
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(xy / den) if den > 0 else float("nan")


def sample_cross_pairs(groups, n_pairs: int, generator: torch.Generator | None = None):
    """(i, j): `n_pairs` ordered pairs of row indices drawn uniformly from all pairs with groups[i] != groups[j].

    `groups` [n] is the sequence id of each row. Exact sampling, no rejection loop: i is drawn
    with weight (n - size of its group), then j uniformly from the rows outside i's group.
    Returns two empty tensors when every row is in the same group (no cross pairs exist).
    """
    groups = torch.as_tensor(groups).cpu()
    n = groups.numel()
    order = torch.argsort(groups, stable=True)  # rows of one group become one contiguous block
    g_sorted = groups[order]
    _, sizes = torch.unique_consecutive(g_sorted, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    size_of = torch.repeat_interleave(sizes, sizes)  # per sorted row: its group's size
    start_of = torch.repeat_interleave(starts, sizes)
    weights = (n - size_of).to(torch.float64)
    if n_pairs <= 0 or not weights.sum() > 0:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    i = torch.multinomial(weights, n_pairs, replacement=True, generator=generator)
    r = (torch.rand(n_pairs, generator=generator, dtype=torch.float64) * (n - size_of[i])).long()
    r = torch.minimum(r, n - size_of[i] - 1)  # guard the (measure-zero) rand() == 1 edge
    j = torch.where(r < start_of[i], r, r + size_of[i])  # skip over i's own block
    return order[i], order[j]


class CovarianceAccumulator:
    """Streaming per-layer statistics of token states x [n, dim]: everything the geometry metrics need.

        acc = CovarianceAccumulator(d).update(batch1).update(batch2)
        acc.erank_cov(), acc.erank_sv(), acc.anisotropy_exact(), acc.mean_norm()

    `update(x, groups=None, pairs=None)` accumulates in float64: the count, the sum and X^T X
    (shifted by the first batch's mean, for stability), the sum of unit vectors, of their squared
    norms (1, or 0 for a zero row) and of norms.
    With `groups` (sequence id per row; a sequence must not be split across calls) it also
    accumulates the exact mean cosine over pairs from different sequences (over all updates, and over
    the pairs inside each update, i.e. each batch); with `pairs` (i, j)
    (from `sample_cross_pairs`) the sampled pair cosines of the paper.
    """

    def __init__(self, dim: int):
        self.dim = dim

    def update(self, x, groups=None, pairs=None) -> CovarianceAccumulator:
        x_in = torch.as_tensor(x)
        x = _as_float64(x_in)
        x_is_copy = x.data_ptr() != x_in.data_ptr()
        if x.shape[1] != self.dim:
            raise ValueError(f"expected rows of dim {self.dim}, got {x.shape[1]}")
        if not hasattr(self, "n_"):
            self.n_ = 0
            self.shift_ = x.mean(0) if len(x) else torch.zeros(self.dim, dtype=torch.float64, device=x.device)
            self.sum_ = torch.zeros(self.dim, dtype=torch.float64, device=x.device)
            self.gram_ = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=x.device)
            self.unit_sum_ = torch.zeros(self.dim, dtype=torch.float64, device=x.device)
            self.unit_sq_sum_ = 0.0  # sum |u_i|^2: the diagonal of the all-pairs cosine sum
            self.norm_sum_ = 0.0
            self.group_unit_sq_ = 0.0  # sum over sequences s of |sum_{i in s} u_i|^2
            self.group_n_sq_ = 0  # sum over sequences of n_s^2
            self.n_grouped_ = 0
            self.batch_cross_sum_ = 0.0  # sum of cos over cross-sequence pairs within each update
            self.batch_cross_n_ = 0
            self.pair_cos_sum_ = 0.0
            self.n_pairs_ = 0
        self._eig = {}  # eigenvalues cached per centring until the next update
        xs = x - self.shift_
        self.n_ += len(x)
        self.sum_ += xs.sum(0)
        self.gram_.addmm_(xs.T, xs)  # in place: no d x d temporary
        del xs
        norms = x.norm(dim=1)
        # unit vectors in place when x is our own float64 copy (never overwrite the caller's tensor);
        # a zero vector contributes a zero unit vector
        u = x.div_(norms.clamp_min(1e-12).unsqueeze(1)) if x_is_copy else x / norms.clamp_min(1e-12).unsqueeze(1)
        self.unit_sum_ += u.sum(0)
        self.unit_sq_sum_ += float(u.pow(2).sum())
        self.norm_sum_ += float(norms.sum())
        if groups is not None:
            groups = torch.as_tensor(groups, device=x.device)
            _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
            per_group = torch.zeros(len(counts), self.dim, dtype=torch.float64, device=x.device)
            per_group.index_add_(0, inverse, u)
            group_sq = float(per_group.pow(2).sum())
            self.group_unit_sq_ += group_sq
            self.group_n_sq_ += int(counts.pow(2).sum())
            self.n_grouped_ += len(x)
            # cross-sequence pairs inside this update (one batch): what the sampled pairs are drawn from
            self.batch_cross_sum_ += float(u.sum(0).pow(2).sum()) - group_sq
            self.batch_cross_n_ += len(x) ** 2 - int(counts.pow(2).sum())
        if pairs is not None:
            i, j = (torch.as_tensor(p, device=x.device) for p in pairs)
            self.pair_cos_sum_ += float((u[i] * u[j]).sum())
            self.n_pairs_ += len(i)
        return self

    # -- second moments

    def mean(self) -> np.ndarray:
        return (self.shift_ + self.sum_ / self.n_).cpu().numpy()

    def covariance(self, center: bool = True) -> np.ndarray:
        """Covariance with divisor n (the effective rank is scale-invariant); uncentred: X^T X / n."""
        if not getattr(self, "n_", 0):
            raise ValueError("no tokens accumulated yet; call update() with at least one row")
        m = self.sum_ / self.n_
        cov = self.gram_ / self.n_ - torch.outer(m, m)  # centred, from the shifted moments
        if not center:
            mu = self.shift_ + m
            cov = cov + torch.outer(mu, mu)
        return ((cov + cov.T) / 2).cpu().numpy()

    def spectrum(self, kind: str = "cov", center: bool = True) -> np.ndarray:
        """Eigenvalues of the covariance (`cov`) or singular values of the (centred) matrix (`sv`), descending."""
        if center not in getattr(self, "_eig", {}):  # one eigendecomposition serves every metric of a layer
            self._eig = {**getattr(self, "_eig", {}), center: np.linalg.eigvalsh(self.covariance(center))[::-1]}
        eig = np.clip(self._eig[center], 0.0, None)
        if kind == "cov":
            return eig
        if kind == "sv":
            return np.sqrt(eig * self.n_)  # singular values of X (centred), not of X / sqrt(n): same erank
        raise ValueError(f"kind={kind!r} is unknown; choose cov or sv")

    def effective_rank(self, kind: str = "cov", center: bool = True) -> float:
        return effective_rank(self.spectrum(kind, center))

    def erank_cov(self) -> float:
        """The paper's effective rank (Appendix D): eigenvalues of the mean-centred covariance."""
        return self.effective_rank("cov", center=True)

    def erank_sv(self) -> float:
        """Effective rank over singular values of the centred matrix (sqrt of the eigenvalues above)."""
        return self.effective_rank("sv", center=True)

    def rankme(self, eps: float = 1e-7, center: bool = False) -> float:
        """RankMe over the singular values of the accumulated matrix, uncentred as in Garrido et al. 2023.

        `rankme(eps=0, center=True)` equals `erank_sv()`.
        """
        return rankme(self.spectrum("sv", center), eps)

    def alpha_req(self, fit_range: tuple[int, int] = (11, 100), weighted: bool = True, center: bool = True) -> float:
        """alpha-ReQ of the (centred) covariance eigenvalues; see `alpha_req`."""
        return alpha_req(self.spectrum("cov", center), fit_range, weighted)

    # -- cosines and norms

    def anisotropy_exact(self) -> float:
        """Exact mean cosine over all pairs i != j: (|sum u_i|^2 - sum |u_i|^2) / (n (n - 1))."""
        if self.n_ < 2:
            return float("nan")
        return float((self.unit_sum_.pow(2).sum() - self.unit_sq_sum_) / (self.n_ * (self.n_ - 1)))

    def anisotropy_cross_exact(self) -> float:
        """Exact mean cosine over all pairs from different sequences (needs `groups` in every update).

        The per-sequence sums |sum_{i in s} u_i|^2 already hold the diagonal, zero rows included.
        """
        if self.n_grouped_ != self.n_:
            return float("nan")
        n_cross = self.n_**2 - self.group_n_sq_
        if n_cross <= 0:
            return float("nan")
        return float((self.unit_sum_.pow(2).sum() - self.group_unit_sq_) / n_cross)

    def anisotropy_batch_cross_exact(self) -> float:
        """Exact mean cosine over the cross-sequence pairs *within each update* (one batch), pooled.

        This, not `anisotropy_cross_exact`, is what `anisotropy_sampled` estimates when its pairs are
        drawn inside each batch in proportion to the batch's cross pairs (as `nitp-eval geometry` does):
        with several batches the two differ, since pairs of windows in different batches are never drawn.
        """
        if self.n_grouped_ != self.n_ or self.batch_cross_n_ <= 0:
            return float("nan")
        return self.batch_cross_sum_ / self.batch_cross_n_

    def anisotropy_sampled(self) -> float:
        """Mean cosine of the sampled cross-sequence pairs passed as `pairs` (the paper's estimator)."""
        return self.pair_cos_sum_ / self.n_pairs_ if self.n_pairs_ else float("nan")

    def mean_norm(self) -> float:
        return self.norm_sum_ / self.n_ if self.n_ else float("nan")


class CrossMomentAccumulator:
    """Streaming X^T Y (float64, shifted) of two layers' states over the same tokens, for linear CKA."""

    def __init__(self, dim_x: int, dim_y: int):
        self.dim_x = dim_x
        self.dim_y = dim_y

    def update(self, x, y) -> CrossMomentAccumulator:
        x, y = _as_float64(x), _as_float64(y)
        if not hasattr(self, "n_"):
            self.n_ = 0
            self.shift_x_, self.shift_y_ = x.mean(0), y.mean(0)
            self.sum_x_ = torch.zeros(self.dim_x, dtype=torch.float64, device=x.device)
            self.sum_y_ = torch.zeros(self.dim_y, dtype=torch.float64, device=x.device)
            self.cross_ = torch.zeros(self.dim_x, self.dim_y, dtype=torch.float64, device=x.device)
        xs, ys = x - self.shift_x_, y - self.shift_y_
        self.n_ += len(x)
        self.sum_x_ += xs.sum(0)
        self.sum_y_ += ys.sum(0)
        self.cross_ += xs.T @ ys
        return self

    def cross_covariance(self) -> torch.Tensor:
        return self.cross_ / self.n_ - torch.outer(self.sum_x_ / self.n_, self.sum_y_ / self.n_)

    def cka(self, acc_x: CovarianceAccumulator, acc_y: CovarianceAccumulator) -> float:
        """Linear CKA, with the per-layer covariances taken from the layers' own accumulators."""
        cxy = self.cross_covariance()
        den = np.linalg.norm(acc_x.covariance()) * np.linalg.norm(acc_y.covariance())
        return float(cxy.pow(2).sum()) / den if den > 0 else float("nan")


def norm_summary(norms, positions=None, k: float = MASSIVE_K) -> dict:
    """Massive-activation diagnostics of one layer from its token norms (and each token's window position).

    Returns `norm_median`, `norm_max`, `top1pct_share` (share of sum |x|^2 carried by the ceil(1 %)
    tokens of largest norm; about 0.01 when no token stands out, near 1 when a few dominate),
    `outliers` (tokens with norm > k x median) and `outlier_positions` ({position: count}, the five
    most frequent, when positions are given). All nan / 0 for no tokens.
    """
    norms = np.asarray(norms, dtype=np.float64).ravel()
    if norms.size == 0:
        nan = float("nan")
        return {"norm_median": nan, "norm_max": nan, "top1pct_share": nan, "outliers": 0, "outlier_positions": {}}
    median = float(np.median(norms))
    sq = np.sort(norms**2)[::-1]
    top = max(1, int(np.ceil(0.01 * norms.size)))
    total = float(sq.sum())
    out = norms > k * median
    where: dict[int, int] = {}
    if positions is not None:
        pos, counts = np.unique(np.asarray(positions).ravel()[out], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:5]
        where = {int(pos[i]): int(counts[i]) for i in order}
    return {
        "norm_median": median,
        "norm_max": float(norms.max()),
        "top1pct_share": float(sq[:top].sum()) / total if total > 0 else float("nan"),
        "outliers": int(out.sum()),
        "outlier_positions": where,
    }


def massive_mask(norms: torch.Tensor, k: float) -> torch.Tensor:
    """Rows whose norm exceeds k x the median norm of these rows (the `--exclude-massive K` rule, per batch)."""
    return norms > k * norms.median()


def probe_metrics(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    n_pairs: int = 4096,
    seed: int = 0,
    exclude_positions: tuple[int, ...] = (0,),
    k: float = MASSIVE_K,
) -> dict:
    """In-training probe on one batch (paper Fig. 1): the valid tokens of hidden [B, T, d].

    Positions `exclude_positions` of every sequence are left out of every statistic (default: the
    first, where LLMs grow a massive-norm attention sink that would decide the covariance; pass ()
    for the paper-literal every token). Returns floats `erank_cov` (centred covariance spectrum),
    `anisotropy` (mean cosine of `n_pairs` seeded random pairs of counted tokens from different
    sequences; nan if the batch has one sequence), plus `erank_sv`, `anisotropy_exact`, `mean_norm`,
    `tokens`, and the massive-activation diagnostics of `norm_summary` over the counted tokens:
    `norm_median`, `norm_max`, `top1pct_share`, `outliers` (norm > k x median), and
    `excluded_norm_median` (median norm of the excluded positions: the sink's size; nan if none).
    """
    with torch.no_grad():
        b, t, d = hidden.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.bool, device=hidden.device)
        real = attention_mask.bool()
        # position p of each sequence; negative p counts from the sequence's last real token
        pos = torch.arange(t, device=hidden.device).expand(b, t)
        length = real.sum(1, keepdim=True)
        excluded = torch.zeros_like(real)
        for p in exclude_positions:
            excluded |= pos == (p if p >= 0 else length + p)
        excluded &= real
        valid = real & ~excluded
        x = hidden[valid]  # [n, d], row-major: grouped by sequence
        groups = torch.arange(b, device=hidden.device).unsqueeze(1).expand(b, t)[valid]
        gen = torch.Generator().manual_seed(seed)
        pairs = sample_cross_pairs(groups.cpu(), n_pairs, gen)
        acc = CovarianceAccumulator(d).update(x, pairs=pairs)
        norms = x.double().norm(dim=1).cpu().numpy()
        ex_norms = hidden[excluded].double().norm(dim=1).cpu().numpy()
        summary = norm_summary(norms, k=k)
        del summary["outlier_positions"]  # a dict: the probes log scalars
        summary["excluded_norm_median"] = float(np.median(ex_norms)) if ex_norms.size else float("nan")
        if acc.n_ == 0:
            nan = float("nan")
            return {
                "erank_cov": nan,
                "anisotropy": nan,
                "erank_sv": nan,
                "anisotropy_exact": nan,
                "mean_norm": nan,
                "tokens": 0,
                **summary,
            }
        return {
            "erank_cov": acc.erank_cov(),
            "anisotropy": acc.anisotropy_sampled(),
            "erank_sv": acc.erank_sv(),
            "anisotropy_exact": acc.anisotropy_exact(),
            "mean_norm": acc.mean_norm(),
            "tokens": int(acc.n_),
            **summary,
        }
