"""The rows of a study (one NTP/NITP pair per seed): every quantity both arms have, once, as a typed Row.

No row repeats another: the last layer's effective rank and anisotropy are the geometry rows, and the
per-layer rows cover the other layers; an MTEB group of one task is that task's row, not a group.
Benchmark rows with per-document records get the crossed seed x document estimate (seed_stats.crossed);
the others the t estimate over seeds. Degenerate lm tasks (one answer to nearly every question, or a
generation task that scores 0 in every arm) are flagged and left out of the downstream average.
"""

from __future__ import annotations

import numpy as np

from nitp_eval.pilot import smooth
from nitp_eval.report.common import (
    EXTRA_LAYER_METRICS,
    MTEB_GROUPS,
    UNEMBEDDING_METRICS,
    ordered_tasks,
    pick,
    run_arms,
    task_name,
)
from nitp_eval.report.comparable import check_geometry_comparable, erank_bias_note
from nitp_eval.report.downstream import degenerate_tasks, generation_settings, lm_answers, lm_score
from nitp_eval.report.load import Run, Study
from nitp_eval.report.mteb_tables import MTEB_CHANCE
from nitp_eval.report.rows import Row, Unit
from nitp_eval.report.seed_stats import crossed, over_seeds
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import finite, paired_by_doc

# geometry rows of the last layer: results key -> (row key, label, unit)
LAST_LAYER = {"erank_cov": ("last_erank", "effective rank", Unit.RANK), "anisotropy": ("last_anisotropy", "anisotropy", Unit.VALUE)}  # fmt: skip


class Collector:
    """Rows from per-seed (base, other) values; a seed lacking a value is left out of that row (and said so)."""

    def __init__(self, study: Study, notes: list[str]):
        self.seeds = sorted(study.seeds)
        self.label = study.label
        self.notes = notes
        self.rows: list[Row] = []

    def add(self, key, section, label, unit, values, docs=None, flags=(), settings="") -> Row | None:
        """`values`: per seed (base, other) or None. `docs`: per seed, per task, {doc: difference} or None."""
        have = [i for i, v in enumerate(values) if v is not None and finite(v[0]) and finite(v[1])]
        if not have:
            return None
        if len(have) < len(self.seeds):
            self.notes.append(
                f"{self.label}: {label}: {len(have)} of {len(self.seeds)} seeds have it; its row uses those"
            )
        matrices = _doc_matrices([docs[i] for i in have]) if docs and all(docs[i] for i in have) else None
        estimate = crossed(matrices) if matrices else over_seeds([values[i][1] - values[i][0] for i in have])
        row = Row(
            key, section, label, unit, tuple(self.seeds[i] for i in have), tuple(float(values[i][0]) for i in have),
            tuple(float(values[i][1]) for i in have), estimate, tuple(flags), settings,
        )  # fmt: skip
        self.rows.append(row)
        return row


def _doc_matrices(per_seed: list[list[dict]]) -> list[np.ndarray] | None:
    """Per task, the (seeds x documents) matrix of differences on the documents every seed scored."""
    out = []
    for t in range(len(per_seed[0])):
        common = sorted(set.intersection(*[set(s[t]) for s in per_seed]), key=lambda k: (len(k), k))
        if not common:
            return None
        out.append(np.array([[s[t][k] for k in common] for s in per_seed]))
    return out


def _metric(run: Run, arm: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in run.metrics.get(arm, []) if finite(r.get(key))}


def collect_rows(study: Study, spec: Spec, notes: list[str]) -> list[Row]:
    """Every quantity both arms have in some seed: training, probes, geometry, downstream, MTEB."""
    runs = [study.seeds[s] for s in sorted(study.seeds)]
    arms = run_arms(runs[0], spec)
    if len(arms) < 2:
        return []
    base, other = arms[0], arms[1]
    if len(arms) > 2:
        notes.append(f"{study.label}: the seed tables compare {other} with {base}; arms {arms[2:]} are left out")
    c = Collector(study, notes)
    _training(c, runs, base, other, spec)
    _probes(c, runs, base, other)
    _geometry(c, study, runs, base, other, spec)
    _downstream(c, runs, base, other, spec)
    _mteb(c, study, runs, base, other, spec)
    return c.rows


