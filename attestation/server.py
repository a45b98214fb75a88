"""The RA-TLS secret server, wire-compatible with Gramine's ``libsecret_prov_attest.so``.

Per connection (on a worker thread; no global lock):

1. TLS handshake (pyOpenSSL: the server has an ordinary CA-signed certificate; the client's
   self-signed RA-TLS certificate is accepted by the callback and checked *after* the handshake,
   because the standard chain validation cannot);
2. extract the SGX evidence from the client certificate and check it binds the key;
3. verify the quote (dcap-qvl + TCB / attribute policy) and decide from the attested identity
   and the TLS server name (see :mod:`attestation.policy`) which secret, if any, it receives;
4. only then read the request — exactly ``SECRET_PROVISION_RA_TLS_REQUEST_V1`` + NUL (35 bytes) —
   and answer ``SECRET_PROVISION_RA_TLS_RESPONSE_V1:`` + NUL (37 bytes), a 4-byte big-endian
   length and the secret; then close_notify. When step 2 or 3 refuses, the request is read and
   answered with :data:`attestation.wire.REFUSAL` and the reason (the same text as the audit
   record), so the enclave can say why it was refused.

Every connection ends in exactly one JSON line in the audit log with a decision and a reason
(peer, evidence format, identity, TCB status, secret name — never secret bytes), whatever the
client sent: malformed certificates, unreadable server names and collateral failures are
refusals with a reason like any other. Decisions: ``allow``, ``deny``, and, on a server with an
RA-TLS identity, ``identity-only`` for a client that only read its certificate (``enclave-build
attest``). Each connection has a deadline from the moment it is
accepted (also while it waits for a worker), enforced by a watchdog; the number of connections
is capped in total and per peer address (excess ones are refused at once); no TLS session
tickets are issued for TLS 1.2 and the TLS version can be capped at 1.2 for Gramine 1.8 clients.
``reload()`` (SIGHUP in the CLI) re-reads the policy and the TLS certificate and key;
``shutdown()`` stops accepting and waits for connections in flight.

**Processes.** ``[server] processes`` (default: the cores this process may use) worker
processes are forked at ``start()``; they share the one listening socket (each accepts from it;
the kernel gives every connection to one of them) and each has its own worker threads,
connection limits, deadline watchdog and verification cache, so the GIL of one process never
holds up another. The starting process supervises: ``reload()`` re-reads the configuration
there first (an error keeps every process on the old one), then tells every worker to reload
and waits for each to answer; ``shutdown()`` sends every worker SIGTERM, and each one stops
accepting, finishes its connections in flight and exits. A worker also obeys SIGHUP and SIGTERM
sent to it directly (e.g. to the whole process group), and stops by itself when the supervisor
goes away. Audit lines from all processes go to one file opened O_APPEND, each line a single
write, so lines never interleave. With ``processes = 1`` everything runs in the calling process.

**Occlum's GrSecret** (``[grsecret]``, :mod:`attestation.grsecret`): a second listener, shared
by the worker processes like the first, serves ``ratls.GrSecret/GetSecret`` over mutual RA-TLS
(the server presents an Occlum-format RA-TLS certificate made at start,
:mod:`attestation.server_identity`). The client's evidence is verified exactly as above, right
after the handshake; Occlum's optional ``client_ra_config`` filter applies next; then each call's
``SecretRequest.name`` is decided by the same policy (the name must be a configured secret).
Refusals are gRPC statuses with the reason; one audit line per call.

**Verification cache.** Each process keeps a :class:`attestation.verify.VerificationCache`
(``[attestation] verification_cache``, on by default): after the first quote from a platform,
the next ones cost one ECDSA verification instead of a full dcap-qvl run; a reload starts an
empty one.
"""

from __future__ import annotations

import datetime as _dt
import errno
import heapq
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from cryptography import x509
from OpenSSL import SSL

from .collateral import CollateralError, CollateralSource, source_for
from .config import SecretsConfig, load_config
from .policy import Identity, Policy
from .ratls import EvidenceError, extract_evidence
from .verify import (QuoteRejected, VerificationCache, VerifierConfigError, load_root_der,
                     verify_quote)
