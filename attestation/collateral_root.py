"""Whether verification collateral chains to the root a verifier trusts.

Collateral (dcap-qvl's nine-key JSON: from a PCCS, Intel's PCS, or a synthetic test PKI)
carries three issuer chains: the PCK CRL's, the TCB info's and the QE identity's, each ending
in a root, plus the root's own CRL. dcap-qvl checks them against the trusted root while it
verifies a quote, and a mismatch surfaces there as e.g. "Failed to parse root CA CRL —
InvalidCrlSignatureForPublicKey", for every quote. :func:`collateral_root_problem` says the
same thing up front, in words: which chain ends where, and what to change. The classic case is
a synthetic PKI's collateral (``enclave-build secrets simulate-pki``) verified against Intel's
root: the answer names the PKI's ``root.pem``.

Standard library and ``cryptography`` only (this package also runs in enclaves).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

#: Intel's SGX Root CA (public; valid 2018-05-21 to 2049-12-31), the root dcap-qvl's
#: ``verify`` trusts (the test suite checks these are the bytes dcap-qvl carries).
INTEL_SGX_ROOT_CA_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""

_CHAINS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
#: The subject a synthetic test PKI's root carries (attestation.synthetic).
SYNTHETIC_MARK = "SYNTHETIC TEST"


def intel_root_der() -> bytes:
    return x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM).public_bytes(
        serialization.Encoding.DER
    )


def _describe(cert: x509.Certificate) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    return f"{cert.subject.rfc4514_string()} (SHA-256 {hashlib.sha256(der).hexdigest()[:16]}...)"


def _is_synthetic(cert: x509.Certificate) -> bool:
    return SYNTHETIC_MARK in cert.subject.rfc4514_string()


def _crl_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(value, list):
        return bytes(value)
    raise ValueError("neither hex text nor a list of bytes")


def _signature_ok(cert: x509.Certificate, data: bytes, raw: bytes) -> bool:
    """*raw* (r || s, 64 bytes, as collateral carries it) is *cert*'s ECDSA-SHA256 signature
    over *data*."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(raw) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=16)
def collateral_root_problem(collateral_json: str, root_der: bytes | None) -> str | None:
    """Why *collateral_json* does not chain to the trusted root (*root_der*; None: Intel's SGX
    root), in words, or None when its three issuer chains end in that root, each certificate is
    signed by the next, the root CA CRL and the PCK CRL are signed by their issuers, and the
    TCB info and QE identity by their signing certificate. The first thing wrong is said,
    ending with what to change when the two roots are a synthetic test PKI's and Intel's."""
    trusted = x509.load_der_x509_certificate(root_der if root_der is not None else intel_root_der())
    trusted_der = trusted.public_bytes(serialization.Encoding.DER)
    try:
        data = json.loads(collateral_json)
        chains = {name: x509.load_pem_x509_certificates(data[name].encode()) for name in _CHAINS}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"the collateral cannot be read ({type(exc).__name__}: {exc})"
    for name, chain in chains.items():
        top = chain[-1]
        if top.public_bytes(serialization.Encoding.DER) != trusted_der:
            return (
                f"its {name} ends in {_describe(top)}, not in the trusted root "
                f"{_describe(trusted)}" + _hint(top, trusted, root_der is None)
            )
        try:
            for child, parent in itertools.pairwise(chain):
                child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return f"its {name} does not verify: a certificate is not signed by the next one"
    try:
        root_crl = x509.load_der_x509_crl(_crl_bytes(data["root_ca_crl"]))
        pck_crl = x509.load_der_x509_crl(_crl_bytes(data["pck_crl"]))
    except (ValueError, KeyError, TypeError) as exc:
        return f"its CRLs cannot be read ({type(exc).__name__}: {exc})"
    if not root_crl.is_signature_valid(_issuer_key(trusted)):
        return "its root_ca_crl is not signed by the trusted root"
    if not pck_crl.is_signature_valid(_issuer_key(chains["pck_crl_issuer_chain"][0])):
        return "its pck_crl is not signed by the first certificate of pck_crl_issuer_chain"
    for body, signature, chain_name in (
        ("tcb_info", "tcb_info_signature", "tcb_info_issuer_chain"),
        ("qe_identity", "qe_identity_signature", "qe_identity_issuer_chain"),
    ):
        try:
            raw = bytes.fromhex(data[signature])
        except (ValueError, KeyError, TypeError):
            return f"its {signature} is not hex"
        if not _signature_ok(chains[chain_name][0], str(data[body]).encode(), raw):
            return f"its {body} is not signed by the first certificate of {chain_name}"
    return None


def _hint(
    collateral_root: x509.Certificate, trusted: x509.Certificate, trusting_intel: bool
) -> str:
    if trusting_intel and _is_synthetic(collateral_root):
        return (
            ": this collateral comes from a synthetic test PKI (`enclave-build secrets "
            "simulate-pki`), which only its own root.pem verifies: trust that root "
            "(`secrets config --root-ca PKI_DIR/root.pem`, [attestation] root_ca in "
            "secrets.toml)"
        )
    if _is_synthetic(trusted) and not _is_synthetic(collateral_root):
        return (
            ": this collateral is Intel's, but the trusted root is a synthetic test PKI's: "
            "trust Intel's root (no --root-ca; root_ca = \"intel\"), or use that PKI's "
            "collateral.json"
        )
    return ": use the root and the collateral of the same PKI"


def synthetic_root_beside(collateral: Path) -> Path | None:
    """The ``root.pem`` a synthetic PKI directory holds next to *collateral*, if any (what
    ``secrets simulate-pki DIR`` writes)."""
    candidate = Path(collateral).resolve().parent / "root.pem"
    try:
        cert = x509.load_pem_x509_certificate(candidate.read_bytes())
    except (OSError, ValueError):
        return None
    return candidate if _is_synthetic(cert) else None


__all__ = [
    "INTEL_SGX_ROOT_CA_PEM",
    "collateral_root_problem",
    "intel_root_der",
    "synthetic_root_beside",
]


def _issuer_key(cert: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    """*cert*'s public key as a CRL issuer's (a CRL's signature check refuses the key types
    that cannot sign, X25519/X448, with TypeError, which the callers' checks turn into
    "not signed")."""
    return cast(CertificateIssuerPublicKeyTypes, cert.public_key())
