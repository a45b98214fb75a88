"""Where this process gets its SGX quotes: the Gramine quote device, or a simulated quoter.

A *quote source* is a callable ``report_data (64 bytes) -> quote``. :func:`discover` picks one:

* the Gramine quote device (SGX): ``/dev/attestation/attestation_type`` reads ``dcap``; the
  report data is written to ``/dev/attestation/user_report_data`` and the quote read from
  ``/dev/attestation/quote`` (one at a time: the device holds one report data);
* otherwise (``gramine-direct``, a plain process) a SIMULATED quoter named by
  ``ENCLAVE_BUILD_SIMULATED_QUOTER=HOST:PORT`` (see :mod:`attestation.simulated_quoter`), with a
  loud warning; only a peer that trusts the synthetic root accepts its quotes;
* neither: :class:`QuoteSourceError`. A real quote device always wins over the variable.

The one implementation: the secret server's own RA-TLS identity
(:func:`attestation.ratls.server_certificate`) and the model server's in-enclave key fetch
(:mod:`model_server.keys`, which names its purpose in the errors) both use it. Standard library
and :mod:`attestation.wire` only, so it runs inside an enclave image as is.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from enclave_build.contract.names import SIMULATED_QUOTER_ENV

from . import wire
from .errors import AttestationError

ATTESTATION_ROOT = Path("/dev/attestation")

QuoteSource = Callable[[bytes], bytes]  # report_data (64 bytes) -> quote


class QuoteSourceError(AttestationError, RuntimeError):
    """No quote can be had, or the source failed; the message says which and why."""


def device_source(root: Path = ATTESTATION_ROOT) -> QuoteSource | None:
    """Gramine's quote device under *root*, or None if this is not an SGX enclave with DCAP."""
    try:
        kind = (root / "attestation_type").read_text().strip()
    except OSError:
        return None
    if kind != "dcap":
        return None
    lock = threading.Lock()

    def make_quote(report_data: bytes) -> bytes:
        if len(report_data) != wire.REPORT_DATA_SIZE:
            raise QuoteSourceError(f"report data must be {wire.REPORT_DATA_SIZE} bytes")
        with lock:
            try:
                with open(root / "user_report_data", "wb", buffering=0) as out:
                    out.write(report_data)
                with open(root / "quote", "rb") as src:
                    quote = src.read(wire.MAX_QUOTE + 1)
            except OSError as exc:
                raise QuoteSourceError(
                    f"the Gramine quote device ({root}) failed: {exc.strerror or exc}"
                ) from None
        if not quote or len(quote) > wire.MAX_QUOTE:
            raise QuoteSourceError(
                f"the Gramine quote device ({root}) returned a {len(quote)}-byte quote"
            )
        return quote

    return make_quote


def simulated_source(address: str, timeout: float = 10.0) -> QuoteSource:
    """The simulated quoter at HOST:PORT (tests and simulation only)."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise QuoteSourceError(f"{SIMULATED_QUOTER_ENV} {address!r} is not HOST:PORT")

    def make_quote(report_data: bytes) -> bytes:
        where = f"simulated quoter {host}:{port} ({SIMULATED_QUOTER_ENV})"
        try:
            return wire.request_quote(host, int(port), report_data, timeout)
        except wire.QuoteAnswerError as exc:
            raise QuoteSourceError(f"{where} {exc}") from None
        except (OSError, ValueError) as exc:
            raise QuoteSourceError(f"{where}: {exc}") from None

    return make_quote


def discover(
    timeout: float = 10.0,
    *,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    purpose: str = "make an RA-TLS identity",
) -> QuoteSource:
    """The quote source of this process (see the module docstring). *root* is where Gramine's
    attestation pseudo-files are, *environ* the environment to read (this process's by
    default); *purpose* says in the error what the quote was for."""
    root = ATTESTATION_ROOT if root is None else root
    env = os.environ if environ is None else environ
    device = device_source(root)
    simulated = env.get(SIMULATED_QUOTER_ENV)
    if device is not None:
        if simulated:
            _warn(
                f"warning: {SIMULATED_QUOTER_ENV} is set but this process has a real quote "
                f"device ({root}/quote): ignoring the simulated quoter"
            )
        return device
    if simulated:
        _warn(
            "WARNING: SIMULATED ATTESTATION: quotes come from the simulated quoter at "
            f"{simulated} ({SIMULATED_QUOTER_ENV}), signed by a synthetic test PKI. This "
            "process is NOT running in an enclave; what it is trusted with (keys it receives) "
            "is only as safe as this machine."
        )
        return simulated_source(simulated, timeout)
    where = (
        f"{root} has no DCAP quote device (gramine-direct provides only keys/)"
        if root.exists()
        else f"{root} does not exist (not running under Gramine)"
    )
    raise QuoteSourceError(
        f"cannot {purpose}: {where}, and {SIMULATED_QUOTER_ENV} is not set. Run in an SGX "
        "enclave, or for a simulation start a simulated quoter and set "
        f"{SIMULATED_QUOTER_ENV}=HOST:PORT (enclave-build run --simulate does both)."
    )


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
