"""Synthetic SGX attestation: a test root CA, PCK chain, TCB signing certificate, CRLs, TCB info,
QE identity, and quotes for any enclave identity — all accepted by dcap-qvl's
``verify_with_root_ca`` *with this root*, and by nothing that trusts Intel's root.

FOR TESTS AND SIMULATION ONLY. Anyone holding this module can mint quotes for any MRENCLAVE, so
a verifier trusts a synthetic root only when its configuration names that root explicitly (and
then warns on every start). Every certificate says "SYNTHETIC TEST" in its subject.

The structure follows Intel's PCS formats so that the real verification path runs: ECDSA P-256
everywhere, the PCK leaf carries the SGX extension (1.2.840.113741.1.13.1: PPID, TCB components,
PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type), CRLs are v2, TCB info is version 3, QE identity
version 2, signatures over the exact JSON text as raw r||s.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .errors import AttestationError
from .quote import (
    FLAG_DEBUG,
    FLAG_INIT,
    FLAG_MODE64BIT,
    FLAG_PROVISION_KEY,
    EnclaveReport,
    assemble_quote,
    signed_part,
)

SGX_EXTENSION = "1.2.840.113741.1.13.1"
FMSPC = bytes.fromhex("00906ED50000")
PCE_ID = bytes.fromhex("0000")
QE_MRSIGNER = hashlib.sha256(b"enclave-build synthetic QE signer").digest()
QE_ISVSVN = 8
# The platform's TCB: 16 CPU SVN components and the PCE SVN, as the PCK certificate states them.
PLATFORM_CPU_SVN = bytes([11, 11, 2, 2, 255, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0])
PLATFORM_PCE_SVN = 13


# ------------------------------------------------------------------------------ DER helpers


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + value


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, body)


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def sgx_extension(
    cpu_svn: bytes, pce_svn: int, fmspc: bytes = FMSPC, ppid: bytes = b"\x11" * 16
) -> bytes:
    """DER value of the Intel SGX extension of a PCK certificate."""
    tcb = [_seq(_oid(f"{SGX_EXTENSION}.2.{i + 1}"), _int(svn)) for i, svn in enumerate(cpu_svn)]
    tcb.append(_seq(_oid(f"{SGX_EXTENSION}.2.17"), _int(pce_svn)))
    tcb.append(_seq(_oid(f"{SGX_EXTENSION}.2.18"), _tlv(0x04, cpu_svn)))
    return _seq(
        _seq(_oid(f"{SGX_EXTENSION}.1"), _tlv(0x04, ppid)),
        _seq(_oid(f"{SGX_EXTENSION}.2"), _seq(*tcb)),
        _seq(_oid(f"{SGX_EXTENSION}.3"), _tlv(0x04, PCE_ID)),
        _seq(_oid(f"{SGX_EXTENSION}.4"), _tlv(0x04, fmspc)),
        _seq(_oid(f"{SGX_EXTENSION}.5"), _tlv(0x0A, b"\x00")),  # SGX type: Standard
    )


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256/SHA-256 as the 64-byte r || s that Intel's formats use."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SYNTHETIC TEST - NOT INTEL"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _iso(moment: _dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


ROOT_FILE = "root.pem"
COLLATERAL_FILE = "collateral.json"
PRIVATE_FILE = "pki-private.json"
_PRIVATE_FORMAT = "enclave-build synthetic SGX PKI v1"
_KEYS = ("root_key", "pck_ca_key", "pck_key", "tcb_key", "attestation_key")
_CERTS = ("root", "pck_ca", "pck", "tcb_signer")


class PKIError(AttestationError, ValueError):
    """A synthetic PKI directory cannot be written or read."""


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class SyntheticPKI:
    """A complete synthetic collateral set, valid from *now - 1 day* for *days* days."""

    now: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))
    days: int = 30
    tcb_status: str = "UpToDate"  # status of the level the platform matches
    advisories: tuple[str, ...] = ()
    revoke_pck: bool = False
    root_key: ec.EllipticCurvePrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.not_before = self.now - _dt.timedelta(days=1)
        self.not_after = self.now + _dt.timedelta(days=self.days)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.tcb_key = ec.generate_private_key(ec.SECP256R1())
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert(
            _name("SYNTHETIC TEST SGX Root CA"),
            self.root_key.public_key(),
            _name("SYNTHETIC TEST SGX Root CA"),
            self.root_key,
            ca=True,
        )
        self.pck_ca = self._cert(
            _name("SYNTHETIC TEST SGX PCK Processor CA"),
            self.pck_ca_key.public_key(),
            self.root.subject,
            self.root_key,
            ca=True,
        )
        self.pck = self._cert(
            _name("SYNTHETIC TEST SGX PCK Certificate"),
            self.pck_key.public_key(),
            self.pck_ca.subject,
            self.pck_ca_key,
            ca=False,
            extension=sgx_extension(PLATFORM_CPU_SVN, PLATFORM_PCE_SVN),
        )
        self.tcb_signer = self._cert(
            _name("SYNTHETIC TEST SGX TCB Signing"),
            self.tcb_key.public_key(),
            self.root.subject,
            self.root_key,
            ca=False,
        )

    # -------------------------------------------------------------------- persistence

    def save(self, directory: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write root.pem, collateral.json and pki-private.json (mode 0600: every private key)
        into *directory* (created 0700 if missing), each atomically. A secret server trusts
        quotes of this PKI with ``root_ca = "DIR/root.pem"`` and ``collateral =
        "DIR/collateral.json"``. Refuses to replace an existing PKI unless *overwrite*."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise PKIError(f"{directory}: exists and is not a directory")
        private = directory / PRIVATE_FILE
        if private.exists() and not overwrite:
            raise PKIError(
                f"{directory}: already holds a synthetic PKI ({PRIVATE_FILE}); not "
                "replacing it (servers may trust its root)"
            )
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            record = {
                "format": _PRIVATE_FORMAT,
                "warning": "SYNTHETIC TEST PKI: anyone holding this file can mint SGX quotes "
                "for any enclave identity. Never trust its root in production.",
                "now": self.now.isoformat(),
                "days": self.days,
                "tcb_status": self.tcb_status,
                "advisories": list(self.advisories),
                "revoke_pck": self.revoke_pck,
                "keys": {
                    name: getattr(self, name)
                    .private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                    .decode()
                    for name in _KEYS
                },
                "certs": {
                    name: getattr(self, name).public_bytes(serialization.Encoding.PEM).decode()
                    for name in _CERTS
                },
            }
            written = [private, directory / ROOT_FILE, directory / COLLATERAL_FILE]
            _atomic_write(written[0], json.dumps(record, indent=1).encode(), 0o600)
            _atomic_write(written[1], self.root_pem, 0o644)
            _atomic_write(written[2], self.collateral_json().encode(), 0o644)
        except OSError as exc:
            raise PKIError(
                f"{directory}: cannot write the synthetic PKI: {exc.strerror or exc}"
            ) from None
        return written

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticPKI:
        """The PKI :meth:`save` wrote to *directory* (same keys, certificates and settings)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise PKIError(
                f"{directory}: no such directory (create one with `enclave-build "
                "secrets simulate-pki DIR`)"
            )
        private = directory / PRIVATE_FILE
        try:
            record = json.loads(private.read_text())
        except FileNotFoundError:
            raise PKIError(
                f"{directory}: not a synthetic PKI directory ({PRIVATE_FILE} is missing)"
            ) from None
        except (OSError, ValueError) as exc:
            raise PKIError(f"{private}: unreadable: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != _PRIVATE_FORMAT:
            raise PKIError(f"{private}: not a {_PRIVATE_FORMAT!r} file")
        self = cls.__new__(cls)
        try:
            self.now = _dt.datetime.fromisoformat(record["now"])
            self.days = int(record["days"])
            self.tcb_status = str(record["tcb_status"])
            self.advisories = tuple(record["advisories"])
            self.revoke_pck = bool(record["revoke_pck"])
            for name in _KEYS:
                key = serialization.load_pem_private_key(record["keys"][name].encode(), None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError(f"{name} is not an EC key")
                setattr(self, name, key)
            for name in _CERTS:
                setattr(self, name, x509.load_pem_x509_certificate(record["certs"][name].encode()))
        except (KeyError, TypeError, ValueError) as exc:
            raise PKIError(
                f"{private}: malformed synthetic PKI ({type(exc).__name__}: {exc})"
            ) from None
        self.not_before = self.now - _dt.timedelta(days=1)
        self.not_after = self.now + _dt.timedelta(days=self.days)
        try:
            root_file = (directory / ROOT_FILE).read_bytes()
        except OSError as exc:
            raise PKIError(f"{directory / ROOT_FILE}: cannot read: {exc.strerror}") from None
        if root_file.strip() != self.root_pem.strip():
            raise PKIError(
                f"{directory / ROOT_FILE} is not the root of {private}: the "
                "directory was mixed up; write a new one"
            )
        return self

    # -------------------------------------------------------------------- certificates

    def _cert(
        self,
        subject: x509.Name,
        public_key,
        issuer: x509.Name,
        signing_key,
        ca: bool,
        extension: bytes | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        )
        # CAs sign certificates and CRLs; leaves (PCK, TCB signer) sign data. No EKU: webpki
        # checks the leaves for server_auth, which an absent EKU satisfies.
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        if extension is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION), extension),
                critical=False,
            )
        return builder.sign(signing_key, hashes.SHA256())

    def _crl(self, issuer: x509.Certificate, key, revoked: list[x509.Certificate]) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(self.not_before)
            .next_update(self.not_after)
            .add_extension(x509.CRLNumber(1), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False
            )
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(self.not_before)
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    @staticmethod
    def _pem(*certs: x509.Certificate) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    # -------------------------------------------------------------------- collateral

    def tcb_info(self) -> str:
        levels = [
            {
                "tcb": {
                    "sgxtcbcomponents": [{"svn": s} for s in PLATFORM_CPU_SVN],
                    "pcesvn": PLATFORM_PCE_SVN,
                },
                "tcbDate": _iso(self.not_before),
                "tcbStatus": self.tcb_status,
                **({"advisoryIDs": list(self.advisories)} if self.advisories else {}),
            },
            {
                "tcb": {"sgxtcbcomponents": [{"svn": 0} for _ in PLATFORM_CPU_SVN], "pcesvn": 0},
                "tcbDate": "2018-01-01T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-00000"],
            },
        ]
        return json.dumps(
            {
                "id": "SGX",
                "version": 3,
                "issueDate": _iso(self.not_before),
                "nextUpdate": _iso(self.not_after),
                "fmspc": FMSPC.hex().upper(),
                "pceId": PCE_ID.hex().upper(),
                "tcbType": 0,
                "tcbEvaluationDataNumber": 17,
                "tcbLevels": levels,
            },
            separators=(",", ":"),
        )

    def qe_identity(self) -> str:
        return json.dumps(
            {
                "id": "QE",
                "version": 2,
                "issueDate": _iso(self.not_before),
                "nextUpdate": _iso(self.not_after),
                "tcbEvaluationDataNumber": 17,
                "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF",
                "attributes": "11000000000000000000000000000000",
                "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                "mrsigner": QE_MRSIGNER.hex().upper(),
                "isvprodid": 1,
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": QE_ISVSVN},
                        "tcbDate": _iso(self.not_before),
                        "tcbStatus": "UpToDate",
                    }
                ],
            },
            separators=(",", ":"),
        )

    def collateral_json(self) -> str:
        """The nine fields dcap-qvl's QuoteCollateralV3.from_json wants."""
        tcb_info, qe_identity = self.tcb_info(), self.qe_identity()
        revoked = [self.pck] if self.revoke_pck else []
        return json.dumps(
            {
                "pck_crl_issuer_chain": self._pem(self.pck_ca, self.root),
                "root_ca_crl": self._crl(self.root, self.root_key, []).hex(),
                "pck_crl": self._crl(self.pck_ca, self.pck_ca_key, revoked).hex(),
                "tcb_info_issuer_chain": self._pem(self.tcb_signer, self.root),
                "tcb_info": tcb_info,
                "tcb_info_signature": raw_signature(self.tcb_key, tcb_info.encode()).hex(),
                "qe_identity_issuer_chain": self._pem(self.tcb_signer, self.root),
                "qe_identity": qe_identity,
                "qe_identity_signature": raw_signature(self.tcb_key, qe_identity.encode()).hex(),
            }
        )

    # -------------------------------------------------------------------- quotes

    def quote(
        self,
        mr_enclave: bytes,
        mr_signer: bytes,
        report_data: bytes = bytes(64),
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
        flags: int | None = None,
    ) -> bytes:
        """A v3 quote for an enclave with this identity, signed through this PKI."""
        if flags is None:
            flags = FLAG_INIT | FLAG_MODE64BIT | (FLAG_DEBUG if debug else 0)
        attributes = flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little")
        report = EnclaveReport(
            PLATFORM_CPU_SVN,
            0,
            attributes,
            mr_enclave,
            mr_signer,
            isv_prod_id,
            isv_svn,
            report_data.ljust(64, b"\0"),
        )
        signed = signed_part(report, QE_ISVSVN, PLATFORM_PCE_SVN)
        signature = raw_signature(self.attestation_key, signed)
        attestation_key = _raw_public(self.attestation_key)
        qe_auth = hashlib.sha256(b"synthetic QE auth data").digest()
        qe_flags = FLAG_INIT | FLAG_PROVISION_KEY | FLAG_MODE64BIT
        qe_report = EnclaveReport(
            PLATFORM_CPU_SVN,
            0,
            qe_flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little"),
            hashlib.sha256(b"synthetic QE").digest(),
            QE_MRSIGNER,
            1,
            QE_ISVSVN,
            hashlib.sha256(attestation_key + qe_auth).digest() + bytes(32),
        ).to_bytes()
        qe_signature = raw_signature(self.pck_key, qe_report)
        chain = (self._pem(self.pck, self.pck_ca, self.root)).encode() + b"\0"
        return assemble_quote(
            signed, signature, attestation_key, qe_report, qe_signature, qe_auth, chain
        )


