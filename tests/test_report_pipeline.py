"""nitp-eval report on results the real commands wrote for a real tiny trainer run: every number in the
tables must be the number in the results files, every figure a non-empty image."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ARMS = ("ntp", "nitp")


def nitp_eval(*args, cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "nitp_eval.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def copy_run(tiny_run: Path, dest: Path) -> Path:
    """A private copy (the session's tiny_run is shared with other tests): configs, metrics, checkpoints."""
    return Path(shutil.copytree(tiny_run, dest / "tiny", ignore=shutil.ignore_patterns("data", "eval")))


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def num(cell: str) -> float:
    return float(cell.split()[0].rstrip("*"))


def results(run: Path, kind: str, arm: str, step: int) -> dict:
    return json.loads((run / "eval" / kind / f"{arm}-step-{step:06d}.json").read_text())


def check_downstream(run: Path, out: Path, step: int) -> None:
    table = rows(out / "tables" / "downstream.csv")
    res = {a: results(run, "lm", a, step) for a in ARMS}
    paper_order = ("mmlu_pro", "c3", "commonsense_qa", "arc_challenge", "gsm8k")  # Table 1's column order
    tasks = [t for t in paper_order if t in res["ntp"]["tasks"]]
    assert len(tasks) == len(res["ntp"]["tasks"])
    names = {"arc_challenge": "ARC-C", "commonsense_qa": "CSQA"}
    assert table[0] == ["Model", *[names[t] for t in tasks], "Avg."]
    for row, arm in zip(table[1:3], ARMS):
        vals = [res[arm]["tasks"][t]["metrics"][res[arm]["tasks"][t]["primary"]] for t in tasks]
        assert [num(c) for c in row[1:-1]] == [round(100 * v, 2) for v in vals]
        assert num(row[-1]) == round(100 * float(np.mean(vals)), 2)
    for cell, t in zip(table[3][1:-1], tasks):
        p = res["ntp"]["tasks"][t]["primary"]
        assert num(cell) == round(100 * (res["nitp"]["tasks"][t]["metrics"][p] - res["ntp"]["tasks"][t]["metrics"][p]), 2)
        assert "[" in cell  # the real command keeps per-sample records: every delta has a CI


def check_geometry(run: Path, out: Path, step: int) -> None:
    table = rows(out / "tables" / "geometry.csv")
    for row, arm in zip(table[1:], ARMS):
        g = results(run, "geometry", arm, step)
        assert row[1] == str(step) and row[2] == str(g["tokens"])
        pl = g["per_layer"]
        assert row[3] == str(g["layers"][-1])
        assert [float(x) for x in row[4:8]] == [round(pl["erank_cov"][-1], 2), round(pl["erank_sv"][-1], 2),
                                                round(pl["anisotropy"][-1], 4), round(pl["anisotropy_exact"][-1], 4)]
        assert num(row[8]) == round(g["alignment"]["cos_next"], 4)
    assert table[2][9] == f"{results(run, 'geometry', 'nitp', step)['alignment']['projector_cos']:.4f}"


def check_training(run: Path, out: Path) -> None:
    ce, cost = rows(out / "tables" / "cross_entropy.csv"), rows(out / "tables" / "cost.csv")
    for i, arm in enumerate(ARMS, start=1):
        recs = [json.loads(l) for l in (run / arm / "metrics.jsonl").read_text().splitlines()]
        val = [r["val_ce"] for r in recs if "val_ce" in r][-1]
        assert num(ce[i][3]) == round(val, 4)
        assert num(ce[i][2]) == round(float(np.mean([r["loss_ntp"] for r in recs][-10:])), 4)
        assert num(cost[i][2]) == round(float(np.median([r["tokens_per_s"] for r in recs])), 1)
    assert cost[2][5].endswith("%") and cost[2][5] != "n/a"  # analytic overhead from nitp_train.flops


def check_figures(out: Path, names: list[str]) -> None:
    md = (out / "report.md").read_text()
    for name in names:
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert f"figures/{name}.png" in md


def test_report_from_real_commands(tiny_run, shared_data, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    nitp_eval("geometry", run, "--all-steps", "--tokens", 1024, "--seq-len", 64, "--cka-matrix", cwd=tmp_path)
    nitp_eval("lm", run, "--tasks", "arc_challenge", "--data-dir", shared_data / "lm", "--limit", 12, cwd=tmp_path)
    nitp_eval("report", run, "--out", tmp_path / "report", "--n-boot", 1000, cwd=tmp_path)
    out = tmp_path / "report"
    step = 6
    check_downstream(run, out, step)
    check_geometry(run, out, step)
    check_training(run, out)
    check_figures(out, ["geometry_profiles", "cka", "dynamics", "aux_loss", "cross_entropy"])
    md = (out / "report.md").read_text()
    assert "eval/mteb/ (no mteb results" in md.split("## Missing inputs")[1]  # not run here: reported, not skipped
    assert f"`{run}/eval/lm/nitp-step-000006.json`" in md.split("## Sources")[1]
    # regenerating gives the same tables, byte for byte
    nitp_eval("report", run, "--out", tmp_path / "again", "--n-boot", 1000, cwd=tmp_path)
    for f in (out / "tables").iterdir():
        assert f.read_bytes() == (tmp_path / "again" / "tables" / f.name).read_bytes(), f.name


@pytest.mark.slow
def test_full_pipeline_with_mteb(tiny_run, shared_data, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    nitp_eval("geometry", run, "--all-steps", "--tokens", 2048, "--seq-len", 64, cwd=tmp_path)
    nitp_eval("lm", run, "--tasks", "arc_challenge,commonsense_qa", "--data-dir", shared_data / "lm", "--limit", 30,
              cwd=tmp_path)
    nitp_eval("mteb", run, "--tasks", "STSBenchmark,TwitterURLCorpus,EmotionClassification", "--data-dir",
              shared_data / "mteb", "--limit", 60, cwd=tmp_path)
    nitp_eval("report", run, "--out", tmp_path / "report", cwd=tmp_path)
    out = tmp_path / "report"
    check_downstream(run, out, 6)
    check_geometry(run, out, 6)
    check_training(run, out)
    res = {a: results(run, "mteb", a, 6) for a in ARMS}
    groups = {r[0].split(" (")[0]: r for r in rows(out / "tables" / "mteb_groups.csv")[1:]}
    for g, r in groups.items():
        src = [res[a]["overall"] if g == "Overall" else res[a]["groups"][g] for a in ARMS]
        assert r[0] == f"{g} ({src[0]['n']} of {src[0]['of']})"
        assert [num(c) for c in r[1:3]] == [round(100 * s["mean"], 2) for s in src]
    per_task = rows(out / "tables" / "mteb_tasks.csv")
    assert len(per_task) == 1 + 3
    for r in per_task[1:]:
        assert [num(c) for c in r[3:5]] == [round(100 * res[a]["tasks"][r[0]]["main_score"], 2) for a in ARMS]
    check_figures(out, ["geometry_profiles", "dynamics", "aux_loss", "cross_entropy"])