def _training(c: Collector, runs, base, other, spec) -> None:
    vals = []
    for run in runs:  # validation CE at the last step both arms evaluated (an arm cut short is not compared)
        b, o = _metric(run, base, "val_ce"), _metric(run, other, "val_ce")
        common = sorted(set(b) & set(o))
        if common and {max(b), max(o)} != {common[-1]}:
            c.notes.append(f"{run.label}: val CE compared at step {common[-1]}, the last both arms evaluated")
        vals.append((b[common[-1]], o[common[-1]]) if common else None)
    c.add("val_ce", "training", "validation CE (last common step)", Unit.NATS, vals)
    ntp = []
    for run in runs:
        pair = [list(_metric(run, a, "loss_ntp").values())[-spec.ce_window :] for a in (base, other)]
        ntp.append(tuple(float(np.mean(p)) for p in pair) if all(pair) else None)
    c.add("train_ntp_loss", "training", f"train NTP loss (mean of last {spec.ce_window} logs)", Unit.NATS, ntp)


def _probes(c: Collector, runs, base, other) -> None:
    """In-training probes at matched steps (the middle and the last step every seed and arm probed), and the
    effective rank's fall after its peak (paper Fig. 1)."""
    for key, name, unit in (("probe_erank", "effective rank", Unit.RANK), ("probe_cosine", "cosine similarity", Unit.VALUE)):  # fmt: skip
        per = [{a: _metric(run, a, key) for a in (base, other)} for run in runs]
        probed = [set(p[base]) & set(p[other]) for p in per]
        common = sorted(set.intersection(*[x for x in probed if x])) if any(probed) else []
        for step in dict.fromkeys([common[len(common) // 2], common[-1]] if common else []):
            values = [(p[base][step], p[other][step]) if step in x else None for p, x in zip(per, probed)]
            c.add(f"{key}@{step}", "probes", f"{name} at step {step}", unit, values)
    # the paper's Fig. 1: how far each arm's last-layer effective rank falls after its peak, measured at the end
    # of the constant learning rate (the WSD decay that follows lifts it again, as the pilot showed)
    falls = []
    for run in runs:
        pair = [fall_after_peak(_metric(run, a, "probe_erank"), *schedule_marks(run.configs.get(a))) for a in (base, other)]  # fmt: skip
        falls.append((pair[0][1], pair[1][1]) if all(pair) else None)
    marks = schedule_marks(runs[0].configs.get(base)) if runs else None
    if marks and marks[1]:
        label = f"effective rank: fall after its peak, by step {marks[1]} (the LR decay's start), % of the peak"
        c.add("probe_erank_fall", "probes", label, Unit.PERCENT, falls)


def schedule_marks(cfg: dict | None) -> tuple[int, int | None]:
    """(warm-up steps, the LR decay's first step) of an arm's config.yaml (WSD: the learning rate is
    constant from the end of the warm-up until then); (0, None) when the config does not say."""
    try:
        steps, optim = int(cfg["steps"]), cfg["optim"]
        return int(optim["warmup_steps"]), steps - int(round(steps * float(optim["decay_ratio"])))
    except (TypeError, KeyError, ValueError):
        return 0, None


def fall_after_peak(curve: dict[int, float], warmup: int, stable_end: int | None, window: int = 5):
    """(peak step, fall, end step, end value) of a probe curve {step: value} between the warm-up and
    `stable_end`, smoothed over `window` probes as `nitp-eval pilot` smooths (a centred moving average) but
    cut at `stable_end` first, so that the decay's rise after it never enters the average: the maximum, and
    the fraction (peak - end) / peak the curve has fallen by its last probe at or before `stable_end`.
    Smoothing blunts a sharp peak, so the fall is a slight underestimate. None when fewer than `window`
    finite probes lie in that range."""
    if stable_end is None:
        return None
    steps = [s for s in sorted(curve) if warmup < s <= stable_end and finite(curve[s])]
    if len(steps) < window:
        return None
    y = smooth(np.array([curve[s] for s in steps], dtype=float), window)
    top = int(np.argmax(y))
    return steps[top], float((y[top] - y[-1]) / y[top]) if y[top] else 0.0, steps[-1], float(y[-1])


def _geometry(c: Collector, study: Study, runs, base, other, spec) -> None:
    picked = [(pick(r, "geometry", base, spec.step), pick(r, "geometry", other, spec.step)) for r in runs]
    found = [x for p in picked for x in p if x is not None]
    if len({x.step for x in found}) > 1:
        c.notes.append(f"{study.label}: geometry results compare different steps: {sorted({x.step for x in found})}")
    check_geometry_comparable(found, spec.allow_mismatch, c.notes, f"{study.label} geometry")
    bias = erank_bias_note(found)
    if bias:
        c.notes.append(f"{study.label}: {bias}")

    def layer(res, key, i):  # per_layer[key][i] (i = -1: the last layer), or None
        v = (res.data.get("per_layer") or {}).get(key) or []
        return v[i] if -len(v) <= i < len(v) else None

    for key, (row_key, name, unit) in LAST_LAYER.items():
        c.add(row_key, "geometry", f"last layer: {name}", unit,
              [(layer(b, key, -1), layer(o, key, -1)) if b and o else None for b, o in picked])  # fmt: skip
    cos = [
        tuple((x.data.get("alignment") or {}).get("cos_next") for x in (b, o)) if b and o else None for b, o in picked
    ]
    c.add("cos_next", "geometry", "cos(h_t, z_t+1)", Unit.VALUE, [v if v and None not in v else None for v in cos])
    for key, (name, places) in EXTRA_LAYER_METRICS.items():  # schema 2; absent from older results
        c.add(f"last_{key}", "geometry", f"last layer: {name}", Unit.RANK if places == 2 else Unit.VALUE,
              [(layer(b, key, -1), layer(o, key, -1)) if b and o else None for b, o in picked])  # fmt: skip
    for key, (name, places) in UNEMBEDDING_METRICS.items():
        values = [
            tuple((x.data.get("unembedding") or {}).get(key) for x in (b, o)) if b and o else None for b, o in picked
        ]
        c.add(f"unembedding_{key}", "geometry", name, Unit.RANK if places == 2 else Unit.VALUE,
              [v if v and None not in v else None for v in values])  # fmt: skip
    layers = next((b.data.get("layers") for b, o in picked if b and o), None) or []
    for i, num in enumerate(layers[:-1]):  # the last layer is the geometry row above
        c.add(f"layer_erank:{num}", "layers", f"layer {num}", Unit.RANK,
              [(layer(b, "erank_cov", i), layer(o, "erank_cov", i)) if b and o else None for b, o in picked])  # fmt: skip


def _downstream(c: Collector, runs, base, other, spec) -> None:
    lm = [(pick(r, "lm", base, spec.step), pick(r, "lm", other, spec.step)) for r in runs]
    results = [x for p in lm for x in p if x is not None]
    found = {t for b, o in lm if b and o for t in b.data.get("tasks", {}) if lm_score(b, t) is not None}
    tasks = spec.tasks or ordered_tasks(found)
    degenerate = degenerate_tasks(results, tasks)
    docs_of = {}
    for t in tasks:
        values, docs = [], []
        for b, o in lm:
            ok = b and o and lm_score(b, t) is not None and lm_score(o, t) is not None
            values.append((lm_score(b, t), lm_score(o, t)) if ok else None)
            d = paired_by_doc(b, o, t) if ok else None
            docs.append([d] if d else None)
        docs_of[t] = docs
        flags = [f"degenerate: {degenerate[t]}"] if t in degenerate else []
        have = [v for v in values if v]
        majority = [(lm_answers(x, t) or {}).get("majority_baseline") for x in results]
        majority = [m for m in majority if finite(m)]
        if have and majority and max(np.mean([v[0] for v in have]), np.mean([v[1] for v in have])) <= np.mean(majority):
            flags.append(f"at or below the majority-answer baseline ({100 * np.mean(majority):.2f})")
        c.add(f"lm:{t}", "downstream", task_name(t), Unit.PERCENT, values, docs, flags, generation_settings(results, t))
    kept = [t for t in tasks if t not in degenerate]
    complete = [all(lm_score(x, t) is not None for x in p for t in kept) if all(p) else False for p in lm]
    if kept and any(complete):
        values = [
            (float(np.mean([lm_score(b, t) for t in kept])), float(np.mean([lm_score(o, t) for t in kept]))) if ok else None
            for (b, o), ok in zip(lm, complete)
        ]  # fmt: skip
        docs = [
            [docs_of[t][i][0] for t in kept] if ok and all(docs_of[t][i] for t in kept) else None
            for i, ok in enumerate(complete)
        ]
        left_out = f"; degenerate, left out: {', '.join(task_name(t) for t in degenerate)}" if degenerate else ""
        row = c.add("downstream_avg", "downstream", f"downstream average ({', '.join(task_name(t) for t in kept)}{left_out})",
                    Unit.PERCENT, values, docs)  # fmt: skip
        if row:
            row.extra["tasks"] = kept
    elif tasks:
        c.notes.append(f"{c.label}: every lm task is degenerate: no downstream average")


def _mteb(c: Collector, study: Study, runs, base, other, spec) -> None:
    """Task scores have no per-item records: intervals over seeds only."""
    mteb = [(pick(r, "mteb", base, spec.step), pick(r, "mteb", other, spec.step)) for r in runs]

    def scores(res):
        return {t: v["main_score"] for t, v in (res.data.get("tasks") or {}).items() if finite(v.get("main_score"))}

    both = [(scores(b), scores(o), b) if b and o else None for b, o in mteb]
    common = set.intersection(*[set(sb) & set(so) for sb, so, _ in both]) if all(both) else set()
    if not common:
        if any(both):
            c.notes.append(f"{study.label}: MTEB results are missing for some seed or arm: no MTEB rows")
        return
    group_of = {t: (both[0][2].data["tasks"][t].get("group") or "") for t in common}
    limit = {b.data.get("settings", {}).get("limit") for _, _, b in both} - {None}
    settings = f"limit={','.join(map(str, sorted(limit)))}" if limit else ""
    for g in [*MTEB_GROUPS, "Overall"]:
        members = sorted(t for t in common if g == "Overall" or group_of[t] == g)
        if len(members) < 2 and g != "Overall":  # a group of one task is that task's row
            continue
        label = f"{'MTEB overall' if g == 'Overall' else g} ({len(members)} task{'s' if len(members) > 1 else ''})"
        c.add("mteb_overall" if g == "Overall" else f"mteb_group:{g}", "mteb", label, Unit.PERCENT,
              [(np.mean([sb[t] for t in members]), np.mean([so[t] for t in members])) for sb, so, _ in both],
              settings=settings)  # fmt: skip
    for t in sorted(common, key=lambda t: (group_of[t], t)):
        values = [(sb[t], so[t]) for sb, so, _ in both]
        flags = []
        if t in MTEB_CHANCE and max(np.mean([v[0] for v in values]), np.mean([v[1] for v in values])) <= MTEB_CHANCE[t]:
            flags.append(f"at or below chance ({100 * MTEB_CHANCE[t]:.2f})")
        c.add(f"mteb:{t}", "mteb_tasks", f"{t} ({group_of[t] or 'no group'})", Unit.PERCENT, values, flags=flags)
