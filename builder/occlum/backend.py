"""The Occlum 0.31 libOS backend: the plan is built by Occlum's own tools, in Occlum's container.

What runs where
    The renderer (:mod:`builder.occlum.render`) turns the plan into Occlum.json, a copy_bom
    YAML and init_ra_conf.json. This module runs Occlum's real tool chain on them in ONE
    container of the Occlum *build image* (default ``occlum/occlum:0.31.0-ubuntu22.04``; the
    ``build_image`` in ``[occlum]``, or the ``ENCLAVE_BUILD_OCCLUM_IMAGE`` environment
    variable, which overrides it, names another, e.g. ``enclave-build/occlum:0.31.0`` from
    ``enclave-build base build occlum``), as a user would by hand::

        occlum new instance --init-ra grpc_ratls     # plain `occlum new` when no keys are fetched
        copy_bom -f bom.yaml --root image --include-dir /opt/occlum/etc/template
        occlum build --sign-tool SIGN_TOOL --sign-key /dev/null [--image-key KEY]
                     [--enable-edmm Y]                                  # HW mode
        occlum print mrenclave; occlum print mrsigner
        occlum package [--debug] occlum_instance

    The container has no network and sees only: the base image's root filesystem read-only at
    ``ROOTFS`` (``/eb/rootfs``, the unpacked base the pipeline already has, bound as it is),
    the plan's files read-only at ``STAGE`` (``/eb/stage``, laid out by destination path),
    the rendered configuration and our scripts read-only at ``/eb/config``, the image key (only
    when the image is encrypted) read-only at ``/eb/secrets``, and a fresh work directory at
    ``/eb/work`` where the instance and the package are made. A Docker engine is required:
    without one the build stops with the command to run once there is one.

Bases
    ``plan.base_image`` (``[image] base``) is the *runtime base*: the final image is assembled on
    it, and copy_bom takes the application (interpreter, runtimes) from its root filesystem. It
    must therefore hold Occlum's runtime (``/opt/occlum/build/bin/occlum``, as the
    ``occlum-runtime`` package installs it, e.g. ``FROM occlum/occlum:0.31.0-rt-ubuntu20.04``)
    and the framework's runtimes. A framework's default base is a Gramine one: it has no
    Occlum runtime, and the build says so (set ``[image] base``). The build image is never
    part of the output. Every library copied from the base runs on Occlum's glibc (2.31 in
    Occlum 0.31), so the base's own libraries must have been built for glibc <= 2.31 (Ubuntu
    20.04): base_images/occlum-python is such a base for enclave-build's Python server.

Signing: the private key never enters the container
    ``occlum build`` runs our sign tool (``--sign-tool``), which Occlum's makefile invokes as
    ``TOOL sign -key K -config Enclave.xml -enclave libocclum-libos.so.0 -out ...signed.so``.
    (``--sign-key /dev/null``: Occlum only checks the path exists, and no key is there.)
    The tool runs the SGX SDK's two-step signing: ``sgx_sign gendata`` writes the 256 bytes to
    sign (SIGSTRUCT header and body) into the work directory and asks the builder; the builder
    signs them with the build's Signer (a PEM key, passphrase-protected or not, or the detached
    signature of external/HSM signing, checked against the data) and writes back the public key
    and signature; the tool finishes with ``sgx_sign catsig``. So a local key stays in this
    process (stricter than bind-mounting it into the container), passphrase-protected keys work
    although sgx_sign cannot open them, and the HSM flow is Gramine's: step one (no signature
    yet) stops after ``occlum build`` with the bytes to sign as a PendingSignature; step two
    (``--signature``) builds again and catsig assembles the signed enclave. Step two needs the
    same inputs to give the same bytes to sign; if they do not, the signature is refused.

Measurements
    ``occlum print mrenclave`` / ``mrsigner`` are read back, must be 64 hex digits, and must
    equal the MRENCLAVE in the signed data and SHA-256 of the signer's modulus; ISV_PROD_ID,
    ISV_SVN and DEBUG in the signed body must be the plan's. They become measurements.json and
    the secret-server policy exactly as for Gramine.

Encrypted images
    When the plan encrypts any file (or ``[occlum] encrypt_image``), the whole SEFS image is
    encrypted with ``occlum build --image-key``; the key is the wrap key the renderer names
    (``OcclumConfig.image_key``), written in Occlum's ``gen-image-key`` text form to a private
    file (0600) in a directory bound read-only into the build container only; never
    ``--buildin-image-key``. Occlum's init fetches it at start as the secret ``image_key``.

The runtime image
    The package's instance directory becomes ``/enclave`` (the image's working directory);
    symbolic links in it are replaced by the files they reach (inside the package, or in the
    runtime base for ``build/bin/*`` -> ``/opt/occlum/build/bin/*``). The entrypoint creates the
    ``run/`` directories Occlum writes at start and runs ``occlum run PROGRAM ARGS`` there;
    ``.__occlum_status`` (and so ``/enclave``) belongs to the image's runtime user.

Progress and errors
    Each step is a progress stage; the container's output lines go to the progress's ``log``
    (when it has one) or to the ``enclave_build.occlum`` logger. A failing step raises
    :class:`~builder.occlum.container.StepFailed` naming the step and quoting its last lines;
    nothing is written to the output then.
"""