from .wire import MAX_SECRET, REQUEST, RESPONSE, refusal
from . import upload as _upload
from . import grsecret as _grsecret
from .occlum_ra import PeerIdentity, RaConfig
from .server_identity import IdentityError, ServerIdentity, grsecret_context, use_pem
from .errors import AttestationError


class ServerError(AttestationError, RuntimeError):
    pass


class AuditLog:
    """JSON lines, one per decision. A file target is opened O_APPEND and every line is one
    write(2): lines from any number of threads and processes land whole, one after another."""

    def __init__(self, target: str | None):
        self._lock = threading.Lock()
        self._own = target not in (None, "-")
        self._fd: int | None = None
        if self._own:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o666)
        else:
            try:
                self._fd = sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None   # a stderr without a descriptor (captured): write through it

    def write(self, **record) -> None:
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                  **record}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        if self._fd is None:
            with self._lock:
                sys.stderr.write(line.decode())
            return
        try:
            written = os.write(self._fd, line)
            while written < len(line):   # only on a full disk or a signal: finish the line
                written += os.write(self._fd, line[written:])
        except OSError as exc:
            print(f"secret server: cannot write the audit log: {exc}", file=sys.stderr)

    def close(self) -> None:
        if self._own and self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class _State:
    """What a reload replaces atomically."""

    config: SecretsConfig
    policy: Policy
    root_der: bytes | None
    collateral: CollateralSource
    cache: VerificationCache | None
    client_ra_config: RaConfig | None = None   # [grsecret] client_ra_config (Occlum's filter)


def startup_warnings(config: SecretsConfig) -> list[str]:
    warnings = []
    root = config.attestation.root_ca
    if root is not None:
        der = load_root_der(root)
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        kind = "SYNTHETIC TEST root" if "SYNTHETIC TEST" in subject else "non-Intel root"
        warnings.append(f"WARNING: trusting a {kind} CA ({subject}) from {root}: quotes it "
                        "vouches for are NOT backed by Intel; for tests and simulation only")
    for relaxed in config.attestation.tcb.relaxations():
        warnings.append(f"WARNING: {relaxed}: enclaves on such platforms receive secrets")
    if config.server.max_tls == "1.3":
        warnings.append("note: TLS 1.3 enabled; set [server] max_tls = \"1.2\" for Gramine 1.8 "
                        "clients (mbedTLS 3.6.0 cannot handle TLS 1.3 session tickets)")
    if config.grsecret is not None:
        warnings.extend(_grsecret_warnings(config))
    return warnings


def _grsecret_warnings(config: SecretsConfig) -> list[str]:
    warnings = []
    grpc = config.grsecret
    if grpc.client_ra_config is not None and RaConfig.load(grpc.client_ra_config).checks_nothing:
        warnings.append(f"note: {grpc.client_ra_config}: every verify_* flag is \"off\"; "
                        "GrSecret clients are filtered by the [[secrets]] policy alone")
    for rule in config.secrets:
        if rule.file is None:
            continue
        size = rule.file.stat().st_size if rule.encoding == "raw" else 48  # hex-dashes text
        if size % 3:
            warnings.append(
                f"note: secret {rule.name!r} is {size} bytes, not a multiple of 3: Occlum's "
                f"GrSecret client appends {3 - size % 3} NUL byte(s) when it decodes it")
    return warnings


