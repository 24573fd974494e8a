"""The primary endpoints of a study (declared in its spec before training) and the paper's effect sizes.

By default the primaries are the paper's five claims, each with its direction:

    endpoints:
      alpha: 0.05
      primary:
        - {row: val_ce, direction: non-inferior, margin: 0.02}   # CE preserved: NITP − NTP < 0.02 nats/token
        - {row: last_erank, direction: higher}                    # last-layer effective rank higher
        - {row: last_anisotropy, direction: lower}                # last-layer anisotropy lower
        - {row: downstream_avg, direction: higher}                # downstream average higher
        - {row: mteb_overall, direction: higher}                  # MTEB overall higher

Why 0.02 nats: the paper's claim is that CE is unchanged (3B MoE: 2.006 vs 2.006 on the Pile); 0.02 nats
is 1 % of that CE, a difference smaller than any effect the paper reports on a downstream score would
be worth. A spec can declare another margin (in nats/token); the report prints the one used.
"""

from __future__ import annotations

from nitp_eval.report.rows import Direction, Endpoint, Row
from nitp_train.errors import UserError

DEFAULT_MARGIN = 0.02
DEFAULT_ENDPOINTS = (
    Endpoint("val_ce", Direction.NON_INFERIOR, DEFAULT_MARGIN),
    Endpoint("last_erank", Direction.HIGHER),
    Endpoint("last_anisotropy", Direction.LOWER),
    Endpoint("downstream_avg", Direction.HIGHER),
    Endpoint("mteb_overall", Direction.HIGHER),
)
CLAIMS = {  # what the paper claims for each default endpoint, in words
    "val_ce": "validation CE preserved",
    "last_erank": "last-layer effective rank higher",
    "last_anisotropy": "last-layer anisotropy lower",
    "downstream_avg": "downstream average higher",
    "mteb_overall": "MTEB overall higher",
}


def _erank_effect(row: Row) -> tuple[float, str]:
    # Fig. 1: ~60 (NITP) vs ~25 (NTP) late in training, i.e. +140 % of NTP's value; at another scale the
    # absolute ranks differ, so the effect is taken relative to this study's NTP mean
    ntp = sum(row.base) / len(row.base)
    return 1.4 * ntp, "Fig. 1: ~60 vs ~25 late in training, +140 % of NTP's value"


# The effect each default endpoint should resolve, in the row's own units (fractions for scores); a
# non-inferiority endpoint must resolve its declared margin instead (rows.decide).
PAPER_EFFECTS = {
    "last_erank": _erank_effect,
    "last_anisotropy": (-0.04, "Fig. 1: cosine ~0.33 vs ~0.37"),
    # the smallest model's 5-task average (MMLU-Pro, C3, CSQA, ARC-C, GSM8k): 19.11 -> 19.88
    "downstream_avg": (0.0078, "Table 1, MoE 1.9B-A0.3B, 5-task average: +0.78 points"),
    "mteb_overall": (0.0232, "Table 6, 3B MoE, overall: 39.24 -> 41.56"),
}


def parse_endpoints(raw, where: str) -> tuple[list[Endpoint], float, bool]:
    """The spec's `endpoints:` block -> (primaries, alpha, declared). Absent: the paper's claims, not declared."""
    if raw is None:
        return list(DEFAULT_ENDPOINTS), 0.05, False
    if not isinstance(raw, dict) or set(raw) - {"alpha", "primary"}:
        raise UserError(f"{where}: endpoints: a mapping with `primary:` (a list) and optionally `alpha:`")
    alpha = raw.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise UserError(f"{where}: endpoints.alpha={alpha!r} must lie in (0, 0.5), e.g. 0.05")
    out = []
    for e in raw.get("primary") or []:
        if not isinstance(e, dict) or "row" not in e or set(e) - {"row", "direction", "margin"}:
            raise UserError(f"{where}: each primary endpoint is {{row: KEY, direction: higher|lower|non-inferior}}")
        try:
            direction = Direction(str(e.get("direction", "higher")))
        except ValueError:
            raise UserError(
                f"{where}: endpoint {e['row']}: direction {e.get('direction')!r}; choose higher, lower or non-inferior"
            ) from None
        if direction is Direction.EITHER:
            raise UserError(f"{where}: endpoint {e['row']}: a primary endpoint needs a direction, not 'either'")
        margin = e.get("margin", DEFAULT_MARGIN if direction is Direction.NON_INFERIOR else 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
            raise UserError(f"{where}: endpoint {e['row']}: margin={margin!r} must be a number >= 0")
        if direction is Direction.NON_INFERIOR and margin == 0:
            raise UserError(f"{where}: endpoint {e['row']}: a non-inferiority endpoint needs a margin > 0")
        out.append(Endpoint(str(e["row"]), direction, float(margin)))
    if not out:
        raise UserError(f"{where}: endpoints.primary is empty; declare at least one, or leave `endpoints:` out")
    if len({e.key for e in out}) < len(out):
        raise UserError(f"{where}: endpoints.primary names a row twice")
    return out, float(alpha), True
