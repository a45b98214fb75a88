"""Start-up, serving and shutdown.

Order: load the config -> check the runtimes and ports (:func:`model_server.preflight.preflight`:
nothing is fetched for a server that could not start) -> fetch keys
(:func:`model_server.keys.prepare_keys`) -> open the models and TLS files through the key ring
(a warning for a stateful model with several instances) -> start gRPC and REST -> one readiness
line on stderr.
SIGTERM (or SIGINT): readiness goes false, both listeners stop accepting, and the requests
already admitted are answered. At ``drain_seconds`` every request still queued for a model is
answered UNAVAILABLE / 503; the requests running then get :data:`FINISH_SECONDS` more, and the
process exits 0.

Exit codes: 0 after a drain, 1 a model or listener failed to start (a port in use: before any
key is fetched), 2 a bad configuration (including an unknown backend or a runtime that is not
installed: before any key is fetched), 3 a key could not be fetched (the reason is printed;
nothing is served).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from enclave_build.contract.schema import Problem

from . import __version__
from .allocator import return_large_blocks
from .backends import BackendError
from .config import ConfigError, ServerConfig, load_config
from .core import Engine, load_models
from .keys import KeyFetchError, KeyRing, SecretServerLink, prepare_keys
from .metrics import Metrics
from .preflight import port_failure, preflight
from .resources import fit_open_files

if TYPE_CHECKING:
    from .grpc_service import GRPCServer
    from .rest import RESTServer
    from .serving_tls import ServingCertificate

log = logging.getLogger("model_server")
PREFIX = "model_server:"
#: After the drain deadline, how long requests already running may take to be answered (the
#: Kubernetes grace period the builder writes leaves 5 s beyond ``drain_seconds``).
FINISH_SECONDS = 2.0


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TLSMaterial:
    """The listeners' TLS: the provisioned files (``tls.issuer`` "file"), or a key made here
    whose certificate the secret server issues or the enclave signs itself
    (:class:`model_server.serving_tls.ServingCertificate`, renewed in the background)."""

    def __init__(
        self, config: ServerConfig, keyring: KeyRing, serving: ServingCertificate | None = None
    ) -> None:
        tls = config.tls
        assert tls is not None  # made for a configuration with [tls] only
        self.serving = serving
        self.cert_path = self.key_path = None
        self.cert_pem = self.key_pem = b""
        if serving is None:
            assert tls.cert is not None and tls.key is not None
            cert = keyring.open(tls.cert, tls.key_name)
            key = keyring.open(tls.key, tls.key_name)
            self.cert_path, self.key_path = cert.path, key.path
            self.cert_pem, self.key_pem = cert.read_bytes(), key.read_bytes()
        self.ca_path = self.ca_pem = None
        if tls.client_ca:
            ca = keyring.open(tls.client_ca, None)
            self.ca_path, self.ca_pem = ca.path, ca.read_bytes()
        self._current: ssl.SSLContext | None = None

    def grpc_credentials(self):
        import grpc

        if self.serving is None:
            return grpc.ssl_server_credentials(
                [(self.key_pem, self.cert_pem)],
                root_certificates=self.ca_pem,
                require_client_auth=self.ca_pem is not None,
            )
        serving = self.serving
        seen = [serving.version]

        def configuration():
            return grpc.ssl_server_certificate_configuration(
                [(serving.key_pem(), serving.chain_pem)], root_certificates=self.ca_pem
            )

        def fetch():  # called for each new connection: the renewed certificate, if any
            if serving.version == seen[0]:
                return None
            seen[0] = serving.version
            return configuration()

        return grpc.dynamic_ssl_server_credentials(
            configuration(), fetch, require_client_authentication=self.ca_pem is not None
        )

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.serving is None:
            ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        else:
            self.serving.load_into(ctx)
        if self.ca_path is not None:
            ctx.load_verify_locations(cafile=str(self.ca_path))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def ssl_context(self) -> ssl.SSLContext:
        ctx = self._context()
        if self.serving is not None:
            # A renewed certificate reaches new connections through the SNI callback, which
            # OpenSSL calls in every handshake (with or without a server name).
            self._current = ctx

            def renewed() -> None:
                self._current = self._context()

            def choose(sslobj, _name, _ctx) -> None:
                current = self._current
                if current is not None and current is not ctx:
                    sslobj.context = current

            self.serving.on_renewal(renewed)
            ctx.sni_callback = choose
        return ctx


async def serve(config: ServerConfig, engine: Engine, tls: TLSMaterial | None) -> int:
    from .grpc_service import GRPCServer, GRPCService, handler_threads
    from .rest import RESTServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    limits = config.limits
    grpc_server = rest = None
    listening = []
    try:
        if config.grpc is not None:
            grpc_server = GRPCServer(
                GRPCService(engine, metrics, config.service),
                limits,
                handler_threads(limits.max_concurrent_requests, limits.max_queue),
            )
            addr = _address(config.grpc.host, config.grpc.port)
            try:
                port = (
                    grpc_server.server.add_secure_port(addr, tls.grpc_credentials())
                    if tls
                    else grpc_server.server.add_insecure_port(addr)
                )
            except RuntimeError as exc:
                port = 0
                reason = str(exc)
            else:
                reason = "address in use or not available"
            if not port:
                _say(port_failure("gRPC", config.grpc, reason).message)
                return 1
            grpc_server.start()
            listening.append(f"grpc {_address(config.grpc.host, port)}")
        if config.rest is not None:
            rest = RESTServer(
                engine, metrics, config.service, limits.max_request_bytes, config.metrics, limits
            )
            try:
                port = await rest.start(
                    config.rest.host, config.rest.port, tls.ssl_context() if tls else None
                )
            except OSError as exc:
                _say(port_failure("REST", config.rest, exc.strerror or str(exc)).message)
                return 1
            listening.append(f"rest {_address(config.rest.host, port)}")
        _say(
            f"serving {' '.join(listening) or 'nothing'}{' (TLS)' if tls else ''} "
            f"(models: {', '.join(engine.models)})"
        )
        await stop.wait()
        _say(f"draining (up to {config.drain_seconds:g} s)")
        left = await drain(config, engine, grpc_server, rest)
        grpc_server = None
        c = engine.counters
        _say(
            f"stopped: {c.accepted} inference requests admitted, {c.answered} answered "
            f"({c.ok} ok), {c.accepted - c.answered} unanswered; {c.refused} refused before "
            "admission (malformed, too large, unknown model, server busy or a client "
            "the model does not allow)"
            + (
                f"; {c.cut_off} still queued at the drain deadline, answered UNAVAILABLE"
                if c.cut_off
                else ""
            )
            + (f"; {left} REST requests cut off at the drain deadline" if left else "")
        )
        return 0
    finally:
        if grpc_server is not None:
            await asyncio.to_thread(grpc_server.stop, 0)


async def drain(
    config: ServerConfig, engine: Engine, grpc_server: GRPCServer | None, rest: RESTServer | None
) -> int:
    """Readiness false, listeners closed; at ``drain_seconds`` every request still queued fails
    (:meth:`Engine.stop_admitting`); running requests get FINISH_SECONDS more. Returns the REST
    requests cut off."""
    engine.ready = False
    waits: list[Awaitable[object]] = []
    if grpc_server is not None:
        waits.append(
            asyncio.to_thread(
                grpc_server.stop, config.drain_seconds + FINISH_SECONDS, FINISH_SECONDS
            )
        )
    if rest is not None:
        waits.append(rest.drain(config.drain_seconds, FINISH_SECONDS))
    everything = asyncio.ensure_future(asyncio.gather(*waits))
    try:
        await asyncio.wait_for(asyncio.shield(everything), config.drain_seconds)
    except TimeoutError:
        failed = engine.stop_admitting(
            f"server shutting down: the drain deadline (drain_seconds {config.drain_seconds:g}"
            " s) has passed"
        )
        if failed:
            log.warning("drain deadline: %d queued requests answered UNAVAILABLE", failed)
    results = await everything
    cut = results[-1] if rest is not None else 0  # the REST drain's count comes last
    assert isinstance(cut, int)
    return cut


def state_warnings(models: dict) -> list[str]:
    """A warning for each model that keeps state between requests (as its backend reports)
    and has more than one instance: each instance keeps its own."""
    out = []
    for name, loaded in models.items():
        if loaded.instance_count < 2:
            continue
        state = loaded.state()
        if state:
            out.append(
                f"model {name} keeps state between requests ({state}); each of its "
                f"{loaded.instance_count} instances keeps its own, so a client's "
                "consecutive requests may meet different state (set the framework's "
                "instances to 1 in the spec if it must be shared)"
            )
    return out


def _serving_certificate(config: ServerConfig, link: SecretServerLink | None) -> ServingCertificate:
    """The in-enclave serving key and its first certificate (KeyFetchError when refused)."""
    from .keys import quote_source
    from .serving_tls import ServingCertificate, not_after

    tls = config.tls
    assert tls is not None
    make_quote = link.make_quote if link is not None else quote_source()
    serving = ServingCertificate(tls.issuer, tls.hosts, make_quote, link)
    cert = serving.certificate
    who = "issued by the secret server" if tls.issuer == "secret-server" else "self-signed"
    _say(
        f"serving certificate for {', '.join(tls.hosts)} {who}, key made in this enclave "
        f"(SPKI sha256 {hashlib.sha256(serving.spki_der).hexdigest()}, valid until "
        f"{not_after(cert).isoformat(timespec='seconds')})"
    )
    return serving


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m enclave_build.model_server",
        description="enclave-build's model server: KServe Open Inference Protocol v2 over gRPC "
        "and REST, for models run by LiteRT (tflite), OpenVINO or a backend plugin.",
        epilog="Exit codes: 0 stopped after SIGTERM, 1 a model or listener failed, 2 bad "
        "configuration, 3 a key could not be fetched.",
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="PATH",
        help="the server's JSON configuration (an image path; ENCLAVE_BUILD_ROOT maps "
        "it under a host directory in a simulation)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: WARNING",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=f"{PREFIX} %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
        if not config.models:
            raise ConfigError(args.config, [Problem(("models",), "no models to serve")])
    except ConfigError as exc:
        _say(f"bad configuration: {exc}")
        return 2
    except (TypeError, ValueError, KeyError) as exc:
        _say(f"bad configuration: {args.config}: {exc}")
        return 2
    if not return_large_blocks():
        log.debug("the C library keeps its default for large blocks (no mallopt)")
    failures = preflight(config)
    if failures:
        for failure in failures:
            _say(f"not starting (no key was fetched): {failure.message}")
        return max(f.exit_code for f in failures)
    serving = None
    try:
        link = None
        if config.keys is not None and config.keys.source == "ra-tls":
            link = SecretServerLink.of(config.keys)
        keyring = prepare_keys(config.keys, link=link)
        if config.tls is not None and config.tls.issuer != "file":
            serving = _serving_certificate(config, link)
    except KeyFetchError as exc:
        _say(f"cannot fetch keys, not serving: {exc}")
        return 3
    engine = None
    try:
        try:
            tls = TLSMaterial(config, keyring, serving) if config.tls else None
            if tls is not None:
                tls.ssl_context()  # fail now on a bad certificate/key, not per client
            models = load_models(config.models, lambda mc: keyring.open(mc.path, mc.key))
        except KeyFetchError as exc:
            _say(f"cannot open an encrypted file, not serving: {exc}")
            return 3
        except BackendError as exc:
            _say(f"bad configuration: {exc}")
            return 2
        except (OSError, ssl.SSLError) as exc:
            _say(f"cannot start: {exc}")
            return 1
        except Exception as exc:  # noqa: BLE001 - a runtime refusing a model
            _say(f"cannot load the models: {type(exc).__name__}: {exc}")
            return 1
        for warning in state_warnings(models):
            _say(f"warning: {warning}")
        config, lowered = fit_open_files(config)
        if lowered:
            _say(f"warning: {lowered}")
        engine = Engine(models, config.limits)
        if serving is not None:
            serving.start_renewal()
        code = asyncio.run(serve(config, engine, tls))
        if engine.busy():
            # An inference still running past drain_seconds + FINISH_SECONDS cannot be
            # interrupted (runtimes do not stop mid-call) and would hold the process beyond the
            # grace period Kubernetes gives it: leave without waiting for it.
            _say(
                f"exiting with {engine.busy()} inference(s) still running after the drain "
                f"bound (drain_seconds {config.drain_seconds:g} s + {FINISH_SECONDS:g} s)"
            )
            keyring.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    finally:
        if serving is not None:
            serving.stop()
        if engine is not None:
            engine.close()
        keyring.close()
