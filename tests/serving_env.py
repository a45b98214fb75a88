"""End-to-end serving environments: build a spec, start the real secret server with the build's
policy, start ``enclave-build run --simulate`` and wait until the model server is serving.

Everything listens on 127.0.0.1. The secret server trusts a synthetic PKI made for the test;
the run's simulated quoter signs with the same PKI, so the real verification path (dcap-qvl,
policy, SNI selection) decides who gets which key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server

SERVING = re.compile(r"model_server: serving grpc (\S+):(\d+) rest (\S+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Collects a subprocess's merged output lines in a thread (for waiting and asserting)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if (m := pattern.search(line)) is not None:
                        return m
                    if line == "<EOF>":
                        return None
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@dataclass
class Keys:
    """The pieces a build and a secret server share: TLS CA, server certificate, PKI, keys."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    pki_dir: Path
    keys_dir: Path
    signing_key: Path
    secret_port: int = field(default_factory=free_port)

    @classmethod
    def make(cls, directory: Path, signing_key: Path) -> Keys:
        directory.mkdir(parents=True, exist_ok=True)
        ca, cert, key = tls_ca_and_server(directory)
        pki_dir = directory / "pki"
        SyntheticPKI().save(pki_dir)
        return cls(directory, ca, cert, key, pki_dir, directory / "wrap-keys", signing_key)


def write_spec(
    directory: Path,
    keys: Keys,
    *,
    service: str,
    framework: str,
    models: list[tuple[str, Path, str | None]],
    section: str = "",
    extra: str = "",
) -> Path:
    """A spec whose encrypted models (name, path, key name or None for SERVICE-key) get their
    keys from the test's secret server."""
    lines = [f'[service]\nname = "{service}"\nframework = "{framework}"\n']
    for name, path, key in models:
        lines.append(
            f'[[models]]\nname = "{name}"\npath = "{path}"\nencrypt = true\n'
            + (f'key = "{key}"\n' if key else "")
        )
    lines.append('[enclave]\nsize = "2G"\nmax_threads = 32\nisv_prod_id = 7\nisv_svn = 3\n')
    lines.append(
        f'[secrets]\nserver = "localhost:{keys.secret_port}"\nca = "{keys.ca}"\n'
        f'keys_dir = "{keys.keys_dir}"\n'
    )
    lines.append(f'[signing]\nkey = "{keys.signing_key}"\n')
    if section:
        lines.append(section)
    if extra:
        lines.append(extra)
    spec = directory / "spec.toml"
    spec.write_text("\n".join(lines))
    return spec


def secret_server_config(
    keys: Keys,
    builds: list[Path],
    *,
    allow_override: str | None = None,
    name: str = "secrets.toml",
    issuer_ca: bool = False,
) -> Path:
    """secrets.toml from the builds' policy fragments (`enclave-build secrets config`'s code),
    trusting the test's synthetic PKI. *allow_override* (a TOML array) replaces every rule's
    allow list, to make a policy that admits some other enclave. *issuer_ca*: the server issues
    serving certificates with the issuing CA in ``keys.directory`` (``secrets config
    --issuer-ca``)."""
    from enclave_build.builder.secrets_config import ServerSide, compose_config, write_config

    config = compose_config(
        builds,
        ServerSide(
            cert=keys.server_cert,
            key=keys.server_key,
            listen=f"127.0.0.1:{keys.secret_port}",
            root_ca=str(keys.pki_dir / "root.pem"),
            collateral=keys.pki_dir / "collateral.json",
            audit_log=str(keys.directory / (name + ".audit.jsonl")),
            issuer_ca=keys.directory if issuer_ca else None,
        ),
    )
    if allow_override is not None:
        allow = tuple(json.loads(allow_override))
        config = dataclasses.replace(
            config,
            config=dataclasses.replace(
                config.config,
                secrets=tuple(
                    dataclasses.replace(rule, allow=allow) for rule in config.config.secrets
                ),
            ),
        )
    return write_config(keys.directory / name, config, force=True)


