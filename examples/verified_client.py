"""Ask an enclave's model server only after verifying it: its certificate must carry a quote
that binds the certificate's key, verifies, and names one of the expected builds. Then the
request goes over a connection pinned to exactly that certificate; otherwise nothing is sent.

    python examples/verified_client.py HOST:PORT --measurements out/measurements.json \\
        --collateral collateral.json [--grpc] [--model faces]

In simulation (`enclave-build run out --simulate --pki pki/`) add
``--allow-synthetic-root pki/root.pem`` (a SYNTHETIC test root: it proves nothing about real
hardware). Exit status: 0 answered, 1 not verified (nothing sent) or the request failed.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
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
    if args.grpc:
        import tritonclient.grpc as client

        triton = client.InferenceServerClient(args.endpoint, **enclave.tritonclient_grpc_options())
        name = triton.get_server_metadata().name
        ready = triton.is_model_ready(args.model) if args.model else triton.is_server_ready()
    else:
        import tritonclient.http as client

        triton = client.InferenceServerClient(args.endpoint, **enclave.tritonclient_http_options())
        name = triton.get_server_metadata()["name"]
        ready = triton.is_model_ready(args.model) if args.model else triton.is_server_ready()
    print(f"server {name}: {'model ' + args.model if args.model else 'server'} ready: {ready}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
