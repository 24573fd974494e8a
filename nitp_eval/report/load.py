"""Collecting everything a report reads from one pair dir: results files, metrics.jsonl, configs.

Nothing here loads a model. Every file read is recorded in `Run.sources` (the report lists them)
and everything expected but absent or unreadable in `Run.missing` (the report lists that too).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from nitp_eval.runs import ARM_ORDER, SCHEMA_VERSION, study_seeds
from nitp_train.errors import UserError

KINDS = ("geometry", "lm", "mteb")
RESULT_FILE = re.compile(r"^(?P<arm>.+)-step-(?P<step>\d+)$")


def arm_sort_key(arm: str) -> tuple:
    """ntp and nitp first (baseline first), then other arms (ablations) by name."""
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


@dataclass
class Result:
    """One results file (geometry, lm or mteb) of one arm at one step."""

    path: Path
    data: dict
    arm: str
    step: int | None


@dataclass
class Run:
    """What a pair dir holds, as far as a report is concerned."""

    path: Path
    label: str
    pair: dict | None = None
    configs: dict[str, dict] = field(default_factory=dict)  # arm -> resolved config.yaml
    metrics: dict[str, list[dict]] = field(default_factory=dict)  # arm -> metrics.jsonl records
    results: dict[str, dict[str, dict]] = field(default_factory=dict)  # kind -> arm -> {step: Result}
    sources: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    model: Path | None = None  # a model dir outside any run, reported in place (its results under ./eval/)

    @property
    def arms(self) -> list[str]:
        names = set(self.configs) | set(self.metrics) | set((self.pair or {}).get("arms") or {})
        for by_arm in self.results.values():
            names |= set(by_arm)
        return sorted(names, key=arm_sort_key)

    def series(self, kind: str, arm: str) -> list[Result]:
        """All results of one kind for one arm, by step (a checkpoint series)."""
        by_step = self.results.get(kind, {}).get(arm, {})
        return [by_step[s] for s in sorted(by_step, key=lambda s: (s is None, s or 0))]

    def latest(self, kind: str, arm: str) -> Result | None:
        """The results of the arm's last evaluated checkpoint, or None."""
        series = self.series(kind, arm)
        return series[-1] if series else None

    def read_json(self, path: Path) -> dict | None:
        """A further file a table needs (e.g. provenance.json): None when absent; listed under Sources when read."""
        path = Path(path)
        if not path.is_file():
            return None
        if path in self.sources:  # listed once, however often read
            self.sources.remove(path)
        return _read_json(path, self)


@dataclass
class Study:
    """A study dir (`nitp-train pair --seeds`): one pair dir (a `Run`) per seed, all of one design."""

    path: Path
    label: str
    record: dict | None  # study.json
    seeds: dict[int, Run]
    own_sources: list[Path] = field(default_factory=list)

    @property
    def sources(self) -> list[Path]:
        return self.own_sources + [p for r in self.seeds.values() for p in r.sources]

    @property
    def missing(self) -> list[str]:
        return [f"seed {s}: {m}" for s, r in self.seeds.items() for m in r.missing]

    @property
    def arms(self) -> list[str]:
        names = {a for r in self.seeds.values() for a in r.arms}
        return sorted(names, key=arm_sort_key)

    model = None  # the report's run line shows the path


def load_study(path: str | Path, label: str | None = None) -> Study:
    """Read a study dir: study.json (when present) and each seed's pair dir."""
    p = Path(path)
    seeds = study_seeds(p)
    if not seeds:
        raise UserError(
            f"{p}: not a study dir (no seed-<s>/ pair dirs); give a dir written by `nitp-train pair --seeds`"
        )
    study = Study(path=p, label=label or p.resolve().name, record=None, seeds={})
    if (p / "study.json").is_file():
        holder = Run(path=p, label=study.label)
        study.record = _read_json(p / "study.json", holder)
        study.own_sources += holder.sources
    for seed, d in seeds:
        study.seeds[seed] = load_run(d, f"{study.label} seed {seed}")
    return study


