"""A single pair's report says what it showed and no more: degenerate tasks out of the average, no bold on
ties or at-baseline scores, generation caps beside the scores, a verdict per paper claim, --label, and a
folder that is not a pair refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_report_build import _write, make_run, num, read_csv

from nitp_eval.report.build import build_report
from nitp_eval.report.spec import spec_from_paths


def _degenerate_run(tmp_path):
    """make_run's pair, with GSM8k a capped generation task scoring 0 in both arms and CSQA answered 'A' always."""
    run = make_run(tmp_path)
    for arm in ("ntp", "nitp"):
        f = run / "eval" / "lm" / f"{arm}-step-000200.json"
        d = json.loads(f.read_text())
        g = d["tasks"]["gsm8k"]
        g["metrics"]["exact_match"] = 0.0
        g.update(output_type="generate_until", generation_kwargs={"max_gen_toks": 32})
        d["samples"]["gsm8k"] = [{**r, "exact_match": 0} for r in d["samples"]["gsm8k"]]
        d["tasks"]["commonsense_qa"]["answers"] = {"n": 300, "top_answer": "A", "top_share": 1.0,
                                                   "majority_baseline": 0.9, "degenerate": True}  # fmt: skip
        d["tasks"]["arc_challenge"]["answers"] = {"n": 300, "top_answer": "B", "top_share": 0.4,
                                                  "majority_baseline": 0.2, "degenerate": False}  # fmt: skip
        _write(f, d)
    return run


def test_degenerate_tasks_leave_the_average_and_caps_are_shown(tmp_path):
    run = _degenerate_run(tmp_path)
    md = build_report(spec_from_paths([run]), tmp_path / "out", progress=False)
    rows = read_csv(md.parent / "tables" / "downstream.csv")
    res = {a: json.loads((run / "eval" / "lm" / f"{a}-step-000200.json").read_text()) for a in ("ntp", "nitp")}
    arc = {a: res[a]["tasks"]["arc_challenge"]["metrics"]["acc_norm"] for a in res}
    assert rows[0] == ["Model", "CSQA", "ARC-C", "GSM8k", "Avg."]
    for row, arm in zip(rows[1:3], ("ntp", "nitp")):
        assert num(row[4].split()[0]) == round(100 * arc[arm], 2)  # the average is ARC-C alone
        assert row[1].endswith("!≤") and row[3].endswith("!")  # degenerate; CSQA also at/below its baseline (0.9)
    cap = next(r for r in rows if r[0] == "Generation cap")
    assert cap[3] == "32 tok" and cap[1] == ""
    text = md.read_text()
    assert "Avg. leaves out the degenerate task(s) CSQA" in text and "GSM8k (scores 0 in every arm)" in text
    assert "too few for a worked answer" in text
    # bold: never a tie (GSM8k 0.00 vs 0.00), never at or below the majority baseline (CSQA)
    table = (md.parent / "tables" / "downstream.md").read_text().splitlines()
    assert not any(c.strip().startswith("**") for line in table[2:4] for c in (line.split("|")[2], line.split("|")[4]))


def test_the_pair_verdict_states_each_claim_with_its_direction(tmp_path):
    run = make_run(tmp_path)
    md = build_report(spec_from_paths([run]), tmp_path / "out", progress=False)
    verdict = md.read_text().split("\n\n")[1]
    assert verdict.startswith("**Verdict.** One training seed. What this pair showed, claim by claim:")
    geo = {a: json.loads((run / "eval" / "geometry" / f"{a}-step-000200.json").read_text()) for a in ("ntp", "nitp")}
    er = {a: geo[a]["per_layer"]["erank_cov"][-1] for a in geo}
    assert f"last-layer effective rank higher: NITP {er['nitp']:.2f} vs NTP {er['ntp']:.2f}" in verdict
    assert "downstream average higher:" in verdict and "paired bootstrap over documents" in verdict
    assert "validation CE preserved: NITP" in verdict and "Why one pair cannot settle any of it" in verdict
    assert "(no interval: one measurement)" in verdict


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nitp_eval.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)  # fmt: skip


