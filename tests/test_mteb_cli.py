"""nitp-eval mteb end to end: a run dir with two arms, real mteb, real local data, no network,
nothing written outside the output dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the CLI with every socket connection refused: any network access fails the command.
RUNNER = """
import socket, sys
def _deny(*a, **k):
    raise OSError("network access attempted during an offline test")
socket.socket.connect = _deny
socket.socket.connect_ex = _deny
socket.create_connection = _deny
from nitp_eval.cli import main
sys.argv = ["nitp-eval", *sys.argv[1:]]
main()
"""


def _cli(args, home: Path, cwd: Path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MTEB_CACHE", "HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME", "TRANSFORMERS_CACHE")
    }
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", RUNNER, "mteb", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_run_dir_offline(tiny_run, shared_data, tmp_path):
    """The trainer's pair dir (runs/tiny/{ntp,nitp}/checkpoints/step-000006/): latest checkpoint of each arm."""
    run_dir = tiny_run
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    tasks = "STSBenchmark,AmazonCounterfactualClassification,TwitterURLCorpus,BIOSSES"
    r = _cli([run_dir, "--tasks", tasks, "--data-dir", shared_data / "mteb", "--limit", 60], home, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BIOSSES: missing" in r.stderr + r.stdout  # on the console, not only in the file
    assert _files(home) == [] and _files(cwd) == []  # no mteb cache, no results folder, no datasets cache
    written = sorted(str(p.relative_to(run_dir / "eval")) for p in (run_dir / "eval").rglob("mteb/*"))
    assert written == ["mteb/nitp-step-000006.json", "mteb/ntp-step-000006.json"]

    res = {
        arm: json.loads((run_dir / "eval" / "mteb" / f"{arm}-step-000006.json").read_text()) for arm in ("ntp", "nitp")
    }
    ntp = res["ntp"]
    assert ntp["schema"] == "nitp.mteb" and ntp["arm"] == "ntp" and ntp["step"] == 6
    assert ntp["settings"]["limit"] == 60 and ntp["settings"]["layer"] == -1
    assert "mteb" in ntp["versions"]
    assert sorted(ntp["tasks"]) == ["AmazonCounterfactualClassification", "STSBenchmark", "TwitterURLCorpus"]
    assert ntp["missing"] == ["BIOSSES"] and ntp["failed"] == []
    assert list(ntp["tasks"]["AmazonCounterfactualClassification"]["local_files"]) == [
        "AmazonCounterfactualClassification/en/test.jsonl",
        "AmazonCounterfactualClassification/en/train.jsonl",
    ]
    for t in ntp["tasks"].values():
        assert set(t) >= {"group", "main_score_name", "main_score", "scores", "version"}
        assert 0.0 <= t["main_score"] <= 1.0 or t["main_score_name"] == "cosine_spearman"
    assert ntp["tasks"]["AmazonCounterfactualClassification"]["group"] == "Classification"
    assert ntp["tasks"]["TwitterURLCorpus"]["group"] == "Retrieval/Dup"
    assert ntp["groups"]["STS"]["n"] == 1 and ntp["groups"]["STS"]["of"] == 2
    assert ntp["groups"]["STS"]["mean"] == pytest.approx(ntp["tasks"]["STSBenchmark"]["main_score"])
    assert ntp["overall"]["n"] == 3 and ntp["overall"]["of"] == 4
    assert res["nitp"]["arm"] == "nitp" and res["nitp"]["overall"]["n"] == 3

    # a checkpoint dir as PATH, --out elsewhere; the same model and settings give the same scores
    # (mteb seeds its classifiers and undersampling, --limit is seeded)
    ckpt = run_dir / "nitp" / "checkpoints" / "step-000006"
    r = _cli(
        [
            ckpt,
            "--tasks",
            "AmazonCounterfactualClassification",
            "--data-dir",
            shared_data / "mteb",
            "--limit",
            60,
            "--out",
            tmp_path / "again",
        ],
        home,
        cwd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "nitp-step-000006.json").read_text())
    assert (
        again["tasks"]["AmazonCounterfactualClassification"]["main_score"]
        == res["nitp"]["tasks"]["AmazonCounterfactualClassification"]["main_score"]
    )

    # no silent overwrite; bad input is one line and exit code 2
    r = _cli([run_dir, "--tasks", "STSBenchmark", "--data-dir", shared_data / "mteb"], home, cwd)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = _cli([run_dir, "--data-dir", tmp_path / "nowhere"], home, cwd)
    assert r.returncode == 2 and r.stderr.startswith("error: --data-dir") and len(r.stderr.strip().splitlines()) == 1


