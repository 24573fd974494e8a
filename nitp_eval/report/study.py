"""Reports of a study (one NTP/NITP pair per training seed): per-seed deltas, intervals that say what they
cover, k of n seeds, and a verdict per metric; the setup and verdict paragraphs every report opens with.

A pair report is a study of one seed as far as the setup paragraph goes; its intervals (tables.py)
cover evaluation noise only, and its verdict paragraph says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nitp_eval.report.comparable import check_geometry_comparable, erank_bias_note
from nitp_eval.report.load import Run, Study
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import SeedDelta, finite, seed_delta
from nitp_eval.report.table import Cell, Table
from nitp_eval.report.tables import (
    MTEB_GROUPS,
    NA,
    arm_name,
    lm_pairs,
    lm_score,
    ordered_tasks,
    pick,
    run_arms,
    task_name,
)

# The paper's reading of each metric (its claims): which direction it reports NITP moving it.
PAPER_CLAIMS = {
    "val_ce": ("validation CE", "preserved (no worse)"),
    "probe_erank": ("last-layer effective rank (probe, last step)", "higher"),
    "probe_cosine": ("last-layer cosine similarity (probe, last step)", "lower"),
    "downstream_avg": ("downstream average", "higher"),
    "mteb_overall": ("MTEB overall", "higher"),
}


@dataclass
class Row:
    """One metric of a study: per-seed values of both arms and their seed-aware delta."""

    group: str
    metric: str
    base: list[float]
    other: list[float]
    delta: SeedDelta
    percent: bool = False  # scores in 0-1 shown as percentages (deltas in points)
    key: str = ""  # a PAPER_CLAIMS key, for the verdict paragraph
    seeds: tuple[int, ...] = ()
    rank: bool = False  # an effective rank: 2 decimals, whatever its size

    @property
    def digits(self) -> int:
        """One precision per row: scores in %, ranks and values >= 10 to 2 decimals, CE and cosines to 4."""
        return 2 if self.percent or self.rank or max(abs(x) for x in self.base + self.other) >= 10 else 4

    def value(self, x: float) -> str:
        return f"{(100 if self.percent else 1) * x:.{self.digits}f}" if finite(x) else NA

    def diff(self, x: float) -> str:
        if not finite(x):
            return NA
        text = f"{(100 if self.percent else 1) * x:+.{self.digits}f}"
        return f"{0:+.{self.digits}f}" if float(text) == 0 else text  # no "-0.00"

    def interval(self, ci: tuple[float, float] | None) -> str:
        return f"[{self.diff(ci[0])}, {self.diff(ci[1])}]" if ci else "—"


def _add(rows, notes, label, group, metric, values, seeds, pairs, *, spec, **kw) -> None:
    """A row from per-seed (base, other) values; seeds lacking a value are left out of it (and said so)."""
    have = [(s, v) for s, v in zip(seeds, values) if v is not None and finite(v[0]) and finite(v[1])]
    if not have:
        return
    if len(have) < len(seeds):
        notes.append(f"{label}: {group} {metric}: {len(have)} of {len(seeds)} seeds have it; its row uses those")
    used = [s for s, _ in have]
    base = [v[0] for _, v in have]
    other = [v[1] for _, v in have]
    nested = [pairs[seeds.index(s)] for s in used] if pairs and all(pairs[seeds.index(s)] for s in used) else None
    d = seed_delta(
        [o - b for b, o in zip(base, other)], nested, spec.n_boot, spec.seed, spec.ci, stream=f"{group}:{metric}"
    )
    rows.append(Row(group, metric, base, other, d, seeds=tuple(used), **kw))


def _metric(run: Run, arm: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in run.metrics.get(arm, []) if finite(r.get(key))]


def collect_rows(study: Study, spec: Spec, notes: list[str]) -> list[Row]:
    """Every metric both arms have in some seed: training, probes, geometry, downstream, MTEB."""
    seeds = sorted(study.seeds)
    runs = [study.seeds[s] for s in seeds]
    arms = run_arms(runs[0], spec)
    if len(arms) < 2:
        return []
    base, other = arms[0], arms[1]
    if len(arms) > 2:
        notes.append(f"{study.label}: the seed tables compare {other} with {base}; arms {arms[2:]} are left out")
    rows: list[Row] = []

    def add(group, metric, values, pairs=None, **kw):
        _add(rows, notes, study.label, group, metric, values, seeds, pairs, spec=spec, **kw)

    # training: validation CE at the last step both arms evaluated, and train NTP loss over the last logs
    vals = []
    for run in runs:
        b, o = dict(_metric(run, base, "val_ce")), dict(_metric(run, other, "val_ce"))
        common = sorted(set(b) & set(o))
        ends = {max(b, default=None), max(o, default=None)}
        if common and ends != {common[-1]}:
            notes.append(f"{run.label}: val CE compared at step {common[-1]}, the last both arms evaluated")
        vals.append((b[common[-1]], o[common[-1]]) if common else None)
    add("Training", "validation CE (last common step)", vals, key="val_ce")
    ntp = []
    for run in runs:
        pair = [[v for _, v in _metric(run, a, "loss_ntp")][-spec.ce_window :] for a in (base, other)]
        ntp.append(tuple(float(np.mean(p)) for p in pair) if all(pair) else None)
    add("Training", f"train NTP loss (mean of last {spec.ce_window} logs)", ntp)

    # in-training probes at matched steps: the middle and the last step every seed and arm probed
    for key, name in (("probe_erank", "effective rank"), ("probe_cosine", "cosine similarity")):
        per = [{a: dict(_metric(run, a, key)) for a in (base, other)} for run in runs]
        probed = [set(p[base]) & set(p[other]) for p in per]  # per seed; a seed without probes is left out
        common = sorted(set.intersection(*[x for x in probed if x])) if any(probed) else []
        if not common:
            continue
        for step in dict.fromkeys([common[len(common) // 2], common[-1]]):
            values = [(p[base][step], p[other][step]) if step in x else None for p, x in zip(per, probed)]
            add("Probes (last layer)", f"{name} at step {step}", values, key=key if step == common[-1] else "",
                rank=key == "probe_erank")  # fmt: skip

    # geometry of the evaluated checkpoints: last layer, then every layer's effective rank
    picked = [(pick(r, "geometry", base, spec.step), pick(r, "geometry", other, spec.step)) for r in runs]
    steps = {x.step for p in picked for x in p if x is not None}
    if len(steps) > 1:
        notes.append(f"{study.label}: geometry results compare different steps across seeds/arms: {sorted(steps)}")
    geometry = [x for p in picked for x in p if x is not None]
    check_geometry_comparable(geometry, spec.allow_mismatch, notes, f"{study.label} geometry")
    bias = erank_bias_note(geometry)
    if bias:
        notes.append(f"{study.label}: {bias}")

    def layer_value(res, key, i):  # per_layer[key][i] (i = -1: the last layer), or None
        v = (res.data.get("per_layer") or {}).get(key) or []
        return v[i] if -len(v) <= i < len(v) else None

    for key, name in (("erank_cov", "effective rank"), ("anisotropy", "anisotropy")):
        add("Geometry (last layer)", name,
            [(layer_value(b, key, -1), layer_value(o, key, -1)) if b and o else None for b, o in picked],
            rank=key == "erank_cov")  # fmt: skip
    cos = [
        ((b.data.get("alignment") or {}).get("cos_next"), (o.data.get("alignment") or {}).get("cos_next"))
        if b and o
        else None
        for b, o in picked
    ]
    add("Geometry (last layer)", "cos(h_t, z_t+1)", [c if c and None not in c else None for c in cos])
    layers = next((b.data.get("layers") for b, o in picked if b and o), None) or []
    for i, layer in enumerate(layers):
        add("Per-layer effective rank", f"layer {layer}",
            [(layer_value(b, "erank_cov", i), layer_value(o, "erank_cov", i)) if b and o else None for b, o in picked],
            rank=True)  # fmt: skip

    # downstream: per task (documents nested in seeds), then the unweighted average over tasks
    lm = [(pick(r, "lm", base, spec.step), pick(r, "lm", other, spec.step)) for r in runs]
    found = {t for b, o in lm if b and o for t in b.data.get("tasks", {}) if lm_score(b, t) is not None}
    tasks = spec.tasks or ordered_tasks(found)
    per_task_pairs = {}
    for t in tasks:
        values, pairs = [], []
        for run, (b, o) in zip(runs, lm):
            ok = b and o and lm_score(b, t) is not None and lm_score(o, t) is not None
            values.append((lm_score(b, t), lm_score(o, t)) if ok else None)
            found_pairs = lm_pairs(run, b, o, [t], notes) if ok else {}
            pairs.append([found_pairs[t]] if t in found_pairs else None)
        per_task_pairs[t] = pairs
        add("Downstream", task_name(t), values, pairs, percent=True)
    complete = [
        i for i, (b, o) in enumerate(lm) if b and o and all(lm_score(x, t) is not None for x in (b, o) for t in tasks)
    ]
    if tasks and complete:
        values = [
            (float(np.mean([lm_score(b, t) for t in tasks])), float(np.mean([lm_score(o, t) for t in tasks])))
            if i in complete
            else None
            for i, (b, o) in enumerate(lm)
        ]
        pairs = [
            [per_task_pairs[t][i][0] for t in tasks] if all(per_task_pairs[t][i] for t in tasks) else None
            for i in range(len(runs))
        ]
        add("Downstream", f"average ({len(tasks)} tasks)", values, pairs, percent=True, key="downstream_avg")

    # MTEB: task scores are task-level (no per-document records): intervals over seeds only
    mteb = [(pick(r, "mteb", base, spec.step), pick(r, "mteb", other, spec.step)) for r in runs]

    def scores(res):
        return {t: v["main_score"] for t, v in (res.data.get("tasks") or {}).items() if finite(v.get("main_score"))}

    both = [(scores(b), scores(o), b) if b and o else None for b, o in mteb]
    common = set.intersection(*[set(sb) & set(so) for sb, so, _ in both]) if all(both) else set()
    if common:
        group_of = {t: (both[0][2].data["tasks"][t].get("group") or "") for t in common}
        for g in [*MTEB_GROUPS, "Overall"]:
            members = sorted(t for t in common if g == "Overall" or group_of[t] == g)
            if members:
                add("MTEB groups", f"{g} ({len(members)} tasks)",
                    [(np.mean([sb[t] for t in members]), np.mean([so[t] for t in members])) for sb, so, _ in both],
                    percent=True, key="mteb_overall" if g == "Overall" else "")  # fmt: skip
        for t in sorted(common, key=lambda t: (group_of[t], t)):
            add("MTEB tasks", t, [(sb[t], so[t]) for sb, so, _ in both], percent=True)
    elif any(both):
        notes.append(f"{study.label}: MTEB results are missing for some seed or arm: no MTEB rows")
    return rows


SPLIT_GROUPS = {"Per-layer effective rank": "seeds_per_layer", "MTEB tasks": "seeds_mteb_tasks"}


def seed_tables(rows: list[Row], study: Study, spec: Spec, base: str, other: str) -> list[Table]:
    """The main seed table (training, probes, last-layer geometry, downstream, MTEB groups), then per-layer
    effective rank and MTEB tasks in tables of their own."""
    ci = f"{round(100 * spec.ci)}%"
    n = len(study.seeds)
    b, o = arm_name(base), arm_name(other)
    cols = ["Metric", f"{b} (mean)", f"{o} (mean)", f"Δ per seed ({', '.join(f's{s}' for s in sorted(study.seeds))})",
            "Mean Δ", f"{ci} CI (seeds)", f"{ci} CI (seeds, docs)", f"{o} higher", "Verdict"]  # fmt: skip
    notes = [
        f"Δ = {o} − {b} on each seed (same init, data and order within a seed; init and data order change "
        f"across seeds). CI (seeds): Student-t interval of the mean over the n seeds (scipy), which covers "
        f"training-seed noise. CI (seeds, docs): hierarchical bootstrap ({spec.n_boot} resamples, seed "
        f"{spec.seed}: seeds, then documents within each seed), where per-document records exist (lm tasks). "
        f"Verdict: `resolved` when every interval of the row excludes 0, else `not resolved at n = {n} seeds`. "
        "Scores in %, their Δ in points; CE in nats/token.",
    ]
    if n == 1:
        notes.append("One seed: no interval over seeds; nothing can be resolved against training-seed noise.")
    tables = {
        name: Table(name, title, cols, left=1)
        for name, title in (
            ("seeds", f"{study.label}: {o} vs {b} over {n} seeds"),
            ("seeds_per_layer", f"{study.label}: per-layer effective rank over {n} seeds"),
            ("seeds_mteb_tasks", f"{study.label}: MTEB tasks over {n} seeds"),
        )
    }
    last_group = {}
    for r in rows:
        t = tables[SPLIT_GROUPS.get(r.group, "seeds")]
        label = r.metric if r.group in SPLIT_GROUPS else f"{r.group}: {r.metric}"
        if len(r.seeds) < n:
            label += f" (n = {len(r.seeds)})"
        t.add(
            label,
            r.value(float(np.mean(r.base))),
            r.value(float(np.mean(r.other))),
            ", ".join((f"s{s} " if len(r.seeds) < n else "") + r.diff(x) for s, x in zip(r.seeds, r.delta.per_seed)),
            Cell(r.diff(r.delta.mean), bold=bool(r.delta.intervals) and r.delta.verdict().startswith("resolved")),
            r.interval(r.delta.seed_ci),
            r.interval(r.delta.nested_ci),
            f"{r.delta.k_higher} of {r.delta.n}",
            r.delta.verdict(o),
            rule=last_group.get(t.name) not in (None, r.group),
        )
        last_group[t.name] = r.group
    for t in tables.values():
        t.notes += notes
    return [t for t in tables.values() if t.rows]


# --- the paragraphs a report opens with ---------------------------------------------------------------


def _seed_runs(unit: Run | Study) -> dict[int | None, Run]:
    return dict(unit.seeds) if isinstance(unit, Study) else {None: unit}


def setup_facts(unit: Run | Study, notes: list[str]) -> dict:
    """What was trained: from the arms' config.yaml and provenance.json (every seed)."""
    runs = _seed_runs(unit)
    facts: dict = {"seeds": [s for s in runs if s is not None], "arms": unit.arms}
    provs, cfgs = {}, {}
    for s, run in runs.items():
        for a in run.arms:
            p = run.read_json(run.path / a / "provenance.json")
            if p:
                provs[(s, a)] = p
            if a in run.configs:
                cfgs[(s, a)] = run.configs[a]
    if not cfgs:
        return facts
    cfg = next(iter(cfgs.values()))
    model, data, obj = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("objective") or {}
    nitp_obj = next(
        (c.get("objective") for c in cfgs.values() if (c.get("objective") or {}).get("name") == "nitp"), obj
    )
    facts.update(
        preset=model.get("preset"),
        steps=cfg.get("steps"),
        tokens=cfg.get("tokens")
        or (cfg.get("steps") or 0) * (cfg.get("global_batch") or 0) * (cfg.get("seq_len") or 0),
        global_batch=cfg.get("global_batch"),
        seq_len=cfg.get("seq_len"),
        corpus=data.get("path") or "the built-in corpus",
        validation=data.get("validation"),
        tokenizer=data.get("tokenizer") or "the preset's",
        lam=(nitp_obj or {}).get("lambda"),
        target_layer=(nitp_obj or {}).get("target_layer"),
        data_seed=cfg.get("data_seed"),
        warmup=(cfg.get("optim") or {}).get("warmup_steps"),
    )
    p0 = next(iter(provs.values()), {})
    flops = p0.get("flops") or {}
    facts["params"] = flops["paper_baseline"] / 6 if finite(flops.get("paper_baseline")) else None
    facts["vocab"] = p0.get("vocab_size")
    facts["git"] = sorted({str(p.get("trainer_git")) for p in provs.values() if p.get("trainer_git")})
    # pairing: within a seed the trainer's check; across seeds, the init must differ and the data agree
    paired = {s: (run.pair or {}).get("paired") for s, run in runs.items()}
    facts["paired"] = all(v and all(v.values()) for v in paired.values())
    if not facts["paired"]:
        bad = [str(s) for s, v in paired.items() if not (v and all(v.values()))]
        notes.append(f"{unit.label}: pairing not verified for seed(s) {', '.join(bad)} (pair.json `paired`)")
    inits = {s: p.get("init_weights_sha256") for (s, a), p in provs.items() if a == "ntp"}
    if len(inits) > 1 and len(set(inits.values())) < len(inits):
        notes.append(f"{unit.label}: some seeds share an initial model (init_weights_sha256): not independent seeds")
    if len({p.get("data_sha256") for p in provs.values()}) > 1:
        notes.append(f"{unit.label}: the seeds' token files differ (data_sha256): not one design")
    return facts


