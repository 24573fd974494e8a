"""The settings of one `nitp-eval geometry` analysis: one dataclass for the CLI, spec files and the results header.

s = GeometrySettings(tokens=4096, layers="0,-1")       # or GeometrySettings.from_mapping(spec["geometry"])
s.check()                                              # UserError on a value out of range
s.to_dict()                                            # what the results header records (with the resolved facts)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from nitp_eval.geometry.estimators import MetricOptions
from nitp_train.errors import UserError


@dataclass
class GeometrySettings:
    """What to analyse and how; every default is the CLI's (`nitp-eval geometry --help` says what each does)."""

    tokens: int = 100_000
    seq_len: int | None = None  # None: the run's seq_len, else 512, capped by the model's positions
    batch_size: int = 8
    layers: str = "all"
    n_pairs: int = 10_000
    seed: int = 0
    cka_matrix: bool = False
    target_layer: int | None = None
    bos: bool = False
    exclude_positions: str = "auto"
    exclude_massive: float | None = None
    text: str | None = None
    text_split: str = "validation"
    text_revision: str | None = None
    device: str | None = None
    dtype: str = "auto"
    stats_device: str = "auto"
    metrics: MetricOptions = field(default_factory=MetricOptions)

    @classmethod
    def from_mapping(cls, data: dict) -> GeometrySettings:
        """From a spec file's mapping (field names as above; `metrics` a mapping of `MetricOptions` fields)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"geometry settings: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        metrics = data.pop("metrics", None) or {}
        if isinstance(metrics, MetricOptions):
            return cls(**data, metrics=metrics)
        known_m = {f.name for f in fields(MetricOptions)}
        bad = sorted(set(metrics) - known_m)
        if bad:
            raise UserError(f"geometry metrics: unknown {', '.join(bad)}; known: {', '.join(sorted(known_m))}")
        if "alpha_fit_range" in metrics:
            metrics["alpha_fit_range"] = tuple(metrics["alpha_fit_range"])
        return cls(**data, metrics=MetricOptions(**metrics))

    def check(self) -> None:
        """One UserError for the first value out of its range (before any model is loaded)."""
        if self.tokens < 2:
            raise UserError(
                f"--tokens {self.tokens}: too few; the statistics need at least 2 tokens (e.g. --tokens 100000)"
            )
        if self.batch_size < 1 or (self.batch_size < 2 and self.n_pairs > 0):
            raise UserError(
                f"--batch-size {self.batch_size}: sampled anisotropy pairs come from different windows of one "
                "batch; use --batch-size 2 or more"
            )
        if self.n_pairs < 0:
            raise UserError(f"--n-pairs {self.n_pairs}: must be >= 0")
        if self.seq_len is not None and self.seq_len < 2:
            raise UserError(f"--seq-len {self.seq_len}: must be at least 2 (cos_next pairs t with t+1)")
        if self.exclude_massive is not None and not (self.exclude_massive > 1 and math.isfinite(self.exclude_massive)):
            raise UserError(
                f"--exclude-massive {self.exclude_massive}: must be a finite factor > 1 of the median norm (e.g. 20)"
            )
        m = self.metrics
        if m.twonn_sample < 3:
            raise UserError(f"--twonn-sample {m.twonn_sample}: TwoNN needs at least 3 tokens (e.g. 1024)")
        if m.prompt_sequences < 0:
            raise UserError(f"--prompt-sequences {m.prompt_sequences}: must be >= 0")
        if not m.entropy_alpha > 0:
            raise UserError(f"--entropy-alpha {m.entropy_alpha}: the Renyi order must be > 0 (1 = von Neumann)")
        lo, hi = m.alpha_fit_range
        if not 1 <= lo < hi:
            raise UserError(f"--alpha-range {lo},{hi}: give two ranks 1 <= first < last, e.g. 11,100")
        if not 0 <= m.twonn_discard < 1:
            raise UserError(f"twonn_discard {m.twonn_discard}: a fraction in [0, 1)")
        if m.entropy_normalization not in ("max", "raw"):
            raise UserError(f"entropy_normalization {m.entropy_normalization!r}: choose max or raw")

    def to_dict(self) -> dict:
        return {**asdict(self), "metrics": self.metrics.to_dict()}

    def ignored_by_states_file(self, all_steps: bool = False) -> list[str]:
        """The options given away from their defaults that only apply to a model (a states file ignores them)."""
        default = GeometrySettings()
        given = [
            n
            for n in ("text", "text_split", "text_revision", "seq_len", "bos", "exclude_positions", "target_layer")
            if getattr(self, n) != getattr(default, n)
        ]
        given += ["all_steps"] if all_steps else []
        given += [n for n in ("device", "dtype", "stats_device") if getattr(self, n) != getattr(default, n)]
        return [f"--{n.replace('_', '-')}" for n in given]
