"""scripts/test.sh runs ruff (lint and format) and mypy before any test, and a failing check
stops the run with one line naming the check and the command that fixes it; its last lines say
what did not run on this machine and why, and it keeps pytest's exit code.

Each check case runs the real script on a copy of the repository (sharing this checkout's .venv)
with one flaw put in, and collects a single test file: the checks decide the outcome. The
last-line cases run it on a sample test file, with `id` and `dpkg-query` stubbed."""

from __future__ import annotations

import hashlib
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
    # a stale .venv would be reinstalled by the copy's scripts/venv.sh, editable from the copy:
    # this checkout's .venv would then import the deleted copy
    _need_current_venv()
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


# --- what did not run is in its last lines -----------------------------------------------


def _venv_is_current() -> bool:
    """scripts/venv.sh reinstalls when pyproject.toml or constraints.txt changed; running the
    wrapper then would take minutes, so these tests need the stamp it leaves."""
    digest = hashlib.sha256(
        (REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes()
    ).hexdigest()[:16]
    return (REPO / ".venv" / f".installed-{digest}").exists()


def _need_current_venv() -> None:
    if not _venv_is_current():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true: .venv is not up to date (source scripts/venv.sh)")
        pytest.skip(
            ".venv is not up to date with pyproject.toml/constraints.txt "
            "(source scripts/venv.sh): the script would reinstall it first"
        )


def _wrapper(tmp_path: Path, tests: str, installed: bool) -> subprocess.CompletedProcess:
    """Run scripts/test.sh on *tests* as a non-root user would (stub `id`), with dpkg saying
    every system package is installed or none is (stub `dpkg-query`): nothing is installed."""
    _need_current_venv()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "id").write_text("#!/bin/sh\necho 1000\n")
    (stubs / "dpkg-query").write_text(
        "#!/bin/sh\n" + ("printf 'install ok installed'\n" if installed else "exit 1\n")
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    sample = tmp_path / "test_sample.py"
    sample.write_text(tests)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(REPO / "scripts/test.sh"), "-q", "-p", "no:cacheprovider", str(sample)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_wrapper_ends_with_what_did_not_run_and_why(tmp_path):
    proc = _wrapper(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "def test_needs_moon():\n    pytest.skip('needs the moon')\n",
        False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.rstrip().splitlines()[-4:]
    assert last[0] == "scripts/test.sh: 1 test(s) did not run on this machine:"
    assert last[1].split(None, 1) == ["1", "needs the moon"]
    assert last[2].startswith("scripts/test.sh: system packages not installed (needs root): ")
    assert "docker.io" in last[2] and "sudo apt-get install" in last[2]
    assert last[3] == "1 passed, 0 failed, 1 skipped"


@pytest.mark.integration
def test_wrapper_says_so_when_everything_ran_and_keeps_pytests_exit_code(tmp_path):
    proc = _wrapper(tmp_path, "def test_ok():\n    pass\n", True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().splitlines()[-2:] == [
        "scripts/test.sh: every selected test ran on this machine (none skipped)",
        "1 passed, 0 failed, 0 skipped",
    ]
    (tmp_path / "f").mkdir()
    failing = _wrapper(tmp_path / "f", "def test_bad():\n    assert False\n", True)
    assert failing.returncode == 1
    assert failing.stdout.rstrip().splitlines()[-1] == "0 passed, 1 failed, 0 skipped"
