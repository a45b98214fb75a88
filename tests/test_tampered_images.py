"""Tampered images: `run --simulate` refuses them and `inspect` reports them.

Each image here is built, then changed as an attacker who can write the build directory would
(tests/tamper.py): files changed or added in the layers, every digest fixed up, and
measurements.json's unsigned ``image.digest`` re-pointed at the tampered image -- so labels,
measurements.json and the SIGSTRUCT still agree with each other, and only the image's own files
can give the tamper away: MRENCLAVE re-derived from its manifest and libpal.so, the trusted
files' hashes, and what lies on the server's PYTHONPATH.

Every tampered program would print TAMPERED and exit 42 if it ran; a refused run exits 1 before
the simulated quoter (and its SIMULATION banner) starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enclave_build.builder.build import build
from enclave_build.builder.gramine.measure import PalImage
from enclave_build.builder.image.inspect import inspect_image
from enclave_build.builder.image.verify import EnclaveVerification
from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.run import RunError, open_build
from enclave_build.builder.run.gramine_direct import prepare_manifest
from enclave_build.builder.run.view import ViewError, populate
from enclave_build.plugin import Framework, base_plan, hookimpl

from .conftest import tflite_bytes, write_spec
from .tamper import append, replace_text, tamper

TAMPERED = "import os; print('TAMPERED', flush=True); os._exit(42)\n"
LIBPAL = "/usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so"
LIBOS = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
SERVER = "/opt/enclave-build/python"

# Runs as the enclave's program: reports the MRENCLAVE in the quote the simulated quoter gives
# it (bytes 112..144 of a quote), and whether an untrusted module beside it was importable.
PROBE = """
import os, socket, sys
host, port = os.environ['ENCLAVE_BUILD_SIMULATED_QUOTER'].rsplit(':', 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(bytes(64))
    data = b''
    while chunk := s.recv(65536):
        data += chunk
try:
    import planted
    planted_seen = True
except ImportError:
    planted_seen = False
print(f"probe mr_enclave={data[4 + 112:4 + 144].hex()} planted={planted_seen}", flush=True)
"""


class Probe:
    """Framework 'tamper-probe': python -c PROBE, the interpreter's closure trusted."""

    @staticmethod
    def _plan(spec):
        python = "/usr/bin/python3.11"
        plan = base_plan(
            spec,
            Probe.framework(),
            entrypoint=python,
            argv=[python, "-c", PROBE],
            trusted=[
                python,
                "/usr/lib/python3.11/",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/usr/lib/x86_64-linux-gnu/libexpat.so.1",
            ],
            user="10001",
        )
        plan.env_passthrough.append("ENCLAVE_BUILD_SIMULATED_QUOTER")
        return plan

    @staticmethod
    def framework() -> Framework:
        return Framework(
            "tamper-probe",
            "quote probe (tests)",
            "example/none:1",
            Probe._plan,
            default_enclave_size=1 << 30,
            default_max_threads=8,
        )

    @hookimpl
    def enclave_build_frameworks(self):
        return [self.framework()]


def _probe_build(directory: Path, base: Path, signing_key: Path) -> Path:
    project = directory / "project"
    project.mkdir(parents=True)
    shutil.copy(signing_key, project / "key.pem")
    spec = write_spec(
        project,
        '[service]\nname = "probe"\nframework = "tamper-probe"\n\n[signing]\nkey = "key.pem"\n',
    )
    build(
        spec,
        output=directory / "out",
        base=f"dir:{base}",
        registry=PluginRegistry(extra_plugins=[Probe()]),
    )
    return directory / "out"


@pytest.fixture(scope="module")
def probe_out(tmp_path_factory, standin_root, signing_key) -> Path:
    return _probe_build(tmp_path_factory.mktemp("probe"), standin_root, signing_key)


@pytest.fixture(scope="module")
def server_out(tmp_path_factory, standin_root, signing_key) -> Path:
    """Our model server (tflite) with an unencrypted model: no secret server needed."""
    directory = tmp_path_factory.mktemp("server")
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 8))
    shutil.copy(signing_key, directory / "key.pem")
    write_spec(
        directory,
        '[service]\nname = "face"\nframework = "tflite"\n\n[[models]]\n'
        'name = "face"\npath = "model.tflite"\nencrypt = false\n\n'
        '[signing]\nkey = "key.pem"\n',
    )
    proc = _cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--quiet",
        cwd=directory,
    )
    assert proc.returncode == 0, proc.stderr
    return directory / "out"


