"""Ask an enclave's model server only after verifying it: its certificate must carry a quote
that binds the certificate's key, verifies, and names one of the expected builds. Then the
request goes over a connection pinned to exactly that certificate; otherwise nothing is sent.

    python examples/verified_client.py HOST:PORT --measurements out/measurements.json \\
        --collateral collateral.json [--grpc] [--model faces]

In simulation (`enclave-build run out --simulate --pki pki/`) add
``--allow-synthetic-root pki/root.pem`` (a SYNTHETIC test root: it proves nothing about real
hardware). An endpoint with mutual TLS (``[tls] client_ca``) needs ``--cert client.crt --key
client.key``. Exit status: 0 answered, 1 not verified (nothing sent), the connection refused or
the request failed (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys

from enclave_build.client import EndpointPolicy, EndpointRefused, verify_endpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", metavar="HOST:PORT")
    parser.add_argument("--measurements", action="append", required=True, metavar="M.json")
    parser.add_argument("--collateral", metavar="FILE")
    parser.add_argument("--pccs", metavar="URL")
    parser.add_argument("--allow-synthetic-root", metavar="ROOT.pem")
    parser.add_argument("--grpc", action="store_true", help="the endpoint is the gRPC port")
    parser.add_argument("--model", help="ask this model's readiness (default: the server's)")
    parser.add_argument("--cert", metavar="CLIENT.crt", help="client certificate (mutual TLS)")
    parser.add_argument("--key", metavar="CLIENT.key", help="its private key (PEM)")
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    host, _, port = args.endpoint.rpartition(":")
    host = host.strip("[]")
    if args.allow_synthetic_root:
        print(
            f"warning: trusting the SYNTHETIC test root {args.allow_synthetic_root}: "
            "simulation only",
            file=sys.stderr,
        )
    policy = EndpointPolicy.from_files(
        args.measurements,
        collateral=args.collateral,
        pccs_url=args.pccs,
        allow_synthetic_root=args.allow_synthetic_root,
    )
    try:
        enclave = verify_endpoint(host, int(port), policy)
    except EndpointRefused as exc:
        print(f"error: {args.endpoint} is not verified, not sending: {exc.reason}", file=sys.stderr)
        return 1
    print(
        f"verified {args.endpoint}: build {enclave.build.service!r} ({enclave.build_source}), "
        f"mr_enclave {enclave.quote.mr_enclave}, key pin {enclave.curl_pin}"
    )
    mtls_hint = "" if args.cert else " (an endpoint with mutual TLS needs --cert and --key)"
    try:
        context = enclave.ssl_context(args.cert, args.key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"error: --cert {args.cert} / --key {args.key}: {exc}", file=sys.stderr)
        return 1
    try:
        protocol = negotiated_protocol(host, int(port), context, enclave.server_name)
    except (OSError, ssl.SSLError) as exc:
        print(
            f"error: {args.endpoint}: the TLS connection failed: {exc}{mtls_hint}", file=sys.stderr
        )
        return 1
    if protocol == "h2" and not args.grpc:
        print(f"error: {args.endpoint} is a gRPC endpoint (HTTP/2): add --grpc", file=sys.stderr)
        return 1
    if protocol != "h2" and args.grpc:
        print(
            f"error: {args.endpoint} does not speak gRPC (no HTTP/2): without --grpc for a REST "
            "port",
            file=sys.stderr,
        )
        return 1
    try:
        name, ready = ask(args, enclave)
    except Exception as exc:  # noqa: BLE001 - one line, whatever the client library raised
        detail = str(exc).strip() or type(exc).__name__
        print(f"error: {args.endpoint}: the request failed: {detail}{mtls_hint}", file=sys.stderr)
        return 1
    print(f"server {name}: {'model ' + args.model if args.model else 'server'} ready: {ready}")
    return 0 if ready else 1


def negotiated_protocol(host: str, port: int, context: ssl.SSLContext, name: str) -> str | None:
    """The application protocol the endpoint picks (ALPN) when offered HTTP/2 and HTTP/1.1:
    "h2" on a gRPC port. Nothing is sent after the handshake."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.selected_alpn_protocol()


def ask(args: argparse.Namespace, enclave) -> tuple[str, bool]:
    """The server's name and readiness (of --model, or of the server), over the pinned
    connection."""
    if args.grpc:
        import tritonclient.grpc as grpc_client

        triton = grpc_client.InferenceServerClient(
            args.endpoint, **enclave.tritonclient_grpc_options(args.cert, args.key)
        )
        name = triton.get_server_metadata().name
    else:
        import tritonclient.http as http_client

        triton = http_client.InferenceServerClient(
            args.endpoint, **enclave.tritonclient_http_options(args.cert, args.key)
        )
        name = triton.get_server_metadata()["name"]
    ready = triton.is_model_ready(args.model) if args.model else triton.is_server_ready()
    return name, bool(ready)


if __name__ == "__main__":
    sys.exit(main())
