"""Start enclave-build's secret server inside its enclave image (framework ``secret-server``).

Shipped into the image as the top-level module ``enclave_secret_server`` and run as
``python3.11 -m enclave_secret_server --config /enclave/secret-server/secrets.toml``. It only
locates the configuration (under ``ENCLAVE_BUILD_ROOT`` in a plain-process simulation, where the
image is unpacked in a host directory) and calls :func:`attestation.server.serve`; everything
else (the RA-TLS identity, uploads, policy) is the server's. Imports nothing of the builder.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT_ENV = "ENCLAVE_BUILD_ROOT"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave_secret_server",
                                     description="enclave-build's secret server in an enclave")
    parser.add_argument("--config", required=True, help="secrets.toml (an image path)")
    args = parser.parse_args(argv)
    path = args.config
    root = os.environ.get(ROOT_ENV)
    if root:
        path = os.path.join(root, path.lstrip("/"))

    from attestation.config import ConfigError
    from attestation.policy import PolicyError
    from attestation.server import ServerError, serve

    try:
        serve(path, ready=lambda address: print(
            f"secret server: serving on {address[0]}:{address[1]}", file=sys.stderr, flush=True))
    except (ConfigError, PolicyError, ServerError, OSError, ValueError, RuntimeError) as exc:
        print(f"secret server: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
