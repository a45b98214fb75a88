"""secrets.toml: the secret server's configuration.

    measurements = ["builds/*/measurements.json"]   # top level: before any [table]

    [server]
    listen = "0.0.0.0:4433"          # HOST:PORT ([::]:4433 for IPv6)
    cert = "server.crt"              # CA-signed certificate the enclaves check
    key = "server.key"
    audit_log = "audit.jsonl"        # JSON lines; "-" = stderr
    processes = 2                    # worker processes sharing the listening socket
                                     # (default: the number of cores this process may use)
    identity = "ca-cert"             # or "ratls": inside an enclave, present a fresh TCG DICE
                                     # RA-TLS certificate instead of cert/key (then not needed)
    workers = 128                    # threads per process handling connections (the rest wait)
    max_connections = 1024           # connections at once (per process); more are refused at once
    max_connections_per_peer = 64    # connections at once from one IP address (per process)
    timeout = 10.0                   # seconds a connection may take, handshake to reply
    max_tls = "1.3"                  # "1.2" for Gramine 1.8 clients (mbedTLS 3.6.0)

    [attestation]
    root_ca = "intel"                # or a PEM/DER file: a custom (e.g. synthetic test) root
    collateral = "collateral.json"   # offline collateral, or:
    pccs_url = "https://pccs.example.com:8081/sgx/certification/v4/"
    pccs_timeout = 10.0              # seconds one collateral fetch may take (per FMSPC)
    allowed_tcb_statuses = ["UpToDate"]
    allowed_advisories = ["INTEL-SA-00615"]   # optional allow-list
    denied_advisories = []
    allow_debug = false
    verification_cache = true        # reuse per-platform and per-certificate verification

    [upload]                         # optional: keys handed over at run time by their owners
    owners = ["owner.crt"]           # pinned owner certificates (attestation.upload); a
                                     # [[secrets]] rule without `file` is then an uploaded key
                                     # (needs processes = 1: keys stay in that process's memory)

    [issuer]                         # optional: serving certificates for attested enclaves
    cert = "issuer-ca.pem"           # the issuing CA clients trust (`secrets tls` writes it)
    key = "issuer-ca.key"
    lifetime = 86400                 # seconds an issued certificate is valid (renewed by the
                                     # enclave two thirds of the way to expiry)

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

With ``processes`` > 1 every process has its own workers, connection limits, deadline watchdog
and verification cache, so the limits apply per process (the totals are ``processes`` times the
values); the kernel hands each new connection to whichever process accepts it first.

Relative paths are resolved against the file's directory by the reader
(:meth:`SecretsConfig.load`); the writer (:meth:`SecretsConfig.to_toml`) writes paths as the
object holds them, and only the values that differ from the defaults. Every problem of a file is reported at once,
``FILE:LINE: KEY: message``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import Locator, NoLocator, parse_toml, raise_problems, read_text
from .locate import KeyPath
from .schema import Field, Problem, Section, bad, validate_table
from .tcb import TCB_STATUSES, TcbPolicy


class SecretsConfigError(ContractError):
    """A secrets.toml is missing, malformed or names files that are not there."""


#: How a secret is handed over: its bytes as stored (``raw``), or, for a 16-byte key, the text
#: ``xx-xx-...-xx`` + newline (``hex-dashes``) that Occlum's init parses for its image key.
ENCODINGS = ("raw", "hex-dashes")
#: Bytes of a wrap key (Gramine's protected files; Occlum's image key).
KEY_SIZE = 16
IDENTITIES = ("ca-cert", "ratls")
MAX_TLS = ("1.2", "1.3")


def hex_dashes(key: bytes) -> bytes:
    """A 16-byte key as Occlum's init and ``occlum build --image-key`` read it (the format of
    ``occlum gen-image-key``): 16 lower-case hex bytes joined by '-', then a newline (48 bytes,
    a multiple of 3, so Occlum's GrSecret client decodes it with nothing appended)."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"an Occlum image key has {KEY_SIZE} bytes, not {len(key)}")
    return ("-".join(f"{b:02x}" for b in key) + "\n").encode()


# --------------------------------------------------------------------------- schema

RULE = Section(
    "secrets",
    "a secret and the enclaves it is released to",
    (
        Field(
            "name", "str", "the secret's name", required=True, expect="a string (the secret's name)"
        ),
        Field(
            "file",
            "str",
            "the key file (without it: uploaded by an owner, [upload])",
            expect="a string (the key file's path)",
        ),
        Field(
            "allow",
            "list[str]",
            "services and/or MRENCLAVE values",
            required=True,
            expect="an array of services and/or MRENCLAVE values",
            item_expect="a service name or MRENCLAVE (a string)",
        ),
        Field(
            "match",
            "str",
            '"mr_enclave" or "signer" (MRSIGNER + ISV_PROD_ID, ISV_SVN >= built)',
            default="mr_enclave",
            expect='a string ("mr_enclave" or "signer")',
        ),
        Field(
            "encoding",
            "str",
            '"raw", or "hex-dashes": Occlum\'s image-key text (16-byte keys)',
            default="raw",
            choices=ENCODINGS,
            expect='a string ("raw" or "hex-dashes")',
        ),
        Field(
            "requested_as",
            "str",
            "the name a GrSecret client asks for, if not name",
            expect="a string (the name a GrSecret client asks for)",
        ),
    ),
    array=True,
)

SERVER = Section(
    "server",
    "the secret server's listener and identity",
    (
        Field("listen", "str", "HOST:PORT ([::]:4433 for IPv6)", required=True),
        Field("cert", "str", 'CA-signed certificate the enclaves check (identity "ca-cert")'),
        Field("key", "str", "its private key"),
        Field("audit_log", "str", 'JSON lines; "-" = stderr'),
        Field(
            "processes",
            "int",
            "worker processes sharing the listening socket (default: the "
            "cores this process may use)",
            minimum=1,
            expect="an integer",
        ),
        Field(
            "identity",
            "str",
            '"ca-cert" (cert/key) or "ratls" (inside an enclave: a fresh '
            "TCG DICE RA-TLS certificate)",
            default="ca-cert",
            choices=IDENTITIES,
        ),
        Field("workers", "int", "threads per process handling connections", default=128, minimum=1),
        Field(
            "max_connections", "int", "connections at once (per process)", default=1024, minimum=1
        ),
        Field(
            "max_connections_per_peer",
            "int",
            "connections at once from one IP address (per process)",
            default=64,
            minimum=1,
        ),
        Field(
            "timeout",
            "float",
            "seconds a connection may take, handshake to reply",
            default=10.0,
            above=0,
        ),
        Field(
            "max_tls",
            "str",
            '"1.2" for Gramine 1.8 clients (mbedTLS 3.6.0)',
            default="1.3",
            choices=MAX_TLS,
        ),
    ),
)
ATTESTATION = Section(
    "attestation",
    "how the enclaves' quotes are verified",
    (
        Field(
            "root_ca",
            "str",
            '"intel", or a PEM/DER file: a custom (e.g. synthetic test) root',
            default="intel",
        ),
        Field("collateral", "str", "offline collateral file ..."),
        Field("pccs_url", "str", "... or the PCCS to fetch it from"),
        Field(
            "pccs_timeout", "float", "seconds one collateral fetch may take", default=10.0, above=0
        ),
        Field(
            "allowed_tcb_statuses",
            "list[str]",
            "TCB statuses to accept",
            default=["UpToDate"],
            item_choices=TCB_STATUSES,
        ),
        Field("allowed_advisories", "list[str]", "an allow-list of advisories (default: any)"),
        Field("denied_advisories", "list[str]", "advisories never accepted", default=[]),
        Field("allow_debug", "bool", "accept DEBUG enclaves (the verifier cannot)", default=False),
        Field(
            "verification_cache",
            "bool",
            "reuse per-platform verification, and what a client certificate proved while it holds",
            default=True,
        ),
    ),
)
UPLOAD = Section(
    "upload",
    "keys handed over at run time by their owners",
    (
        Field(
            "owners",
            "list[str]",
            "PEM certificates of the owners who may upload keys",
            required=True,
            min_items=1,
            item_pattern=r".+",
            item_doc="a certificate file",
            expect="a non-empty array of certificate files (PEM): the owners who may upload keys",
        ),
    ),
)
#: Bounds of ``[issuer] lifetime`` (seconds an issued serving certificate is valid).
ISSUER_MIN_LIFETIME = 10
ISSUER_MAX_LIFETIME = 90 * 86400

ISSUER = Section(
    "issuer",
    "the CA that certifies attested enclaves' serving keys",
    (
        Field("cert", "str", "PEM certificate of the issuing CA", required=True),
        Field("key", "str", "its PEM private key", required=True),
        Field(
            "lifetime",
            "int",
            "seconds an issued certificate is valid",
            default=86400,
            minimum=ISSUER_MIN_LIFETIME,
            maximum=ISSUER_MAX_LIFETIME,
        ),
    ),
)
GRSECRET = Section(
    "grsecret",
    "Occlum's ratls.GrSecret/GetSecret service",
    (
        Field("listen", "str", "HOST:PORT of its own", required=True),
        Field("client_ra_config", "str", "Occlum's server-side ra_config (dynamic_config.json)"),
        Field(
            "idle", "float", "seconds a connection may wait with no call open", default=2.0, above=0
        ),
        Field("max_requests", "int", "calls per connection", default=32, minimum=1),
    ),
)
SCHEMA = Section(
    "",
    "secrets.toml: the secret server's configuration",
    (
        Field(
            "measurements",
            "list[str]",
            "measurements.json files (paths or globs) of the enclaves served",
            default=[],
            expect="an array of paths or globs",
        ),
        Field("server", "table", "the listener and identity", section=SERVER),
        Field("attestation", "table", "quote verification", section=ATTESTATION),
        Field("upload", "table", "owners who may upload keys", section=UPLOAD),
        Field(
            "secrets", "list[table]", "the secrets and whom they go to", default=[], section=RULE
        ),
        Field("grsecret", "table", "Occlum's GrSecret service", section=GRSECRET),
        Field("issuer", "table", "serving certificates for attested enclaves", section=ISSUER),
    ),
)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class SecretRule:
    """A ``[[secrets]]`` rule (secrets.toml and the policy fragment)."""

    name: str
    file: Path | None  # None: uploaded by an owner at run time (attestation.upload)
    allow: tuple[str, ...]
    match: str = "mr_enclave"
    encoding: str = "raw"  # one of ENCODINGS
    #: The name a GrSecret client asks for when it is not *name* (Occlum's init asks for its
    #: image key as "image_key"); several rules may share it, each for its own enclaves.
    requested_as: str | None = None

    def encode(self, secret: bytes) -> bytes:
        """What the enclave receives for the stored *secret* (ValueError if it cannot be)."""
        return secret if self.encoding == "raw" else hex_dashes(secret)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.file is not None:
            out["file"] = str(self.file)
        out["allow"] = list(self.allow)
        if self.match != "mr_enclave":
            out["match"] = self.match
        if self.encoding != "raw":
            out["encoding"] = self.encoding
        if self.requested_as is not None:
            out["requested_as"] = self.requested_as
        return out


def _listen_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    cert: Path | None  # None with identity = "ratls"
    key: Path | None
    max_connections: int = 1024
    max_connections_per_peer: int = 64
    workers: int = 128
    timeout: float = 10.0
    max_tls: str = "1.3"
    audit_log: str | None = None
    #: Worker processes; the reader always sets it (default: the cores the server may use);
    #: None in a configuration being written leaves it to the server's machine.
    processes: int | None = None
    identity: str = "ca-cert"  # "ca-cert" (cert/key) | "ratls" (fresh TCG DICE RA-TLS)

    @property
    def listen(self) -> str:
        return _listen_text(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": self.listen}
        for name in ("cert", "key", "audit_log"):
            if getattr(self, name) is not None:
                out[name] = str(getattr(self, name))
        if self.processes is not None:
            out["processes"] = self.processes
        out.update(
            _changed(
                self,
                SERVER,
                (
                    "identity",
                    "workers",
                    "max_connections",
                    "max_connections_per_peer",
                    "timeout",
                    "max_tls",
                ),
            )
        )
        return out


@dataclass(frozen=True)
class GrSecretSettings:
    """``[grsecret]``: Occlum's GrSecret gRPC service on a listener of its own."""

    host: str
    port: int
    client_ra_config: Path | None = None  # Occlum dynamic_config.json (attestation.occlum_ra)
    idle: float = 2.0
    max_requests: int = 32

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": _listen_text(self.host, self.port)}
        if self.client_ra_config is not None:
            out["client_ra_config"] = str(self.client_ra_config)
        out.update(_changed(self, GRSECRET, ("idle", "max_requests")))
        return out


@dataclass(frozen=True)
class AttestationSettings:
    root_ca: Path | None  # None = Intel's SGX root
    collateral: Path | None
    pccs_url: str | None
    tcb: TcbPolicy = TcbPolicy()
    pccs_timeout: float = 10.0
    verification_cache: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"root_ca": "intel" if self.root_ca is None else str(self.root_ca)}
        if self.collateral is not None:
            out["collateral"] = str(self.collateral)
        if self.pccs_url is not None:
            out["pccs_url"] = self.pccs_url
        out.update(_changed(self, ATTESTATION, ("pccs_timeout", "verification_cache")))
        tcb = self.tcb
        if set(tcb.allowed_statuses) != {"UpToDate"}:
            out["allowed_tcb_statuses"] = [s for s in TCB_STATUSES if s in tcb.allowed_statuses]
        if tcb.allowed_advisories is not None:
            out["allowed_advisories"] = sorted(tcb.allowed_advisories)
        if tcb.denied_advisories:
            out["denied_advisories"] = sorted(tcb.denied_advisories)
        if tcb.allow_debug:
            out["allow_debug"] = True
        return out


@dataclass(frozen=True)
class UploadSettings:
    """``[upload]``: the certificates of the owners who may upload keys (read and pinned by the
    server at start: attestation.upload)."""

    owners: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"owners": [str(p) for p in self.owners]}


