"""``enclave-build dev``: the local loop in one command.

:class:`DevSession` does, in order, and undoes in reverse (:meth:`DevSession.stop`, also on
any error or Ctrl-C):

1. **build** if the output is stale (builder.build_stamp: the inputs the last build recorded
   against the ones now), else says "up to date";
2. **secret server**: if the build fetches keys, looks at the address measured into it
   (service.json ``secret_server``): a secret server that answers there with a certificate the
   spec's CA vouches for is used as it is; an address nothing answers on gets one started by
   ``dev`` (loopback addresses only) with the synthetic PKI and configuration kept in the
   project's ``.enclave-build/`` (builder.dev.local_secrets); anything else listening there
   is an error;
3. **the enclave**: ``enclave-build run OUT --simulate`` (gramine-direct when the image holds a
   real Gramine and we are root, else a plain process; the run says which and so does
   ``dev``), after checking that the service's ports are free;
4. **readiness**: the model server's ``/v2/health/ready``, while both processes are watched (one
   that ends early ends ``dev``, the error naming its first error line: the log itself was
   streamed already);
5. **what to send**: the endpoints, and per model its metadata as served, a request body made
   from it (``.enclave-build/requests/MODEL.json``), a curl line and a tritonclient snippet;
   with ``once``, one request and its outputs' shapes and digest instead.

The secret server and the run are subprocesses (``python -m enclave_build ...``) in sessions of
their own, streamed with prefixes by builder.dev.processes: the secret server forks workers and
the run forwards signals to the enclave, so each is stopped as a whole. Both end if ``dev``
dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import errno
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from enclave_build.contract.names import SERVICE_FILE
from enclave_build.contract.service_info import ServiceInfo, ServicePort
from enclave_build.model_server.preflight import spec_key_text

from .. import build_stamp
from ..errors import EnclaveBuildError, UsageError
from ..plugin_types import NullProgress, Progress
from ..spec import Spec
from ..spec_file import spec_file
from . import local_secrets, snippets
from .processes import EXPLAINED, ManagedProcess, wait_until
from .requests import (
    InferRequest,
    ModelMetadata,
    RequestError,
    fetch_metadata,
    generated_request,
    infer,
    read_input,
)
from .serving_tls import ServingTrust, ServingTrustError

#: The run's line naming its mode (builder.run.runner logs "run: SERVICE (...), mode MODE, ...").
_MODE_LINE = re.compile(r"^run: .*, mode (gramine-direct|process), ")
SECRET_SERVER_START_SECONDS = 30.0
#: While the enclave starts, a line this often (the image check and unpacking can be long).
NOTE_SECONDS = 10.0


class DevError(EnclaveBuildError):
    """The local loop could not start or stopped early (the message ends with the first error
    line of what failed)."""


@dataclass
class DevOptions:
    output: Path | None = None  # default: out/ next to the spec
    base: str | None = None  # --base for the build (overrides [image] base)
    rebuild: bool = False  # build even if up to date
    once: bool = False  # one request, then stop
    input: Path | None = None  # the request of `once` (JSON, .npy, .npz)
    model: str | None = None  # the model `once` asks (default: the first)
    mode: str = "auto"  # run --mode
    enforce_limits: bool = False  # run --enforce-limits
    observe: Path | None = None  # run --observe DIR
    timeout: float = 300.0  # seconds until the model server is ready
    pki: Path | None = None  # synthetic PKI (default: .enclave-build/pki)


@dataclass
class Served:
    """What is serving: endpoints and each model's metadata."""

    service: str
    rest_url: str | None
    grpc_address: str | None
    mode: str | None
    secret_server: str | None  # address, None when no keys are fetched
    secret_server_started: bool
    models: list[ModelMetadata] = field(default_factory=list)
    #: for a TLS service: what its clients trust, and how (curl, tritonclient)
    tls_lines: list[str] = field(default_factory=list)
    #: for a TLS service: the REST URL and curl options a user's curl reaches it with
    curl_url: str | None = None
    curl_options: str = ""
    #: for a TLS service: the Python lines making a tritonclient gRPC client that trusts it
    grpc_client_lines: list[str] | None = None