def _copy(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave_build", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def assert_refused(out: Path, *expected: str, mode: str = "process") -> None:
    """`run --simulate` exits 1 before starting anything, naming each *expected* text; and
    `inspect` says the image does not agree, with the same reasons."""
    digest = json.loads((out / "measurements.json").read_text())["image"]["digest"]
    layout = json.loads((out / "oci" / "index.json").read_text())["manifests"][0]["digest"]
    assert digest == layout  # re-pointed: the old digest check is satisfied

    ran = _cli("run", str(out), "--simulate", "--mode", mode)
    output = ran.stdout + ran.stderr
    assert "TAMPERED" not in output, output
    assert ran.returncode == 1, output
    assert "not starting" in ran.stderr and "SIMULATION" not in ran.stderr, ran.stderr
    for text in expected:
        assert text in ran.stderr, ran.stderr

    inspected = _cli("inspect", str(out))
    assert inspected.returncode == 1, inspected.stdout + inspected.stderr
    assert re.search(r"^agrees\s+false$", inspected.stdout, re.M), inspected.stdout
    for text in expected:
        assert text in inspected.stderr, inspected.stderr
    report = json.loads(_cli("inspect", str(out), "--json").stdout)
    assert report["agrees"] is False
    assert "measurements.json" not in " ".join(report["problems"])  # it still agrees


# ------------------------------------------------------------------------ tampered images


def test_edited_manifest_argv_is_refused(probe_out, tmp_path):
    out = _copy(probe_out, tmp_path)
    signed = json.loads((out / "measurements.json").read_text())["mr_enclave"]
    tamper(
        out,
        {"/enclave/probe.manifest.sgx": replace_text("import os, socket, sys", TAMPERED.strip())},
    )
    assert_refused(
        out,
        f"MRENCLAVE re-derived from /enclave/probe.manifest.sgx and {LIBPAL} is ",
        f"but /enclave/probe.sig was signed for {signed}: the manifest or libpal.so "
        "is not what was signed",
    )


def test_code_appended_to_the_server_is_refused(server_out, tmp_path):
    out = _copy(server_out, tmp_path)
    tamper(out, {f"{SERVER}/enclave_build/model_server/server.py": append("\n" + TAMPERED)})
    assert_refused(
        out,
        f"trusted file {SERVER}/enclave_build/model_server/server.py (sgx.trusted_files[",
        "was changed: the image holds content with sha256 ",
    )


@pytest.mark.parametrize(
    "path", ["/usr/lib/x86_64-linux-gnu/libz.so.1", LIBOS], ids=["trusted-library", "libos"]
)
def test_swapped_trusted_library_is_refused(probe_out, tmp_path, path):
    out = _copy(probe_out, tmp_path)
    tamper(out, {path: b"\x7fELF swapped library"})
    what = "loader.entrypoint (the LibOS)" if path == LIBOS else "sgx.trusted_files["
    assert_refused(out, f"trusted file {path} ({what}", "was changed")


def test_swapped_libpal_is_refused(probe_out, tmp_path):
    """libpal.so is not a trusted file: it is measured into MRENCLAVE itself."""
    out = _copy(probe_out, tmp_path)
    tamper(out, {LIBPAL: append("\0")})  # one more byte: segments unchanged, file differs
    inspection = inspect_image(str(out))
    assert inspection.agrees, inspection.problems  # what EINIT measures did not change
    tamper(out, {LIBPAL: _patch_loaded_byte})
    assert_refused(out, f"MRENCLAVE re-derived from /enclave/probe.manifest.sgx and {LIBPAL} is ")


def _patch_loaded_byte(data: bytes) -> bytes:
    """Flip one byte inside libpal.so's first loaded segment (measured into MRENCLAVE)."""
    pal = PalImage.from_bytes(data)
    segment = next(s for s in pal.segments if s.filesz > 64)
    at = segment.offset + segment.filesz // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    "name,content",
    [
        ("zz-tampered.pth", "import os; os._exit(42)\n"),
        ("sitecustomize.py", TAMPERED),
    ],
    ids=["pth", "sitecustomize"],
)
def test_extra_file_on_the_server_path_is_refused(server_out, tmp_path, name, content):
    out = _copy(server_out, tmp_path)
    tamper(out, {f"{SERVER}/{name}": content.encode()})
    assert_refused(
        out, f"{SERVER}/{name}: on the manifest's PYTHONPATH ({SERVER}) but not a trusted file"
    )