def test_label_names_runs_and_a_folder_of_one_run_is_refused(tmp_path):
    run = make_run(tmp_path)
    res = _cli("report", run, run, "--label", "first", "--label", "second", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "o" / "report.md").read_text()
    assert "**first**" in text and "**second**" in text
    res = _cli("report", run, run, "--out", tmp_path / "o2")
    assert res.returncode == 2 and "--label" in res.stderr and "Traceback" not in res.stderr
    folder = tmp_path / "runs"  # a dir holding one single-arm run: not a pair
    arm = folder / "my-run"
    arm.mkdir(parents=True)
    (arm / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss_ntp": np.float64(1.0).item()}) + "\n")
    res = _cli("report", folder, "--out", tmp_path / "o3")
    assert res.returncode == 2 and "not a pair" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o3").exists()


@pytest.mark.parametrize("name", ["replication-cpu", "replication-cpu-fig1"])
def test_the_shipped_study_report_rebuilds_byte_identically(tmp_path, name):
    """reports/<name>/ is what `nitp-eval report --spec analyses/<name>.yaml` builds from its committed results
    files: every table, figure (PDF metadata pinned) and, with full git history, report.md."""
    import os

    from conftest import REPO

    from nitp_eval.report.spec import load_spec

    shipped = REPO / "reports" / name
    if not (shipped / "report.md").is_file():
        pytest.skip(f"reports/{name} has no report yet (its study has not finished)")
    spec = load_spec(REPO / "analyses" / f"{name}.yaml")
    spec.source = f"analyses/{name}.yaml"  # as the report prints it (relative to the repo)
    cwd = os.getcwd()
    os.chdir(REPO)  # the report names its sources relative to where it is built
    try:
        md = build_report(spec, tmp_path / "rebuilt", progress=False)
    finally:
        os.chdir(cwd)
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file() and "results" not in p.parts)
    shallow = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True).stdout.strip() != "false"  # fmt: skip
    for f in files:
        if f.name == "report.md" and shallow:  # its pre-registration sentence reads the git history
            continue
        assert (md.parent / f).read_bytes() == (shipped / f).read_bytes(), f


def test_the_further_representation_metrics_reach_tables_rows_and_figures(tiny_run, tmp_path):
    """Real geometry results (schema 2) of a real pair: the pair report has the metrics table, profiles and
    trajectories; a study of it has exploratory rows for each metric (never primary)."""
    import shutil

    from nitp_eval.report.load import Study, load_run
    from nitp_eval.report.study_rows import collect_rows

    pair = tmp_path / "pair"
    shutil.copytree(tiny_run, pair, ignore=shutil.ignore_patterns("data"))
    res = _cli("geometry", pair, "--all-steps", "--tokens", "600", "--seq-len", "64")
    assert res.returncode == 0, res.stderr[-2000:]
    md = build_report(spec_from_paths([pair]), tmp_path / "out", progress=False)
    table = read_csv(md.parent / "tables" / "geometry_metrics.csv")
    assert table[0][2:] == ["RankMe", "α-ReQ (spectral decay)", "TwoNN intrinsic dimension", "prompt entropy",
                            "dataset entropy", "curvature (rad)", "unembedding effective rank",
                            "last-layer variance in the head's top directions"]  # fmt: skip
    geo = json.loads((pair / "eval" / "geometry" / "nitp-step-000006.json").read_text())
    nitp = next(r for r in table if r[0] == "NITP")
    assert num(nitp[2]) == round(geo["per_layer"]["rankme"][-1], 2)
    assert num(nitp[8]) == round(geo["unembedding"]["erank"], 2)
    for fig in ("metric_profiles", "trajectories"):
        assert (md.parent / "figures" / f"{fig}.png").is_file(), fig
    rows = {r.key: r for r in collect_rows(Study(pair, "p", None, {0: load_run(pair)}), spec_from_paths([pair]), [])}
    for key in ("last_rankme", "last_alpha_req", "last_twonn", "last_curvature", "unembedding_erank"):
        assert key in rows and rows[key].other[0] == pytest.approx(
            geo["unembedding"]["erank"] if key == "unembedding_erank" else geo["per_layer"][key[5:]][-1]
        )
