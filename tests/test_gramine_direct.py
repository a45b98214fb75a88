"""builder.run.gramine_direct on the REAL Gramine 1.9 base (tests/gramine_base.py).

Hand-written manifests, signed by the base's own gramine-sgx-sign in a chroot, booted under
gramine-direct by the launcher. They pin down what the LibOS does (GRAMINE-RUNTIME.md rows 4, 6,
8) so later tests can rely on it: a file that is not trusted fails with EACCES; Python without
its standard library trusted dies at start; an encrypted-mount file the runtime user cannot open
read-write fails; in direct mode /dev/attestation has keys/ but no quote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from enclave_build.builder.run.gramine_direct import (
    DirectLaunch,
    LaunchError,
    command,
    has_gramine_direct,
    resolve_user,
    run,
    start,
    wait_forwarding,
)
from enclave_build.builder.run.rootfs import private_root

pytestmark = pytest.mark.integration

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gramine-direct needs root")

PYTHON = "/usr/bin/python3.11"
RUNTIME_UID = 10001
PYTHON_TRUSTED = [
    "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc/",
    f"file:{PYTHON}",
    "file:/usr/lib/python3.11/",
    "file:/usr/lib/x86_64-linux-gnu/libz.so.1",
    "file:/usr/lib/x86_64-linux-gnu/libexpat.so.1",
]
WRAP_KEY = bytes(range(16))


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"  # JSON strings are TOML


def write_manifest(
    root: Path,
    name: str,
    code: str,
    trusted: list[str] | None = None,
    mounts: Sequence[str] = (),
    extra: str = "",
) -> str:
    """Write /enclave/NAME.manifest.sgx in *root*, signed by the base's gramine-sgx-sign."""
    argv = _toml_list(["python3.11", "-c", code])
    trusted = PYTHON_TRUSTED if trusted is None else trusted
    all_mounts = [
        '{ path = "/lib", uri = "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc" }',
        '{ type = "tmpfs", path = "/tmp" }',
        *mounts,
    ]
    text = f"""
libos.entrypoint = "{PYTHON}"
loader.log_level = "error"
loader.argv = {argv}
loader.entrypoint.uri = "file:/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
loader.env.LD_LIBRARY_PATH = "/lib:/usr/lib/x86_64-linux-gnu"
loader.env.HOME = "/enclave"
loader.env.PROBE = {{ passthrough = true }}
fs.root = {{ type = "chroot", uri = "file:/" }}
fs.mounts = [{", ".join(all_mounts)}]
sys.stack.size = "8M"
sys.enable_sigterm_injection = true
sgx.debug = true
sgx.file_check_policy = "strict"
sgx.trusted_files = {_toml_list(trusted)}
{extra}
"""
    enclave = root / "enclave"
    enclave.mkdir(exist_ok=True)
    (enclave / f"{name}.manifest.template").write_text(text)
    key = "/enclave/.signing-key.pem"
    script = (
        f"[ -f {key} ] || gramine-sgx-gen-private-key -f {key} >/dev/null; "
        f"cd /enclave && gramine-sgx-sign --key {key} --manifest {name}.manifest.template "
        f"--output {name}.manifest.sgx >/dev/null"
    )
    subprocess.run(["chroot", str(root), "/bin/sh", "-c", script], check=True)
    return f"/enclave/{name}"