@pytest.mark.parametrize(
    "path,edit",
    [
        ("/enclave/model-server.json", replace_text('"version": 1', '"version": 42')),
        ("/models/face/1/model.tflite", lambda data: b"TFL3 another model"),
    ],
    ids=["server-config", "model"],
)
def test_trusted_data_swapped_with_image_digest_repointed_is_refused(
    server_out, tmp_path, path, edit
):
    out = _copy(server_out, tmp_path)
    tamper(out, {path: edit})
    assert_refused(out, f"trusted file {path} (sgx.trusted_files[", "was changed")


def test_untampered_images_agree(probe_out, server_out):
    for out in (probe_out, server_out):
        result = inspect_image(str(out))
        assert result.agrees, result.problems
        measured = json.loads((out / "measurements.json").read_text())["mr_enclave"]
        assert result.verification is not None and result.verification.identity is not None
        assert result.verification.identity.mr_enclave == measured
        assert len(result.verification.trusted) > 20


# --------------------------------------------------------------- what a plain process sees


def test_plain_process_quotes_the_rederived_identity_and_sees_only_trusted_files(
    probe_out, tmp_path
):
    """A module planted in the start directory (sys.path[0] of `python -c`) is not trusted:
    the enclave could not open it, and the plain process does not find it either. The quote
    carries the MRENCLAVE re-derived from the image."""
    out = _copy(probe_out, tmp_path)
    tamper(out, {"/planted.py": TAMPERED.encode()})
    build_, _root = open_build(out)
    assert build_.quoted.mr_enclave == build_.verification.identity.mr_enclave
    ran = _cli("run", str(out), "--simulate", "--mode", "process")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    measured = json.loads((out / "measurements.json").read_text())["mr_enclave"]
    assert f"probe mr_enclave={measured} planted=False" in ran.stdout, ran.stdout + ran.stderr
    assert f"mr_enclave {measured} (re-derived from the image's manifest" in ran.stderr
    assert "TAMPERED" not in ran.stdout


