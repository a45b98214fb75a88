"""The secure serving flow under the REAL Gramine 1.9 LibOS (gramine-direct, no SGX).

The real-LibOS twin of tests/test_serving_e2e.py: the services are built on the real Gramine
base of tests/gramine_base.py (``--base dir:ROOTFS``) and ``enclave-build run --simulate`` boots
them with ``gramine-direct`` in a chroot of the image, as the image's user (uid 10001). So:

- the LibOS enforces the manifest: a file the service opens that is neither trusted nor allowed
  is refused (EACCES) and, at ``[enclave] log_level = "warning"``, Gramine logs
  ``Disallowing access to file '...'; file is not allowed.`` -- every run here asserts that no
  such line (nor a trusted-file hash mismatch, nor a refused file creation) appears;
- the encrypted models are decrypted by the LibOS through its encrypted mounts, with keys our
  in-enclave code fetched from the real secret server and wrote to /dev/attestation/keys/NAME
  (quotes from the simulated quoter: direct mode has no quote device);
- the tflite build serves an attested endpoint (``[tls] issuer = "secret-server"``): the model
  server makes its key inside the LibOS with the base's own ``cryptography``, gets its
  certificate from the real secret server's issuing CA, and tritonclient trusting only
  issuer-ca.pem and ``enclave-build attest`` accept it.

Skips with the reason without ../shared/gramine or root; fails under CI=true (the fixture).
Tolerance: served outputs equal the direct runtime call exactly (same runtime, same thread count,
same input bytes), as in the plain-process tests.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from enclave_build.builder.secrets_config import write_issuing_ca

from . import serving_env as se
from .models import face_detection_tflite

pytestmark = pytest.mark.integration


#: Gramine 1.9's own log lines for a file the manifest does not cover (libos/src/fs/chroot/fs.c
#: and trusted.c; logged at warning level, so the test services build with log_level "warning").
REFUSED = re.compile(
    r"Disallowing access to file '[^']*'; file is not allowed"
    r"|Disallowing creating file '[^']*'; file is not trusted or allowed"
    r"|Hash of trusted file '[^']*' does not match"
    r"|Disallowing write/append to a trusted file"
    r"|Disallowing creating a trusted file"
)
LOG_LEVEL = '[enclave]\nlog_level = "warning"\n'
#: The tflite build's endpoint: certified by the secret server for these names.
ATTESTED_TLS = '[tls]\nissuer = "secret-server"\nhosts = ["localhost", "127.0.0.1"]\n'


def refused_files(text: str) -> list[str]:
    """Gramine's lines refusing a file the manifest does not trust or allow."""
    return [line for line in text.splitlines() if REFUSED.search(line)]


