"""The last-layer geometry table of single pairs and runs."""

from __future__ import annotations

from nitp_eval.report.common import (
    EXTRA_LAYER_METRICS,
    NA,
    UNEMBEDDING_METRICS,
    check_steps,
    fmt,
    pick,
    row_label,
    run_arms,
)
from nitp_eval.report.comparable import check_geometry_comparable, erank_bias_note
from nitp_eval.report.load import Run
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import finite
from nitp_eval.report.table import Table

GEOMETRY_COLUMNS = (
    ("erank_cov", "Eff. rank (cov)", "{:.2f}"),
    ("erank_sv", "Eff. rank (sv)", "{:.2f}"),
    ("anisotropy", "Anisotropy", "{:.4f}"),
    ("anisotropy_exact", "Anisotropy (exact)", "{:.4f}"),
)


def geometry_table(runs: list[Run], spec: Spec, notes: list[str]) -> Table | None:
    table = Table(
        "geometry",
        "Last-layer geometry",
        ["Model", "Step", "Tokens", "Layer", *[c for _, c, _ in GEOMETRY_COLUMNS], "cos(h_t, z_t+1)", "Projector cos"],
    )
    table.notes.append(
        "Layer = the last analysed hidden_states index (0 = embeddings). Eff. rank: Roy & Vetterli entropy effective rank "
        "of the centred covariance spectrum (cov) or of the singular values (sv). Anisotropy: mean "
        "cosine of random cross-sequence token pairs (exact: all pairs). cos(h_t, z_t+1): last-layer "
        "state vs target-layer k state at t+1; Projector cos = 1 − L_NITP (NITP arms)."
    )
    # every result in the table must have been measured on the same tokens the same way
    compared = [pick(run, "geometry", a, spec.step) for run in runs for a in run_arms(run, spec)]
    check_geometry_comparable(compared, spec.allow_mismatch, notes, "geometry table")
    bias = erank_bias_note(compared)
    if bias:
        table.notes.append(bias)
    for run in runs:
        arms = run_arms(run, spec)
        picked = {a: pick(run, "geometry", a, spec.step) for a in arms}
        check_steps(run, "geometry", picked, notes)
        for j, a in enumerate(arms):
            r = picked[a]
            if r is None:
                notes.append(f"{run.label}: no geometry results for arm {a}")
                continue
            d = r.data
            per_layer = d.get("per_layer") or {}
            cells = [fmt(per_layer[k][-1], f) if per_layer.get(k) else NA for k, _, f in GEOMETRY_COLUMNS]
            al = d.get("alignment") or {}
            cos = f"{al['cos_next']:.4f} (k={al.get('target_layer')})" if finite(al.get("cos_next")) else NA
            layer = (d.get("layers") or [None])[-1]
            table.add(
                row_label(run, a, len(runs) > 1),
                fmt(r.step, "{}"),
                fmt(d.get("tokens"), "{}"),
                fmt(layer, "{}"),
                *cells,
                cos,
                fmt(al.get("projector_cos")),
                rule=(j == 0),
            )
    return table if table.rows else None


def metrics_table(runs: list[Run], spec: Spec) -> Table | None:
    """The further representation metrics of the last layer, and the unembedding's (geometry schema 2)."""
    cols = [(k, label, f"{{:.{places}f}}") for k, (label, places) in EXTRA_LAYER_METRICS.items()]
    unemb = [(k, label, f"{{:.{places}f}}") for k, (label, places) in UNEMBEDDING_METRICS.items()]
    table = Table(
        "geometry_metrics", "Last-layer representation metrics", ["Model", "Step", *[c for _, c, _ in cols + unemb]]
    )
    table.notes.append(
        "Definitions, sources and the conventions that change each number: docs/geometry.md and docs/footguns.md "
        "(TwoNN and prompt entropy on a seeded, recorded sample). Unembedding: the LM head's effective rank, and "
        "the share of the last layer's variance in the head's top singular directions (isotropic: top_k / d)."
    )
    for run in runs:
        for j, a in enumerate(run_arms(run, spec)):
            r = pick(run, "geometry", a, spec.step)
            per_layer = (r.data.get("per_layer") or {}) if r else {}
            if not r or not any(per_layer.get(k) for k, _, _ in cols):
                continue  # schema-1 results: the geometry table above is all there is
            u = r.data.get("unembedding") or {}
            table.add(
                row_label(run, a, len(runs) > 1), fmt(r.step, "{}"),
                *[fmt(per_layer[k][-1], f) if per_layer.get(k) else NA for k, _, f in cols],
                *[fmt(u.get(k), f) for k, _, f in unemb], rule=(j == 0),
            )  # fmt: skip
    return table if table.rows else None
