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


def doc_values(records: list[dict], metric: str) -> dict[str, float]:
    """{doc_id: value of `metric`}; a record whose value is null (NaN in the results file) or NaN counts as
    not scored."""
    return {str(r["doc_id"]): float(r[metric]) for r in records if finite(r.get(metric))}


def paired_samples(base: list[dict], other: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-document values of `metric` for the documents both arms scored, in doc_id order."""
    a, b = doc_values(base, metric), doc_values(other, metric)
    common = sorted(set(a) & set(b), key=lambda k: (len(k), k))  # numeric ids in numeric order
    return np.array([a[k] for k in common]), np.array([b[k] for k in common])


def paired_by_doc(base, other, task: str) -> dict[str, float] | None:
    """{doc_id: other − base} of a task's primary metric over the documents both lm results scored, or None
    when either lacks per-sample records (`base`, `other`: report.load.Result)."""
    t = (base.data.get("tasks") or {}).get(task) or {}
    sa, sb = (r.data.get("samples", {}).get(task) for r in (base, other))
    if not t.get("primary") or not sa or not sb:
        return None
    a, b = doc_values(sa, t["primary"]), doc_values(sb, t["primary"])
    return {k: b[k] - a[k] for k in set(a) & set(b)} or None


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