class SecretServer:
    def __init__(self, config: SecretsConfig, *, now: Callable[[], _dt.datetime] | None = None):
        self._now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self._state = self._load(config)
        self.audit = AuditLog(config.server.audit_log)
        try:   # the server's own RA-TLS certificates (if configured): once per start
            self._identity = ServerIdentity.make(config)
        except IdentityError as exc:
            raise ServerError(str(exc)) from None
        self._ctx = self._context(config, self._identity)
        self._grpc_ctx = (grsecret_context(config, self._identity) if config.grsecret
                          else None)
        self._grpc_listener: socket.socket | None = None
        self._grpc_acceptor: threading.Thread | None = None
        self.grsecret_address: tuple[str, int] | None = None
        self.uploads = _upload.UploadStore()   # keys owners uploaded ([upload]); memory only
        self.processes = config.server.processes
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._children: dict[int, socket.socket] = {}   # pid -> control channel (supervisor)
        self._serving = False   # this process accepts connections (set in _start_serving)
        self._acceptor: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _load(config: SecretsConfig) -> _State:
        policy = Policy.build(list(config.measurements), list(config.secrets), config.path.parent)
        ra_config = (RaConfig.load(config.grsecret.client_ra_config)
                     if config.grsecret and config.grsecret.client_ra_config else None)
        return _State(config, policy, load_root_der(config.attestation.root_ca),
                      source_for(config.attestation),
                      VerificationCache() if config.attestation.verification_cache else None,
                      ra_config)

    @staticmethod
    def _context(config: SecretsConfig, identity: ServerIdentity) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION if config.server.max_tls == "1.2"
                                  else SSL.TLS1_3_VERSION)
        # No renegotiation: the certificate that was verified stays the connection's certificate.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if identity.dice is not None:   # identity = "ratls": our own TCG DICE certificate
            use_pem(ctx, identity.dice)
        else:
            ctx.use_certificate_chain_file(str(config.server.cert))
            ctx.use_privatekey_file(str(config.server.key))
            ctx.check_privatekey()
        # Accept any client certificate here; the RA-TLS evidence is verified after the
        # handshake, before the request is read. (No Python verify callback: OpenSSL's own
        # chain check of a self-signed certificate fails, and that is ignored below.)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                       _accept_any_certificate)
        return ctx

    def reload(self, path: str | Path | None = None) -> None:
        """Re-read the configuration, measurements, secrets and the TLS certificate and key;
        keep the old state (all of it) on any error. The listening address, process and worker
        counts and connection caps stay as started. With worker processes, the configuration
        is checked here first, then every worker reloads it; an error in any raises."""
        config = load_config(path or self._state.config.path)
        if not self._identity.matches(config) or _address(config.grsecret) != _address(
                self._state.config.grsecret):
            raise ServerError(f"{config.path}: server.identity and [grsecret] (its presence and "
                              "listen address) cannot change on reload: restart the server")
        state = self._load(config)
        try:
            ctx = self._context(config, self._identity)
        except SSL.Error as exc:
            raise ServerError(f"{config.server.cert} / {config.server.key}: cannot use the TLS "
                              f"certificate and key: {_describe(exc)}") from None
        self._state, self._ctx = state, ctx   # new connections use both; old ones finish as is
        if self._children:
            self._reload_children(config.path)
            return
        self.audit.write(event="reload", measurements=len(self._state.policy.measurements),
                         secrets=len(self._state.policy.secrets),
                         cert=str(config.server.cert), pid=os.getpid())

    def _reload_children(self, path: Path) -> None:
        failures = []
        for pid, control in list(self._children.items()):
            try:
                control.sendall(b"reload " + str(path).encode() + b"\n")
            except OSError as exc:
                failures.append(f"worker {pid}: {exc}")
        for pid, control in list(self._children.items()):
            answer = _read_line(control, 30.0)
            if answer != "ok":
                failures.append(f"worker {pid}: {answer or 'no answer'}")
        if failures:
            raise ServerError("reload failed in " + "; ".join(failures))

    # ------------------------------------------------------------------ serving

    def start(self) -> tuple[str, int]:
        cfg = self._state.config.server
        source = self._state.config.path
        try:
            self._listener = _listen(cfg.host, cfg.port)
        except OSError as exc:
            raise ServerError(f"{source}: server.listen: cannot listen on "
                              f"{_peer((cfg.host, cfg.port))}: {exc.strerror or exc}") from None
        self.address = self._listener.getsockname()[:2]
        grpc = self._state.config.grsecret
        extra = {}
        if grpc is not None:   # a port of its own, shared by the worker processes like the other
            try:
                self._grpc_listener = _listen(grpc.host, grpc.port)
            except OSError as exc:
                self._listener.close()
                raise ServerError(f"{source}: grsecret.listen: cannot listen on "
                                  f"{_peer((grpc.host, grpc.port))}: {exc.strerror or exc}"
                                  ) from None
            self.grsecret_address = self._grpc_listener.getsockname()[:2]
            extra["grsecret"] = f"{self.grsecret_address[0]}:{self.grsecret_address[1]}"
        if self.processes == 1:
            self._start_serving()
            self.audit.write(event="start", listen=f"{self.address[0]}:{self.address[1]}",
                             **extra, processes=1, pid=os.getpid())
            return self.address
        for _ in range(self.processes):
            self._spawn()
        for pid, control in list(self._children.items()):
            if _read_line(control, 30.0) != "ready":
                self.shutdown()
                raise ServerError(f"worker process {pid} did not start")
        self.audit.write(event="start", listen=f"{self.address[0]}:{self.address[1]}",
                         **extra, processes=self.processes, pids=sorted(self._children))
        return self.address

    def _spawn(self) -> int:
        """Fork one worker process serving from the shared listening socket."""
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:   # the worker: never returns
            status = 1
            try:
                parent_end.close()
                for other in self._children.values():
                    other.close()
                self._children = {}
                status = self._worker_main(child_end)
            except BaseException:  # noqa: BLE001 - a worker must never run its parent's code
                import traceback
                traceback.print_exc()
            finally:
                os._exit(status)
        child_end.close()
        self._children[pid] = parent_end
        return pid

    def _worker_main(self, control: socket.socket) -> int:
        stop, hup = threading.Event(), threading.Event()
        signal.signal(signal.SIGTERM, lambda s, f: stop.set())
        signal.signal(signal.SIGINT, lambda s, f: stop.set())
        signal.signal(signal.SIGHUP, lambda s, f: hup.set())
        import gc
        gc.freeze()   # what the parent built is long-lived: keep the collector off it
        self._start_serving()
        control.sendall(b"ready\n")
        buffer = b""
        while not stop.is_set():
            if hup.is_set():
                hup.clear()
                try:
                    self.reload()
                except Exception as exc:  # noqa: BLE001 - keep serving with the old policy
                    print(f"worker {os.getpid()}: reload failed, keeping the previous policy: "
                          f"{exc}", file=sys.stderr)
            try:
                ready, _, _ = select.select([control], [], [], 0.2)
            except InterruptedError:
                continue
            if not ready:
                continue
            chunk = control.recv(4096)
            if not chunk:
                break   # the supervisor is gone: stop too
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command, _, argument = line.decode().partition(" ")
                if command == "reload":
                    try:
                        self.reload(argument or None)
                        control.sendall(b"ok\n")
                    except Exception as exc:  # noqa: BLE001 - reported to the supervisor
                        control.sendall(f"{type(exc).__name__}: {exc}".replace("\n", " ")
                                        .encode()[:2000] + b"\n")
                elif command == "stop":
                    stop.set()
        self._stop_serving()
        control.close()
        return 0

    def supervise(self) -> list[int]:
        """Replace worker processes that exited without being asked to (the CLI calls this
        periodically); returns the pids of the replacements."""
        replaced = []
        if self._stopping.is_set():
            return replaced
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            self._children.pop(pid).close()
            self.audit.write(event="worker exited", pid=pid,
                             status=os.waitstatus_to_exitcode(status) if status else 0)
            new = self._spawn()
            if _read_line(self._children[new], 30.0) == "ready":
                replaced.append(new)
        return replaced

    def _start_serving(self) -> None:
        """This process's connection machinery: limits, worker threads, watchdog, acceptor."""
        server = self._state.config.server
        self._serving = True
        self._slots = threading.BoundedSemaphore(server.max_connections)
        self._per_peer: dict[str, int] = {}
        self._peer_lock = threading.Lock()
        # Connections beyond the workers wait in the queue (still within max_connections); their
        # deadline runs from the accept, so a queued one cannot outlive it either. A bounded pool
        # keeps 1000 simultaneous clients from becoming 1000 threads fighting over two cores.
        self._pool = ThreadPoolExecutor(
            max_workers=min(server.workers, server.max_connections),
            thread_name_prefix="secret-conn")
        self._watchdog = _Watchdog()
        self._acceptor = threading.Thread(target=self._accept_loop, name="secret-accept",
                                          daemon=True)
        self._acceptor.start()
        if self._grpc_listener is not None:
            self._grpc_acceptor = threading.Thread(
                target=self._accept_loop, args=(self._grpc_listener, "grsecret"),
                name="grsecret-accept", daemon=True)
            self._grpc_acceptor.start()

    def _stop_serving(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        for listener in (self._listener, self._grpc_listener):
            if listener is not None:
                listener.close()
        for acceptor in (self._acceptor, self._grpc_acceptor):
            if acceptor is not None:
                acceptor.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._watchdog.stop()

    def _accept_loop(self, listener: socket.socket | None = None,
                     kind: str = "secret_prov") -> None:
        listener = listener or self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = listener.accept()
            except (socket.timeout, TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)   # e.g. out of file descriptors: retry, never die
                continue
            _no_delay(sock)
            self._admit(sock, peer, kind)

    def _admit(self, sock: socket.socket, peer: tuple, kind: str = "secret_prov") -> None:
        """Queue an accepted connection, or refuse it at once (one audit line either way)."""
        server = self._state.config.server
        address = peer[0]
        if not self._slots.acquire(blocking=False):
            self.audit.write(peer=_peer(peer), decision="deny",
                             reason="too many concurrent connections")
            sock.close()
            return
        with self._peer_lock:
            count = self._per_peer.get(address, 0)
            if count < server.max_connections_per_peer:
                self._per_peer[address] = count + 1
        if count >= server.max_connections_per_peer:
            self._slots.release()
            self.audit.write(peer=_peer(peer), decision="deny",
                             reason="too many concurrent connections from this peer "
                                    f"(max_connections_per_peer = {server.max_connections_per_peer})")
            sock.close()
            return
        deadline = time.monotonic() + server.timeout
        ticket = self._watchdog.watch(sock, server.timeout)
        try:
            self._pool.submit(self._serve_one, sock, peer, ticket, deadline, kind)
        except RuntimeError:   # shutting down
            self._watchdog.forget(ticket)
            sock.close()
            self._release(address)
            self.audit.write(peer=_peer(peer), decision="deny", reason="server shutting down")

    def _release(self, address: str) -> None:
        with self._peer_lock:
            left = self._per_peer.get(address, 1) - 1
            if left > 0:
                self._per_peer[address] = left
            else:
                self._per_peer.pop(address, None)
        self._slots.release()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._children:
            self._stopping.set()
            for pid in self._children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + timeout + 5
            for pid, control in list(self._children.items()):
                while True:
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if done:
                        break
                    if time.monotonic() > end:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        break
                    time.sleep(0.02)
                control.close()
            self._children.clear()
            for listener in (self._listener, self._grpc_listener):
                if listener is not None:
                    listener.close()
        elif self._serving:
            self._stop_serving(timeout)
        else:
            for listener in (self._listener, self._grpc_listener):
                if listener is not None:
                    listener.close()
        self.audit.write(event="stop", pid=os.getpid())
        self.audit.close()

    # ------------------------------------------------------------------ one connection

    def _serve_one(self, sock: socket.socket, peer: tuple, ticket: int,
                   deadline: float, kind: str = "secret_prov") -> None:
        state = self._state
        ctx = self._grpc_ctx if kind == "grsecret" else self._ctx
        record: dict = {"peer": _peer(peer)}
        conn: SSL.Connection | None = None
        try:
            if time.monotonic() >= deadline:
                record.update(decision="deny", reason="deadline passed while waiting for a "
                                                      "worker (server overloaded)")
                return
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
            if kind == "grsecret":
                self._converse_grsecret(conn, state, record, deadline)
            else:
                self._converse(conn, state, record, deadline)
        except (SSL.Error, OSError) as exc:
            record.setdefault("decision", "deny")
            record.setdefault("reason", f"connection failed: {_describe(exc)}")
        except Exception as exc:  # noqa: BLE001 - whatever happens, the refusal is audited
            record["decision"] = "deny"
            record["reason"] = f"internal error handling the connection: {type(exc).__name__}: " \
                               f"{str(exc)[:300]}"
        finally:
            self._watchdog.forget(ticket)
            if "decision" not in record:   # cannot happen; never leave a line without one
                record.update(decision="deny", reason="connection ended without a decision")
            # The line is written before the connection is closed: once a client has seen the
            # end of its connection, its audit line exists. (GrSecret wrote one per call.)
            if not record.pop("_audited", False):
                self.audit.write(**record)
            if conn is not None:
                try:
                    conn.shutdown()
                except (SSL.Error, OSError):
                    pass
            sock.close()
            self._release(peer[0])

    def _converse(self, conn: SSL.Connection, state: _State, record: dict,
                  deadline: float) -> None:
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            reason = _describe(exc)
            if self._identity.dice is not None and "did not return a certificate" in reason:
                # `enclave-build attest`: an owner reading this server's RA-TLS certificate
                # (no client certificate, nothing asked for) is not a refused enclave.
                record.update(decision="identity-only", reason="the client read this server's "
                              "RA-TLS certificate without presenting one (enclave-build "
                              "attest); nothing was requested")
                return
            record.update(decision="deny", reason=f"TLS handshake failed: {reason}")
            return
        record["tls"] = conn.get_protocol_version_name()
        peer = conn.get_peer_certificate(as_cryptography=True) if state.config.upload else None
        if peer is not None and _upload.is_owner_certificate(_der(peer)):
            # An owner (a certificate without SGX evidence) uploading keys: attestation.upload.
            _upload.serve_upload(lambda n: _read_exact(conn, n), conn.sendall, _der(peer),
                                 state.config.upload, self.uploads,
                                 [r.name for r in state.config.secrets if r.file is None], record)
            return
        decision = self._attest(conn, state, record, deadline)
        if decision is None:
            _refuse(conn, record["reason"])
            return
        record["secret"] = decision.secret.name
        request = _read_exact(conn, len(REQUEST))
        if conn.pending():
            record.update(decision="deny", reason=f"request longer than {len(REQUEST)} bytes")
            return
        if request != REQUEST:
            record.update(decision="deny", reason="malformed request "
                          f"({len(request)} bytes, not {REQUEST[:-1].decode()!r})")
            return
        secret = (decision.secret.file.read_bytes() if decision.secret.file is not None
                  else self.uploads.get(decision.secret.name))
        if secret is None:
            record.update(decision="deny", reason=f"secret {decision.secret.name!r} has not been "
                          "uploaded by its owner yet (enclave-build secrets upload)")
            conn.sendall(refusal(record["reason"]))   # the request was read already
            return
        if not secret or len(secret) > MAX_SECRET:
            record.update(decision="deny", reason="secret file is empty or too large")
            return
        conn.sendall(RESPONSE + len(secret).to_bytes(4, "big") + secret)
        record.update(decision="allow", reason=decision.reason)

    def _attest(self, conn: SSL.Connection, state: _State, record: dict,
                deadline: float):  # noqa: ANN202
        """Verify the client's RA-TLS evidence and decide; None (with the reason recorded)
        when nothing is released. Runs before the request is read."""
        try:
            verified, _ = self._verify_client(conn, state, record, deadline)
        except _Refused as refused:
            record.update(decision="deny", reason=refused.reason)
            return None
        sni = conn.get_servername()
        try:
            server_name = sni.decode() if sni else None
        except UnicodeDecodeError:
            record.update(decision="deny", reason="the TLS server name (SNI) is not valid UTF-8")
            return None
        decision = state.policy.decide(
            Identity(verified.mr_enclave, verified.mr_signer, verified.isv_prod_id,
                     verified.isv_svn, verified.debug), server_name)
        if decision.secret is None:
            record.update(decision="deny", reason=decision.reason)
            return None
        return decision

    def _verify_client(self, conn: SSL.Connection, state: _State, record: dict,
                       deadline: float):  # noqa: ANN202 - (VerifiedQuote, raw quote)
        """The client certificate's RA-TLS evidence, verified (the identity is recorded);
        raises :class:`_Refused` with the reason otherwise."""
        peer_cert = conn.get_peer_certificate()
        if peer_cert is None:
            raise _Refused("no client certificate")
        try:
            try:
                certificate = peer_cert.to_cryptography()
            except Exception as exc:  # noqa: BLE001 - anything the parser chokes on
                raise EvidenceError(f"the client certificate cannot be parsed: {exc}") from None
            evidence = extract_evidence(certificate)
            record["evidence"] = evidence.format
            collateral = state.collateral.for_quote(
                evidence.quote, timeout=max(0.0, deadline - time.monotonic()))
            verified = verify_quote(evidence.quote, collateral,
                                    root_ca_der=state.root_der, now=self._now(),
                                    policy=state.config.attestation.tcb, cache=state.cache)
        except (EvidenceError, QuoteRejected, VerifierConfigError) as exc:
            raise _Refused(str(exc)) from None
        except CollateralError as exc:
            raise _Refused(f"no collateral to verify the quote: {exc}",
                           _grsecret.Status.UNAVAILABLE) from None
        record.update(mr_enclave=verified.mr_enclave, mr_signer=verified.mr_signer,
                      isv_prod_id=verified.isv_prod_id, isv_svn=verified.isv_svn,
                      tcb_status=verified.status, advisories=list(verified.advisory_ids))
        return verified, evidence.quote

    # ------------------------------------------------------------------ GrSecret (Occlum)

    def _converse_grsecret(self, conn: SSL.Connection, state: _State, record: dict,
                           deadline: float) -> None:
        """Occlum's ratls.GrSecret/GetSecret: the client's RA-TLS evidence is verified right
        after the handshake, before any HTTP/2 is read, then (if it passes Occlum's optional
        client_ra_config filter) each call's SecretRequest.name is decided by the same policy
        as secret_prov (the name plays the part of the TLS server name, and must be a
        configured secret). One audit line per call; one for a connection with no call."""
        record["protocol"] = "grsecret"
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            record.update(decision="deny", reason=f"TLS handshake failed: {_describe(exc)}")
            return
        record["tls"] = conn.get_protocol_version_name()
        if conn.get_alpn_proto_negotiated() != _grsecret.ALPN:
            record.update(decision="deny", reason="the client did not negotiate HTTP/2 (ALPN "
                                                  "h2): GrSecret is a gRPC service")
            return
        denial: _grsecret.RpcOutcome | None = None
        identity: Identity | None = None
        try:
            verified, raw_quote = self._verify_client(conn, state, record, deadline)
            identity = Identity(verified.mr_enclave, verified.mr_signer, verified.isv_prod_id,
                                verified.isv_svn, verified.debug)
            if state.client_ra_config is not None:
                mismatch = state.client_ra_config.mismatch(PeerIdentity.of(verified, raw_quote))
                if mismatch is not None:
                    denial = _grsecret.RpcOutcome(_grsecret.Status.PERMISSION_DENIED,
                                                   f"client_ra_config: {mismatch}")
        except _Refused as refused:
            denial = _grsecret.RpcOutcome(refused.code, refused.reason)
        base = dict(record)

        def handle(name: str) -> _grsecret.RpcOutcome:
            if denial is not None:
                return denial
            if not state.policy.knows(name):
                return _grsecret.RpcOutcome(_grsecret.Status.NOT_FOUND,
                                            f"no secret named {name!r}")
            decision = state.policy.decide_request(identity, name)
            if decision.secret is None:
                return _grsecret.RpcOutcome(_grsecret.Status.PERMISSION_DENIED, decision.reason)
            rule = decision.secret
            secret = rule.file.read_bytes() if rule.file is not None else self.uploads.get(
                rule.name)
            if secret is None:
                return _grsecret.RpcOutcome(_grsecret.Status.UNAVAILABLE,
                                            f"secret {rule.name!r} has not been uploaded by its "
                                            "owner yet (enclave-build secrets upload)")
            if not secret or len(secret) > MAX_SECRET:
                return _grsecret.RpcOutcome(_grsecret.Status.INTERNAL,
                                            "secret file is empty or too large")
            try:
                secret = rule.encode(secret)   # e.g. Occlum's image-key text (hex-dashes)
            except ValueError as exc:
                return _grsecret.RpcOutcome(_grsecret.Status.INTERNAL,
                                            f"secret {rule.name!r}: {exc}")
            return _grsecret.RpcOutcome(_grsecret.Status.OK, decision.reason, secret)

        def audit(name: str, outcome: _grsecret.RpcOutcome) -> None:
            allowed = outcome.code == _grsecret.Status.OK
            self.audit.write(**base, secret=name, decision="allow" if allowed else "deny",
                             reason=outcome.message,
                             grpc_status=_grsecret.Status.NAMES.get(outcome.code, outcome.code))

        grpc = state.config.grsecret
        summary = _grsecret.serve(conn, handle, deadline=deadline, idle=grpc.idle,
                                  max_requests=grpc.max_requests, on_answer=audit)
        if summary.requests and summary.clean:
            record["_audited"] = True   # one line per call, nothing else to say
        elif summary.requests:   # calls audited above; how the connection ended is news too
            record.update(decision="deny", reason=f"connection ended after {summary.requests} "
                                                  f"call(s): {summary.end}")
        else:
            record.update(decision="deny", reason=(denial.message if denial is not None
                                                   else "no GetSecret call") + f" ({summary.end})")


class _Refused(Exception):
    """The client's evidence is refused: *reason*, and the gRPC status GrSecret answers with."""

    def __init__(self, reason: str, code: int = _grsecret.Status.UNAUTHENTICATED):
        super().__init__(reason)
        self.reason, self.code = reason, code


def _refuse(conn: SSL.Connection, reason: str) -> None:
    """Tell an attested-and-refused client why: read its request (so closing does not reset
    the connection under the answer), then send the refusal. Best effort."""
    try:
        _read_exact(conn, len(REQUEST))
        conn.sendall(refusal(reason))
    except (SSL.Error, OSError):
        pass


def _read_exact(conn: SSL.Connection, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except SSL.ZeroReturnError:
            break
        except SSL.SysCallError as exc:   # closed without close_notify, or reset: short read
            if exc.args and exc.args[0] in (-1, errno.ECONNRESET):
                break
            raise
        if not chunk:
            break
        data += chunk
    return data


class _Watchdog:
    """One thread that enforces every connection's deadline (a thread per connection would
    cost more than the work): when a deadline passes, the socket is shut down, which unblocks
    whatever its worker is waiting on."""

    def __init__(self):
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._counter = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="secret-watchdog", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._lock:
            self._counter += 1
            # Wake the watchdog only when this deadline comes first (with one timeout for every
            # connection, almost never): a wake-up per connection would cost a thread switch.
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, self._counter, sock))
            self._live.add(self._counter)
            if earliest:
                self._lock.notify()
            return self._counter

    def forget(self, ticket: int) -> None:
        with self._lock:
            self._live.discard(ticket)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(5)

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, ticket, sock = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._lock.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ticket)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.DER)