@dataclass
class OnceResult:
    model: str
    request: InferRequest
    generated: bool
    outputs: tuple
    digest: str


def project_state(spec: Spec) -> Path:
    return spec.directory / build_stamp.STATE_DIR


class DevSession:
    """One ``dev`` run; use as a context manager (everything it started is stopped on exit).

    *log* receives progress notes and the prefixed log lines (stderr)."""

    def __init__(
        self,
        spec: str | Path,
        options: DevOptions | None = None,
        *,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
        python: str = sys.executable,
    ):
        self.options = options or DevOptions()
        self.spec_path = spec_file(spec)
        self.log = log
        self._prepared: tuple[Spec, Path, ServiceInfo] | None = None
        self.python = python
        self.secret_server: ManagedProcess | None = None
        self.enclave: ManagedProcess | None = None
        self.mode: str | None = None
        self._ready_server = threading.Event()
        self._pki: Path | None = None
        self.spec: Spec | None = None
        self._lock = threading.Lock()
        #: time.monotonic() when the enclave's run started, and when it answered ready
        self.enclave_started: float | None = None
        self.ready_at: float | None = None
        #: how dev's requests trust the model server, for a build with [tls]
        self.serving_trust: ServingTrust | None = None
        self._issuer_dir: Path | None = None
        self._last_tls_error: str | None = None
        #: the model server requires client certificates ([tls] client_ca): dev has none
        self._mutual = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DevSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the enclave, then the secret server; idempotent."""
        if self.enclave is not None:
            # The run forwards a SIGTERM to the enclave (a second one: SIGKILL).
            self.enclave.stop(grace=25.0, then=[(signal.SIGTERM, 5.0)])
        if self.secret_server is not None:
            self.secret_server.stop(grace=10.0)

    def _emit(self, line: str) -> None:
        with self._lock:
            self.log(line)

    # ------------------------------------------------------------------ steps

    def prepare(self, progress: Progress | None = None) -> tuple[Spec, Path, ServiceInfo]:
        """Load the spec, build if stale (showing *progress*); (spec, output directory, its
        service.json). :meth:`start` does it if it was not done."""
        if self._prepared is not None:
            return self._prepared
        from ..build import build, check_base_keyword, load, make_plan
        from ..hashing import HashCache
        from ..plugins import PluginRegistry

        registry = PluginRegistry()
        spec, registry = load(self.spec_path, registry)
        check_base_keyword(self.options.base, spec)  # before anything is built or started
        output = (self.options.output or spec.directory / "out").resolve()
        plan = make_plan(spec, registry)
        cache = HashCache()
        try:
            inputs = build_stamp.build_inputs(spec, plan, self.options.base, cache)
        finally:
            cache.close()
        state = build_stamp.check(spec, output, inputs)
        if state.up_to_date and not self.options.rebuild:
            self._emit(f"dev: {output} is up to date")
        else:
            why = "--rebuild" if state.up_to_date else state.reason
            self._emit(f"dev: building {self.spec_path} -> {output} ({why})")
            result = build(
                self.spec_path,
                output=output,
                base=self.options.base,
                registry=registry,
                progress=progress or NullProgress(),
            )
            for path in result.generated_keys:
                self._emit(
                    f"dev: generated wrap key {path} (mode 0600): keep it, the secret "
                    "server needs it and it cannot be recovered"
                )
            if result.measurements is not None:
                self._emit(
                    f"dev: built {result.measurements.service}, mr_enclave "
                    f"{result.measurements.mr_enclave}"
                )
        service_file = output / SERVICE_FILE
        if not service_file.is_file():
            raise UsageError(
                f"{output}: the service listens on no port (no {SERVICE_FILE}); "
                "`dev` serves model servers"
            )
        self.spec = spec
        self._prepared = (spec, output, ServiceInfo.load(service_file))
        return self._prepared

    def secret_server_plan(
        self, spec: Spec, output: Path, info: ServiceInfo
    ) -> tuple[local_secrets.ServerAddress, bool]:
        """Where the enclave gets its keys and whether dev starts the server there (False: one
        already answers); UsageError / DevError when neither can work. Starts nothing."""
        assert info.secret_server is not None
        address = local_secrets.ServerAddress.parse(info.secret_server)
        ca = spec.secrets.ca
        found = local_secrets.probe(address, ca)
        if found.kind == "secret-server":
            self._emit(
                f"dev: a secret server already answers at {address} ({found.detail}): "
                f"using it, not starting one. It must trust the synthetic PKI in "
                f"{self.pki} and serve this build's keys (`enclave-build secrets config "
                f"{output} --root-ca {self.pki / 'root.pem'} --collateral "
                f"{self.pki / 'collateral.json'} ...`)"
            )
            return address, False
        if found.kind == "other":
            raise DevError(
                f"{address} (the secret server the enclave was built to dial) is in "
                f"use: {found.detail}. Stop what listens there, or build with "
                "another [secrets] server"
            )
        if info.secret_server_enclave:
            raise UsageError(
                f"{output}: the enclave accepts only an attested secret-server "
                f"enclave at {address}, and none answers; start it first (`dev` "
                "starts the plain secret server only)"
            )
        if not address.local:
            raise UsageError(
                f"the enclave was built to get its keys from the secret server at {address} "
                f"(measured into it), which does not answer here; `dev` starts a secret server "
                "only at a loopback address. Make that address reachable (e.g. a port-forward "
                'and a hosts entry), or use a spec with [secrets] server = "localhost:4433" '
                "for local runs"
            )
        local_secrets.server_tls(ca)  # named now if missing, before anything starts
        return address, True

    def start_secret_server(
        self, spec: Spec, output: Path, address: local_secrets.ServerAddress
    ) -> None:
        """Start the secret server at *address* for *output*'s keys and wait until it serves;
        DevError with its first error line if it does not."""
        ca = spec.secrets.ca
        cert, key = local_secrets.server_tls(ca)
        state = project_state(spec)
        config = local_secrets.write_config(
            state, output, address, cert, key, self.pki, issuer_ca=self._issuer_dir
        )
        self._emit(f"dev: starting the secret server on {address} ({config})")

        def watch(line: str) -> None:
            if line.startswith("serving on "):
                self._ready_server.set()

        self.secret_server = ManagedProcess(
            "secret-server",
            [self.python, "-m", "enclave_build", "secrets", "serve", "--config", str(config)],
            self._emit,
            watch=watch,
        )
        self.secret_server.start()
        ready = wait_until(
            lambda: self._ready_server.is_set() or not self.secret_server.running(),  # type: ignore[union-attr]
            SECRET_SERVER_START_SECONDS,
        )
        if not self._ready_server.is_set():
            state_text = (
                self.secret_server.describe_exit()
                if ready
                else f"not serving after {SECRET_SERVER_START_SECONDS:g} s"
            )
            raise DevError(
                f"the secret server did not start ({state_text})"
                + self._log_pointer(self.secret_server)
            )

    def start_enclave(self, output: Path) -> None:
        def watch(line: str) -> None:
            found = _MODE_LINE.match(line)
            if found and self.mode is None:
                self.mode = found.group(1)
                self._emit("dev: " + mode_note(self.mode))

        argv = [
            self.python,
            "-m",
            "enclave_build",
            "run",
            str(output),
            "--simulate",
            "--pki",
            str(self.pki),
            "--mode",
            self.options.mode,
        ]
        if self.options.enforce_limits:
            argv.append("--enforce-limits")
        if self.options.observe is not None:
            argv += ["--observe", str(self.options.observe)]
        self._emit(
            f"dev: starting the enclave: enclave-build run {output} --simulate (it "
            "checks the image against its signature first)"
        )
        self.enclave = ManagedProcess("enclave", argv, self._emit, watch=watch)
        self.enclave_started = time.monotonic()
        self.enclave.start()

    def wait_ready(self, info: ServiceInfo, service: str) -> None:
        """Until the model server answers its readiness probe; DevError if a process ends or
        the time is up."""
        url = self.health_url(info)
        port = info.port(info.health.port).number

        def ready() -> bool:
            self._check_alive(service)
            if url is None or self._mutual:
                return _connects("127.0.0.1", port)
            if self.serving_trust is not None and not _connects("127.0.0.1", port):
                return False  # not listening yet: nothing to verify
            try:
                context = self._client_context(port)
            except ServingTrustError as exc:
                raise DevError(str(exc) + self._log_pointer()) from None
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                    return answer.status == 200
            except ssl.SSLCertVerificationError as exc:
                self._last_tls_error = str(exc)
                return False
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", None)
                if isinstance(reason, ssl.SSLCertVerificationError):
                    self._last_tls_error = reason.verify_message or str(reason)
                return False

        started = time.monotonic()
        noted = [started]

        def ready_or_note() -> bool:
            if ready():
                return True
            now = time.monotonic()
            if now - noted[0] >= NOTE_SECONDS:  # long work shows progress
                noted[0] = now
                self._emit(
                    f"dev: waiting for {service} to be ready ({now - started:.0f} s; "
                    f"--timeout {self.options.timeout:g})"
                )
            return False

        if not wait_until(ready_or_note, self.options.timeout, interval=0.25):
            tls_note = (
                f"; its TLS certificate did not verify ({self.serving_trust.describe()}): "
                f"{self._last_tls_error}"
                if self.serving_trust is not None and self._last_tls_error
                else ""
            )
            raise DevError(
                f"{service} was not ready after {self.options.timeout:g} s "
                "(--timeout)" + tls_note + self._log_pointer()
            )
        self.ready_at = time.monotonic()

    def _client_context(self, port: int | None = None) -> ssl.SSLContext | None:
        """The TLS context of dev's requests to the model server (None: plain HTTP)."""
        if self.serving_trust is None:
            return None
        assert self._prepared is not None
        info = self._prepared[2]
        return self.serving_trust.context(port or info.port(info.health.port).number)

    def _check_alive(self, service: str) -> None:
        if self.enclave is not None and not self.enclave.running():
            raise DevError(
                f"the enclave ended before it was ready "
                f"({self.enclave.describe_exit()})" + self._log_pointer(self.enclave)
            )
        if self.secret_server is not None and not self.secret_server.running():
            raise DevError(
                f"the secret server ended ({self.secret_server.describe_exit()})"
                + self._log_pointer(self.secret_server)
            )

    def _log_pointer(self, process: ManagedProcess | None = None) -> str:
        """How a DevError ends: the processes' output was streamed above (with prefixes), so
        it is not repeated; only the one line that says most, last -- the first error line of
        *process* (else of the enclave, else of the secret server), or *process*'s last
        line."""
        order = [p for p in (process, self.enclave, self.secret_server) if p is not None]
        if not order:
            return ""
        for candidate in order:
            candidate.flush()
        chosen = next((p for p in order if p.first_error is not None), order[0])
        what = (
            "what the run explained"
            if any(EXPLAINED in t for t in chosen.tail)
            else "the first error"
            if chosen.first_error is not None
            else "the last line"
        )
        return f"; its output is above, {what} in it:\n{chosen.key_line()}"

    @staticmethod
    def health_url(info: ServiceInfo) -> str | None:
        if info.health.kind != "kserve-v2" or not info.health.ready:
            return None
        scheme = "https" if info.health.scheme == "HTTPS" or info.tls else "http"
        return f"{scheme}://127.0.0.1:{info.port(info.health.port).number}{info.health.ready}"

    @property
    def pki(self) -> Path:
        assert self._pki is not None
        return self._pki

    # ------------------------------------------------------------------ the whole start

    def start(self) -> Served:
        """Steps 1 to 4 and the models' metadata (see the module doc)."""
        spec, output, info = self.prepare()
        self._pki = (
            self.options.pki.resolve()
            if self.options.pki
            else local_secrets.ensure_pki(project_state(spec) / local_secrets.PKI_DIR, self._emit)
        )
        tls = spec.tls if info.tls else None
        issued = tls is not None and tls.issuer == "secret-server"
        address, start = (None, False)
        if info.keys or (issued and info.secret_server):
            address, start = self.secret_server_plan(spec, output, info)
        if issued and start:
            self._issuer_dir = local_secrets.ensure_issuer_ca(
                spec.secrets.ca, project_state(spec), self._emit
            )
        if tls is not None and tls.client_ca is not None:
            if self.options.once:
                raise UsageError(
                    f"{info.service}: `dev --once` cannot ask a model server with mutual TLS "
                    f"([tls] client_ca = {tls.client_ca}): dev has no client certificate. Run "
                    "`dev` and ask with a client certificate of that CA (curl --cert ... --key "
                    "...)"
                )
            self._mutual = True
            self._emit(
                "dev: the model server requires client certificates ([tls] client_ca): dev "
                "has none, so it waits until the port accepts connections and asks nothing"
            )
        if tls is not None:
            self.serving_trust = ServingTrust(tls, output, self.pki, self._issuer_dir)
            if issued and self._issuer_dir is None:
                self._emit(
                    "dev: the serving certificate comes from the secret server already running "
                    f"at {address}: dev's requests trust it only if it issues with an issuing CA "
                    "next to [secrets] ca (issuer-ca.pem)"
                )
                ca = spec.secrets.ca
                self.serving_trust.issuer_dir = ca.parent.resolve() if ca is not None else None
            self._emit(f"dev: the model server serves TLS; {self.serving_trust.describe()}")
        check_ports_free(info)
        if address is not None and start:
            self.start_secret_server(spec, output, address)
        self.start_enclave(output)
        self.wait_ready(info, info.service)
        served = Served(
            info.service,
            rest_url(info),
            grpc_address(info),
            self.mode,
            str(address) if address is not None else None,
            start,
        )
        if self.serving_trust is not None:
            names = {p.name: p.number for p in info.ports}
            served.tls_lines = self.serving_trust.client_lines(names.get("http"))
            if "http" in names:
                served.curl_url, served.curl_options = self.serving_trust.curl(names["http"])
            if served.grpc_address is not None:
                served.grpc_client_lines = self.serving_trust.grpc_client_lines(served.grpc_address)
            for line in served.tls_lines:
                self._emit("dev: " + line.strip())
        if served.rest_url is not None and info.health.kind == "kserve-v2" and not self._mutual:
            for model in spec.models:
                try:
                    served.models.append(
                        fetch_metadata(served.rest_url, model.name, context=self._client_context())
                    )
                except RequestError as exc:
                    raise DevError(f"model {model.name!r}: {exc}" + self._log_pointer()) from None
        return served

    def wait(self) -> None:
        """Until one of the processes ends (DevError), or Ctrl-C (KeyboardInterrupt)."""
        while True:
            for process in (self.enclave, self.secret_server):
                if process is not None and not process.running():
                    what = "the enclave" if process is self.enclave else "the secret server"
                    raise DevError(
                        f"{what} ended ({process.describe_exit()})" + self._log_pointer(process)
                    )
            time.sleep(0.5)

    def once(self, served: Served) -> OnceResult:
        """One request (``--input`` or generated from the metadata) to one model."""
        if served.rest_url is None or not served.models:
            raise UsageError(
                f"{served.service}: `dev --once` needs a KServe v2 model server "
                "(tflite, openvino in python mode, or a plugin's)"
            )
        name = self.options.model or served.models[0].name
        metadata = next((m for m in served.models if m.name == name), None)
        if metadata is None:
            raise UsageError(
                f"--model {name!r}: no such model (served: "
                f"{', '.join(m.name for m in served.models)})"
            )
        if self.options.input is not None:
            request, generated = read_input(self.options.input, metadata), False
        else:
            request, generated = generated_request(metadata), True
        try:
            result = infer(served.rest_url, metadata.name, request, context=self._client_context())
        except RequestError as exc:
            raise DevError(f"the request failed: {exc}" + self._log_pointer()) from None
        return OnceResult(metadata.name, request, generated, result.outputs, result.digest())


