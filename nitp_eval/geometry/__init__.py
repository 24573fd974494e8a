"""Hidden-state geometry: effective rank, anisotropy, CKA and shallow-to-deep alignment (docs/geometry.md).

    from nitp_eval.geometry import CovarianceAccumulator, effective_rank, linear_cka, probe_metrics

The metrics live in `nitp_train.metrics` (the trainer's in-training probes use them too, and
`nitp_train` never imports `nitp_eval`); they are re-exported here, lazily, so that
`nitp-eval --help` does not pay for importing torch.
"""

__all__ = [
    "CovarianceAccumulator",
    "CrossMomentAccumulator",
    "effective_rank",
    "linear_cka",
    "massive_mask",
    "norm_summary",
    "probe_metrics",
    "sample_cross_pairs",
]


def __getattr__(name):
    if name in __all__:
        from nitp_train import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
