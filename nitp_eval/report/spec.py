"""Analysis specs: which runs, which sections, which settings (analyses/*.yaml; docs/report.md).

A spec is data. Everything it can say:

    title: Table 1 (MoE): downstream benchmarks, NTP vs NITP
    runs:                                  # pair dirs, relative to the working directory
      - {path: runs/moe-3b-a0.5b, label: MoE 3B-A0.5B}
    sections: [downstream]                 # any of SECTIONS, in the order wanted
    arms: [ntp, nitp]                      # which arms, baseline first (default: all found)
    tasks: [mmlu_pro, c3, commonsense_qa, arc_challenge, gsm8k]   # lm tasks and their order
    step: null                             # which checkpoint step tables use (default: the latest)
    allow_mismatch: false                  # compare geometry measured on different tokens, flagged (default: refuse)
    bootstrap: {n: 10000, seed: 0, ci: 0.95}
    variants:                              # the ablation section's rows; the first is the baseline
      - {run: MoE 3B-A0.5B, arm: ntp, label: NTP}
    study: {out: runs/s, preset: tiny-dense, seeds: [0, 1, 2], ...}   # nitp-eval replicate (replicate.py)
    endpoints: {alpha: 0.05, primary: [{row: val_ce, direction: non-inferior, margin: 0.02}, ...]}  # endpoints.py
    design: {pilot: reports/x/results}     # nitp-eval design: the study whose spread sizes this one (design.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from nitp_eval.report.endpoints import parse_endpoints
from nitp_eval.report.rows import Endpoint
from nitp_train.errors import UserError

SECTIONS = ("downstream", "mteb", "geometry", "dynamics", "cost", "ablation")
DEFAULT_SECTIONS = ("downstream", "mteb", "geometry", "dynamics", "cost")


@dataclass
class Variant:
    run: str  # a run's label (or path) in `runs`
    arm: str
    label: str


@dataclass
class Spec:
    runs: list[dict]  # [{path, label}]
    title: str | None = None  # None: "NTP vs NITP" for pairs, else what the runs are (build.report_title)
    description: str = ""
    sections: list[str] = field(default_factory=lambda: list(DEFAULT_SECTIONS))
    arms: list[str] | None = None  # None: every arm found, ntp and nitp first
    baseline: str = "ntp"  # deltas are <arm> - baseline
    tasks: list[str] | None = None  # None: every lm task found, the paper's order first
    step: int | None = None  # None: each arm's latest evaluated checkpoint
    n_boot: int = 10_000
    seed: int = 0
    ci: float = 0.95
    ce_window: int = 10  # train NTP loss is averaged over the last this many logged steps
    variants: list[Variant] | None = None
    allow_mismatch: bool = False  # geometry measured differently: a flagged caveat instead of a refusal
    source: Path | None = None  # the spec file, listed in the report
    notes: list[str] = field(default_factory=list)  # printed under "Missing inputs and caveats"
    study: dict | None = None  # how the study was made: `nitp-eval replicate` runs it (nitp_eval/replicate.py)
    endpoints: list[Endpoint] | None = None  # None: the paper's claims (endpoints.DEFAULT_ENDPOINTS), undeclared
    alpha: float = 0.05
    endpoints_declared: bool = False  # the spec declares them (committed before training, if the history says so)
    design: dict | None = None  # nitp-eval design's inputs (nitp_eval/design.py)


def spec_from_paths(paths: list[str | Path], labels: list[str] | None = None) -> Spec:
    """The implicit spec of `nitp-eval report runs/x [runs/y ...] [--label A --label B]`: every default section."""
    labels = labels or []
    if len(labels) > len(paths):
        raise UserError(f"{len(labels)} --label for {len(paths)} run(s); give at most one --label per run, in order")
    names = labels + [Path(p).resolve().name for p in paths[len(labels) :]]
    return Spec(runs=[{"path": str(p), "label": n} for p, n in zip(paths, names)])


def load_spec(path: str | Path, override_runs: list[str | Path] | None = None) -> Spec:
    """Read a spec file; `override_runs` (the command's positional paths) replace its runs in order."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such spec file; see analyses/README.md for the specs that ship")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e.__class__.__name__}); fix the file") from e
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a spec is a YAML mapping (title, runs, sections, ...); see analyses/README.md")
    known = {f.name for f in fields(Spec)} - {"n_boot", "seed", "ci", "source", "alpha", "endpoints_declared"} | {
        "bootstrap"
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")

    runs = [_run_entry(r, path) for r in raw.get("runs") or []]
    notes = []
    if override_runs:
        runs, notes = _replace_runs(runs, override_runs, path)
    if not runs:
        raise UserError(f"{path}: no runs; list pair dirs under `runs:` or give them on the command line")
    sections = raw.get("sections") or list(DEFAULT_SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise UserError(f"{path}: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    boot = raw.get("bootstrap") or {}
    if set(boot) - {"n", "seed", "ci"}:
        raise UserError(f"{path}: bootstrap takes n, seed and ci, not {sorted(set(boot) - {'n', 'seed', 'ci'})}")
    ci = float(boot.get("ci", 0.95))
    if not 0 < ci < 1:
        raise UserError(f"{path}: bootstrap.ci={ci} must lie in (0, 1), e.g. 0.95")
    step = raw.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise UserError(
            f"{path}: step: {step!r} is not a checkpoint step; give an integer such as 5000, "
            "or null (or leave it out) for each arm's latest evaluated step"
        )
    n_boot = boot.get("n", 10_000)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise UserError(f"{path}: bootstrap.n={n_boot!r}: give an integer of at least 100 (default 10000)")
    for key in ("arms", "tasks"):
        v = raw.get(key)
        if v is not None and not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            raise UserError(f"{path}: {key}: give a non-empty list of names, e.g. [ntp, nitp], or leave it out")
    allow_mismatch = raw.get("allow_mismatch", False)
    if not isinstance(allow_mismatch, bool):
        raise UserError(f"{path}: allow_mismatch: {allow_mismatch!r} is not true or false")
    endpoints, alpha, declared = parse_endpoints(raw.get("endpoints"), str(path))
    design = raw.get("design")
    if design is not None and not isinstance(design, dict):
        raise UserError(f"{path}: design: a mapping, e.g. {{pilot: reports/replication-cpu/results}}")
    variants = None
    if raw.get("variants") is not None:
        try:
            variants = [
                Variant(str(v["run"]), str(v["arm"]), str(v.get("label") or f"{v['run']} {v['arm']}"))
                for v in raw["variants"]
            ]
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: each variant needs `run` (a run label) and `arm`, optionally `label`") from e
    return Spec(
        runs=runs,
        title=str(raw.get("title") or path.stem),
        description=str(raw.get("description") or ""),
        sections=list(sections),
        arms=raw.get("arms"),
        baseline=str(raw.get("baseline", "ntp")),
        tasks=raw.get("tasks"),
        step=step,
        n_boot=n_boot,
        seed=int(boot.get("seed", 0)),
        ci=ci,
        ce_window=int(raw.get("ce_window", 10)),
        variants=variants,
        study=raw.get("study"),
        endpoints=endpoints,
        alpha=alpha,
        endpoints_declared=declared,
        design=design,
        allow_mismatch=allow_mismatch,
        source=path,
        notes=notes,
    )


def _replace_runs(runs: list[dict], paths: list, spec_path: Path) -> tuple[list[dict], list[str]]:
    """The command line's run dirs in place of the spec's, and what the report should say about it.

    One path per spec run: each keeps its spec run's label (variants refer to runs by label).
    Any other count: the spec's labels would name the wrong models, so runs are labelled by
    directory name and the report lists which spec runs were replaced and which were dropped.
    """
    if len(paths) == len(runs):
        return [{"path": str(p), "label": r["label"]} for p, r in zip(paths, runs)], []
    new = [{"path": str(p), "label": Path(p).resolve().name} for p in paths]
    if not runs:
        return new, []
    notes = [
        f"{len(paths)} run dir(s) given for the {len(runs)} runs of {spec_path}: runs are labelled by "
        "directory name, not by the spec's labels"
    ]
    notes += [f"spec run {r['label']!r} ({r['path']}) replaced by {n['path']}" for r, n in zip(runs, new)]
    notes += [f"spec run {r['label']!r} ({r['path']}) dropped: no run dir given for it" for r in runs[len(new) :]]
    return new, notes


def _run_entry(r, path: Path) -> dict:
    if isinstance(r, str):
        return {"path": r, "label": Path(r).name}
    if isinstance(r, dict) and "path" in r:
        return {"path": str(r["path"]), "label": str(r.get("label") or Path(r["path"]).name)}
    raise UserError(f"{path}: each entry of runs is a path or {{path: ..., label: ...}}, not {r!r}")
