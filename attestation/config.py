"""secrets.toml: the secret server's configuration.

    measurements = ["builds/*/measurements.json"]   # top level: before any [table]

    [server]
    listen = "0.0.0.0:4433"          # HOST:PORT ([::]:4433 for IPv6)
    cert = "server.crt"              # CA-signed certificate the enclaves check
    key = "server.key"
    identity = "ca-cert"             # or "ratls": inside an enclave, present a fresh TCG DICE
                                     # RA-TLS certificate instead of cert/key (then not needed)
    max_connections = 1024           # connections at once (per process); more are refused at once
    max_connections_per_peer = 64    # connections at once from one IP address (per process)
    workers = 128                    # threads per process handling connections (the rest wait)
    processes = 2                    # worker processes sharing the listening socket
                                     # (default: the number of cores this process may use)
    timeout = 10.0                   # seconds a connection may take, handshake to reply
    max_tls = "1.3"                  # "1.2" for Gramine 1.8 clients (mbedTLS 3.6.0)
    audit_log = "audit.jsonl"        # JSON lines; "-" = stderr

    [attestation]
    root_ca = "intel"                # or a PEM/DER file: a custom (e.g. synthetic test) root
    collateral = "collateral.json"   # offline collateral, or:
    pccs_url = "https://pccs.example.com:8081/sgx/certification/v4/"
    pccs_timeout = 10.0              # seconds one collateral fetch may take (per FMSPC)
    allowed_tcb_statuses = ["UpToDate"]
    allowed_advisories = ["INTEL-SA-00615"]   # optional allow-list
    denied_advisories = []
    allow_debug = false
    verification_cache = true        # reuse per-platform verification (see attestation.verify)

    [[secrets]]
    name = "face-detect-key"
    file = "keys/face-detect-key.key"
    allow = ["face-detect"]          # services and/or MRENCLAVE hex
    match = "mr_enclave"             # or "signer" (MRSIGNER + ISV_PROD_ID, ISV_SVN >= built)
    encoding = "raw"                 # or "hex-dashes": Occlum's image-key text (16-byte keys)
    requested_as = "image_key"       # optional: the name a GrSecret client asks for, if not
                                     # `name` (an Occlum build's KEY@image_key rule)

    [grsecret]                       # optional: Occlum's ratls.GrSecret/GetSecret over mutual
    listen = "0.0.0.0:50051"         # RA-TLS on a port of its own (attestation.grsecret); the
                                     # server presents a fresh Occlum-format RA-TLS certificate
    client_ra_config = "dynamic_config.json"   # optional: Occlum's server-side ra_config, an
                                     # extra filter on clients before the [[secrets]] policy
    idle = 2.0                       # seconds a connection may wait with no call open
    max_requests = 32                # calls per connection

    [upload]                         # optional: keys handed over at run time by their owners
    owners = ["owner.crt"]           # pinned owner certificates (attestation.upload); a
                                     # [[secrets]] rule without `file` is then an uploaded key
                                     # (needs processes = 1: keys stay in that process's memory)

With ``processes`` > 1 every process has its own workers, connection limits, deadline watchdog
and verification cache, so the limits apply per process (the totals are ``processes`` times the
values); the kernel hands each new connection to whichever process accepts it first.

Relative paths are resolved against the file's directory. Errors name the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .policy import ENCODINGS, KEY_SIZE, SecretRule
from .upload import UploadConfigError, UploadSettings, load_settings as _load_upload
from .verify import TCB_STATUSES, TcbPolicy, VerifierConfigError
from .errors import AttestationConfigError


class ConfigError(AttestationConfigError, ValueError):
    pass


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    cert: Path | None                # None with identity = "ratls"
    key: Path | None
    max_connections: int = 1024
    max_connections_per_peer: int = 64
    workers: int = 128
    timeout: float = 10.0
    max_tls: str = "1.3"
    audit_log: str | None = None
    processes: int = 1
    identity: str = "ca-cert"        # "ca-cert" (cert/key) | "ratls" (fresh TCG DICE RA-TLS)


IDENTITIES = ("ca-cert", "ratls")


@dataclass(frozen=True)
class GrSecretSettings:
    """``[grsecret]``: Occlum's GrSecret gRPC service on a listener of its own."""

    host: str
    port: int
    client_ra_config: Path | None = None   # Occlum dynamic_config.json (attestation.occlum_ra)
    idle: float = 2.0
    max_requests: int = 32


@dataclass(frozen=True)
class AttestationSettings:
    root_ca: Path | None                 # None = Intel's SGX root
    collateral: Path | None
    pccs_url: str | None
    tcb: TcbPolicy
    pccs_timeout: float = 10.0
    verification_cache: bool = True


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SecretsConfig:
    path: Path
    server: ServerSettings
    attestation: AttestationSettings
    measurements: tuple[str, ...]
    secrets: tuple[SecretRule, ...] = field(default_factory=tuple)
    #: ``[upload]``: owners who may upload the keys of file-less [[secrets]] (attestation.upload)
    upload: UploadSettings | None = None
    #: ``[grsecret]``: Occlum's ratls.GrSecret/GetSecret service (attestation.grsecret)
    grsecret: GrSecretSettings | None = None


