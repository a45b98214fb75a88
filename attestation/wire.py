"""The wire protocol of secret provisioning, shared by the secret server, the host-side client
and the in-enclave key fetcher (this module ships into enclave images: standard library only).

After the TLS handshake (the enclave presents a self-signed RA-TLS certificate):

* client -> server: :data:`REQUEST` (35 bytes, Gramine's ``secret_prov`` request);
* server -> client, released: :data:`RESPONSE` (37 bytes), the secret's length as a 4-byte
  big-endian integer, the secret; then TLS close_notify.
* server -> client, refused (an enclave-build extension; Gramine's server simply closes):
  :data:`REFUSAL` (37 bytes, so a client reading a response header reads exactly it), a 4-byte
  big-endian length and the UTF-8 reason; then close_notify. Gramine's own client treats it as
  the malformed response it is and fails, as it would on a bare close.

Which secret is wanted is not in the request: the server chooses from the attested identity and
the TLS server name (SNI), which enclave-build's in-enclave client sets to the key name.

A second request type (an enclave-build extension, on a connection of its own whose TLS server
name is :data:`CERT_SERVER_NAME`, so Gramine's clients and servers never meet it) asks for the
serving certificate of the enclave's endpoint:

* client -> server: :data:`CERT_REQUEST` (35 bytes, the length of :data:`REQUEST`, so a server
  reading a request reads exactly one of them), a 4-byte big-endian length and a DER PKCS#10
  certificate signing request (at most :data:`MAX_CSR` bytes). The CSR's public key must be the
  key of the RA-TLS certificate the client presented on this connection: the quote binds it.
* server -> client: :data:`RESPONSE` with the PEM certificate chain (issued certificate first,
  then the issuing CA) as the secret, or :data:`REFUSAL` with the reason.
"""

from __future__ import annotations

import socket
import time

from .errors import AttestationError

REQUEST = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0"
RESPONSE = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0"
REFUSAL = b"SECRET_PROVISION_RA_TLS_REJECTED_V1:\0"
CERT_REQUEST = b"ENCLAVE_BUILD_SERVING_CERT_CSR_V1\0\0"
#: The TLS server name (SNI) an enclave sends on the connection that asks for its certificate.
CERT_SERVER_NAME = "enclave-build-serving-certificate"
MAX_CSR = 16 * 1024  # a CSR's announced length above this is a protocol error
LENGTH_BYTES = 4
HEADER_LEN = len(RESPONSE) + LENGTH_BYTES  # what a client reads first, either way
MAX_SECRET = 64 * 1024  # larger lengths are a protocol error
MAX_REASON = 1024  # a refusal's reason is cut to this many bytes
WRAP_KEY_SIZE = 16  # a key for an encrypted mount: 16 raw bytes

#: The simulated quoter's protocol (simulation only): 64 bytes of report data in; a 4-byte
#: big-endian length and the quote out.
REPORT_DATA_SIZE = 64
MAX_QUOTE = 64 * 1024

assert len(REQUEST) == 35 and len(RESPONSE) == 37 and len(REFUSAL) == len(RESPONSE)
assert len(CERT_REQUEST) == len(REQUEST)


def cert_request(csr_der: bytes) -> bytes:
    """The bytes an enclave sends to ask for a serving certificate for *csr_der*."""
    if not 0 < len(csr_der) <= MAX_CSR:
        raise ValueError(f"a CSR is 1..{MAX_CSR} bytes, not {len(csr_der)}")
    return CERT_REQUEST + len(csr_der).to_bytes(LENGTH_BYTES, "big") + csr_der


def refusal(reason: str) -> bytes:
    """The bytes a server sends to refuse, reason included (cut to :data:`MAX_REASON`)."""
    text = reason.encode("utf-8", "replace")[:MAX_REASON]
    return REFUSAL + len(text).to_bytes(LENGTH_BYTES, "big") + text


def parse_header(header: bytes) -> tuple[bool, int]:
    """(released?, length) of a :data:`HEADER_LEN`-byte answer header; ValueError otherwise."""
    if len(header) != HEADER_LEN:
        raise ValueError(f"answer header is {len(header)} bytes, not {HEADER_LEN}")
    magic, length = header[: len(RESPONSE)], int.from_bytes(header[len(RESPONSE) :], "big")
    if magic == RESPONSE:
        if not 0 < length <= MAX_SECRET:
            raise ValueError(f"announced secret length {length} is outside 1..{MAX_SECRET}")
        return True, length
    if magic == REFUSAL:
        if length > MAX_REASON:
            raise ValueError(f"announced refusal reason length {length} exceeds {MAX_REASON}")
        return False, length
    raise ValueError("not a secret-provisioning answer")


def recv_exact(sock, size: int, deadline: float | None = None) -> bytes:
    """Up to *size* bytes from a socket (fewer only when the peer closed first). With a
    *deadline* (time.monotonic()), all of them by then, however slowly the peer sends them
    (a socket timeout bounds each read only): socket.timeout otherwise."""
    data = b""
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(data)} of {size} bytes by the deadline")
            sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class QuoteAnswerError(AttestationError, ValueError):
    """The simulated quoter's answer is not a well-formed quote."""


def request_quote(host: str, port: int, report_data: bytes, timeout: float) -> bytes:
    """Ask the simulated quoter at HOST:PORT for a quote over *report_data*. Raises OSError
    (connection) or :class:`QuoteAnswerError` (the answer)."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(report_data)
        header = recv_exact(sock, LENGTH_BYTES)
        if len(header) != LENGTH_BYTES:
            raise QuoteAnswerError("closed the connection without a quote")
        size = int.from_bytes(header, "big")
        if not 0 < size <= MAX_QUOTE:
            raise QuoteAnswerError(f"announced a {size}-byte quote")
        quote = recv_exact(sock, size)
    if len(quote) != size:
        raise QuoteAnswerError(f"sent a truncated quote ({len(quote)} of {size} bytes)")
    return quote