def boot(
    root: Path,
    app: str,
    uid: int = RUNTIME_UID,
    gid: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    # The LibOS writes the application's stderr to the host's *stdout* (both are its tty
    # device), so the streams are read together.
    process = start(
        DirectLaunch(root, app, uid, gid, env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"gramine-direct did not finish in {timeout}s:\n{out}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


@pytest.fixture
def root(gramine_base_dir: Path):
    if os.geteuid() != 0:
        pytest.skip("gramine-direct needs root (chroot, bind mounts)")
    with private_root(gramine_base_dir) as private:
        yield private
    assert str(private) not in Path("/proc/self/mountinfo").read_text()


def test_base_has_real_gramine_and_runtimes(gramine_base_dir: Path) -> None:
    assert has_gramine_direct(gramine_base_dir)
    site = gramine_base_dir / "usr/local/lib/python3.11/dist-packages"
    for package in (
        "numpy",
        "grpc",
        "google/protobuf",
        "ai_edge_litert",
        "openvino",
        "cbor2",
        "httptools",
    ):
        assert (site / package).is_dir(), package
    assert resolve_user(gramine_base_dir, "10001") == (10001, 0)
    assert resolve_user(gramine_base_dir, "enclave") == (10001, 0)
    assert (gramine_base_dir / "etc/hosts").is_file()
    # precompiled with unchecked-hash .pyc (flags word = 1): usable although st_mtime is 0
    pyc = gramine_base_dir / "usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc"
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 1


@needs_root
def test_python_boots_as_runtime_user_and_env_passthrough(root: Path) -> None:
    app = write_manifest(
        root, "hello", "import os; print('hello from the LibOS', os.environ['PROBE'])"
    )
    result = boot(root, app, env={"PROBE": "passed-through"})
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "hello from the LibOS passed-through"


@needs_root
def test_untrusted_file_fails_with_eacces(root: Path) -> None:
    (root / "etc/untrusted.txt").write_text("not in trusted_files\n")
    os.chmod(root / "etc/untrusted.txt", 0o644)  # readable by anyone on the host
    app = write_manifest(root, "untrusted", "open('/etc/untrusted.txt').read()")
    result = boot(root, app)
    assert result.returncode != 0
    assert "PermissionError: [Errno 13] Permission denied: '/etc/untrusted.txt'" in result.stdout


@needs_root
def test_python_without_trusted_stdlib_dies_at_start(root: Path) -> None:
    """GRAMINE-RUNTIME.md row 4: /usr/lib/python3.11/ must be trusted."""
    trusted = [t for t in PYTHON_TRUSTED if t != "file:/usr/lib/python3.11/"]
    app = write_manifest(root, "nostdlib", "print('unreachable')", trusted=trusted)
    result = boot(root, app)
    assert result.returncode != 0
    assert "unreachable" not in result.stdout
    assert "PermissionError" in result.stdout and "/usr/lib/python3.11/encodings" in result.stdout


def _encrypted_model(root: Path, owner: int) -> str:
    """/models/m/model.bin encrypted by the base's gramine-sgx-pf-crypt, owned by *owner*."""
    models = root / "models" / "m"
    models.mkdir(parents=True)
    (root / "tmp" / "wrap.key").write_bytes(WRAP_KEY)
    (root / "tmp" / "plain.bin").write_bytes(b"model bytes " * 100)
    subprocess.run(
        [
            "chroot",
            str(root),
            "gramine-sgx-pf-crypt",
            "encrypt",
            "-w",
            "/tmp/wrap.key",
            "-i",
            "/tmp/plain.bin",
            "-o",
            "/models/m/model.bin",
        ],
        check=True,
        capture_output=True,
    )
    for path in (models.parent, models, models / "model.bin"):
        os.chown(path, owner, 0)
    os.chmod(models / "model.bin", 0o644)
    code = (
        "import hashlib; data = open('/models/m/model.bin', 'rb').read(); "
        "print(len(data), hashlib.sha256(data).hexdigest())"
    )
    mount = '{ type = "encrypted", path = "/models", uri = "file:/models", key_name = "mk" }'
    return write_manifest(
        root, "encrypted", code, mounts=[mount], extra=f'fs.insecure__keys.mk = "{WRAP_KEY.hex()}"'
    )


@needs_root
def test_encrypted_file_owned_by_runtime_user_decrypts(root: Path) -> None:
    import hashlib

    app = _encrypted_model(root, owner=RUNTIME_UID)
    result = boot(root, app)
    assert result.returncode == 0, result.stdout
    want = b"model bytes " * 100
    assert result.stdout.split() == [str(len(want)), hashlib.sha256(want).hexdigest()]


@needs_root
def test_root_owned_0644_encrypted_file_fails_for_runtime_user(root: Path) -> None:
    """GRAMINE-RUNTIME.md row 6: Gramine opens an encrypted file's host file read-write."""
    app = _encrypted_model(root, owner=0)
    result = boot(root, app)
    assert result.returncode != 0
    assert "PermissionError" in result.stdout and "/models/m/model.bin" in result.stdout
    assert boot(root, app, uid=0).returncode == 0  # the same image works as root


@needs_root
def test_direct_mode_has_keys_but_no_quote_device(root: Path) -> None:
    """GRAMINE-RUNTIME.md row 8: only /dev/attestation/keys exists in direct mode."""
    code = (
        "import os\n"
        "print('keys' if os.path.isdir('/dev/attestation/keys') else 'no-keys')\n"
        "try:\n    open('/dev/attestation/quote', 'rb').read()\n    print('quote')\n"
        "except OSError as exc:\n    print('no-quote', exc.errno)"
    )
    app = write_manifest(root, "attest", code)
    result = boot(root, app)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.split("\n")
    assert lines[0] == "keys" and lines[1].startswith("no-quote")


@needs_root
def test_sigterm_is_forwarded_to_the_application(root: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"
    )
    app = write_manifest(root, "term", code)
    process = start(DirectLaunch(root, app, RUNTIME_UID, 0), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    # SIGTERM to *us* reaches the application through wait_forwarding. Sent once its handler
    # is installed (not after a fixed delay: a SIGTERM before that would end pytest itself).
    before = signal.getsignal(signal.SIGTERM)

    def terminate_us() -> None:
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGTERM) is before:
            if time.monotonic() > deadline:
                process.kill()  # never forwarding: fail the test, not the whole run
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_us, daemon=True).start()
    code_ = wait_forwarding(process)
    assert code_ == 7
    assert process.stdout.read().strip() == "got SIGTERM"


@needs_root
def test_launch_errors_name_what_is_missing(tmp_path: Path, root: Path) -> None:
    with pytest.raises(LaunchError, match="no Gramine"):
        run(DirectLaunch(tmp_path, "/enclave/x"))
    with pytest.raises(LaunchError, match=r"/enclave/missing\.manifest\.sgx"):
        run(DirectLaunch(root, "/enclave/missing"))


def test_command_uses_a_private_mount_namespace(tmp_path: Path) -> None:
    cmd = command(DirectLaunch(tmp_path, "/enclave/svc", 10001, 0, {"A": "1"}))
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert "A=1" in cmd
    script = cmd[-1]
    assert f"mount -o remount,bind,ro {tmp_path.resolve()}/proc" in script
    assert "--userspec=10001:0" in script and script.endswith(
        "/usr/bin/gramine-direct /enclave/svc"
    )