# --------------------------------------------------------------------------- helpers


def mode_note(mode: str) -> str:
    if mode == "gramine-direct":
        return (
            "the enclave runs under gramine-direct: the real Gramine LibOS in a chroot of "
            "the image, without SGX"
        )
    return (
        "the enclave runs as a plain process with this machine's Python (no LibOS: "
        "gramine-direct needs a base with a real Gramine, and root)"
    )


def rest_url(info: ServiceInfo) -> str | None:
    names = {p.name: p.number for p in info.ports}
    if "http" not in names:
        return None
    scheme = "https" if info.tls else "http"
    return f"{scheme}://127.0.0.1:{names['http']}"


def grpc_address(info: ServiceInfo) -> str | None:
    names = {p.name: p.number for p in info.ports}
    return f"127.0.0.1:{names['grpc']}" if "grpc" in names else None


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def check_ports_free(info: ServiceInfo) -> None:
    """DevError naming each port of the service that something else holds, the command that
    shows who holds it, and the spec key that sets it."""
    busy: list[ServicePort] = []
    for port in info.ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port.number))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    if busy:
        keys = [spec_key_text(p.spec_key) for p in busy if p.spec_key]
        where = (
            f"set another port in the spec ({', '.join(keys)}) and rebuild (the port is "
            "measured: the enclave's identity changes)"
            if keys
            else "set other ports in the spec and rebuild"
        )
        filters = " or ".join(f"sport = :{p.number}" for p in busy)
        raise DevError(
            f"port {', '.join(f'{p.number} ({p.name})' for p in busy)} in use on 127.0.0.1: "
            f"the service {info.service} listens there. Stop what holds "
            f"{'it' if len(busy) == 1 else 'them'} (`ss -ltnp '{filters}'` names it), or {where}"
        )