def audit(config: Path) -> list[dict]:
    path = config.with_name(config.name + ".audit.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Process:
    proc: subprocess.Popen
    output: Output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.output._thread.join(5)
        return self.proc.returncode


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enclave_build", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def start_secret_server(config: Path) -> Process:
    proc = _cli("secrets", "serve", "--config", str(config))
    out = Output(proc)
    if out.wait_for(re.compile(r"serving on "), 60) is None:
        proc.kill()
        raise AssertionError(f"the secret server did not start:\n{out.text}")
    return Process(proc, out)


@dataclass
class Served:
    process: Process
    grpc: str
    http: str


def start_run(
    build_dir: Path,
    keys: Keys,
    *,
    env: dict | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 120,
) -> tuple[Process, Served | None]:
    """`enclave-build run BUILD --simulate`; (process, endpoints) once it serves, or
    (process, None) if it ended (or timed out) without serving."""
    proc = _cli("run", str(build_dir), "--simulate", "--pki", str(keys.pki_dir), *extra, env=env)
    out = Output(proc)
    match = out.wait_for(SERVING, timeout)
    process = Process(proc, out)
    if match is None:
        return process, None
    host = lambda h: "127.0.0.1" if h in ("0.0.0.0", "::") else h
    return process, Served(process, f"{host(match[1])}:{match[2]}", f"{host(match[3])}:{match[4]}")


def verifier_args(keys: Keys, measurements: Path) -> list[str]:
    """The options of `attest` and of the example client for the test's synthetic PKI."""
    return [
        "--measurements",
        str(measurements),
        "--collateral",
        str(keys.pki_dir / "collateral.json"),
        "--allow-synthetic-root",
        str(keys.pki_dir / "root.pem"),
    ]


def attest(address: str, keys: Keys, measurements: Path) -> subprocess.CompletedProcess:
    """`enclave-build attest ADDRESS --measurements M --json`, trusting the test's synthetic PKI."""
    return subprocess.run(
        [sys.executable, "-m", "enclave_build", "attest", address]
        + verifier_args(keys, measurements)
        + ["--json"],
        capture_output=True,
        timeout=300,
    )


# --------------------------------------------------------------------------- asking the service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def face_input() -> np.ndarray:
    """The demo's photo, preprocessed for the face detector exactly as the demo client does."""
    from .models import photo

    sys.path.insert(0, str(EXAMPLES))
    try:
        import face_detect_client
    finally:
        sys.path.remove(str(EXAMPLES))
    return face_detect_client.preprocess(str(photo()))


def litert(model: Path, tensor: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """A direct LiteRT call: what the served answer must equal."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], tensor)
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}


def clients(served: Served, ca: Path | None = None):
    """tritonclient gRPC and HTTP clients of *served*; with *ca*, over TLS trusting only that
    CA (gRPC by the name ``localhost``, HTTP by the IP address: the certificate must name both)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    if ca is None:
        return (
            grpcclient.InferenceServerClient(served.grpc),
            httpclient.InferenceServerClient(served.http),
        )
    return (
        grpcclient.InferenceServerClient(
            served.grpc.replace("127.0.0.1", "localhost"), ssl=True, root_certificates=str(ca)
        ),
        httpclient.InferenceServerClient(
            served.http, ssl=True, ssl_options={"ca_certs": str(ca)}, insecure=False
        ),
    )


def infer_both(
    served: Served,
    model: str,
    name: str,
    tensor: np.ndarray,
    outputs: list[str],
    datatype: str = "FP32",
    ca: Path | None = None,
) -> tuple[dict, dict]:
    """The same request over gRPC and over HTTP (binary tensors), with tritonclient (over TLS
    trusting only *ca* when given)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    g, h = clients(served, ca)
    gi = grpcclient.InferInput(name, list(tensor.shape), datatype)
    gi.set_data_from_numpy(tensor)
    gr = g.infer(model, [gi], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    hi = httpclient.InferInput(name, list(tensor.shape), datatype)
    hi.set_data_from_numpy(tensor, binary_data=True)
    hr = h.infer(
        model, [hi], outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
    )
    return ({o: gr.as_numpy(o) for o in outputs}, {o: hr.as_numpy(o) for o in outputs})


FACE_OUTPUTS = ["regressors", "classificators"]


def assert_face_models_match(
    served: Served, model_file: Path, names: list[str], ca: Path | None = None
) -> np.ndarray:
    """Each served face-detection model answers over gRPC and HTTP exactly as LiteRT does
    directly on the same input (over TLS trusting only *ca* when given); returns that input for
    further requests."""
    tensor = face_input()
    expected = litert(model_file, tensor)
    for name in names:
        by_grpc, by_http = infer_both(served, name, "input", tensor, FACE_OUTPUTS, ca=ca)
        for o in FACE_OUTPUTS:
            assert np.array_equal(by_grpc[o], expected[o]), (name, o, "grpc")
            assert np.array_equal(by_http[o], expected[o]), (name, o, "http")
    return tensor
