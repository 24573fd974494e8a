"""Report rows as typed data: one compared quantity = one `Row` (estimate, interval, p, adjusted p, verdict,
endpoint family). Tables, CSV, LaTeX and the verdict paragraph only format rows; nothing parses text back.

`decide(rows, endpoints)` fills in what depends on the whole family: p-values in each row's declared
direction, Holm across the primary endpoints, Benjamini-Hochberg q-values across the exploratory rows,
minimum detectable effects, and the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from nitp_eval.report.seed_stats import Estimate, adjust


class Family(str, Enum):
    PRIMARY = "primary"  # declared before training; Holm family-wise control
    EXPLORATORY = "exploratory"  # everything else; Benjamini-Hochberg q-values, never a finding


class Direction(str, Enum):
    HIGHER = "higher"  # NITP − NTP > 0
    LOWER = "lower"  # NITP − NTP < 0
    NON_INFERIOR = "non-inferior"  # NITP − NTP < margin (a quantity where lower is better, e.g. CE)
    EITHER = "either"  # two-sided (exploratory rows)


class Verdict(str, Enum):
    HIGHER = "NITP higher"
    LOWER = "NITP lower"
    NON_INFERIOR = "non-inferior"
    NOT_RESOLVED = "not resolved"
    NOT_ESTIMABLE = "not estimable"


class Unit(str, Enum):
    PERCENT = "percent"  # scores stored as fractions 0-1, shown in %, deltas in points
    NATS = "nats"
    RANK = "rank"  # effective ranks: 2 decimals
    VALUE = "value"  # cosines, anisotropy: 4 decimals


@dataclass
class Row:
    key: str  # stable identifier (endpoints and tests refer to rows by it), e.g. "val_ce", "lm:c3", "layer_erank:4"
    section: str  # which table: training, probes, geometry, layers, downstream, mteb, mteb_tasks
    label: str
    unit: Unit
    seeds: tuple[int, ...]
    base: tuple[float, ...]  # per seed, the baseline arm's value
    other: tuple[float, ...]
    estimate: Estimate
    flags: tuple[str, ...] = ()  # e.g. "degenerate", "at or below the majority-answer baseline"
    settings: str = ""  # what changes the score and is shown beside it, e.g. "max_gen_toks=32"
    # filled by decide()
    family: Family = Family.EXPLORATORY
    direction: Direction = Direction.EITHER
    margin: float = 0.0
    p: float | None = None
    p_adj: float | None = None  # Holm (primary) or BH q (exploratory)
    mde: float | None = None
    verdict: Verdict = Verdict.NOT_RESOLVED
    paper_effect: float | None = None  # the paper's reported effect in this row's units (primaries)
    paper_source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def deltas(self) -> tuple[float, ...]:
        return tuple(o - b for b, o in zip(self.base, self.other))

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def k_higher(self) -> int:
        return sum(d > 0 for d in self.deltas)

    @property
    def seed_sd(self) -> float | None:
        return float(np.std(self.deltas, ddof=1)) if self.n > 1 else None

    @property
    def resolved(self) -> bool:
        return self.verdict in (Verdict.HIGHER, Verdict.LOWER, Verdict.NON_INFERIOR)

    @property
    def underpowered(self) -> bool:
        """A primary whose minimum detectable effect exceeds the paper's reported effect."""
        return self.paper_effect is not None and self.mde is not None and self.mde > abs(self.paper_effect)


@dataclass(frozen=True)
class Endpoint:
    """A primary endpoint as a study spec declares it: which row, which direction, the margin."""

    key: str
    direction: Direction
    margin: float = 0.0


ALTERNATIVE = {Direction.HIGHER: "greater", Direction.LOWER: "less", Direction.NON_INFERIOR: "less"}


def decide(rows: list[Row], endpoints: list[Endpoint], alpha: float = 0.05, paper: dict | None = None) -> list[Row]:
    """Primaries first (in the declared order), then the exploratory rows; every field decide() owns filled in."""
    declared = {e.key: e for e in endpoints}
    primaries = [next((r for r in rows if r.key == e.key), None) for e in endpoints]
    primaries = [r for r in primaries if r is not None]
    exploratory = [r for r in rows if r.key not in declared]
    m = max(len(endpoints), 1)
    for r in primaries:
        e = declared[r.key]
        r.family, r.direction, r.margin = Family.PRIMARY, e.direction, e.margin
        r.p = r.estimate.p_value(ALTERNATIVE[e.direction], e.margin if e.direction is Direction.NON_INFERIOR else 0.0)
        # one-sided at alpha/m: the strictest step of Holm's procedure (a Bonferroni bound)
        r.mde = r.estimate.mde(alpha / m, sided=1)
        if e.direction is Direction.NON_INFERIOR:  # what must be resolved is the declared margin
            r.paper_effect, r.paper_source = e.margin, "the declared non-inferiority margin"
        elif paper and r.key in paper:
            r.paper_effect, r.paper_source = paper[r.key](r) if callable(paper[r.key]) else paper[r.key]
    for r in exploratory:
        r.family, r.direction, r.p = Family.EXPLORATORY, Direction.EITHER, r.estimate.p_value()
        r.mde = r.estimate.mde(alpha, sided=2)
    # the family is what was declared: a declared endpoint without a row counts with p = 1
    holm = adjust([r.p for r in primaries] + [None] * (len(endpoints) - len(primaries)), "holm")
    for r, q in zip(primaries, holm):
        r.p_adj = q
    for r, q in zip(exploratory, adjust([r.p for r in exploratory], "fdr_bh")):
        r.p_adj = q
    for r in primaries + exploratory:
        r.verdict = _verdict(r, alpha)
    return primaries + exploratory


def _verdict(r: Row, alpha: float) -> Verdict:
    if not r.estimate.estimable:
        return Verdict.NOT_ESTIMABLE
    if r.p_adj is None or r.p_adj >= alpha:
        return Verdict.NOT_RESOLVED
    if r.direction is Direction.NON_INFERIOR:
        return Verdict.NON_INFERIOR
    if r.direction is Direction.EITHER:
        return Verdict.HIGHER if r.estimate.mean > 0 else Verdict.LOWER
    return Verdict.HIGHER if r.direction is Direction.HIGHER else Verdict.LOWER


# --- numbers as the tables show them ---------------------------------------------------------------

NA = "n/a"


def scale(unit: Unit) -> float:
    return 100.0 if unit is Unit.PERCENT else 1.0


def digits(unit: Unit) -> int:
    return {Unit.PERCENT: 2, Unit.RANK: 2, Unit.NATS: 4, Unit.VALUE: 4}[unit]


def value_text(x: float | None, unit: Unit) -> str:
    return NA if x is None or not np.isfinite(x) else f"{scale(unit) * x:.{digits(unit)}f}"


def diff_text(x: float | None, unit: Unit) -> str:
    if x is None or not np.isfinite(x):
        return NA
    text = f"{scale(unit) * x:+.{digits(unit)}f}"
    return f"{0:+.{digits(unit)}f}" if float(text) == 0 else text  # no "-0.00"


def interval_text(ci: tuple[float, float] | None, unit: Unit) -> str:
    return f"[{diff_text(ci[0], unit)}, {diff_text(ci[1], unit)}]" if ci else "—"


def p_text(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
