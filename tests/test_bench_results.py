"""The README's measured table is rendered from benchmarks/results/*.json, never edited by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_table_is_what_the_results_files_say():
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "results.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    for path in (REPO / "benchmarks" / "results").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["date"] and data["machine"] and data["command"].startswith(("python ", "bash "))
        assert all(row["what"] and row["number"] for row in data["rows"])


def test_check_fails_on_a_hand_edited_table(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import results

    readme = tmp_path / "README.md"
    readme.write_text(
        f"x\n{results.START}\n| what | number | command | measured |\n|---|---|---|---|\n| made up | 1 | `python x` | today |\n{results.END}\n"
    )
    monkeypatch.setattr(results, "README", readme)
    monkeypatch.setattr(sys, "argv", ["results.py", "--check"])
    try:
        results.main()
    except SystemExit as e:
        assert "differs" in str(e)
    else:
        raise AssertionError("--check accepted a table the results files do not produce")
