"""The endpoint's TLS key and certificate, made in the enclave (``tls.issuer`` "secret-server"
or "self"), and their renewal.

At start the server makes an ECDSA P-256 key pair (:func:`attestation.serving_cert.serving_key`)
in its own memory. It is never written anywhere in clear: gRPC takes it as bytes, and Python's
``ssl`` module (which loads keys only from files) reads it from a temporary file holding it
*encrypted* under a random passphrase that exists only in this process's memory.

* ``"self"``: a self-signed certificate for ``tls.hosts`` with the TCG DICE evidence of a fresh
  quote (:func:`attestation.serving_cert.self_signed`), valid :data:`SELF_LIFETIME`.
* ``"secret-server"``: one attested connection to the secret server (the one ``keys`` names,
  checked the same way as for keys), presenting a self-signed RA-TLS certificate *for the serving
  key*, with the TLS server name :data:`attestation.wire.CERT_SERVER_NAME`, sending a CSR for
  the same key (:func:`attestation.wire.cert_request`); the answer is the issued certificate and
  the issuing CA (PEM). A refusal is a :class:`~model_server.keys.KeyFetchError` with the
  server's reason: at start the server does not serve (exit 3).

:class:`ServingCertificate` renews the certificate (same key, fresh quote) in a background
thread two thirds of the way to its expiry; a failed renewal is retried every
:data:`RETRY_SECONDS` (or sooner near expiry) and reported on stderr. New connections get the
new certificate: gRPC through its dynamic credentials, REST through the context's SNI callback.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation import serving_cert, wire
from enclave_build.attestation.quote_source import QuoteSource

from .keys import KeyFetchError, SecretServerLink, exchange

#: How long a self-signed serving certificate is valid (renewed at two thirds of it).
SELF_LIFETIME = _dt.timedelta(hours=24)
#: Validity of the RA-TLS certificate presented to the secret server when asking (one use).
ASK_LIFETIME = _dt.timedelta(hours=1)
RETRY_SECONDS = 30.0

Clock = Callable[[], _dt.datetime]


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _say(message: str) -> None:
    print(f"model_server: {message}", file=sys.stderr, flush=True)


def _leaf(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain_pem)


def not_after(cert: x509.Certificate) -> _dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    if value is None:  # Debian 12's cryptography 38
        value = cert.not_valid_after.replace(tzinfo=_dt.UTC)
    return value


class ServingCertificate:
    """The serving key (made here, never exported) and its current certificate chain."""

    def __init__(
        self,
        issuer: str,
        hosts: tuple[str, ...],
        make_quote: QuoteSource,
        link: SecretServerLink | None = None,
        *,
        now: Clock = _utc_now,
    ) -> None:
        if issuer not in ("self", "secret-server"):
            raise ValueError(f"no in-enclave key for issuer {issuer!r}")
        if issuer == "secret-server" and link is None:
            raise KeyFetchError('tls.issuer "secret-server" needs keys.server (the secret server)')
        self.issuer = issuer
        self.hosts = hosts
        self._make_quote = make_quote
        self._link = link
        self._now = now
        self._key = serving_cert.serving_key()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self.version = 0
        self.chain_pem = b""
        self._obtained = now()
        self.renew()

    # ------------------------------------------------------------------ the certificate

    @property
    def certificate(self) -> x509.Certificate:
        return _leaf(self.chain_pem)

    @property
    def spki_der(self) -> bytes:
        return serving_cert.spki_der(self._key)

    def _obtain(self) -> bytes:
        now = self._now()
        if self.issuer == "self":
            cert = serving_cert.self_signed(
                self._key, self.hosts, self._make_quote, lifetime=SELF_LIFETIME, now=now
            )
            return cert.public_bytes(serialization.Encoding.PEM)
        link = self._link
        assert link is not None
        presented = serving_cert.self_signed(
            self._key, self.hosts, self._make_quote, lifetime=ASK_LIFETIME, now=now
        )
        chain = exchange(
            link.server,
            link.ca_file,
            link.verifier,
            presented,
            self._key,
            server_name=wire.CERT_SERVER_NAME,
            request=wire.cert_request(serving_cert.csr(self._key, self.hosts)),
            what="the serving certificate",
            expect_size=None,
            timeout=link.timeout,
        )
        try:
            leaf = _leaf(chain)
        except ValueError as exc:
            raise KeyFetchError(
                f"secret server {link.server}: the serving certificate does not parse: {exc}"
            ) from None
        if serving_cert.spki_der(leaf.public_key()) != self.spki_der:
            raise KeyFetchError(
                f"secret server {link.server}: the certificate it issued is not for this "
                "enclave's serving key"
            )
        return chain

    def renew(self) -> None:
        """Obtain a fresh certificate for the same key (KeyFetchError when refused)."""
        obtained = self._now()
        chain = self._obtain()
        with self._lock:
            self.chain_pem = chain
            self._obtained = obtained
            self.version += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def renew_at(self) -> _dt.datetime:
        """When the current certificate is to be renewed: two thirds of the way from when it
        was asked for to its expiry (not from its validity start, which issuers backdate a few
        minutes for clients' clocks: a lifetime shorter than that would renew at once)."""
        end = not_after(self.certificate)
        start = min(self._obtained, end)
        return start + (end - start) * 2 / 3

    def on_renewal(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    # ------------------------------------------------------------------ renewal thread

    def start_renewal(self) -> threading.Thread:
        thread = threading.Thread(target=self._renew_loop, name="tls-renewal", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            wait = (self.renew_at() - self._now()).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                return
            try:
                self.renew()
            except KeyFetchError as exc:
                left = (not_after(self.certificate) - self._now()).total_seconds()
                _say(
                    f"warning: cannot renew the serving certificate ({exc}); it expires in "
                    f"{max(0, int(left))} s; retrying"
                )
                if self._stop.wait(max(1.0, min(RETRY_SECONDS, left / 4))):
                    return
            else:
                cert = self.certificate
                _say(
                    f"renewed the serving certificate (valid until "
                    f"{not_after(cert).isoformat(timespec='seconds')})"
                )

    # ------------------------------------------------------------------ TLS plumbing

    def key_pem(self) -> bytes:
        """The private key as PEM bytes (for gRPC's in-memory credentials)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the current chain and the key into *context*: the key travels through a
        temporary file only encrypted under a passphrase that never leaves this process."""
        passphrase = secrets.token_bytes(32)
        encrypted = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        with tempfile.TemporaryDirectory(prefix="enclave-tls-") as tmp:
            cert_path, key_path = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(encrypted)
            cert_path.write_bytes(self.chain_pem)
            context.load_cert_chain(str(cert_path), str(key_path), password=passphrase)


__all__ = ["ServingCertificate", "SELF_LIFETIME", "RETRY_SECONDS", "not_after"]
