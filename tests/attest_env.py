"""A complete secret-server environment for tests: a TLS CA and server certificate for
localhost, a synthetic SGX PKI with its collateral and root, measurements.json files for enclave
identities, wrap-key secrets, and secrets.toml. Everything on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.ratls import create_certificate
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.contract.identity import EnclaveIdentity

MR_SIGNER = hashlib.sha256(b"test signer").digest()
PROD_ID = {"face": 1, "ocr": 2}  # one signing key, two products


def identity(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@dataclass
class Env:
    directory: Path
    pki: SyntheticPKI
    ca: Path
    config: Path
    secrets: dict[str, bytes]

    def enclave_cert(
        self,
        service: str = "face",
        fmt: str = "tcg-dice",
        *,
        mr_enclave=None,
        mr_signer=MR_SIGNER,
        isv_prod_id=None,
        isv_svn=2,
        debug=False,
        pki=None,
    ):
        pki = pki or self.pki
        me = mr_enclave if mr_enclave is not None else identity(service)
        isv_prod_id = PROD_ID.get(service, 9) if isv_prod_id is None else isv_prod_id
        return create_certificate(
            fmt, lambda rd: pki.quote(me, mr_signer, rd, isv_prod_id, isv_svn, debug)
        )


def make_env(
    directory: Path,
    *,
    statuses=("UpToDate",),
    extra: str = "",
    pki: SyntheticPKI | None = None,
    max_tls: str = "1.3",
    timeout: float = 3.0,
    max_connections: int = 1024,
    processes: int | None = 1,
) -> Env:
    """*processes* None leaves the server's default (one process per core)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = pki or SyntheticPKI()
    (directory / "collateral.json").write_text(pki.collateral_json())
    (directory / "root.pem").write_bytes(pki.root_pem)
    ca, _cert, _key = tls_ca_and_server(directory)
    secrets = {}
    for service in ("face", "ocr"):
        build = directory / "builds" / service
        build.mkdir(parents=True)
        (build / "measurements.json").write_text(
            Measurements(
                service,
                "tflite",
                "gramine",
                EnclaveIdentity(
                    identity(service).hex(), MR_SIGNER.hex(), PROD_ID[service], 2, False
                ),
                ImageRef(f"{service}:1", None),
            ).to_json()
        )
        secrets[service] = os.urandom(16)
        (directory / f"{service}.key").write_bytes(secrets[service])
    status_list = ", ".join(f'"{s}"' for s in statuses)
    config = directory / "secrets.toml"
    config.write_text(f'''measurements = ["builds/*/measurements.json"]

[server]
listen = "127.0.0.1:0"
cert = "server.crt"
key = "server.key"
timeout = {timeout}
max_tls = "{max_tls}"
max_connections = {max_connections}
{f"processes = {processes}" if processes is not None else ""}
audit_log = "audit.jsonl"

[attestation]
root_ca = "root.pem"
collateral = "collateral.json"
allowed_tcb_statuses = [{status_list}]

[[secrets]]
name = "face-key"
file = "face.key"
allow = ["face"]

[[secrets]]
name = "ocr-key"
file = "ocr.key"
allow = ["ocr"]
match = "signer"
{extra}''')
    return Env(directory, pki, ca, config, secrets)


