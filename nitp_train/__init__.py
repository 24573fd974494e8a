"""nitp_train: a compact trainer for paired NTP / NITP (Next Implicit Token Prediction) runs.

`from nitp_train import NITPObjective` works; the import of torch is deferred until then so the
command line starts fast.
"""

_OBJECTIVE_NAMES = (
    "NITPObjective",
    "ObjectiveConfig",
    "alignment_loss",
    "masked_mean",
    "mean_pairwise_cosine",
    "shifted_pairs",
)
__all__ = list(_OBJECTIVE_NAMES)


def __getattr__(name):
    if name in _OBJECTIVE_NAMES:
        from nitp_train import objective

        return getattr(objective, name)
    raise AttributeError(f"module 'nitp_train' has no attribute {name!r}")
