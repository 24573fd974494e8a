"""nitp-eval report on small hand-made results files with known numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nitp_eval.report.build import build_report, slug
from nitp_eval.report.spec import load_spec, spec_from_paths
from nitp_train.errors import UserError

HEADER = {"schema_version": 1, "settings": {}, "versions": {}, "git": None}
MTEB = {
    "STS12": "STS",
    "STSBenchmark": "STS",
    "Banking77Classification": "Classification",
    "EmotionClassification": "Classification",
    "TwitterURLCorpus": "Retrieval/Dup",
}
OF = {"Classification": 10, "STS": 9, "Retrieval/Dup": 6}


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def _lm(arm: str, step: int, correct: dict[str, list[int]]) -> dict:
    """lm results whose per-sample records are the given 0/1 vectors; scores are their means."""
    tasks, samples = {}, {}
    for task, v in correct.items():
        metric = "exact_match" if task == "gsm8k" else "acc_norm"
        m = float(np.mean(v))
        tasks[task] = {
            "metrics": {metric: m, metric + "_stderr": float(np.std(v) / math.sqrt(len(v)))},
            "primary": metric,
            "version": "1.0",
            "n_samples": len(v),
            "num_fewshot": 0,
        }
        samples[task] = [{"doc_id": i, metric: x} for i, x in enumerate(v)]
    return {
        "schema": "nitp.lm",
        **HEADER,
        "checkpoint": f"x/{arm}",
        "arm": arm,
        "step": step,
        "tasks": tasks,
        "samples": samples,
    }


def _mean(xs):
    return float(np.mean(xs)) if xs else None


def _mteb(arm: str, step: int, scores: dict[str, float | None], missing=()) -> dict:
    """An mteb results file in the schema nitp_eval/mteb_eval writes (run.evaluate_suite + results header)."""
    tasks = {
        t: {
            "group": MTEB[t],
            "main_score_name": "accuracy",
            "main_score": s,
            "scores": {"test": {"default": {}}},
            "version": "1",
            "hf_subsets": ["default"],
            "n_eval": {"test": 100},
            "limited": False,
            "source": "local",
            "evaluation_time": 1.0,
        }
        for t, s in scores.items()
    }
    groups = {
        g: {
            "mean": _mean([s for t, s in scores.items() if MTEB[t] == g and s is not None]),
            "n": sum(MTEB[t] == g and s is not None for t, s in scores.items()),
            "of": of,
        }
        for g, of in OF.items()
    }
    return {
        "schema": "nitp.mteb",
        **HEADER,
        "checkpoint": f"x/{arm}",
        "arm": arm,
        "step": step,
        "tasks": tasks,
        "missing": list(missing),
        "missing_reasons": {t: "no local data" for t in missing},
        "failed": [],
        "failed_reasons": {},
        "groups": groups,
        "overall": {
            "mean": _mean([s for s in scores.values() if s is not None]),
            "n": sum(s is not None for s in scores.values()),
            "of": 25,
        },
    }


def _geometry(arm: str, step: int, scale: float) -> dict:
    L = 4
    return {
        "schema": "nitp.geometry",
        **HEADER,
        "checkpoint": f"x/{arm}",
        "arm": arm,
        "step": step,
        "tokens": 4096,
        "layers": list(range(L + 1)),
        "per_layer": {
            "erank_cov": [scale * (10 + i) for i in range(L + 1)],
            "erank_sv": [scale * (12 + i) for i in range(L + 1)],
            "anisotropy": [0.1 + 0.05 * i / scale for i in range(L + 1)],
            "anisotropy_exact": [0.11 + 0.05 * i / scale for i in range(L + 1)],
            "cka_to_last": [0.2 + 0.2 * i for i in range(L + 1)],
            "mean_norm": [1.0 + i for i in range(L + 1)],
        },
        "cka_matrix": [[1.0 - 0.15 * abs(i - j) * scale / 2 for j in range(L + 1)] for i in range(L + 1)],
        "alignment": {"target_layer": 1, "cos_next": 0.3 * scale, "projector_cos": 0.9 if arm == "nitp" else None},
    }


def make_run(root: Path, name: str = "tiny", seed: int = 0) -> Path:
    """A pair dir with both arms' metrics.jsonl, and lm, mteb and geometry results (2 checkpoints)."""
    rng = np.random.default_rng(seed)
    run = root / name
    _write(run / "pair.json", {"name": name, "seed": seed, "arms": {"ntp": {}, "nitp": {}}})
    for arm in ("ntp", "nitp"):
        (run / arm).mkdir(parents=True)
        (run / arm / "config.yaml").write_text(
            f"model:\n  preset: tiny-dense\nobjective:\n  name: {arm}\n  lambda: {1.0 if arm == 'nitp' else 0.0}\n  target_layer: 1\n"
        )
        lines = []
        for step in range(0, 201, 10):
            r = {
                "step": step,
                "tokens": step * 512,
                "lr": 1e-3,
                "loss_ntp": 8 - step / 50 + (0.01 if arm == "nitp" else 0),
                "loss_total": 8.0,
                "grad_norm": 1.0,
                "tokens_per_s": 1000.0 if arm == "ntp" else 950.0,
                "elapsed_s": step * 0.5 * (1 if arm == "ntp" else 1.05),
            }
            if arm == "nitp":
                r["loss_nitp"] = 0.2 + 0.6 * math.exp(-step / 5) + 0.1 * math.exp(-(((step - 60) / 30) ** 2))
            if step % 50 == 0:
                r["val_ce"] = 7.5 - step / 60 + (0.002 if arm == "nitp" else 0)
                r["probe_erank"] = (30 if arm == "nitp" else 20) + 40 * math.exp(-step / 80)
                r["probe_cosine"] = (0.3 if arm == "nitp" else 0.35) * (1 - math.exp(-step / 60))
            lines.append(json.dumps(r))
        (run / arm / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        for step, scale in ((100, 1.0), (200, 1.5 if arm == "nitp" else 0.8)):
            _write(run / "eval" / "geometry" / f"{arm}-step-{step:06d}.json", _geometry(arm, step, scale))
    p = {"arc_challenge": 0.30, "gsm8k": 0.05, "commonsense_qa": 0.25}
    correct = {
        arm: {
            t: (rng.random(300 if t != "gsm8k" else 200) < p[t] + (0.08 if arm == "nitp" else 0)).astype(int).tolist()
            for t in p
        }
        for arm in ("ntp", "nitp")
    }
    for arm in ("ntp", "nitp"):
        _write(run / "eval" / "lm" / f"{arm}-step-000200.json", _lm(arm, 200, correct[arm]))
        scores = {t: 0.3 + 0.01 * i + (0.02 if arm == "nitp" and t != "STS12" else 0) for i, t in enumerate(MTEB)}
        _write(run / "eval" / "mteb" / f"{arm}-step-000200.json", _mteb(arm, 200, scores, missing=["STS13"]))
    return run


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def num(cell: str) -> float:
    return float(cell.split()[0].rstrip("*!≤"))  # flags: * CI excludes 0, ! degenerate, ≤ at/below the baseline


def ci_of(cell: str) -> tuple[float, float]:
    lo, hi = cell.split("[")[1].rstrip("]").split(",")
    return float(lo), float(hi)


def shown(x: float) -> float:
    """A fraction as the tables show it: percent, two decimals."""
    return round(100 * x, 2)


def paired(base: dict, other: dict, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-document primary-metric values of two lm results files, matched by doc_id (null = not scored)."""
    m = base["tasks"][task]["primary"]
    a = {r["doc_id"]: r[m] for r in base["samples"][task] if r.get(m) is not None}
    b = {r["doc_id"]: r[m] for r in other["samples"][task] if r.get(m) is not None}
    ids = sorted(set(a) & set(b))
    return np.array([a[i] for i in ids], float), np.array([b[i] for i in ids], float)


def reference_ci(pairs: list, n_boot: int = 10_000, seed: int = 12345, ci: float = 0.95) -> tuple[float, float]:
    """Percentile CI (in %) of the mean over tasks of mean(b − a), each task's documents resampled by
    index with its own numpy generator: an independent reference for nitp_eval.report.stats."""
    rng = np.random.default_rng(seed)
    reps = np.mean([(b - a)[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1) for a, b in pairs], axis=0)
    lo, hi = np.percentile(100 * reps, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = make_run(root)
    spec = spec_from_paths([run])
    spec.n_boot = 10_000
    md = build_report(spec, root / "out", progress=False)
    return run, md.parent


def test_downstream_numbers_equal_results_files(report):
    run, out = report
    rows = read_csv(out / "tables" / "downstream.csv")
    assert rows[0] == ["Model", "CSQA", "ARC-C", "GSM8k", "Avg."]  # the paper's order, not the files'
    tasks = ["commonsense_qa", "arc_challenge", "gsm8k"]
    res = {a: json.loads((run / "eval" / "lm" / f"{a}-step-000200.json").read_text()) for a in ("ntp", "nitp")}
    score = {a: [res[a]["tasks"][t]["metrics"][res[a]["tasks"][t]["primary"]] for t in tasks] for a in res}
    for row, arm in zip(rows[1:3], ("ntp", "nitp")):
        assert row[0] == arm.upper()
        assert [num(c) for c in row[1:4]] == [shown(v) for v in score[arm]]
        assert num(row[4]) == shown(float(np.mean(score[arm])))
    delta = rows[3]
    assert delta[0] == "Δ NITP − NTP"
    # Δ = difference of the shown scores; each CI recomputed from the per-sample records (tolerance:
    # Monte Carlo error of two independent 10k-resample bootstraps, well under the CIs' ~14-point width)
    for i, cell in enumerate(delta[1:5]):
        if i < 3:
            assert num(cell) == pytest.approx(shown(score["nitp"][i]) - shown(score["ntp"][i]), abs=1e-9)
            ref = reference_ci([paired(res["ntp"], res["nitp"], tasks[i])])
        else:  # Avg.
            assert num(cell) == pytest.approx(num(rows[2][4]) - num(rows[1][4]), abs=1e-9)
            ref = reference_ci([paired(res["ntp"], res["nitp"], t) for t in tasks])
        lo, hi = ci_of(cell)
        assert lo == pytest.approx(ref[0], abs=0.6) and hi == pytest.approx(ref[1], abs=0.6), (cell, ref)
        assert cell.split()[0].endswith("*") == (lo > 0 or hi < 0)


def test_bold_marks_the_better_arm(report):
    _, out = report
    md = (out / "tables" / "downstream.md").read_text().splitlines()
    ntp, nitp = md[2].split("|")[2:-1], md[3].split("|")[2:-1]
    for a, b in zip(ntp, nitp):
        a, b = a.strip(), b.strip()
        assert a.startswith("**") != b.startswith("**") or num(a.strip("*")) == num(b.strip("*"))
        better = b if num(b.strip("*")) > num(a.strip("*")) else a
        assert better.startswith("**")
    tex = (out / "tables" / "downstream.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{" in tex and "$\\Delta$" in tex
    # CIs on a row of their own in small type, so the LaTeX table is as wide as the scores
    lines = tex.splitlines()
    d = next(i for i, line in enumerate(lines) if line.startswith("$\\Delta$"))
    assert (
        "[" not in lines[d] and lines[d + 1].startswith(" & {\\scriptsize [") and lines[d + 1].count("scriptsize") == 4
    )


def _mteb_run(tmp_path, ntp: dict, nitp: dict):
    run = make_run(tmp_path)
    for f in (run / "eval" / "mteb").iterdir():
        f.unlink()
    for arm, scores in (("ntp", ntp), ("nitp", nitp)):
        _write(run / "eval" / "mteb" / f"{arm}-step-000200.json", _mteb(arm, 200, scores))
    spec = spec_from_paths([run])
    spec.sections = ["mteb"]
    return build_report(spec, tmp_path / "out", progress=False).parent


def test_bold_delta_and_count_agree_at_the_shown_rounding(tmp_path):
    # 30.0049 and 30.0051 show as 30.00 and 30.01: NITP bold, Δ +0.01, counted improved;
    # 30.001 and 30.004 both show as 30.00: a tie (no best, so no bold; Δ +0.00, not improved)
    out = _mteb_run(
        tmp_path, {"STS12": 0.300049, "STSBenchmark": 0.30001}, {"STS12": 0.300051, "STSBenchmark": 0.30004}
    )
    md = (out / "tables" / "mteb_tasks.md").read_text()
    assert "| STS12 | STS | accuracy | 30.00 | **30.01** | +0.01 |  | 100 |" in md
    assert "| STSBenchmark | STS | accuracy | 30.00 | 30.00 | +0.00 |  | 100 |" in md
    assert "NITP improves 1 of 2 tasks over NTP (not improved: STSBenchmark +0.00)." in md
    assert md.splitlines()[1] == "|:---|:---|:---|---:|---:|---:|---:|---:|"  # text columns left-aligned
    assert "\\begin{tabular}{lllrrrrr}" in (out / "tables" / "mteb_tasks.tex").read_text()


def test_no_bold_at_or_below_chance_and_a_one_task_group_is_named_as_the_task(tmp_path):
    """Banking77 has 77 classes (chance 1.30 %): 1.0 % vs 1.2 % is no "best"; one Retrieval/Dup task is that task."""
    out = _mteb_run(
        tmp_path,
        {"Banking77Classification": 0.010, "TwitterURLCorpus": 0.5, "STS12": 0.3},
        {"Banking77Classification": 0.012, "TwitterURLCorpus": 0.6, "STS12": 0.4},
    )
    md = (out / "tables" / "mteb_tasks.md").read_text()
    assert "| Banking77Classification | Classification | accuracy | 1.00≤ | 1.20≤ | +0.20 | 1.30 | 100 |" in md
    groups = (out / "tables" / "mteb_groups.md").read_text()
    assert "Retrieval/Dup: only TwitterURLCorpus" in groups and "Retrieval/Dup (1" not in groups


def test_mteb_tables(report):
    run, out = report
    groups = read_csv(out / "tables" / "mteb_groups.csv")
    res = {a: json.loads((run / "eval" / "mteb" / f"{a}-step-000200.json").read_text()) for a in ("ntp", "nitp")}
    by_name = {r[0].split(" (")[0]: r for r in groups[1:]}
    by_name["Retrieval/Dup"] = by_name.pop("Retrieval/Dup: only TwitterURLCorpus")  # a group of one task
    for g in ("Classification", "STS", "Retrieval/Dup"):
        n, of = res["ntp"]["groups"][g]["n"], res["ntp"]["groups"][g]["of"]
        assert by_name[g][0] == (f"{g} ({n} of {of})" if n > 1 else "Retrieval/Dup: only TwitterURLCorpus")
        assert [num(c) for c in by_name[g][1:3]] == [
            round(100 * res[a]["groups"][g]["mean"], 2) for a in ("ntp", "nitp")
        ]
    assert by_name["Overall"][0] == "Overall (5 of 25)"
    assert num(by_name["Overall"][2]) == round(100 * res["nitp"]["overall"]["mean"], 2)
    tasks = read_csv(out / "tables" / "mteb_tasks.csv")
    assert len(tasks) == 1 + 5
    md = (out / "report.md").read_text()
    assert "NITP improves 4 of 5 tasks over NTP (not improved: STS12 +0.00)" in md
    caveats = md.split("## Missing inputs")[1]
    assert "STS13" in caveats  # the results file's own `missing` list is reported,
    assert caveats.count("STS13") == 1  # once for both arms that share it
    assert "ntp-step-000200.json and nitp-step-000200.json list 1 MTEB task(s) not evaluated" in caveats


def test_geometry_cost_ce_tables(report):
    run, out = report
    geo = read_csv(out / "tables" / "geometry.csv")
    nitp = json.loads((run / "eval" / "geometry" / "nitp-step-000200.json").read_text())
    row = geo[2]
    assert row[0] == "NITP" and row[1] == "200"
    assert row[3] == "4"  # the last layer of the results' `layers`
    assert float(row[4]) == round(nitp["per_layer"]["erank_cov"][-1], 2)
    assert float(row[5]) == round(nitp["per_layer"]["erank_sv"][-1], 2)
    assert float(row[6]) == round(nitp["per_layer"]["anisotropy"][-1], 4)
    assert row[8] == f"{nitp['alignment']['cos_next']:.4f} (k=1)"
    assert row[-1] == "0.9000" and geo[1][-1] == "n/a"
    cost = read_csv(out / "tables" / "cost.csv")
    assert cost[1][2] == "1000.0" and cost[2][2] == "950.0"
    assert cost[2][4] == f"{100 * (1000 / 950 - 1):+.2f}%"
    assert cost[2][5] == "not recorded"  # no `flops` in the arm's provenance.json
    ce = read_csv(out / "tables" / "cross_entropy.csv")
    assert ce[1][3].startswith(f"{7.5 - 200 / 60:.4f}") and ce[2][4] == "+0.0020"


def test_figures_exist_and_are_images(report):
    _, out = report
    names = ["geometry_profiles", "cka", "dynamics", "aux_loss", "cross_entropy"]
    for name in names:
        png, pdf = out / "figures" / f"{name}.png", out / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
        assert f"figures/{name}.png" in (out / "report.md").read_text()


def test_report_lists_sources_and_missing(tmp_path):
    run = make_run(tmp_path)
    (run / "eval" / "mteb" / "nitp-step-000200.json").unlink()
    (run / "ntp" / "config.yaml").unlink()
    spec = spec_from_paths([run])
    spec.n_boot = 200
    spec.sections = ["mteb", "cost"]
    md = build_report(spec, tmp_path / "out", progress=False).read_text()
    missing = md.split("## Missing inputs")[1].split("## Sources")[0]
    assert "ntp/config.yaml" in missing
    sources = md.split("## Sources")[1]
    assert "eval/lm/nitp-step-000200.json" in sources and "mteb/ntp-step-000200.json" in sources
    assert "mteb/nitp-step-000200.json" not in sources
    assert "no mteb results for arm nitp" in missing


def test_tables_are_byte_deterministic(tmp_path):
    run = make_run(tmp_path)
    spec = spec_from_paths([run])
    spec.n_boot = 500
    spec.sections = ["downstream", "mteb", "cost", "ablation"]  # tables only: figures are not byte-compared
    a = build_report(spec, tmp_path / "a", progress=False).parent
    b = build_report(spec, tmp_path / "b", progress=False).parent
    files = sorted(p.relative_to(a) for p in (a / "tables").iterdir())
    assert len(files) == 3 * 5
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "report.md").read_text() == (b / "report.md").read_text().replace(
        str(tmp_path / "b"), str(tmp_path / "a")
    )


def test_flops_overhead_is_read_from_provenance_only(tmp_path):
    """The trainer records each arm's FLOPs (nitp_train.flops ... .to_dict()) in provenance.json; nothing is recomputed."""
    run = make_run(tmp_path)
    pair = json.loads((run / "pair.json").read_text())
    # a model recorded in pair.json is not enough: the report does not recompute from installed presets
    pair["shared"] = {"model": {"preset": "tiny-dense"}, "seq_len": 64}
    (run / "pair.json").write_text(json.dumps({**pair, "flops_overhead": {"nitp": 0.5}}))
    spec = spec_from_paths([run])
    spec.sections = ["cost"]
    md = build_report(spec, tmp_path / "a", progress=False).read_text()
    assert read_csv(tmp_path / "a" / "tables" / "cost.csv")[2][5:] == ["not recorded", "not recorded"]
    assert "no analytic FLOPs overhead for arm nitp: not recorded (nitp/provenance.json has no `flops`" in md
    flops = {"paper_overhead": 0.023, "exact_overhead": 0.0281, "params": 123}  # as FlopsReport.to_dict() has them
    (run / "nitp" / "provenance.json").write_text(json.dumps({"vocab_size": 1024, "flops": flops}))
    md = build_report(spec, tmp_path / "b", progress=False).read_text()
    assert read_csv(tmp_path / "b" / "tables" / "cost.csv")[2][5:] == ["+2.30%", "+2.81%"]
    assert f"{run}/nitp/provenance.json" in md.split("## Sources")[1]
    assert "FLOPs" not in md.split("## Missing inputs")[1].split("## Sources")[0]


def _cost_spec(run: Path):
    spec = spec_from_paths([run])
    spec.n_boot, spec.sections = 200, ["cost"]
    return spec


def test_refuses_to_overwrite(tmp_path):
    run = make_run(tmp_path)
    spec = _cost_spec(run)
    build_report(spec, tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="--overwrite"):
        build_report(spec, tmp_path / "out", progress=False)
    (tmp_path / "beside.txt").write_text("x")
    build_report(spec, tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "beside.txt").read_text() == "x"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["figures", "report.md", "tables"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="not a report dir: it holds precious.txt"):
        build_report(spec, tmp_path / "other", overwrite=True, progress=False)
    # a report dir someone added a file to is not replaced either, even with report.md present
    (tmp_path / "out" / "tables" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="tables/notes.txt"):
        build_report(spec, tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / "out" / "tables" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "other" / "precious.txt").exists()


def test_out_never_the_working_dir_a_parent_or_a_run_dir(tmp_path, monkeypatch):
    run = make_run(tmp_path / "runs")
    spec = _cost_spec(run)
    work = tmp_path / "work"
    work.mkdir()
    (work / "report.md").write_text("an old report")
    (work / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    for out, match in (
        (".", "working directory"),
        ("..", "working directory"),
        (run, "run dir"),
        (tmp_path / "runs", "run dir"),
    ):
        with pytest.raises(UserError, match=match):
            build_report(spec, out, overwrite=True, progress=False)
    assert (work / "thesis.tex").read_text() == "years of work" and (work / "report.md").exists()
    assert (run / "pair.json").exists() and (run / "ntp" / "metrics.jsonl").exists()
    (work / "a-file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build_report(spec, work / "a-file", overwrite=True, progress=False)
    assert (work / "a-file").read_text() == "x"


def test_cli_out_dot_with_overwrite_is_refused_and_deletes_nothing(tmp_path):
    import subprocess
    import sys

    run = make_run(tmp_path / "runs")
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "data.csv").write_text("1,2")
    r = subprocess.run(
        [sys.executable, "-m", "nitp_eval.cli", "report", str(run), "--out", ".", "--overwrite", "--sections", "cost"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "working directory" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "report.md", "runs"]


def test_spec_with_two_runs_and_ablation(tmp_path):
    a, b = make_run(tmp_path, "a", seed=1), make_run(tmp_path, "b", seed=2)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"""
title: Two sizes
runs:
  - {{path: {a}, label: Small}}
  - {{path: {b}, label: Large}}
sections: [downstream, ablation, geometry]
tasks: [arc_challenge, commonsense_qa]
bootstrap: {{n: 300, seed: 1}}
variants:
  - {{run: Small, arm: ntp, label: Baseline}}
  - {{run: Small, arm: nitp, label: NITP small}}
  - {{run: Large, arm: nitp, label: NITP large}}
""")
    spec = load_spec(spec_file)
    out = build_report(spec, tmp_path / "out", progress=False).parent
    rows = read_csv(out / "tables" / "downstream.csv")
    assert [r[0] for r in rows[1:]] == [
        "Small NTP",
        "Small NITP",
        "Δ Small NITP − NTP",
        "n Small",
        "Large NTP",
        "Large NITP",
        "Δ Large NITP − NTP",
        "n Large",
    ]
    assert rows[0] == ["Model", "ARC-C", "CSQA", "Avg."]
    abl = read_csv(out / "tables" / "ablation.csv")
    assert [r[0] for r in abl[1:]] == ["Baseline", "NITP small", "NITP large"]
    assert abl[1][-1] == "" and num(abl[2][-1]) == pytest.approx(num(abl[2][3]) - num(abl[1][3]), abs=0.011)
    assert (out / "figures" / "geometry_profiles-small.png").exists() and (out / "figures" / "cka-large.png").exists()
    # the same spec pointed at other run dirs: positional paths replace the spec's runs, labels kept
    assert load_spec(spec_file, [b, a]).runs == [{"path": str(b), "label": "Small"}, {"path": str(a), "label": "Large"}]


def test_spec_given_fewer_runs_labels_by_dir_and_says_what_was_dropped(tmp_path):
    a = make_run(tmp_path, "my-run", seed=1)
    spec = load_spec(Path(__file__).resolve().parent.parent / "analyses" / "table1.yaml", [a])
    assert spec.runs == [{"path": str(a), "label": "my-run"}]  # not "MoE 1.9B-A0.3B"
    spec.n_boot = 200
    md = build_report(spec, tmp_path / "out", progress=False).read_text()
    missing = md.split("## Missing inputs")[1]
    assert "spec run 'MoE 1.9B-A0.3B' (runs/moe-1.9b-a0.3b) replaced by" in missing
    assert "spec run 'MoE 3B-A0.5B' (runs/moe-3b-a0.5b) dropped" in missing
    assert "spec run 'MoE 9B-A1B' (runs/moe-9b-a1b) dropped" in missing
    assert "- **my-run**: " in md and "**MoE 1.9B-A0.3B**" not in md


@pytest.mark.parametrize(
    "text,match",
    [
        ("runs: [x]\nsections: [tables]\n", "unknown section"),
        ("runs: [x]\ncolour: red\n", "unknown key"),
        ("sections: [cost]\n", "no runs"),
        ("runs: [x]\nbootstrap: {ci: 95}\n", "bootstrap.ci"),
        ("runs: [x]\nstep: latest\n", "step: 'latest' is not a checkpoint step"),
        ("runs: [x]\nstep: 1.5\n", "not a checkpoint step"),
        ("runs: [x]\nstep: true\n", "not a checkpoint step"),
        ("runs: [x]\nbootstrap: {n: 10}\n", "at least 100"),
        ("runs: [x]\narms: ntp\n", "arms: give a non-empty list"),
    ],
)
def test_bad_specs_are_user_errors(tmp_path, text, match):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_spec(f)


def test_spec_step_null_or_int(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("runs: [x]\nstep: null\n")
    assert load_spec(f).step is None
    f.write_text("runs: [x]\nstep: 5000\n")
    assert load_spec(f).step == 5000


def test_not_a_run_dir(tmp_path):
    spec = spec_from_paths([tmp_path / "nope"])
    with pytest.raises(UserError, match="no such run dir"):
        build_report(spec, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a pair dir"):
        build_report(spec_from_paths([tmp_path / "empty"]), tmp_path / "out", progress=False)


SPECS = sorted((Path(__file__).resolve().parent.parent / "analyses").glob("*.yaml"))


SECTION_OUTPUTS = {
    "downstream": ["tables/downstream.csv"],
    "mteb": ["tables/mteb_groups.csv", "tables/mteb_tasks.csv"],
    "geometry": ["tables/geometry.csv", "figures/geometry_profiles.png", "figures/cka.png"],
    "dynamics": [
        "figures/dynamics.png",
        "figures/aux_loss.png",
        "figures/cross_entropy.png",
        "tables/cross_entropy.csv",
    ],
    "cost": ["tables/cost.csv"],
    "ablation": ["tables/ablation.csv"],
}


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_build_against_a_run(spec_file, tmp_path):
    spec = load_spec(spec_file)
    assert spec.runs and spec.sections and spec.title
    run = make_run(tmp_path)
    spec = load_spec(spec_file, [run] * len(spec.runs))  # one path per spec run: the spec's labels are kept
    spec.n_boot = 200
    out = build_report(spec, tmp_path / "out", progress=False).parent
    md = (out / "report.md").read_text()
    assert spec.title in md
    many = len(spec.runs) > 1
    for section in spec.sections:
        for f in SECTION_OUTPUTS[section]:
            if many and section != "downstream":  # per-run outputs carry the run's label
                f = f.replace(".", f"-{slug(spec.runs[0]['label'])}.", 1)
            assert (out / f).exists(), (section, f)
    if spec.variants:  # variants whose arms the run lacks are listed as missing
        assert "no lm results for" in md.split("## Missing inputs")[1]
        assert read_csv(out / "tables" / "ablation.csv")[1][0] == "NTP"


def test_paper_specs_cover_the_paper():
    stems = {p.stem for p in SPECS}
    assert {"table1", "table2", "table6", "figure1", "figure5", "ablation-target-layer", "ablation-design"} <= stems


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "nitp_eval.cli", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such run dir" in r.stderr
    assert not (tmp_path / "reports").exists()


def test_task_without_score_is_left_out_and_said(tmp_path):
    run = make_run(tmp_path)
    for arm in ("ntp", "nitp"):
        f = run / "eval" / "lm" / f"{arm}-step-000200.json"
        data = json.loads(f.read_text())
        data["tasks"]["some_tag"] = {"metrics": {}, "primary": None, "version": None, "n_samples": 0, "num_fewshot": 0}
        f.write_text(json.dumps(data))
    spec = spec_from_paths([run])
    spec.sections, spec.n_boot = ["downstream"], 200
    out = build_report(spec, tmp_path / "out", progress=False).parent
    assert read_csv(out / "tables" / "downstream.csv")[0] == ["Model", "CSQA", "ARC-C", "GSM8k", "Avg."]
    assert "task some_tag has no score (no primary metric); left out" in (out / "report.md").read_text()


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_nulls_and_nans_render_as_na(tmp_path):
    """Results files write NaN as null (nitp_eval.runs.write_json); metrics.jsonl may hold NaN."""
    run = make_run(tmp_path)
    geo = run / "eval" / "geometry" / "nitp-step-000200.json"

    def null_geometry(d):
        d["per_layer"]["erank_cov"][-1] = None
        d["per_layer"]["anisotropy"] = [None] * len(d["per_layer"]["anisotropy"])
        d["per_layer"]["cka_to_last"][2] = None
        d["cka_matrix"][0][1] = None
        d["alignment"].update(cos_next=None, projector_cos=None)
        d["tokens"] = None

    _edit(geo, null_geometry)

    def null_lm(d):
        d["tasks"]["gsm8k"]["metrics"]["exact_match"] = None  # the whole task: no score
        for r in d["samples"]["arc_challenge"][:10]:  # ten documents: no value
            r["acc_norm"] = None

    _edit(run / "eval" / "lm" / "nitp-step-000200.json", null_lm)

    def null_mteb(d):
        d["tasks"]["STS12"]["main_score"] = None
        d["groups"]["STS"]["mean"] = None

    _edit(run / "eval" / "mteb" / "ntp-step-000200.json", null_mteb)
    m = run / "nitp" / "metrics.jsonl"
    m.write_text(
        m.read_text().replace('"tokens_per_s": 950.0', '"tokens_per_s": NaN', 3)
        + '{"step": 201, "loss_ntp": NaN, "val_ce": NaN, "tokens_per_s": NaN}\n'
    )
    spec = spec_from_paths([run])
    spec.n_boot = 200
    out = build_report(spec, tmp_path / "out", progress=False).parent

    row = read_csv(out / "tables" / "geometry.csv")[2]
    assert row[0] == "NITP" and row[2] == "n/a" and row[4] == "n/a" and row[6] == "n/a"
    assert row[8] == "n/a" and row[9] == "n/a" and row[5] != "n/a"
    down = read_csv(out / "tables" / "downstream.csv")
    assert down[2][3] == "n/a" and down[3][3] == "n/a" and down[2][4].endswith("(2/3)")  # GSM8k, Avg.
    md = (out / "report.md").read_text()
    assert (
        "task gsm8k missing in nitp-step-000200.json" in md or "task gsm8k has no score in nitp-step-000200.json" in md
    )
    assert "arc_challenge: 290 documents scored by both arms" in md
    tasks = read_csv(out / "tables" / "mteb_tasks.csv")
    assert "STS12" not in [r[0] for r in tasks] and "no main_score (null) for STS12" in md
    ce = read_csv(out / "tables" / "cross_entropy.csv")
    assert ce[2][1] == "201" and ce[2][3].endswith("(step 200)")  # NaN val_ce skipped, not printed
    cost = read_csv(out / "tables" / "cost.csv")
    assert cost[2][2] == "950.0"  # the median of the finite tokens/s only
    for f in (out / "tables").glob("*.csv"):
        assert "nan" not in f.read_text().lower() and "None" not in f.read_text(), f.name
    for name in ("geometry_profiles", "cka", "dynamics", "aux_loss", "cross_entropy"):
        assert (out / "figures" / f"{name}.png").exists(), name


def test_ablation_says_why_a_task_is_left_out(tmp_path):
    run = make_run(tmp_path)
    _edit(run / "eval" / "lm" / "nitp-step-000200.json", lambda d: d["tasks"].pop("gsm8k"))
    f = tmp_path / "s.yaml"
    f.write_text(
        f"runs: [{run}]\nsections: [ablation]\ntasks: [arc_challenge, gsm8k, lcbench]\nbootstrap: {{n: 200}}\n"
        "variants:\n  - {run: tiny, arm: ntp, label: NTP}\n  - {run: tiny, arm: nitp, label: NITP}\n"
    )
    md = build_report(load_spec(f), tmp_path / "out", progress=False).read_text()
    assert "no variant has a score for lcbench" in md
    assert "gsm8k left out because 1 of 2 variants lack it: NITP" in md
    assert "some variant lacks" not in md
    assert read_csv(tmp_path / "out" / "tables" / "ablation.csv")[0] == ["Variant", "ARC-C", "Avg.", "Δ Avg. [95% CI]"]


NTP_BLUE, NITP_RED = "#1f77b4", "#d62728"


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report saves, inspected before it is written: {name: Figure}."""
    from nitp_eval.report import figures as F

    figs, save = {}, F.save

    def spy(fig, out_dir, name):
        figs[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(F, "save", spy)
    return figs


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def _arm_lines(fig) -> dict[str, set]:
    """Line styles drawn per arm colour (faint raw-value lines left out)."""
    from matplotlib.colors import to_hex

    styles = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if len(line.get_xdata()) and (line.get_alpha() or 1) > 0.5:
                styles.setdefault(to_hex(line.get_color()), set()).add(line.get_linestyle())
    return styles


def _png_pixels(path: Path, color: str, tol: float = 0.06) -> int:
    """Pixels of the PNG within `tol` of `color` (RGB in 0-1): is the arm's colour really drawn?"""
    import matplotlib.image
    from matplotlib.colors import to_rgb

    img = matplotlib.image.imread(path)[..., :3]
    return int((np.abs(img - np.array(to_rgb(color))).max(axis=-1) < tol).sum())


def test_figures_have_real_content(tmp_path, drawn):
    run = make_run(tmp_path)
    spec = spec_from_paths([run])
    spec.n_boot, spec.sections = 200, ["geometry", "dynamics"]
    out = build_report(spec, tmp_path / "out", progress=False).parent
    assert set(drawn) == {"geometry_profiles", "cka", "dynamics", "aux_loss", "cross_entropy", "trajectories"}
    for name, fig in drawn.items():
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.has_data(), (name, ax.get_title())  # no empty panel
            assert ax.get_legend() is None  # one figure legend, outside the axes
            if ax.get_xlabel().startswith(("training step", "layer")) and ax.get_xscale() == "linear":
                lo, hi = sorted(ax.get_xlim())  # steps and layers: integer ticks only
                ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
                assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        if name != "cka":
            assert len(fig.legends) == 1
        # both arms drawn, NTP solid and NITP dashed; the auxiliary loss exists for NITP only
        styles = _arm_lines(fig)
        if name not in ("cka", "aux_loss"):
            assert styles[NTP_BLUE] == {"-"}, name
        if name != "cka":
            assert styles[NITP_RED] == {"--"}, name
        png = out / "figures" / f"{name}.png"
        assert _png_pixels(png, NITP_RED) > 200, name
        if name != "aux_loss":
            assert _png_pixels(png, NTP_BLUE) > 200 or name == "cka", name
    # Fig. 1: probes and checkpoint geometry on separate rows, each titled with its token source
    dyn = drawn["dynamics"].axes
    assert len(dyn) == 4 and "probes" in dyn[0].get_title() and "eval/geometry" in dyn[2].get_title()
    assert "4,096 tokens" in dyn[2].get_title()
    # CE: the whole run and the difference to NTP (21 logged steps: too few for a zoom panel)
    ce = drawn["cross_entropy"].axes
    assert len(ce) == 2 and "Δ validation CE" in ce[1].get_title()


def test_long_run_zooms_on_the_end_and_smooths(tmp_path, drawn):
    run = make_run(tmp_path)
    rng = np.random.default_rng(0)
    for arm, shift in (("ntp", 0.0), ("nitp", 0.003)):
        recs = [
            {
                "step": s,
                "loss_ntp": 2 + 8 * math.exp(-s / 100) + shift + 0.05 * rng.normal(),
                "loss_nitp": 0.05 + 0.9 * math.exp(-s / 8) + 0.01 * rng.normal(),
                **({"val_ce": 2 + shift} if s % 100 == 0 else {}),
            }
            for s in range(1, 1001)
        ]
        (run / arm / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    spec = spec_from_paths([run])
    spec.sections = ["dynamics"]
    build_report(spec, tmp_path / "out", progress=False)
    whole, zoom, delta = drawn["cross_entropy"].axes
    assert zoom.get_xlim()[0] == pytest.approx(1 + 0.8 * 999)
    lo, hi = zoom.get_ylim()
    assert 1.95 < lo < 2.0 < 2.003 < hi < 2.05  # scaled to the end of training, where the arms differ by 0.003
    faint = [line for line in whole.get_lines() if (line.get_alpha() or 1) < 0.5]
    bold = [line for line in whole.get_lines() if (line.get_alpha() or 1) == 1 and len(line.get_xdata()) == 1000]
    assert len(faint) == 2 and len(bold) == 2  # raw per-step losses faint, smoothed ones on top
    for line in bold:  # smoothing takes out most of the step-to-step noise at the end
        y = np.asarray(line.get_ydata())[-200:]
        assert np.std(np.diff(y)) < 0.2 * 0.05 * np.sqrt(2)
    assert len(drawn["aux_loss"].axes) == 2  # whole run and the last 20 %


def test_panels_without_data_say_so(tmp_path, drawn):
    run = make_run(tmp_path)
    for arm in ("ntp", "nitp"):
        m = run / arm / "metrics.jsonl"
        recs = [json.loads(line) for line in m.read_text().splitlines()]
        for r in recs:
            r.pop("probe_cosine", None)
            r.pop("val_ce", None)
        m.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for f in (run / "eval" / "geometry").iterdir():
        f.unlink()
    spec = spec_from_paths([run])
    spec.sections = ["dynamics"]
    md = build_report(spec, tmp_path / "out", progress=False).read_text()
    dyn = drawn["dynamics"].axes
    assert len(dyn) == 2 and dyn[0].has_data()  # only the probe row
    assert not dyn[1].has_data() and "no data" in _texts(dyn[1]) and "probe_cosine" in _texts(dyn[1])
    missing = md.split("## Missing inputs")[1]
    assert "no probe_cosine in in-training probes" in missing
    assert "no values from checkpoints (eval/geometry" in missing
    assert "no val_ce in any metrics.jsonl: the cross-entropy figure shows train loss only" in missing
    ce = drawn["cross_entropy"].axes  # without val_ce the difference panel shows the paired train-loss difference
    assert len(ce) == 2 and all(ax.has_data() for ax in ce) and "train NTP loss" in ce[1].get_title()


def test_short_run_has_integer_step_ticks(tmp_path, drawn):
    run = make_run(tmp_path)
    for arm in ("ntp", "nitp"):
        recs = [
            {
                "step": s,
                "loss_ntp": 7 - 0.1 * s,
                "loss_nitp": 0.9 - 0.1 * s,
                "val_ce": 7 - 0.1 * s,
                "probe_erank": 10 + s,
                "probe_cosine": 0.1 * s,
                "tokens_per_s": 100.0,
            }
            for s in range(1, 7)
        ]
        (run / arm / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    spec = spec_from_paths([run])
    spec.sections = ["dynamics"]
    build_report(spec, tmp_path / "out", progress=False)
    for name in ("dynamics", "aux_loss", "cross_entropy"):
        for ax in drawn[name].axes:
            if ax.has_data():
                lo, hi = ax.get_xlim()
                ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
                assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)


def test_subsampled_and_degenerate_scores_say_what_they_are(tmp_path):
    """A --limit score shows its n of N; a task answered with one letter is flagged beside its majority baseline."""
    from nitp_eval.lm.evaluate import answer_concentration

    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, 50)
    for arm, picks in (("ntp", np.zeros(50, int)), ("nitp", rng.integers(0, 5, 50))):
        res = _lm(arm, 200, {"commonsense_qa": (picks == gold).astype(int).tolist()})
        recs = res["samples"]["commonsense_qa"]
        for r, g, p in zip(recs, gold, picks):
            r["target"] = int(g)
            r["loglikelihoods"] = [0.0 if i == p else -1.0 for i in range(5)]
        res["tasks"]["commonsense_qa"]["n_docs"] = 1221
        res["tasks"]["commonsense_qa"]["answers"] = answer_concentration(recs, "acc_norm")
        _write(run / "eval" / "lm" / f"{arm}-step-000200.json", res)
    out = build_report(spec_from_paths([run]), tmp_path / "out", progress=False).parent
    rows = {r[0]: r for r in read_csv(out / "tables" / "downstream.csv")}
    assert rows["n"][1] == "50 of 1221"
    majority = np.bincount(gold).max() / 50  # always answering the most frequent gold answer
    assert num(rows["Majority answer"][1]) == shown(majority)
    at_or_below = "≤" if shown(float(np.mean(gold == 0))) <= shown(majority) else ""
    assert rows["NTP"][1] == f"{shown(float(np.mean(gold == 0))):.2f}!{at_or_below}"  # one answer to every question
    assert not rows["NITP"][1].endswith("!")
    md = (out / "report.md").read_text()
    assert "NTP gives answer 0 to 100% of the 50 commonsense_qa questions" in md and "paper-cloze" in md
    assert "commonsense_qa scored on --limit subsamples (row n): not full evaluations" in md


def test_answer_concentration_by_hand():
    from nitp_eval.lm.evaluate import answer_concentration

    mc = [{"loglikelihoods": [-1, -2, -3], "target": t} for t in (0, 0, 1, 2)]
    mc[3]["loglikelihoods"] = [-3, -1, -2]
    a = answer_concentration(mc, "acc")
    assert a == {
        "n": 4,
        "top_answer": 0,
        "top_share": 0.75,
        "majority_answer": "0",
        "majority_baseline": 0.5,
        "degenerate": False,
    }
    gen = [{"extracted": {"flexible-extract": "7", "strict-match": "[invalid]"}, "target": "7"} for _ in range(10)]
    g = answer_concentration(gen, "exact_match,flexible-extract")
    assert g["top_answer"] == "7" and g["top_share"] == 1.0 and g["degenerate"]
    assert answer_concentration([{"doc_id": 1}], "acc") is None


def test_geometry_dominated_by_a_few_tokens_is_flagged(tmp_path):
    """The console's massive-activation note reaches the report's caveats, naming layers and positions."""
    run = tmp_path / "run"
    for arm in ("ntp", "nitp"):
        g = _geometry(arm, 200, 1.0)
        L = len(g["layers"])
        big = [1, 2] if arm == "nitp" else []
        g["per_layer"] |= {
            "norm_median": [10.0] * L,
            "norm_max": [2000.0 if i in big else 15.0 for i in range(L)],
            "top1pct_share": [0.97 if i in big else 0.012 for i in range(L)],
            "outlier_positions": [{"0": 16} if i in big else {} for i in range(L)],
        }
        g["massive"] = {"k": 20.0, "dominated_share": 0.5, "dominated_layers": big, "excluded": {}}
        _write(run / "eval" / "geometry" / f"{arm}-step-000200.json", g)
    spec = spec_from_paths([run])
    spec.sections = ["geometry"]
    md = build_report(spec, tmp_path / "out", progress=False).read_text()
    caveats = md.split("## Missing inputs")[1]
    assert "nitp-step-000200.json: in layers 1-2 the top 1 % of tokens carry >= 50% of the squared norms" in caveats
    assert "max 200 x the median" in caveats and "window positions 0 (16 tokens)" in caveats
    assert "ntp-step-000200.json: in layers" not in caveats
