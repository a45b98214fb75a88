"""Framework ``secret-server``: enclave-build's own secret server, built as a Gramine enclave.

What goes into the image, and why:

* **Code**: the ``attestation`` package from the installed enclave-build (so the server in the
  image is exactly the builder's version) plus a launcher module ``enclave_secret_server``;
  the runtimes (pyOpenSSL, dcap-qvl, cryptography, cbor2) come from the base image, trusted file
  by file with Python's standard library and the ELF closure.
* **Policy, baked in as trusted files**: the measurements.json of every model enclave it serves
  (from their builds' ``secrets-policy.toml``, ``[secret-server] policies``), the secret rules
  (name, allow, match), the attestation settings (root CA, collateral or PCCS, TCB statuses) and
  the owners' certificates. All of it is measured: **changing the policy changes this server's
  MRENCLAVE**, so an owner who attests the server knows exactly which enclaves it will release
  keys to and who else may upload. (Uploading the policy at run time would keep MRENCLAVE stable
  across policy changes, but then attesting the server would prove nothing about whom it serves.)
* **Keys: never in the image.** Every secret is an uploaded one (``[[secrets]]`` without
  ``file``): after the server starts, each key's owner attests it (``enclave-build attest``)
  and uploads the key over that same TLS connection (``enclave-build secrets upload``),
  authenticated by a client certificate listed in ``owners``. Held keys live in enclave memory
  only; after a restart the owners upload them again.
* **Identity**: ``[server] identity = "ratls"``: at start the server makes a fresh key pair and
  an RA-TLS certificate whose quote binds it (the quote device inside SGX; the simulated quoter
  under ``enclave-build run --simulate``). It runs one process (uploaded keys live in one
  process's memory).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path

from enclave_build.contract.names import POLICY_FILE, SECRETS_FILE
from enclave_build.contract.policy_fragment import PolicyFragment, PolicyFragmentError
from enclave_build.contract.secrets_config import (
    AttestationSettings,
    GrSecretSettings,
    SecretRule,
    SecretsConfig,
    ServerSettings,
    UploadSettings,
)
from enclave_build.contract.tcb import TCB_STATUSES, TcbPolicy
from enclave_build.plugin import (
    PYTHON,
    SERVER_PYTHONPATH,
    Field,
    FileKind,
    Framework,
    Port,
    PythonRuntime,
    Section,
    ServicePlan,
    Spec,
    add_python_system_files,
    base_plan,
    hookimpl,
    refuse_model_server_keys,
    ship_python_package,
    spec_error,
)

#: Where the server's configuration and policy live in the image (all trusted).
CONFIG_DIR = "/enclave/secret-server"
CONFIG = f"{CONFIG_DIR}/{SECRETS_FILE}"
LAUNCHER = "enclave_secret_server"
#: Runtime distributions of the secret server, from the base image (pip names).
DISTRIBUTIONS = ("pyOpenSSL", "cryptography", "dcap-qvl", "cbor2")
#: ... and of its GrSecret gRPC service (HTTP/2 framing, protobuf messages), when served.
GRSECRET_DISTRIBUTIONS = ("h2", "protobuf")

SECTION = Section(
    "secret-server",
    "the secret server in an enclave: whom it serves, who uploads",
    (
        Field(
            "port",
            "int",
            "TCP port of the RA-TLS listener (secret_prov, attest, upload)",
            default=4433,
            minimum=1,
            maximum=65535,
        ),
        Field(
            "grsecret_port",
            "int",
            "TCP port of Occlum's ratls.GrSecret/GetSecret gRPC service "
            "(mutual RA-TLS, for Occlum enclaves' init); unset = not served",
            minimum=1,
            maximum=65535,
        ),
        Field(
            "policies",
            "list[str]",
            "build directories (or their secrets-policy.toml) of the model "
            "enclaves it releases keys to",
            required=True,
        ),
        Field(
            "owners",
            "list[str]",
            "PEM certificates of the key owners allowed to upload keys (pinned; measured)",
            required=True,
        ),
        Field(
            "root_ca",
            "str",
            '"intel", or a PEM root CA file (a synthetic test root for simulation only)',
            default="intel",
        ),
        Field("collateral", "path", "offline collateral (measured: expires, then rebuild) ..."),
        Field("pccs_url", "str", "... or the PCCS the server fetches collateral from"),
        Field(
            "allowed_tcb_statuses",
            "list[str]",
            "TCB statuses of model enclaves' platforms to accept",
            default=["UpToDate"],
        ),
        Field("max_tls", "str", "highest TLS version", default="1.3", choices=("1.2", "1.3")),
        Field("workers", "int", "threads handling connections", default=16, minimum=1, maximum=256),
    ),
    owner="secret-server",
)


class SyntheticRootWarning(UserWarning):
    """The server's measured configuration trusts a root CA other than Intel's."""


def _resolve(spec: Spec, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (spec.path.parent / path).resolve()


def _fragments(spec: Spec, policies: list[str]) -> tuple[list[Path], list[SecretRule]]:
    """Measurements files and secret rules (name, allow, match; never key files) of the builds."""
    measurements: list[Path] = []
    rules: dict[str, SecretRule] = {}
    for index, given in enumerate(policies):
        where = ("secret-server", "policies", index)
        path = _resolve(spec, given)
        try:
            fragment = PolicyFragment.load(path)
        except PolicyFragmentError as exc:
            if "not found" in str(exc):
                raise spec_error(
                    spec,
                    where,
                    f"{exc.source}: not found (a build with encrypted "
                    f"content writes {POLICY_FILE} into its output "
                    "directory)",
                ) from None
            raise spec_error(spec, where, f"cannot read the policy fragment: {exc}") from None
        for item in fragment.measurements:
            file = Path(item)
            if not file.is_file():
                raise spec_error(
                    spec, where, f"{fragment.path}: measurements file {file} not found"
                )
            if file not in measurements:
                measurements.append(file)
        for rule in fragment.secrets:
            # Occlum builds: how the key is handed over, and the name init asks for.
            entry = dataclasses.replace(rule, file=None)
            known = rules.get(entry.name)
            if known is None:
                rules[entry.name] = entry
            elif dataclasses.replace(known, allow=()) != dataclasses.replace(entry, allow=()):
                raise spec_error(
                    spec,
                    where,
                    f"{fragment.path}: secret {entry.name!r} has "
                    "match, encoding or requested_as other than in "
                    "an earlier policy",
                )
            else:
                rules[entry.name] = dataclasses.replace(
                    known, allow=tuple(dict.fromkeys(known.allow + entry.allow))
                )
    if not rules:
        raise spec_error(
            spec, ("secret-server", "policies"), "the policies release no secret: nothing to serve"
        )
    return measurements, list(rules.values())


def _server_files(spec: Spec, opts) -> tuple[dict[str, bytes], SecretsConfig]:
    """Files under CONFIG_DIR (relative name -> bytes) and the secrets.toml (its paths relative
    to CONFIG_DIR)."""
    files: dict[str, bytes] = {}
    measurements, rules = _fragments(spec, list(opts["policies"]))
    names = []
    for number, path in enumerate(measurements):
        name = f"measurements/{number:02d}-{path.parent.name or 'build'}.json"
        files[name] = path.read_bytes()
        names.append(name)
    owners = []
    for index, given in enumerate(opts["owners"]):
        path = _resolve(spec, given)
        try:
            files[f"owners/{index:02d}.pem"] = path.read_bytes()
        except OSError as exc:
            raise spec_error(
                spec,
                ("secret-server", "owners", index),
                f"{path}: cannot read the owner certificate: {exc.strerror}",
            ) from None
        owners.append(Path(f"owners/{index:02d}.pem"))
    if not owners:
        raise spec_error(
            spec,
            ("secret-server", "owners"),
            "name at least one owner certificate: nobody could upload a key",
        )
    statuses = list(opts["allowed_tcb_statuses"])
    for status in statuses:
        if status not in TCB_STATUSES:
            raise spec_error(
                spec,
                ("secret-server", "allowed_tcb_statuses"),
                f"{status!r}; allowed: {', '.join(TCB_STATUSES)}",
            )
    root_ca = None
    if opts["root_ca"] != "intel":
        path = _resolve(spec, opts["root_ca"])
        try:
            files["root.pem"] = path.read_bytes()
        except OSError as exc:
            raise spec_error(
                spec, ("secret-server", "root_ca"), f"{path}: cannot read: {exc.strerror}"
            ) from None
        root_ca = Path("root.pem")
        # As for a model's [secrets] server_root_ca: said at build time, not only at each start.
        warnings.warn(
            f"[secret-server] root_ca = {str(path)!r}: the server will release keys to "
            "enclaves whose quotes chain to this root instead of Intel's SGX root CA. "
            "That is for simulation with a synthetic test PKI only; production builds "
            'use root_ca = "intel"',
            SyntheticRootWarning,
            stacklevel=2,
        )
    if (opts.get("collateral") is None) == (opts.get("pccs_url") is None):
        raise spec_error(
            spec,
            ("secret-server",),
            "give exactly one of collateral (a file, measured) and pccs_url",
        )
    collateral = None
    if opts.get("collateral") is not None:
        files["collateral.json"] = Path(opts["collateral"]).read_bytes()
        collateral = Path("collateral.json")
    grsecret = None
    if opts.get("grsecret_port") is not None:
        if opts["grsecret_port"] == opts["port"]:
            raise spec_error(
                spec,
                ("secret-server", "grsecret_port"),
                f"{opts['grsecret_port']} is also secret-server.port; GrSecret "
                "needs a port of its own",
            )
        grsecret = GrSecretSettings("0.0.0.0", opts["grsecret_port"])
    config = SecretsConfig(
        Path(CONFIG),
        ServerSettings(
            "0.0.0.0",
            opts["port"],
            None,
            None,
            max_connections=256,
            workers=opts["workers"],
            max_tls=opts["max_tls"],
            audit_log="-",
            processes=1,
            identity="ratls",
        ),
        AttestationSettings(
            root_ca,
            collateral,
            None if collateral is not None else opts["pccs_url"],
            TcbPolicy(frozenset(statuses)),
        ),
        tuple(names),
        tuple(rules),
        UploadSettings(tuple(owners)),
        grsecret,
    )
    return files, config


def _check_config(files: dict[str, bytes], config: SecretsConfig, spec: Spec) -> bytes:
    """secrets.toml as bytes, after the secret server's own loader and policy accepted it."""
    from enclave_build.attestation.config import ConfigError, load_config
    from enclave_build.attestation.policy import Policy, PolicyError

    text = config.to_toml(
        "The secret server's configuration (measured), written by enclave-build."
    ).encode()
    with tempfile.TemporaryDirectory(prefix="secret-server-") as tmp:
        for name, data in files.items():
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (Path(tmp) / SECRETS_FILE).write_bytes(text)
        try:
            loaded = load_config(Path(tmp) / SECRETS_FILE)
            Policy.build(list(loaded.measurements), list(loaded.secrets), loaded.path.parent)
        except (ConfigError, PolicyError) as exc:
            message = str(exc).replace(str(Path(tmp).resolve()) + os.sep, "").replace(tmp, "")
            raise spec_error(
                spec,
                ("secret-server",),
                f"the secret server's configuration would not load: {message}",
            ) from None
    return text


