"""The public API for plugins: everything a framework or libOS plugin may import.

Plugins (builtin or third-party) use only this module, :mod:`builder.hookspecs`,
:mod:`builder.plan`, :mod:`builder.schema` and :mod:`builder.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from .errors import EnclaveBuildError
from .hookspecs import hookimpl
from .plan import (EnclaveResources, FileKind, Mount, MountType, PlanFile, Port,
                   ProvisionedKey, SecretProvisioning, ServicePlan)
from .rootfs import RootFS
from .schema import Field, Section
from .spec import ModelSpec, Spec

__all__ = [
    "hookimpl", "Framework", "LibOS", "BuildOptions", "Progress", "NullProgress",
    "LibOSArtifacts", "ArtifactFile", "EnclaveIdentity", "PendingSignature",
    "EnclaveResources", "FileKind", "Mount", "MountType", "PlanFile", "Port", "ProvisionedKey",
    "SecretProvisioning", "ServicePlan", "Field", "Section", "Spec", "ModelSpec", "RootFS",
    "EnclaveBuildError", "SECRETS_DIR", "base_plan", "service_key_name", "add_model", "add_secret_file",
]

#: Where encrypted non-model files (TLS material, configs) live inside the enclave.
SECRETS_DIR = "/enclave/secrets"


@dataclass(frozen=True)
class Framework:
    """A serving framework: how to turn a spec into a :class:`ServicePlan`."""

    name: str
    description: str
    default_base: str
    plan: Callable[[Spec], ServicePlan]
    section: Section | None = None
    default_enclave_size: int = 4 << 30
    default_max_threads: int = 64


class Progress(Protocol):
    """Reports long-running work; the CLI shows it as progress bars."""

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        """Start a task of *total* units (bytes, files); returns a function to advance it."""


class NullProgress:
    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class BuildOptions:
    """What a libOS backend needs besides the plan and the rootfs."""

    signer: object | None          # builder.gramine.signer.Signer; None = detached step one
    sig_date: str = "0000-00-00"
    progress: Progress = field(default_factory=NullProgress)
    hash_cache: object | None = None  # builder.hashing.HashCache
    log_level: str = "error"
    wrap_keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # never logged
    staging: Path | None = None       # private directory for files the build generates
    reproducible: bool = False        # deterministic protected files


@dataclass(frozen=True)
class ArtifactFile:
    """A file the libOS backend adds to the image (content given as bytes or a host path)."""

    dest: str
    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o644


@dataclass(frozen=True)
class EnclaveIdentity:
    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool


@dataclass(frozen=True)
class PendingSignature:
    """Step one of external signing: these bytes must be signed before the build can finish."""

    mr_enclave: str
    signing_data: bytes


@dataclass(frozen=True)
class LibOSArtifacts:
    libos: str
    files: tuple[ArtifactFile, ...]
    entrypoint: tuple[str, ...]          # the image's ENTRYPOINT
    identity: EnclaveIdentity | None      # None while a signature is pending
    pending: PendingSignature | None = None
    manifest: bytes = b""
    sigstruct: bytes = b""


@dataclass(frozen=True)
class LibOS:
    """A library OS backend: renders, measures and signs a plan against a root filesystem."""

    name: str
    description: str
    build: Callable[[ServicePlan, RootFS, BuildOptions], LibOSArtifacts]


def base_plan(spec: Spec, framework: Framework, *, entrypoint: str, argv: list[str],
              env: dict[str, str] | None = None, trusted: list[str] | None = None,
              ports: list[Port] | None = None, user: str = "root",
              working_dir: str = "/") -> ServicePlan:
    """A plan with everything the spec fixes regardless of framework: identity, resources,
    image names and the secret-provisioning endpoint. Frameworks add their models and files."""
    enclave = spec.enclave
    plan = ServicePlan(
        service=spec.service.name,
        framework=framework.name,
        libos=spec.service.libos,
        base_image=spec.image.base or framework.default_base,
        image_tag=spec.image.tag or f"{spec.service.name}:latest",
        entrypoint=entrypoint,
        argv=list(argv),
        enclave=EnclaveResources(
            size=enclave.size or framework.default_enclave_size,
            max_threads=enclave.max_threads or framework.default_max_threads,
            edmm=enclave.edmm, debug=enclave.debug,
            isv_prod_id=enclave.isv_prod_id, isv_svn=enclave.isv_svn),
        env=dict(env or {}),
        user=user,
        working_dir=working_dir,
        trusted=list(trusted or []),
        ports=list(ports or []),
    )
    plan.labels["org.enclave-build.service"] = spec.service.name
    plan.labels["org.enclave-build.framework"] = framework.name
    if spec.secrets.server:
        plan.secrets = SecretProvisioning(spec.secrets.server, spec.secrets.ca)
    return plan


def service_key_name(spec: Spec) -> str:
    """The one wrap key this service's enclave receives at start-up.

    Gramine's provisioning constructor fetches exactly one 16-byte key per enclave start, so all
    encrypted content of a service (models, TLS material) shares it. Models may name it
    (``[[models]] key``), e.g. to share a key between services; otherwise it is SERVICE-key.
    """
    named = [m.key for m in spec.models if m.encrypt and m.key]
    return named[0] if named else f"{spec.service.name}-key"


def _provision(plan: ServicePlan, key: str) -> None:
    if plan.secrets is None:
        raise EnclaveBuildError("encrypted content needs [secrets] server and ca in the spec")
    if all(k.name != key for k in plan.secrets.keys):
        plan.secrets.keys.append(ProvisionedKey(key))


def _encrypted_mount(plan: ServicePlan, directory: str, key: str) -> None:
    directory = directory.rstrip("/")
    if not any(m.path == directory for m in plan.mounts):
        plan.mounts.append(Mount(directory, MountType.ENCRYPTED, "file:" + directory, key))


def add_model(plan: ServicePlan, spec: Spec, model: ModelSpec, dest_dir: str) -> None:
    """Add *model* under *dest_dir* (a directory inside the image): trusted when clear-text,
    otherwise as protected files under an encrypted mount keyed by the service key."""
    source = Path(model.path)
    dest = dest_dir.rstrip("/") + ("/" if source.is_dir() else "/" + source.name)
    if not model.encrypt:
        plan.add_file(source, dest, FileKind.TRUSTED)
        return
    key = service_key_name(spec)
    plan.add_file(source, dest, FileKind.ENCRYPTED, key_name=key)
    _encrypted_mount(plan, dest_dir, key)
    _provision(plan, key)


def add_secret_file(plan: ServicePlan, spec: Spec, name: str, *, data: bytes | None = None,
                    source: Path | None = None) -> str:
    """Ship a confidential file (TLS key, credentials) encrypted under SECRETS_DIR; returns the
    path the server inside the enclave opens."""
    key = service_key_name(spec)
    dest = f"{SECRETS_DIR}/{name}"
    plan.add_file(source, dest, FileKind.ENCRYPTED, mode=0o600, key_name=key, data=data)
    _encrypted_mount(plan, SECRETS_DIR, key)
    _provision(plan, key)
    return dest