def _num(x, spec: str = "{:,}") -> str:
    return spec.format(x) if finite(x) else "?"


def setup_paragraph(f: dict) -> str:
    """The setup in one paragraph, from `setup_facts`."""
    if "preset" not in f:
        return "**Setup.** No config.yaml found for any arm: the setup is unknown."
    n = len(f["seeds"])
    params = f"{f['params'] / 1e6:,.1f}M parameters" if f.get("params") else "parameter count not recorded"
    order = "the data order" if f["data_seed"] is None else f"not the data order (held by data_seed={f['data_seed']})"
    seeds = f"{n} seeds ({', '.join(map(str, f['seeds']))}), each changing the initial weights and {order}"
    git = ", ".join(f"`{g[:12]}{'-dirty' if g.endswith('-dirty') else ''}`" for g in f.get("git") or [])
    return (
        f"**Setup.** Preset `{f['preset']}` ({params}), arms {', '.join(arm_name(a) for a in f['arms'])}; "
        f"{_num(f['steps'])} steps × {_num(f['global_batch'])} × {_num(f['seq_len'])} = "
        f"{_num(f['tokens'], '{:,.0f}')} tokens per arm ({_num(f['warmup'])} warm-up steps). Corpus `{f['corpus']}`"
        + (f", validation `{f['validation']}`" if f.get("validation") else "")
        + f"; tokenizer `{f['tokenizer']}`"
        + (f" ({f['vocab']:,} tokens)" if f.get("vocab") else "")
        + f". NITP: λ = {f['lam']}, target layer {f['target_layer']}. "
        + (f"{seeds[0].upper()}{seeds[1:]}; within a seed" if n else "One seed; within the pair")
        + " both arms share init, data and order"
        + (" (verified: pair.json `paired`)" if f["paired"] else " (NOT verified: see caveats)")
        + f". Trainer git {git or 'not recorded'}."
    )


