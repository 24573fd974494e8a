"""Whether geometry results can be compared: measured on the same tokens the same way, and how far the
token count biases the effective rank (docs/footguns.md, "Too few tokens").

Effective rank depends on how many tokens it was measured on, even far above the rank cap, so a
table or a curve that puts two results side by side is only meaningful when both were measured on
the same token ids with the same token rules. `check_geometry_comparable` refuses anything else
(or, when asked, lets it through with a flagged caveat).
"""

from __future__ import annotations

import math

from nitp_eval.report.load import Result
from nitp_train.errors import UserError

# settings of `nitp-eval geometry` that change the numbers (the others, e.g. batch size or device, do not
# change the effective rank); `tokens` is from the results body, the rest from `settings`
MEASUREMENT = ("tokens", "seq_len", "text_sha256", "bos", "exclude_positions", "exclude_massive")
FIX = "re-run nitp-eval geometry with the same --tokens/--seq-len/--text, or pass --allow-mismatch"
BIAS_NOTE_BELOW = 50  # tokens/dim under which the report says how far the token count biases erank


def measurement(data: dict) -> dict:
    """The MEASUREMENT keys a geometry results file records (older files lack some)."""
    settings = data.get("settings") or {}
    out = {k: settings[k] for k in MEASUREMENT if k in settings}
    if data.get("tokens") is not None:
        # the tokens selected, before the per-model norm rule: with one --exclude-massive K two models
        # leave out different counts, which is the rule working, not a different measurement
        excluded = ((data.get("massive") or {}).get("excluded") or {}).get("massive", 0)
        out["tokens"] = data["tokens"] + excluded
    return out


def _show(key: str, value) -> str:
    return str(value)[:12] if key == "text_sha256" else str(value)  # a hash prefix is enough to tell them apart


def geometry_settings_mismatch(results: list[Result]) -> list[str]:
    """One line per result measured differently from the first: the two files and every differing setting.

    Only settings that both files record are compared (see `unverified` for files without the hash).
    """
    results = [r for r in results if r is not None]
    if len(results) < 2:
        return []
    first, ref = results[0], measurement(results[0].data)
    out = []
    for r in results[1:]:
        m = measurement(r.data)
        diffs = [
            f"{k} {_show(k, ref[k])} vs {_show(k, m[k])}" for k in MEASUREMENT if k in ref and k in m and ref[k] != m[k]
        ]
        if diffs:
            out.append(f"{first.path} and {r.path} were measured differently ({', '.join(diffs)})")
    return out


def check_geometry_comparable(results: list[Result], allow_mismatch: bool, notes: list[str], what: str) -> None:
    """Refuse (one-line UserError) to compare geometry results measured differently, unless `allow_mismatch`:
    then each difference becomes a "NOT COMPARABLE" caveat in `notes`. `what` names the table or figure.

    Files without `settings.text_sha256` (written before it was recorded) cannot be checked: a caveat says so.
    """
    results = [r for r in results if r is not None]
    unverified = [str(r.path) for r in results if "text_sha256" not in (r.data.get("settings") or {})]
    if unverified and len(results) > 1:
        notes.append(
            f"{what}: {', '.join(unverified)} record(s) no settings.text_sha256 (older results): whether the "
            "compared results saw the same tokens could not be verified; re-run nitp-eval geometry to record it"
        )
    diffs = geometry_settings_mismatch(results)
    if not diffs:
        return
    if not allow_mismatch:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise UserError(f"{what}: not comparable: {diffs[0]}{more}; {FIX}")
    notes += [
        f"NOT COMPARABLE: {what}: {d}; differences between them may come from the measurement, not the models"
        for d in diffs
    ]


def isotropic_erank_fraction(tokens_per_dim: float) -> float:
    """Effective rank / dim of isotropic Gaussian states measured on tokens_per_dim x dim tokens.

    The large-dim limit (Marchenko-Pastur law of the sample covariance): exp(-1/(2 r)) for r >= 1 and
    r exp(-r/2) below, i.e. erank = m exp(-m / (2 M)) with m, M the smaller and larger of tokens and dim.
    benchmarks/erank_bias.py measures it (docs/footguns.md): within 0.8 % of this at d = 64, 0.4 % at 192, 0.2 % at 768.
    """
    r = float(tokens_per_dim)
    if not r > 0:
        return float("nan")
    return math.exp(-1 / (2 * r)) if r >= 1 else r * math.exp(-r / 2)


def tokens_per_dim(data: dict) -> float | None:
    """The results' tokens/dim (computed from tokens and dim for files written before it was recorded)."""
    if data.get("tokens_per_dim") is not None:
        return float(data["tokens_per_dim"])
    tokens, dim = data.get("tokens"), data.get("dim")
    return tokens / dim if tokens and dim else None


def erank_bias_note(results: list[Result]) -> str | None:
    """A note for a table of effective ranks measured on fewer than BIAS_NOTE_BELOW tokens/dim, or None."""
    ratios = sorted({round(r, 1) for x in results if x is not None and (r := tokens_per_dim(x.data)) is not None})
    low = [r for r in ratios if r < BIAS_NOTE_BELOW]
    if not low:
        return None
    at = " / ".join(f"{r:g}" for r in low)
    share = " / ".join(f"{100 * isotropic_erank_fraction(r):.1f}" for r in low)
    return (
        f"Eff. rank is biased low when measured on few tokens per dimension: at {at} tokens/dim (the results "
        f"here) isotropic Gaussian states reach only ~{share} % of their full rank d (docs/footguns.md). Compare "
        "effective ranks only at equal token counts; between runs measured at different counts, differences "
        "smaller than that bias are not meaningful."
    )
