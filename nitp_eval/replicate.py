"""nitp-eval replicate SPEC: a whole study from its spec's `study:` block, resumably (docs/report.md, "Studies").

    time      (only when asked) a few NITP steps here -> the study's predicted training time
    train     nitp-train pair --seeds ... --out <study.out>        (--resume when it has started)
    evaluate  nitp-eval geometry|lm|mteb <study.out> --skip-existing <the spec's arguments>
    collect   the small results files -> <study.report>/results/   (as each stage lands)
    report    nitp-eval report --spec SPEC --out <study.report>    (from the collected files)

Each stage runs the same command a user would type (printed before it runs), so a study is
reproducible by hand, and rerunning the command after an interruption continues where it stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import typer

from nitp_train.errors import UserError

EVAL_KINDS = ("geometry", "lm", "mteb")
STAGES = ("train", "evaluate", "report")
EXTRA_STAGES = ("time",)  # run only when asked: `--stages time` sizes a design on this machine
# what a study's results copy holds: small files only (no checkpoints, training states or token caches)
ARM_FILES = ("config.yaml", "metrics.jsonl", "provenance.json")


@dataclass
class StudyPlan:
    out: Path
    preset: str
    seeds: list[int]
    report: Path
    train: dict = field(default_factory=dict)
    evaluate: dict[str, list[str] | None] = field(default_factory=dict)

    def train_command(self, seeds: list[int] | None = None) -> list[str]:
        seeds = self.seeds if seeds is None else seeds
        cmd = ["pair", "--preset", self.preset, "--seeds", ",".join(map(str, seeds)), "--out", str(self.out)]
        for key, value in self.train.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd


def parse_plan(study: dict | None, spec_path: Path) -> StudyPlan:
    """The spec's `study:` block, checked: one clear line for anything missing or of the wrong kind."""
    if not isinstance(study, dict):
        raise UserError(
            f"{spec_path}: no `study:` block; `nitp-eval replicate` needs one (see analyses/replication-cpu.yaml)"
        )
    known = {"out", "preset", "seeds", "train", "report", *EVAL_KINDS}
    unknown = sorted(set(study) - known)
    if unknown:
        raise UserError(f"{spec_path}: study: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    for key in ("out", "preset", "seeds", "report"):
        if not study.get(key):
            raise UserError(f"{spec_path}: study.{key} is missing")
    seeds = study["seeds"]
    if not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{spec_path}: study.seeds: give a list of integers, e.g. [0, 1, 2]")
    train = study.get("train") or {}
    if not isinstance(train, dict) or any(isinstance(v, (dict, list)) for v in train.values()):
        raise UserError(f"{spec_path}: study.train: a mapping of config fields to values, e.g. {{steps: 250}}")
    evaluate = {}
    for kind in EVAL_KINDS:
        args = study.get(kind)
        if args is not None and not (isinstance(args, list) and all(isinstance(a, (str, int, float)) for a in args)):
            raise UserError(f"{spec_path}: study.{kind}: a list of command-line arguments, e.g. [--all-steps]")
        evaluate[kind] = None if args is None else [str(a) for a in args]
    # absolute: the token cache path recorded in each arm's config must not depend on the working dir
    return StudyPlan(
        out=Path(study["out"]).resolve(), preset=str(study["preset"]), seeds=list(seeds), report=Path(study["report"]),
        train=train, evaluate=evaluate,
    )  # fmt: skip


def _run(argv: list[str], what: str) -> None:
    """One stage's command, as a user would type it; a failure stops the study with its exit status."""
    shown = ("nitp-train " if what == "train" else "nitp-eval ") + " ".join(argv)
    typer.echo(f"\n$ {shown}", err=True)
    module = "nitp_train" if what == "train" else "nitp_eval.cli"
    rc = subprocess.call([sys.executable, "-m", module, *argv])
    if rc:
        raise UserError(f"{what}: `{shown}` failed (exit {rc}); fix what it says and rerun to continue")


def study_units(plan: StudyPlan, evaluate: bool) -> list[tuple]:
    """The study's work in the order it is taken: per seed, each arm's training, then each arm's evaluations
    (an evaluation waits for its arm), so the seeds finish one after another and a study cut short keeps
    every finished seed whole. Units are single arms, so two cores stay busy to the end of an odd count."""
    from nitp_train.config import load_config
    from nitp_train.pair import arm_configs

    cfg = load_config(sets=[f"{k}={v}" for k, v in plan.train.items()], **{"model.preset": plan.preset})
    arms = list(arm_configs(cfg))
    kinds = [k for k, args in plan.evaluate.items() if args is not None] if evaluate else []
    return [
        unit
        for seed in plan.seeds
        for unit in [("train", seed, arm) for arm in arms] + [(kind, seed, arm) for kind in kinds for arm in arms]
    ]


def run_seeds_in_workers(plan: StudyPlan, workers: int, evaluate: bool = True, poll_s: float = 2.0) -> None:
    """The study's units (`study_units`) taken in order by `workers` threads, each driving processes pinned to
    a core of its own with one thread (every arm timed under the same load); each seed's results are collected
    as soon as its last unit lands, and every unit's wall time is appended to <report>/results/units.jsonl. The
    first unit makes the shared token cache; no other starts before its meta.json exists (two tokenisers
    would collide). A failed unit stops the rest of its seed only."""
    import json
    import os
    import threading
    import time

    cores = sorted(os.sched_getaffinity(0))
    if workers > len(cores):
        raise UserError(f"--workers {workers}: this machine gives this process {len(cores)} core(s)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cache = Path(plan.train.get("data.cache_dir") or plan.out / "data")  # where `pair` puts the token cache
    todo, done, running, failed = study_units(plan, evaluate), set(), set(), set()
    changed = threading.Condition()

    def call(argv: list[str], core: int, module: str) -> int:
        shown = ("nitp-train " if module == "nitp_train" else "nitp-eval ") + " ".join(argv)
        typer.echo(f"\n$ taskset -c {core} {shown}", err=True)
        return subprocess.call([sys.executable, "-m", module, *argv], env=env,
                               preexec_fn=lambda: os.sched_setaffinity(0, {core}))  # fmt: skip

    def ready(unit: tuple) -> bool:
        kind, seed, arm = unit
        if unit != todo[0] and not list(cache.glob("*/meta.json")):
            return False
        return kind == "train" or ("train", seed, arm) in done

    def run(unit: tuple, core: int) -> int:
        kind, seed, arm = unit
        if kind == "train":
            return call(plan.train_command([seed]) + ["--arms", arm, "--resume"], core, "nitp_train")
        target = str(plan.out / f"seed-{seed}" / arm)
        return call([kind, target, "--skip-existing", *plan.evaluate[kind]], core, "nitp_eval.cli")

    def worker(core: int) -> None:
        while True:
            with changed:
                while True:
                    pending = [u for u in todo if u not in done and u not in running and u[1] not in failed]
                    unit = next((u for u in pending if ready(u)), None)
                    if unit is not None or not pending or not running:
                        break  # (nothing running and nothing ready: the first unit failed before the token cache)
                    changed.wait(timeout=poll_s)  # wake on a finished unit, or to look for the token cache
                if unit is None:
                    return
                running.add(unit)
            started = time.time()
            try:
                rc = run(unit, core)
            except (OSError, subprocess.SubprocessError) as e:  # e.g. the core went away: this unit failed
                typer.echo(f"error: {unit[0]} of seed {unit[1]} ({unit[2]}): {e}", err=True)
                rc = 1
            with changed:
                running.discard(unit)
                # each unit's wall time on its core, kept with the results: the study's cost per arm and stage
                timing = plan.report / "results" / "units.jsonl"
                timing.parent.mkdir(parents=True, exist_ok=True)
                with timing.open("a") as f:
                    f.write(json.dumps({"stage": unit[0], "seed": unit[1], "arm": unit[2], "core": core, "rc": rc,
                                        "start": round(started, 1), "seconds": round(time.time() - started, 1)}) + "\n")  # fmt: skip
                seed = unit[1]
                if rc:
                    failed.add(seed)
                else:
                    done.add(unit)
                    if all(u in done for u in todo if u[1] == seed):
                        try:
                            n = collect(plan, [seed])  # this seed only: the others may be half-way
                            typer.echo(
                                f"seed {seed}: collected {n} results files into {plan.report / 'results'}", err=True
                            )
                        except OSError as e:
                            typer.echo(f"error: collecting seed {seed}: {e}", err=True)
                            failed.add(seed)
                changed.notify_all()

    threads = [threading.Thread(target=worker, args=(core,)) for core in cores[:workers]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise UserError(f"seed(s) {sorted(failed)} failed (see above); fix what they said and rerun to continue")


def time_design(plan: StudyPlan, steps: int, budget_s: float | None) -> dict:
    """Train `steps` steps of the design's NITP arm here and predict the study's training time from its
    median tokens/s (steps only: probes, evaluations and saves come on top). Written to
    <report>/results/timing.json; with `budget_s`, a prediction over it is an error."""
    import json
    import statistics

    from nitp_train.config import load_config

    cfg = load_config(sets=[f"{k}={v}" for k, v in plan.train.items()], **{"model.preset": plan.preset})
    out = plan.out.parent / f".{plan.out.name}-timing"
    timing = {**plan.train, "steps": steps, "optim.warmup_steps": max(1, steps // 4), "eval_every": 0,
              "probe_every": 0, "save_every": steps, "data.cache_dir": str(plan.out / "data")}  # fmt: skip
    argv = ["run", "--preset", plan.preset, "--out", str(out), "--overwrite"]
    _run(argv + [a for k, v in timing.items() for a in ("--set", f"{k}={v}")], "train")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["tokens_per_s"] for r in recs[len(recs) // 2 :] if r.get("tokens_per_s")]  # after the warm-up steps
    shutil.rmtree(out, ignore_errors=True)
    if not rates:
        raise UserError(f"time: the {steps}-step run logged no tokens_per_s; give more steps (--time-steps)")
    tps = statistics.median(rates)
    arms = 2 * len(plan.seeds)
    predicted = arms * cfg.steps * cfg.tokens_per_step / tps
    result = {"steps_timed": steps, "tokens_per_s_nitp": tps, "study_steps": cfg.steps, "arms": arms,
              "tokens_per_step": cfg.tokens_per_step, "predicted_train_s": predicted, "budget_s": budget_s}  # fmt: skip
    (plan.report / "results").mkdir(parents=True, exist_ok=True)
    (plan.report / "results" / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(
        f"time: {tps:,.0f} tokens/s (NITP, median of steps {len(recs) - len(rates) + 1}-{len(recs)} of {steps}): "
        f"{arms} arms x {cfg.steps} steps x {cfg.tokens_per_step:,} tokens = {predicted:,.0f} s of training steps"
    )
    if budget_s is not None and predicted > budget_s:
        raise UserError(
            f"time: the study's training steps would take ~{predicted:,.0f} s here, over --budget-s {budget_s:g}; "
            "reduce study.train.steps or study.seeds (and commit the new design before running it)"
        )
    return result


def collect(plan: StudyPlan, seeds: list[int] | None = None) -> int:
    """Copy the study's small results files (of `seeds`; default every seed, and study.json) to
    <report>/results/, mirroring the study dir; returns the count."""
    dest = plan.report / "results"
    files = [plan.out / "study.json"] if seeds is None and (plan.out / "study.json").is_file() else []
    for seed in plan.seeds if seeds is None else seeds:
        pair = plan.out / f"seed-{seed}"
        files += [pair / "pair.json"] if (pair / "pair.json").is_file() else []
        files += [pair / arm / f for arm in sorted(p.name for p in pair.iterdir() if p.is_dir()) for f in ARM_FILES
                  if (pair / arm / f).is_file()] if pair.is_dir() else []  # fmt: skip
        files += sorted((pair / "eval").glob("*/*.json")) if (pair / "eval").is_dir() else []
    for f in files:
        target = dest / f.relative_to(plan.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return len(files)


def command(
    spec: Path = typer.Argument(..., help="A study spec with a `study:` block, e.g. analyses/replication-cpu.yaml."),
    stages: str = typer.Option(
        ",".join(STAGES),
        "--stages",
        help="Which stages to run, in order: train,evaluate,report; `time` (only when named) trains a few steps of "
        "the design here and predicts the study's training time. Default: train,evaluate,report.",
    ),
    time_steps: int = typer.Option(20, "--time-steps", help="Steps the `time` stage trains. Default: 20."),
    budget_s: float = typer.Option(
        None, "--budget-s", help="With `time`: fail when the predicted training time exceeds this. Default: none."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        help="Train and evaluate this many arms at once, each on its own core with one thread, seed by seed; each "
        "seed's results are collected as soon as it is evaluated. Default: 1.",
    ),
) -> None:
    """Run a study end to end from its spec: train every seed's pair, evaluate every arm, collect, report.

    Resumable: rerun the same command after an interruption; finished work is kept, never redone.
    """
    from nitp_eval.report.spec import load_spec

    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STAGES + EXTRA_STAGES]
    if bad or not chosen:
        raise UserError(f"--stages {stages!r}: choose from {','.join(EXTRA_STAGES + STAGES)}")
    if time_steps < 2:
        raise UserError(f"--time-steps {time_steps}: give at least 2 (the first steps include start-up)")
    if not spec.is_file():
        raise UserError(f"{spec}: no such spec file; the shipped studies are analyses/replication-*.yaml")
    plan = parse_plan(load_spec(spec).study, spec)  # the report part, too, is checked before hours of training
    if "time" in chosen:
        time_design(plan, time_steps, budget_s)
    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1")
    if "train" in chosen:
        if workers > 1:
            run_seeds_in_workers(plan, workers, evaluate="evaluate" in chosen)
        started = plan.out.is_dir() and any(p.name != "data" for p in plan.out.iterdir())
        _run(plan.train_command() + (["--resume"] if started else []), "train")
        typer.echo(f"collected {collect(plan)} results files into {plan.report / 'results'}", err=True)
    if "evaluate" in chosen:
        for kind, args in plan.evaluate.items():
            if args is None:
                continue
            _run([kind, str(plan.out), "--skip-existing", *args], kind)
            typer.echo(f"collected {collect(plan)} results files into {plan.report / 'results'}", err=True)
    if "report" in chosen:
        _run(["report", "--spec", str(spec), "--out", str(plan.report), "--overwrite"], "report")
