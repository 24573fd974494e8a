"""The distribution: a plain (non-editable) wheel carries everything the commands read at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_corpus_presets_and_tasks(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nitp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "nitp_train/corpus/shakespeare-train.jsonl.gz",
        "nitp_train/corpus/shakespeare-validation.jsonl.gz",
        "nitp_train/presets.yaml",
        "nitp_eval/lm/tasks/c3.yaml",
        "nitp_eval/lm/tasks/c3_test.yaml",
        "nitp_eval/lm/tasks/c3_dialogue.yaml",
        "nitp_eval/lm/tasks/c3_utils.py",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "nitp-train = nitp_train.cli:main" in text and "nitp-eval = nitp_eval.cli:main" in text
