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
    "LibOSArtifacts", "ArtifactFile", "EnclaveIdentity", "PendingSignature", "base_plan",
    "EnclaveResources", "FileKind", "Mount", "MountType", "PlanFile", "Port", "ProvisionedKey",
    "SecretProvisioning", "ServicePlan", "Field", "Section", "Spec", "ModelSpec", "RootFS",
    "EnclaveBuildError", "DEFAULT_MODEL_KEY",
]

#: Name of the wrap key models are encrypted with when the spec names none.
DEFAULT_MODEL_KEY = "models"


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


def model_key_name(model: ModelSpec) -> str:
    return model.key or DEFAULT_MODEL_KEY


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


def add_model(plan: ServicePlan, model: ModelSpec, dest_dir: str) -> None:
    """Add *model* under *dest_dir* (a directory inside the image): trusted when clear-text,
    or as protected files under an encrypted mount keyed by the model's wrap key."""
    source = Path(model.path)
    dest = dest_dir.rstrip("/") + ("/" if source.is_dir() else "/" + source.name)
    if not model.encrypt:
        plan.add_file(source, dest, FileKind.TRUSTED)
        return
    key = model_key_name(model)
    plan.add_file(source, dest, FileKind.ENCRYPTED, key_name=key)
    plan.mounts.append(Mount(dest_dir.rstrip("/"), MountType.ENCRYPTED,
                             "file:" + dest_dir.rstrip("/"), key))
    if plan.secrets is None:
        raise EnclaveBuildError(
            f"model {model.name!r} is encrypted, so its key must be provisioned: set "
            "[secrets] server and ca in the spec (or encrypt = false)")
    if all(k.name != key for k in plan.secrets.keys):
        plan.secrets.keys.append(ProvisionedKey(key))
