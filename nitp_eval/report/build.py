"""Assembling a report dir: report.md, tables/<name>.{md,tex,csv}, figures/<name>.{png,pdf}.

The dir is built beside its destination and moved into place at the end, so a failed build never
leaves half a report. An existing report is only replaced with overwrite=True, and only when it holds
nothing but what a report writes; the working directory, its parents and run dirs are never targets.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from nitp_eval.report import figures as F
from nitp_eval.report import setup as S
from nitp_eval.report.common import EXTRA_LAYER_METRICS, pick, run_arms
from nitp_eval.report.downstream import ablation_table, downstream_table, lm_pairs
from nitp_eval.report.endpoints import DEFAULT_ENDPOINTS, PAPER_EFFECTS
from nitp_eval.report.geometry_tables import geometry_table, metrics_table
from nitp_eval.report.load import Run, Study, file_digest, load_any
from nitp_eval.report.mteb_tables import mteb_tables
from nitp_eval.report.rows import decide
from nitp_eval.report.spec import Spec
from nitp_eval.report.stats import mean_delta
from nitp_eval.report.study_figures import study_dynamics, study_profiles, study_trajectories
from nitp_eval.report.study_rows import collect_rows
from nitp_eval.report.study_tables import peak_paragraph, seed_tables, verdict_paragraph
from nitp_eval.report.table import Table
from nitp_eval.report.training_tables import ce_table, cost_table
from nitp_train.errors import UserError

REPORT_FILE = "report.md"
# lm and mteb read their data from the hub unless given local copies: a hint that works offline too
OFFLINE_HINT = {
    "lm": "offline: add --data-dir DIR with local copies, docs/lm-eval.md",
    "mteb": "offline: add --data-dir DIR with local copies, docs/mteb.md",
}


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower() or "run"


class _Writer:
    """Collects the report's Markdown while writing each table and figure to its own files."""

    def __init__(self, root: Path):
        self.root = root
        self.md: list[str] = []
        self.outputs: list[str] = []
        (root / "tables").mkdir(parents=True)
        (root / "figures").mkdir()

    def text(self, s: str) -> None:
        self.md.append(s.rstrip("\n") + "\n")

    def table(self, t: Table | None) -> None:
        if t is None:
            return
        for ext, body in (("md", t.markdown()), ("tex", t.latex()), ("csv", t.csv())):
            (self.root / "tables" / f"{t.name}.{ext}").write_text(body)
        self.outputs.append(f"tables/{t.name}.{{md,tex,csv}}")
        self.text(f"**{t.title}** (`tables/{t.name}.csv`, `.tex`)\n\n{t.markdown()}")

    def figure(self, fig, name: str, caption: str) -> None:
        if fig is None:
            return
        F.save(fig, self.root / "figures", name)
        self.outputs.append(f"figures/{name}.{{png,pdf}}")
        self.text(f"![{caption}](figures/{name}.png)\n\n*{caption}* (`figures/{name}.pdf`)\n")


