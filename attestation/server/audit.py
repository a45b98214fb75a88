"""The secret server's audit log: typed events, one writer, one JSON line per event.

A connection (or a GrSecret call) is a :class:`ConnectionEvent` filled in as the connection
goes; the server's own life is :class:`Started`, :class:`Reloaded`, :class:`WorkerExited` and
:class:`Stopped`. :class:`AuditLog` writes each as one JSON object per line, ``time`` first,
then the event's fields in a fixed order (fields without a value are left out). Secret bytes
never appear: an event names secrets, it cannot hold one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..verify import VerifiedQuote

ALLOW, DENY, IDENTITY_ONLY = "allow", "deny", "identity-only"


@dataclass(frozen=True)
class AttestedIdentity:
    """What an accepted quote says, as the audit line records it."""

    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    tcb_status: str
    advisories: tuple[str, ...]

    @classmethod
    def of(cls, quote: VerifiedQuote) -> AttestedIdentity:
        return cls(
            quote.mr_enclave,
            quote.mr_signer,
            quote.isv_prod_id,
            quote.isv_svn,
            quote.status,
            tuple(quote.advisory_ids),
        )


@dataclass
class ConnectionEvent:
    """One connection's audit line (GrSecret: one per call, :meth:`for_call`)."""

    peer: str
    protocol: str | None = None  # "grsecret"; None on the secret_prov listener
    tls: str | None = None  # the negotiated TLS version
    event: str | None = None  # "upload": an owner's key upload
    owner: str | None = None  # the uploading owner's certificate fingerprint
    evidence: str | None = None  # the RA-TLS evidence format
    identity: AttestedIdentity | None = None
    secrets: tuple[str, ...] | None = None  # names in an upload
    secret: str | None = None  # the secret asked for / released
    decision: str | None = None  # ALLOW | DENY | IDENTITY_ONLY
    reason: str | None = None
    grpc_status: str | None = None  # GrSecret calls: the status answered
    certificate: str | None = None  # SHA-256 of a serving certificate issued (DER)

    def deny(self, reason: str) -> None:
        self.decision, self.reason = DENY, reason

    def allow(self, reason: str) -> None:
        self.decision, self.reason = ALLOW, reason

    @property
    def decided(self) -> bool:
        return self.decision is not None

    def for_call(
        self, secret: str, allowed: bool, reason: str, grpc_status: str
    ) -> ConnectionEvent:
        """A GrSecret call's line: this connection's facts, then the call's."""
        return ConnectionEvent(
            self.peer,
            self.protocol,
            self.tls,
            self.event,
            self.owner,
            self.evidence,
            self.identity,
            self.secrets,
            secret,
            ALLOW if allowed else DENY,
            reason,
            grpc_status,
        )

    def fields(self) -> dict:
        out: dict = {"peer": self.peer}
        for name in ("protocol", "tls", "event", "owner", "evidence"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.identity is not None:
            i = self.identity
            out.update(
                mr_enclave=i.mr_enclave,
                mr_signer=i.mr_signer,
                isv_prod_id=i.isv_prod_id,
                isv_svn=i.isv_svn,
                tcb_status=i.tcb_status,
                advisories=list(i.advisories),
            )
        if self.secrets is not None:
            out["secrets"] = list(self.secrets)
        for name in ("secret", "certificate", "decision", "reason", "grpc_status"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class Started:
    listen: str  # HOST:PORT of the secret_prov listener
    grsecret: str | None  # HOST:PORT of the GrSecret listener, if any
    processes: int
    pid: int | None = None  # one process: its pid
    pids: tuple[int, ...] | None = None  # worker processes: theirs

    def fields(self) -> dict:
        out: dict = {"event": "start", "listen": self.listen}
        if self.grsecret is not None:
            out["grsecret"] = self.grsecret
        out["processes"] = self.processes
        if self.pids is not None:
            out["pids"] = sorted(self.pids)
        else:
            out["pid"] = self.pid
        return out


@dataclass(frozen=True)
class Reloaded:
    measurements: int
    secrets: int
    cert: str
    pid: int

    def fields(self) -> dict:
        return {
            "event": "reload",
            "measurements": self.measurements,
            "secrets": self.secrets,
            "cert": self.cert,
            "pid": self.pid,
        }


@dataclass(frozen=True)
class WorkerExited:
    pid: int
    status: int

    def fields(self) -> dict:
        return {"event": "worker exited", "pid": self.pid, "status": self.status}


@dataclass(frozen=True)
class Stopped:
    pid: int

    def fields(self) -> dict:
        return {"event": "stop", "pid": self.pid}


AuditEvent = ConnectionEvent | Started | Reloaded | WorkerExited | Stopped


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class AuditLog:
    """JSON lines, one per event. A file target is opened O_APPEND and every line is one
    write(2): lines from any number of threads and processes land whole, one after another.
    *target* None or "-" is stderr."""

    def __init__(self, target: str | None, *, now: Callable[[], _dt.datetime] = _utc_now):
        self._now = now
        self._lock = threading.Lock()
        self._own = target is not None and target != "-"
        self._fd: int | None = None
        if target is not None and self._own:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        else:
            try:
                self._fd = sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None  # a stderr without a descriptor (captured): write through it

    def line(self, event: AuditEvent) -> bytes:
        """The bytes :meth:`write` appends for *event*."""
        record = {"time": self._now().isoformat(timespec="milliseconds"), **event.fields()}
        return (json.dumps(record, sort_keys=False) + "\n").encode()

    def write(self, event: AuditEvent) -> None:
        line = self.line(event)
        if self._fd is None:
            with self._lock:
                sys.stderr.write(line.decode())
            return
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # only on a full disk or a signal: finish the line
                written += os.write(self._fd, line[written:])
        except OSError as exc:
            print(f"secret server: cannot write the audit log: {exc}", file=sys.stderr)

    def close(self) -> None:
        if self._own and self._fd is not None:
            os.close(self._fd)
            self._fd = None