def write_request(state: Path, model: ModelMetadata) -> Path:
    """``STATE/requests/MODEL.json``: a request made from *model*'s metadata (for curl)."""
    import json

    directory = state / "requests"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.name}.json"
    path.write_text(json.dumps(generated_request(model).to_json()) + "\n")
    return path


def summary(served: Served, state: Path) -> list[str]:
    """What dev prints once the service is ready."""
    lines = [f"{served.service} is serving (SIMULATION: not an SGX enclave)"]
    if served.rest_url:
        lines.append(f"  REST (KServe v2)   {served.rest_url}")
    if served.grpc_address:
        lines.append(f"  gRPC (KServe v2)   {served.grpc_address}")
    lines += served.tls_lines
    if served.secret_server:
        lines.append(
            f"  secret server      {served.secret_server} ("
            + (
                "started by dev"
                if served.secret_server_started
                else "already running; not started by dev"
            )
            + ")"
        )
    for model in served.models:
        inputs = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in model.inputs)
        outputs = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in model.outputs)
        lines += ["", f"model {model.name}: inputs {inputs}; outputs {outputs}"]
        if served.rest_url:
            curl_url = served.curl_url or served.rest_url
            lines += [
                "  metadata:",
                "    " + snippets.curl_metadata(curl_url, model.name, served.curl_options),
            ]
            try:
                body = write_request(state, model)
            except UsageError as exc:
                lines.append(f"  (no request made from the metadata: {exc})")
            else:
                lines += [
                    f"  a request (zeros, from the metadata: {body}):",
                    "    " + snippets.curl_infer(curl_url, model.name, body, served.curl_options),
                ]
        if served.grpc_address:
            lines += ["  Python over gRPC (pip install 'tritonclient[grpc]'):"]
            lines += [
                "    " + line if line else ""
                for line in snippets.tritonclient_snippet(
                    served.grpc_address, model, served.grpc_client_lines
                ).splitlines()
            ]
    lines += ["", "Ctrl-C stops the enclave and the secret server."]
    return lines


def once_lines(result: OnceResult) -> list[str]:
    source = "generated from the metadata: zeros" if result.generated else "--input"
    lines = [f"model {result.model}: request {result.request.describe()} ({source})"]
    for name, datatype, array in result.outputs:
        lines.append(f"  output {name}  {datatype}{list(array.shape)}")
    lines.append(f"digest {result.digest}")
    return lines


__all__ = [
    "DevSession",
    "DevOptions",
    "DevError",
    "Served",
    "OnceResult",
    "summary",
    "once_lines",
    "check_ports_free",
    "mode_note",
    "write_request",
    "project_state",
]
