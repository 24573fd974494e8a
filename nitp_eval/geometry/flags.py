"""The massive-activation flag of a geometry result, in words: one sentence for the console and the report."""

from __future__ import annotations


def massive_flag(r: dict) -> str | None:
    """One sentence when some layers are dominated by a few tokens (also used by the report), else None."""
    m = r.get("massive") or {}
    dominated = m.get("dominated_layers") or []
    if not dominated:
        return None
    pl = r["per_layer"]
    idx = [r["layers"].index(layer) for layer in dominated]
    where: dict[int, int] = {}
    for i in idx:
        for pos, n in (pl["outlier_positions"][i] or {}).items():
            where[int(pos)] = max(where.get(int(pos), 0), n)
    top = sorted(where.items(), key=lambda kv: -kv[1])[:3]
    at = (
        f"; outliers (norm > {m['k']:g} x median) sit at window positions "
        + ", ".join(f"{p} ({n} tokens)" for p, n in top)
        if top
        else ""
    )
    return (
        f"in layers {_ranges(dominated)} the top 1 % of tokens carry >= {m['dominated_share']:.0%} of the squared "
        f"norms (max {max(pl['norm_max'][i] / pl['norm_median'][i] for i in idx):.0f} x the median){at}: these "
        "layers' effective rank and CKA describe those few tokens; see --exclude-positions / --exclude-massive "
        "(docs/footguns.md)"
    )


def _ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(f"{start}-{layer}" if layer != start else f"{layer}")
            start = None
    return ", ".join(out)