@pytest.fixture(scope="module")
def real_base(gramine_base_dir: Path) -> Path:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "gramine-direct needs root (CI=true: the real-LibOS tests must run)", pytrace=False
            )
        pytest.skip("gramine-direct needs root (chroot and bind mounts)")
    return gramine_base_dir


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One XDG_CACHE_HOME for every build and run of this module: the real base's layer and
    hashes are made once (~45 s cold), not per test."""
    return tmp_path_factory.mktemp("real-libos-cache")


@pytest.fixture()
def env(shared_cache, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))  # for in-process cache reads
    return {"XDG_CACHE_HOME": str(shared_cache)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory, signing_key) -> se.Keys:
    made = se.Keys.make(tmp_path_factory.mktemp("keys"), signing_key)
    write_issuing_ca(made.directory)  # issuer-ca.pem / issuer-ca.key, as `secrets tls` does
    return made


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory, keys, real_base, shared_cache) -> Path:
    """The tflite example shape: two encrypted models, each with its own key, served on an
    attested endpoint whose certificate the secret server issues."""
    model = face_detection_tflite()
    section, _ = _ports("tflite")
    return _build(
        tmp_path_factory.mktemp("tflite"),
        keys,
        real_base,
        "tflite",
        [("owner_a", model, "owner-a-key"), ("owner_b", model, "owner-b-key")],
        section,
        {"XDG_CACHE_HOME": str(shared_cache)},
        extra=ATTESTED_TLS,
    )


def _p50_grpc_ms(
    served: se.Served,
    model: str,
    name: str,
    tensor: np.ndarray,
    n: int = 20,
    ca: Path | None = None,
) -> float:
    import tritonclient.grpc as grpcclient

    g, _ = se.clients(served, ca)
    gi = grpcclient.InferInput(name, list(tensor.shape), "FP32")
    gi.set_data_from_numpy(tensor)
    g.infer(model, [gi])  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        g.infer(model, [gi])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _build(
    tmp_path: Path,
    keys: se.Keys,
    base: Path,
    framework: str,
    models,
    section: str,
    env: dict,
    name: str = "svc",
    enclave: str = LOG_LEVEL,
    extra: str = "",
) -> Path:
    work = tmp_path / name
    work.mkdir()
    spec = se.write_spec(
        work, keys, service=name, framework=framework, models=models, section=section, extra=extra
    )
    # write_spec's [enclave] section gets the log level appended (one [enclave] table)
    text = spec.read_text().replace("[enclave]\n", enclave, 1)
    spec.write_text(text)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave_build",
            "build",
            str(spec),
            "--base",
            f"dir:{base}",
            "--output",
            str(work / "out"),
        ],
        env={**os.environ, **env},
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return work / "out"


def _ports(section: str) -> tuple[str, int]:
    grpc_port = se.free_port()
    return f"[{section}]\ngrpc_port = {grpc_port}\nrest_port = {se.free_port()}\n", grpc_port


def _start(
    out: Path, keys: se.Keys, env: dict, timeout: float = 180, mode: str = "auto"
) -> tuple[se.Process, se.Served | None, tuple[float, float]]:
    """`run --simulate` (as serving_env.start_run); also (seconds from `run` start to
    "model_server: serving", seconds of that after the runner launched the service -- i.e.
    without unpacking the image)."""
    t0 = time.monotonic()
    proc = se._cli(
        "run", str(out), "--simulate", "--pki", str(keys.pki_dir), "--mode", mode, env=env
    )
    output = se.Output(proc)
    launched = output.wait_for(re.compile(r"^run: .* mode "), timeout)
    t1 = time.monotonic()
    match = output.wait_for(se.SERVING, timeout) if launched else None
    t2 = time.monotonic()
    process = se.Process(proc, output)
    if match is None:
        return process, None, (t2 - t0, t2 - t1)
    host = "127.0.0.1" if match[1] in ("0.0.0.0", "::") else match[1]
    return (
        process,
        se.Served(process, f"{host}:{match[2]}", f"{host}:{match[4]}"),
        (t2 - t0, t2 - t1),
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _loader_uids(run: se.Process) -> set[int]:
    """Real uids of the Gramine loader processes under the `run` command."""
    uids = set()
    for pid in _descendants(run.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"gramine/direct/loader" in cmdline or b"gramine/direct/libpal" in cmdline:
            uids.add(int(next(s for s in status.splitlines() if s.startswith("Uid:")).split()[1]))
    return uids


def _report(name: str, value: str) -> None:
    print(f"[real-libos] {name}: {value}", file=sys.stderr)


def _assert_gramine_direct(run: se.Process) -> None:
    text = run.output.text
    assert "mode gramine-direct" in text, text
    assert refused_files(text) == [], "files the manifest does not cover:\n" + "\n".join(
        refused_files(text)
    )


def _assert_attested_endpoint(served: se.Served, keys: se.Keys, out: Path, tmp: Path) -> None:
    """The endpoint's certificate was issued by the issuing CA for the spec's hosts and carries
    the quote; `enclave-build attest` accepts the build's measurements and refuses others."""
    import ssl

    from cryptography import x509

    from enclave_build.attestation import ratls, serving_cert

    host, port = served.http.rsplit(":", 1)
    cert = x509.load_pem_x509_certificate(ssl.get_server_certificate((host, int(port))).encode())
    ca = x509.load_pem_x509_certificate((keys.directory / "issuer-ca.pem").read_bytes())
    assert serving_cert.verify_issued(cert, ca)
    assert ratls.extract_evidence(cert).format == "tcg-dice"
    measured = json.loads((out / "measurements.json").read_text())
    identity = serving_cert.read_identity(cert)
    assert identity is not None and identity.mr_enclave == measured["mr_enclave"]
    for address in (served.http, served.grpc):
        ok = se.attest(address, keys, out / "measurements.json")
        assert ok.returncode == 0, ok.stderr.decode()
        assert json.loads(ok.stdout)["attested"] is True
    other = tmp / "other-measurements.json"
    other.write_text(json.dumps({**measured, "mr_enclave": "ab" * 32}))
    wrong = se.attest(served.grpc, keys, other)
    assert wrong.returncode == 1, wrong.stderr.decode()
    assert b"mr_enclave" in wrong.stderr