class Platform:
    """One SGX platform as a real quoting enclave behaves: the QE report (binding the
    attestation key) and the PCK's signature over it are made once, when the attestation key
    is certified, and every quote of the platform carries the same bytes; only the ISV
    report and its signature differ from quote to quote. (SyntheticPKI.quote re-signs the QE
    report every time, so no two of its quotes share a platform part.)"""

    def __init__(self, pki: SyntheticPKI):
        from enclave_build.attestation.quote import SIGNED_LEN

        self.pki = pki
        template = pki.quote(bytes(32), bytes(32))
        self._tail = template[SIGNED_LEN + 4 + 64 :]  # attestation key .. certification data

    def quote(
        self,
        mr_enclave: bytes,
        mr_signer: bytes = MR_SIGNER,
        report_data: bytes = bytes(64),
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
        flags: int | None = None,
    ) -> bytes:
        import struct

        from enclave_build.attestation.quote import (
            FLAG_DEBUG,
            FLAG_INIT,
            FLAG_MODE64BIT,
            EnclaveReport,
            signed_part,
        )
        from enclave_build.attestation.synthetic import (
            PLATFORM_CPU_SVN,
            PLATFORM_PCE_SVN,
            QE_ISVSVN,
            raw_signature,
        )

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
        tail = raw_signature(self.pki.attestation_key, signed) + self._tail
        return signed + struct.pack("<I", len(tail)) + tail

    def enclave_cert(
        self,
        service: str = "face",
        fmt: str = "tcg-dice",
        *,
        mr_enclave=None,
        mr_signer=MR_SIGNER,
        isv_prod_id=None,
        isv_svn=2,
        debug=False,
    ):
        me = mr_enclave if mr_enclave is not None else identity(service)
        isv_prod_id = PROD_ID.get(service, 9) if isv_prod_id is None else isv_prod_id
        return create_certificate(
            fmt, lambda rd: self.quote(me, mr_signer, rd, isv_prod_id, isv_svn, debug)
        )


def audit_mark(path: Path) -> int:
    """How many whole lines the audit log has now (pass it as *since* to :func:`settled_audit`)."""
    return len(audit_records(path))


def audit_records(path: Path) -> list[dict]:
    """The audit log's whole lines, as records, now (a line being written is left out)."""
    text = path.read_text() if path.exists() else ""
    if not text.endswith("\n"):  # a line being written: not yet a record
        text = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def settled_audit(
    path: Path, until=None, *, since: int = 0, settle: float = 0.1, timeout: float = 15.0
) -> list[dict]:
    """The audit log's records after the first *since*: once *until*(those records) is true
    (when given), and then once the log has not grown for *settle* seconds.

    A client may have its answer (or its refusal) a moment before the server writes that
    connection's line (the server writes it when it ends the connection), so a test that
    expects a line says which, as *until*: a quiet spell alone proves nothing on a loaded
    machine, where the server's thread may simply not have run yet. *timeout* bounds the
    whole wait; then the records are returned as they are, for the caller's assertion to
    fail on."""
    deadline = time.monotonic() + timeout
    while until is not None and time.monotonic() < deadline:
        if until(audit_records(path)[since:]):
            break
        time.sleep(0.01)
    size, quiet_since = -1, time.monotonic()
    while True:
        now_size = path.stat().st_size if path.exists() else 0
        now = time.monotonic()
        if now_size != size:
            size, quiet_since = now_size, now
        elif now - quiet_since >= settle or now > deadline:
            break
        time.sleep(0.01)
    return audit_records(path)[since:]


def verified_evidence(
    mr_enclave: str,
    mr_signer: str = MR_SIGNER.hex(),
    isv_prod_id: int = 1,
    isv_svn: int = 2,
    *,
    debug: bool = False,
    status: str = "UpToDate",
    advisories: tuple[str, ...] = (),
    flags: int | None = None,
    config_svn: int = 0,
    fmt: str = "tcg-dice",
):
    """What the secret server's verifier returns for a quote that verified, without a quote:
    the input :func:`attestation.server.decide.decide` judges."""
    from enclave_build.attestation.quote import FLAG_DEBUG, FLAG_INIT, FLAG_MODE64BIT
    from enclave_build.attestation.server.decide import Evidence
    from enclave_build.attestation.verify import VerifiedQuote

    if flags is None:
        flags = FLAG_INIT | FLAG_MODE64BIT | (FLAG_DEBUG if debug else 0)
    attributes = (flags.to_bytes(8, "little") + (0xE7).to_bytes(8, "little")).hex()
    quote = VerifiedQuote(
        status,
        advisories,
        mr_enclave,
        mr_signer,
        isv_prod_id,
        isv_svn,
        debug,
        attributes,
        bytes(64),
    )
    return Evidence(fmt, quote, config_svn)
