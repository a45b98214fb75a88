"""Key upload: a key's owner hands keys to a secret server running in an enclave, at run time.

A secret server built as an enclave image (framework ``secret-server``) carries no keys: they
would be readable in the image. Its secrets.toml lists them as ``[[secrets]]`` rules without a
``file``, and names in ``[upload] owners`` the certificates of the people allowed to provide them::

    [upload]
    owners = ["owner.crt"]      # PEM certificates, pinned (exact certificate), one or more

**Owner authentication.** An owner connects with TLS presenting one of those certificates as
its client certificate (the handshake proves it holds the private key). The certificate is
pinned by its SHA-256 fingerprint, not chained to a CA: the list is part of the image, so it is
measured into the server's MRENCLAVE, and whoever attests the server (``enclave-build attest``)
knows exactly who else can upload. Expired or not-yet-valid certificates are refused.

**Where it happens.** On the server's one port: a client certificate *without* SGX evidence is an
owner's (only when ``[upload]`` is configured; otherwise it is refused as before); one with SGX
evidence is an enclave asking for a key. The owner's client (``enclave-build secrets upload``)
first attests the server on the same TLS connection (:mod:`attestation.attest_client`) and only
then sends the keys on it.

**Protocol** (after the handshake, client first):

* request: :data:`REQUEST` (24 bytes), a 2-byte big-endian count (1..:data:`MAX_KEYS`), and per
  key a 2-byte name length, the UTF-8 name, a 4-byte length (exactly
  :data:`attestation.wire.WRAP_KEY_SIZE`) and the key bytes;
* answer: :data:`ACCEPTED` or :data:`REFUSED` (32 bytes each), a 4-byte length and a UTF-8 text
  (what was stored, or why not); then close_notify.

All keys of a request are stored, or none. Stored keys live in the server process's memory only
(inside the enclave: enclave memory) and are lost when it stops: the owner uploads them again
after every start. Key bytes are never logged; the audit line names the secrets and the owner's
certificate fingerprint.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_build.contract import secrets_config as _contract
from enclave_build.contract.schema import Problem, validate_table

from .errors import AttestationConfigError, AttestationError
from .wire import WRAP_KEY_SIZE

REQUEST = b"ENCLAVE_BUILD_UPLOAD_V1\0"
ACCEPTED = b"ENCLAVE_BUILD_UPLOAD_ACCEPT_V1:\0"
REFUSED = b"ENCLAVE_BUILD_UPLOAD_REFUSE_V1:\0"
ANSWER_HEADER = len(ACCEPTED) + 4
MAX_KEYS = 64
MAX_NAME = 255
MAX_TEXT = 2048

assert len(ACCEPTED) == len(REFUSED) == 32 and len(REQUEST) == 24

#: OIDs of the three RA-TLS evidence formats (see attestation.ratls).
_EVIDENCE_OIDS = ("2.23.133.5.4.9", "0.6.9.42.840.113741.1337.6", "1.2.840.113741.1")


class UploadConfigError(AttestationConfigError, ValueError):
    """``[upload]`` in secrets.toml is invalid."""


class UploadRefused(AttestationError):
    """The server refused the upload, or did not answer as the protocol says."""


@dataclass(frozen=True)
class OwnerCertificate:
    path: Path
    sha256: str  # of the DER certificate
    subject: str
    not_before: _dt.datetime
    not_after: _dt.datetime


@dataclass(frozen=True)
class UploadSettings(_contract.UploadSettings):
    """secrets.toml's ``[upload]`` with its owners' certificates read (pinned at start)."""

    certificates: tuple[OwnerCertificate, ...] = ()

    def owner(self, fingerprint: str) -> OwnerCertificate | None:
        return next((o for o in self.certificates if o.sha256 == fingerprint), None)

    @classmethod
    def read(cls, settings: _contract.UploadSettings) -> UploadSettings:
        """*settings* with every owner certificate read; UploadConfigError naming
        ``upload.owners[N]`` otherwise."""
        loaded = []
        for index, path in enumerate(settings.owners):
            try:
                loaded.append(load_owner_certificate(path))
            except UploadConfigError as exc:
                raise UploadConfigError(f"upload.owners[{index}]: {exc}") from None
        return cls(tuple(settings.owners), tuple(loaded))


def load_owner_certificate(path: Path) -> OwnerCertificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UploadConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except ValueError as exc:
        raise UploadConfigError(f"{path}: not an X.509 certificate: {exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return OwnerCertificate(
        path,
        hashlib.sha256(der).hexdigest(),
        cert.subject.rfc4514_string(),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )


def load_settings(table: object, base: Path, source: str) -> UploadSettings:
    """An ``[upload]`` table of secrets.toml (relative paths against *base*), checked by the
    contract's schema, with the certificates read; errors name file and key."""
    problems: list[Problem] = []
    values = validate_table(_contract.UPLOAD, table, ("upload",), base, problems)
    if problems:
        raise UploadConfigError("\n".join(f"{source}: {p.key}: {p.message}" for p in problems))
    try:
        return UploadSettings.read(
            _contract.UploadSettings(tuple(base / o for o in values["owners"]))
        )
    except UploadConfigError as exc:
        raise UploadConfigError(f"{source}: {exc}") from None


