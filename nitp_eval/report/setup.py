"""What every report opens with: the setup (what was trained, counted from its config), when the study's
spec was committed relative to its results, and, for a single pair, the verdict paragraph."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nitp_eval.report.common import arm_name
from nitp_eval.report.load import Run, Study
from nitp_eval.report.rows import Row, Verdict, diff_text, interval_text, value_text
from nitp_eval.report.stats import Delta, finite


def _seed_runs(unit: Run | Study) -> dict[int | None, Run]:
    return dict(unit.seeds) if isinstance(unit, Study) else {None: unit}


def counted_params(cfg: dict, vocab: int | None) -> int | None:
    """Parameters of the run's model, counted on the meta device from its config.yaml (preset + overrides)."""
    from nitp_train.presets import get_preset, param_counts

    model = cfg.get("model") or {}
    try:
        return param_counts(get_preset(model["preset"]), vocab or 8192, **(model.get("hf_overrides") or {}))["total"]
    except Exception:  # an unknown or changed preset: the report says "not counted" rather than guess
        return None


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
    p0 = next(iter(provs.values()), {})
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
        vocab=p0.get("vocab_size"),
    )
    facts["params"] = counted_params(cfg, facts["vocab"])
    facts["git"] = sorted({str(p.get("trainer_git")) for p in provs.values() if p.get("trainer_git")})
    # pairing: within a seed the trainer's check; across seeds, the init must differ and the data agree
    paired = {s: (run.pair or {}).get("paired") for s, run in runs.items()}
    facts["paired"] = all(v and all(v.values()) for v in paired.values())
    if not facts["paired"]:
        bad = [f"seed {s}" if s is not None else unit.label for s, v in paired.items() if not (v and all(v.values()))]
        notes.append(f"{unit.label}: pairing not verified for {', '.join(bad)} (no pair.json `paired` record)")
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
    params = f"{f['params'] / 1e6:,.2f}M parameters, counted" if f.get("params") else "parameter count not available"
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


def scale_sentence(f: dict) -> str:
    if not (f.get("params") and f.get("tokens")):
        return ""
    return (
        f" Scale: {f['params'] / 1e6:,.2f}M parameters and {f['tokens'] / 1e6:,.2f}M tokens per arm; the paper's "
        "claims concern 0.5B-9B models trained on 105B-330B tokens, so this is evidence about NITP at this scale only."
    )


# --- pre-registration: was the spec committed before its results? -----------------------------------


def _first_commit(path: Path) -> tuple[str, str] | None:
    """(short hash, ISO date) of the first commit that touched `path` (a file or a dir), or None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path.parent if path.is_file() else path), "log", "--reverse", "--format=%h %cs", "--",
             str(path.resolve())],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n") if out.returncode == 0 else []
    first = lines[0].split() if lines and lines[0].strip() else None
    return (first[0], first[1]) if first else None


def preregistration(spec_path: Path | None, results: list[Path], declared: bool) -> str:
    """The commit that first added the spec and the commit of its first result, in order, and whether the
    spec declares the endpoints."""
    undeclared = (
        "Its endpoints are the defaults (the paper's claims): the spec does not declare them, so they were "
        "applied after the results were seen, though they are the claims the study was designed to test."
    )
    if spec_path is None:
        return (
            "Endpoints: the paper's claims by default, not declared in a committed spec (report a study with "
            "`--spec`, its `endpoints:` committed before training, for a pre-registered reading)."
        )
    spec_c = _first_commit(Path(spec_path))
    firsts = [c for c in (_first_commit(Path(p)) for p in results) if c]
    result_c = min(firsts, key=lambda c: c[1]) if firsts else None
    spec_text = f"first committed in `{spec_c[0]}` ({spec_c[1]})" if spec_c else "not committed"
    res_text = f"its first result in `{result_c[0]}` ({result_c[1]})" if result_c else "no result committed"
    order = ""
    if spec_c and result_c:
        order = " — the spec came first" if _is_ancestor(spec_c[0], result_c[0], Path(spec_path)) else " — NOT before"
    return f"Spec `{spec_path}` {spec_text}; {res_text}{order}." + ("" if declared else " " + undeclared)


def _is_ancestor(a: str, b: str, where: Path) -> bool:
    try:
        r = subprocess.run(["git", "-C", str(where.resolve().parent), "merge-base", "--is-ancestor", a, b], timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and a != b


# --- a single pair's verdict -----------------------------------------------------------------------


def pair_verdict_paragraph(rows: list[Row], avg_ci: Delta | None, f: dict) -> str:
    """What one pair showed for each of the paper's claims, with direction and interval, then why one seed
    cannot settle it. `rows`: the pair's rows (a study of one seed); `avg_ci`: the downstream average's
    paired bootstrap interval over documents."""
    from nitp_eval.report.endpoints import CLAIMS

    by_key = {r.key: r for r in rows}
    said = []
    for key, claim in CLAIMS.items():
        r = by_key.get(key)
        if r is None:
            said.append(f"{claim}: not measured")
            continue
        d = r.deltas[0]
        against = (
            (key == "last_erank" and d < 0)
            or (key in ("last_anisotropy", "val_ce") and d > 0)
            or (key in ("downstream_avg", "mteb_overall") and d < 0)
        )
        interval = (
            f" {interval_text((avg_ci.lo, avg_ci.hi), r.unit)} (paired bootstrap over documents: document noise only)"
            if key == "downstream_avg" and avg_ci
            else " (no interval: one measurement)"
        )
        flags = f"; flagged: {'; '.join(r.flags)}" if r.flags else ""
        said.append(
            f"{claim}: NITP {value_text(r.other[0], r.unit)} vs NTP {value_text(r.base[0], r.unit)}, "
            f"Δ {diff_text(d, r.unit)}{interval}{', against the paper' if against and d != 0 else ''}{flags}"
        )
    return (
        "**Verdict.** One training seed. What this pair showed, claim by claim: "
        + "; ".join(said)
        + ". Why one pair cannot settle any of it: every interval here covers evaluation (document) noise only, "
        "while a second seed (another init and data order) moves each of these differences by an amount this "
        "pair cannot measure. Train several seeds (`nitp-train pair --seeds 0,1,2,3,4`) and report the study dir "
        "for intervals over seeds." + scale_sentence(f)
    )


def verdict_word(r: Row) -> str:
    """The verdict as the tables print it."""
    if r.verdict is Verdict.NON_INFERIOR:
        return f"non-inferior (margin {diff_text(r.margin, r.unit).lstrip('+')})"
    if r.verdict is Verdict.NOT_ESTIMABLE:
        return f"not estimable: {r.estimate.why_not}"
    if r.verdict is Verdict.NOT_RESOLVED:
        return f"not resolved at n = {r.n}"
    return r.verdict.value
