"""Paired bootstrap confidence intervals for differences between two arms on the same documents."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Delta:
    """A difference (other - baseline) with its bootstrap interval; `n` = paired documents used."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.lo > 0 or self.hi < 0


def paired_samples(base: list[dict], other: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-document values of `metric` for the documents both arms scored, in doc_id order.

    A record whose value is null (NaN in the results file) or NaN counts as not scored."""
    a = {str(r["doc_id"]): float(r[metric]) for r in base if finite(r.get(metric))}
    b = {str(r["doc_id"]): float(r[metric]) for r in other if finite(r.get(metric))}
    common = sorted(set(a) & set(b), key=lambda k: (len(k), k))  # numeric ids in numeric order
    return np.array([a[k] for k in common]), np.array([b[k] for k in common])


def finite(x) -> bool:
    """A usable number: results files write NaN as null, and metrics.jsonl may hold NaN."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def bootstrap_replicates(
    base: np.ndarray, other: np.ndarray, n_boot: int = 10_000, seed: int = 0, stream: str = "", max_distinct: int = 64
) -> np.ndarray:
    """`n_boot` bootstrap replicates of mean(other - base), resampling documents with replacement.

    Pairs are resampled together (a paired bootstrap), so the between-document variance that both
    arms share cancels. `stream` names an independent random stream (e.g. the task name), so a
    task's replicates do not depend on which other tasks are in the table. Differences with at most
    `max_distinct` distinct values take an exact shortcut (below); others resample indices.
    """
    diff = np.asarray(other, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    n = len(diff)
    if n == 0:
        raise ValueError("no paired documents to bootstrap")
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    values, counts = np.unique(diff, return_counts=True)
    if len(values) <= max_distinct:
        # Few distinct differences (accuracy: -1, 0, +1): a resample is fully described by how often
        # each value is drawn, a multinomial draw; same distribution, O(values) instead of O(n).
        return rng.multinomial(n, counts / n, size=n_boot) @ values / n
    out = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)  # bounds memory at ~32 MB of indices per chunk
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        out[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def interval(point: float, replicates: np.ndarray, n: int, ci: float = 0.95) -> Delta:
    """Percentile interval of the replicates around the observed difference `point`."""
    lo, hi = np.quantile(replicates, [(1 - ci) / 2, (1 + ci) / 2])
    return Delta(float(point), float(lo), float(hi), n)


def mean_delta(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 10_000, seed: int = 0, ci: float = 0.95
) -> tuple[dict[str, Delta], Delta | None]:
    """Per-task deltas and the delta of the unweighted task average, each with a paired bootstrap CI.

    The average's replicates are the mean over tasks of each task's replicates (tasks resampled
    independently), matching an average column that weights every task equally.
    """
    per_task, reps = {}, []
    for task, (a, b) in pairs.items():
        r = bootstrap_replicates(a, b, n_boot, seed, stream=task)
        per_task[task] = interval(float(np.mean(b - a)), r, len(a), ci)
        reps.append(r)
    if not reps:
        return per_task, None
    avg_point = float(np.mean([d.value for d in per_task.values()]))
    return per_task, interval(avg_point, np.mean(reps, axis=0), sum(d.n for d in per_task.values()), ci)


# --- seeds: what a difference between training runs covers -----------------------------------------


@dataclass(frozen=True)
class SeedDelta:
    """A delta (other - baseline) measured on several paired seeds.

    `per_seed`: one delta per seed (its own mean over documents where there are documents).
    `seed_ci`: the 95 % (or `ci`) Student-t interval of the mean over seeds: it covers training-seed
    noise (init and data order), not evaluation noise beyond what each seed's delta carries; None with
    one seed. `nested_ci`: where per-document records exist, a hierarchical bootstrap (seeds resampled,
    then documents within each drawn seed), which covers both.
    """

    per_seed: tuple[float, ...]
    mean: float
    seed_ci: tuple[float, float] | None
    nested_ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def k_higher(self) -> int:
        """How many seeds' deltas are > 0 (the arm scored higher than the baseline on that seed)."""
        return sum(d > 0 for d in self.per_seed)

    @property
    def k_lower(self) -> int:
        return sum(d < 0 for d in self.per_seed)

    @property
    def intervals(self) -> list[tuple[float, float]]:
        return [c for c in (self.seed_ci, self.nested_ci) if c is not None]

    def verdict(self, arm: str = "NITP") -> str:
        """`resolved: NITP higher|lower` when every interval this delta has excludes 0 on the same side;
        else `not resolved at n = N seeds`. One seed never resolves (its CI covers evaluation noise only)."""
        ivs = self.intervals if self.seed_ci is not None else []
        if ivs and all(lo > 0 for lo, _ in ivs):
            return f"resolved: {arm} higher"
        if ivs and all(hi < 0 for _, hi in ivs):
            return f"resolved: {arm} lower"
        return f"not resolved at n = {self.n} seed{'s' if self.n != 1 else ''}"


def seed_interval(per_seed, ci: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of the per-seed deltas (scipy), or None with fewer than 2 seeds.

    Identical deltas give the zero-width interval [d, d] (scipy returns NaN bounds for zero variance)."""
    from scipy import stats

    d = np.asarray(per_seed, dtype=np.float64)
    if len(d) < 2:
        return None
    mean = float(d.mean())
    if np.all(d == d[0]):
        return mean, mean
    lo, hi = stats.t.interval(ci, df=len(d) - 1, loc=mean, scale=stats.sem(d))
    return float(lo), float(hi)


def hierarchical_bootstrap(
    pairs: list[list[tuple[np.ndarray, np.ndarray]]], n_boot: int = 10_000, seed: int = 0, ci: float = 0.95,
    stream: str = "",
) -> tuple[float, float] | None:  # fmt: skip
    """Percentile interval of the mean over seeds of a seed's delta, resampling seeds with replacement and
    then, within each drawn seed, its documents with replacement (a two-level bootstrap).

    `pairs`: per seed, per task, the (base, other) per-document values both arms scored; a seed's delta is
    the unweighted mean over its tasks of mean(other - base) (one task: that task's delta). None with
    fewer than 2 seeds.
    """
    m = len(pairs)
    if m < 2 or any(not tasks or any(len(a) == 0 for a, _ in tasks) for tasks in pairs):
        return None
    rng = np.random.default_rng([seed, zlib.crc32(("nested:" + stream).encode())])
    # n_boot x m document-level replicates per seed (each task's paired bootstrap, averaged over tasks),
    # so that a seed drawn twice into one replicate gets two independent document resamples
    pool = np.stack(
        [
            np.mean(
                [bootstrap_replicates(a, b, n_boot * m, seed, f"{stream}:{i}:{t}") for t, (a, b) in enumerate(tasks)],
                axis=0,
            )
            for i, tasks in enumerate(pairs)
        ]
    )
    drawn = rng.integers(0, m, size=(n_boot, m))  # the seeds of each replicate
    reps = pool[drawn, np.arange(n_boot * m).reshape(n_boot, m)].mean(axis=1)
    lo, hi = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def seed_delta(
    per_seed: list[float], pairs: list[list[tuple[np.ndarray, np.ndarray]]] | None = None, n_boot: int = 10_000,
    seed: int = 0, ci: float = 0.95, stream: str = "",
) -> SeedDelta:  # fmt: skip
    """The seed-aware delta of one metric: per-seed deltas, their mean and intervals (see SeedDelta)."""
    nested = hierarchical_bootstrap(pairs, n_boot, seed, ci, stream) if pairs else None
    return SeedDelta(tuple(float(x) for x in per_seed), float(np.mean(per_seed)), seed_interval(per_seed, ci), nested)