def test_tflite_two_models_two_keys_under_the_real_libos(keys, tflite_build, env, tmp_path):
    model = face_detection_tflite()
    out = tflite_build
    issuer_ca = keys.directory / "issuer-ca.pem"
    config = se.secret_server_config(keys, [out], name="tflite.toml", issuer_ca=True)
    server = se.start_secret_server(config)
    try:
        run, served, ready = _start(out, keys, env)
        assert served is not None, run.output.text
        # tritonclient over TLS trusting only the issuing CA, gRPC and HTTP.
        tensor = se.assert_face_models_match(served, model, ["owner_a", "owner_b"], issuer_ca)
        _assert_attested_endpoint(served, keys, out, tmp_path)
        in_libos = _p50_grpc_ms(served, "owner_a", "input", tensor, ca=issuer_ca)
        assert _loader_uids(run) == {10001}  # the image's user, not root
        assert run.stop() == 0, run.output.text
        assert "0 unanswered" in run.output.text
        allowed = [a for a in se.audit(config) if a.get("decision") == "allow"]
        released = [(a["secret"], a["reason"]) for a in allowed if a.get("event") != "certificate"]
        issued = [a for a in allowed if a.get("event") == "certificate"]
        # For comparison only (no timed assertion): the same build as a plain process.
        plain, plain_served, plain_ready = _start(out, keys, env, mode="process")
        assert plain_served is not None, plain.output.text
        plain_p50 = _p50_grpc_ms(plain_served, "owner_a", "input", tensor, ca=issuer_ca)
        assert plain.stop() == 0, plain.output.text
    finally:
        server.stop()
    _report(
        "tflite: run start -> 'model_server: serving' (of which after launch)",
        f"gramine-direct {ready[0]:.1f} s ({ready[1]:.1f} s), plain process "
        f"{plain_ready[0]:.1f} s ({plain_ready[1]:.1f} s)",
    )
    _report(
        "tflite: gRPC inference p50 (1 client, 20 requests)",
        f"gramine-direct {in_libos:.2f} ms, plain process {plain_p50:.2f} ms",
    )
    _assert_gramine_direct(run)
    assert "SIMULATION: not an SGX enclave" in run.output.text
    # One RA-TLS connection per key, each naming its key by SNI, made by the in-enclave code.
    assert sorted(s for s, _ in released) == ["owner-a-key", "owner-b-key"]
    assert all("TLS server name" in reason for _, reason in released)
    # ... and one serving certificate, issued to this build's measurement.
    measured = json.loads((out / "measurements.json").read_text())
    assert [a["mr_enclave"] for a in issued] == [measured["mr_enclave"]]


def test_openvino_python_mode_under_the_real_libos(tmp_path, keys, real_base, env):
    model = face_detection_tflite()
    section, _ = _ports("openvino")
    out = _build(
        tmp_path,
        keys,
        real_base,
        "openvino",
        [("faces", model, None)],
        section + 'mode = "python"\n',
        env,
    )
    config = se.secret_server_config(keys, [out], name="openvino.toml")
    server = se.start_secret_server(config)
    try:
        run, served, ready = _start(out, keys, env)
        assert served is not None, run.output.text
        tensor = se.face_input()
        sys.modules.setdefault("openvino_telemetry", None)  # no usage event from the test either
        import openvino as ov

        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        direct = compiled(tensor)
        expected = {o.get_any_name(): direct[o] for o in compiled.outputs}
        input_name = compiled.inputs[0].get_any_name()
        by_grpc, by_http = se.infer_both(served, "faces", input_name, tensor, list(expected))
        for o in expected:
            assert np.array_equal(by_grpc[o], expected[o]), o
            assert np.array_equal(by_http[o], expected[o]), o
        in_libos = _p50_grpc_ms(served, "faces", input_name, tensor)
        assert run.stop() == 0, run.output.text
        released = [a["secret"] for a in se.audit(config) if a.get("decision") == "allow"]
        plain, plain_served, plain_ready = _start(out, keys, env, mode="process")
        assert plain_served is not None, plain.output.text
        plain_p50 = _p50_grpc_ms(plain_served, "faces", input_name, tensor)
        assert plain.stop() == 0, plain.output.text
    finally:
        server.stop()
    _report(
        "openvino: run start -> 'model_server: serving' (of which after launch)",
        f"gramine-direct {ready[0]:.1f} s ({ready[1]:.1f} s), plain process "
        f"{plain_ready[0]:.1f} s ({plain_ready[1]:.1f} s)",
    )
    _report(
        "openvino: gRPC inference p50 (1 client, 20 requests)",
        f"gramine-direct {in_libos:.2f} ms, plain process {plain_p50:.2f} ms",
    )
    _assert_gramine_direct(run)
    assert released == ["svc-key"]


