"""Studies: seed-aware intervals against independent references, study dirs through every command,
and `nitp-eval replicate` end to end (train, evaluate, collect, report, resume, rebuild from results)."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nitp_eval.report.build import build_report
from nitp_eval.report.spec import spec_from_paths
from nitp_eval.report.stats import hierarchical_bootstrap, seed_delta, seed_interval

T975 = {2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977987}  # Student t 0.975 quantiles (tables)


# --- the intervals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("deltas", [[0.1, -0.3, 0.25], [1.0, 2.0, 3.5, 0.5], [0.01, 0.02, 0.0, 0.05, -0.01]])
def test_seed_interval_is_the_student_t_interval(deltas):
    d = np.array(deltas)
    half = T975[len(d) - 1] * d.std(ddof=1) / np.sqrt(len(d))
    lo, hi = seed_interval(d)
    assert lo == pytest.approx(d.mean() - half, rel=1e-9) and hi == pytest.approx(d.mean() + half, rel=1e-9)


def test_identical_arms_give_intervals_containing_zero_and_no_verdict():
    rng = np.random.default_rng(0)
    pairs = [[(x, x.copy())] for x in (rng.random(200) for _ in range(3))]
    d = seed_delta([0.0, 0.0, 0.0], pairs)
    assert d.seed_ci == (0.0, 0.0) and d.nested_ci == (0.0, 0.0)
    assert d.verdict() == "not resolved at n = 3 seeds"


def test_a_constant_shift_gives_exactly_that_interval():
    rng = np.random.default_rng(1)
    pairs = [[(x, x + 0.25)] for x in (rng.random(150) for _ in range(3))]
    d = seed_delta([0.25] * 3, pairs)
    assert d.seed_ci == pytest.approx((0.25, 0.25), abs=1e-12)
    assert d.nested_ci == pytest.approx((0.25, 0.25), abs=1e-12)
    assert d.verdict() == "resolved: NITP higher" and d.k_higher == 3
    assert seed_delta([-0.5] * 4).verdict("X") == "resolved: X lower"


def test_one_seed_never_resolves():
    d = seed_delta([0.4])
    assert d.seed_ci is None and d.verdict() == "not resolved at n = 1 seed"


def test_hierarchical_bootstrap_matches_the_exact_seed_distribution():
    """Documents without spread inside a seed: only the seed level is random, and resampling 3 seeds with
    replacement has 27 equally likely outcomes whose means give the exact percentiles."""
    means = [0.1, 0.4, 1.0]
    pairs = [[(np.zeros(50), np.full(50, m))] for m in means]
    exact = np.sort([np.mean(c) for c in itertools.product(means, repeat=3)])
    lo, hi = hierarchical_bootstrap(pairs, n_boot=20_000, seed=3)
    # the percentile of a 27-point distribution: bootstrap quantiles fall on one of its values or between
    assert exact[0] <= lo <= exact[1] + 1e-9 and exact[-2] - 1e-9 <= hi <= exact[-1]


def test_hierarchical_bootstrap_matches_an_independent_two_level_resampling():
    rng = np.random.default_rng(5)
    pairs = [[(rng.random(n), rng.random(n) + shift)] for n, shift in ((80, 0.05), (120, 0.0), (60, 0.1))]
    ours = hierarchical_bootstrap(pairs, n_boot=20_000, seed=0)
    ref_rng = np.random.default_rng(123)
    diffs = [b - a for [(a, b)] in pairs]
    reps = []
    for _ in range(20_000):  # seeds with replacement, then documents with replacement within each drawn seed
        drawn = ref_rng.integers(0, 3, size=3)
        reps.append(np.mean([diffs[s][ref_rng.integers(0, len(diffs[s]), len(diffs[s]))].mean() for s in drawn]))
    ref = np.quantile(reps, [0.025, 0.975])
    assert ours == pytest.approx(tuple(ref), abs=0.01)
    # it is wider than the documents-only view of the same data: seed-to-seed spread counts
    assert ours[1] - ours[0] > 0.05


# --- a study report on hand-made results -----------------------------------------------------------


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


HEAD = {"schema_version": 1, "settings": {"tokens": 4096, "seq_len": 256}, "versions": {}, "git": None}


def make_study(root: Path, val_delta: list[float], doc_shift: list[float], erank_delta: list[float]) -> Path:
    """Three seeds whose NITP - NTP differences are the given per-seed values (val CE, lm docs, erank)."""
    rng = np.random.default_rng(0)
    for s, (dv, ds, de) in enumerate(zip(val_delta, doc_shift, erank_delta)):
        pair = root / f"seed-{s}"
        _json(pair / "pair.json", {"seed": s, "arms": {"ntp": {}, "nitp": {}}, "paired": {"init_weights_sha256": True}})
        docs = rng.random(100)
        for arm in ("ntp", "nitp"):
            nitp = arm == "nitp"
            (pair / arm).mkdir(parents=True, exist_ok=True)
            (pair / arm / "config.yaml").write_text(yaml.safe_dump({
                "model": {"preset": "tiny-dense"}, "steps": 20, "global_batch": 4, "seq_len": 8, "seed": s,
                "data": {"path": "corpus/*.jsonl", "tokenizer": "train:512"}, "optim": {"warmup_steps": 2},
                "objective": {"name": arm, "lambda": 1.0, "target_layer": 2},
            }))  # fmt: skip
            _json(pair / arm / "provenance.json", {"seed": s, "trainer_git": "abc123def4567890", "data_sha256": "d",
                                                   "init_weights_sha256": f"init-{s}", "vocab_size": 512,
                                                   "flops": {"paper_baseline": 6e6, "paper_overhead": 0.02}})  # fmt: skip
            base_val = 5.0 + 0.1 * s
            _jsonl(pair / arm / "metrics.jsonl", [
                {"step": t, "loss_ntp": 6.0 - t / 10, "tokens_per_s": 100.0, "elapsed_s": float(t),
                 **({"val_ce": base_val + (dv if nitp else 0.0)} if t in (10, 20) else {}),
                 **({"probe_erank": 20.0 + s + (de if nitp else 0.0), "probe_cosine": 0.3} if t % 5 == 0 else {})}
                for t in range(1, 21)
            ])  # fmt: skip
            values = docs + (ds if nitp else 0.0)
            _json(pair / "eval" / "lm" / f"{arm}-step-000020.json", {
                "schema": "nitp.lm", **HEAD, "arm": arm, "step": 20,
                "tasks": {"arc_challenge": {"metrics": {"acc_norm": float(values.mean())}, "primary": "acc_norm",
                                            "n_samples": 100}},
                "samples": {"arc_challenge": [{"doc_id": i, "acc_norm": float(v)} for i, v in enumerate(values)]},
            })  # fmt: skip
            erank = [10.0, 15.0 + s + (de if nitp else 0.0)]
            _json(pair / "eval" / "geometry" / f"{arm}-step-000020.json", {
                "schema": "nitp.geometry", **HEAD, "arm": arm, "step": 20, "tokens": 4096, "layers": [0, 2],
                "per_layer": {"erank_cov": erank, "anisotropy": [0.1, 0.2]}, "alignment": {"cos_next": 0.1},
            })  # fmt: skip
    _json(root / "study.json", {"seeds": [0, 1, 2]})
    return root


def _rows(report: Path, table: str = "seeds") -> dict[str, list[str]]:
    with open(report / "tables" / f"{table}.csv", newline="") as f:
        rows = list(csv.reader(f))
    return {r[0]: r for r in rows[1:] if r}


def test_study_report_rows_equal_hand_computed_deltas(tmp_path):
    val, shift, erank = [-0.02, -0.05, 0.01], [0.03, 0.05, 0.04], [2.0, 3.0, 4.0]
    study = make_study(tmp_path / "study", val, shift, erank)
    md = build_report(spec_from_paths([study]), tmp_path / "out", progress=False)
    rows = _rows(md.parent)
    ce = rows["Training: validation CE (last common step)"]
    assert ce[3] == ", ".join(f"{d:+.4f}" for d in val)
    lo, hi = (
        np.mean(val) - T975[2] * np.std(val, ddof=1) / np.sqrt(3),
        np.mean(val) + T975[2] * np.std(val, ddof=1) / np.sqrt(3),
    )
    assert ce[5] == f"[{lo:+.4f}, {hi:+.4f}]" and ce[7] == "1 of 3" and ce[8] == "not resolved at n = 3 seeds"
    arc = rows["Downstream: ARC-C"]  # every document shifted by the seed's shift: Δ in points
    assert arc[3] == "+3.00, +5.00, +4.00" and arc[4] == "+4.00" and arc[7] == "3 of 3"
    nested = [float(x) for x in arc[6].strip("[]").split(",")]
    assert 3.0 - 1e-9 <= nested[0] < nested[1] <= 5.0 + 1e-9  # between the smallest and largest seed's shift
    g = rows["Geometry (last layer): effective rank"]
    assert g[3] == "+2.00, +3.00, +4.00" and g[8] == "resolved: NITP higher"  # t CI of 2,3,4 is [0.52, 5.48]
    layer = _rows(md.parent, "seeds_per_layer")["layer 0"]
    assert layer[3] == "+0.00, +0.00, +0.00" and layer[8] == "not resolved at n = 3 seeds"
    text = md.read_text()
    first = text.split("\n\n")[1]
    assert first.startswith("**Verdict.** Over n = 3 seeds") and "Scale: 1.0M parameters" in first
    setup = text.split("\n\n")[2]
    for fact in ("Preset `tiny-dense`", "20 steps × 4 × 8 = 640 tokens", "`corpus/*.jsonl`", "`train:512`",
                 "λ = 1.0, target layer 2", "3 seeds (0, 1, 2)", "`abc123def456`"):  # fmt: skip
        assert fact in setup, fact
    assert (md.parent / "figures" / "dynamics.png").is_file()


def test_a_pair_report_says_its_intervals_cover_evaluation_noise_only(tmp_path):
    study = make_study(tmp_path / "study", [0.0] * 3, [0.1] * 3, [1.0] * 3)
    md = build_report(spec_from_paths([study / "seed-0"]), tmp_path / "out", progress=False)
    text = md.read_text()
    assert text.split("\n\n")[1].startswith("**Verdict.** One training seed")
    assert "cover evaluation (document) noise only, not training-seed noise" in text  # the downstream table note


def test_resumed_and_negative_overhead_costs_are_flagged(tmp_path):
    study = make_study(tmp_path / "study", [0.0] * 3, [0.0] * 3, [0.0] * 3)
    nitp = study / "seed-0" / "nitp" / "metrics.jsonl"
    recs = [json.loads(x) for x in nitp.read_text().splitlines()]
    for r in recs:  # a second session from step 11, and faster than NTP
        r["elapsed_s"] = float(r["step"] if r["step"] <= 10 else r["step"] - 10)
        r["tokens_per_s"] = 120.0
    _jsonl(nitp, recs)
    md = build_report(spec_from_paths([study]), tmp_path / "out", progress=False)
    text = md.read_text()
    assert "nitp was resumed (2 sessions)" in text and "measured overhead of nitp is negative" in text
    cost = list(csv.reader(open(md.parent / "tables" / "cost.csv")))
    seed0 = next(r for r in cost if r[0].endswith("seed 0 NITP"))
    assert seed0[3] == "20.0" and seed0[4].endswith("!")  # wall-clock 10 + 10 s over both sessions


def test_a_study_and_a_pair_are_not_mixed(tmp_path):
    study = make_study(tmp_path / "study", [0.0] * 3, [0.0] * 3, [0.0] * 3)
    res = subprocess.run([sys.executable, "-m", "nitp_eval.cli", "report", str(study), str(study / "seed-1"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "report them separately" in res.stderr and "Traceback" not in res.stderr


# --- a real study through every command -------------------------------------------------------------


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nitp_eval.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)  # fmt: skip


def test_replicate_trains_evaluates_collects_reports_and_resumes(tmp_path, tiny_sets, tiny_corpus):
    from conftest import REPO

    train = dict(s.split("=", 1) for s in tiny_sets)
    train.update({"data.path": str(tiny_corpus), "steps": 4, "save_every": 2, "eval_every": 2, "probe_every": 2})
    report = tmp_path / "reports" / "study"
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "title": "a tiny study",
        "study": {"out": str(tmp_path / "runs" / "study"), "preset": "tiny-dense", "seeds": [0, 1], "train": train,
                  "geometry": ["--all-steps", "--tokens", "300"], "lm": None, "mteb": None, "report": str(report)},
        "runs": [{"path": str(report / "results"), "label": "tiny study"}],
        "sections": ["dynamics", "geometry", "cost"],
    }))  # fmt: skip
    res = _cli("replicate", spec, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "$ nitp-train pair --preset tiny-dense --seeds 0,1" in res.stderr  # what ran, as a user would type it
    results = report / "results"
    names = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert "seed-1/eval/geometry/nitp-step-000004.json" in names and "seed-0/ntp/metrics.jsonl" in names
    assert not any("checkpoints" in n or "state" in n or n.startswith("data") for n in names)  # small files only
    table = _rows(report)
    runs = tmp_path / "runs" / "study"
    for seed, row in ((0, 0), (1, 1)):  # the table's Δ = the results files' values
        g = {
            a: json.loads((runs / f"seed-{seed}/eval/geometry/{a}-step-000004.json").read_text())
            for a in ("ntp", "nitp")
        }
        d = g["nitp"]["per_layer"]["erank_cov"][-1] - g["ntp"]["per_layer"]["erank_cov"][-1]
        cell = table["Geometry (last layer): effective rank"][3].split(", ")[row]
        assert float(cell) == pytest.approx(d, abs=0.006)
    before = (runs / "seed-0" / "nitp" / "metrics.jsonl").read_bytes()
    again = _cli("replicate", spec, cwd=REPO)  # resumes: nothing retrained, nothing re-evaluated
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--resume" in again.stderr and "already have geometry results" in again.stdout + again.stderr
    assert (runs / "seed-0" / "nitp" / "metrics.jsonl").read_bytes() == before
    # the report rebuilds from the collected results alone
    import shutil

    shutil.rmtree(runs)
    first = (report / "tables" / "seeds.csv").read_text()
    res = _cli("report", "--spec", spec, "--out", report, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (report / "tables" / "seeds.csv").read_text() == first and (results / "study.json").is_file()


def test_time_stage_predicts_the_training_time_and_enforces_a_budget(tmp_path, tiny_sets, tiny_corpus):
    train = dict(s.split("=", 1) for s in tiny_sets) | {"data.path": str(tiny_corpus), "steps": 50}
    report = tmp_path / "rep"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "study": {"out": str(tmp_path / "runs" / "s"), "preset": "tiny-dense", "seeds": [0, 1, 2], "train": train,
                  "report": str(report)},
        "runs": [str(report / "results")],
    }))  # fmt: skip
    # one timing run: over the budget it still records what it measured, then fails in one line
    res = _cli("replicate", spec, "--stages", "time", "--time-steps", "4", "--budget-s", "0.001")
    assert res.returncode == 2 and "over --budget-s 0.001" in res.stderr and "Traceback" not in res.stderr
    t = json.loads((report / "results" / "timing.json").read_text())
    assert t["tokens_per_step"] == 8 * 64 and t["arms"] == 6 and t["study_steps"] == 50  # global_batch x seq_len
    assert t["predicted_train_s"] == pytest.approx(6 * 50 * 512 / t["tokens_per_s_nitp"])
    assert "s of training steps" in res.stdout and not (tmp_path / "runs" / ".s-timing").exists()


def test_replicate_needs_a_study_block(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("runs: [runs/x]\n")
    res = _cli("replicate", spec)
    assert res.returncode == 2 and "no `study:` block" in res.stderr and "Traceback" not in res.stderr
    spec.write_text("runs: [runs/x]\nstudy: {out: r, preset: tiny-dense, seeds: [a], report: x}\n")
    res = _cli("replicate", spec)
    assert res.returncode == 2 and "study.seeds" in res.stderr


def test_validation_ce_is_compared_at_the_last_step_both_arms_evaluated(tmp_path):
    study = make_study(tmp_path / "study", [0.1, 0.1, 0.1], [0.0] * 3, [0.0] * 3)
    nitp = study / "seed-2" / "nitp" / "metrics.jsonl"  # an arm cut short: its last val CE is at step 10
    recs = [json.loads(x) for x in nitp.read_text().splitlines()]
    _jsonl(nitp, [{k: v for k, v in r.items() if not (k == "val_ce" and r["step"] == 20)} for r in recs])
    md = build_report(spec_from_paths([study]), tmp_path / "out", progress=False)
    ce = _rows(md.parent)["Training: validation CE (last common step)"]
    assert ce[3] == "+0.1000, +0.1000, +0.1000"  # seed 2 at step 10, not NITP step 10 against NTP step 20
    assert "seed 2: val CE compared at step 10" in md.read_text()
