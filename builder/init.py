"""``enclave-build init``: a project directory for the user's own model.

:func:`init_project` writes ``DIR/spec.toml`` (a commented spec for the chosen framework: the
framework's own section and ``[enclave]`` are generated from their schema fields, so the file
always shows the real keys, defaults and limits), ``DIR/keys/`` (mode 0700) holding a new SGX
signing key ``keys/enclave-key.pem`` (mode 0600) and an empty ``DIR/models/``. It never
overwrites a file: existing ones are named in a :class:`~builder.errors.UsageError` (exit 2);
``force`` replaces ``spec.toml`` only and keeps an existing key.

The spec is complete except for two things the user supplies: the model (``models/MODEL``, a
placeholder the spec check reports as "file not found" until it exists) and the secret server's
CA certificate (``tls/ca.pem``, from ``enclave-build secrets tls DIR/tls --host HOST`` or the
user's own CA), because models are encrypted by default and an encrypted model's key comes from
the secret server. ``model`` (``init --model PATH``) copies the model into ``models/`` and names
it, leaving only the CA. Framework ``secret-server`` (the secret server as an enclave) serves no
models and fetches no keys: its spec has neither, and its steps are an owner certificate and
the policies, the build, and the attested key upload.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError
from .plugin_types import Framework
from enclave_build.contract.schema import Field, Section, did_you_mean
from enclave_build.contract.size import Size
from .spec import _HOSTPORT, _NAME, _NAME_DOC, ENCLAVE

DEFAULT_FRAMEWORK = "tflite"
DEFAULT_SECRET_SERVER = "localhost:4433"
SPEC_NAME = "spec.toml"
KEY_PATH = "keys/enclave-key.pem"
MODEL_PLACEHOLDER = "models/MODEL"
CA_PATH = "tls/ca.pem"

# What to put at models/MODEL, per builtin framework (third-party ones get the generic text).
_MODEL_HINTS = {
    "tflite": "a .tflite file",
    "tfserving": "a TensorFlow SavedModel directory, saved_model.pb and variables/",
    "openvino": 'an OpenVINO IR .xml with its .bin next to it, an .onnx or a .tflite file; '
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
    next_steps: list["Step"] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "spec": str(self.spec), "key": str(self.key),
                "key_created": self.key_created, "framework": self.framework,
                "service": self.service, "secret_server": self.secret_server,
                "next_steps": [step.to_json() for step in self.next_steps]}


def installed_frameworks() -> dict[str, Framework]:
    from .plugins import PluginRegistry

    return PluginRegistry().frameworks


def choose_framework(name: str, frameworks: Mapping[str, Framework]) -> Framework:
    if name in frameworks:
        return frameworks[name]
    names = sorted(frameworks)
    hint = did_you_mean(name, names)
    if not hint and DEFAULT_FRAMEWORK in frameworks:
        hint = f"did you mean {DEFAULT_FRAMEWORK!r}? "
    raise UsageError(f"no such framework {name!r}; {hint}installed: "
                     f"{', '.join(names) or 'none'} (see `enclave-build plugins`)")


def service_name(directory: Path, name: str | None) -> str:
    """*name*, or the directory's name when it is a valid service name (a DNS label)."""
    if name is not None:
        if not re.fullmatch(_NAME, name):
            raise UsageError(f"--name {name!r} is not a valid service name; allowed: {_NAME_DOC}")
        return name
    derived = directory.resolve().name
    if re.fullmatch(_NAME, derived):
        return derived
    suggestion = re.sub(r"[^a-z0-9-]+", "-", derived.lower()).strip("-")[:63].strip("-") \
        or "my-service"
    raise UsageError(f"{directory}: the directory name {derived!r} is not a valid service name "
                     f"({_NAME_DOC}); name the service with --name, e.g. --name {suggestion}")


# --------------------------------------------------------------------------- rendering