from __future__ import annotations

import inspect
import logging
import os
import posixpath
import re
import shlex
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave_build.contract.identity import mr_signer_of
from enclave_build.contract.names import OCCLUM_IMAGE_ENV
from enclave_build.plugin import (
    ArtifactFile,
    BuildOptions,
    EnclaveIdentity,
    LibOSArtifacts,
    PendingSignature,
    ServicePlan,
)

from ..errors import EnclaveBuildError
from ..rootfs import RootFS, RootFSError
from . import container
from .spec_section import plan_options

LOG = logging.getLogger("enclave_build.occlum")

DEFAULT_BUILD_IMAGE = "occlum/occlum:0.31.0-ubuntu22.04"
BUILD_IMAGE_ENV = OCCLUM_IMAGE_ENV
RUNTIME_BASE_EXAMPLE = "occlum/occlum:0.31.0-rt-ubuntu20.04"
#: The runtime base for enclave-build's Python model server (base_images/occlum-python).
PYTHON_RUNTIME_BASE = "enclave-build/occlum-python:0.31.0-3.11"

ROOTFS = "/eb/rootfs"
STAGE = "/eb/stage"
CONFIG = "/eb/config"
SECRETS = "/eb/secrets"
WORK = "/eb/work"
INSTANCE = "instance"  # the instance directory under WORK
PACKAGE = "occlum_instance"  # `occlum package NAME` -> NAME.tar.gz, top dir NAME/
ENCLAVE_DIR = "/enclave"  # where the instance lives in the runtime image
OCCLUM = "/opt/occlum/build/bin/occlum"  # in the runtime base (occlum-runtime package)
SIGNED_ENCLAVE = "build/lib/libocclum-libos.signed.so"
#: How long the sign tool waits for the builder's answer, in seconds.
SIGN_TIMEOUT = 600

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class OcclumBuildError(EnclaveBuildError):
    """The Occlum build cannot go on (bad base, bad output of a step, signing refused)."""


# --- the scripts that run in the container ---------------------------------------------------

SIGN_TOOL = r"""#!/bin/bash
# enclave-build's sign tool for `occlum build --sign-tool` (SGX SDK two-step signing).
# Occlum's makefile calls: TOOL sign -key K -config C -enclave E -out O. The private key never
# enters this container: -key is ignored; the bytes to sign go to enclave-build, which answers.
set -euo pipefail
die() { echo "enclave-build sign-tool: $*" >&2; exit 1; }
[ "${1:-}" = sign ] || die "expected the command 'sign', got '${1:-}'"
shift
enclave= config= out=
while [ $# -gt 0 ]; do
  case "$1" in
    -key) [ $# -ge 2 ] || die "-key needs a value"; shift 2 ;;
    -config) [ $# -ge 2 ] || die "-config needs a value"; config=$2; shift 2 ;;
    -enclave) [ $# -ge 2 ] || die "-enclave needs a value"; enclave=$2; shift 2 ;;
    -out) [ $# -ge 2 ] || die "-out needs a value"; out=$2; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done
[ -n "$enclave" ] && [ -n "$config" ] && [ -n "$out" ] || die "-enclave, -config and -out are required"
tool="${SGX_SDK:-/opt/occlum/sgxsdk-tools}/bin/x64/sgx_sign"
x=/eb/work/sign
"$tool" gendata -enclave "$enclave" -config "$config" -out "$x/request.bin"
echo "@@enclave-build sign-request $x/request.bin"
deadline=$((SECONDS + ${EB_SIGN_TIMEOUT:-600}))
while [ ! -f "$x/answer" ]; do
  [ "$SECONDS" -lt "$deadline" ] || die "no answer from enclave-build"
  sleep 0.1
done
answer=$(<"$x/answer")
case "$answer" in
  signed)
    "$tool" catsig -enclave "$enclave" -config "$config" -out "$out" \
      -key "$x/public.pem" -sig "$x/signature.bin" -unsigned "$x/request.bin" ;;
  pending)
    echo "enclave-build sign-tool: external signing: the enclave is left unsigned for now" ;;
  *) die "enclave-build did not sign: $answer" ;;
esac
"""