@dataclass(frozen=True)
class IssuerSettings:
    """``[issuer]``: the CA whose certificates the secret server issues to attested enclaves
    for their serving keys (attestation.server.issuer), and how long each is valid."""

    cert: Path
    key: Path
    lifetime: int = 86400  # seconds

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cert": str(self.cert), "key": str(self.key)}
        if self.lifetime != ISSUER.field("lifetime").default:
            out["lifetime"] = self.lifetime
        return out


def _changed(obj: Any, section: Section, names: tuple[str, ...]) -> dict[str, Any]:
    """The attributes *names* of *obj* whose values differ from *section*'s defaults."""
    return {n: getattr(obj, n) for n in names if getattr(obj, n) != section.field(n).default}


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
    #: ``[issuer]``: serving certificates for attested enclaves (attestation.server.issuer)
    issuer: IssuerSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measurements": list(self.measurements),
            "server": self.server.to_dict(),
            "attestation": self.attestation.to_dict(),
        }
        if self.upload is not None:
            out["upload"] = self.upload.to_dict()
        out["secrets"] = [rule.to_dict() for rule in self.secrets]
        if self.grsecret is not None:
            out["grsecret"] = self.grsecret.to_dict()
        if self.issuer is not None:
            out["issuer"] = self.issuer.to_dict()
        return out

    def to_toml(self, header: str = "") -> str:
        """The file's text (the one writer; needs tomli-w, which only the builder has):
        *header* as comment lines, then the values that differ from the defaults."""
        import tomli_w

        comment = "".join(f"# {line}\n" for line in header.splitlines())
        return comment + tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(
        cls, data: Any, path: Path, locator: Locator = NoLocator(), source: str | None = None
    ) -> SecretsConfig:
        """*data* (secrets.toml's, relative paths against *path*'s directory) checked: every
        problem, located, in one SecretsConfigError naming *source* (default: *path*)."""
        source = source or str(path)
        base = path.parent
        problems: list[Problem] = []
        if isinstance(data, dict):  # absent tables: their required keys are reported
            data = {"server": {}, "attestation": {}, **data}
        v = validate_table(SCHEMA, data, (), base, problems)
        config = None
        if isinstance(data, dict):
            config = _build(data, v, base, path, problems)
        for index, p in enumerate(problems):
            if len(p.path) == 2 and p.path[1] == "measurements" and "unknown key" in p.message:
                problems[index] = Problem(
                    p.path,
                    p.message + " (measurements is a top-level "
                    "key: put it before the first [table])",
                )
        raise_problems(problems, source, locator, SecretsConfigError)
        assert config is not None
        return config

    @classmethod
    def parse(cls, text: str, path: Path) -> SecretsConfig:
        data, locator = parse_toml(text, str(path), SecretsConfigError)
        return cls.from_dict(data, path, locator)

    @classmethod
    def load(cls, path: str | Path) -> SecretsConfig:
        """The one reader: *path* read and checked, relative paths resolved against its
        directory, every named file checked to be there (SecretsConfigError naming
        FILE:LINE:KEY)."""
        path = Path(path).resolve()
        return cls.parse(read_text(path, SecretsConfigError, "the configuration"), path)


