"""The representation metrics beyond effective rank and anisotropy, each a named estimator (docs/geometry.md).

Every definitional choice is an argument whose default is the source's choice:

* `twonn_dimension` / `TokenSample`: TwoNN intrinsic dimension (Facco et al. 2017) on a seeded uniform
  subsample of the counted tokens (the same tokens in every layer), `discard_fraction` 0.1 of the largest
  ratios r2/r1 left out before the line is fitted (the paper's, scikit-dimension's default).
* `SequenceAccumulator`: per sequence (window), with Skean et al. 2025's preprocessing (subtract the
  sequence's mean state, scale every row to unit norm):
    - prompt entropy: matrix-based Renyi entropy (alpha = 1) of the trace-normalised Gram matrix Z Z^T of one
      sequence, divided by log min(n, d) ("maxEntropy"), averaged over the first `prompt_sequences` sequences
      (windows come in a seeded random order, so these are a seeded sample);
    - dataset entropy: the same entropy of the Gram matrix of the sequences' mean-pooled rows, over every
      sequence: kept as rows while there are at most d, then as sum_s p_s p_s^T (d x d, the same non-zero
      spectrum), so it streams in O(d^2);
    - curvature: the mean angle arccos(cos(v_t, v_{t+1})) between consecutive steps v_t = z_{t+1} - z_t,
      averaged per sequence, then over every sequence (Hosseini & Fedorenko 2023, as Skean et al. use it).
* `unembedding_metrics`: effective rank of the LM head W [vocab, d] (its singular values) and the share of
  the last layer's centred variance that lies in the span of W's top-k right singular vectors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nitp_train.metrics import effective_rank, renyi_entropy

__all__ = [
    "MetricOptions",
    "twonn_dimension",
    "TokenSample",
    "curvature",
    "SequenceAccumulator",
    "unembedding_metrics",
]


@dataclass(frozen=True)
class MetricOptions:
    """The definitional choices of the metrics beyond today's set; each default is the source's (docs/footguns.md)."""

    extra: bool = True  # False: only effective ranks, anisotropy, CKA, norms and alignment (the schema-1 set)
    rankme_eps: float = 1e-7  # Garrido et al.
    rankme_center: bool = False  # RankMe uses the raw embeddings
    alpha_fit_range: tuple[int, int] = (11, 100)  # ranks fitted by alpha-ReQ (reptrix: np.arange(10, 100) + 1)
    alpha_weighted: bool = True  # weights 1/rank in the log-log fit (reptrix)
    twonn_sample: int = 1024  # tokens in the seeded TwoNN subsample
    twonn_discard: float = 0.1  # Facco et al.
    entropy_alpha: float = 1.0  # Renyi order of the prompt / dataset entropies (Skean et al.)
    entropy_center: bool = True  # Skean et al.: subtract each sequence's mean row ...
    entropy_normalize_rows: bool = True  # ... then unit rows (also before the curvature)
    entropy_normalization: str = "max"  # divide by log min(n, d) ("maxEntropy"), or "raw" nats
    prompt_sequences: int = 16  # sequences the prompt entropy averages over (the first in the seeded order)
    curvature_absolute: bool = False  # True: angles of |cos| as in Skean et al.'s code
    unembedding_top_k: int | None = None  # top singular directions of the LM head; None: ceil(d / 10)

    def to_dict(self) -> dict:
        return {**asdict(self), "alpha_fit_range": list(self.alpha_fit_range)}

    def sequences(self, dim: int) -> SequenceAccumulator:
        return SequenceAccumulator(
            dim,
            self.entropy_alpha,
            self.entropy_center,
            self.entropy_normalize_rows,
            self.entropy_normalization,
            self.prompt_sequences,
            self.curvature_absolute,
        )


def twonn_dimension(x, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the rows of x [n, d].

    mu_i = r2 / r1 (distances to the second and first nearest neighbour); after dropping the
    `discard_fraction` largest of the N ratios, d is the slope through the origin of -log(1 - i / N)
    on log mu_(i) (least squares; the largest ratio is always left out, as -log(1 - N / N) is infinite). Rows at distance 0 from another row (duplicates, e.g. a repeated
    token at the embedding layer) have no ratio and are left out. nan when fewer than 3 ratios remain.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if len(x) < 3:
        return float("nan")
    x = x - x.mean(0)  # distances do not change; the |x|^2 terms of cdist's matmul path get smaller
    d2 = torch.cdist(x, x).fill_diagonal_(float("inf"))
    r = torch.topk(d2, 2, dim=1, largest=False).values.numpy()
    ok = r[:, 0] > 0
    mu = np.sort(r[ok, 1] / r[ok, 0])
    n = mu.size
    keep = min(int(n * (1 - discard_fraction)), n - 1)  # F = 1 at the largest ratio: -log(1 - F) is infinite
    if keep < 3:
        return float("nan")
    xs = np.log(mu[:keep])
    ys = -np.log(1 - np.arange(1, keep + 1) / n)
    if not (xs * xs).sum() > 0:  # every ratio 1 (r2 = r1 everywhere, e.g. a lattice): no slope to fit
        return float("nan")
    return float((xs * ys).sum() / (xs * xs).sum())


class TokenSample:
    """A seeded uniform sample of `size` counted tokens, the same tokens in every layer, kept as float32.

    Each token draws a key from a seeded generator; the sample is the `size` smallest keys seen, so it is
    uniform without replacement over the whole stream whatever the batch order (memory: layers x size x d).
    """

    def __init__(self, size: int = 1024, seed: int = 0):
        self.size = size
        self.seed = seed

    def update(self, states: dict) -> TokenSample:
        """`states`: layer -> [n, d] rows of the same tokens."""
        n = len(next(iter(states.values())))
        if not hasattr(self, "keys_"):
            self.gen_ = torch.Generator().manual_seed(self.seed)
            self.keys_ = torch.empty(0, dtype=torch.float64)
            self.rows_ = {}
            self.seen_ = 0
        self.seen_ += n
        kept = len(self.keys_)
        keys = torch.cat([self.keys_, torch.rand(n, generator=self.gen_, dtype=torch.float64)])
        order = torch.argsort(keys)[: self.size]
        self.keys_ = keys[order]
        old_rows, new_rows = order[order < kept], order[order >= kept] - kept  # copy only the new rows kept
        for layer, x in states.items():
            old = self.rows_.get(layer, torch.empty(0, x.shape[1]))
            self.rows_[layer] = torch.cat([old[old_rows], x[new_rows.to(x.device)].detach().float().cpu()])
        # rows now sit as [old kept, new kept], not in key order: keep the keys in the same order
        self.keys_ = torch.cat([keys[old_rows], keys[new_rows + kept]])
        return self

    @property
    def n_(self) -> int:
        return len(getattr(self, "keys_", ()))

    def twonn(self, layer, discard_fraction: float = 0.1) -> float:
        return twonn_dimension(self.rows_[layer], discard_fraction) if self.n_ else float("nan")


def curvature(x, absolute: bool = False) -> float:
    """Mean angle (radians) between consecutive steps v_t = x_{t+1} - x_t of one sequence x [n, d] in order.

    0 for a straight line, pi for a reversal. A pair with a zero step has no angle and is skipped. With
    `absolute` the angle of |cos| (in [0, pi/2]), as Skean et al.'s code has it. nan for fewer than 3 rows.
    """
    angles = _step_angles(torch.as_tensor(x, dtype=torch.float64), absolute)
    return float(angles.mean()) if angles.numel() else float("nan")


def _step_angles(x: torch.Tensor, absolute: bool) -> torch.Tensor:
    v = x[1:] - x[:-1]
    a, b = v[:-1], v[1:]
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    cos = (a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])
    if absolute:
        cos = cos.abs()
    return torch.arccos(cos.clamp(-1.0, 1.0))


class SequenceAccumulator:
    """Prompt entropy, dataset entropy and curvature of one layer, streamed sequence by sequence.

        acc = SequenceAccumulator(d).update(rows, groups)   # rows of whole sequences, in position order
        acc.prompt_entropy(), acc.dataset_entropy(), acc.curvature()

    `center` and `normalize_rows` are Skean et al.'s preprocessing of each sequence (subtract its mean row,
    then unit rows); `alpha` the Renyi order; `normalization` "max" divides an entropy by log min(n, d) (its
    maximum; the source's "maxEntropy"), "raw" leaves it in nats; `prompt_sequences` how many sequences (the
    first ones seen) the prompt entropy averages over; `absolute_curvature` see `curvature`.
    """

    def __init__(
        self,
        dim: int,
        alpha: float = 1.0,
        center: bool = True,
        normalize_rows: bool = True,
        normalization: str = "max",
        prompt_sequences: int = 16,
        absolute_curvature: bool = False,
    ):
        self.dim = dim
        self.alpha = alpha
        self.center = center
        self.normalize_rows = normalize_rows
        self.normalization = normalization
        self.prompt_sequences = prompt_sequences
        self.absolute_curvature = absolute_curvature

    def _normalised(self, value: float, n: int) -> float:
        if self.normalization == "raw":
            return value
        if self.normalization == "max":
            top = math.log(min(n, self.dim))
            return value / top if top > 0 else float("nan")
        raise ValueError(f"normalization={self.normalization!r} is unknown; choose max or raw")

    def update(self, x, groups) -> SequenceAccumulator:
        """`x` [n, d]: rows grouped by sequence (each sequence whole, in position order); `groups` its ids."""
        x = torch.as_tensor(x)
        groups = torch.as_tensor(groups, device=x.device)
        if not hasattr(self, "sequences_"):
            self.sequences_ = 0
            self.prompt_sum_ = 0.0
            self.prompt_n_ = 0
            self.curv_sum_ = 0.0
            self.curv_n_ = 0
            self.pooled_rows_ = []  # pooled rows, until there are more than d of them (then `pooled_`)
            self.pooled_ = None
        _, counts = torch.unique_consecutive(groups, return_counts=True)
        grams: dict[int, list] = {}  # sequence length -> Gram matrices of this update's sampled sequences
        for z in torch.split(x, counts.tolist()):
            # float32 is plenty for an entropy and an angle, and halves the cost of the per-sequence Gram
            z = z.float()
            if self.center:
                z = z - z.mean(0)
            if self.normalize_rows:
                z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.sequences_ += 1
            angles = _step_angles(z, self.absolute_curvature)
            if angles.numel():
                self.curv_sum_ += float(angles.double().mean())
                self.curv_n_ += 1
            self._add_pooled(z.double().mean(0))
            if self.prompt_n_ + sum(map(len, grams.values())) < self.prompt_sequences and len(z) > 1:
                gram = z @ z.T if len(z) <= self.dim else z.T @ z  # the same non-zero spectrum: take the smaller
                grams.setdefault(len(z), []).append(gram)
        for n, same in grams.items():
            # one batched call per length, in float32: ~30 % faster than float64 for a 511-token window on one
            # CPU thread, and its eigenvalue errors (~1e-7 of the trace) move the entropy by < 1e-5 relative
            for lam in torch.linalg.eigvalsh(torch.stack(same)).double().cpu().numpy():
                self.prompt_sum_ += self._normalised(renyi_entropy(lam, self.alpha), n)
                self.prompt_n_ += 1
        return self

    def _add_pooled(self, p: torch.Tensor) -> None:
        """Keep the pooled rows while there are at most d of them (their n x n Gram is the cheaper one), then
        fold them into sum_s p_s p_s^T (d x d): the same non-zero spectrum, memory O(d^2) however many windows."""
        if self.pooled_rows_ is not None:
            self.pooled_rows_.append(p)
            if len(self.pooled_rows_) > self.dim:
                rows = torch.stack(self.pooled_rows_)
                self.pooled_ = rows.T @ rows
                self.pooled_rows_ = None
        else:
            self.pooled_.add_(torch.outer(p, p))

    def prompt_entropy(self) -> float:
        return self.prompt_sum_ / self.prompt_n_ if getattr(self, "prompt_n_", 0) else float("nan")

    def dataset_entropy(self) -> float:
        if getattr(self, "sequences_", 0) < 2:
            return float("nan")
        if self.pooled_rows_ is not None:
            rows = torch.stack(self.pooled_rows_)
            gram = rows @ rows.T
        else:
            gram = self.pooled_
        h = renyi_entropy(np.linalg.eigvalsh(gram.cpu().numpy()), self.alpha)
        return self._normalised(h, self.sequences_)

    def curvature(self) -> float:
        return self.curv_sum_ / self.curv_n_ if getattr(self, "curv_n_", 0) else float("nan")


def unembedding_metrics(weight, last_covariance=None, top_k: int | None = None) -> dict:
    """The LM head W [vocab, d]: effective rank of its singular values, and how last-layer states align with it.

    `erank`: Roy & Vetterli effective rank of W's singular values (uncentred: W as the logits use it).
    `top_k_share`: tr(V_k^T C V_k) / tr(C), the share of the last layer's centred variance (C, its covariance)
    in the span of W's top-k right singular vectors V_k, the hidden directions the head amplifies most;
    `isotropic_share` = k / d is its value for isotropic states. Default k: ceil(d / 10).
    """
    w = torch.as_tensor(weight).detach()
    # d x d: W's right singular vectors and squared singular values. The product in float32 on W's own device
    # (a 151k x 4096 head is 5 TFLOP: float64 would take hours on a CPU and is slow on most GPUs); its
    # eigendecomposition in float64
    gram = (w.float().T @ w.float()).double().cpu().numpy()
    eig, vec = np.linalg.eigh(gram)
    eig, vec = np.clip(eig[::-1], 0.0, None), vec[:, ::-1]
    erank = effective_rank(np.sqrt(eig))
    d = w.shape[1]
    k = int(top_k) if top_k is not None else math.ceil(d / 10)
    out = {"shape": list(w.shape), "erank": erank, "top_k": k, "isotropic_share": k / d, "top_k_share": None}
    if last_covariance is not None:
        c = np.asarray(last_covariance, dtype=np.float64)
        total = float(np.trace(c))
        if total > 0:
            vk = vec[:, :k]
            out["top_k_share"] = float(np.trace(vk.T @ c @ vk)) / total
    return out
