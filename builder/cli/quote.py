"""``enclave-build quote``: verify an SGX DCAP quote against collateral and a TCB policy."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import EnclaveBuildError
from .output import errors, print_json, text


def _tcb_policy(allow_status: tuple[str, ...], allow_debug: bool):
    from enclave_build.attestation.verify import TcbPolicy, VerifierConfigError

    try:
        return TcbPolicy(frozenset({"UpToDate", *allow_status}), allow_debug=allow_debug)
    except VerifierConfigError as exc:
        raise EnclaveBuildError(str(exc)) from None


def _root_der(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from enclave_build.attestation.verify import load_root_der

    root = load_root_der(path)
    click.echo(
        f"warning: trusting the root CA in {path} instead of Intel's: quotes it vouches "
        "for are not backed by Intel",
        err=True,
    )
    return root


@click.group(
    epilog="""\b
Example:
  enclave-build quote verify quote.bin --collateral collateral.json --json
"""
)
def quote() -> None:
    """SGX DCAP quotes: verify one against collateral, a root CA and a TCB policy."""


@quote.command(
    "verify",
    epilog="""\b
Examples:
  enclave-build quote verify quote.bin --collateral collateral.json
  enclave-build quote verify quote.bin --collateral pki/collateral.json --root-ca pki/root.pem \\
      --at 2025-01-01T00:00:00Z --json
\b
JSON: {verified, status, advisory_ids, mr_enclave, mr_signer, isv_prod_id, isv_svn, debug,
attributes, report_data}; refused: {verified: false, reason} and exit 1.
""",
)
@click.argument("quote_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--collateral",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Collateral JSON (dcap-qvl's nine keys).",
)
@click.option(
    "--root-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust this root (PEM/DER) instead of Intel's SGX root CA (tests only).",
)
@click.option("--at", "at", metavar="ISO-8601", help="Verify as of this time (default: now).")
@click.option(
    "--allow-tcb-status",
    multiple=True,
    metavar="STATUS",
    help="Accept this TCB status besides UpToDate (repeatable; prints a warning).",
)
@click.option(
    "--allow-debug",
    is_flag=True,
    help="Accept DEBUG enclaves (refused: the verifier cannot honour it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def quote_verify(
    quote_file: Path,
    collateral: Path,
    root_ca: Path | None,
    at: str | None,
    allow_tcb_status: tuple[str, ...],
    allow_debug: bool,
    as_json: bool,
) -> None:
    """Verify QUOTE_FILE; exit 1 when it is refused."""
    import datetime as dt

    from enclave_build.attestation.verify import QuoteRejected, load_collateral, verify_quote

    with errors():
        policy = _tcb_policy(allow_tcb_status, allow_debug)
        for status in sorted(set(allow_tcb_status) - {"UpToDate"}):
            click.echo(f"warning: accepting TCB status {status}", err=True)
        moment = None
        if at:
            try:
                moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                raise EnclaveBuildError(f"--at {at!r}: not an ISO-8601 time") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
        try:
            result = verify_quote(
                quote_file.read_bytes(),
                load_collateral(collateral),
                root_ca_der=_root_der(root_ca),
                now=moment,
                policy=policy,
            )
        except QuoteRejected as exc:
            if as_json:
                print_json({"verified": False, "reason": str(exc)})
            click.echo(f"error: quote refused: {exc}", err=True)
            sys.exit(1)
    if as_json:
        print_json({"verified": True, **result.to_json()})
        return
    for key, value in result.to_json().items():
        if key != "report_data":
            click.echo(f"{key:<14} {text(value)}")