def _no_delay(sock: socket.socket) -> None:
    """Small writes go out at once: without TCP_NODELAY, Nagle's algorithm holds the server's
    small TLS/HTTP/2 records until the client's delayed ACK (~40 ms per GrSecret connection,
    measured by benchmarks/grsecret.py)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass   # not a TCP socket (e.g. a test's socketpair)


def _accept_any_certificate(conn, cert, errno, depth, ok) -> bool:  # noqa: ANN001
    return True


def _read_line(sock: socket.socket, timeout: float) -> str:
    """One newline-terminated line from a worker's control channel ('' on EOF or timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        sock.settimeout(None)
    return data.decode(errors="replace").strip()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(4096)
    except OSError:
        listener.close()
        raise
    listener.settimeout(0.2)
    return listener


def _address(settings) -> tuple[str, int] | None:  # noqa: ANN001 - GrSecretSettings | None
    return None if settings is None else (settings.host, settings.port)


def _peer(peer: tuple) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [item[-1] for item in exc.args[0] if isinstance(item, tuple)]
        return "; ".join(parts) or type(exc).__name__
    return str(exc) or type(exc).__name__


def serve(config_path: str | Path, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the configuration in every process (the CLI's
    entry point). Worker processes that die are replaced."""
    config = load_config(config_path)
    for warning in startup_warnings(config):
        print(warning, file=sys.stderr)
    server = SecretServer(config)
    stop, hup = threading.Event(), threading.Event()
    # Handlers only set flags (the main loop acts on them): a reload must never run inside a
    # signal handler that interrupted the same code. Installed before the workers fork, which
    # replace them with their own.
    signal.signal(signal.SIGHUP, lambda s, f: hup.set())
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    address = server.start()
    if ready:
        ready(address)
    while not stop.wait(0.2):
        if hup.is_set():
            hup.clear()
            try:
                server.reload()
                print("configuration reloaded", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - keep serving with the old policy
                print(f"reload failed, keeping the previous policy: {exc}", file=sys.stderr)
        server.supervise()
    server.shutdown()