def verdict_paragraph(unit: Run | Study, rows: list[Row] | None, f: dict) -> str:
    """The verdict in plain words (rows None: a single pair), with the scale it holds at (`setup_facts`)."""
    scale = ""
    if f.get("params") and f.get("tokens"):
        scale = (
            f" Scale: {f['params'] / 1e6:,.1f}M parameters and {f['tokens'] / 1e6:,.2f}M tokens per arm; the paper's "
            "claims concern 0.5B-9B models trained on 105B-330B tokens, so this is evidence about NITP at this "
            "scale only."
        )
    if rows is None:  # a single pair
        return (
            "**Verdict.** One training seed: every interval in this report covers evaluation (document) "
            "noise only, so no difference here can be told apart from training-seed noise. Train more "
            "seeds (`nitp-train pair --seeds 0,1,2`) and report the study dir for a verdict." + scale
        )
    if not rows:
        return "**Verdict.** No metric was measured in both arms of any seed: nothing to conclude." + scale
    n = len(unit.seeds)
    resolved = [r for r in rows if r.delta.verdict().startswith("resolved")]
    headline = [r for r in resolved if r.group not in SPLIT_GROUPS]  # per-layer and per-task rows are counted
    counted = {g: ([r for r in resolved if r.group == g], sum(r.group == g for r in rows)) for g in SPLIT_GROUPS}
    claims = []
    for key, (name, paper) in PAPER_CLAIMS.items():
        r = next((r for r in rows if r.key == key), None)
        if r is None:
            continue
        v = r.delta.verdict()
        found = (
            ("higher" if "higher" in v else "lower") + f" by {r.diff(r.delta.mean).lstrip('+-')} (resolved)"
            if v.startswith("resolved")
            else f"not resolved (mean Δ {r.diff(r.delta.mean)}, higher on {r.delta.k_higher} of {r.delta.n} seeds)"
        )
        claims.append(f"{name}: the paper reports NITP {paper}; here NITP is {found}")
    words = (
        f"**Verdict.** Over n = {n} seed{'s' if n != 1 else ''}, {len(resolved)} of {len(rows)} NITP − NTP "
        "differences are resolved (every interval of the row excludes 0)"
        + (
            ": "
            + "; ".join(
                f"{r.metric} ({r.group.lower()}): {r.delta.verdict().split(': ')[1]}, Δ {r.diff(r.delta.mean)}"
                for r in headline
            )
            if headline
            else ""
        )  # fmt: skip
        + "".join(
            f"; {g.lower()}: {len(k)} of {m} rows resolved"
            + (
                " ("
                + ", ".join(
                    f"{r.metric} {r.delta.verdict().split()[-1]} by {r.diff(r.delta.mean).lstrip('+-')}" for r in k
                )
                + ")"
                if k
                else ""
            )
            for g, (k, m) in counted.items()
            if m
        )
        + ". "
        + ("".join(c[0].upper() + c[1:] + ". " for c in claims))
        + f"Unresolved differences are not evidence of no effect: they are smaller than what {n} seeds can resolve."
    )
    return words + scale