def is_owner_certificate(der: bytes) -> bool:
    """True when a client certificate carries no RA-TLS evidence (it is not an enclave's)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        oids = {ext.oid.dotted_string for ext in cert.extensions}
    except (ValueError, x509.DuplicateExtension):
        return False  # unparseable: let the enclave path refuse it with its own reason
    return not oids & set(_EVIDENCE_OIDS)


class UploadStore:
    """Uploaded keys by secret name, in this process's memory only. Thread-safe."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put_all(self, keys: dict[str, bytes]) -> list[str]:
        """Store every key; returns the names that replaced an earlier upload."""
        with self._lock:
            replaced = [name for name in keys if name in self._keys]
            self._keys.update(keys)
        return replaced

    def get(self, name: str) -> bytes | None:
        with self._lock:
            return self._keys.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)


# --------------------------------------------------------------------------- wire format


def encode_request(keys: Iterable[tuple[str, bytes]]) -> bytes:
    keys = list(keys)
    if not 1 <= len(keys) <= MAX_KEYS:
        raise ValueError(f"between 1 and {MAX_KEYS} keys per upload, not {len(keys)}")
    out = bytearray(REQUEST + len(keys).to_bytes(2, "big"))
    for name, key in keys:
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_NAME:
            raise ValueError(f"secret name {name!r}: 1..{MAX_NAME} bytes")
        if len(key) != WRAP_KEY_SIZE:
            raise ValueError(
                f"secret {name!r}: a key is exactly {WRAP_KEY_SIZE} bytes, not {len(key)}"
            )
        out += len(raw).to_bytes(2, "big") + raw + len(key).to_bytes(4, "big") + key
    return bytes(out)


def read_request(recv_exact: Callable[[int], bytes]) -> list[tuple[str, bytes]]:
    """Parse a request from *recv_exact(n)* (returns fewer bytes only at the end of the
    stream); ValueError with a reason (never containing key bytes) if malformed."""
    magic = recv_exact(len(REQUEST))
    if magic != REQUEST:
        raise ValueError("not an upload request")
    count = int.from_bytes(_need(recv_exact, 2, "key count"), "big")
    if not 1 <= count <= MAX_KEYS:
        raise ValueError(f"key count {count} is outside 1..{MAX_KEYS}")
    keys: list[tuple[str, bytes]] = []
    for _ in range(count):
        size = int.from_bytes(_need(recv_exact, 2, "name length"), "big")
        if not 1 <= size <= MAX_NAME:
            raise ValueError(f"name length {size} is outside 1..{MAX_NAME}")
        try:
            name = _need(recv_exact, size, "name").decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a secret name is not UTF-8") from None
        length = int.from_bytes(_need(recv_exact, 4, "key length"), "big")
        if length != WRAP_KEY_SIZE:
            raise ValueError(
                f"secret {name!r}: announced {length} bytes; a key is exactly {WRAP_KEY_SIZE}"
            )
        keys.append((name, _need(recv_exact, length, "key")))
    names = [n for n, _ in keys]
    if len(set(names)) != len(names):
        raise ValueError("a secret is named twice in one upload")
    return keys


def _need(recv_exact: Callable[[int], bytes], size: int, what: str) -> bytes:
    data = recv_exact(size)
    if len(data) != size:
        raise ValueError(f"request truncated (in the {what})")
    return data


def answer(accepted: bool, text: str) -> bytes:
    raw = text.encode("utf-8", "replace")[:MAX_TEXT]
    return (ACCEPTED if accepted else REFUSED) + len(raw).to_bytes(4, "big") + raw


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class UploadOutcome:
    """How one owner connection ended, for the audit line (never key bytes)."""

    owner: str  # SHA-256 fingerprint of the client certificate
    allowed: bool
    reason: str
    secrets: tuple[str, ...] | None  # the names in a well-formed request from an owner


