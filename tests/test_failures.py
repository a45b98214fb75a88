"""builder.run.failures: Gramine failure signatures explained (the spec key and by how much),
on real gramine-direct logs (tests/gramine_logs/README.md says where each came from), and the
`doctor --log` command over them."""

from __future__ import annotations

import json
from pathlib import Path

from enclave_build.builder.run.failures import (
    Limits,
    explain,
    next_power_of_two,
    parse_size,
    size_text,
)

from .conftest import run_cli

LOGS = Path(__file__).parent / "gramine_logs"


def _lines(name: str) -> list[str]:
    return [x for x in (LOGS / name).read_text().splitlines() if not x.startswith("#")]


def test_sizes():
    assert parse_size("2G") == 2 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size(4096) == 4096
    assert parse_size("lots") is None and parse_size(True) is None
    assert next_power_of_two(979 << 20) == 1 << 30
    assert next_power_of_two(1 << 30) == 1 << 30
    assert size_text(1 << 30) == "1G" and size_text(768 << 20) == "768M"


def test_enforced_thread_limit_is_explained_as_threads():
    """Real log: the pids limit (sgx.max_threads = 10) refused the LibOS's clones."""
    (found,) = explain(
        _lines("threads-enforced.log"), Limits(2 << 30, 10, None, True), 134, None, 21
    )
    assert found.kind == "threads"
    assert found.key == "[enclave] max_threads"
    assert found.value == 20
    assert "refused 21" in found.what
    assert "pthread_create failed" in found.lines[0]


def test_measured_peak_sizes_the_thread_change():
    (found,) = explain(_lines("threads-enforced.log"), Limits(None, 10, None, True), 134, 17, 3)
    assert found.value == 21 and "measured peak 17" in found.change


def test_failed_thread_stacks_under_an_enforced_size_are_memory():
    """Real log: with size 256M enforced and no thread refused, pthread_create failed because
    the new stacks did not fit: the size is what to change."""
    lines = _lines("memory-enforced.log")
    (found,) = explain(lines, Limits(256 << 20, 32, None, True), 134, None, 0)
    assert found.kind == "memory"
    assert found.key == "[enclave] size"
    assert found.value == 512 << 20
    assert "256M to 512M" in found.change
    # without knowing what the limit refused, both causes are named
    (unsure,) = explain(lines, Limits(256 << 20, 32), 134)
    assert unsure.kind == "threads" and "enclave_size" in unsure.what


def test_sgx_loader_and_libos_wording():
    found = {e.kind: e for e in explain(_lines("sgx-wording.log"))}
    assert found["threads"].value == 32  # "The current value is 16" from the log itself
    assert "no free thread slot (TCS)" in found["threads"].what
    assert found["memory"].key == "[enclave] size"
    assert found["file-refused"].paths == ("/usr/lib/python3/dist-packages/foo.py",)
    assert found["file-create"].paths == ("/var/cache/model.bin",)


def test_library_killed_and_stack():
    (lib,) = explain(
        ["ImportError: libffi.so.8: cannot open shared object file: Permission denied"]
    )
    assert lib.kind == "library" and lib.paths == ("libffi.so.8",)
    (killed,) = explain(["Killed"], exit_code=137)
    assert killed.kind == "killed"
    (stack,) = explain([], Limits(stack_size=256 << 10), exit_code=139)
    assert stack.kind == "stack" and "256K to 512K" in stack.change
    assert explain(["all good"], exit_code=1) == []


def test_doctor_log_explains_and_exits_0(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[enclave]\nsize = "256M"\nmax_threads = 32\n')
    proc = run_cli("doctor", "--log", str(LOGS / "sgx-wording.log"), "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "change: [enclave] size: from 256M to 512M" in out
    assert "change: [enclave] max_threads: from 16 to 32" in out
    proc = run_cli("doctor", "--log", str(LOGS / "memory-enforced.log"), "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["recognised"] is True
    assert data["explanations"][0]["key"] == "[enclave] max_threads"


def test_doctor_log_without_a_known_failure_exits_1(tmp_path):
    log = tmp_path / "ok.log"
    log.write_text("model_server: serving grpc 0.0.0.0:8001\n")
    proc = run_cli("doctor", "--log", str(log))
    assert proc.returncode == 1
    assert "no failure this version recognises" in proc.stdout.decode()
    proc = run_cli("doctor", "--spec", str(log))
    assert proc.returncode == 2 and "--spec goes with --log" in proc.stderr.decode()
