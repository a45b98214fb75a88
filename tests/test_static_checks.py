"""scripts/test.sh runs ruff (lint and format) and mypy before any test, and a failing check
stops the run with one line naming the check and the command that fixes it.

Each case runs the real script on a copy of the repository (sharing this checkout's .venv) with
one flaw put in, and collects a single test file: the checks decide the outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def _copy(tmp_path: Path) -> Path:
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the repository's .venv (scripts/venv.sh makes it)")
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO,
        copy,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            "__pycache__",
            "*.egg-info",
            "out",
            ".demo",
        ),
    )
    (copy / ".venv").symlink_to(REPO / ".venv")
    return copy


def _run(copy: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        ["bash", "scripts/test.sh", "--collect-only", "-q", "tests/test_packaging.py"],
        cwd=copy,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_a_lint_finding_stops_the_run_naming_the_check_and_the_fix(tmp_path):
    copy = _copy(tmp_path)
    target = copy / "builder" / "errors.py"
    target.write_text("import os\n" + target.read_text())  # an unused import
    result = _run(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout + result.stderr
    assert _last_line(result.stderr) == (
        "scripts/test.sh: lint failed (`ruff check --quiet .`); fix: ruff check --fix . "
        "(then fix what it cannot by hand)"
    )
    assert "collected" not in result.stdout  # no test ran


def test_unformatted_code_stops_the_run_saying_ruff_format(tmp_path):
    copy = _copy(tmp_path)
    target = copy / "builder" / "errors.py"
    target.write_text(target.read_text() + "\n\nX  =  [1,2]\n")  # lint-clean, badly formatted
    result = _run(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "builder/errors.py" in result.stdout + result.stderr
    assert _last_line(result.stderr) == (
        "scripts/test.sh: format check failed (`ruff format --check .`); fix: ruff format ."
    )


def test_a_type_error_stops_the_run(tmp_path):
    copy = _copy(tmp_path)
    target = copy / "contract" / "names.py"
    target.write_text(target.read_text() + '\n\ndef _wrong() -> int:\n    return "text"\n')
    result = _run(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    # reported at the file a developer edits, not at the link tree mypy reads
    assert "contract/names.py:" in result.stdout and "[return-value]" in result.stdout
    assert _last_line(result.stderr) == (
        "scripts/test.sh: type check failed (`python scripts/typecheck.py`); "
        "fix: fix the errors listed above"
    )


def test_the_checks_pass_on_this_checkout():
    """What scripts/test.sh runs first passes here (a change that breaks it fails this test
    too, not only the script)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ruff = [sys.executable, "-m", "ruff"]
    for command in (
        [*ruff, "check", "--quiet", "."],
        [*ruff, "format", "--check", "."],
        [sys.executable, "scripts/typecheck.py"],
    ):
        done = subprocess.run(
            command, cwd=REPO, env=env, text=True, capture_output=True, timeout=600
        )
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
