"""ServicePlan: the libOS-neutral description of a service, filled by a framework plugin.

Data flows spec -> plan -> libOS artifacts -> image -> result. A framework plugin builds the plan
from the spec (see :func:`builder.planning.base_plan`); any plugin may then adjust it in
``enclave_build_configure``. Nothing after this stage reads the spec again.

Paths called ``dest`` or ``path`` are absolute paths inside the image / enclave; ``source`` is a
path on the build machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from enclave_build.contract.identity import PINS, EnclaveIdentity
from enclave_build.contract.names import SERVER_CONFIG
from enclave_build.contract.server_config import ServerConfig


class FileKind(enum.Enum):
    TRUSTED = "trusted"  # hashed into the manifest; integrity-checked on open
    ENCRYPTED = "encrypted"  # shipped as Gramine protected files under an encrypted mount
    ALLOWED = "allowed"  # passed through unchecked (e.g. /etc/resolv.conf)


class MountType(enum.Enum):
    CHROOT = "chroot"
    ENCRYPTED = "encrypted"
    TMPFS = "tmpfs"


#: Environment variables the host may never set for the enclave (Gramine passthrough, Occlum
#: env.untrusted): each changes what code or configuration is loaded, so the measurement would
#: not say what runs. glibc's list of variables it ignores for set-uid programs
#: (UNSECURE_ENVVARS) is the model, plus Python's and OpenSSL's.
HOST_FORBIDDEN_ENV_PREFIXES = ("LD_", "PYTHON", "GCONV_", "OPENSSL_", "SSL_CERT_", "MALLOC_")
HOST_FORBIDDEN_ENV = frozenset(
    {
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "LOCALDOMAIN",
        "GETCONF_DIR",
        "TZDIR",
        "NIS_PATH",
        "TMPDIR",
        "HOME",
        "PATH",
    }
)


def host_may_set(name: str) -> bool:
    """Whether an environment variable may come from the host (see HOST_FORBIDDEN_ENV)."""
    return not (name.startswith(HOST_FORBIDDEN_ENV_PREFIXES) or name in HOST_FORBIDDEN_ENV)


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
    path: str  # where the enclave sees it
    type: MountType = MountType.CHROOT
    uri: str | None = None  # host-side location; None for tmpfs
    key_name: str | None = None


@dataclass
class Port:
    """A port the service listens on. *spec_key*: the spec key that set it (dotted,
    ``tflite.grpc_port``), named when the port cannot be used at start-up: the port is measured
    into the enclave, so another one means a rebuild."""

    number: int
    name: str
    protocol: str = "TCP"
    spec_key: str | None = None


@dataclass
class EnclaveResources:
    size: int
    max_threads: int
    edmm: bool = False
    debug: bool = False
    isv_prod_id: int = 0
    isv_svn: int = 0
    #: Stack of the main thread and every thread's default stack (RLIMIT_STACK). Gramine's own
    #: default (256K) crashes deep C recursion; 8M matches a native process.
    stack_size: int = 8 << 20
    #: File descriptors the program may hold open (Gramine ``sys.fds.limit``); None: the
    #: libOS default (Gramine's is 900).
    max_open_files: int | None = None
    #: Image paths left out of the trusted files ([enclave] trim; builder.trim), as written.
    trim: tuple[str, ...] = ()


@dataclass
class ProvisionedKey:
    """A 16-byte wrap key the enclave receives from the secret server at start-up."""

    name: str


class KeyDelivery(enum.Enum):
    """How the enclave gets its wrap keys from the secret server."""

    #: Gramine's secret-provisioning constructor (LD_PRELOAD libsecret_prov_attest.so) attests
    #: before main() and installs exactly one key. For binaries we cannot change (TF Serving, OVMS).
    CONSTRUCTOR = "constructor"
    #: The program fetches its own keys after start (enclave-build's model server): one RA-TLS
    #: connection per key, SNI naming the key; any number of keys.
    IN_ENCLAVE = "in-enclave"
    #: The libOS fetches every key before the program starts and leaves each in a file
    #: (Occlum's init over mutual RA-TLS, ``ratls.GrSecret``); the program reads them there.
    #: A libOS backend switches IN_ENCLAVE plans to it (see
    #: :func:`builder.python_server.deliver_keys_as_files`).
    LIBOS_FILES = "libos-files"


@dataclass
class SecretProvisioning:
    server: str  # HOST:PORT
    ca_cert: Path | None = None  # the server's CA, shipped as a trusted file
    keys: list[ProvisionedKey] = field(default_factory=list)
    delivery: KeyDelivery = KeyDelivery.CONSTRUCTOR
    #: Instead of a CA: the secret server is an attested enclave ([secrets] server_measurements;
    #: see builder.server_trust). Exactly one of ca_cert and server_trust is set for IN_ENCLAVE.
    server_trust: ServerTrust | None = None


#: Standard-library trees and extension modules that never run in a model server; left out of
#: the trusted files (each trusted entry costs start-up time in the enclave). Patterns are matched
#: against paths relative to the stdlib directory; a trailing ``/`` names a directory, and a
#: directory name in ``test``/``tests``/``idle_test`` is excluded wherever it appears.
STDLIB_UNUSED: tuple[str, ...] = (
    "test/",
    "idlelib/",
    "tkinter/",
    "turtledemo/",
    "ensurepip/",
    "lib2to3/",
    "pydoc_data/",
    "distutils/",
    "venv/",
    "sqlite3/",
    "curses/",
    "dbm/",
    "__phello__/",
    "turtle.py",
    "__hello__.py",
    "config-*/",
    "site-packages/",
    "dist-packages/",
    "lib-dynload/_test*",
    "lib-dynload/_ctypes_test*",
    "lib-dynload/xx*",
    "lib-dynload/_xx*",
    "lib-dynload/_curses*",
    "lib-dynload/readline*",
    "lib-dynload/_dbm*",
    "lib-dynload/_gdbm*",
    "lib-dynload/_tkinter*",
    "lib-dynload/nis*",
    "lib-dynload/ossaudiodev*",
    "lib-dynload/audioop*",
    "lib-dynload/_sqlite3*",
    "lib-dynload/_crypt*",
)

#: Where Debian's python3 (and pip with --break-system-packages) put packages, in sys.path order.
SITE_DIRS: tuple[str, ...] = (
    "/usr/local/lib/python3.11/dist-packages",
    "/usr/lib/python3/dist-packages",
)


@dataclass
class PythonRuntime:
    """A Python interpreter and the code it runs, to be trusted file by file.

    The libOS backend resolves this against the base image's root filesystem: the interpreter,
    its standard library minus *stdlib_exclude*, the files of each installed *distribution*
    (from its ``.dist-info/RECORD``, following ``Requires-Dist``), the *modules* named by import
    name (for packages installed without metadata), and then the ELF closure of all of it.
    """

    interpreter: str = "/usr/bin/python3.11"
    version: str = "3.11"
    distributions: list[str] = field(default_factory=list)  # e.g. ["numpy", "grpcio"]
    modules: list[str] = field(default_factory=list)  # e.g. ["_cffi_backend"]
    site_dirs: tuple[str, ...] = SITE_DIRS
    stdlib_exclude: tuple[str, ...] = STDLIB_UNUSED

    @property
    def stdlib(self) -> str:
        return f"/usr/lib/python{self.version}"


@dataclass(frozen=True)
class SpecOrigin:
    """Where a plan's values came from, so a backend's refusal can name the spec key and line
    (``spec.toml:14: enclave.size: ...``) without reading the spec again."""

    source: str  # the spec file as the user named it
    lines: dict[str, int] = field(default_factory=dict)  # dotted key -> 1-based line

    def locate(self, key: str) -> str:
        """``SOURCE:LINE: KEY`` (the line of the key, or of its nearest parent in the file)."""
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.source}:{self.lines[probe]}: {key}"
            probe = probe.rpartition(".")[0]
        return f"{self.source}: {key}"


#: How a model enclave pins its secret server: every identity field, or the signer only
#: (MRSIGNER and ISV_PROD_ID equal, ISV_SVN at least the named build's).
SERVER_PINS = PINS


@dataclass(frozen=True)
class ServerTrust:
    """What enclave-build's model server requires of an RA-TLS secret server (one that runs in
    an enclave of its own and presents a self-signed RA-TLS certificate): one of *identities*
    (from the secret-server builds' measurements.json), compared as *pin* says; the quote
    verified against *root_ca* (None: Intel's SGX root) with *collateral* (a file, measured)
    or collateral fetched from *pccs_url*, accepting only *allowed_tcb_statuses*."""

    identities: tuple[EnclaveIdentity, ...]
    pin: str = "mr_enclave"  # one of SERVER_PINS
    root_ca: Path | None = None  # None: Intel's root (inside dcap-qvl)
    collateral: Path | None = None
    pccs_url: str | None = None
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)


@dataclass
class ServicePlan:
    service: str
    framework: str
    libos: str
    base_image: str
    image_tag: str
    entrypoint: str  # absolute path of the program inside the image
    argv: list[str]  # argv[0] included
    enclave: EnclaveResources
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    working_dir: str = "/"
    files: list[PlanFile] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)  # paths in the base image; dirs end in '/'
    allowed: list[str] = field(default_factory=list)  # paths passed through unchecked
    mounts: list[Mount] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    secrets: SecretProvisioning | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: Paths in the base image trusted only when the base has them (e.g. /etc/ld.so.cache).
    trusted_if_present: list[str] = field(default_factory=list)
    #: Environment variables taken from the host at start (Gramine ``{ passthrough = true }``);
    #: never for anything that decides what the enclave trusts.
    env_passthrough: list[str] = field(default_factory=list)
    #: The Python interpreter and code this service runs (None for binary entrypoints).
    python: PythonRuntime | None = None
    #: The libOS backend's own options, from its spec section (:attr:`Spec.libos_options
    #: <builder.spec.Spec.libos_options>`: the object its ``LibOS.options`` made, e.g. the
    #: Occlum backend's OcclumPlanOptions); None when the backend declares no section.
    libos_options: object | None = None
    #: The program makes SGX quotes of its own through the libOS's quote device (Gramine's
    #: /dev/attestation), e.g. for an RA-TLS identity of its own (enclave-build's secret server
    #: as an enclave); a libOS that gives programs no such device (Occlum) refuses the plan.
    needs_quote_device: bool = False
    #: Where the spec's keys are, for backends' error messages (None for hand-made plans).
    origin: SpecOrigin | None = None
    #: enclave-build's model server configuration (model-server.json), for plans that run it.
    #: Plugins adjust it as a typed value; it becomes the trusted image file SERVER_CONFIG where
    #: the plan's files become image files (:meth:`image_files`).
    server_config: ServerConfig | None = None

    def add_file(
        self,
        source: Path | None,
        dest: str,
        kind: FileKind = FileKind.TRUSTED,
        mode: int = 0o644,
        key_name: str | None = None,
        data: bytes | None = None,
    ) -> PlanFile:
        item = PlanFile(
            Path(source) if source is not None else None, dest, kind, mode, key_name, data
        )
        self.files.append(item)
        return item

    def image_files(self) -> list[PlanFile]:
        """Every file the plan adds to the image: :attr:`files`, then the files generated from
        its typed configuration (``server_config`` as the trusted SERVER_CONFIG, written by its
        contract type's one writer). LibOS backends render these, never :attr:`files` alone."""
        out = list(self.files)
        if self.server_config is not None:
            if any(f.dest == SERVER_CONFIG for f in self.files):
                raise ValueError(
                    f"{SERVER_CONFIG}: the plan adds a file where its server_config goes"
                )
            out.append(
                PlanFile(
                    None,
                    SERVER_CONFIG,
                    FileKind.TRUSTED,
                    data=self.server_config.to_json().encode(),
                )
            )
        return out
