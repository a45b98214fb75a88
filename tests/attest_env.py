"""A complete secret-server environment for tests: a TLS CA and server certificate for
localhost, a synthetic SGX PKI with its collateral and root, measurements.json files for enclave
identities, wrap-key secrets, and secrets.toml. Everything on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from attestation.measurements import ImageRef, Measurements
from attestation.ratls import create_certificate
from attestation.synthetic import SyntheticPKI, tls_ca_and_server

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

    def enclave_cert(self, service: str = "face", fmt: str = "tcg-dice", *, mr_enclave=None,
                     mr_signer=MR_SIGNER, isv_prod_id=None, isv_svn=2, debug=False, pki=None):
        pki = pki or self.pki
        me = mr_enclave if mr_enclave is not None else identity(service)
        isv_prod_id = PROD_ID.get(service, 9) if isv_prod_id is None else isv_prod_id
        return create_certificate(fmt, lambda rd: pki.quote(me, mr_signer, rd, isv_prod_id,
                                                            isv_svn, debug))


def make_env(directory: Path, *, statuses=("UpToDate",), extra: str = "",
             pki: SyntheticPKI | None = None, max_tls: str = "1.3", timeout: float = 3.0,
             max_connections: int = 1024) -> Env:
    directory.mkdir(parents=True, exist_ok=True)
    pki = pki or SyntheticPKI()
    (directory / "collateral.json").write_text(pki.collateral_json())
    (directory / "root.pem").write_bytes(pki.root_pem)
    ca, cert, key = tls_ca_and_server(directory)
    secrets = {}
    for service in ("face", "ocr"):
        build = directory / "builds" / service
        build.mkdir(parents=True)
        (build / "measurements.json").write_text(Measurements(
            service, "tflite", "gramine", identity(service).hex(), MR_SIGNER.hex(),
            PROD_ID[service], 2, False,
            ImageRef(f"{service}:1", None)).to_json())
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
