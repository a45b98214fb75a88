"""ServicePlan: the libOS-neutral description of a service, filled by a framework plugin.

Data flows spec -> plan -> libOS artifacts -> image -> result. A framework plugin builds the plan
from the spec (see :func:`builder.plugin_api.base_plan`); any plugin may then adjust it in
``enclave_build_configure``. Nothing after this stage reads the spec again.

Paths called ``dest`` or ``path`` are absolute paths inside the image / enclave; ``source`` is a
path on the build machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class FileKind(enum.Enum):
    TRUSTED = "trusted"      # hashed into the manifest; integrity-checked on open
    ENCRYPTED = "encrypted"  # shipped as Gramine protected files under an encrypted mount
    ALLOWED = "allowed"      # passed through unchecked (e.g. /etc/resolv.conf)


class MountType(enum.Enum):
    CHROOT = "chroot"
    ENCRYPTED = "encrypted"
    TMPFS = "tmpfs"


@dataclass
class PlanFile:
    """A file (or directory, with a trailing ``/`` in *dest*) the build adds to the image.

    Content comes from *source* on the build machine, or from *data* for files a plugin
    generates (configs): then *source* is None.
    """

    source: Path | None
    dest: str
    kind: FileKind = FileKind.TRUSTED
    mode: int = 0o644
    key_name: str | None = None  # for ENCRYPTED files
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.data is None):
            raise ValueError(f"{self.dest}: give exactly one of source and data")
        if not self.dest.startswith("/"):
            raise ValueError(f"{self.dest}: destination must be an absolute path in the image")


@dataclass
class Mount:
    path: str                 # where the enclave sees it
    type: MountType = MountType.CHROOT
    uri: str | None = None    # host-side location; None for tmpfs
    key_name: str | None = None


@dataclass
class Port:
    number: int
    name: str
    protocol: str = "TCP"


@dataclass
class EnclaveResources:
    size: int
    max_threads: int
    edmm: bool = False
    debug: bool = False
    isv_prod_id: int = 0
    isv_svn: int = 0


@dataclass
class ProvisionedKey:
    """A 16-byte wrap key the enclave receives from the secret server at start-up."""

    name: str


@dataclass
class SecretProvisioning:
    server: str                    # HOST:PORT
    ca_cert: Path | None = None    # the server's CA, shipped as a trusted file
    keys: list[ProvisionedKey] = field(default_factory=list)


@dataclass
class ServicePlan:
    service: str
    framework: str
    libos: str
    base_image: str
    image_tag: str
    entrypoint: str                # absolute path of the program inside the image
    argv: list[str]                # argv[0] included
    enclave: EnclaveResources
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    working_dir: str = "/"
    files: list[PlanFile] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)   # paths in the base image; dirs end in '/'
    allowed: list[str] = field(default_factory=list)   # paths passed through unchecked
    mounts: list[Mount] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    secrets: SecretProvisioning | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def add_file(self, source: Path | None, dest: str, kind: FileKind = FileKind.TRUSTED,
                 mode: int = 0o644, key_name: str | None = None,
                 data: bytes | None = None) -> PlanFile:
        item = PlanFile(Path(source) if source is not None else None, dest, kind, mode,
                        key_name, data)
        self.files.append(item)
        return item
