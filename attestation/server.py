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
refusals with a reason like any other. Each connection has a deadline from the moment it is
accepted (also while it waits for a worker), enforced by a watchdog; the number of connections
is capped in total and per peer address (excess ones are refused at once); no TLS session
tickets are issued for TLS 1.2 and the TLS version can be capped at 1.2 for Gramine 1.8 clients.
``reload()`` (SIGHUP in the CLI) re-reads the policy and the TLS certificate and key;
``shutdown()`` stops accepting and waits for connections in flight.
"""

from __future__ import annotations

import datetime as _dt
import json
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
from .verify import QuoteRejected, VerifierConfigError, load_root_der, verify_quote
from .wire import MAX_SECRET, REQUEST, RESPONSE, refusal


class ServerError(RuntimeError):
    pass


class AuditLog:
    """JSON lines, one per decision, written whole under a lock (safe across threads)."""

    def __init__(self, target: str | None):
        self._lock = threading.Lock()
        self._own = target not in (None, "-")
        self._out: TextIO = (open(target, "a", buffering=1) if self._own  # noqa: SIM115
                             else sys.stderr)

    def write(self, **record) -> None:
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                  **record}
        line = json.dumps(record, sort_keys=False)
        with self._lock:
            self._out.write(line + "\n")

    def close(self) -> None:
        if self._own:
            self._out.close()


@dataclass
class _State:
    """What a reload replaces atomically."""

    config: SecretsConfig
    policy: Policy
    root_der: bytes | None
    collateral: CollateralSource


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
    return warnings


class SecretServer:
    def __init__(self, config: SecretsConfig, *, now: Callable[[], _dt.datetime] | None = None):
        self._now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self._state = self._load(config)
        self.audit = AuditLog(config.server.audit_log)
        self._ctx = self._context(config)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(config.server.max_connections)
        self._per_peer: dict[str, int] = {}
        self._peer_lock = threading.Lock()
        # Connections beyond the workers wait in the queue (still within max_connections); their
        # deadline runs from the accept, so a queued one cannot outlive it either. A bounded pool
        # keeps 1000 simultaneous clients from becoming 1000 threads fighting over two cores.
        self._pool = ThreadPoolExecutor(
            max_workers=min(config.server.workers, config.server.max_connections),
            thread_name_prefix="secret-conn")
        self._acceptor: threading.Thread | None = None
        self._watchdog = _Watchdog()
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _load(config: SecretsConfig) -> _State:
        policy = Policy.build(list(config.measurements), list(config.secrets), config.path.parent)
        return _State(config, policy, load_root_der(config.attestation.root_ca),
                      source_for(config.attestation))

    @staticmethod
    def _context(config: SecretsConfig) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION if config.server.max_tls == "1.2"
                                  else SSL.TLS1_3_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.use_certificate_chain_file(str(config.server.cert))
        ctx.use_privatekey_file(str(config.server.key))
        ctx.check_privatekey()
        # Accept any client certificate here; the RA-TLS evidence is verified after the
        # handshake, before the request is read.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                       lambda conn, cert, errno, depth, ok: True)
        return ctx

    def reload(self, path: str | Path | None = None) -> None:
        """Re-read the configuration, measurements, secrets and the TLS certificate and key;
        keep the old state (all of it) on any error. The listening address, worker count and
        connection caps stay as started."""
        config = load_config(path or self._state.config.path)
        state = self._load(config)
        try:
            ctx = self._context(config)
        except SSL.Error as exc:
            raise ServerError(f"{config.server.cert} / {config.server.key}: cannot use the TLS "
                              f"certificate and key: {_describe(exc)}") from None
        self._state, self._ctx = state, ctx   # new connections use both; old ones finish as is
        self.audit.write(event="reload", measurements=len(self._state.policy.measurements),
                         secrets=len(self._state.policy.secrets),
                         cert=str(config.server.cert))

    # ------------------------------------------------------------------ serving

    def start(self) -> tuple[str, int]:
        cfg = self._state.config.server
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((cfg.host, cfg.port))
        listener.listen(1024)
        listener.settimeout(0.2)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, name="secret-accept",
                                          daemon=True)
        self._acceptor.start()
        self.audit.write(event="start", listen=f"{self.address[0]}:{self.address[1]}")
        return self.address

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: tuple) -> None:
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
            self._pool.submit(self._serve_one, sock, peer, ticket, deadline)
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
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._watchdog.stop()
        self.audit.write(event="stop")
        self.audit.close()

    # ------------------------------------------------------------------ one connection

    def _serve_one(self, sock: socket.socket, peer: tuple, ticket: int,
                   deadline: float) -> None:
        state, ctx = self._state, self._ctx
        record: dict = {"peer": _peer(peer)}
        conn: SSL.Connection | None = None
        try:
            if time.monotonic() >= deadline:
                record.update(decision="deny", reason="deadline passed while waiting for a "
                                                      "worker (server overloaded)")
                return
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
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
            if conn is not None:
                try:
                    conn.shutdown()
                except (SSL.Error, OSError):
                    pass
            sock.close()
            if "decision" not in record:   # cannot happen; never leave a line without one
                record.update(decision="deny", reason="connection ended without a decision")
            self.audit.write(**record)
            self._release(peer[0])

    def _converse(self, conn: SSL.Connection, state: _State, record: dict,
                  deadline: float) -> None:
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            record.update(decision="deny", reason=f"TLS handshake failed: {_describe(exc)}")
            return
        record["tls"] = conn.get_protocol_version_name()
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
        secret = decision.secret.file.read_bytes()
        if not secret or len(secret) > MAX_SECRET:
            record.update(decision="deny", reason="secret file is empty or too large")
            return
        conn.sendall(RESPONSE + len(secret).to_bytes(4, "big") + secret)
        record.update(decision="allow", reason=decision.reason)

    def _attest(self, conn: SSL.Connection, state: _State, record: dict,
                deadline: float):  # noqa: ANN202
        """Verify the client's RA-TLS evidence and decide; None (with the reason recorded)
        when nothing is released. Runs before the request is read."""
        peer_cert = conn.get_peer_certificate()
        if peer_cert is None:
            record.update(decision="deny", reason="no client certificate")
            return None
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
                                    policy=state.config.attestation.tcb)
        except (EvidenceError, QuoteRejected, VerifierConfigError) as exc:
            record.update(decision="deny", reason=str(exc))
            return None
        except CollateralError as exc:
            record.update(decision="deny", reason=f"no collateral to verify the quote: {exc}")
            return None
        record.update(mr_enclave=verified.mr_enclave, mr_signer=verified.mr_signer,
                      isv_prod_id=verified.isv_prod_id, isv_svn=verified.isv_svn,
                      tcb_status=verified.status, advisories=list(verified.advisory_ids))
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
        import heapq
        with self._lock:
            self._counter += 1
            heapq.heappush(self._heap, (time.monotonic() + seconds, self._counter, sock))
            self._live.add(self._counter)
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
        import heapq
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


def _peer(peer: tuple) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [item[-1] for item in exc.args[0] if isinstance(item, tuple)]
        return "; ".join(parts) or type(exc).__name__
    return str(exc) or type(exc).__name__


def serve(config_path: str | Path, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the configuration (the CLI's entry point)."""
    import signal

    config = load_config(config_path)
    for warning in startup_warnings(config):
        print(warning, file=sys.stderr)
    server = SecretServer(config)
    address = server.start()
    if ready:
        ready(address)
    stop = threading.Event()

    def on_reload(signum, frame):  # noqa: ANN001
        try:
            server.reload()
            print("configuration reloaded", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - keep serving with the old policy
            print(f"reload failed, keeping the previous policy: {exc}", file=sys.stderr)

    signal.signal(signal.SIGHUP, on_reload)
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    while not stop.wait(0.5):
        pass
    server.shutdown()