def plan(spec: Spec) -> ServicePlan:
    refuse_model_server_keys(spec, "secret-server")
    if spec.models:
        raise spec_error(
            spec,
            ("models",),
            "the secret server serves no models (it releases keys to the model enclaves that "
            "[secret-server] policies name), so [[models]] would be ignored: remove it, and "
            "build each model server from a spec of its own",
        )
    opts = spec.section("secret-server")
    files, config = _server_files(spec, opts)
    secrets_toml = _check_config(files, config, spec)
    plan = base_plan(
        spec,
        FRAMEWORK,
        entrypoint=PYTHON,
        argv=[PYTHON, "-m", LAUNCHER, "--config", CONFIG],
        env={
            "PYTHONPATH": SERVER_PYTHONPATH,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "LD_LIBRARY_PATH": "/lib:/usr/lib/x86_64-linux-gnu",
        },
        ports=[Port(opts["port"], "ratls", spec_key="secret-server.port")],
        user="10001",
    )
    distributions = list(DISTRIBUTIONS)
    if config.grsecret is not None:
        plan.ports.append(
            Port(opts["grsecret_port"], "grsecret", spec_key="secret-server.grsecret_port")
        )
        distributions += GRSECRET_DISTRIBUTIONS
    plan.needs_quote_device = True  # its RA-TLS identity: quotes from /dev/attestation
    add_python_system_files(plan)
    # the server and the contract types it reads its configuration with
    ship_python_package(plan, "enclave_build.attestation")
    ship_python_package(plan, "enclave_build.contract")
    plan.add_file(
        Path(__file__).with_name("launcher.py"),
        f"{SERVER_PYTHONPATH}/{LAUNCHER}.py",
        FileKind.TRUSTED,
    )
    for name, data in sorted(files.items()):
        plan.add_file(None, f"{CONFIG_DIR}/{name}", FileKind.TRUSTED, data=data)
    plan.add_file(None, CONFIG, FileKind.TRUSTED, data=secrets_toml)
    plan.python = PythonRuntime(distributions=distributions, modules=["_cffi_backend"])
    plan.labels["org.enclave-build.secret-server.secrets"] = ",".join(
        sorted(r.name for r in config.secrets)
    )
    return plan


FRAMEWORK = Framework(
    name="secret-server",
    description="enclave-build's secret server in an enclave (attested by owners, keys uploaded)",
    default_base="docker-daemon:enclave-build/gramine-secret-server:1.9-3.11",
    plan=plan,
    section=SECTION,
    default_enclave_size=1 << 30,
    default_max_threads=32,
    tls_refusal=(
        "the secret server's own TLS identity is set by [secret-server]: at start it makes a "
        "key pair in the enclave and an RA-TLS certificate whose quote binds it (clients "
        "check it with `enclave-build attest`); [tls] configures enclave-build's model "
        "server only, and would be ignored here: remove the section"
    ),
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]


__all__ = [
    "FRAMEWORK",
    "SECTION",
    "CONFIG",
    "CONFIG_DIR",
    "LAUNCHER",
    "SyntheticRootWarning",
    "plan",
]
