"""Studies: seed-aware intervals against independent references, study dirs through every command,
and `nitp-eval replicate` end to end (train, evaluate, collect, report, resume, rebuild from results)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nitp_eval.report.build import build_report
from nitp_eval.report.spec import spec_from_paths

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
    """Every number of the primary table against scipy (t tests) and statsmodels (Holm) on the per-seed deltas."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    val, shift, erank = [-0.02, -0.05, 0.01], [0.03, 0.05, 0.04], [2.0, 3.0, 4.0]
    study = make_study(tmp_path / "study", val, shift, erank)
    md = build_report(spec_from_paths([study]), tmp_path / "out", progress=False)
    rows = _rows(md.parent, "primary")
    ce = rows["validation CE (last common step)"]
    assert ce[1] == "NITP − NTP < 0.0200" and ce[4] == ", ".join(f"{d:+.4f}" for d in val)
    ref = stats.ttest_1samp(val, 0.0)
    lo, hi = ref.confidence_interval(0.95)
    assert ce[6] == f"[{lo:+.4f}, {hi:+.4f}]" and ce[7] == "seeds"
    p_ce = stats.ttest_1samp(val, 0.02, alternative="less").pvalue  # non-inferiority: H0 delta >= margin
    p_er = stats.ttest_1samp(erank, 0.0, alternative="greater").pvalue
    p_lm = stats.ttest_1samp([3.0, 5.0, 4.0], 0.0, alternative="greater").pvalue  # every document shifted alike
    # declared family of 5: anisotropy has no spread (not estimable) and MTEB no results: both count as p = 1
    holm = multipletests([p_ce, p_er, 1.0, p_lm, 1.0], method="holm")[1]
    g = rows["last layer: effective rank"]
    assert g[4] == "+2.00, +3.00, +4.00" and g[8] == f"{p_er:.3f}" and g[9] == f"{holm[1]:.3f}"
    assert ce[8] == f"{p_ce:.3f}" and ce[9] == f"{holm[0]:.3f}"
    avg = next(v for k, v in rows.items() if k.startswith("downstream average (ARC-C)"))
    assert avg[4] == "+3.00, +5.00, +4.00" and avg[5] == "+4.00" and avg[7] == "seeds × documents"
    assert avg[8] == f"{p_lm:.3f}" and avg[9] == f"{holm[3]:.3f}"
    aniso = rows["last layer: anisotropy"]
    assert aniso[6] == "—" and aniso[12].startswith("not estimable")
    layer = _rows(md.parent, "exploratory_layers")["layer 0"]
    assert layer[3] == "+0.00, +0.00, +0.00" and layer[-1].startswith("not estimable")
    assert "layer 2" not in _rows(md.parent, "exploratory_layers")  # the last layer is the geometry row
    text = md.read_text()
    first = text.split("\n\n")[1]
    assert first.startswith("**Verdict.** Over n = 3 seeds, primary endpoints (Holm") and "Scale: " in first
    setup = text.split("\n\n")[2]
    for fact in ("Preset `tiny-dense`", "20 steps × 4 × 8 = 640 tokens", "`corpus/*.jsonl`", "`train:512`",
                 "λ = 1.0, target layer 2", "3 seeds (0, 1, 2)", "`abc123def456`", "parameters, counted"):  # fmt: skip
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
    table = _rows(report, "primary")
    runs = tmp_path / "runs" / "study"
    for seed, row in ((0, 0), (1, 1)):  # the table's Δ = the results files' values
        g = {
            a: json.loads((runs / f"seed-{seed}/eval/geometry/{a}-step-000004.json").read_text())
            for a in ("ntp", "nitp")
        }
        d = g["nitp"]["per_layer"]["erank_cov"][-1] - g["ntp"]["per_layer"]["erank_cov"][-1]
        cell = table["last layer: effective rank"][4].split(", ")[row]
        assert float(cell) == pytest.approx(d, abs=0.006)
    before = (runs / "seed-0" / "nitp" / "metrics.jsonl").read_bytes()
    again = _cli("replicate", spec, cwd=REPO)  # resumes: nothing retrained, nothing re-evaluated
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--resume" in again.stderr and "already have geometry results" in again.stdout + again.stderr
    assert (runs / "seed-0" / "nitp" / "metrics.jsonl").read_bytes() == before
    # the report rebuilds from the collected results alone
    import shutil

    shutil.rmtree(runs)
    first = (report / "tables" / "primary.csv").read_text()
    res = _cli("report", "--spec", spec, "--out", report, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (report / "tables" / "primary.csv").read_text() == first and (results / "study.json").is_file()


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
    ce = _rows(md.parent, "primary")["validation CE (last common step)"]
    assert ce[4] == "+0.1000, +0.1000, +0.1000"  # seed 2 at step 10, not NITP step 10 against NTP step 20
    assert "seed 2: val CE compared at step 10" in md.read_text()


def test_replicate_trains_seeds_in_parallel_workers(tmp_path, tiny_sets, tiny_corpus):
    """--workers 2: each arm trained (`pair --arms`) and evaluated on a pinned single-thread core, seed by
    seed, and each seed collected as it lands; one shared token cache, arms trained apart paired as one
    process pairs them (init, data and order hashes), and study.json listing every seed."""
    from conftest import REPO

    train = dict(s.split("=", 1) for s in tiny_sets)
    train.update({"data.path": str(tiny_corpus), "steps": 2, "save_every": 2, "eval_every": 0, "probe_every": 0})
    out = tmp_path / "runs" / "study"
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "study": {"out": str(out), "preset": "tiny-dense", "seeds": [0, 1], "train": train, "report": str(tmp_path / "r"),
                  "geometry": ["--tokens", "300"]},
        "runs": [{"path": str(tmp_path / "r" / "results")}],
    }))  # fmt: skip
    res = _cli("replicate", spec, "--stages", "train,evaluate", "--workers", "2", cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "$ taskset -c" in res.stderr and "--seeds 1 " in res.stderr and "--arms nitp" in res.stderr
    for s in (0, 1):  # evaluated and collected by its worker
        assert (tmp_path / "r" / "results" / f"seed-{s}" / "eval" / "geometry" / "nitp-step-000002.json").is_file()
    cache = Path(train["data.cache_dir"])
    assert len(list(cache.glob("*/meta.json"))) == 1  # one token cache, made once
    units = [json.loads(x) for x in (tmp_path / "r" / "results" / "units.jsonl").read_text().splitlines()]
    assert sorted((u["stage"], u["seed"], u["arm"]) for u in units) == sorted(
        (stage, s, arm) for s in (0, 1) for stage in ("train", "geometry") for arm in ("ntp", "nitp")
    ) and all(u["rc"] == 0 and u["seconds"] > 0 for u in units)  # every unit timed
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1]
    for s in (0, 1):
        paired = json.loads((out / f"seed-{s}" / "pair.json").read_text())["paired"]
        assert all(paired.values()) and "consumed_order_sha256" in paired  # the last arm checked both
    prov = [json.loads((out / f"seed-{s}" / "ntp" / "provenance.json").read_text()) for s in (0, 1)]
    assert (
        prov[0]["data_sha256"] == prov[1]["data_sha256"]
        and prov[0]["init_weights_sha256"] != prov[1]["init_weights_sha256"]
    )


