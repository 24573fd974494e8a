"""nitp_train: a compact trainer for paired NTP / NITP (Next Implicit Token Prediction) runs."""

from nitp_train.objective import (
    NITPObjective,
    ObjectiveConfig,
    alignment_loss,
    masked_mean,
    mean_pairwise_cosine,
    shifted_pairs,
)

__all__ = [
    "NITPObjective",
    "ObjectiveConfig",
    "alignment_loss",
    "masked_mean",
    "mean_pairwise_cosine",
    "shifted_pairs",
]