_WILDCARDS = ("0.0.0.0", "[::]", "")
_LISTEN_LINE = re.compile(r'(?m)^(listen\s*=\s*")(0\.0\.0\.0|\[::\]|)(:[0-9]+")[ \t]*$')


def restrict_listen(text: str, host: str) -> str:
    """secrets.toml's *text* with its wildcard ``listen`` hosts (``[server]``, ``[grsecret]``)
    replaced by *host*, every other byte kept (a plain-process simulation serves on loopback
    only). ValueError unless the result reads as the original with only those hosts changed
    (e.g. a listen in an inline table the line rewrite cannot reach)."""
    import tomllib

    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    expected = tomllib.loads(text)
    for table in ("server", "grsecret"):
        listen = expected.get(table, {}).get("listen")
        if isinstance(listen, str):
            current, _, port = listen.rpartition(":")
            if current in _WILDCARDS:
                expected[table]["listen"] = f"{host}:{port}"
    rewritten = _LISTEN_LINE.sub(lambda m: f"{m.group(1)}{host}{m.group(3)}", text)
    if tomllib.loads(rewritten) != expected:
        raise ValueError(f"cannot restrict the listen addresses to {host}")
    return rewritten


def split_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:4433"`` / ``"[::]:4433"`` -> (host, port); ValueError if not HOST:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _split_listen(value: Any, where: KeyPath, problems: list[Problem]) -> tuple[str, int]:
    if not isinstance(value, str):
        return "", 0
    try:
        return split_listen(value)
    except ValueError as exc:
        problems.append(Problem(where, str(exc)))
        return "", 0


