"""Keys fetched inside the enclave (one RA-TLS connection per key) and the files they open.

API used by the server:

* :func:`prepare_keys` fetches every key of ``config.keys`` before any model is opened and
  installs it: at ``/dev/attestation/keys/NAME`` inside Gramine (the LibOS then decrypts the
  encrypted mount keyed NAME transparently), or in memory in a plain-process simulation.
* :meth:`KeyRing.open` gives a :class:`ModelSource` for an image path: the file itself inside
  Gramine (and Occlum), or a decrypted private copy in a plain process.
* Under Occlum (``keys.source = "files"``) there is nothing to fetch and no quote device: the
  libOS's init fetched every key before the server started (mutual RA-TLS, Occlum's
  ``ratls.GrSecret``) and wrote each to ``keys.directory/NAME``; the whole image is encrypted,
  so models are opened as they are. :func:`read_key_files` checks that every key is there.

Per key: a fresh ECDSA P-384 key pair; a quote whose report_data binds it (TCG DICE RA-TLS
certificate, :func:`attestation.ratls.create_certificate`); a TLS connection to the secret
server whose certificate must chain to ``keys.ca`` and name the host of ``keys.server``; the TLS
server name (SNI) is the *key name*, which is how the secret server is asked for that key; then
Gramine's provisioning exchange (:mod:`attestation.wire`) and exactly 16 bytes.

With ``keys.server_identity`` instead of ``keys.ca`` (the secret server runs in an enclave of
its own and presents a self-signed RA-TLS certificate: mutual RA-TLS), the handshake accepts
that certificate and :class:`model_server.server_attest.ServerVerifier` checks its quote and
identity right after it, before the request is sent; a server that fails is refused like a
refused key (:class:`KeyFetchError`, exit 3) and nothing is sent to it.

Quotes come from :func:`attestation.quote_source.discover`: the Gramine quote device, or (in
``gramine-direct`` or a plain process) a SIMULATED quoter named by
``ENCLAVE_BUILD_SIMULATED_QUOTER=HOST:PORT``, which a secret server accepts only if it trusts
the synthetic root; neither is a :class:`KeyFetchError`.

This module runs inside the image: standard library, ``cryptography`` (38 or later) and
the pure ``attestation`` modules only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from enclave_build.attestation import protected_files, wire
from enclave_build.attestation.quote_source import (
    ATTESTATION_ROOT,
    QuoteSource,
    QuoteSourceError,
    discover,
)
from enclave_build.attestation.ratls import FORMATS, RaTlsKey, create_certificate

from .config import KeysConfig, host_path
from .errors import ModelServerError
from .server_attest import ServerRefused, ServerVerifier


class KeyFetchError(ModelServerError, RuntimeError):
    """A key could not be obtained; the message carries the secret server's reason."""


@dataclass(frozen=True)
class ModelSource:
    image_path: str
    path: Path  # a host path a runtime can open

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- quote source


def quote_source(timeout: float = 10.0, *, root: Path = ATTESTATION_ROOT) -> QuoteSource:
    """The attestation source of this process (:func:`attestation.quote_source.discover`);
    *root* is where Gramine's attestation pseudo-files are. Its failures are KeyFetchErrors."""
    try:
        source = discover(timeout, root=root, purpose="attest to fetch keys")
    except QuoteSourceError as exc:
        raise KeyFetchError(str(exc)) from None

    def make_quote(report_data: bytes) -> bytes:
        try:
            return source(report_data)
        except QuoteSourceError as exc:
            raise KeyFetchError(str(exc)) from None

    return make_quote


def _parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise KeyFetchError(f"{what} {value!r} is not HOST:PORT")
    return host, int(port)


# --------------------------------------------------------------------------- TLS