def driver_script(
    *, init_ra: bool, build_flags: list[str], debug: bool, has_init_ra_conf: bool
) -> str:
    """The bash script the container runs: one ``step`` line before each step."""
    q = shlex.join
    new = ["occlum", "new", INSTANCE] + (["--init-ra", "grpc_ratls"] if init_ra else [])
    bom = [
        "copy_bom",
        "-f",
        f"{CONFIG}/bom.yaml",
        "--root",
        "image",
        "--include-dir",
        "/opt/occlum/etc/template",
    ]
    build = ["occlum", "build", "--sign-tool", f"{CONFIG}/sign-tool"] + build_flags
    package = ["occlum", "package"] + (["--debug"] if debug else []) + [PACKAGE]
    lines = [
        "set -euo pipefail",
        'step() { printf "@@enclave-build step %s\\n" "$1"; }',
        'if [ -n "${EB_OWNER:-}" ]; then trap \'chown -R "$EB_OWNER" /eb/work || true\' EXIT; fi',
        f"cd {WORK}",
        "step 'occlum new'",
        q(new),
        f"cd {INSTANCE}",
        "step 'configure'",
        f"cp {CONFIG}/Occlum.json Occlum.json",
    ]
    if has_init_ra_conf:
        lines.append(f"cp {CONFIG}/init_ra_conf.json init_ra_conf.json")
    lines += [
        "step 'copy_bom'",
        q(bom),
        "step 'occlum build'",
        q(build),
        f'if [ ! -f {SIGNED_ENCLAVE} ]; then printf "@@enclave-build pending\\n"; exit 0; fi',
        "step 'occlum print'",
        f"occlum print mrenclave > {WORK}/mrenclave",
        f"occlum print mrsigner > {WORK}/mrsigner",
        "step 'occlum package'",
        q(package),
        "",
    ]
    return "\n".join(lines)


# --- signing exchange ------------------------------------------------------------------------

SIGNING_DATA_SIZE = 256  # SIGSTRUCT header (0x000-0x080) + body (0x384-0x404)
_BODY = 128
_ATTRIBUTES = _BODY + 0x1C  # SIGSTRUCT 0x3A0
_ENCLAVE_HASH = _BODY + 0x3C  # SIGSTRUCT 0x3C0
_ISV_PROD_ID = _BODY + 0x7C  # SIGSTRUCT 0x400
_ISV_SVN = _BODY + 0x7E  # SIGSTRUCT 0x402
_FLAG_DEBUG = 0x2


@dataclass(frozen=True)
class SigningData:
    """The 256 bytes ``sgx_sign gendata`` writes, and what they say."""

    raw: bytes
    mr_enclave: str
    isv_prod_id: int
    isv_svn: int
    debug: bool

    @classmethod
    def parse(cls, raw: bytes) -> SigningData:
        if len(raw) != SIGNING_DATA_SIZE:
            raise OcclumBuildError(
                f"sgx_sign gendata wrote {len(raw)} bytes to sign; the SGX "
                f"signing data is {SIGNING_DATA_SIZE} (SIGSTRUCT header and "
                "body)"
            )
        flags = int.from_bytes(raw[_ATTRIBUTES : _ATTRIBUTES + 8], "little")
        return cls(
            raw,
            raw[_ENCLAVE_HASH : _ENCLAVE_HASH + 32].hex(),
            int.from_bytes(raw[_ISV_PROD_ID : _ISV_PROD_ID + 2], "little"),
            int.from_bytes(raw[_ISV_SVN : _ISV_SVN + 2], "little"),
            bool(flags & _FLAG_DEBUG),
        )