def _file(base: Path, value: str | None) -> Path | None:
    return None if value is None else base / value


def _exists(path: Path | None, where: KeyPath, problems: list[Problem]) -> None:
    if path is not None and not bad(problems, where) and not path.is_file():
        problems.append(Problem(where, f"file not found: {path}"))


def _build(
    data: dict[str, Any], v: dict[str, Any], base: Path, path: Path, problems: list[Problem]
) -> SecretsConfig | None:
    """The typed configuration, and the problems no single key shows."""
    srv, att = v["server"] or {}, v["attestation"] or {}
    written_srv = data["server"] if isinstance(data["server"], dict) else {}
    host, port = _split_listen(srv.get("listen"), ("server", "listen"), problems)
    identity = srv.get("identity") or "ca-cert"
    if identity == "ratls":
        for name in ("cert", "key"):
            if name in written_srv:
                problems.append(
                    Problem(
                        ("server", name),
                        'not used with identity = "ratls" '
                        "(the server makes its own RA-TLS certificate); "
                        "remove it",
                    )
                )
    else:
        for name in ("cert", "key"):
            if name not in written_srv:
                problems.append(
                    Problem(
                        ("server", name),
                        'required key is missing (or set identity = "ratls" inside an enclave)',
                    )
                )
            else:
                _exists(_file(base, srv.get(name)), ("server", name), problems)
    audit = srv.get("audit_log")
    processes = srv.get("processes") or available_cores()
    server = ServerSettings(
        host,
        port,
        _file(base, srv.get("cert")) if identity == "ca-cert" else None,
        _file(base, srv.get("key")) if identity == "ca-cert" else None,
        srv.get("max_connections") or 1024,
        srv.get("max_connections_per_peer") or 64,
        srv.get("workers") or 128,
        srv.get("timeout") or 10.0,
        srv.get("max_tls") or "1.3",
        audit if audit in (None, "-") else str(base / audit),
        processes,
        identity,
    )

    if (att.get("collateral") is None) == (att.get("pccs_url") is None) and not bad(
        problems, ("attestation", "collateral"), ("attestation", "pccs_url")
    ):
        problems.append(
            Problem(("attestation",), "give exactly one of collateral (a file) and pccs_url")
        )
    root = att.get("root_ca") or "intel"
    root_ca = None if root == "intel" else base / root
    _exists(root_ca, ("attestation", "root_ca"), problems)
    if att.get("allow_debug"):
        problems.append(
            Problem(
                ("attestation", "allow_debug"),
                "allow_debug was requested, but the quote verifier (dcap-qvl's "
                "Python binding) always rejects DEBUG enclaves: this verifier "
                "cannot honour that allowance",
            )
        )
    allowed = att.get("allowed_advisories")
    tcb = TcbPolicy(
        frozenset(att.get("allowed_tcb_statuses") or ["UpToDate"]),
        frozenset(allowed) if allowed is not None else None,
        frozenset(att.get("denied_advisories") or ()),
        False,
    )
    attestation = AttestationSettings(
        root_ca,
        _file(base, att.get("collateral")),
        att.get("pccs_url"),
        tcb,
        att.get("pccs_timeout") or 10.0,
        att.get("verification_cache") is not False,
    )

    upload = None
    if v["upload"] is not None and "upload" in data:
        owners = v["upload"].get("owners") or []
        upload = UploadSettings(tuple(base / o for o in owners))
        for index, owner in enumerate(upload.owners):
            _exists(owner, ("upload", "owners", index), problems)
        if processes != 1 and not bad(problems, ("server", "processes")):
            problems.append(
                Problem(
                    ("server", "processes"),
                    "must be 1 with [upload] (uploaded keys live in one process's memory)",
                )
            )
    rules = []
    for index, item in enumerate(v["secrets"] or []):
        where = ("secrets", index)
        if not item:
            continue
        file = None
        if item.get("file") is not None:
            file = base / item["file"]
            _exists(file, where + ("file",), problems)
        elif upload is None and not bad(problems, where + ("file",)):
            problems.append(
                Problem(
                    where + ("file",),
                    "required key is missing (or list the owners who upload it in [upload])",
                )
            )
        requested_as = item.get("requested_as")
        if requested_as == "":
            problems.append(
                Problem(
                    where + ("requested_as",),
                    "empty; give the name a GrSecret client asks for (e.g. "
                    '"image_key"), or leave it out',
                )
            )
        if (
            item.get("encoding") == "hex-dashes"
            and file is not None
            and file.is_file()
            and file.stat().st_size != KEY_SIZE
        ):
            problems.append(
                Problem(
                    where + ("file",),
                    f"{file} has {file.stat().st_size} bytes; "
                    f'encoding "hex-dashes" needs a {KEY_SIZE}-byte key',
                )
            )
        rules.append(
            SecretRule(
                item.get("name") or "",
                file,
                tuple(item.get("allow") or ()),
                item.get("match") or "mr_enclave",
                item.get("encoding") or "raw",
                requested_as,
            )
        )

    grsecret = None
    if v["grsecret"] is not None and "grsecret" in data:
        g = v["grsecret"]
        ghost, gport = _split_listen(g.get("listen"), ("grsecret", "listen"), problems)
        grsecret = GrSecretSettings(
            ghost,
            gport,
            _file(base, g.get("client_ra_config")),
            g.get("idle") or 2.0,
            g.get("max_requests") or 32,
        )
        _exists(grsecret.client_ra_config, ("grsecret", "client_ra_config"), problems)
        wildcard = {"", "0.0.0.0", "::"}  # all addresses: overlaps any host with that port
        if (
            gport == port != 0
            and (ghost == host or {ghost, host} & wildcard)
            and not bad(problems, ("grsecret", "listen"), ("server", "listen"))
        ):
            problems.append(
                Problem(
                    ("grsecret", "listen"),
                    f"port {gport} is also server.listen's; GrSecret needs a port of its own",
                )
            )
    issuer = None
    if v["issuer"] is not None and "issuer" in data:
        i = v["issuer"]
        if i.get("cert") is not None and i.get("key") is not None:
            issuer = IssuerSettings(base / i["cert"], base / i["key"], i.get("lifetime") or 86400)
            _exists(issuer.cert, ("issuer", "cert"), problems)
            _exists(issuer.key, ("issuer", "key"), problems)
    measurements = tuple(v["measurements"] or ())
    return SecretsConfig(
        path, server, attestation, measurements, tuple(rules), upload, grsecret, issuer
    )


__all__ = [
    "SecretsConfig",
    "SecretsConfigError",
    "ServerSettings",
    "AttestationSettings",
    "GrSecretSettings",
    "UploadSettings",
    "IssuerSettings",
    "SecretRule",
    "ENCODINGS",
    "KEY_SIZE",
    "IDENTITIES",
    "MAX_TLS",
    "RULE",
    "SERVER",
    "ATTESTATION",
    "UPLOAD",
    "GRSECRET",
    "ISSUER",
    "ISSUER_MIN_LIFETIME",
    "ISSUER_MAX_LIFETIME",
    "SCHEMA",
    "hex_dashes",
    "available_cores",
    "split_listen",
    "restrict_listen",
    "TcbPolicy",
]