def toml_value(value: Any) -> str:
    """One TOML value (inline), for the kinds spec fields have."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)   # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
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
    return textwrap.wrap(text, width=94, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


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


def _models_block(service: str, hint: str, model_path: str | None = None) -> list[str]:
    where = (["# the model file or directory (copied here by `init --model`)"] if model_path else
             _comment(f"PLACEHOLDER: put your model in models/ and name it here ({hint})"))
    return [
        "# One [[models]] table per model.",
        "[[models]]",
        "# the name clients address the model by",
        'name = "model"',
        *where,
        f"path = {toml_value(model_path or MODEL_PLACEHOLDER)}",
        "# ship it encrypted (Gramine protected file); its key is released at start-up by the",
        "# secret server, only to this enclave",
        "encrypt = true",
        "# version = 1",
        f"# key = {toml_value(service + '-key')}   # wrap-key name (default SERVICE-key)",
        "",
    ]


def _secrets_block(secret_server: str) -> list[str]:
    return [
        "[secrets]",
        "# the secret server (HOST:PORT) the enclave attests to at start-up to get its keys",
        f"server = {toml_value(secret_server)}",
        "# the CA of that server's TLS certificate: `enclave-build secrets tls tls --host HOST`",
        "# writes one, or name your organisation's CA. Built into the image: changing it",
        "# changes MRENCLAVE.",
        f"ca = {toml_value(CA_PATH)}",
        "# wrap keys (NAME.key) are read here, or created (mode 0600) on the first build that",
        "# needs them; never written into the image or the output",
        'keys_dir = "keys"',
        "",
    ]


def render_spec(framework: Framework, service: str,
                secret_server: str = DEFAULT_SECRET_SERVER,
                frameworks: tuple[str, ...] = (), model_path: str | None = None) -> str:
    """The commented spec.toml :func:`init_project` writes; *model_path* (relative to the spec)
    replaces the models/MODEL placeholder. A framework that serves no models (the secret
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
        "# written by `enclave-build init`. Every key is explained in the manual's spec.toml",
        "# reference (docs/reference/spec.md); relative paths are resolved against this file's",
        "# directory.",
        "# Keep keys/ private and out of version control.",
        "",
        "[service]",
        "# the service's name: a DNS label; names the image, the enclave and its keys",
        f"name = {toml_value(service)}",
        *_comment("the serving framework plugin; installed: "
                  + (", ".join(frameworks) if frameworks else framework.name)
                  + " (`enclave-build plugins`)"),
        f"framework = {toml_value(framework.name)}",
        "",
        *(_models_block(service, hint, model_path) if serves_models else []),
        "# Enclave resources and identity (the defaults of framework "
        f"{framework.name}); all of it is measured.",
        *render_section(ENCLAVE, enclave_values),
        "",
        "# [image]   # the base image (framework default below; `build --base` overrides)",
        f"# base = {toml_value(framework.default_base or '...')}",
        f"# tag = {toml_value(service + ':latest')}",
        "",
        *(_secrets_block(secret_server) if serves_models else []),
        "[signing]",
        "# the enclave signing key (RSA-3072, e=3; written by init, mode 0600): it is the",
        "# enclave's MRSIGNER. For an HSM/KMS set public_key instead (manual: External signing).",
        f"key = {toml_value(KEY_PATH)}",
        '# date = "0000-00-00"   # the zero date keeps SIGSTRUCTs reproducible',
    ]
    if framework.section is not None:
        values = {} if serves_models else {"owners": [OWNER_CERT]}
        lines += ["", f"# Options of framework {framework.name} (their defaults).",
                  *render_section(framework.section, values)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Step:
    what: str
    command: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "command": self.command}


def _build_step(d: str, framework: Framework) -> Step:
    runtimes = _STANDIN_RUNTIMES.get(framework.name)
    standin = "enclave-build base standin ROOTFS" + (f" --runtimes {runtimes}" if runtimes else "")
    return Step("Build: ROOTFS is a real Gramine base (`scripts/gramine-base.sh ROOTFS`, as root) "
                f"or the stand-in (`{standin}`: measures and signs, does not boot); without "
                f"--base the framework's {framework.default_base}",
                f"enclave-build build {d}/{SPEC_NAME} --base dir:ROOTFS --output {d}/out")


def next_steps(directory: Path, framework: Framework, secret_server: str,
               model_copied: bool = False) -> list[Step]:
    """What to run next; with *model_copied* (``init --model``) the model step is left out."""
    d = shlex.quote(str(directory))
    host = secret_server.rpartition(":")[0].strip("[]")
    if framework.name in _NO_MODELS:
        return [
            Step(f"In {d}/{SPEC_NAME} [secret-server], list the build directories of the model "
                 "enclaves it serves in policies and set collateral (a file) or pccs_url "
                 "(simulation: root_ca and collateral from `enclave-build secrets simulate-pki "
                 "PKI_DIR`, as in examples/secret-server/spec.toml); make the certificate of a "
                 f"key owner who may upload keys (owners = [\"{OWNER_CERT}\"])",
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                 f"-days 365 -subj '/CN=model owner' -keyout {d}/{OWNER_KEY} "
                 f"-out {d}/{OWNER_CERT} && chmod 600 {d}/{OWNER_KEY}"),
            _build_step(d, framework),
            Step("Start it (SGX: `docker run --device /dev/sgx_enclave ...`; here: `enclave-build "
                 f"run {d}/out --simulate --pki PKI_DIR`), then attest it and upload each key "
                 "over that connection (--collateral FILE instead of --pccs offline)",
                 f"enclave-build secrets upload {shlex.quote(secret_server)} --measurements "
                 f"{d}/out/measurements.json --pccs PCCS_URL --owner-cert {d}/{OWNER_CERT} "
                 f"--owner-key {d}/{OWNER_KEY} --name KEY_NAME --file KEYS_DIR/KEY_NAME.key"),
        ]
    hint = _MODEL_HINTS.get(framework.name, "the model file or directory the framework serves")
    model = [] if model_copied else [
        Step(f"Put your model in {d}/models/ and set [[models]] path in {d}/{SPEC_NAME} "
             f"({framework.name}: {hint}), or start again with `init --model FILE`",
             f"cp -r YOUR_MODEL {d}/models/")]
    return [
        *model,
        Step("Make the secret server's CA and TLS certificate (or set [secrets] ca to your "
             "own CA)", f"enclave-build secrets tls {d}/tls --host {shlex.quote(host)}"),
        _build_step(d, framework),
    ]