def _main(args, capsys):
    """The CLI in-process (error paths and small runs): (exit code, stdout, stderr)."""
    from nitp_eval.cli import main

    old = sys.argv
    sys.argv = ["nitp-eval", "mteb", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nothing_scored_writes_nothing(tiny_checkpoint, shared_data, tmp_path, capsys):
    """An empty results file would only block the real run later: exit non-zero, write nothing."""
    code, out, err = _main(
        [tiny_checkpoint, "--tasks", "BIOSSES", "--data-dir", shared_data / "mteb", "--out", tmp_path / "out"], capsys
    )
    assert code == 2 and "BIOSSES: missing" in out
    last = err.strip().splitlines()[-1]  # earlier stderr lines are progress bars
    assert last.startswith("error:") and "no task was scored" in last
    assert not (tmp_path / "out").exists()


def test_failed_task_is_recorded_and_the_run_exits_non_zero(tiny_checkpoint, shared_data, tmp_path, capsys):
    data = tmp_path / "data"
    _write_jsonl(data / "STSBenchmark" / "test.jsonl", [{"sentence1": "a", "sentence2": "b"}] * 5)  # no "score"
    with open(shared_data / "mteb" / "SICK-R" / "test.jsonl") as f:
        _write_jsonl(data / "SICK-R" / "test.jsonl", [json.loads(next(f)) for _ in range(40)])
    # the tiny checkpoint has 512 positions: --max-length 600 is capped, with a note
    code, out, err = _main(
        [
            tiny_checkpoint,
            "--tasks",
            "STSBenchmark,SICK-R",
            "--data-dir",
            data,
            "--max-length",
            600,
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert code == 1, err[-2000:]
    assert "STSBenchmark: FAILED" in out and "FAILED (1): STSBenchmark" in out
    assert "--max-length 600 exceeds the 512 positions" in out
    assert err.strip().splitlines()[-1].startswith("error: 1 task(s) failed: model/STSBenchmark")
    res = json.loads((tmp_path / "out" / "model.json").read_text())  # the other task's score is kept
    assert res["failed"] == ["STSBenchmark"] and "score" in res["failed_reasons"]["STSBenchmark"]
    assert list(res["tasks"]) == ["SICK-R"] and res["overall"]["n"] == 1 and res["overall"]["of"] == 2
    assert res["settings"]["max_length"] == 512
    assert res["tasks"]["SICK-R"]["local_files"]["SICK-R/test.jsonl"]["rows"] == 40


def test_settings_are_checked_before_any_model_loads(tiny_checkpoint, tmp_path, capsys):
    code, _, err = _main([tiny_checkpoint, "--padding-side", "middle"], capsys)
    assert code == 2 and err.startswith("error: --padding-side middle") and len(err.strip().splitlines()) == 1
    # a model dir whose weights are missing: --layer is checked from the config before loading is tried
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    for f in tiny_checkpoint.iterdir():
        if not f.name.endswith(".safetensors"):
            (weightless / f.name).write_bytes(f.read_bytes())
    code, _, err = _main([weightless, "--layer", 9, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith("error: --layer 9: out of range for a model with 4 layers")
    code, _, err = _main([weightless, "--layer", -1, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "cannot load the model" in err  # what --layer 9 would have met otherwise


SMALL = ["--tasks", "STSBenchmark", "--limit", 20]


def test_series_of_checkpoint_dirs(tiny_checkpoint, shared_data, tmp_path, capsys):
    """--series as geometry takes it (nitp_eval.runs.resolve_series): a glob of step dirs is one run's trajectory."""
    import shutil

    for step in (200, 50):
        shutil.copytree(tiny_checkpoint, tmp_path / "ckpts" / f"step-{step}")
    series = tmp_path / "my-run"
    code, _, err = _main(
        [tmp_path / "ckpts" / "step-*", "--series", series, "--data-dir", shared_data / "mteb", *SMALL], capsys
    )
    assert code == 0, err[-2000:]
    files = sorted((series / "eval" / "mteb").glob("*.json"))
    assert [f.name for f in files] == ["my-run-step-000050.json", "my-run-step-000200.json"]
    res = [json.loads(f.read_text()) for f in files]
    assert [(r["arm"], r["step"]) for r in res] == [("my-run", 50), ("my-run", 200)]
    assert res[0]["checkpoint"] == str((tmp_path / "ckpts" / "step-50").resolve())
    # the same weights at both steps: the same score
    assert res[0]["tasks"]["STSBenchmark"]["main_score"] == res[1]["tasks"]["STSBenchmark"]["main_score"]
    code, _, err = _main([tmp_path / "ckpts" / "step-*", "--series", series, "--all-steps", *SMALL], capsys)
    assert code == 2 and err.startswith("error: --all-steps applies to run dirs")
    code, _, err = _main([tiny_checkpoint, "--series", tmp_path / "s", *SMALL], capsys)
    assert code == 2 and "no step number at the end of its name" in err and not (tmp_path / "s").exists()


def test_hub_revisions_from_a_local_hf_cache(tiny_checkpoint, shared_data, tmp_path, capsys, monkeypatch):
    """--revisions through huggingface_hub's own cache layout (refs/<rev> -> snapshots/<commit>/), offline."""
    import shutil

    import huggingface_hub.constants as hf

    repo = tmp_path / "hub" / "models--someorg--tiny-lm"
    for i, rev in enumerate(("step1000", "step8000")):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(f"{i + 1:040x}")
        shutil.copytree(tiny_checkpoint, repo / "snapshots" / f"{i + 1:040x}")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    args = ["someorg/tiny-lm", "--data-dir", shared_data / "mteb", *SMALL]
    code, _, err = _main([*args, "--revisions", "step1000,step8000"], capsys)
    assert code == 0, err[-2000:]
    files = sorted((tmp_path / "tiny-lm" / "eval" / "mteb").glob("*.json"))
    assert [f.name for f in files] == ["tiny-lm-step-001000.json", "tiny-lm-step-008000.json"]
    assert json.loads(files[1].read_text())["checkpoint"].endswith(f"snapshots/{2:040x}")
    code, _, err = _main([*args, "--revisions", "step9"], capsys)
    assert code == 2 and err.startswith("error: someorg/tiny-lm@step9: cannot get it")