def load_any(path: str | Path, label: str | None = None) -> Run | Study:
    """A study dir as a Study, anything else as a Run (a pair dir, or a model dir's results)."""
    return load_study(path, label) if study_seeds(path) else load_run(path, label)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a pair dir (runs/x/). Raises UserError when `path` is not one."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(
            f"{p}: no such run dir; give a pair dir such as runs/x (with pair.json, <arm>/metrics.jsonl or eval/)"
        )
    if (p / "config.json").is_file() and not (p / "eval").is_dir():
        return _load_model_results(p, label)
    arm_dirs = [
        d
        for d in p.iterdir()
        if d.is_dir() and any((d / f).exists() for f in ("metrics.jsonl", "config.yaml", "checkpoints"))
    ]
    if not ((p / "pair.json").exists() or (p / "eval").is_dir() or arm_dirs):
        hint = (
            " (that looks like an arm dir: give its parent)"
            if (p / "checkpoints").is_dir() or (p / "metrics.jsonl").exists()
            else ""
        )
        raise UserError(f"{p}: not a pair dir: no pair.json, no eval/ and no arm dirs{hint}; give a dir such as runs/x")
    run = Run(path=p, label=label or p.resolve().name)

    if (p / "pair.json").exists():
        run.pair = _read_json(p / "pair.json", run)
    else:
        run.missing.append(f"{p}/pair.json")
    for d in sorted(arm_dirs, key=lambda d: arm_sort_key(d.name)):
        _read_arm(d, run)
    for kind in KINDS:
        _read_results(p / "eval" / kind, kind, run)
    return run


def _load_model_results(model: Path, label: str | None) -> Run:
    """A model dir outside any run, reported in place: the results the eval commands wrote for it by default.

    Those are ./eval/<kind>/<model dir name>.json (runs.Target.results_path); only files whose
    `checkpoint` is this model count, so two models of one name are not mixed up.
    """
    model = model.resolve()
    run = Run(path=Path("."), label=label or model.name, model=model)
    for kind in KINDS:
        f = Path("eval") / kind / f"{model.name}.json"
        data = _read_json(f, run) if f.is_file() else None
        if data is None:
            run.missing.append(
                f"{f} (no {kind} results for {model}; run `nitp-eval {kind} {model}`"
                + ("; offline add --data-dir DIR" if kind in ("lm", "mteb") else "")
                + " from this directory)"
            )
            continue
        if data.get("schema") != f"nitp.{kind}" or Path(str(data.get("checkpoint"))).resolve() != model:
            run.sources.remove(f)
            run.missing.append(f"{f}: results of {data.get('checkpoint')}, not of {model}; skipped")
            continue
        run.results.setdefault(kind, {}).setdefault(run.label, {})[data.get("step")] = Result(
            f, data, run.label, data.get("step")
        )
    return run


def _read_json(path: Path, run: Run) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        run.missing.append(f"{path}: unreadable ({e.__class__.__name__}: {e})")
        return None
    run.sources.append(path)
    return data


def _read_arm(arm_dir: Path, run: Run) -> None:
    import yaml

    arm = arm_dir.name
    cfg = arm_dir / "config.yaml"
    if cfg.exists():
        try:
            run.configs[arm] = yaml.safe_load(cfg.read_text()) or {}
            run.sources.append(cfg)
        except yaml.YAMLError as e:
            run.missing.append(f"{cfg}: unreadable ({e.__class__.__name__})")
    else:
        run.missing.append(str(cfg))
    metrics = arm_dir / "metrics.jsonl"
    if not metrics.exists():
        run.missing.append(str(metrics))
        return
    records, bad = [], 0
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # e.g. a line being written while the trainer runs
            bad += 1
    if bad:
        run.missing.append(f"{metrics}: {bad} unparseable line(s) skipped")
    run.metrics[arm] = sorted((r for r in records if "step" in r), key=lambda r: r["step"])
    run.sources.append(metrics)


def _read_results(eval_dir: Path, kind: str, run: Run) -> None:
    found = run.results.setdefault(kind, {})
    if not eval_dir.is_dir():
        hint = {"lm": "; offline add --data-dir DIR", "mteb": "; offline add --data-dir DIR"}.get(kind, "")
        run.missing.append(f"{eval_dir}/ (no {kind} results; run `nitp-eval {kind} {run.model or run.path}`{hint})")
        return
    for f in sorted(eval_dir.glob("*.json")):
        data = _read_json(f, run)
        if data is None:
            continue
        if data.get("schema") != f"nitp.{kind}":
            run.sources.remove(f)
            run.missing.append(f"{f}: schema {data.get('schema')!r} is not nitp.{kind}; skipped")
            continue
        if (data.get("schema_version") or 0) > SCHEMA_VERSION:
            raise UserError(
                f"{f}: schema_version {data['schema_version']} is newer than this nitp reads ({SCHEMA_VERSION}); upgrade nitp"
            )
        m = RESULT_FILE.match(f.stem)
        arm = data.get("arm") or (m.group("arm") if m else f.stem)
        step = data.get("step") if data.get("step") is not None else (int(m.group("step")) if m else None)
        if step in found.setdefault(arm, {}):
            run.missing.append(f"{f}: a second {kind} result for {arm} step {step}; kept {found[arm][step].path.name}")
            continue
        found[arm][step] = Result(f, data, arm, step)
    if not any(found.values()):
        run.missing.append(f"{eval_dir}/*.json (no {kind} results files)")
