"""`enclave-build run BUILD_DIR --simulate`: argument errors, mode choice, and whole runs of a
small probe framework (a third-party-style plugin defined here) built on the stand-in base and on
the REAL Gramine base (gramine-direct, as the image's user)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_build.builder.base_kind import standin_base
from enclave_build.builder.build import build
from enclave_build.builder.errors import UsageError
from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.run import (
    BANNER,
    CannotSimulate,
    RunError,
    RunOptions,
    open_build,
    run_build,
)
from enclave_build.builder.run.runner import QUOTER_ENV, ROOT_ENV, choose_mode, process_command
from enclave_build.contract.names import STANDIN_MARKER
from enclave_build.contract.standin_base import StandInBase
from enclave_build.plugin import Framework, base_plan, hookimpl

from .conftest import run_cli, write_spec

# Runs in the enclave (and, in process mode, on the host's Python): asks the simulated quoter
# named by the environment for one quote and reports what it saw.
PROBE = """
import os, socket, sys
quoter = os.environ['ENCLAVE_BUILD_SIMULATED_QUOTER']
host, port = quoter.rsplit(':', 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(bytes(range(64)))
    data = b''
    while chunk := s.recv(65536):
        data += chunk
size = int.from_bytes(data[:4], 'big')
print(f"probe quote={size == len(data) - 4 and size > 0} extra={os.environ.get('PROBE_EXTRA')} "
      f"root={os.environ.get('ENCLAVE_BUILD_ROOT', '-')}", flush=True)
sys.exit(int(os.environ.get('PROBE_EXIT', '0')))
"""


class ProbePlugin:
    """Framework 'probe' (Python -c PROBE) and 'probe-binary' (runs a binary)."""

    def __init__(self, python: str = "/usr/bin/python3.11"):
        self.python = python

    def _plan(self, spec):
        plan = base_plan(
            spec,
            self.framework,
            entrypoint=self.python,
            argv=[self.python, "-c", PROBE],
            trusted=[
                self.python,
                "/usr/lib/python3.11/",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/usr/lib/x86_64-linux-gnu/libexpat.so.1",
            ],
            user="10001",
        )
        if hasattr(plan, "env_passthrough"):
            plan.env_passthrough[:] = sorted(
                {*plan.env_passthrough, QUOTER_ENV, "PROBE_EXTRA", "PROBE_EXIT"}
            )
        return plan

    def _binary_plan(self, spec):
        binary = "/usr/bin/tensorflow_model_server"
        return base_plan(spec, self.binary, entrypoint=binary, argv=[binary], trusted=[binary])

    @property
    def framework(self) -> Framework:
        return Framework(
            "probe",
            "quoter probe (tests)",
            "example/none:1",
            self._plan,
            default_enclave_size=1 << 30,
            default_max_threads=8,
        )

    @property
    def binary(self) -> Framework:
        return Framework(
            "probe-binary",
            "a binary framework (tests)",
            "example/none:1",
            self._binary_plan,
            default_enclave_size=1 << 30,
            default_max_threads=8,
        )

    @hookimpl
    def enclave_build_frameworks(self):
        return [self.framework, self.binary]


def _build(tmp_path: Path, base: Path, signing_key: Path, framework: str = "probe") -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(signing_key, project / "key.pem")
    spec = write_spec(
        project,
        f'[service]\nname = "probe"\nframework = "{framework}"\n\n[signing]\nkey = "key.pem"\n',
    )
    build(
        spec,
        output=tmp_path / "out",
        base=f"dir:{base}",
        registry=PluginRegistry(extra_plugins=[ProbePlugin()]),
    )
    return tmp_path / "out"


def _run(out: Path, **kw) -> tuple[int, str, list[str]]:
    lines: list[str] = []
    result = subprocess.PIPE
    captured: dict = {}

    def started(process):
        captured["process"] = process

    options = RunOptions(
        pki=kw.pop("pki", None),
        env=kw.pop("env", {}),
        mode=kw.pop("mode", "auto"),
        stdout=result,
        stderr=subprocess.STDOUT,
        log=lines.append,
        started=started,
    )
    # Read output after the fact: the probe writes little, far below a pipe's buffer.
    code = run_build(out, options)
    output = captured["process"].stdout.read().decode()
    return code, output, lines


# --------------------------------------------------------------------------- errors


def test_missing_build_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"{tmp_path / 'nope'}: no such build directory"):
        open_build(tmp_path / "nope")


def test_missing_oci_and_measurements_are_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"{tmp_path / 'oci'}: no OCI image layout"):
        open_build(tmp_path)
    (tmp_path / "oci").mkdir()
    with pytest.raises(UsageError, match=f"{tmp_path / 'measurements.json'}: not found"):
        open_build(tmp_path)


def test_cli_errors(tmp_path: Path) -> None:
    missing = run_cli("run", str(tmp_path / "nope"), "--simulate")
    assert missing.returncode == 2  # a usage problem (docs/reference/exit-codes.md)
    assert f"error: {tmp_path / 'nope'}: no such build directory" in missing.stderr.decode()
    no_simulate = run_cli("run", str(tmp_path))
    assert no_simulate.returncode == 2 and b"pass --simulate" in no_simulate.stderr
    bad_env = run_cli("run", str(tmp_path), "--simulate", "--env", "NOEQUALS")
    assert bad_env.returncode == 2 and b"expected NAME=VALUE" in bad_env.stderr
    helped = run_cli("run", "--help")
    assert (
        helped.returncode == 0
        and b'"$(command -v enclave-build)" run out --simulate' in helped.stdout
    )


# --------------------------------------------------------------------------- stand-in base


def test_binary_framework_without_real_base_exits_2(tmp_path, standin_root, signing_key):
    out = _build(tmp_path, standin_root, signing_key, framework="probe-binary")
    build_, root = open_build(out)
    with pytest.raises(CannotSimulate, match=r"runs a binary .*tensorflow_model_server") as info:
        choose_mode(build_, root)
    assert info.value.exit_code == 2
    proc = run_cli("run", str(out), "--simulate")
    assert proc.returncode == 2, proc.stderr.decode()
    # how to get a real base, without naming a file only a checkout has
    assert b"--base dir:ROOTFS" in proc.stderr and b"scripts/" not in proc.stderr
    assert b"enclave-build base gramine ROOTFS" in proc.stderr


def test_forcing_gramine_direct_on_a_standin_image_is_refused(tmp_path, standin_root, signing_key):
    out = _build(tmp_path, standin_root, signing_key)
    build_, root = open_build(out)
    assert standin_base(RootFS(root)) == StandInBase("1.9")  # the base's marker, in the image
    with pytest.raises(CannotSimulate, match=r"built on a STAND-IN base \(`enclave-build base"):
        choose_mode(build_, root, "gramine-direct")


def test_a_base_without_gramine_direct_is_not_called_a_standin(tmp_path, standin_root, signing_key):
    """Only the stand-in's marker makes an image a stand-in's; a base that merely lacks
    gramine-direct is named for what it lacks."""
    plain = tmp_path / "plain-base"
    shutil.copytree(standin_root, plain, symlinks=True)
    (plain / STANDIN_MARKER.lstrip("/")).unlink()
    out = _build(tmp_path, plain, signing_key)
    build_, root = open_build(out)
    assert standin_base(RootFS(root)) is None
    with pytest.raises(CannotSimulate, match="no real Gramine") as info:
        choose_mode(build_, root, "gramine-direct")
    assert "stand-in" not in str(info.value).lower()


def test_plain_process_command_maps_the_image_under_the_root(tmp_path, standin_root, signing_key):
    out = _build(tmp_path, standin_root, signing_key)
    build_, root = open_build(out)
    assert choose_mode(build_, root) == "process"
    argv, env, _cwd = process_command(build_, Path("/priv"), {"X": "1"})
    assert argv[1:3] == ["-c", PROBE]
    assert env[ROOT_ENV] == "/priv" and env["X"] == "1"
    # The probe's manifest sets no PYTHONPATH, so the process gets none (not even the host's),
    # as in the enclave.
    assert "PYTHONPATH" not in env
    assert "LD_LIBRARY_PATH" not in env or env["LD_LIBRARY_PATH"] == os.environ.get(
        "LD_LIBRARY_PATH"
    )


def test_plain_process_run_gets_quotes_and_exit_code(tmp_path, standin_root, signing_key):
    out = _build(tmp_path, standin_root, signing_key)
    code, output, log = _run(out, env={"PROBE_EXTRA": "x1", "PROBE_EXIT": "5"}, pki=None)
    assert code == 5, output
    assert BANNER in log
    assert "probe quote=True extra=x1 root=" in output
    root = output.split("root=")[1].strip()
    assert root.startswith("/") and not Path(root).exists()  # the private root is gone


def test_tampered_measurements_json_is_refused_naming_both_values(
    tmp_path, standin_root, signing_key
):
    out = _build(tmp_path, standin_root, signing_key)
    path = out / "measurements.json"
    data = json.loads(path.read_text())
    real = data["mr_enclave"]
    data["mr_enclave"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(RunError) as info:
        open_build(out)
    assert info.value.exit_code == 1
    assert f"measurements.json mr_enclave = '{'0' * 64}', but the SIGSTRUCT says '{real}'" in str(
        info.value
    )
    proc = run_cli("run", str(out), "--simulate")
    assert proc.returncode == 1, proc.stderr.decode()
    stderr = proc.stderr.decode()
    assert "the image is not what its identity says" in stderr and "not starting" in stderr
    assert "0" * 64 in stderr and real in stderr
    assert "SIMULATION" not in stderr  # refused before the quoter started


def test_measurements_json_of_another_build_is_refused(tmp_path, standin_root, signing_key):
    (tmp_path / "a").mkdir()
    first = _build(tmp_path / "a", standin_root, signing_key)
    (tmp_path / "b").mkdir()
    project = tmp_path / "b" / "project"
    project.mkdir()
    shutil.copy(signing_key, project / "key.pem")
    spec = write_spec(
        project,
        '[service]\nname = "probe"\nframework = "probe"\n\n'
        '[enclave]\nisv_svn = 9\n\n[signing]\nkey = "key.pem"\n',
    )
    build(
        spec,
        output=tmp_path / "b" / "out",
        base=f"dir:{standin_root}",
        registry=PluginRegistry(extra_plugins=[ProbePlugin()]),
    )
    second = tmp_path / "b" / "out"
    other = json.loads((second / "measurements.json").read_text())
    own = json.loads((first / "measurements.json").read_text())
    assert other["mr_enclave"] != own["mr_enclave"]
    shutil.copy(second / "measurements.json", first / "measurements.json")
    proc = run_cli("run", str(first), "--simulate")
    assert proc.returncode == 1, proc.stderr.decode()
    stderr = proc.stderr.decode()
    assert (
        f"measurements.json mr_enclave = '{other['mr_enclave']}', but the SIGSTRUCT says "
        f"'{own['mr_enclave']}'"
    ) in stderr
    assert "measurements.json isv_svn = 9, but the SIGSTRUCT says 0" in stderr
    assert "measurements.json names image" in stderr


# --------------------------------------------------------------------------- real Gramine


@pytest.mark.integration
def test_gramine_direct_run_as_image_user(tmp_path, gramine_base_dir, signing_key):
    if os.geteuid() != 0:
        pytest.skip("gramine-direct needs root")
    out = _build(tmp_path, gramine_base_dir, signing_key)
    build_, root = open_build(out)
    assert choose_mode(build_, root) == "gramine-direct"
    manifest = json.dumps(build_.manifest.get("loader", {}).get("env", {}))
    if QUOTER_ENV not in manifest:
        pytest.skip("this tree's Gramine backend cannot declare passthrough variables yet")
    code, output, log = _run(out, env={"PROBE_EXTRA": "in-enclave", "PROBE_EXIT": "3"})
    assert code == 3, output
    assert "probe quote=True extra=in-enclave root=-" in output
    assert any("mode gramine-direct" in line for line in log)
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


# --------------------------------------------------------------------------- private root


def _tar_layer(members: list[tuple[str, str, int, int, int]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, uid, gid, mode in members:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mode = uid, gid, mode
            info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(b"") if kind == "file" else None)
    return buf.getvalue()


def test_layer_owners_and_modes_are_restored_in_the_private_root(tmp_path: Path) -> None:
    from enclave_build.builder.image.oci import OCI_CONFIG, OCI_LAYER, BlobStore, Descriptor, Image
    from enclave_build.builder.run.rootfs import apply_ownership, image_ownership, private_root

    store = BlobStore(tmp_path / "blobs")
    layers = []
    for members in (
        [
            ("models", "dir", 10001, 0, 0o750),
            ("models/m.bin", "file", 10001, 0, 0o600),
            ("etc", "dir", 0, 0, 0o755),
            ("etc/x", "file", 0, 0, 0o200),
            ("etc/keep", "file", 0, 0, 0o644),
        ],
        [("etc/.wh.x", "file", 0, 0, 0o644)],
    ):
        data = _tar_layer(members)
        layers.append(Descriptor(OCI_LAYER, store.put_bytes(data), len(data)))
    image = Image(
        store, {"rootfs": {"diff_ids": []}}, Descriptor(OCI_CONFIG, "sha256:" + "0" * 64, 0), layers
    )
    entries = image_ownership(image, tmp_path / "cache")
    assert entries == [("models", 10001, 0, 0o750, True), ("models/m.bin", 10001, 0, 0o600, False)]
    assert image_ownership(image, tmp_path / "cache") == entries  # from the cache now
    lower = tmp_path / "lower"
    (lower / "models").mkdir(parents=True)
    (lower / "models/m.bin").write_bytes(b"x")
    os.chmod(lower / "models/m.bin", 0o644)
    with private_root(lower) as root:
        apply_ownership(root, entries)
        st = (root / "models/m.bin").stat()
        assert oct(st.st_mode & 0o777) == oct(0o600)
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (10001, 0)
        (root / "new").write_text("private")
    assert not (lower / "new").exists()  # the lower tree is untouched
    assert (lower / "models/m.bin").stat().st_mode & 0o777 == 0o644
