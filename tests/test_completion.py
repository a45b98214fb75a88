"""Shell completion (click's): `eval "$(_ENCLAVE_BUILD_COMPLETE=bash_source enclave-build)"`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "enclave-build"  # the console script pip installed


@pytest.mark.skipif(
    not SCRIPT.exists() or shutil.which("bash") is None,
    reason="needs the installed enclave-build console script and bash",
)
def test_bash_completion_script_completes_commands_and_options(tmp_path):
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    source = subprocess.run(
        ["enclave-build"],
        env={**env, "_ENCLAVE_BUILD_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert source.returncode == 0, source.stderr
    assert "complete -o nosort -F _enclave_build_completion enclave-build" in source.stdout
    (tmp_path / "complete.bash").write_text(source.stdout)

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        script = (
            f"source {tmp_path / 'complete.bash'}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            "_enclave_build_completion enclave-build\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
        )
        proc = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    commands = set(complete("enclave-build "))
    assert {"build", "inspect", "gramine", "secrets", "run", "pf"} <= commands, commands
    assert complete("enclave-build gramine si") == ["sign", "sigstruct"]
    assert "--output" in complete("enclave-build build spec.toml --o")
    assert "--output" in complete("enclave-build spec.toml --o")  # the default command, too
    assert complete("enclave-build init --framework tf") == ["tflite", "tfserving"]
    assert "--runtimes" in complete("enclave-build base standin /tmp/x --r")

    for shell in ("zsh", "fish"):
        other = subprocess.run(
            ["enclave-build"],
            env={**env, "_ENCLAVE_BUILD_COMPLETE": f"{shell}_source"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 0 and "_enclave_build_completion" in other.stdout, other