def test_wrong_measurement_is_refused_under_the_real_libos(keys, tflite_build, env):
    out = tflite_build
    grpc_port = _model_server_config(out)["grpc"]["port"]
    # A policy that releases both keys only to another enclave (some other MRENCLAVE).
    config = se.secret_server_config(
        keys, [out], allow_override=f'["{"ab" * 32}"]', name="wrong-measurement.toml"
    )
    server = se.start_secret_server(config)
    try:
        run, served, _ = _start(out, keys, env, timeout=120)
        code = run.stop()
    finally:
        server.stop()
    assert served is None, "a refused enclave must never serve"
    assert code == 3, run.output.text
    # The secret server's own reason, through the in-enclave key fetch, in the service's output.
    assert (
        "refused key owner-a-key: secret 'owner-a-key' (the TLS server name) is not "
        "released to this enclave identity"
    ) in run.output.text
    _assert_gramine_direct(run)
    denied = [a for a in se.audit(config) if a.get("decision") == "deny"]
    assert denied and denied[0]["mr_enclave"] != "ab" * 32
    assert not [a for a in se.audit(config) if a.get("decision") == "allow"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()


def _model_server_config(out: Path) -> dict:
    from enclave_build.builder.image.inspect import open_image, read_file

    image, _ = open_image(str(out))
    data = read_file(image, "/enclave/model-server.json")
    assert data is not None, "the image has no /enclave/model-server.json"
    return json.loads(data)


def test_a_file_missing_from_the_manifest_is_reported(tflite_build, env):
    """The check every run above makes would catch an untrusted file: boot a scratch copy of the
    image whose manifest lacks one trusted file Python opens at start (a hash-based .pyc: Python
    would quietly fall back to the source, so only Gramine's log shows it)."""
    from enclave_build.builder.run.gramine_direct import DirectLaunch, resolve_user, start
    from enclave_build.builder.run.rootfs import apply_ownership, private_root
    from enclave_build.builder.run.runner import open_build

    build, cached = open_build(tflite_build)
    missing = "/usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc"
    with private_root(cached) as root:
        apply_ownership(root, build.ownership)
        manifest = root / build.app.lstrip("/")
        signed = manifest.with_name(manifest.name + ".manifest.sgx")
        text = signed.read_text()
        before = tomllib.loads(text)["sgx"]["trusted_files"]
        assert f"file:{missing}" in [t["uri"] for t in before]
        entry = re.compile(
            r'\[\[sgx\.trusted_files\]\]\nuri = "file:'
            + re.escape(missing)
            + r'"\nsha256 = "[0-9a-f]{64}"\n\n?'
        )
        signed.write_text(entry.sub("", text, count=1))
        after = tomllib.loads(signed.read_text())["sgx"]["trusted_files"]
        assert len(after) == len(before) - 1, "the manifest's trusted-file format changed"
        uid, gid = resolve_user(root, build.user)
        # No simulated quoter: after the boot the key fetch fails and the service exits 3.
        proc = start(
            DirectLaunch(root, build.app, uid, gid, {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    refused = refused_files(output)
    assert any(
        "Disallowing access to file '__init__.cpython-311.pyc'; file is not allowed" in line
        for line in refused
    ), output
    assert proc.returncode == 3, output


#: Run in the image's own Python with Debian 12's python3-cryptography (38) ahead of the PyPI one
#: the base installs: the enclave's side of the serving certificate (key, CSR, self-signed
#: RA-TLS certificate, the key into an ssl context) must work with either.
_DEBIAN_CRYPTOGRAPHY_CHECK = """
import sys
sys.path = [p for p in sys.path if "/usr/local" not in p]
sys.path.insert(0, {pythonpath!r})
sys.path.append("/usr/local/lib/python3.11/dist-packages")  # cbor2 only
import datetime, ssl, cryptography
from enclave_build.attestation import serving_cert
from enclave_build.model_server import serving_tls
quote = lambda report_data: bytes(368) + report_data + bytes(64)
made = serving_tls.ServingCertificate("self", ("localhost", "127.0.0.1"), quote)
made.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
assert serving_cert.csr(serving_cert.serving_key(), ["localhost"])
assert serving_cert.read_identity(made.certificate) is None
print("cryptography", cryptography.__version__, "valid until", serving_tls.not_after(made.certificate))
"""


def test_the_enclave_side_of_serving_certificates_works_with_debian_cryptography(tflite_build):
    from enclave_build.builder.run.rootfs import private_root
    from enclave_build.builder.run.runner import open_build
    from enclave_build.contract.names import PYTHON, SERVER_PYTHONPATH

    _, cached = open_build(tflite_build)
    with private_root(cached) as root:
        assert (root / "usr/lib/python3/dist-packages/cryptography").is_dir()
        script = root / "tmp" / "debian-cryptography.py"
        script.parent.mkdir(exist_ok=True)
        script.write_text(_DEBIAN_CRYPTOGRAPHY_CHECK.format(pythonpath=SERVER_PYTHONPATH))
        proc = subprocess.run(
            ["chroot", str(root), PYTHON, "/tmp/debian-cryptography.py"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cryptography 38."), proc.stdout