def test_view_holds_only_what_the_enclave_may_open(tmp_path):
    """builder.run.view on a hand-made root: trusted files (symlinks materialized from inside
    the image), allowed and encrypted-mount files; nothing else, and no links out."""
    image = tmp_path / "image"
    (image / "app/pkg").mkdir(parents=True)
    (image / "app/pkg/mod.py").write_text("trusted = True\n")
    (image / "app/pkg/extra.py").write_text("untrusted\n")
    (image / "app/sitecustomize.py").write_text("untrusted\n")
    (image / "etc").mkdir()
    (image / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (image / "etc/shadow").write_text("secret\n")
    (image / "models/m").mkdir(parents=True)
    (image / "models/m/a.bin").write_bytes(b"PF")
    (image / "lib").mkdir()
    (image / "lib/real.so").write_bytes(b"ELF")
    os.symlink("/lib/real.so", image / "app/link.so")  # absolute: inside the image
    os.symlink(str(tmp_path / "host-secret"), image / "app/out")  # untrusted link out
    (tmp_path / "host-secret").write_text("host\n")
    rootfs = RootFS(image)
    manifest = {
        "sgx": {"allowed_files": ["file:/etc/hosts"]},
        "fs": {
            "start_dir": "/app",
            "mounts": [
                {"type": "encrypted", "path": "/models/m", "uri": "file:/models/m"},
                {"type": "tmpfs", "path": "/tmp"},
            ],
        },
    }
    verification = EnclaveVerification(
        "/enclave/x",
        rootfs,
        manifest,
        None,
        {"/app/pkg/mod.py": image / "app/pkg/mod.py", "/app/link.so": image / "lib/real.so"},
    )
    view = tmp_path / "view"
    view.mkdir()
    assert populate(view, verification) == 4
    files = sorted(str(p.relative_to(view)) for p in view.rglob("*") if not p.is_dir())
    assert files == ["app/link.so", "app/pkg/mod.py", "etc/hosts", "models/m/a.bin"]
    assert not any(p.is_symlink() for p in view.rglob("*"))
    assert (view / "app/link.so").read_bytes() == b"ELF"
    assert (view / "tmp").is_dir()

    verification.problems.append("tampered")
    with pytest.raises(ViewError, match="does not agree"):
        populate(tmp_path / "other", verification)


def test_gramine_direct_manifest_copy_stays_inside_the_root(tmp_path):
    """gramine-direct loads APP.manifest, copied from APP.manifest.sgx in the private root: a
    symlink in the image must not make that copy write (as root) or read a file of the host."""
    root = tmp_path / "root"
    (root / "enclave").mkdir(parents=True)
    (root / "enclave/app.manifest.sgx").write_text("signed")
    victim = tmp_path / "host-file"
    victim.write_text("host")
    os.symlink(str(victim), root / "enclave/app.manifest")
    plain = prepare_manifest(root, "/enclave/app")
    assert victim.read_text() == "host"
    assert plain == root / "enclave/app.manifest" and not plain.is_symlink()
    assert plain.read_text() == "signed"

    (root / "srv").mkdir()
    (root / "srv/other.sgx").write_text("inside the image")
    os.symlink("/srv/other.sgx", root / "enclave/linked.manifest.sgx")  # absolute, in-image
    assert prepare_manifest(root, "/enclave/linked").read_text() == "inside the image"


def test_open_build_refuses_before_anything_runs(probe_out, tmp_path):
    out = _copy(probe_out, tmp_path)
    tamper(out, {"/usr/lib/x86_64-linux-gnu/libexpat.so.1": b"\x7fELF other"})
    with pytest.raises(RunError) as info:
        open_build(out)
    assert info.value.exit_code == 1
    assert "trusted file /usr/lib/x86_64-linux-gnu/libexpat.so.1" in str(info.value)


# ---------------------------------------------------------------- the real Gramine LibOS


@pytest.mark.integration
def test_gramine_direct_refuses_an_edited_manifest(tmp_path, gramine_base_dir, signing_key):
    if os.geteuid() != 0:
        pytest.skip("gramine-direct needs root")
    out = _probe_build(tmp_path, gramine_base_dir, signing_key)
    signed = json.loads((out / "measurements.json").read_text())["mr_enclave"]
    tamper(
        out,
        {"/enclave/probe.manifest.sgx": replace_text("import os, socket, sys", TAMPERED.strip())},
    )
    assert_refused(
        out,
        f"MRENCLAVE re-derived from /enclave/probe.manifest.sgx and {LIBPAL} is ",
        f"but /enclave/probe.sig was signed for {signed}",
        mode="auto",
    )