def test_study_units_finish_each_seed_before_the_next(tmp_path):
    from nitp_eval.replicate import StudyPlan, study_units

    plan = StudyPlan(out=tmp_path, preset="tiny-dense", seeds=[3, 1], report=tmp_path / "r",
                     evaluate={"geometry": [], "lm": None, "mteb": ["--limit", "2"]})  # fmt: skip
    assert study_units(plan, evaluate=True) == [
        ("train", 3, "ntp"), ("train", 3, "nitp"), ("geometry", 3, "ntp"), ("geometry", 3, "nitp"),
        ("mteb", 3, "ntp"), ("mteb", 3, "nitp"),
        ("train", 1, "ntp"), ("train", 1, "nitp"), ("geometry", 1, "ntp"), ("geometry", 1, "nitp"),
        ("mteb", 1, "ntp"), ("mteb", 1, "nitp"),
    ]  # fmt: skip
    assert study_units(plan, evaluate=False) == [("train", 3, "ntp"), ("train", 3, "nitp"),
                                                 ("train", 1, "ntp"), ("train", 1, "nitp")]  # fmt: skip


def test_pair_arms_names_only_this_pairs_arms(tmp_path):
    for arms, said in (("ntp,bogus", "this pair's arms are ntp, nitp"), (",", "this pair's arms are ntp, nitp")):
        res = subprocess.run([sys.executable, "-m", "nitp_train", "pair", "--out", str(tmp_path / "p"), "--arms", arms],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "nitp_train", "pair", "--out", str(tmp_path / "p"), "--arms", "ntp",
                          "--overwrite"], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "would delete the other arm" in res.stderr


def test_fall_after_peak_measures_the_collapse_before_the_decay():
    """A curve that rises to 40 at step 200, falls linearly to 30 by step 400 (the decay's start) and is
    lifted by the decay: peak step 200, fall 25 % at step 400; the decay's rise never enters the average."""
    from nitp_eval.report.study_rows import fall_after_peak, schedule_marks

    steps = range(0, 501, 10)
    curve = {s: (s / 5 if s <= 200 else 40 - (s - 200) / 20 if s <= 400 else 30 + (s - 400) / 5) for s in steps}
    assert fall_after_peak(curve, warmup=20, stable_end=400, window=1) == (200, pytest.approx(0.25), 400, 30.0)
    peak, fall, end_step, end = fall_after_peak(curve, warmup=20, stable_end=400, window=5)
    assert abs(peak - 200) <= 10 and end_step == 400 and 0.2 < fall < 0.25  # smoothing blunts, never lifts
    lifted = {**curve, **{s: 100.0 for s in steps if s > 400}}  # a decay that lifts it far: no effect
    assert fall_after_peak(lifted, warmup=20, stable_end=400, window=5) == (peak, fall, end_step, end)
    assert fall_after_peak({10: 1.0, 20: 2.0}, warmup=0, stable_end=400) is None  # fewer probes than the window
    cfg = {"steps": 500, "optim": {"warmup_steps": 20, "decay_ratio": 0.2}}
    assert schedule_marks(cfg) == (20, 400) and schedule_marks(None) == (0, None)
