"""Hidden-state geometry: effective rank, anisotropy, CKA and shallow-to-deep alignment (docs/geometry.md)."""

from nitp_eval.geometry.metrics import (
    CovarianceAccumulator,
    CrossMomentAccumulator,
    effective_rank,
    linear_cka,
    probe_metrics,
    sample_cross_pairs,
)

__all__ = [
    "CovarianceAccumulator",
    "CrossMomentAccumulator",
    "effective_rank",
    "linear_cka",
    "probe_metrics",
    "sample_cross_pairs",
]
