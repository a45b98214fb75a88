"""How ``enclave-build dev`` talks to a model server that serves TLS (``[tls]``): the client
context of its readiness probe, metadata and ``--once`` requests, trusting what the issuer
allows, and what it tells the user a client trusts.

* ``issuer = "secret-server"``: the issuing CA the local secret server signs with
  (builder.dev.local_secrets.ensure_issuer_ca), as every TLS client of the service trusts it;
* ``issuer = "self"``: the certificate is verified once as ``enclave-build attest`` does (its
  quote binds its key, verifies against the synthetic PKI dev quotes with, and names this
  build's measurements), then pinned;
* ``issuer = "file"``: the certificate the spec ships (``[tls] cert``), pinned as the only
  trust anchor (a partial chain: whatever CA issued it).

The certificate names ``[tls] hosts``; dev connects to 127.0.0.1, so the name is checked only
when 127.0.0.1 is one of them (the chain or the pin is always checked).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from enclave_build.contract.names import ISSUER_CA_CERT, MEASUREMENTS_FILE

from ..errors import EnclaveBuildError
from ..spec import TLSSpec

LOOPBACK_NAMES = ("127.0.0.1",)


class ServingTrustError(EnclaveBuildError):
    """The model server's certificate is not what the build's issuer promises."""


def _context(check_hostname: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class ServingTrust:
    """The trust of dev's client for one TLS build. *issuer_dir*: the issuing CA's directory
    (``"secret-server"``); *output* and *pki*: the build and the synthetic PKI (``"self"``)."""

    tls: TLSSpec
    output: Path
    pki: Path
    issuer_dir: Path | None = None
    _pinned: ssl.SSLContext | None = field(default=None, init=False)
    #: curl's --pinnedpubkey of the verified certificate ("self"), once verified
    verified_pin: str | None = field(default=None, init=False)

    @property
    def check_hostname(self) -> bool:
        return any(host in LOOPBACK_NAMES for host in self.tls.hosts)

    @property
    def issuer_ca(self) -> Path | None:
        return self.issuer_dir / ISSUER_CA_CERT if self.issuer_dir is not None else None

    def context(self, port: int) -> ssl.SSLContext:
        """The client context for the model server at 127.0.0.1:*port* (for ``"self"`` it
        verifies the endpoint the first time: ServingTrustError if it does not verify)."""
        if self.tls.issuer == "secret-server":
            if self.issuer_ca is None or not self.issuer_ca.is_file():
                raise ServingTrustError(
                    f"no issuing CA to check the serving certificate with ({self.issuer_ca or 'none'}"
                    " not found): the secret server that issues it keeps issuer-ca.pem; put it "
                    "next to [secrets] ca"
                )
            context = _context(self.check_hostname)
            context.load_verify_locations(cafile=str(self.issuer_ca))
            return context
        if self.tls.issuer == "file":
            assert self.tls.cert is not None
            context = _context(self.check_hostname)
            context.load_verify_locations(cafile=str(self.tls.cert))
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            return context
        if self._pinned is None:
            self._pinned = self._verify_self(port)
        return self._pinned

    def _verify_self(self, port: int) -> ssl.SSLContext:
        from enclave_build.client import EndpointPolicy, EndpointRefused, verify_endpoint

        policy = EndpointPolicy.from_files(
            [self.output / MEASUREMENTS_FILE],
            collateral=self.pki / "collateral.json",
            allow_synthetic_root=self.pki / "root.pem",
        )
        try:
            enclave = verify_endpoint("127.0.0.1", port, policy)
        except EndpointRefused as exc:
            raise ServingTrustError(
                f"127.0.0.1:{port}: the model server's RA-TLS certificate does not verify: "
                f"{exc.reason}"
            ) from None
        self.verified_pin = enclave.curl_pin
        return enclave.ssl_context()

    def describe(self) -> str:
        """How dev trusts the endpoint (a progress line)."""
        if self.tls.issuer == "secret-server":
            return f"trusting the issuing CA {self.issuer_ca}"
        if self.tls.issuer == "file":
            return f"pinning the certificate the spec ships ({self.tls.cert})"
        return (
            "verifying the enclave's RA-TLS certificate as `enclave-build attest` does "
            f"(the SYNTHETIC PKI in {self.pki}), then pinning it"
        )

    def curl(self, rest_port: int) -> tuple[str, str]:
        """(base URL, curl options) of the REST endpoint for a user's curl: the certificate's
        first host resolved to 127.0.0.1 and the issuing CA ("secret-server"), the shipped
        certificate ("file"), or the verified key pin ("self")."""
        import shlex

        if self.tls.issuer == "self":
            pin = self.verified_pin or "sha256//VERIFIED_KEY_PIN"
            return f"https://127.0.0.1:{rest_port}", f"-k --pinnedpubkey {shlex.quote(pin)}"
        host = self.tls.hosts[0] if self.tls.hosts else "127.0.0.1"
        anchor = self.issuer_ca if self.tls.issuer == "secret-server" else self.tls.cert
        options = f"--cacert {shlex.quote(str(anchor))}"
        if host in LOOPBACK_NAMES:
            return f"https://127.0.0.1:{rest_port}", options
        url_host = f"[{host}]" if ":" in host else host
        resolve = f"{url_host}:{rest_port}:127.0.0.1"
        return f"https://{url_host}:{rest_port}", f"{options} --resolve {shlex.quote(resolve)}"

    def grpc_client_lines(self, grpc_address: str) -> list[str]:
        """Python lines making a tritonclient gRPC ``client`` that trusts the endpoint as dev
        does: the issuing CA or the shipped certificate as its root, the certificate's first
        host as the TLS name; for "self", verified first (enclave_build.client), then pinned."""
        if self.tls.issuer == "self":
            host, _, port = grpc_address.rpartition(":")
            return [
                "from enclave_build.client import EndpointPolicy, verify_endpoint",
                "",
                "policy = EndpointPolicy.from_files(",
                f"    [{str(self.output / MEASUREMENTS_FILE)!r}],",
                f"    collateral={str(self.pki / 'collateral.json')!r},",
                f"    allow_synthetic_root={str(self.pki / 'root.pem')!r},  # SIMULATION only",
                ")",
                f"enclave = verify_endpoint({host!r}, {int(port)}, policy)",
                "client = grpcclient.InferenceServerClient(",
                f"    {grpc_address!r}, **enclave.tritonclient_grpc_options()",
                ")",
            ]
        anchor = self.issuer_ca if self.tls.issuer == "secret-server" else self.tls.cert
        host = self.tls.hosts[0] if self.tls.hosts else "127.0.0.1"
        override = (
            ""
            if host in LOOPBACK_NAMES
            else f", channel_args=[('grpc.ssl_target_name_override', {host!r})]"
        )
        return [
            "client = grpcclient.InferenceServerClient(",
            f"    {grpc_address!r}, ssl=True, root_certificates={str(anchor)!r}{override}",
            ")",
        ]

    def client_lines(self, rest_port: int | None) -> list[str]:
        """What a client of the service trusts, with a curl line for the health endpoint."""
        host = self.tls.hosts[0] if self.tls.hosts else "127.0.0.1"
        url_host = f"[{host}]" if ":" in host else host
        resolve = f" --resolve {host}:{rest_port}:127.0.0.1" if host not in LOOPBACK_NAMES else ""
        url = f"https://{url_host}:{rest_port}/v2/health/ready"
        if self.tls.issuer == "secret-server":
            lines = [
                f"  TLS: the certificate is issued by the CA {self.issuer_ca}; clients trust it:",
                f"    curl --cacert {self.issuer_ca}{resolve} {url}",
                "    tritonclient: http InferenceServerClient(..., ssl=True, "
                f"ssl_options={{'ca_certs': {str(self.issuer_ca)!r}}}); grpc "
                f"InferenceServerClient(..., ssl=True, root_certificates={str(self.issuer_ca)!r})",
            ]
        elif self.tls.issuer == "file":
            lines = [
                f"  TLS: the certificate {self.tls.cert}; clients trust the CA that issued it:",
                f"    curl --cacert CA.pem{resolve} {url}",
            ]
        else:
            lines = [
                "  TLS: a self-signed RA-TLS certificate; clients verify its quote, then pin it "
                "(enclave-build attest 127.0.0.1:PORT --measurements "
                f"{self.output / MEASUREMENTS_FILE} --allow-synthetic-root {self.pki / 'root.pem'}"
                f" --collateral {self.pki / 'collateral.json'}; examples/verified_client.py)",
            ]
            if self.verified_pin is not None and rest_port is not None:
                lines.append(
                    "    dev verified the enclave's RA-TLS certificate (quote, SYNTHETIC PKI, "
                    f"this build's measurements); key pin {self.verified_pin}"
                )
                lines.append(
                    f"    curl -k --pinnedpubkey '{self.verified_pin}' "
                    f"https://127.0.0.1:{rest_port}/v2/health/ready"
                )
        return lines


__all__ = ["ServingTrust", "ServingTrustError"]
