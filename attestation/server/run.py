"""Running the secret server as a program (``enclave-build secrets serve``, the secret-server
enclave's launcher): start-up warnings, signals, and the supervising loop."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from enclave_build.contract.secrets_config import SecretsConfig

from ..config import load_config
from ..occlum_ra import RaConfig
from ..verify import load_root_der
from .secret_server import SecretServer


def startup_warnings(config: SecretsConfig) -> list[str]:
    """What an operator must know before this configuration serves anything."""
    warnings = []
    root = config.attestation.root_ca
    if root is not None:
        der = load_root_der(root)
        assert der is not None  # *root* is a path
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        kind = "SYNTHETIC TEST root" if "SYNTHETIC TEST" in subject else "non-Intel root"
        warnings.append(
            f"WARNING: trusting a {kind} CA ({subject}) from {root}: quotes it "
            "vouches for are NOT backed by Intel; for tests and simulation only"
        )
    if config.attestation.collateral is not None:
        problem = _collateral_problem(config)
        if problem:
            warnings.append(
                f"WARNING: [attestation] collateral {config.attestation.collateral} "
                f"does not chain to root_ca: {problem}; every quote will be "
                "refused until it does"
            )
    for relaxed in config.attestation.tcb.relaxations():
        warnings.append(f"WARNING: {relaxed}: enclaves on such platforms receive secrets")
    if config.server.max_tls == "1.3":
        warnings.append(
            'note: TLS 1.3 enabled; set [server] max_tls = "1.2" for Gramine 1.8 '
            "clients (mbedTLS 3.6.0 cannot handle TLS 1.3 session tickets)"
        )
    if config.grsecret is not None:
        warnings.extend(_grsecret_warnings(config))
    return warnings


def _collateral_problem(config: SecretsConfig) -> str | None:
    from ..collateral_root import collateral_root_problem

    if config.attestation.collateral is None:
        return None
    try:
        text = Path(config.attestation.collateral).read_text(encoding="utf-8")
        return collateral_root_problem(text, load_root_der(config.attestation.root_ca))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"it cannot be read ({exc})"


def _grsecret_warnings(config: SecretsConfig) -> list[str]:
    warnings = []
    grpc = config.grsecret
    assert grpc is not None  # called with [grsecret] only
    if grpc.client_ra_config is not None and RaConfig.load(grpc.client_ra_config).checks_nothing:
        warnings.append(
            f'note: {grpc.client_ra_config}: every verify_* flag is "off"; '
            "GrSecret clients are filtered by the [[secrets]] policy alone"
        )
    for rule in config.secrets:
        if rule.file is None:
            continue
        size = rule.file.stat().st_size if rule.encoding == "raw" else 48  # hex-dashes text
        if size % 3:
            warnings.append(
                f"note: secret {rule.name!r} is {size} bytes, not a multiple of 3: Occlum's "
                f"GrSecret client appends {3 - size % 3} NUL byte(s) when it decodes it"
            )
    return warnings


def serve(config_path: str | Path, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the configuration in every process. Worker
    processes that die are replaced."""
    config = load_config(config_path)
    for warning in startup_warnings(config):
        print(warning, file=sys.stderr)
    server = SecretServer(config)
    stop, hup = threading.Event(), threading.Event()
    # Handlers only set flags (the main loop acts on them): a reload must never run inside a
    # signal handler that interrupted the same code. Installed before the workers fork, which
    # replace them with their own.
    signal.signal(signal.SIGHUP, lambda s, f: hup.set())
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    address = server.start()
    if ready:
        ready(address)
    while not stop.wait(0.2):
        if hup.is_set():
            hup.clear()
            try:
                server.reload()
                print("configuration reloaded", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - keep serving with the old policy
                print(f"reload failed, keeping the previous policy: {exc}", file=sys.stderr)
        server.supervise()
    server.shutdown()