@dataclass
class SignExchange:
    """Answers the sign tool's ``sign-request``: signs with *signer*, or (None) leaves the
    signature pending. Files live in *directory* (the container's /eb/work/sign)."""

    directory: Path
    signer: Any
    data: SigningData | None = None
    mr_signer: str | None = None
    pending: bool = False

    def handle(self, event: str, arg: str) -> None:
        if event != "sign-request":
            return
        try:
            self.data = SigningData.parse((self.directory / "request.bin").read_bytes())
            if self.signer is None:
                self.pending = True
                self._answer("pending")
                return
            signature = self.signer.sign(self.data.raw)
            self._write("public.pem", _public_pem(signature.modulus, signature.exponent))
            self._write("signature.bin", signature.signature.to_bytes(384, "big"))
            self.mr_signer = mr_signer_of(signature.modulus)
            self._answer("signed")
        except BaseException:  # the container must not wait for an answer that never comes
            self._answer("refused")
            raise

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)

    def _answer(self, text: str) -> None:
        self._write("answer", text.encode() + b"\n")


def _public_pem(modulus: int, exponent: int) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- inputs ----------------------------------------------------------------------------------


def build_image(plan: ServicePlan) -> str:
    """The Occlum toolchain image: $ENCLAVE_BUILD_OCCLUM_IMAGE (the operator's override), else
    ``[occlum] build_image``, else :data:`DEFAULT_BUILD_IMAGE`."""
    configured = plan_options(plan).build_image
    return os.environ.get(BUILD_IMAGE_ENV) or configured or DEFAULT_BUILD_IMAGE


def check_runtime_base(plan: ServicePlan, rootfs: RootFS) -> None:
    """The base the image is assembled on must run Occlum instances."""
    missing = [p for p in (OCCLUM, "/bin/sh") if not rootfs.exists(p)]
    # The base read (rootfs): [image] base, or the --base that overrode it.
    where = plan.origin.locate("image.base") if plan.origin else "[image] base"
    if missing:
        raise OcclumBuildError(
            f"{where}: the base image {rootfs} has no {' or '.join(missing)}: with "
            f'libos = "occlum" the image is assembled on it and runs `occlum run`, so it must '
            f"be an Occlum runtime base with your runtimes, e.g. FROM {RUNTIME_BASE_EXAMPLE} "
            "plus the framework's interpreter and packages (a framework's default base is a "
            "Gramine one; for enclave-build's Python model server: `enclave-build base build "
            f'occlum-python`, then [image] base = "docker-daemon:{PYTHON_RUNTIME_BASE}")'
        )
    if not rootfs.exists(plan.entrypoint):
        raise OcclumBuildError(
            f"{where}: the base image {rootfs} has no {plan.entrypoint}, "
            f"the {plan.framework} service's program; copy_bom takes it "
            "from there, so the Occlum runtime base must hold the "
            "framework's runtimes too (an Occlum runtime image alone has "
            "none; for enclave-build's Python model server: "
            "`enclave-build base build occlum-python`)"
        )


def stage_plan_files(plan: ServicePlan, stage: Path, generated: tuple[Any, ...] = ()) -> None:
    """Lay out under *stage*, by image path, exactly the files the bom lists
    (:func:`builder.occlum.bom.staged_files`: a model directory's regular files only, never
    what a symbolic link in it reaches; and the renderer's *generated* files, the launcher).
    No secret-server CA: Occlum's init checks the server by its quote, not a CA."""
    from .bom import staged_files

    items = [(f.dest, f.source, f.data, f.mode) for f in staged_files(plan) + list(generated)]
    root = stage.resolve()
    for dest, source, data, mode in items:
        target = stage / posixpath.normpath(dest).lstrip("/")
        if not target.resolve().is_relative_to(root):
            raise OcclumBuildError(f"{dest}: a plan file's destination leaves the image root")
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            target.write_bytes(data)
        elif source is not None and source.is_file():
            shutil.copyfile(source, target)
        else:
            raise OcclumBuildError(f"{source}: added by the plan (as {dest}) but not found")
        os.chmod(target, mode)


# --- outputs ---------------------------------------------------------------------------------