def serve_upload(
    recv_exact: Callable[[int], bytes],
    send: Callable[[bytes], object],
    peer_der: bytes,
    settings: UploadSettings,
    store: UploadStore,
    uploadable: Iterable[str],
    *,
    now: _dt.datetime | None = None,
) -> UploadOutcome:
    """Handle one owner connection (after the TLS handshake): authenticate the client
    certificate, read the request, store all keys or none, answer."""
    fingerprint = hashlib.sha256(peer_der).hexdigest()
    owner = settings.owner(fingerprint)
    moment = now or _dt.datetime.now(_dt.UTC)
    names: tuple[str, ...] | None = None
    problem: str | None = None
    try:
        keys: list[tuple[str, bytes]] | None = read_request(recv_exact)
    except ValueError as exc:
        keys, problem = None, f"malformed upload request: {exc}"
    if owner is None:
        reason = (
            "the client certificate is not one of the owners in [upload] owners "
            f"(sha256 {fingerprint}); an enclave would present an RA-TLS certificate"
        )
    elif not owner.not_before <= moment <= owner.not_after:
        reason = (
            f"the owner certificate {owner.subject} is not valid now (valid "
            f"{owner.not_before.isoformat()} to {owner.not_after.isoformat()})"
        )
    elif keys is None:
        reason = problem or "malformed upload request"
    else:
        allowed = set(uploadable)
        names = tuple(name for name, _ in keys)
        unknown = [name for name in names if name not in allowed]
        if unknown:
            reason = (
                f"secret {unknown[0]!r} is not an uploaded secret of this server "
                f"(uploaded secrets: {', '.join(sorted(allowed)) or 'none'})"
            )
        else:
            replaced = store.put_all(dict(keys))
            text = f"stored {len(names)} key(s): {', '.join(names)}" + (
                f" (replacing the earlier upload of {', '.join(replaced)})" if replaced else ""
            )
            outcome = UploadOutcome(fingerprint, True, f"{text}; by owner {owner.subject}", names)
            _answer(send, True, text)
            return outcome
    _answer(send, False, reason)
    return UploadOutcome(fingerprint, False, reason, names)


def _answer(send: Callable[[bytes], object], accepted: bool, text: str) -> None:
    """Best effort: the outcome stands whether or not the owner is still there to read it."""
    try:
        send(answer(accepted, text))
    except Exception:  # noqa: BLE001 - any transport's error (OSError, TLS errors)
        pass


# --------------------------------------------------------------------------- client side


def upload_keys(tls: ssl.SSLSocket, keys: list[tuple[str, bytes]], timeout: float = 30.0) -> str:
    """Send *keys* on the (already attested) TLS connection *tls*; the server's confirmation,
    or :class:`UploadRefused` with its reason. The whole exchange takes at most *timeout*
    seconds, however slowly the server sends its answer."""
    from .wire import REFUSAL

    deadline = time.monotonic() + timeout
    request = encode_request(keys)
    _within(deadline, timeout, "sending the keys", lambda: tls.sendall(request), tls)
    header = _recv_within(tls, ANSWER_HEADER, deadline, timeout)
    if len(header) != ANSWER_HEADER:
        raise UploadRefused(
            "the server closed the connection without answering the upload "
            "(is [upload] configured on it? see its audit log)"
        )
    if header == REFUSAL[:ANSWER_HEADER]:  # it took this connection for an enclave's
        rest = _recv_within(tls, len(REFUSAL) + 4 - ANSWER_HEADER, deadline, timeout)
        size = int.from_bytes(rest[-4:], "big") if len(rest) == 5 else 0
        reason = _recv_within(tls, min(size, MAX_TEXT), deadline, timeout)
        raise UploadRefused(
            "the server answered as to an enclave asking for a secret, not to "
            "an owner (does the owner certificate carry SGX evidence?): "
            + reason.decode("utf-8", "replace")
        )
    magic, size = header[: len(ACCEPTED)], int.from_bytes(header[len(ACCEPTED) :], "big")
    if magic not in (ACCEPTED, REFUSED) or size > MAX_TEXT:
        raise UploadRefused("the server's answer is not an upload answer")
    text = _recv_within(tls, size, deadline, timeout).decode("utf-8", "replace")
    if magic == REFUSED:
        raise UploadRefused(f"the server refused the upload: {text}")
    return text


def _within(deadline: float, timeout: float, what: str, action, tls):
    left = deadline - time.monotonic()
    if left <= 0:
        raise UploadRefused(f"no complete answer to the upload within {timeout:g} s")
    tls.settimeout(left)
    try:
        return action()
    except TimeoutError:
        raise UploadRefused(f"timed out after {timeout:g} s {what}") from None


def _recv_within(tls, size: int, deadline: float, timeout: float) -> bytes:
    """Up to *size* bytes (fewer only if the server closed), all before *deadline*."""
    data = b""
    while len(data) < size:
        chunk = _within(
            deadline,
            timeout,
            "waiting for the server's answer",
            functools.partial(tls.recv, size - len(data)),
            tls,
        )
        if not chunk:
            break
        data += chunk
    return data


__all__ = [
    "REQUEST",
    "ACCEPTED",
    "REFUSED",
    "UploadConfigError",
    "UploadRefused",
    "UploadSettings",
    "OwnerCertificate",
    "UploadStore",
    "load_settings",
    "load_owner_certificate",
    "is_owner_certificate",
    "encode_request",
    "read_request",
    "answer",
    "UploadOutcome",
    "serve_upload",
    "upload_keys",
]
