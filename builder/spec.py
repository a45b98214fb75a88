"""spec.toml: parsing and validation into typed dataclasses.

Every problem is reported as ``FILE:LINE: KEY: what is wrong; allowed: ...``; all problems of a
spec are collected and raised together in one :class:`SpecError` (exit code 2). Nothing is
written while loading a spec.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enclave_build.contract.deploy import DEPLOY, DeploySpec
from enclave_build.contract.locate import KeyLocator
from enclave_build.contract.schema import Field, Problem, Section, did_you_mean, validate_section

from . import server_trust, spec_clients
from .deploy.settings import check_deploy
from .errors import UsageError
from .plan import ServerTrust
from .trim import ENTRY_DOC, ENTRY_PATTERN, entry_problem

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL_DOC = "lower-case letters, digits and '-', at most 63 characters (a DNS label)"
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_MODEL_NAME_DOC = "letters, digits, '_', '.' and '-', starting with a letter or digit"
HOSTPORT = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}"
_KEY_NAME = r"[A-Za-z0-9_-]{1,64}"

SERVICE = Section(
    "service",
    "what is served and how",
    (
        Field(
            "name",
            "str",
            "the service's name, used for image and key names",
            required=True,
            pattern=DNS_LABEL,
            pattern_doc=DNS_LABEL_DOC,
        ),
        Field("framework", "str", "the serving framework plugin, e.g. tfserving", required=True),
        Field("libos", "str", "the library OS that runs the enclave", default="gramine"),
    ),
    required=True,
)

MODELS = Section(
    "models",
    "the models to serve",
    (
        Field(
            "name",
            "str",
            "the model's name as clients address it",
            required=True,
            pattern=MODEL_NAME,
            pattern_doc=_MODEL_NAME_DOC,
        ),
        Field("path", "path", "a model file or directory on the build machine", required=True),
        Field(
            "encrypt", "bool", "ship the model encrypted (Gramine protected files)", default=True
        ),
        Field("version", "int", "the model version served", default=1, minimum=1),
        Field(
            "key",
            "str",
            "name of the wrap key for this model (default: SERVICE-key); frameworks "
            'that run a binary (tfserving, openvino mode "ovms") allow one key per service',
            pattern=_KEY_NAME,
            pattern_doc="letters, digits, '_' and '-', at most 64 characters",
        ),
        Field(
            "max_queue",
            "int",
            'enclave-build\'s model server (tflite, openvino mode "python"): '
            "requests that may wait for this model's instances, beyond them refused at once "
            "(default: the model's share of the server's queue, 256, in proportion to its "
            "instances)",
            minimum=0,
            maximum=65536,
        ),
        Field(
            "clients",
            "list[str]",
            "enclave-build's model server: the only clients that may use this model, after "
            'mutual TLS ([tls] client_ca): "sha256:HEX" (SHA-256 of the client certificate\'s '
            'DER SubjectPublicKeyInfo) or "CN=NAME" (its subject\'s common name); others get '
            "403 / PERMISSION_DENIED (unset: every client TLS accepts)",
            min_items=1,
        ),
    ),
    array=True,
)

ENCLAVE = Section(
    "enclave",
    "enclave resources and identity",
    (
        Field("size", "size", "enclave size, a power of two (framework default if unset)"),
        Field("max_threads", "int", "maximum enclave threads", minimum=4, maximum=4096),
        Field("edmm", "bool", "use SGX2 EDMM (dynamic memory)", default=False),
        Field(
            "debug",
            "bool",
            "build a DEBUG enclave (insecure: memory readable by the host)",
            default=False,
        ),
        Field(
            "isv_prod_id",
            "int",
            "ISV product id in SIGSTRUCT",
            default=0,
            minimum=0,
            maximum=0xFFFF,
        ),
        Field(
            "isv_svn",
            "int",
            "ISV security version number in SIGSTRUCT",
            default=0,
            minimum=0,
            maximum=0xFFFF,
        ),
        Field(
            "log_level",
            "str",
            'Gramine\'s log level (loader.log_level, measured); "warning" '
            "also reports files the manifest does not trust",
            default="error",
            choices=("none", "error", "warning", "debug", "trace", "all"),
        ),
        Field(
            "trim",
            "list[str]",
            "Gramine: image paths left out of the trusted files (measured): a file, a "
            "directory ending in '/', or a glob (*, ?, [...], ** for any depth); the LibOS "
            "refuses to open them. `enclave-build profile --write` writes the files a run never "
            "opened",
            item_pattern=ENTRY_PATTERN,
            item_doc=ENTRY_DOC,
        ),
    ),
)

IMAGE = Section(
    "image",
    "the base image and the image to produce",
    (
        Field(
            "base",
            "str",
            "base image reference (framework default if unset); the path of a "
            "local one (dir:, oci:, oci-archive:, docker-archive:) is relative to the spec's "
            "directory",
        ),
        Field("tag", "str", "name:tag of the image to produce (default: SERVICE:latest)"),
    ),
)

SIGNING = Section(
    "signing",
    "how the SIGSTRUCT is signed",
    (
        Field("key", "path", "RSA-3072 (e=3) PEM private key"),
        Field(
            "passphrase_env",
            "str",
            "environment variable holding the key's passphrase",
            pattern=r"[A-Za-z_][A-Za-z0-9_]*",
            pattern_doc="an environment variable name",
        ),
        Field("public_key", "path", "public key PEM, for external (HSM/KMS) signing"),
        Field("signature", "path", "detached signature over sigstruct.tbs, for external signing"),
        Field(
            "date",
            "str",
            "SIGSTRUCT date, YYYY-MM-DD or 0000-00-00 (reproducible)",
            default="0000-00-00",
            pattern=r"\d{4}-\d{2}-\d{2}",
            pattern_doc='"YYYY-MM-DD" or "0000-00-00"',
        ),
    ),
    required=True,
)

SECRETS = Section(
    "secrets",
    "where the enclave fetches its keys at start-up",
    (
        Field(
            "server",
            "str",
            "secret server HOST:PORT",
            pattern=HOSTPORT,
            pattern_doc='"HOST:PORT", e.g. "secrets.example.com:4433"',
        ),
        Field("ca", "path", "PEM CA certificate that signed the secret server's TLS certificate"),
        Field(
            "keys_dir",
            "path",
            "where wrap keys are read from, or created (mode 0600) when missing; "
            "never inside the image or the output",
            default="keys",
            must_exist=False,
        ),
    )
    + server_trust.FIELDS,
)  # server_measurements & co.: an attested secret server (instead of ca)

#: Who issues the served endpoint's certificate (model-server.json ``tls.issuer``).
TLS_ISSUERS = ("secret-server", "self", "file")

TLS = Section(
    "tls",
    "TLS for the served endpoint",
    (
        Field(
            "issuer",
            "str",
            '"secret-server" (default): a key made in the enclave, certified by the secret '
            'server after attestation; "self": a self-signed RA-TLS certificate; "file": '
            "cert and key (ship encrypted; the default when they are given)",
            choices=TLS_ISSUERS,
            default_doc='"secret-server" ("file" when cert or key is given)',
        ),
        Field(
            "hosts",
            "list[str]",
            "DNS names and IP addresses the certificate names (issuers secret-server, self)",
            item_pattern=r"[^\s/@]+",
            item_doc="a DNS name or an IP address",
        ),
        Field("cert", "path", 'PEM certificate (chain) the model server presents (issuer "file")'),
        Field("key", "path", 'PEM private key of that certificate (issuer "file")'),
        Field(
            "client_ca",
            "path",
            "PEM CA certificate(s) clients' certificates must chain to: mutual TLS, a client "
            "without such a certificate is refused during the handshake (ships as a trusted, "
            "measured file; enclave-build's model server)",
        ),
    ),
)


def _seconds(name: str, doc: str) -> Field:
    return Field(
        name,
        "int",
        doc + " (seconds; the model server's default if unset)",
        minimum=1,
        maximum=3600,
    )


#: Limits of enclave-build's model server (model-server.json ``limits``; measured, so changing
#: one changes MRENCLAVE). Unset keys keep the server's defaults (enclave_build.contract.server_config.Limits).
LIMITS = Section(
    "limits",
    "limits of enclave-build's model server (tflite, openvino mode "
    '"python", third-party Python backends)',
    (
        Field(
            "max_request_bytes",
            "size",
            "largest request body / message (default 64M)",
            power_of_two=False,
        ),
        Field(
            "max_buffered_bytes",
            "size",
            "request bytes held at once, server-wide (default 4 x max_request_bytes)",
            power_of_two=False,
        ),
        Field(
            "max_concurrent_requests",
            "int",
            "requests admitted at once besides the queue (default 64)",
            minimum=1,
            maximum=65536,
        ),
        Field(
            "max_queue",
            "int",
            "requests that may wait, server-wide (default 256; each model "
            "gets a share, see [[models]] max_queue)",
            minimum=0,
            maximum=65536,
        ),
        Field(
            "max_connections",
            "int",
            "open REST connections (default 256)",
            minimum=1,
            maximum=65536,
        ),
        Field(
            "max_grpc_connections",
            "int",
            "open gRPC connections (default 1024)",
            minimum=1,
            maximum=65536,
        ),
        Field(
            "max_streams_per_connection",
            "int",
            "gRPC calls open at once on one connection (default 32)",
            minimum=1,
            maximum=1024,
        ),
        _seconds(
            "first_byte_timeout", "a new connection's first byte / gRPC handshake (default 5)"
        ),
        _seconds("header_timeout", "a REST request's header block (default 10)"),
        _seconds("body_timeout", "a whole request body / gRPC request message (default 60)"),
        _seconds(
            "body_stall_timeout",
            "the window min_body_rate is measured over: a REST body "
            "delivering less in one is refused (default 10)",
        ),
        _seconds("idle_timeout", "a keep-alive connection without requests (default 30)"),
        Field(
            "drain_seconds",
            "int",
            "on SIGTERM, how long admitted requests may take before the "
            "queued ones are answered 503 (default 20)",
            minimum=0,
            maximum=3600,
        ),
        Field(
            "max_response_bytes",
            "size",
            "largest answer (its output tensors) (default 4 x max_request_bytes)",
            power_of_two=False,
        ),
        Field(
            "max_json_bytes",
            "size",
            "largest JSON part of a REST request (default 4M; binary "
            "tensors are not limited by it)",
            power_of_two=False,
        ),
        Field(
            "min_body_rate",
            "size",
            "bytes per second a REST body must keep arriving at, over "
            "each body_stall_timeout window (default 32K)",
            power_of_two=False,
        ),
    ),
)

BUILD = Section(
    "build",
    "build behaviour",
    (
        Field(
            "reproducible",
            "bool",
            "derive protected-file node keys and nonces from the wrap key, "
            "path and content, so the same inputs give byte-identical encrypted files (reveals "
            "which files, or 4 KiB blocks at the same position, are equal)",
            default=False,
        ),
    ),
)

PROVENANCE = Section(
    "provenance",
    "signed build provenance (out/provenance.dsse.json); without this section none is written",
    (
        Field(
            "key",
            "path",
            "ECDSA P-256 PEM private key (unencrypted, mode 0600) that signs the provenance",
            required=True,
        ),
    ),
)

CORE_SECTIONS = (
    SERVICE,
    MODELS,
    ENCLAVE,
    IMAGE,
    SIGNING,
    SECRETS,
    TLS,
    LIMITS,
    BUILD,
    DEPLOY,
    PROVENANCE,
)


def _keyless(section: Section) -> Section:
    """*section* with no path of it required to exist (its files are private keys)."""
    fields = tuple(replace(f, must_exist=False) if f.kind == "path" else f for f in section.fields)
    return replace(section, fields=fields)


#: The core sections for a spec loaded without its private keys (``load_spec(...,
#: private_keys=False)``): the files ``[signing]`` and ``[provenance]`` name need not exist.
KEYLESS_SECTIONS = tuple(_keyless(s) if s in (SIGNING, PROVENANCE) else s for s in CORE_SECTIONS)


@dataclass(frozen=True)
class SectionContext:
    """What a plugin's section check may read besides its own section's values: the spec's
    directory (relative paths resolve against it) and the validated values of the core sections,
    for rules across sections (e.g. ``core["enclave"]["edmm"]``)."""

    base_dir: Path
    core: Mapping[str, Any]


#: Turns a plugin section's validated values into the object the plugin reads from the plan,
#: appending a located :class:`~enclave_build.contract.schema.Problem` for each value it cannot use.
SectionOptions = Callable[[Mapping[str, Any], SectionContext, list[Problem]], Any]


@dataclass(frozen=True)
class LibOSSection:
    """What a libOS backend declares about specs (from its ``LibOS`` object): its own section,
    validated like every other section and allowed only when ``service.libos`` selects the
    backend; *options*, which turns the validated values into the object the backend reads
    (:attr:`Spec.libos_options`, copied to the plan); and *secrets_ca*: whether the enclave
    checks its secret server against ``[secrets] ca`` (False where the libOS verifies the
    server by its quote itself, as Occlum's init does)."""

    section: Section | None = None
    options: SectionOptions | None = None
    secrets_ca: bool = True


class SpecError(UsageError):
    """A spec failed to parse or validate; carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for p in self.problems:
            where = f"{self.source}:{p.line}" if p.line else self.source
            key = f" {p.key}:" if p.path else ""
            out.append(f"{where}:{key} {p.message}")
        return out


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    framework: str
    libos: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    encrypt: bool
    version: int
    key: str | None
    max_queue: int | None = None  # enclave-build's model server only
    #: The only clients that may use the model, as written (contract.client_access entries);
    #: None: every client the TLS layer accepts. enclave-build's model server only.
    clients: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EnclaveSpec:
    size: int | None  # bytes; None = framework default
    max_threads: int | None  # None = framework default
    edmm: bool
    debug: bool
    isv_prod_id: int
    isv_svn: int
    log_level: str = "error"  # Gramine loader.log_level (part of the measured manifest)
    #: [enclave] trim: image paths left out of the trusted files (builder.trim), as written
    trim: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    base: str | None
    tag: str | None


@dataclass(frozen=True)
class SigningSpec:
    key: Path | None
    passphrase_env: str | None
    public_key: Path | None
    signature: Path | None
    date: str

    @property
    def external(self) -> bool:
        return self.public_key is not None


@dataclass(frozen=True)
class SecretsSpec:
    server: str | None
    ca: Path | None
    keys_dir: Path
    server_trust: ServerTrust | None = None  # [secrets] server_measurements (builder.server_trust)


@dataclass(frozen=True)
class TLSSpec:
    """``[tls]``: *issuer* "file" serves *cert*/*key*; "secret-server" and "self" make the key in
    the enclave and name *hosts* in the certificate. *client_ca*: mutual TLS, the CA bundle
    client certificates chain to."""

    cert: Path | None
    key: Path | None
    issuer: str = "file"
    hosts: tuple[str, ...] = ()
    client_ca: Path | None = None


@dataclass(frozen=True)
class BuildSpec:
    reproducible: bool


@dataclass(frozen=True)
class ProvenanceSpec:
    key: Path  # ECDSA P-256 PEM private key


@dataclass(frozen=True)
class Spec:
    """A validated spec.toml. ``plugin_sections`` holds the framework's and the libOS
    backend's own sections, validated against the schemas their plugins declared (keys the
    file does not set carry their defaults)."""

    path: Path
    service: ServiceSpec
    models: tuple[ModelSpec, ...]
    enclave: EnclaveSpec
    image: ImageSpec
    signing: SigningSpec
    secrets: SecretsSpec
    tls: TLSSpec | None = None
    build: BuildSpec = BuildSpec(False)
    #: The chosen libOS backend's options from its own section (what its LibOSSection.options
    #: made of the validated values, else those values); None when it declares no section.
    libos_options: Any = None
    #: [deploy]: how `enclave-build k8s` runs it (copied into the build's service.json).
    deploy: DeploySpec = field(default_factory=DeploySpec)
    plugin_sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: [limits] as written (keys the spec sets only; None when the section is absent).
    limits: Mapping[str, int] | None = None
    #: [provenance]: who signs the build provenance; None: no provenance is written.
    provenance: ProvenanceSpec | None = None

    @property
    def directory(self) -> Path:
        return self.path.parent

    def section(self, name: str) -> Mapping[str, Any]:
        """A plugin-declared section's validated values (defaults if absent from the file)."""
        return self.plugin_sections.get(name, {})


_LOCAL_BASES = ("dir:", "oci:", "oci-archive:", "docker-archive:")


def local_base(reference: str | None, directory: Path) -> str | None:
    """[image] base with the relative path of a local base (``dir:ROOTFS``, ``oci:DIR[:TAG]``,
    ``oci-archive:FILE``, ``docker-archive:FILE``) made absolute against the spec's
    *directory*, like every other path of a spec; other references unchanged."""
    if reference is None:
        return None
    for transport in _LOCAL_BASES:
        if reference.startswith(transport):
            location = reference[len(transport) :]
            if location and not location.startswith("/"):
                return transport + str(directory / location)
            return reference
    return reference


def _nearby_spec(path: Path) -> str:
    """ "; did you mean DIR/spec.toml?" for a mistyped spec name whose directory holds one."""
    try:
        names = sorted(p.name for p in path.parent.glob("*.toml") if p.name != "pyproject.toml")
    except OSError:
        return ""
    hint = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f"; did you mean {path.with_name(hint[0])}?" if hint else ""


def load_spec(
    path: str | Path,
    frameworks: Mapping[str, Section | None],
    libos_names: Mapping[str, LibOSSection] | Sequence[str] = ("gramine",),
    *,
    missing_note: str = "",
    private_keys: bool = True,
    tls_refusals: Mapping[str, str] | None = None,
) -> Spec:
    """Read and validate *path*.

    *frameworks* maps each installed framework's name to the section schema it declares (or
    None); *libos_names* are the installed libOS backends: names, or each name mapped to what
    the backend declares about specs (:class:`LibOSSection`). *missing_note* is added to the
    error for a framework or libOS that is not installed (the plugins that failed to load).
    *private_keys* False: the key files of ``[signing]`` and ``[provenance]`` need not exist
    and are not read (a rebuild that verifies a published build, whose checker holds no
    private key). *tls_refusals*: framework name -> why ``[tls]`` does not apply to it (a
    ``[tls]`` section is then a problem with that message, its keys not checked further).
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, [Problem((), "spec file not found" + _nearby_spec(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [Problem((), f"cannot read spec: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise SpecError(source, [Problem((), f"invalid TOML: {exc}", line)]) from None
    return spec_from_dict(
        data,
        path.resolve(),
        frameworks,
        libos_names,
        KeyLocator(text),
        source,
        missing_note=missing_note,
        private_keys=private_keys,
        tls_refusals=tls_refusals,
    )


def _tls_refusal(data: Mapping[str, Any], refusals: Mapping[str, str]) -> str | None:
    """Why ``[tls]`` does not apply to the spec's framework (None: it applies)."""
    service = data.get("service")
    framework = service.get("framework") if isinstance(service, dict) else None
    if not isinstance(framework, str):
        return None
    return refusals.get(framework)


def _line_from_message(message: str) -> int | None:
    match = re.search(r"at line (\d+)", message)
    return int(match.group(1)) if match else None


def spec_from_dict(
    data: dict[str, Any],
    path: Path,
    frameworks: Mapping[str, Section | None],
    libos_names: Mapping[str, LibOSSection] | Sequence[str],
    locator: KeyLocator | None = None,
    source: str | None = None,
    *,
    missing_note: str = "",
    private_keys: bool = True,
    tls_refusals: Mapping[str, str] | None = None,
) -> Spec:
    base_dir = path.parent
    problems: list[Problem] = []
    backends = (
        dict(libos_names)
        if isinstance(libos_names, Mapping)
        else {name: LibOSSection() for name in libos_names}
    )
    libos_names = tuple(backends)
    plugin_sections = {name: sec for name, sec in frameworks.items() if sec is not None}
    libos_sections = {
        name: info.section for name, info in backends.items() if info.section is not None
    }
    known = [s.name for s in CORE_SECTIONS] + sorted(
        set(plugin_sections) | {s.name for s in libos_sections.values()}
    )

    for key in data:
        if key not in known:
            problems.append(
                Problem(
                    (key,),
                    f"unknown section; {did_you_mean(key, known)}allowed: {', '.join(known)}",
                )
            )

    refusal = _tls_refusal(data, tls_refusals or {})
    if refusal is not None and "tls" in data:  # one problem; its keys would only mislead
        problems.append(Problem(("tls",), refusal))
        data = {key: value for key, value in data.items() if key != "tls"}
    sections = CORE_SECTIONS if private_keys else KEYLESS_SECTIONS
    values = {s.name: validate_section(s, data.get(s.name), base_dir, problems) for s in sections}
    service, models, signing = values["service"], values["models"], values["signing"]
    libos = service.get("libos")
    backend_values = _libos_section(libos, libos_sections, data, base_dir, problems)

    framework = service.get("framework")
    if isinstance(framework, str) and framework not in frameworks:
        names = sorted(frameworks)
        problems.append(
            Problem(
                ("service", "framework"),
                f"{framework!r} is not an installed framework; "
                f"{did_you_mean(framework, names)}allowed: {', '.join(names)} "
                f"(see `enclave-build plugins`){missing_note}",
            )
        )
    if isinstance(libos, str) and libos not in libos_names:
        problems.append(
            Problem(
                ("service", "libos"),
                f"{libos!r} is not an installed libOS backend; "
                f"{did_you_mean(libos, list(libos_names))}"
                f"allowed: {', '.join(libos_names)}{missing_note}",
            )
        )

    seen: dict[str, int] = {}
    for index, model in enumerate(models):
        name = model.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    Problem(
                        ("models", index, "name"),
                        f"duplicate model name {name!r} (also models[{seen[name]}])",
                    )
                )
            seen.setdefault(name, index)

    _check_signing(signing, problems)
    spec_clients.check(
        models,
        values["tls"],
        "tls" in data,
        problems,
        no_tls=framework if refusal is not None and isinstance(framework, str) else None,
    )
    _check_tls(values["tls"], data.get("tls"), problems)
    if (
        private_keys
        and values["signing"].get("key") is not None
        and ("signing", "key") not in {p.path for p in problems}
    ):
        from .gramine.signer import signing_key_problem

        problem = signing_key_problem(values["signing"]["key"])
        if problem is not None:
            problems.append(Problem(("signing", "key"), problem))
    if private_keys and "provenance" in data and values["provenance"].get("key") is not None:
        from .provenance_key import key_problem

        problem = key_problem(values["provenance"]["key"])
        if problem is not None:
            problems.append(Problem(("provenance", "key"), problem))
    backend = backends.get(libos) if isinstance(libos, str) else None
    _check_secrets(
        values["secrets"],
        models,
        data,
        problems,
        secrets_ca=backend.secrets_ca if backend is not None else True,
    )
    trust = server_trust.check(
        values["secrets"],
        data.get("secrets"),
        libos,
        base_dir,
        problems,
        libos_section=(
            backend.section.name
            if backend is not None and not backend.secrets_ca and backend.section is not None
            else None
        ),
    )
    libos_options = backend_values
    if backend is not None and backend.options is not None and backend_values is not None:
        libos_options = backend.options(backend_values, SectionContext(base_dir, values), problems)
    check_deploy(values["deploy"], values["enclave"], problems)
    _check_trim(values["enclave"].get("trim"), libos, problems)
    if isinstance(values["image"].get("tag"), str):  # a name `--push`/`--load` can use
        from .image.reference import parse_registry_ref

        try:
            parse_registry_ref(values["image"]["tag"])
        except UsageError as exc:
            problems.append(Problem(("image", "tag"), str(exc)))

    plugin_values: dict[str, Mapping[str, Any]] = {}
    for name, section in plugin_sections.items():
        # (with service.framework missing, that error alone is the one to report)
        if name in data and name != framework and framework is not None:
            problems.append(
                Problem(
                    (name,),
                    f"section [{name}] belongs to framework {name!r}, "
                    f"but service.framework is {framework!r}",
                )
            )
            continue
        if name == framework:
            plugin_values[name] = validate_section(section, data.get(name), base_dir, problems)
    if backend_values is not None:
        plugin_values[libos_sections[libos].name] = backend_values

    if problems:
        if locator is not None:
            problems = [
                Problem(p.path, p.message, p.line or locator.line(p.path)) for p in problems
            ]
        raise SpecError(source or str(path), problems)

    enclave, image, secrets = values["enclave"], values["image"], values["secrets"]
    return Spec(
        path=path,
        service=ServiceSpec(service["name"], service["framework"], service["libos"]),
        models=tuple(
            ModelSpec(
                m["name"],
                m["path"],
                m["encrypt"],
                m["version"],
                m["key"],
                m["max_queue"],
                tuple(m["clients"]) if m["clients"] is not None else None,
            )
            for m in models
        ),
        enclave=EnclaveSpec(
            enclave["size"],
            enclave["max_threads"],
            enclave["edmm"],
            enclave["debug"],
            enclave["isv_prod_id"],
            enclave["isv_svn"],
            enclave["log_level"],
            tuple(enclave["trim"] or ()),
        ),
        image=ImageSpec(local_base(image["base"], path.parent), image["tag"]),
        signing=SigningSpec(
            signing["key"],
            signing["passphrase_env"],
            signing["public_key"],
            signing["signature"],
            signing["date"],
        ),
        secrets=SecretsSpec(secrets["server"], secrets["ca"], secrets["keys_dir"], trust),
        tls=_tls_spec(values["tls"]) if "tls" in data else None,
        build=BuildSpec(values["build"]["reproducible"]),
        libos_options=libos_options,
        deploy=DeploySpec.from_values(values["deploy"]),
        plugin_sections=plugin_values,
        limits=(
            {k: v for k, v in values["limits"].items() if v is not None}
            if "limits" in data
            else None
        ),
        provenance=(ProvenanceSpec(values["provenance"]["key"]) if "provenance" in data else None),
    )


def _check_trim(trim: Any, libos: Any, problems: list[Problem]) -> None:
    """[enclave] trim: well-formed entries, and a libOS with per-file trust (Gramine)."""
    if not isinstance(trim, list) or not trim:
        return
    if isinstance(libos, str) and libos != "gramine":
        problems.append(
            Problem(
                ("enclave", "trim"),
                f"service.libos {libos!r} has no per-file trusted list to trim (Gramine only); "
                "remove [enclave] trim",
            )
        )
        return
    for index, entry in enumerate(trim):
        problem = entry_problem(entry) if isinstance(entry, str) else None
        if problem is not None:
            problems.append(Problem(("enclave", "trim", index), problem))


def tls_issuer(tls: Mapping[str, Any]) -> str:
    """The issuer a ``[tls]`` table means: as written, else "file" when it names a certificate
    or key (specs written before issuers existed), else "secret-server"."""
    issuer = tls.get("issuer")
    if isinstance(issuer, str):
        return issuer
    return "file" if tls.get("cert") is not None or tls.get("key") is not None else "secret-server"


def _tls_spec(values: Mapping[str, Any]) -> TLSSpec:
    return TLSSpec(
        values["cert"],
        values["key"],
        tls_issuer(values),
        tuple(values["hosts"] or ()),
        values["client_ca"],
    )


def _check_tls(tls: Mapping[str, Any], written: Any, problems: list[Problem]) -> None:
    """What [tls] needs for its issuer (see :func:`tls_issuer`)."""
    if not isinstance(written, dict) or ("tls", "issuer") in {p.path for p in problems}:
        return
    issuer = tls_issuer(tls)
    if issuer == "file":
        for name in ("cert", "key"):
            if name not in written:
                problems.append(
                    Problem(
                        ("tls", name),
                        'required with issuer = "file" (or let the enclave make its key: '
                        'issuer = "secret-server" and hosts = [...])',
                    )
                )
        if "hosts" in written:
            problems.append(
                Problem(
                    ("tls", "hosts"),
                    'not with issuer = "file": the certificate file names its hosts',
                )
            )
        return
    for name in ("cert", "key"):
        if name in written:
            problems.append(
                Problem(
                    ("tls", name),
                    f'not with issuer = "{issuer}": the key pair is made inside the enclave '
                    '(issuer = "file" serves a provisioned certificate and key)',
                )
            )
    hosts = tls.get("hosts")
    if not hosts and not any(p.path[:2] == ("tls", "hosts") for p in problems):
        problems.append(
            Problem(
                ("tls", "hosts"),
                f'required with issuer = "{issuer}": the DNS names and IP addresses clients '
                'connect to, e.g. hosts = ["models.example.com", "10.0.0.5"]',
            )
        )
    for index, host in enumerate(hosts or []):
        if not _host_ok(host):
            problems.append(
                Problem(("tls", "hosts", index), f"{host!r} is not a DNS name or an IP address")
            )


def _host_ok(host: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    return bool(
        re.fullmatch(
            r"(?=.{1,253}\Z)(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
            r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
            host,
        )
    )


def _libos_section(
    libos: Any,
    sections: Mapping[str, Section],
    data: dict[str, Any],
    base_dir: Path,
    problems: list[Problem],
) -> dict[str, Any] | None:
    """The chosen libOS backend's own section, validated (None when it declares none); the
    section of another installed backend is a located problem."""
    for name, section in sections.items():
        if section.name in data and name != libos:
            problems.append(
                Problem(
                    (section.name,),
                    f"[{section.name}] applies only to "
                    f'service.libos = "{name}" (this spec\'s libos is '
                    f"{libos!r})",
                )
            )
    if not isinstance(libos, str) or libos not in sections:
        return None
    return validate_section(sections[libos], data.get(sections[libos].name), base_dir, problems)


def _check_secrets(
    secrets: dict[str, Any],
    models: list[dict[str, Any]],
    data: dict[str, Any],
    problems: list[Problem],
    *,
    secrets_ca: bool = True,
) -> None:
    """Encrypted content needs a secret server to get its keys from. (How many keys one service
    may use is the framework's rule: see builder.planning.require_one_key.) *secrets_ca*: the
    enclave checks the server against ``[secrets] ca`` (not where the libOS verifies the server
    by its quote, e.g. Occlum's init with ``[occlum] server_measurements``)."""
    encrypted = [i for i, m in enumerate(models) if m.get("encrypt")]
    tls = data.get("tls")
    needs_key = encrypted or (
        isinstance(tls, dict) and tls_issuer(tls) in TLS_ISSUERS and tls_issuer(tls) != "self"
    )
    if (
        secrets_ca
        and secrets.get("server")
        and secrets.get("ca") is None
        and ("secrets", "ca") not in {p.path for p in problems}
        and "server_measurements"
        not in (data["secrets"] if isinstance(data.get("secrets"), dict) else ())
    ):
        problems.append(
            Problem(
                ("secrets", "ca"),
                "required with secrets.server: the enclave "
                "checks the secret server's certificate against this CA",
            )
        )
    server = secrets.get("server")
    if isinstance(server, str) and not 1 <= int(server.rpartition(":")[2]) <= 65535:
        problems.append(
            Problem(
                ("secrets", "server"),
                f"port {int(server.rpartition(':')[2])} of {server!r} is out of "
                "range; allowed: 1 to 65535",
            )
        )
    if (
        needs_key
        and not secrets.get("server")
        and ("secrets", "server") not in {p.path for p in problems}
    ):
        where = ("models", encrypted[0], "encrypt") if encrypted else ("tls",)
        if encrypted or (isinstance(tls, dict) and tls_issuer(tls) == "file"):
            what = (
                "encrypted models need" if encrypted else "[tls] material ships encrypted and needs"
            )
            message = (
                f"{what} a key from the secret server at start-up: set "
                "[secrets] server and ca (or encrypt = false)"
            )
        else:
            message = (
                '[tls] issuer = "secret-server": the enclave gets its serving certificate '
                "from the secret server at start-up: set [secrets] server and ca (or "
                'issuer = "self" for a self-signed RA-TLS certificate)'
            )
        problems.append(Problem(where, message))


def _check_signing(signing: dict[str, Any], problems: list[Problem]) -> None:
    key, public_key = signing.get("key"), signing.get("public_key")
    already = {p.path for p in problems}
    if (
        key is None
        and public_key is None
        and not (
            ("signing", "key") in already
            or ("signing", "public_key") in already
            or ("signing",) in already
        )
    ):
        problems.append(
            Problem(
                ("signing",),
                "no signing key: set signing.key to an RSA-3072 "
                "PEM key (`enclave-build keygen --out FILE` makes "
                "one) or signing.public_key for external signing",
            )
        )
    if key is not None and public_key is not None:
        problems.append(
            Problem(
                ("signing", "public_key"),
                "give either signing.key (local signing) or signing.public_key "
                "(external signing), not both",
            )
        )
    if signing.get("signature") is not None and public_key is None:
        problems.append(
            Problem(("signing", "signature"), "a detached signature needs signing.public_key")
        )
    if signing.get("passphrase_env") is not None and key is None:
        problems.append(
            Problem(("signing", "passphrase_env"), "passphrase_env only applies to signing.key")
        )
    date = signing.get("date")
    if isinstance(date, str) and date != "0000-00-00" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        try:
            _dt.date.fromisoformat(date)
        except ValueError:
            problems.append(
                Problem(
                    ("signing", "date"),
                    f'{date!r} is not a calendar date; allowed: "YYYY-MM-DD" or "0000-00-00"',
                )
            )