def read_measurement(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip().lower()
    except OSError:
        raise OcclumBuildError(f"`occlum print {what}` wrote nothing") from None
    if not _HEX64.match(text):
        raise OcclumBuildError(f"`occlum print {what}` printed {text[:80]!r}, not 64 hex digits")
    return text


def package_files(package: Path, unpack: Path, rootfs: RootFS) -> list[ArtifactFile]:
    """The instance directory of an ``occlum package`` tarball as files under /enclave.

    Only regular files, directories and symbolic links are accepted, every name under the
    package's top directory; a link becomes a copy of the file it reaches (in the package, or
    for absolute links in the runtime base). ``run/`` is left out (the entrypoint makes it)."""
    top = PACKAGE + "/"
    regular: dict[str, tuple[Path, int]] = {}
    links: dict[str, str] = {}
    try:
        archive = tarfile.open(package, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise OcclumBuildError(
            f"`occlum package` made no readable {package.name} ({exc})"
        ) from None
    with archive:
        for member in archive:
            name = posixpath.normpath(member.name)
            if name == PACKAGE and member.isdir():
                continue
            if not name.startswith(top) or ".." in name.split("/"):
                raise OcclumBuildError(f"{package.name}: {member.name!r} is outside {top}")
            rel = name[len(top) :]
            if rel == "run" or rel.startswith("run/"):
                continue
            if member.isdir():
                continue
            if member.issym():
                links[rel] = member.linkname
            elif member.isfile():
                target = unpack / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                regular[rel] = (target, member.mode & 0o755 | 0o400)
            else:
                raise OcclumBuildError(
                    f"{package.name}: {member.name!r} is neither a file, a "
                    "directory nor a symbolic link"
                )
    files = [
        ArtifactFile(
            f"{ENCLAVE_DIR}/{rel}", source=path, mode=mode, writable=rel == ".__occlum_status"
        )
        for rel, (path, mode) in sorted(regular.items())
    ]
    for rel, link in sorted(links.items()):
        path, mode = _resolve_link(rel, link, regular, links, rootfs, package.name)
        files.append(ArtifactFile(f"{ENCLAVE_DIR}/{rel}", source=path, mode=mode))
    if SIGNED_ENCLAVE not in regular:
        raise OcclumBuildError(f"{package.name} has no {SIGNED_ENCLAVE}")
    return files


def _resolve_link(
    rel: str,
    link: str,
    regular: dict[str, tuple[Path, int]],
    links: dict[str, str],
    rootfs: RootFS,
    what: str,
) -> tuple[Path, int]:
    seen = {rel}
    current, target = rel, link
    while True:
        if target.startswith("/"):
            try:
                inner = rootfs.resolve(target)
                st = rootfs.stat(inner)
            except RootFSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise OcclumBuildError(
                    f"{what}: {rel} links to {target}, which the runtime base ({rootfs}) does "
                    f"not have: use an Occlum runtime base (e.g. FROM {RUNTIME_BASE_EXAMPLE})"
                )
            return rootfs.host_path(inner), stat.S_IMODE(st.st_mode) & 0o755 | 0o400
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        if joined.startswith("../") or joined == "..":
            raise OcclumBuildError(f"{what}: {rel} links outside the instance ({link})")
        if joined in regular:
            return regular[joined]
        if joined in links and joined not in seen:
            seen.add(joined)
            current, target = joined, links[joined]
            continue
        raise OcclumBuildError(f"{what}: {rel} links to {link}, which is not in the package")


def entrypoint(
    plan: ServicePlan, entry_points: tuple[str, ...], program: str | None = None
) -> tuple[str, ...]:
    """``occlum run PROGRAM ARGS`` from the instance directory (the image's working directory,
    /enclave), after creating the run/ directories Occlum writes at start. PROGRAM and ARGS
    are positional parameters of the fixed script, never part of it. *program*: the
    renderer's (its launcher for Python services, which fixes the command line itself and so
    gets no arguments); default the plan's entrypoint with the plan's arguments."""
    args = list(plan.argv[1:]) if program in (None, plan.entrypoint) else []
    program = program or plan.entrypoint
    if entry_points and not any(
        program == p or program.startswith(p.rstrip("/") + "/") for p in entry_points
    ):
        raise OcclumBuildError(
            f"the entrypoint {program} is under none of Occlum.json's "
            f"entry_points ({', '.join(entry_points)})"
        )
    script = f'mkdir -p run/mount/__ROOT run/initfs/__ROOT && exec {OCCLUM} run "$@"'
    return ("/bin/sh", "-c", script, "occlum-run", program, *args)


# --- the backend -----------------------------------------------------------------------------


def _hint(image: str, plan: ServicePlan) -> str:
    spec = plan.origin.source if plan.origin else "spec.toml"
    return (
        f"  docker pull {image}\n  enclave-build build {spec}   # again, with the options "
        "you gave\n"
        f"(another Occlum 0.31 toolchain image: [occlum] build_image, or "
        f"{BUILD_IMAGE_ENV}=IMAGE)"
    )


def _line_sink(progress: Any) -> Callable[[str], None]:
    log = getattr(progress, "log", None)
    if callable(log):
        return lambda line: log(f"occlum | {line}")
    return lambda line: LOG.info("%s", line)


def _stages(progress: Any) -> Callable[[str], None]:
    """Start a progress stage per container step (each ends when the next begins; "" ends the
    last). The CLI's progress counts them in steps; any Progress works."""
    current: list[Callable[[int], None]] = []
    try:
        counts_steps = "unit" in inspect.signature(progress.task).parameters
    except (TypeError, ValueError):
        counts_steps = False

    def start(step: str) -> None:
        if current:
            current.pop()(1)
        if step:
            description = f"occlum: {step}"
            current.append(
                progress.task(description, 1, unit="step")
                if counts_steps
                else progress.task(description, 1)
            )

    return start


@dataclass(frozen=True)
class Workspace:
    """The private directories of one build (under the pipeline's staging directory, 0700)."""

    stage: Path  # -> STAGE: the plan's files by destination
    config: Path  # -> CONFIG: Occlum.json, bom.yaml, init_ra_conf.json, our scripts
    secrets: Path  # -> SECRETS: the image key (bound only when the image is encrypted)
    work: Path  # -> WORK (read-write): the instance, the package, the signing exchange
    package: Path  # the package unpacked (host only)

    @classmethod
    def create(cls, top: Path) -> Workspace:
        paths = {name: top / name for name in ("stage", "config", "secrets", "work", "package")}
        for path in paths.values():
            path.mkdir(parents=True, mode=0o700)
        (paths["work"] / "sign").mkdir(mode=0o700)
        return cls(**paths)


def build(plan: ServicePlan, rootfs: RootFS, options: BuildOptions) -> LibOSArtifacts:
    from .render import ROOTFS as RENDER_ROOTFS
    from .render import STAGE as RENDER_STAGE
    from .render import OcclumOptions, render

    if (RENDER_ROOTFS, RENDER_STAGE) != (ROOTFS, STAGE):
        raise OcclumBuildError(
            f"internal: the renderer expects {RENDER_ROOTFS} and "
            f"{RENDER_STAGE}, the container binds {ROOTFS} and {STAGE}"
        )
    if options.staging is None:
        raise OcclumBuildError("internal: the Occlum backend needs a staging directory")
    check_runtime_base(plan, rootfs)
    config = render(plan, OcclumOptions(rootfs=rootfs))
    image = build_image(plan)
    space = Workspace.create(options.staging / "occlum")
    stage_plan_files(plan, space.stage, config.generated)
    job = prepare_job(plan, config, rootfs, space, image, options.wrap_keys)

    hint = _hint(image, plan)
    client = container.connect(hint)
    container.ensure_image(client, image, hint, options.progress.task)
    exchange = SignExchange(space.work / "sign", options.signer)
    stage = _stages(options.progress)
    outcome = container.run_job(
        client, job, _line_sink(options.progress), exchange.handle, on_step=stage
    )
    container.raise_for_outcome(outcome, image)
    stage("")
    return collect(plan, config, rootfs, space, exchange, outcome)


def prepare_job(
    plan: ServicePlan,
    config: Any,
    rootfs: RootFS,
    space: Workspace,
    image: str,
    wrap_keys: dict[str, bytes],
) -> container.ContainerJob:
    """Write the configuration, scripts and (when encrypting) the image key; the job to run."""
    from .init_ra import image_key_text

    # -key of the sign tool: Occlum only checks that the path exists; no key is in here.
    build_flags = ["--sign-key", "/dev/null"]
    if config.image_key is not None:
        key = wrap_keys.get(config.image_key)
        if key is None or len(key) != 16:
            raise OcclumBuildError(
                f"no 16-byte wrap key {config.image_key!r} was loaded for the image"
            )
        fd = os.open(space.secrets / "image_key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(image_key_text(key))
        build_flags += ["--image-key", f"{SECRETS}/image_key"]
    if plan.enclave.edmm:
        build_flags += ["--enable-edmm", "Y"]

    conf = space.config
    (conf / "Occlum.json").write_bytes(config.occlum_json)
    (conf / "bom.yaml").write_bytes(config.bom_yaml)
    if config.init_ra_conf is not None:
        (conf / "init_ra_conf.json").write_bytes(config.init_ra_conf)
    (conf / "driver.sh").write_text(
        driver_script(
            init_ra=config.init_ra_conf is not None,
            build_flags=build_flags,
            debug=plan.enclave.debug,
            has_init_ra_conf=config.init_ra_conf is not None,
        )
    )
    (conf / "sign-tool").write_text(SIGN_TOOL)
    for name in os.listdir(conf):
        os.chmod(conf / name, 0o755 if name in ("driver.sh", "sign-tool") else 0o644)
    os.chmod(conf, 0o755)

    binds = [
        container.Bind(rootfs.root, ROOTFS),
        container.Bind(space.stage, STAGE),
        container.Bind(conf, CONFIG),
        container.Bind(space.work, WORK, read_only=False),
    ]
    if config.image_key is not None:
        binds.append(container.Bind(space.secrets, SECRETS))
    env = {"EB_SIGN_TIMEOUT": str(SIGN_TIMEOUT)}
    if os.getuid() != 0:  # files the container's root makes must stay removable by us
        env["EB_OWNER"] = f"{os.getuid()}:{os.getgid()}"
    return container.ContainerJob(
        image, ("/bin/bash", f"{CONFIG}/driver.sh"), tuple(binds), env, working_dir=WORK
    )


def collect(
    plan: ServicePlan,
    config: Any,
    rootfs: RootFS,
    space: Workspace,
    exchange: SignExchange,
    outcome: container.JobOutcome,
) -> LibOSArtifacts:
    """The artifacts of a finished container run: checked measurements and the package's
    files, or the pending signature of external signing's step one."""
    if exchange.data is None:
        raise OcclumBuildError(
            "`occlum build` never asked to sign the enclave (was the --sign-tool ignored?)"
        )
    data = exchange.data
    _check_signed_body(plan, data)
    if exchange.pending:
        if ("pending", "") not in outcome.events:
            raise OcclumBuildError("the enclave was left unsigned, but the build went on")
        return LibOSArtifacts(
            "occlum",
            (),
            (),
            None,
            PendingSignature(data.mr_enclave, data.raw),
            manifest=config.occlum_json,
        )
    mr_enclave = read_measurement(space.work / "mrenclave", "mrenclave")
    mr_signer = read_measurement(space.work / "mrsigner", "mrsigner")
    if mr_enclave != data.mr_enclave:
        raise OcclumBuildError(
            f"`occlum print mrenclave` says {mr_enclave}, but the enclave "
            f"signed was {data.mr_enclave}"
        )
    if mr_signer != exchange.mr_signer:
        raise OcclumBuildError(
            f"`occlum print mrsigner` says {mr_signer}, but the enclave was "
            f"signed by {exchange.mr_signer}"
        )
    files = package_files(space.work / INSTANCE / f"{PACKAGE}.tar.gz", space.package, rootfs)
    identity = EnclaveIdentity(mr_enclave, mr_signer, data.isv_prod_id, data.isv_svn, data.debug)
    from .configure import releases

    return LibOSArtifacts(
        "occlum",
        tuple(files),
        entrypoint(plan, tuple(config.entry_points), config.program or None),
        identity,
        manifest=config.occlum_json,
        releases=releases(config.kms_keys),
    )


def _check_signed_body(plan: ServicePlan, data: SigningData) -> None:
    problems = []
    if data.isv_prod_id != plan.enclave.isv_prod_id:
        problems.append(f"ISV_PROD_ID {data.isv_prod_id} (the plan has {plan.enclave.isv_prod_id})")
    if data.isv_svn != plan.enclave.isv_svn:
        problems.append(f"ISV_SVN {data.isv_svn} (the plan has {plan.enclave.isv_svn})")
    if data.debug != plan.enclave.debug:
        problems.append(f"DEBUG {data.debug} (the plan has {plan.enclave.debug})")
    if problems:
        raise OcclumBuildError(
            "the enclave Occlum built is not the one planned: " + "; ".join(problems)
        )