def build_report(spec: Spec, out: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the report that `spec` declares to `out`; returns the path of report.md."""
    out = check_out(Path(out), [Path(r["path"]) for r in spec.runs], overwrite)
    runs = [load_any(r["path"], r["label"]) for r in spec.runs]
    if len({r.label for r in runs}) < len(runs):
        raise UserError("two runs share a label; give each a distinct --label (or `label:` in the spec)")
    for r in runs:
        # a dir holding one run dir (no pair.json, no results of its own) is not a pair to compare
        lone = isinstance(r, Run) and r.model is None and r.pair is None and len(r.arms) == 1
        if lone and not any(any(by_arm.values()) for by_arm in r.results.values()):
            raise UserError(
                f"{r.path}: one run dir ({r.arms[0]}) and no pair.json or eval/: not a pair; give the run dirs "
                "to compare side by side (nitp-eval report runs/a runs/b --label A --label B)"
            )
    studies = [r for r in runs if isinstance(r, Study)]
    if studies and len(studies) < len(runs):
        raise UserError(
            f"{studies[0].path} is a study (seed-<s>/ pair dirs) and {next(r for r in runs if isinstance(r, Run)).path} "
            "a single pair: report them separately (a study's intervals cover seeds, a pair's do not)"
        )

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (_write_studies if studies else _write)(spec, runs, _Writer(tmp), progress)
        if out.exists():
            _remove_report(out)
        if (out / RESULTS_DIR).is_dir():  # a shipped study's inputs stay; the report's files move in beside them
            for p in tmp.iterdir():
                os.replace(p, out / p.name)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / REPORT_FILE


# What a report dir may hold: the files a report writes, nothing else (checked before replacing one),
# and `results/`, the results files a shipped study's report is built from (never touched by a report).
REPORT_CONTENT = {"tables": (".md", ".tex", ".csv"), "figures": (".png", ".pdf")}
RESULTS_DIR = "results"


def check_out(out: Path, run_paths: list[Path], overwrite: bool) -> Path:
    """The resolved report dir, after refusing every destination whose replacement could lose data."""
    out = out.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise UserError(
            f"--out {out} is the working directory or one of its parents; give a dir of its own, e.g. reports/x"
        )
    for run in run_paths:
        run = run.resolve()
        if run == out / RESULTS_DIR or (out / RESULTS_DIR) in run.parents:
            continue  # a shipped study: its report beside the results it is built from
        if out == run or out in run.parents:
            raise UserError(f"--out {out} is or contains the run dir {run}; write the report elsewhere, e.g. reports/x")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a dir for the report")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists; pass --overwrite to replace it or --out to write elsewhere")
        foreign = foreign_files(out)
        if foreign:
            raise UserError(
                f"{out} is not a report dir: it holds {', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}, which a report does not write; "
                "refusing to replace it; choose another --out"
            )
    return out


def foreign_files(out: Path) -> list[str]:
    """Entries of `out` that a report does not write (sorted); empty for a report dir."""
    bad = []
    for p in sorted(out.iterdir()):
        if (p.name == REPORT_FILE and p.is_file()) or (p.name == RESULTS_DIR and p.is_dir() and not p.is_symlink()):
            continue
        exts = REPORT_CONTENT.get(p.name)
        if exts is None or not p.is_dir() or p.is_symlink():
            bad.append(p.name)
            continue
        bad += [f"{p.name}/{f.name}" for f in sorted(p.iterdir()) if not (f.is_file() and f.suffix in exts)]
    return bad


def _remove_report(out: Path) -> None:
    """Delete what a report wrote, file by file; rmdir fails (and nothing else goes) if more appeared."""
    for name, exts in REPORT_CONTENT.items():
        if (out / name).is_dir():
            for f in (out / name).iterdir():
                if f.is_file() and f.suffix in exts:
                    f.unlink()
            (out / name).rmdir()
    (out / REPORT_FILE).unlink(missing_ok=True)
    if not (out / RESULTS_DIR).is_dir():
        out.rmdir()


def _write(spec: Spec, runs: list[Run], w: _Writer, progress: bool) -> None:
    from tqdm import tqdm

    notes: list[str] = list(spec.notes)
    w.text(f"# {spec.title or report_title(runs)}\n")
    for run in runs:  # what can be concluded and what was trained, before any number
        facts = S.setup_facts(run, notes)
        w.text(("" if len(runs) == 1 else f"*{run.label}.* ") + _pair_verdict(run, spec, facts) + "\n")
        w.text(S.setup_paragraph(facts) + "\n")
    if spec.description:
        w.text(spec.description.strip() + "\n")
    w.text(
        "Built by `nitp-eval report` from results files only (list at the end)"
        + (f", spec `{spec.source}`" if spec.source else "")
        + ".\n\n"
        + "\n".join(f"- **{r.label}**: `{r.model or r.path}` (arms: {', '.join(r.arms) or 'none'})" for r in runs)
        + "\n"
    )
    many = len(runs) > 1
    for section in tqdm(spec.sections, desc="report", unit="section", disable=not progress):
        _SECTIONS[section](spec, runs, w, notes, many)
    _closing(spec, runs, w, notes)


def _pair_verdict(run: Run, spec: Spec, facts: dict) -> str:
    """What one pair showed for each of the paper's claims (its rows as a study of one seed)."""
    arms = run_arms(run, spec)
    if len(arms) < 2 or not {"ntp", "nitp"} <= set(arms):
        return "**Verdict.** Not an NTP/NITP pair: no verdict on the paper's claims (the tables compare the arms)."
    scratch: list[str] = []  # the tables below report what is missing; the paragraph only reads values
    # the geometry table refuses incomparable results (or flags them): the paragraph leaves that to it
    rows = collect_rows(Study(run.path, run.label, None, {0: run}), replace(spec, allow_mismatch=True), scratch)
    avg = next((r for r in rows if r.key == "downstream_avg"), None)
    avg_ci = None
    if avg is not None:
        b, o = pick(run, "lm", arms[0], spec.step), pick(run, "lm", arms[1], spec.step)
        kept = avg.extra["tasks"]
        pairs = lm_pairs(run, b, o, kept, scratch)
        if len(pairs) == len(kept):
            avg_ci = mean_delta(pairs, spec.n_boot, spec.seed, spec.ci)[1]
    return S.pair_verdict_paragraph(rows, avg_ci, facts)


def _closing(spec: Spec, runs: list, w: _Writer, notes: list[str]) -> None:
    w.text("## Missing inputs and caveats\n")
    missing = [f"{r.label}: not found or unreadable: {m}" for r in runs for m in r.missing] + notes
    w.text("\n".join(f"- {m}" for m in dict.fromkeys(missing)) if missing else "Nothing missing.")
    w.text("\n## Sources\n\nFiles read (sha256 prefix):\n")
    sources = [p for r in runs for p in r.sources] + ([spec.source] if spec.source else [])
    w.text("\n".join(f"- `{p}` {file_digest(p)}" for p in sources) or "- none")
    w.text(
        "\nOutputs: " + ", ".join(f"`{o}`" for o in w.outputs)
        if w.outputs
        else "\nNo tables or figures could be built."
    )
    (w.root / REPORT_FILE).write_text("\n".join(w.md))


def _write_studies(spec: Spec, studies: list[Study], w: _Writer, progress: bool) -> None:
    """A study report: verdict and setup, the seed tables, the figures over seeds, the cost per seed."""
    from tqdm import tqdm

    notes: list[str] = list(spec.notes)
    n = ", ".join(str(len(s.seeds)) for s in studies)
    w.text(f"# {spec.title or report_title(studies)}\n")
    many = len(studies) > 1
    for study in tqdm(studies, desc="report", unit="study", disable=not progress):
        sfx = f"-{slug(study.label)}" if many else ""
        arms = run_arms(study.seeds[min(study.seeds)], spec)
        rows = [r for r in collect_rows(study, spec, notes) if STUDY_SECTION[r.section] in spec.sections]
        rows = decide(rows, spec.endpoints or list(DEFAULT_ENDPOINTS), spec.alpha, PAPER_EFFECTS)
        if many:
            w.text(f"## {study.label}\n")
        facts = S.setup_facts(study, notes)
        prereg = S.preregistration(spec.source, [study.path], spec.endpoints_declared)
        w.text(verdict_paragraph(study, rows, facts, spec.alpha, prereg) + "\n")
        if spec.description and study is studies[0]:
            w.text(spec.description.strip() + "\n")
        w.text(S.setup_paragraph(facts) + "\n")
        w.text(
            "Built by `nitp-eval report` from results files only (list at the end)"
            + (f", spec `{spec.source}`" if spec.source else "")
            + f": `{study.path}`, seeds "
            + ", ".join(f"`seed-{s}`" for s in sorted(study.seeds))
            + ".\n"
        )
        w.text("## NITP vs NTP over seeds\n")
        if len(arms) < 2:
            w.text("Fewer than two arms found: nothing to compare.\n")
        for t in seed_tables(rows, study, spec, arms[0], arms[1], spec.alpha) if len(arms) > 1 else []:
            t.name += sfx
            w.table(t)
        if "dynamics" in spec.sections:
            fig = study_dynamics(study, arms, notes)
            w.figure(
                fig,
                f"dynamics{sfx}",
                f"{study.label}: probes, NITP loss and Δ validation CE over seeds (paper Fig. 1, Fig. 5)",
            )
            if len(arms) > 1 and (text := peak_paragraph(study, arms)):
                w.text(text + "\n")
        if "geometry" in spec.sections:
            fig = study_profiles(study, arms, spec.step, notes)
            w.figure(
                fig, f"geometry_profiles{sfx}", f"{study.label}: per-layer effective rank and anisotropy over seeds"
            )
            extra = [(k, label) for k, (label, _) in EXTRA_LAYER_METRICS.items()]
            w.figure(
                study_profiles(study, arms, spec.step, notes, extra),
                f"metric_profiles{sfx}",
                f"{study.label}: further representation metrics per layer over seeds (docs/geometry.md)",
            )
            w.figure(
                study_trajectories(study, arms),
                f"trajectories{sfx}",
                f"{study.label}: last-layer geometry over the checkpoints, mean and seed band (paper Fig. 1)",
            )
        if "cost" in spec.sections:
            w.text("## Cost\n")
            t = cost_table([study.seeds[s] for s in sorted(study.seeds)], spec, notes)
            if t:
                t.name += sfx
            w.table(t) if t else w.text("No metrics.jsonl found: no throughput to report.\n")
    notes.append(f"studies of {n} seeds: the intervals cover training-seed noise (and documents where marked)")
    _closing(spec, studies, w, notes)


# which spec section a study row's section belongs to
STUDY_SECTION = {
    "training": "dynamics",
    "probes": "dynamics",
    "geometry": "geometry",
    "layers": "geometry",
    "downstream": "downstream",
    "mteb": "mteb",
    "mteb_tasks": "mteb",
}


def report_title(runs: list[Run]) -> str:
    """What the report compares: NTP vs NITP for pairs, else the runs and models by name."""
    if all({"ntp", "nitp"} <= set(r.arms) for r in runs):
        return "NTP vs NITP" + (f": {runs[0].label}" if len(runs) == 1 else "")
    if len(runs) == 1:
        return f"{runs[0].label}: " + (", ".join(runs[0].arms) if len(runs[0].arms) > 1 else "evaluation report")
    return "Comparison: " + ", ".join(r.label for r in runs)


def _downstream(spec, runs, w, notes, many):
    w.text("## Downstream benchmarks\n")
    t = downstream_table(runs, spec, notes)
    w.table(t) if t else w.text(f"No lm results found (run `nitp-eval lm <run dir>`; {OFFLINE_HINT['lm']}).\n")


def _mteb(spec, runs, w, notes, many):
    w.text("## MTEB (frozen embeddings)\n")
    found = False
    for run in runs:
        for t in mteb_tables(run, spec, notes, suffix=f"-{slug(run.label)}" if many else ""):
            w.table(t)
            found = True
    if not found:
        w.text(f"No mteb results found (run `nitp-eval mteb <run dir>`; {OFFLINE_HINT['mteb']}).\n")


def _geometry(spec, runs, w, notes, many):
    w.text("## Hidden-state geometry\n")
    t = geometry_table(runs, spec, notes)
    if t is None:
        w.text("No geometry results found (run `nitp-eval geometry <run dir>`).\n")
        return
    w.table(t)
    w.table(metrics_table(runs, spec))
    from nitp_eval.geometry.flags import massive_flag

    for run in runs:
        arms = run_arms(run, spec)
        for arm in arms:  # layers decided by a few massive-norm tokens (the attention sink), as the console says
            res = pick(run, "geometry", arm, spec.step)
            flag = massive_flag(res.data) if res else None
            if flag:
                notes.append(f"{run.label}: {res.path.name}: {flag}")
        sfx = f"-{slug(run.label)}" if many else ""
        w.figure(
            F.geometry_profiles(run, arms, spec.step, notes),
            f"geometry_profiles{sfx}",
            f"{run.label}: effective rank, anisotropy and CKA to the last layer per layer",
        )
        w.figure(
            F.metric_profiles(run, arms, spec.step),
            f"metric_profiles{sfx}",
            f"{run.label}: RankMe, α-ReQ, TwoNN, prompt and dataset entropy, curvature per layer (docs/geometry.md)",
        )
        w.figure(
            F.metric_trajectories(run, arms),
            f"trajectories{sfx}",
            f"{run.label}: last-layer geometry over the evaluated checkpoints (Fig. 1-style)",
        )
        fig = F.cka_heatmaps(run, arms, spec.step)
        if fig is None:
            notes.append(
                f"{run.label}: geometry results have no cka_matrix: no CKA heat map "
                f"(run `nitp-eval geometry {run.model or run.path} --cka-matrix`)"
            )
        w.figure(fig, f"cka{sfx}", f"{run.label}: linear CKA between layers, per arm")


def _dynamics(spec, runs, w, notes, many):
    w.text("## Training dynamics\n")
    for run in runs:
        arms = run_arms(run, spec)
        sfx = f"-{slug(run.label)}" if many else ""
        fig = F.dynamics(run, arms, notes, spec.allow_mismatch)
        if fig is None:
            notes.append(
                f"{run.label}: no geometry probes in metrics.jsonl (probe_erank, probe_cosine) and no geometry "
                "checkpoint series: no dynamics figure (paper Fig. 1)"
            )
        w.figure(
            fig,
            f"dynamics{sfx}",
            f"{run.label}: last-layer effective rank and cosine similarity vs step (paper Fig. 1)",
        )
        fig = F.aux_loss(run, arms, notes)
        if fig is None:
            notes.append(f"{run.label}: no loss_nitp in any metrics.jsonl: no auxiliary-loss figure (paper Fig. 5)")
        w.figure(fig, f"aux_loss{sfx}", f"{run.label}: auxiliary (NITP) loss vs step (paper Fig. 5)")
        w.figure(
            F.cross_entropy(run, arms, notes),
            f"cross_entropy{sfx}",
            f"{run.label}: train NTP loss and validation CE vs step",
        )
    w.table(ce_table(runs, spec, notes))


def _cost(spec, runs, w, notes, many):
    w.text("## Cost\n")
    t = cost_table(runs, spec, notes)
    w.table(t) if t else w.text("No metrics.jsonl found: no throughput to report.\n")


def _ablation(spec, runs, w, notes, many):
    w.text("## Ablations\n")
    t = ablation_table(runs, spec, notes)
    w.table(t) if t else w.text("No lm results for the ablation variants.\n")


_SECTIONS = {
    "downstream": _downstream,
    "mteb": _mteb,
    "geometry": _geometry,
    "dynamics": _dynamics,
    "cost": _cost,
    "ablation": _ablation,
}
