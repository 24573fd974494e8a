"""Any checkpoint set is a trajectory; any model reports in place; N models side by side (issue 13, item 6)."""

from __future__ import annotations

import json
import shutil

import pytest
from test_geometry_cli import run  # the in-process `nitp-eval geometry` runner

from nitp_eval.report.build import build_report
from nitp_eval.report.spec import spec_from_paths
from nitp_train.errors import UserError

GEOM = ["--tokens", 400, "--seq-len", 100, "--layers", "0,4"]


@pytest.fixture()
def ckpts(tiny_checkpoint, tmp_path):
    """Three checkpoint dirs of one 'run' from elsewhere, named by step (the same weights: only the plumbing counts)."""
    for step in (50, 1000, 200):
        shutil.copytree(tiny_checkpoint, tmp_path / "ckpts" / f"step-{step}")
    return tmp_path / "ckpts"


def test_series_from_a_glob_is_a_trajectory_the_report_draws(ckpts, tmp_path):
    series = tmp_path / "my-run"
    run(str(ckpts / "step-*"), "--series", series, *GEOM)
    files = sorted((series / "eval" / "geometry").glob("*.json"))
    assert [f.name for f in files] == [f"my-run-step-{s:06d}.json" for s in (50, 200, 1000)]
    r = json.loads(files[0].read_text())
    assert r["arm"] == "my-run" and r["step"] == 50 and r["checkpoint"] == str((ckpts / "step-50").resolve())
    md = build_report(spec_from_paths([series]), tmp_path / "report", progress=False)
    text = md.read_text()
    assert text.startswith("# my-run: evaluation report") and "NTP vs NITP" not in text
    assert (md.parent / "figures" / "dynamics.png").stat().st_size > 10_000  # Fig. 1 from the series
    rows = (md.parent / "tables" / "geometry.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["1000"]  # the latest step in the table
    # the dynamics figure is drawn from the three steps: the report names no missing series
    assert "no geometry checkpoint series" not in text


def test_series_refuses_dirs_without_a_step_and_duplicate_steps(ckpts, tiny_checkpoint, tmp_path):
    from nitp_train.errors import UserError

    with pytest.raises(UserError, match="no step number at the end of its name"):
        run(tiny_checkpoint, "--series", tmp_path / "s", *GEOM)
    shutil.copytree(ckpts / "step-50", ckpts / "checkpoint-50")
    with pytest.raises(UserError, match="both name step 50"):
        run(str(ckpts / "*-50"), "--series", tmp_path / "s", *GEOM)
    with pytest.raises(UserError, match="matches no file"):
        run(str(ckpts / "nope-*"), "--series", tmp_path / "s", *GEOM)
    assert not (tmp_path / "s").exists()


def test_hub_revisions_from_a_local_hf_cache(tiny_checkpoint, tmp_path, monkeypatch):
    """--revisions through huggingface_hub's own cache layout (refs/<rev> -> snapshots/<commit>/), offline."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    repo = cache / "models--someorg--tiny-lm"
    for i, rev in enumerate(("step1000", "step8000")):
        commit = f"{i + 1:040x}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
        shutil.copytree(tiny_checkpoint, repo / "snapshots" / commit)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    run("someorg/tiny-lm", "--revisions", "step1000,step8000", *GEOM)
    files = sorted((tmp_path / "tiny-lm" / "eval" / "geometry").glob("*.json"))
    assert [f.name for f in files] == ["tiny-lm-step-001000.json", "tiny-lm-step-008000.json"]
    assert json.loads(files[1].read_text())["checkpoint"].endswith(f"snapshots/{2:040x}")
    from nitp_train.errors import UserError

    with pytest.raises(UserError, match="someorg/tiny-lm@step9: cannot get it"):
        run("someorg/tiny-lm", "--revisions", "step9", *GEOM)


def test_a_single_model_reports_in_place_and_beside_a_run(tiny_checkpoint, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(tiny_checkpoint, *GEOM)  # default results place of a model outside a run: ./eval/geometry/model.json
    md = build_report(spec_from_paths([tiny_checkpoint]), tmp_path / "single", progress=False).read_text()
    assert md.startswith("# model: evaluation report") and "step None" not in md
    assert "eval/geometry/model.json" in md.split("## Sources")[1]
    assert f"run `nitp-eval lm {tiny_checkpoint}`; offline add --data-dir DIR" in md
    # N models side by side: a pair and a model from elsewhere
    run(tiny_run, *GEOM, "--out", tmp_path / "pair-geometry")
    shutil.copytree(tmp_path / "pair-geometry", tmp_path / "pair" / "eval" / "geometry")
    # the pair is analysed on its own validation tokens, the model on the built-in text: refused unless allowed
    spec = spec_from_paths([tmp_path / "pair", tiny_checkpoint])
    with pytest.raises(UserError, match="geometry table: not comparable: .*text_sha256"):
        build_report(spec, tmp_path / "both", progress=False)
    spec.allow_mismatch = True
    md = build_report(spec, tmp_path / "both", progress=False)
    assert md.read_text().startswith("# Comparison: pair, model") and "NOT COMPARABLE: geometry table" in md.read_text()
    labels = [row.split(",")[0] for row in (md.parent / "tables" / "geometry.csv").read_text().splitlines()[1:]]
    assert labels == ["pair NTP", "pair NITP", "model model"], labels