TEST_TLS_CA_NAME = "SYNTHETIC TEST secret-server CA"


def _host_name(name: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def tls_ca_and_server(
    directory,
    hostname: str | list[str] | tuple[str, ...] = "localhost",
    *,
    days: int = 30,
    ca_name: str = TEST_TLS_CA_NAME,
    overwrite: bool = True,
):
    """Write (ca.pem, server.crt, server.key) into *directory*: a CA (its private key is not
    kept) and an ordinary CA-signed TLS server certificate, as the secret server uses.

    *hostname*: one name, certified with 127.0.0.1 (tests, simulation); or a list of names
    (DNS names and/or IP addresses), certified exactly. server.key is written mode 0600.
    Without *overwrite*, existing files are refused (FileExistsError, nothing written)."""
    directory = Path(directory)
    hosts = [hostname, "127.0.0.1"] if isinstance(hostname, str) else list(hostname)
    if not hosts:
        raise ValueError("no host name to certify")
    paths = directory / "ca.pem", directory / "server.crt", directory / "server.key"
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path} exists")
    now = _dt.datetime.now(_dt.UTC)
    until = now + _dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys(_host_name(h) for h in hosts))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    if paths[2].exists():
        paths[2].unlink()
    fd = os.open(paths[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(paths[2], 0o600)
    return paths
