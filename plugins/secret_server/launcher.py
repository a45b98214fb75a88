"""Start enclave-build's secret server inside its enclave image (framework ``secret-server``).

Shipped into the image as the top-level module ``enclave_secret_server`` and run as
``python3.11 -m enclave_secret_server --config /enclave/secret-server/secrets.toml``. It only
locates the configuration (under ``ENCLAVE_BUILD_ROOT`` in a plain-process simulation, where the
image is unpacked in a host directory) and calls :func:`attestation.server.serve`; everything
else (the RA-TLS identity, uploads, policy) is the server's. Imports nothing of the builder.

In a plain-process simulation (``enclave-build run --simulate`` without ``--listen-all``) the
runner asks for loopback only (``ENCLAVE_BUILD_SIMULATION_LISTEN``): the server then reads a
copy of its configuration, next to it in the unpacked image, whose wildcard ``listen`` hosts
(``[server]``, ``[grsecret]``) are that address, exactly as the model server does. Inside an
enclave (no ``ENCLAVE_BUILD_ROOT``) the measured configuration is used as it is.
"""

from __future__ import annotations

import argparse
import os
import sys

from enclave_build.contract.names import LISTEN_ENV, ROOT_ENV
from enclave_build.contract.secrets_config import restrict_listen

SIMULATION_CONFIG = ".simulation-secrets.toml"


class SimulationConfigError(ValueError):
    pass


def simulation_config(path: str) -> str:
    """The configuration to serve: *path* itself, or in a plain-process simulation asking for
    one address (LISTEN_ENV) a copy beside it whose wildcard listen hosts are that address. The
    copy must parse to the original with only those hosts changed, else the server refuses to
    start (never a silent fall-back to all addresses)."""
    override = os.environ.get(LISTEN_ENV) if os.environ.get(ROOT_ENV) else None
    if not override:
        return path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        rewritten = restrict_listen(text, override)
    except ValueError:
        raise SimulationConfigError(
            f"{path}: cannot restrict its listen addresses to {override} for the simulation "
            "(run with --listen-all to serve on the configured addresses)"
        ) from None
    if rewritten == text:
        return path
    copy = os.path.join(os.path.dirname(path), SIMULATION_CONFIG)
    with open(copy, "w", encoding="utf-8") as handle:
        handle.write(rewritten)
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="enclave_secret_server", description="enclave-build's secret server in an enclave"
    )
    parser.add_argument("--config", required=True, help="secrets.toml (an image path)")
    args = parser.parse_args(argv)
    path = args.config
    root = os.environ.get(ROOT_ENV)
    if root:
        path = os.path.join(root, path.lstrip("/"))

    from enclave_build.attestation.config import ConfigError
    from enclave_build.attestation.policy import PolicyError
    from enclave_build.attestation.server import ServerError, serve

    try:
        path = simulation_config(path)
        serve(
            path,
            ready=lambda address: print(
                f"secret server: serving on {address[0]}:{address[1]}", file=sys.stderr, flush=True
            ),
        )
    except (ConfigError, PolicyError, ServerError, OSError, ValueError, RuntimeError) as exc:
        print(f"secret server: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
