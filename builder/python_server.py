"""Plans that run enclave-build's own model server (KServe v2 over gRPC and REST) inside the
enclave: :func:`python_server_plan`, its configuration (:func:`server_config`), and shipping
installed Python packages into the image.

Plugins import these from :mod:`enclave_build.plugin`, the stable API.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enclave_build.contract.names import (
    CLIENT_CA,
    MODEL_ROOT,
    PYTHON,
    SECRET_SERVER_CA,
    SERVER_CONFIG,
    SERVER_PYTHONPATH,
    SIMULATED_QUOTER_ENV,
)
from enclave_build.contract.server_config import (
    KeysConfig,
    Limits,
    Listener,
    ModelConfig,
    ServerConfig,
    TLSConfig,
)

from . import server_trust
from .errors import EnclaveBuildError
from .plan import FileKind, KeyDelivery, Port, PythonRuntime, ServicePlan
from .planning import (
    add_model,
    add_secret_file,
    base_plan,
    default_key_name,
    model_key_name,
    require_models,
    spec_error,
)
from .plugin_types import Framework
from .spec import Spec

# PYTHON, SERVER_PYTHONPATH and SERVER_CONFIG (image paths) are defined once, in
# enclave_build.contract.names; plugins import them from enclave_build.plugin.
#: Runtime distributions the model server imports, installed in the base image (pip names).
SERVER_DISTRIBUTIONS: tuple[str, ...] = (
    "grpcio",
    "protobuf",
    "numpy",
    "cbor2",
    "cryptography",
    "httptools",
)
#: Import names needed without distribution metadata (Debian's python3-cffi-backend, which
#: Debian's python3-cryptography loads).
SERVER_MODULES: tuple[str, ...] = ("_cffi_backend",)
#: Entry-point group of model-server backends (``name = "pkg.module:BackendClass"``).
BACKEND_ENTRY_POINTS = "enclave_model_server.backends"
#: Backends the model server imports directly (no entry point needed in the image).
BUILTIN_BACKENDS = ("tflite", "openvino")
#: Runtime distributions of the builtin backends.
BACKEND_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "tflite": ("ai-edge-litert",),
    "openvino": ("openvino",),
}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise EnclaveBuildError(
            f"the Python package {name!r} is not installed where "
            "enclave-build runs, so it cannot be shipped into the image"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin is None:
        raise EnclaveBuildError(f"{name!r} has no files to ship")
    return Path(spec.origin)


def _source_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo"))
    )


#: Files a Python server in the image reads when present: name service, the dynamic loader's
#: cache, users and groups, OpenSSL's configuration, the resolver's options and the time zone.
PYTHON_SYSTEM_FILES = (
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/passwd",
    "/etc/group",
    "/etc/ssl/openssl.cnf",
    # The LibOS checks the path a program opens, not a symlink's target: OpenSSL reads its
    # config through OPENSSLDIR's link.
    "/usr/lib/ssl/openssl.cnf",
    # glibc: the resolver's options (resolving `localhost`) and the time zone (localtime(),
    # e.g. for log timestamps).
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
)
#: The image's /etc/hosts (a minimal base has none).
ETC_HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def add_python_system_files(plan: ServicePlan, *, extra_trusted: Sequence[str] = ()) -> None:
    """What a Python server needs from the system besides its code: :data:`PYTHON_SYSTEM_FILES`
    (and *extra_trusted*) trusted when the base has them, ``/etc/resolv.conf`` allowed, an
    ``/etc/hosts`` of the image's own (Docker and Kubernetes replace /etc/hosts at run time, so
    it cannot be a trusted file), and the simulated quoter's variable passed through (simulation
    only: a quote from it verifies only against a synthetic root)."""
    plan.env_passthrough.append(SIMULATED_QUOTER_ENV)
    plan.allowed.append("/etc/resolv.conf")
    plan.add_file(None, "/etc/hosts", FileKind.ALLOWED, data=ETC_HOSTS)
    plan.trusted_if_present += [*PYTHON_SYSTEM_FILES, *extra_trusted]


def ship_python_package(
    plan: ServicePlan, name: str, *, target: str = SERVER_PYTHONPATH
) -> list[str]:
    """Copy the installed package (or module) *name* -- top-level or dotted, e.g.
    ``enclave_build.model_server`` -- from the environment running the build into the image
    under *target* (on the server's PYTHONPATH) as trusted files, with the ``__init__.py`` of
    every package above it, so the code in the image is exactly the code installed with the
    builder. Returns image paths."""
    parts = name.split(".")
    out: list[str] = []

    def add(source: Path, dest: str) -> None:
        if not any(f.dest == dest for f in plan.files):
            plan.add_file(source, dest, FileKind.TRUSTED)
        out.append(dest)

    for depth in range(1, len(parts)):
        parent = _package_dir(".".join(parts[:depth]))
        add(parent / "__init__.py", posixpath.join(target, *parts[:depth], "__init__.py"))
    root = _package_dir(name)
    if root.is_file():
        add(root, posixpath.join(target, *parts[:-1], root.name))
        return out
    for path in _source_files(root):
        add(path, posixpath.join(target, *parts, path.relative_to(root).as_posix()))
    return out


#: What runs inside the enclave with enclave-build's Python servers, shipped whole from the
#: installed distribution: the model server (and its key fetching), the attestation package
#: (RA-TLS, quotes, protected files; the secret server too, when it is the enclave), and the
#: contract types both read their files with.
ENCLAVE_RUNTIME = (
    "enclave_build.model_server",
    "enclave_build.attestation",
    "enclave_build.contract",
)


def ship_enclave_runtime(plan: ServicePlan, *, target: str = SERVER_PYTHONPATH) -> list[str]:
    """Ship :data:`ENCLAVE_RUNTIME` into the image (see :func:`ship_python_package`)."""
    out: list[str] = []
    for name in ENCLAVE_RUNTIME:
        out += ship_python_package(plan, name, target=target)
    return out


def _backend_entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    matches = [
        ep for ep in importlib.metadata.entry_points(group=BACKEND_ENTRY_POINTS) if ep.name == name
    ]
    return matches[0] if matches else None


def _backend_metadata(entry_points: Mapping[str, str]) -> bytes:
    lines = [f"[{BACKEND_ENTRY_POINTS}]"] + [f"{n} = {v}" for n, v in sorted(entry_points.items())]
    return ("\n".join(lines) + "\n").encode()


def server_config(
    spec: Spec,
    plan: ServicePlan,
    models: Sequence[ModelConfig | Mapping[str, Any]],
    *,
    grpc_port: int,
    rest_port: int,
    tls: TLSConfig | Mapping[str, Any] | None = None,
    limits: Mapping[str, int] | None = None,
) -> ServerConfig:
    """The model server's configuration (model-server.json,
    :class:`enclave_build.contract.server_config.ServerConfig`) for *plan*: keys are the plan's
    provisioned keys, fetched by the server from the spec's secret server (checked against
    ``[secrets] ca``, or by its RA-TLS quote with ``server_measurements``: see
    :mod:`builder.server_trust`). *models* and *tls* may be given as the contract types or as
    dicts of their fields. Put it on the plan as ``plan.server_config``; the build writes it
    into the image."""
    keys = None
    tls_config = tls if isinstance(tls, TLSConfig) or tls is None else TLSConfig(**tls)
    certified = tls_config is not None and tls_config.issuer == "secret-server"
    if plan.secrets is not None and (plan.secrets.keys or certified):
        trust = plan.secrets.server_trust
        keys = KeysConfig(
            plan.secrets.server,
            SECRET_SERVER_CA if trust is None else "",
            tuple(k.name for k in plan.secrets.keys),
            timeout_seconds=10,
            evidence="tcg-dice",
            # verified by its quote (builder.server_trust), not by a CA
            server_identity=(server_trust.identity_config(trust) if trust is not None else None),
        )
    return ServerConfig(
        service=spec.service.name,
        models=tuple(m if isinstance(m, ModelConfig) else ModelConfig(**m) for m in models),
        grpc=Listener("0.0.0.0", grpc_port, _spec_key(plan, grpc_port)),
        rest=Listener("0.0.0.0", rest_port, _spec_key(plan, rest_port)),
        tls=tls_config,
        limits=_server_limits(spec, limits),
        drain_seconds=(spec.limits or {}).get("drain_seconds", 20),
        metrics=True,
        keys=keys,
    )


def _spec_key(plan: ServicePlan, number: int) -> str | None:
    """The spec key that set port *number* of *plan* (named if it cannot be used)."""
    return next((p.spec_key for p in plan.ports if p.number == number and p.spec_key), None)


def _server_limits(spec: Spec, limits: Mapping[str, int] | None) -> Limits:
    """model-server.json ``limits``: *limits* (a framework's own) or the defaults, then what the
    spec's ``[limits]`` sets (its ``drain_seconds`` goes beside them)."""
    out: dict[str, Any] = dict(
        limits or {"max_request_bytes": 64 << 20, "max_concurrent_requests": 64, "max_queue": 256}
    )
    out.update({k: v for k, v in (spec.limits or {}).items() if k != "drain_seconds"})
    return Limits.of(out)


def deliver_keys_as_files(plan: ServicePlan, directory: str) -> bool:
    """For a libOS whose own init fetches every key before the program starts and leaves each
    in ``DIRECTORY/NAME`` (Occlum): switch a plan whose program fetches its own keys
    (KeyDelivery.IN_ENCLAVE) to KeyDelivery.LIBOS_FILES, and point enclave-build's model server
    (the plan's ``server_config``, if it has one) at those files: ``keys = {source = "files",
    directory, names}`` (model-server.json); the server then opens its models as they are.
    Idempotent; True when the plan changed. For libOS backends (their configure hook)."""
    if plan.secrets is None or plan.secrets.delivery is not KeyDelivery.IN_ENCLAVE:
        return False
    plan.secrets.delivery = KeyDelivery.LIBOS_FILES
    config = plan.server_config
    if config is not None and config.keys:
        plan.server_config = dataclasses.replace(
            config, keys=KeysConfig.from_files(directory, config.keys.names)
        )
    return True


#: Threads the model server needs besides its models' runtime threads: the main thread, the
#: event loop, the REST server, gRPC handlers (started on demand) and the key fetches.
SERVER_OWN_THREADS = 8


def _check_server_resources(
    spec: Spec,
    framework: Framework,
    *,
    grpc_port: int,
    rest_port: int,
    instances: int,
    threads: int,
) -> None:
    """Located spec errors, before anything is built or signed, for a Python-server spec that
    cannot work: both servers on one port, or more threads than the enclave may have."""
    section = framework.section.name if framework.section is not None else framework.name
    if grpc_port == rest_port:
        raise spec_error(
            spec,
            (section, "rest_port"),
            f"the REST port equals grpc_port ({grpc_port}): the gRPC and REST "
            "servers need two different ports",
        )
    models = max(1, len(spec.models))
    needed = models * instances * threads + SERVER_OWN_THREADS
    max_threads = spec.enclave.max_threads or framework.default_max_threads
    if needed > max_threads:
        where = ("enclave", "max_threads") if spec.enclave.max_threads else (section, "instances")
        raise spec_error(
            spec,
            where,
            f"the enclave needs at least {needed} threads ({models} model(s) x "
            f"{instances} instance(s) x {threads} thread(s) + {SERVER_OWN_THREADS} "
            f"of the model server's own) but [enclave] max_threads is "
            f"{max_threads}: raise [enclave] max_threads to {needed} or more, or "
            f"lower [{section}] instances or threads",
        )


def python_server_plan(
    spec: Spec,
    framework: Framework,
    *,
    backend: str,
    packages: Sequence[str] = (),
    modules: Sequence[str] = (),
    grpc_port: int = 8001,
    rest_port: int = 8000,
    instances: int = 1,
    threads: int = 1,
    options: Mapping[str, Any] | None = None,
    default_base: str | None = None,
    python: PythonRuntime | None = None,
    user: str = "10001",
) -> ServicePlan:
    """A plan that runs enclave-build's own model server (KServe v2 over gRPC and REST) with
    *backend* for every model of the spec.

    - Entrypoint ``PYTHON -m model_server --config SERVER_CONFIG``; the configuration is
      ``plan.server_config`` (a typed :class:`ServerConfig`), shipped as a trusted file.
    - The server's code ships from the installed distribution to SERVER_PYTHONPATH (with the
      ``attestation`` modules it imports); a backend that is not builtin is found through the
      entry-point group BACKEND_ENTRY_POINTS and its top-level package ships too.
    - Runtimes come from the base image: SERVER_DISTRIBUTIONS plus *packages* (pip
      distribution names, e.g. ``["onnxruntime"]``) and *modules* (import names without
      metadata) are trusted file by file, with Python's standard library and the ELF closure.
    - Keys: the server fetches them itself inside the enclave (one RA-TLS connection per key),
      so every model may have its own key (``[[models]] key``, default SERVICE-key); each model
      directory is an encrypted mount keyed by its model's key; [tls] files use SERVICE-key.
    - *instances*/*threads*/*options* go to every model's entry; adjust
      ``plan.server_config`` (``dataclasses.replace``) or call :func:`server_config` yourself
      for per-model values.
    - *user*: the image's runtime user (uid 10001, as in enclave-build's base images); it owns
      the encrypted files, which Gramine opens read-write.
    """
    require_models(spec, framework.name)
    _check_server_resources(
        spec,
        framework,
        grpc_port=grpc_port,
        rest_port=rest_port,
        instances=instances,
        threads=threads,
    )
    argv = [PYTHON, "-m", "enclave_build.model_server", "--config", SERVER_CONFIG]
    plan = base_plan(
        spec,
        framework,
        entrypoint=(python.interpreter if python else PYTHON),
        argv=argv,
        env={
            "PYTHONPATH": SERVER_PYTHONPATH,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "LD_LIBRARY_PATH": "/lib:/usr/lib/x86_64-linux-gnu",
        },
        ports=[
            Port(grpc_port, "grpc", spec_key=_port_key(framework, "grpc_port")),
            Port(rest_port, "http", spec_key=_port_key(framework, "rest_port")),
        ],
        default_base=default_base,
        key_delivery=KeyDelivery.IN_ENCLAVE,
        user=user,
    )
    if python is not None:
        plan.argv[0] = python.interpreter
    add_python_system_files(
        plan,
        # Debian's cryptography 38 insists on OpenSSL's legacy provider, which libcrypto
        # dlopens (no DT_NEEDED names it).
        extra_trusted=("/usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so",),
    )

    entry_points: dict[str, str] = {}
    ep = _backend_entry_point(backend)
    if ep is not None:
        entry_points[backend] = ep.value
        module = ep.value.split(":")[0]
        if module != "enclave_build" and not module.startswith("enclave_build."):
            ship_python_package(plan, module.split(".")[0])
    elif backend not in BUILTIN_BACKENDS:
        raise EnclaveBuildError(
            f"no model-server backend named {backend!r} is installed (entry-point group "
            f"{BACKEND_ENTRY_POINTS}); builtin: {', '.join(BUILTIN_BACKENDS)}"
        )
    ship_enclave_runtime(plan)
    if entry_points:
        info = f"{SERVER_PYTHONPATH}/enclave_build_image_backends-0.dist-info"
        plan.add_file(
            None,
            f"{info}/METADATA",
            FileKind.TRUSTED,
            data=b"Metadata-Version: 2.1\nName: enclave-build-image-backends\nVersion: 0\n",
        )
        plan.add_file(
            None, f"{info}/entry_points.txt", FileKind.TRUSTED, data=_backend_metadata(entry_points)
        )

    runtime = python or PythonRuntime()
    wanted = list(SERVER_DISTRIBUTIONS) + list(BACKEND_DISTRIBUTIONS.get(backend, ()))
    wanted += list(packages)
    if plan.secrets is not None and plan.secrets.server_trust is not None:
        wanted += list(server_trust.TRUST_DISTRIBUTIONS)  # verifies the server's quote
    runtime.distributions = list(dict.fromkeys(runtime.distributions + wanted))
    runtime.modules = list(dict.fromkeys(runtime.modules + list(SERVER_MODULES) + list(modules)))
    plan.python = runtime

    entries = []
    for model in spec.models:
        path = add_model(plan, spec, model, f"{MODEL_ROOT}/{model.name}/{model.version}")
        entries.append(
            ModelConfig(
                name=model.name,
                version=str(model.version),
                backend=backend,
                path=path,
                key=model_key_name(spec, model) if model.encrypt else None,
                instances=instances,
                threads=threads,
                options=dict(options or {}),
                max_queue=model.max_queue,
                clients=model.clients,
            )
        )
    tls = None
    if spec.tls is not None and spec.tls.issuer == "file":
        assert spec.tls.cert is not None and spec.tls.key is not None
        cert = add_secret_file(plan, spec, "tls.crt", source=spec.tls.cert)
        key = add_secret_file(plan, spec, "tls.key", source=spec.tls.key)
        client_ca = None
        if spec.tls.client_ca is not None:  # public, and who may connect: measured
            client_ca = plan.add_file(spec.tls.client_ca, CLIENT_CA, FileKind.TRUSTED).dest
        tls = TLSConfig(cert, key, default_key_name(spec), client_ca)
    elif spec.tls is not None:
        client_ca = None
        if spec.tls.client_ca is not None:
            client_ca = plan.add_file(spec.tls.client_ca, CLIENT_CA, FileKind.TRUSTED).dest
        tls = TLSConfig(None, None, None, client_ca, spec.tls.issuer, spec.tls.hosts)
    config = server_config(spec, plan, entries, grpc_port=grpc_port, rest_port=rest_port, tls=tls)
    plan.server_config = config
    plan.enclave.max_open_files = server_open_files(config)
    return plan


def _port_key(framework: Framework, name: str) -> str | None:
    """``SECTION.NAME`` when the framework's spec section has a key *name* (the builtins'
    and the onnxruntime example's ``grpc_port``/``rest_port``): where the port was set."""
    section = framework.section
    if section is None or name not in section.field_names():
        return None
    return f"{section.name}.{name}"


def server_open_files(config: ServerConfig) -> int:
    """The file descriptors enclave-build's model server may hold with *config* (its
    connection caps, model files and its own; ``model_server.resources``): the enclave's
    ``sys.fds.limit``, so idle connections meet the server's caps before the libOS's limit."""
    from enclave_build.model_server.resources import config_fds

    return config_fds(config)