# --- figures: every seed thin, the mean over seeds bold ---------------------------------------------


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean over seeds at the steps every seed has."""
    common = sorted(set.intersection(*[set(x.tolist()) for x, _ in curves])) if curves else []
    if not common:
        return np.array([]), np.array([])
    ys = [np.interp(common, x, y) for x, y in curves]
    return np.array(common), np.mean(ys, axis=0)


def study_dynamics(study: Study, arms: list[str], notes: list[str]):
    """Paper Fig. 1 and Fig. 5 over seeds: probe effective rank and cosine, the NITP loss, Δ validation CE."""
    from nitp_eval.report.figures import NOISY_MIN, _integer_ticks, _legend, _plt, _series, arm_color, arm_style, smooth

    panels = [
        ("probe_erank", "effective rank (last layer, probe)", arms),
        ("probe_cosine", "cosine similarity (last layer, probe)", arms),
        ("loss_nitp", "NITP loss (1 − cos), smoothed", [a for a in arms if a != arms[0]]),
        ("val_ce", f"Δ validation CE vs {arm_name(arms[0])} (nats/token)", [a for a in arms if a != arms[0]]),
    ]
    runs = [study.seeds[s] for s in sorted(study.seeds)]
    if not any(len(_series(r, a, "probe_erank")[0]) or len(_series(r, a, "loss_nitp")[0]) for r in runs for a in arms):
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4), layout="constrained")
    for ax, (key, label, shown) in zip(axes.flat, panels):
        drawn = False
        for a in shown:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            curves = []
            for run in runs:
                x, y = _series(run, a, key)
                if key == "val_ce":  # paired per seed: the difference to the baseline at the same steps
                    bx, by = _series(run, arms[0], key)
                    common, ia, ib = np.intersect1d(x, bx, return_indices=True)
                    x, y = common, y[ia] - by[ib]
                if key == "loss_nitp" and len(y) >= NOISY_MIN:  # a per-step loss: smoothed like Fig. 5's
                    y = smooth(y)
                if len(x):
                    curves.append((x, y))
                    ax.plot(x, y, color=c, ls=ls, lw=0.7, alpha=0.35)
            mx, my = _mean_curve(curves)
            if len(mx):
                ax.plot(mx, my, color=c, ls=ls, lw=2)
                drawn = True
        if key == "val_ce" and drawn:
            ax.axhline(0, color="grey", lw=1)
        if key == "loss_nitp" and drawn:
            ax.set_yscale("log")
        if not drawn:
            notes.append(f"{study.label}: no {key} in the seeds' metrics.jsonl: its panel is empty")
        ax.set_ylabel(label)
        ax.set_xlabel("training step")
        _integer_ticks(ax)
    _legend(fig, arms, arms, keys=[("one seed (thin), mean over seeds (bold)", {"lw": 1.5})])
    fig.suptitle(f"{study.label}: training dynamics over {len(runs)} seeds (paper Fig. 1, Fig. 5)")
    return fig


def study_profiles(study: Study, arms: list[str], step: int | None, notes: list[str]):
    """Per-layer effective rank and anisotropy of the evaluated checkpoints, every seed and the mean."""
    from nitp_eval.report.figures import _integer_ticks, _legend, _plt, arm_color, arm_style

    runs = [study.seeds[s] for s in sorted(study.seeds)]
    if not any(pick(r, "geometry", a, step) for r in runs for a in arms):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, (key, label) in zip(axes, (("erank_cov", "effective rank (cov)"), ("anisotropy", "anisotropy"))):
        for a in arms:
            c, ls = arm_color(a, arms), arm_style(a, arms)
            curves = []
            for run in runs:
                res = pick(run, "geometry", a, step)
                vals = ((res.data.get("per_layer") or {}).get(key) if res else None) or []
                layers = (res.data.get("layers") if res else None) or []
                if vals and len(vals) == len(layers):
                    y = np.array([v if finite(v) else np.nan for v in vals], dtype=float)
                    curves.append((np.array(layers), y))
                    ax.plot(layers, y, color=c, ls=ls, lw=0.7, alpha=0.35)
            mx, my = _mean_curve(curves)
            if len(mx):
                ax.plot(mx, my, color=c, ls=ls, lw=2, marker="o", ms=3)
        ax.set_xlabel("layer (hidden_states index)")
        ax.set_ylabel(label)
        _integer_ticks(ax)
    _legend(fig, arms, arms, keys=[("one seed (thin), mean over seeds (bold)", {"lw": 1.5})])
    fig.suptitle(f"{study.label}: per-layer geometry over {len(runs)} seeds")
    return fig