def _hostname_matches(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125: SAN entries (DNS names with a left-most wildcard, IP addresses); the subject CN
    only when the certificate has no DNS names at all."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if address is not None:
        return san is not None and address in san.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower()
    names = san.get_values_for_type(x509.DNSName) if san is not None else []
    if not names:
        names = [
            a.value
            for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if isinstance(a.value, str)
        ]
    for name in names:
        name = name.rstrip(".").lower()
        if name == wanted:
            return True
        if name.startswith("*.") and "." in wanted:
            head, _, rest = wanted.partition(".")
            if head and rest == name[2:] and "." in rest:
                return True
    return False


def _client_context(
    ca_file: Path | None, cert: x509.Certificate, key: RaTlsKey, workdir: Path
) -> ssl.SSLContext:
    """*ca_file* None: the server's certificate is a self-signed RA-TLS one, accepted by the
    handshake and verified by its quote right after (no CA can vouch for it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # SNI carries the key name; the host is checked below
    if ca_file is None:
        context.verify_mode = ssl.CERT_NONE
        # The attested certificate must stay the connection's: no renegotiation to another.
        context.options |= ssl.OP_NO_RENEGOTIATION
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise KeyFetchError(f"cannot load the secret server's CA {ca_file}: {exc}") from None
    cert_path, key_path = workdir / "ratls.crt", workdir / "ratls.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    try:
        context.load_cert_chain(cert_path, key_path)
    finally:
        key_path.unlink()
        cert_path.unlink()
    return context


def fetch_key(
    name: str,
    server: str,
    ca_file: Path | None,
    make_quote: QuoteSource,
    *,
    timeout: float = 10.0,
    evidence: str = "tcg-dice",
    verifier: ServerVerifier | None = None,
) -> bytes:
    """One RA-TLS connection to *server* asking (by SNI) for key *name*: its 16 bytes. The
    server is checked against *ca_file*, or (exactly one of the two) by *verifier* (an
    attested secret server, see :mod:`model_server.server_attest`)."""
    if evidence not in FORMATS:
        raise KeyFetchError(f"keys.evidence {evidence!r} is not one of {', '.join(FORMATS)}")
    cert, key = create_certificate(evidence, make_quote)
    return exchange(
        server,
        ca_file,
        verifier,
        cert,
        key,
        server_name=name,
        request=wire.REQUEST,
        what=f"key {name}",
        expect_size=wire.WRAP_KEY_SIZE,
        timeout=timeout,
    )


def exchange(
    server: str,
    ca_file: Path | None,
    verifier: ServerVerifier | None,
    cert: x509.Certificate,
    key: RaTlsKey,
    *,
    server_name: str,
    request: bytes,
    what: str,
    expect_size: int | None,
    timeout: float,
) -> bytes:
    """One attested exchange with the secret server at *server*: connect presenting the RA-TLS
    *cert* (for *key*), check the server (against *ca_file*, or by *verifier*: exactly one),
    send *request* with the TLS server name *server_name*, and return what it releases (of
    exactly *expect_size* bytes, if given). Every failure is a KeyFetchError naming *what*."""
    if (ca_file is None) == (verifier is None):
        raise KeyFetchError(
            "internal: a secret server is checked against a CA or by its quote (exactly one)"
        )
    host, port = _parse_address(server, "keys.server")
    peer = f"{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="enclave-keys-") as tmp:
        context = _client_context(ca_file, cert, key, Path(tmp))
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise KeyFetchError(
            f"cannot reach the secret server {peer} for {what}: {exc.strerror or exc}"
        ) from None
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=server_name)
        except ssl.SSLCertVerificationError as exc:
            raise KeyFetchError(
                f"secret server {peer}: its certificate does not verify against "
                f"{ca_file}: {exc.verify_message}"
            ) from None
        with tls:
            der = tls.getpeercert(binary_form=True)
            if verifier is not None:
                if not der:
                    raise KeyFetchError(f"secret server {peer} presented no certificate")
                try:
                    verifier.check(der, peer)
                except ServerRefused as exc:
                    raise KeyFetchError(
                        f"secret server {peer} is refused: {exc}. Nothing was "
                        f"sent to it ({what} not asked for)"
                    ) from None
            elif der is None or not _hostname_matches(x509.load_der_x509_certificate(der), host):
                raise KeyFetchError(
                    f"secret server {peer}: its certificate is not issued for "
                    f"{host!r} (subject alternative names / common name)"
                )
            # The whole answer within *timeout*: a server dripping it a byte at a time would
            # otherwise hold the start of the enclave for timeout seconds per byte.
            answer_by = time.monotonic() + timeout
            tls.sendall(request)
            header = wire.recv_exact(tls, wire.HEADER_LEN, answer_by)
            if len(header) < wire.HEADER_LEN:
                raise KeyFetchError(
                    f"secret server {peer} refused {what}: it closed the "
                    "connection without a reason (see its audit log)"
                )
            try:
                released, size = wire.parse_header(header)
            except ValueError as exc:
                raise KeyFetchError(
                    f"secret server {peer}: protocol error for {what}: {exc}"
                ) from None
            if released and expect_size is not None and size != expect_size:
                raise KeyFetchError(  # refused before reading it
                    f"secret server {peer}: {what} is {size} bytes; a wrap "
                    f"key must be exactly {expect_size}"
                )
            body = wire.recv_exact(tls, size, answer_by)
            if not released:
                reason = body.decode("utf-8", "replace") or "no reason given"
                raise KeyFetchError(f"secret server {peer} refused {what}: {reason}")
            if len(body) != size:
                raise KeyFetchError(
                    f"secret server {peer}: {what} truncated ({len(body)} of {size} bytes)"
                )
            return body
    except ssl.SSLError as exc:
        raise KeyFetchError(
            f"secret server {peer}: TLS failed for {what}: {exc.reason or exc}"
        ) from None
    except TimeoutError:
        raise KeyFetchError(
            f"secret server {peer}: no answer for {what} within {timeout:g} s"
        ) from None
    except OSError as exc:
        raise KeyFetchError(
            f"secret server {peer}: connection failed for {what}: {exc.strerror or exc}"
        ) from None
    finally:
        raw.close()


# --------------------------------------------------------------------------- key ring


class KeyRing:
    """Keys this process holds, and how encrypted files are opened with them.

    ``mode`` is ``"gramine"`` (keys installed in /dev/attestation/keys; the LibOS decrypts),
    ``"libos"`` (Occlum: the libOS fetched the keys and decrypts the whole image),
    ``"memory"`` (plain process: :meth:`open` decrypts into a private temporary directory) or
    ``"none"`` (no keys)."""

    def __init__(self, keys: dict[str, bytes] | None = None, mode: str = "none") -> None:
        self._keys = {name: bytearray(value) for name, value in (keys or {}).items()}
        self.names: tuple[str, ...] = tuple(self._keys)
        self.mode = mode
        self._lock = threading.Lock()
        self._private: Path | None = None
        self._decrypted: dict[tuple[Path, str], tuple[Path, dict[str, str]]] = {}

    def fingerprint(self, name: str) -> str:
        """The SHA-256 of key *name* (hex): says which key the ring holds without revealing
        it (KeyError for a key it does not hold)."""
        return hashlib.sha256(self._keys[name]).hexdigest()

    def open(self, image_path: str, key: str | None) -> ModelSource:
        if key is None:
            return ModelSource(image_path, host_path(image_path))
        if key not in self.names:
            raise KeyFetchError(
                f"{image_path}: encrypted with key {key!r}, which was not fetched "
                f"(keys.names: {', '.join(self.names) or 'none'})"
            )
        if self.mode in ("gramine", "libos"):
            return ModelSource(image_path, host_path(image_path))
        return ModelSource(image_path, self._decrypt(image_path, key))

    def _decrypt(self, image_path: str, key: str) -> Path:
        """Decrypt the protected file at *image_path* — with the other files of its directory,
        as the encrypted mount would show them (an OpenVINO .xml needs its .bin) — or every file
        under it if it is a directory. Embedded paths must equal the image paths. A sibling
        that does not decrypt is left out (with a warning); the file asked for must."""
        source = host_path(image_path)
        if source.is_dir():
            image_dir, host_dir, wanted = image_path.rstrip("/") or "/", source, None
        elif source.is_file():
            image_dir = os.path.dirname(image_path.rstrip("/")) or "/"
            host_dir, wanted = source.parent, source.name
        else:
            raise KeyFetchError(f"{image_path}: no such file ({source})")
        with self._lock:
            entry = self._decrypted.get((host_dir, key))
            if entry is None:
                entry = self._decrypt_tree(image_dir, host_dir, key)
                self._decrypted[(host_dir, key)] = entry
        target, failures = entry
        if wanted is None:
            if failures:
                raise KeyFetchError(next(iter(failures.values())))
            return target
        if wanted in failures:
            raise KeyFetchError(failures[wanted])
        return target / wanted

    def _decrypt_tree(
        self, image_dir: str, host_dir: Path, key: str
    ) -> tuple[Path, dict[str, str]]:
        if self._private is None:
            self._private = Path(tempfile.mkdtemp(prefix="enclave-build-decrypted-"))
            os.chmod(self._private, 0o700)
        target = Path(tempfile.mkdtemp(dir=self._private))
        wrap_key = bytes(self._keys[key])
        failures: dict[str, str] = {}  # relative path -> reason
        for dirpath, dirnames, filenames in os.walk(host_dir):
            dirnames.sort()
            relative = Path(dirpath).relative_to(host_dir)
            (target / relative).mkdir(mode=0o700, parents=True, exist_ok=True)
            for filename in sorted(filenames):
                src = Path(dirpath) / filename
                if not src.is_file():
                    continue
                embedded = "/" + "/".join(
                    p for p in (image_dir.strip("/"), *relative.parts, filename) if p
                )
                try:
                    protected_files.decrypt_file(
                        wrap_key, src, target / relative / filename, embedded
                    )
                except protected_files.PFError as exc:
                    failures[str(relative / filename)] = (
                        f"{embedded}: cannot decrypt with key {key!r}: {exc}"
                    )
        for reason in failures.values():
            _warn(f"warning: {reason} (left out of the decrypted copy)")
        return target, failures

    def close(self) -> None:
        """Forget the keys and remove any decrypted private copies."""
        with self._lock:
            for value in self._keys.values():
                value[:] = bytes(len(value))
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)
                self._private = None
            self._decrypted.clear()

    def __enter__(self) -> KeyRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _install(root: Path, name: str, key: bytes) -> None:
    try:
        with open(root / "keys" / name, "wb", buffering=0) as out:
            if out.write(key) != len(key):
                raise OSError("short write")
    except OSError as exc:
        raise KeyFetchError(
            f"cannot install key {name} at {root}/keys/{name}: {exc.strerror or exc}"
        ) from None


#: Occlum's GrSecret client decodes base64 padding ('=') into NUL bytes, so a 16-byte key
#: arrives in init's file followed by two NULs (attestation.grsecret explains the decoder).
OCCLUM_KEY_PADDING = b"\0\0"


def _key_name_ok(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def read_key_files(config: KeysConfig) -> KeyRing:
    """The keys the libOS left in ``config.directory`` (``keys.source = "files"``): each file
    must hold the 16-byte key, as is or followed by the two NUL bytes Occlum's GrSecret client
    appends. The files stay where they are (the libOS's memory); the ring keeps only names and
    opens files as they are (the libOS decrypts the image)."""
    assert config.directory is not None
    for name in config.names:
        if not _key_name_ok(name):
            raise KeyFetchError(f"keys.names: {name!r} is not a valid key name")
        path = f"{config.directory.rstrip('/')}/{name}"
        try:
            with open(host_path(path), "rb") as src:
                data = src.read(wire.WRAP_KEY_SIZE + len(OCCLUM_KEY_PADDING) + 1)
        except OSError as exc:
            raise KeyFetchError(
                f"key {name}: cannot read {path} ({exc.strerror or exc}); the "
                "libOS's init writes it there before the server starts (did it "
                "fetch its keys from the secret server?)"
            ) from None
        key = data[: wire.WRAP_KEY_SIZE]
        rest = data[wire.WRAP_KEY_SIZE :]
        if len(key) != wire.WRAP_KEY_SIZE or rest not in (b"", OCCLUM_KEY_PADDING):
            raise KeyFetchError(
                f"key {name}: {path} holds {len(data)}"
                f"{'+' if len(data) > 18 else ''} bytes; a wrap key is "
                f"{wire.WRAP_KEY_SIZE} bytes (optionally followed by the two "
                "NUL bytes Occlum's GrSecret client appends)"
            )
    return KeyRing({name: b"" for name in config.names}, "libos")


@dataclass(frozen=True)
class SecretServerLink:
    """How this process reaches and checks its secret server (``keys`` of the configuration):
    its address, its CA (or the verifier of its quote), this process's quote source."""

    server: str
    ca_file: Path | None
    verifier: ServerVerifier | None
    make_quote: QuoteSource
    timeout: float

    @classmethod
    def of(
        cls, config: KeysConfig, *, attestation_root: Path = ATTESTATION_ROOT
    ) -> SecretServerLink:
        """The link of *config* (``source = "ra-tls"``); announces what a quote-verified server
        is trusted with. KeyFetchError when it cannot be set up."""
        make_quote = quote_source(config.timeout_seconds, root=attestation_root)
        verifier = None
        ca_file: Path | None = None
        if config.server_identity is not None:
            try:
                verifier = ServerVerifier(config.server_identity, config.timeout_seconds)
            except ServerRefused as exc:
                raise KeyFetchError(f"secret server {config.server}: {exc}") from None
            verifier.announce()
        else:
            ca_file = host_path(config.ca)
        return cls(config.server, ca_file, verifier, make_quote, config.timeout_seconds)


def prepare_keys(
    config: KeysConfig | None,
    *,
    attestation_root: Path = ATTESTATION_ROOT,
    link: SecretServerLink | None = None,
) -> KeyRing:
    """Fetch and install every key of *config* (nothing to do for None or no names); with
    ``source = "files"`` read them where the libOS put them (:func:`read_key_files`).
    *attestation_root* is where Gramine's attestation pseudo-files are (quote, keys/); *link*
    the secret server's, when the caller made it already."""
    if config is None or not config.names:
        return KeyRing()
    if len(set(config.names)) != len(config.names):
        raise KeyFetchError(f"keys.names lists a key twice: {', '.join(config.names)}")
    if config.source == "files":
        return read_key_files(config)
    root = attestation_root
    in_gramine = (root / "keys").is_dir()
    link = link or SecretServerLink.of(config, attestation_root=root)
    keys: dict[str, bytes] = {}
    for name in config.names:
        if not name or "/" in name or name in (".", ".."):
            raise KeyFetchError(f"keys.names: {name!r} is not a valid key name")
        key = fetch_key(
            name,
            link.server,
            link.ca_file,
            link.make_quote,
            timeout=link.timeout,
            evidence=config.evidence,
            verifier=link.verifier,
        )
        if in_gramine:
            _install(root, name, key)
        keys[name] = key
    if in_gramine:
        keys = {name: b"" for name in keys}  # the LibOS holds them; keep only the names
    return KeyRing(keys, "gramine" if in_gramine else "memory")
