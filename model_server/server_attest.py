"""Verify a secret server that runs in an enclave of its own, before asking it for a key.

Used by :mod:`model_server.keys` when the configuration has ``keys.server_identity`` (the
model's spec named ``[secrets] server_measurements`` instead of ``ca``; see
builder/server_trust.py). Such a server (``framework = "secret-server"``, ``[server] identity =
"ratls"``) presents a fresh self-signed TCG DICE RA-TLS certificate. The TLS handshake accepts
it (no CA can vouch for it) and proves the server holds its private key; then, before anything
is sent on the connection, :meth:`ServerVerifier.check`:

1. extracts the SGX evidence and checks that the quote binds the certificate's public key
   (:func:`attestation.ratls.extract_evidence`);
2. verifies the quote with dcap-qvl against the configured root (Intel's unless a PEM root was
   built in: a synthetic test root, for simulation only, announced loudly) and collateral (a
   trusted file, or fetched from a PCCS by :class:`attestation.collateral.PccsCollateral` into a
   private per-process cache), applying the TCB-status policy and the attribute checks
   (:func:`attestation.verify.verify_quote`; DEBUG enclaves are always refused);
3. compares the identity with the expected builds: pin ``"mr_enclave"`` — MRENCLAVE, MRSIGNER,
   ISV_PROD_ID, ISV_SVN and DEBUG equal to one build; pin ``"mr_signer"`` — MRSIGNER and
   ISV_PROD_ID equal, ISV_SVN at least the build's (a later build of the server, e.g. one that
   serves one more model, qualifies; a rollback does not).

Any failure is a :class:`ServerRefused` with the reason (for pin mismatches every differing
field with both values); the caller then fails the key fetch (exit 3) without having sent the
request. The server's network address is not checked: it is identified by its quote.

The expected identity and the verification inputs are part of the (trusted, measured)
configuration, so which secret server a model enclave trusts is part of its MRENCLAVE.

Only the ``attestation`` modules listed above, ``cryptography`` (40 or later: the embedded PCK
chain check uses ``Certificate.verify_directly_issued_by``) and ``dcap-qvl`` are imported, the
latter two only when a server is verified (so CA-mode images need neither).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from enclave_build.contract.identity import EnclaveIdentity

from .config import ServerTrustConfig, host_path
from .errors import ModelServerError


class ServerRefused(ModelServerError):
    """The secret server is not (provably) one the configuration trusts."""


@dataclass(frozen=True)
class AttestedServer:
    """What the verified quote of the secret server says."""

    evidence_format: str
    status: str
    identity: EnclaveIdentity

    @property
    def mr_enclave(self) -> str | None:
        return self.identity.mr_enclave

    @property
    def mr_signer(self) -> str:
        return self.identity.mr_signer


def differences(build: EnclaveIdentity, pin: str, quote) -> list[str]:
    """How a verified quote (mr_enclave, mr_signer, isv_prod_id, isv_svn, debug) differs from
    *build* under *pin*; empty when it matches."""
    found = []
    if pin == "mr_enclave" and quote.mr_enclave != build.mr_enclave:
        found.append(f"mr_enclave expected {build.mr_enclave}, server has {quote.mr_enclave}")
    if quote.mr_signer != build.mr_signer:
        found.append(f"mr_signer expected {build.mr_signer}, server has {quote.mr_signer}")
    if quote.isv_prod_id != build.isv_prod_id:
        found.append(f"isv_prod_id expected {build.isv_prod_id}, server has {quote.isv_prod_id}")
    if pin == "mr_enclave" and quote.isv_svn != build.isv_svn:
        found.append(f"isv_svn expected {build.isv_svn}, server has {quote.isv_svn}")
    if pin == "mr_signer" and quote.isv_svn < build.isv_svn:
        found.append(f"isv_svn expected at least {build.isv_svn}, server has {quote.isv_svn}")
    if quote.debug != build.debug:
        found.append(
            f"debug expected {str(build.debug).lower()}, server has {str(quote.debug).lower()}"
        )
    return found


class ServerVerifier:
    """Checks secret-server certificates against one :class:`ServerTrustConfig` (one per
    process: the collateral it fetched is reused for every key)."""

    def __init__(self, trust: ServerTrustConfig, timeout: float = 10.0):
        self.trust = trust
        self.timeout = timeout
        try:
            from cryptography import __version__ as crypto_version
            from cryptography import x509

            from enclave_build.attestation import collateral as _collateral
            from enclave_build.attestation import verify as _verify
        except ImportError as exc:
            raise ServerRefused(
                f"cannot verify the secret server's quote: {exc} (the image "
                "needs dcap-qvl next to the model server's runtimes)"
            ) from None
        if not hasattr(x509.Certificate, "verify_directly_issued_by"):
            raise ServerRefused(
                f"cannot verify the secret server's quote: the image's "
                f"cryptography {crypto_version} lacks "
                "Certificate.verify_directly_issued_by (cryptography 40 or "
                "later is needed; Debian 12's python3-cryptography is 38): "
                "build on a base whose system Python has a newer one"
            )
        self._verify = _verify
        self._collateral_mod = _collateral
        self.root_der: bytes | None = None
        if trust.root_ca is not None:
            try:
                self.root_der = _verify.load_root_der(host_path(trust.root_ca))
            except (OSError, ValueError) as exc:
                raise ServerRefused(
                    f"cannot load the secret server's root CA {trust.root_ca}: {exc}"
                ) from None
        self.collateral: _collateral.CollateralSource
        try:
            if trust.collateral is not None:
                self.collateral = _collateral.FileCollateral(host_path(trust.collateral))
            else:
                assert trust.pccs_url is not None
                # In memory only: nothing the host left on disk is read back, and nothing is
                # left in /tmp (which, as a plain process, is the host's).
                self.collateral = _collateral.PccsCollateral(
                    trust.pccs_url, timeout=timeout, disk=False
                )
        except _verify.VerifierConfigError as exc:
            raise ServerRefused(str(exc)) from None
        self.policy = _verify.TcbPolicy(frozenset(trust.allowed_tcb_statuses))

    def announce(self) -> None:
        """Say on stderr what this process will trust beyond the strict default (loudly: a
        non-Intel root, TCB statuses other than UpToDate)."""
        if self.trust.root_ca is not None:
            print(
                f"WARNING: the secret server is verified against the root CA "
                f"{self.trust.root_ca} built into this image, NOT Intel's SGX root: a "
                "synthetic test PKI is for simulation only; a production build uses "
                'server_root_ca = "intel".',
                file=sys.stderr,
                flush=True,
            )
        relaxed = sorted(set(self.trust.allowed_tcb_statuses) - {"UpToDate"})
        if relaxed:
            print(
                f"WARNING: the secret server is accepted with TCB status "
                f"{', '.join(relaxed)} (server_allowed_tcb_statuses of this build): its "
                "platform may have known, unpatched vulnerabilities, and the keys it hands "
                "out are only as safe as it is.",
                file=sys.stderr,
                flush=True,
            )

    def check(self, certificate_der: bytes, endpoint: str) -> AttestedServer:
        """Verify the secret server's certificate; :class:`ServerRefused` with the reason."""
        from cryptography import x509

        from enclave_build.attestation.ratls import EvidenceError, extract_evidence

        verify, collateral_mod = self._verify, self._collateral_mod
        try:
            evidence = extract_evidence(x509.load_der_x509_certificate(certificate_der))
        except EvidenceError as exc:
            hint = (
                " — it is not a secret server running in an enclave (an ordinary "
                "CA-signed certificate needs [secrets] ca instead of server_measurements)"
                if "no SGX evidence" in str(exc)
                else ""
            )
            raise ServerRefused(f"{exc}{hint}") from None
        except ValueError as exc:
            raise ServerRefused(f"its certificate does not parse: {exc}") from None
        try:
            text = self.collateral.for_quote(evidence.quote, timeout=self.timeout)
            quote = verify.verify_quote(
                evidence.quote, text, root_ca_der=self.root_der, policy=self.policy
            )
        except verify.QuoteRejected as exc:
            raise ServerRefused(f"its quote does not verify: {exc}") from None
        except collateral_mod.CollateralError as exc:
            raise ServerRefused(f"no collateral to verify its quote: {exc}") from None
        found: list[str] = []
        for number, build in enumerate(self.trust.builds):
            diff = differences(build, self.trust.pin, quote)
            if not diff:
                return AttestedServer(evidence.format, quote.status, quote.identity)
            found.append(f"build {number}: " + ", ".join(diff))
        raise ServerRefused(
            f"{endpoint} runs enclave {quote.mr_enclave}, which is not a "
            f"secret server this enclave trusts (pin {self.trust.pin}; " + "; ".join(found) + ")"
        )


__all__ = ["AttestedServer", "ServerRefused", "ServerVerifier", "differences"]