def init_project(directory: str | Path, framework: str = DEFAULT_FRAMEWORK,
                 name: str | None = None, force: bool = False,
                 secret_server: str = DEFAULT_SECRET_SERVER,
                 frameworks: Mapping[str, Framework] | None = None,
                 model: str | Path | None = None) -> InitResult:
    """Write DIR/spec.toml, DIR/keys/enclave-key.pem and DIR/models/ (see the module doc).
    *model* (a file or directory) is copied into DIR/models/ and named in [[models]] path
    (an OpenVINO IR ``.xml`` brings the ``.bin`` next to it)."""
    from .gramine.signer import write_new_key

    directory = Path(directory)
    frameworks = installed_frameworks() if frameworks is None else frameworks
    chosen = choose_framework(framework, frameworks)
    service = service_name(directory, name)
    if not re.fullmatch(_HOSTPORT, secret_server):
        raise UsageError(f"--secret-server {secret_server!r} is not HOST:PORT "
                         '(e.g. "secrets.example.com:4433")')
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: exists and is not a directory")
    spec_path, key_path = directory / SPEC_NAME, directory / KEY_PATH
    keys_dir, models_dir = key_path.parent, directory / "models"
    existing = [p for p in (spec_path, key_path) if p.exists() or p.is_symlink()]
    for path in (keys_dir, models_dir):
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise UsageError(f"{path}: exists and is not a directory")
    if existing and not force:
        raise UsageError(f"{', '.join(map(str, existing))}: already exist"
                         f"{'s' if len(existing) == 1 else ''}; not overwriting (--force "
                         "replaces spec.toml only and keeps the signing key)")
    if spec_path.is_dir() or (key_path.exists() and not key_path.is_file()):
        raise UsageError(f"{spec_path if spec_path.is_dir() else key_path}: exists and is not "
                         "a file")
    copies = _model_copies(Path(model), models_dir, chosen) if model is not None else []
    model_path = f"models/{copies[0][1].name}" if copies else None
    if model_path is None and force and chosen.name not in _NO_MODELS:
        model_path = _model_already_there(models_dir)   # --force keeps what models/ holds
    text = render_spec(chosen, service, secret_server, tuple(sorted(frameworks)), model_path)

    directory.mkdir(parents=True, exist_ok=True)
    if keys_dir.is_dir():
        mode = stat.S_IMODE(keys_dir.stat().st_mode)
        if mode & 0o077:
            warnings.warn(f"{keys_dir} is accessible to others (mode {mode:04o}): "
                          f"`chmod 700 {keys_dir}`", stacklevel=2)
    else:
        keys_dir.mkdir(mode=0o700)
        os.chmod(keys_dir, 0o700)    # whatever the umask
    models_dir.mkdir(exist_ok=True)
    for source, target in copies:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False)
        else:
            shutil.copyfile(source, target)
    key_created = not key_path.exists()
    if key_created:
        write_new_key(key_path)
    _write_text(spec_path, text, replace=force)
    return InitResult(directory, spec_path, key_path, key_created, chosen.name, service,
                      secret_server, next_steps(directory, chosen, secret_server,
                                                model_copied=model_path is not None))


def _model_already_there(models_dir: Path) -> str | None:
    """``models/NAME`` when DIR/models/ holds exactly one model (an OpenVINO IR's ``.xml``
    with its ``.bin`` counts as one), else None (the placeholder stays)."""
    if not models_dir.is_dir():
        return None
    entries = sorted(p for p in models_dir.iterdir() if not p.name.startswith("."))
    names = {p.name for p in entries}
    entries = [p for p in entries
               if not (p.suffix == ".bin" and p.with_suffix(".xml").name in names)]
    return f"models/{entries[0].name}" if len(entries) == 1 else None


def _model_copies(model: Path, models_dir: Path, framework: Framework) -> list[tuple[Path, Path]]:
    """(source, target) pairs for ``init --model``, checked before anything is written: the
    model exists, the framework serves models, nothing in DIR/models/ is overwritten."""
    if framework.name in _NO_MODELS:
        raise UsageError(f"--model: framework {framework.name} serves no models")
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    if not (model.is_file() or model.is_dir()):
        raise UsageError(f"--model {model}: not a regular file or a directory")
    sources = [model]
    weights = model.with_suffix(".bin")
    if model.suffix == ".xml" and weights.is_file():   # OpenVINO IR: graph + weights
        sources.append(weights)
    pairs = [(source, models_dir / source.name) for source in sources]
    taken = [str(target) for _, target in pairs if target.exists() or target.is_symlink()]
    if taken:
        raise UsageError(f"{', '.join(taken)}: already exist{'s' if len(taken) == 1 else ''}; "
                         "not overwriting")
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


__all__ = ["init_project", "render_spec", "render_section", "InitResult", "Step",
           "choose_framework",
           "service_name", "installed_frameworks"]