def _get(table: dict, key: str, kind: type, where: str, default: Any = ..., source: str = ""):
    if key not in table:
        if default is ...:
            raise ConfigError(f"{source}: {where}.{key}: required key is missing")
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{source}: {where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _unknown(table: dict, allowed: set[str], where: str, source: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        hint = (" (measurements is a top-level key: put it before the first [table])"
                if extra[0] == "measurements" else "")
        raise ConfigError(f"{source}: {where}.{extra[0]}: unknown key; allowed: "
                          f"{', '.join(sorted(allowed))}{hint}")


def _resolve_log(value: str | None, base: Path) -> str | None:
    if value is None or value == "-":
        return value
    return str(base / value)


def _listen(table: dict, where: str, source: str) -> tuple[str, int]:
    listen = _get(table, "listen", str, where, source=source)
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{source}: {where}.listen: {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _grsecret(table: object, base: Path, source: str) -> GrSecretSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: grsecret: expected a table")
    _unknown(table, {"listen", "client_ra_config", "idle", "max_requests"}, "grsecret", source)
    host, port = _listen(table, "grsecret", source)
    ra_config = _get(table, "client_ra_config", str, "grsecret", None, source)
    settings = GrSecretSettings(
        host, port, base / ra_config if ra_config is not None else None,
        _get(table, "idle", float, "grsecret", 2.0, source),
        _get(table, "max_requests", int, "grsecret", 32, source))
    if not settings.idle > 0:
        raise ConfigError(f"{source}: grsecret.idle: must be more than 0 seconds")
    if settings.max_requests < 1:
        raise ConfigError(f"{source}: grsecret.max_requests: must be at least 1")
    if settings.client_ra_config is not None:
        from .occlum_ra import RaConfig, RaConfigError
        try:
            RaConfig.load(settings.client_ra_config)
        except RaConfigError as exc:
            raise ConfigError(f"{source}: grsecret.client_ra_config: {exc}") from None
    return settings


def load_config(path: str | Path) -> SecretsConfig:
    path = Path(path).resolve()
    source = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    base = path.parent
    _unknown(data, {"server", "attestation", "measurements", "secrets", "upload", "grsecret"},
             "", source)

    srv = data.get("server", {})
    _unknown(srv, {"listen", "cert", "key", "max_connections", "max_connections_per_peer",
                   "workers", "timeout", "max_tls", "audit_log", "processes", "identity"},
             "server", source)
    host, port = _listen(srv, "server", source)
    identity = _get(srv, "identity", str, "server", "ca-cert", source)
    if identity not in IDENTITIES:
        raise ConfigError(f"{source}: server.identity: {identity!r}; allowed: "
                          + ", ".join(f'"{i}"' for i in IDENTITIES))
    if identity == "ratls":
        for name in ("cert", "key"):
            if name in srv:
                raise ConfigError(f"{source}: server.{name}: not used with identity = "
                                  "\"ratls\" (the server makes its own RA-TLS certificate); "
                                  "remove it")
    max_tls = _get(srv, "max_tls", str, "server", "1.3", source)
    if max_tls not in ("1.2", "1.3"):
        raise ConfigError(f"{source}: server.max_tls: {max_tls!r}; allowed: \"1.2\", \"1.3\"")
    server = ServerSettings(
        host=host, port=port,
        cert=base / _get(srv, "cert", str, "server", "", source) if identity == "ca-cert" else None,
        key=base / _get(srv, "key", str, "server", "", source) if identity == "ca-cert" else None,
        max_connections=_get(srv, "max_connections", int, "server", 1024, source),
        max_connections_per_peer=_get(srv, "max_connections_per_peer", int, "server", 64, source),
        workers=_get(srv, "workers", int, "server", 128, source),
        timeout=_get(srv, "timeout", float, "server", 10.0, source),
        max_tls=max_tls,
        audit_log=_resolve_log(_get(srv, "audit_log", str, "server", None, source), base),
        processes=_get(srv, "processes", int, "server", available_cores(), source),
        identity=identity)
    for name in ("max_connections", "max_connections_per_peer", "workers", "processes"):
        if getattr(server, name) < 1:
            raise ConfigError(f"{source}: server.{name}: must be at least 1")
    if not server.timeout > 0:
        raise ConfigError(f"{source}: server.timeout: must be more than 0 seconds")
    for name in ("cert", "key") if identity == "ca-cert" else ():
        if name not in srv:
            raise ConfigError(f"{source}: server.{name}: required key is missing (or set "
                              "identity = \"ratls\" inside an enclave)")
        if not getattr(server, name).is_file():
            raise ConfigError(f"{source}: server.{name}: file not found: {getattr(server, name)}")

    att = data.get("attestation", {})
    _unknown(att, {"root_ca", "collateral", "pccs_url", "pccs_timeout", "allowed_tcb_statuses",
                   "allowed_advisories", "denied_advisories", "allow_debug",
                   "verification_cache"}, "attestation",
             source)
    root = _get(att, "root_ca", str, "attestation", "intel", source)
    collateral = _get(att, "collateral", str, "attestation", None, source)
    pccs = _get(att, "pccs_url", str, "attestation", None, source)
    if (collateral is None) == (pccs is None):
        raise ConfigError(f"{source}: attestation: give exactly one of collateral (a file) and "
                          "pccs_url")
    statuses = _get(att, "allowed_tcb_statuses", list, "attestation", ["UpToDate"], source)
    for status in statuses:
        if status not in TCB_STATUSES:
            raise ConfigError(f"{source}: attestation.allowed_tcb_statuses: {status!r}; allowed: "
                              f"{', '.join(TCB_STATUSES)}")
    allowed_adv = _get(att, "allowed_advisories", list, "attestation", None, source)
    try:
        tcb = TcbPolicy(frozenset(statuses),
                        frozenset(allowed_adv) if allowed_adv is not None else None,
                        frozenset(_get(att, "denied_advisories", list, "attestation", [], source)),
                        _get(att, "allow_debug", bool, "attestation", False, source))
    except VerifierConfigError as exc:
        raise ConfigError(f"{source}: attestation: {exc}") from None
    pccs_timeout = _get(att, "pccs_timeout", float, "attestation", 10.0, source)
    if not pccs_timeout > 0:
        raise ConfigError(f"{source}: attestation.pccs_timeout: must be more than 0 seconds")
    attestation = AttestationSettings(
        root_ca=None if root == "intel" else base / root,
        collateral=base / collateral if collateral else None, pccs_url=pccs, tcb=tcb,
        pccs_timeout=pccs_timeout,
        verification_cache=_get(att, "verification_cache", bool, "attestation", True, source))
    if attestation.root_ca is not None and not attestation.root_ca.is_file():
        raise ConfigError(f"{source}: attestation.root_ca: file not found: {attestation.root_ca}")

    measurements = data.get("measurements", [])
    if not isinstance(measurements, list) or not all(isinstance(m, str) for m in measurements):
        raise ConfigError(f"{source}: measurements: expected an array of paths or globs")
    upload = None
    if "upload" in data:
        try:
            upload = _load_upload(data["upload"], base, source)
        except UploadConfigError as exc:
            raise ConfigError(str(exc)) from None
        if server.processes != 1:
            raise ConfigError(f"{source}: server.processes: must be 1 with [upload] (uploaded "
                              "keys live in one process's memory)")
    rules = []
    for index, item in enumerate(data.get("secrets", [])):
        where = f"secrets[{index}]"
        _unknown(item, {"name", "file", "allow", "match", "encoding", "requested_as"}, where,
                 source)
        allow = _get(item, "allow", list, where, source=source)
        if upload is not None and "file" not in item:
            file = None   # uploaded by an owner at run time (attestation.upload)
        else:
            file = base / _get(item, "file", str, where, source=source)
            if not file.is_file():
                raise ConfigError(f"{source}: {where}.file: file not found: {file}")
        encoding = _get(item, "encoding", str, where, "raw", source)
        if encoding not in ENCODINGS:
            raise ConfigError(f"{source}: {where}.encoding: {encoding!r}; allowed: "
                              + ", ".join(f'"{e}"' for e in ENCODINGS)
                              + " (hex-dashes: Occlum's image-key text, for 16-byte keys)")
        requested_as = _get(item, "requested_as", str, where, None, source)
        if requested_as is not None and not requested_as:
            raise ConfigError(f"{source}: {where}.requested_as: empty; give the name a GrSecret "
                              "client asks for (e.g. \"image_key\"), or leave it out")
        if encoding == "hex-dashes" and file is not None \
                and file.stat().st_size != KEY_SIZE:
            raise ConfigError(f"{source}: {where}.file: {file} has {file.stat().st_size} bytes; "
                              f"encoding \"hex-dashes\" needs a {KEY_SIZE}-byte key")
        rules.append(SecretRule(_get(item, "name", str, where, source=source), file,
                                tuple(str(a) for a in allow),
                                _get(item, "match", str, where, "mr_enclave", source),
                                encoding, requested_as))
    grsecret = _grsecret(data["grsecret"], base, source) if "grsecret" in data else None
    wildcard = {"", "0.0.0.0", "::"}   # all addresses: overlaps any host with that port
    if grsecret is not None and grsecret.port == server.port != 0 and (
            grsecret.host == server.host or {grsecret.host, server.host} & wildcard):
        raise ConfigError(f"{source}: grsecret.listen: port {grsecret.port} is also "
                          "server.listen's; GrSecret needs a port of its own")
    return SecretsConfig(path, server, attestation, tuple(measurements), tuple(rules), upload,
                         grsecret)
