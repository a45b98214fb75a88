"""The build pipeline: spec -> plan -> libOS artifacts -> outputs -> BuildResult.

This is the Python API behind ``enclave-build build``; the CLI only parses arguments, calls
:func:`build` and prints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from enclave_build.attestation.protected_files import KEY_SIZE as WRAP_KEY_SIZE
from enclave_build.contract.measurements import ImageRef, Measurements
from enclave_build.contract.names import MEASUREMENTS_FILE, POLICY_FILE, SERVICE_FILE
from enclave_build.contract.policy_fragment import PolicyFragment
from enclave_build.contract.provenance import PROVENANCE_FILE, DsseEnvelope
from enclave_build.contract.sbom import SBOM_FILE
from enclave_build.contract.secrets_config import SecretRule
from enclave_build.contract.standin_base import StandInBase

from . import build_stamp
from .base_kind import standin_base
from .cache import cache_root
from .deploy.service_info import ServiceInfo, service_info
from .dir_swap import recover_output, replace_dir
from .errors import EnclaveBuildError, UsageError
from .gramine.protected_files import read_wrap_key
from .gramine.signer import DetachedSigner, PemSigner, Signer
from .hashing import HashCache, default_cache_path
from .image.assemble import assemble, runtime_owner
from .image.attach import attach_provenance
from .image.blob_cache import BlobCache, Limits
from .image.blob_cache import report as blob_cache_report
from .image.oci import BlobStore, Image
from .image.output import load_into_docker, push, tidy_stale_temps, write_oci_layout
from .image.reference import DOCKER_HUB, parse_registry_ref, parse_source
from .image.sources import open_base
from .key_scan import KeyScanner
from .leak_guard import check_model_paths, scan_artifacts, scan_plan
from .model_check import check_models, warn_stateful
from .output_dir import Protected, build_output_problem, check_replaceable
from .plan import ServicePlan
from .planning import require_enforced, warn_tls_file
from .plugin_types import (
    BuildOptions,
    LibOSArtifacts,
    NullProgress,
    PendingSignature,
    Progress,
    SecretRelease,
)
from .plugins import PluginRegistry
from .provenance import make_provenance, sign_provenance
from .rootfs import RootFS
from .spec import Spec, load_spec


class SignatureNeeded(EnclaveBuildError):
    """External signing, step one done: the bytes to sign were written."""

    exit_code = 3


class DebugEnclaveWarning(UserWarning):
    pass


@dataclass(frozen=True)
class BuildResult:
    spec: Spec
    plan: ServicePlan
    artifacts: LibOSArtifacts
    measurements: Measurements | None
    output: Path | None
    generated_keys: tuple[Path, ...] = ()  # wrap keys this build created (keep them safe)
    key_files: dict[str, Path] | None = None  # key name -> wrap key file (never its bytes)
    image: Image | None = None  # the built image (blobs in the build cache)
    pushed: str | None = None  # NAME@sha256:... when pushed
    #: The base's stand-in marker when it is a stand-in (the image measures and signs, but
    #: does not boot); None for a real base.
    standin_base: StandInBase | None = None
    #: The signed provenance ([provenance] key), also in the output as provenance.dsse.json.
    provenance: DsseEnvelope | None = None
    #: Where --push attached the provenance (the cosign tag and the referrer), when it did.
    attached: tuple[str, ...] = ()


@dataclass
class WrapKeys:
    """The wrap keys of a build: each key's bytes and file; keys that do not exist yet are made
    in memory and written only by :meth:`persist`, once the build has got that far (a build
    that fails before leaves no key behind)."""

    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    files: dict[str, Path] = field(default_factory=dict)
    new: dict[str, bytes] = field(default_factory=dict, repr=False)  # name -> not yet written
    written: list[Path] = field(default_factory=list)

    def persist(self) -> list[Path]:
        """Write every new key (mode 0600, atomically: a temp file linked into place, never over
        an existing file); the files written. Another build that made the same key meanwhile
        wins, and this build fails: its encrypted files use the other bytes."""
        for name in sorted(self.new):
            path = self.files[name]
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(self.new[name])
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise EnclaveBuildError(
                        f"{path}: another build created this wrap key meanwhile; this build "
                        "encrypted with other bytes: build again (it will use that key)"
                    ) from None
            finally:
                os.unlink(tmp)
            del self.new[name]
            self.written.append(path)
        return list(self.written)


def prepare_wrap_keys(spec: Spec, plan: ServicePlan, output: Path | None) -> WrapKeys:
    """Read the wrap key of every key the plan provisions, making the missing ones in memory.

    Keys live in ``[secrets] keys_dir``, outside the image and the output directory."""
    result = WrapKeys()
    if plan.secrets is None or not plan.secrets.keys:
        return result
    keys_dir = spec.secrets.keys_dir.resolve()
    if output is not None:
        out = output.resolve()
        if keys_dir == out or out in keys_dir.parents:
            raise UsageError(
                f"{spec.path}: secrets.keys_dir ({keys_dir}) is inside the output "
                f"directory ({out}); keys must never be part of build outputs"
            )
    for item in plan.secrets.keys:
        path = keys_dir / f"{item.name}.key"
        if path.exists():
            result.keys[item.name] = read_wrap_key(path)
            if path.stat().st_mode & 0o077:
                warnings.warn(
                    f"{path}: wrap key is readable by other users (chmod 600 it)",
                    UserWarning,
                    stacklevel=3,
                )
        else:
            result.keys[item.name] = result.new[item.name] = os.urandom(WRAP_KEY_SIZE)
        result.files[item.name] = path
    return result


class GeneratedKeyWarning(UserWarning):
    """A build that failed had already written a new wrap key (e.g. after pushing the image)."""


def load(
    spec_path: str | Path, registry: PluginRegistry | None = None, *, private_keys: bool = True
) -> tuple[Spec, PluginRegistry]:
    """The spec at *spec_path*; *private_keys* False: the key files of ``[signing]`` and
    ``[provenance]`` need not exist (see :func:`builder.spec.load_spec`)."""
    registry = registry or PluginRegistry()
    spec = load_spec(
        spec_path,
        registry.framework_sections(),
        registry.libos_sections(),
        missing_note=registry.failure_note(),
        private_keys=private_keys,
        tls_refusals=registry.tls_refusals(),
    )
    return spec, registry


def make_plan(spec: Spec, registry: PluginRegistry) -> ServicePlan:
    """The framework's plan of *spec*, adjusted by every plugin; before it, each model is
    checked against what the framework serves (a located SpecError listing every model it
    does not serve), and after it a stateful model served by several instances is warned
    about."""
    framework = registry.framework(spec.service.framework)
    checks = check_models(spec, registry)
    plan = framework.plan(spec)
    if not isinstance(plan, ServicePlan):
        raise EnclaveBuildError(
            f"framework {framework.name!r} returned {type(plan).__name__}, not a ServicePlan"
        )
    registry.pm.hook.enclave_build_configure(spec=spec, plan=plan)
    require_enforced(spec, plan, framework.name)
    instances = (
        f"[{framework.section.name}] instances"
        if framework.section is not None
        and any(f.name == "instances" for f in framework.section.fields)
        else None
    )
    warn_stateful(spec, plan, checks, instances)
    return plan


def make_signer(spec: Spec, signature: Path | None = None) -> Signer | None:
    signing = spec.signing
    if signing.external:
        sig = signature or signing.signature
        if sig is None:
            return None
        assert signing.public_key is not None  # the spec requires it with external signing
        return DetachedSigner.from_files(signing.public_key, sig)
    passphrase = None
    if signing.passphrase_env:
        value = os.environ.get(signing.passphrase_env)
        if value is None:
            raise UsageError(
                f"{spec.path}: signing.passphrase_env names "
                f"{signing.passphrase_env}, which is not set in the environment"
            )
        passphrase = value.encode()
    assert signing.key is not None  # the spec requires a key without external signing
    return PemSigner.from_file(signing.key, passphrase)


@dataclass(frozen=True)
class Rebuild:
    """A build that re-creates a published one to check it (``verify-build``): the spec is
    loaded without its private keys (the files ``[signing]`` and ``[provenance]`` name need
    not exist), no provenance is signed, and *signer*, when given, signs the SIGSTRUCT instead
    of the spec's ``[signing]`` (builder.published_sigstruct)."""

    signer: Signer | None = None


@dataclass(frozen=True)
class ImageOptions:
    """Where the built image goes besides the build cache."""

    load: bool = False  # `docker load` into the local engine
    push: bool = False  # push to the registry named by the image tag
    tag: str | None = None  # overrides [image] tag


def build(
    spec_path: str | Path,
    *,
    output: str | Path | None = None,
    base: str | None = None,
    signature: str | Path | None = None,
    registry: PluginRegistry | None = None,
    progress: Progress | None = None,
    hash_cache: HashCache | None = None,
    image: ImageOptions = ImageOptions(),
    rebuild: Rebuild | None = None,
) -> BuildResult:
    """Build the spec at *spec_path*; then bound the blob cache (builder.image.blob_cache),
    keeping what this build made. A build that writes an output directory records its inputs
    (builder.build_stamp), so that `enclave-build dev` can tell whether it is up to date.
    *rebuild*: a rebuild that checks a published build (:class:`Rebuild`)."""
    blobs = BlobCache(cache_root())
    registry = registry or PluginRegistry()
    inputs = planned_inputs(spec_path, base, registry) if output is not None else None
    with ExitStack() as held:
        # From the moment the build reads its base: no blob it finds disappears before its
        # output links it (a spec error before that touches no cache).
        result = _build(
            spec_path,
            output=output,
            base=base,
            signature=signature,
            registry=registry,
            progress=progress,
            hash_cache=hash_cache,
            image=image,
            hold_cache=lambda: held.enter_context(blobs.in_use()),
            rebuild=rebuild,
        )
    keep = _image_digests(result.image) if result.image is not None else []
    blobs.prune(Limits.from_env(), keep, log=blob_cache_report)
    if inputs is not None and result.output is not None:
        build_stamp.record(
            result.spec,
            result.output,
            build_stamp.with_keys_after(inputs, result.spec, result.plan),
        )
    return result


def planned_inputs(
    spec_path: str | Path, base: str | None, registry: PluginRegistry
) -> build_stamp.BuildInputs | None:
    """The inputs a build of *spec_path* on *base* reads (builder.build_stamp), read before it
    starts; None when the spec cannot be planned (the build itself reports why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the build warns about the same spec
            spec, registry = load(spec_path, registry)
            plan = make_plan(spec, registry)
            # The build's digest cache if there is one; this step never creates it (a build
            # that fails early leaves nothing behind).
            cache = HashCache() if default_cache_path().exists() else None
            try:
                return build_stamp.build_inputs(spec, plan, base, cache)
            finally:
                if cache is not None:
                    cache.close()
    except Exception:  # noqa: BLE001 - the build itself reports the same problem
        return None


def _image_digests(image: Image) -> list[str]:
    return [image.config_descriptor.digest, *(layer.digest for layer in image.layers)]


def _build(
    spec_path: str | Path,
    *,
    output: str | Path | None,
    base: str | None,
    signature: str | Path | None,
    registry: PluginRegistry | None,
    progress: Progress | None,
    hash_cache: HashCache | None,
    image: ImageOptions,
    hold_cache: Callable[[], None],
    rebuild: Rebuild | None = None,
) -> BuildResult:
    out = Path(output).resolve() if output else None
    if out is not None:  # what a build killed earlier left (even if this one fails)
        recover_output(out)
        tidy_stale_temps(out.parent, out.name)
    spec, registry = load(spec_path, registry, private_keys=rebuild is None)
    if rebuild is not None:  # a rebuild signs no provenance (its key need not be here)
        spec = replace(spec, provenance=None)
    if out is not None:  # before anything is read or written: nothing of the user's is lost
        check_output_dir(spec, out, Path(output) if output else out)
    plan = make_plan(spec, registry)
    if image.tag:
        try:
            parse_registry_ref(image.tag)
        except UsageError as exc:
            raise UsageError(f"--tag: {exc}") from None
        plan.image_tag = image.tag
    if image.push:
        _check_push_target(plan.image_tag)
    if plan.enclave.debug:
        warnings.warn(
            "building a DEBUG enclave: the host can read and modify its memory; "
            "never use it for real secrets (enclave-build's secret server refuses "
            "every DEBUG enclave"
            + (
                ", so this one will never get its keys)"
                if plan.secrets is not None and plan.secrets.keys
                else ")"
            ),
            DebugEnclaveWarning,
            stacklevel=2,
        )
    backend = registry.libos_backend(plan.libos)
    if spec.provenance is not None and plan.libos != "gramine":
        raise UsageError(
            f"{spec.path}: [provenance]: signed provenance needs the SBOM that Gramine builds "
            f"make; the {plan.libos} backend makes none yet (remove [provenance])"
        )
    progress = progress or NullProgress()
    check_base_keyword(base, spec)
    parse_source(base or plan.base_image)  # a bad reference fails before anything is written
    warn_tls_file(spec)  # [tls] issuer = "file": the serving key existed outside the enclave
    tidy_stale_temps(Path(tempfile.gettempdir()), "enclave-build")
    signer = (
        rebuild.signer
        if rebuild is not None and rebuild.signer is not None
        else make_signer(spec, Path(signature) if signature else None)
    )
    wrap = prepare_wrap_keys(spec, plan, out)
    own_cache = hash_cache is None
    cache = hash_cache or HashCache()
    try:
        # Nothing of the key material this build can see may ship in clear (exit 2, first).
        scanner = KeyScanner(wrap.keys)
        check_model_paths(spec, scanner, wrap.files.values())
        scanned = scan_plan(spec, plan, scanner, cache, progress=progress.task)
        hold_cache()
        base_image = open_base(base or plan.base_image, progress.task, hash_cache=cache)
    except BaseException:
        if own_cache:
            cache.close()
        raise
    staging = Path(tempfile.mkdtemp(prefix=f".enclave-build.tmp-{os.getpid()}-"))  # mode 0700
    try:
        options = BuildOptions(
            signer=signer,
            sig_date=spec.signing.date,
            progress=progress,
            hash_cache=cache,
            wrap_keys=wrap.keys,
            staging=staging,
            reproducible=spec.build.reproducible,
            log_level=spec.enclave.log_level,
        )
        artifacts = backend.build(plan, base_image.rootfs, options)
        if artifacts.pending is not None:
            # Next to the spec, never inside the output directory: outputs stay all-or-nothing.
            # Step two must encrypt with the same keys (an Occlum image key is measured).
            written = _write_pending(artifacts, spec.directory / f"{plan.service}.sigstruct.tbs")
            created = wrap.persist()
            raise SignatureNeeded(_pending_message(artifacts.pending, written, spec, created))
        scan_artifacts(artifacts.files, scanner, cache, scanned, progress=progress.task)
        result = _finish(
            spec,
            plan,
            artifacts,
            base_image.image,
            out,
            wrap,
            cache,
            progress,
            image,
            base_image.rootfs,
            base or plan.base_image,
        )
        # Inside the try: staged files (encrypted models) still exist while hooks run.
        registry.pm.hook.enclave_build_finished(result=result)
    except BaseException as exc:
        if wrap.written and not isinstance(exc, SignatureNeeded):
            for path in wrap.written:
                warnings.warn(
                    f"generated wrap key {path} (mode 0600) before the build failed: "
                    "keep it, the secret server needs it for what was already "
                    "pushed or written, and it cannot be recovered",
                    GeneratedKeyWarning,
                    stacklevel=2,
                )
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if own_cache:
            cache.close()
    return result


def output_inputs(spec: Spec) -> list[Protected]:
    """What of *spec*'s inputs a build output directory must not be or contain."""
    items = [Protected("the spec's directory", spec.directory)]
    for index, model in enumerate(spec.models):
        items.append(Protected(f"models[{index}].path", model.path, inside_too=model.path.is_dir()))
    items.append(Protected("[secrets] keys_dir", spec.secrets.keys_dir))
    named = [
        ("[secrets] ca", spec.secrets.ca),
        ("[tls] cert", spec.tls.cert if spec.tls else None),
        ("[tls] key", spec.tls.key if spec.tls else None),
        ("[tls] client_ca", spec.tls.client_ca if spec.tls else None),
        ("[signing] key", spec.signing.key),
        ("[signing] public_key", spec.signing.public_key),
        ("[signing] signature", spec.signing.signature),
        ("[provenance] key", spec.provenance.key if spec.provenance else None),
    ]
    items += [Protected(what, path) for what, path in named if path is not None]
    return items


def check_output_dir(spec: Spec, out: Path, given: Path | None = None) -> None:
    """Refuse (UsageError, exit 2) an output directory the build must not replace: one that
    is or contains an input of *spec*, or holds anything but an earlier build output
    (builder.output_dir). *given*: the directory as the user wrote it, for the message."""
    check_replaceable(
        given or out,
        option="--output",
        written_by="`enclave-build build`",
        problem=build_output_problem,
        protected=output_inputs(spec),
    )


#: What `init --base standin` writes into a project (builder.init): the word is init's only.
STANDIN_KEYWORD = "standin"
PROJECT_STANDIN = f"{build_stamp.STATE_DIR}/standin"


def check_base_keyword(base: str | None, spec: Spec) -> None:
    """Refuse ``--base standin`` at once (UsageError, exit 2): a keyword of `init --base`, which
    a build would look up as Docker Hub's ``library/standin``; the message gives the spelling
    that works here."""
    if base != STANDIN_KEYWORD:
        return
    found = spec.directory / PROJECT_STANDIN
    how = (
        f"this project has one: --base dir:{found}"
        if (found / "usr").is_dir()
        else "`enclave-build base standin DIR` makes one, then --base dir:DIR"
    )
    raise UsageError(
        f"--base {base}: `standin` is a keyword of `enclave-build init --base` only; --base "
        f"here takes an image reference (this one would be Docker Hub's library/standin). For a "
        f"stand-in base, {how}"
    )


def _check_push_target(tag: str) -> None:
    ref = parse_registry_ref(tag)
    if ref.host == DOCKER_HUB and "/" not in tag.split(":")[0]:
        raise UsageError(
            f"--push: the image tag {tag!r} names no registry; set [image] tag = "
            '"HOST/NAME:TAG" or pass --tag HOST/NAME:TAG'
        )


def _finish(
    spec: Spec,
    plan: ServicePlan,
    artifacts: LibOSArtifacts,
    base: Image,
    out: Path | None,
    wrap: WrapKeys,
    cache: HashCache,
    progress: Progress,
    options: ImageOptions,
    rootfs: RootFS | None = None,
    base_ref: str = "",
) -> BuildResult:
    identity = artifacts.identity
    assert identity is not None
    measurements = Measurements(
        service=plan.service,
        framework=plan.framework,
        libos=artifacts.libos,
        identity=identity,
        image=ImageRef(plan.image_tag, None),
    )
    store = BlobStore(cache_root() / "blobs")
    built = assemble(base, plan, artifacts, measurements, store, cache, progress.task, rootfs)
    BlobCache(cache_root()).touch(_image_digests(built) + [base.config_descriptor.digest])
    # The image exists; before it leaves this machine (push, load, output), its keys must.
    created = wrap.persist()
    key_files = wrap.files
    pushed = None
    if options.push:
        pushed = push(built, plan.image_tag, progress.task)
    if options.load:
        load_into_docker(built, plan.image_tag, progress.task)
    measurements = replace(
        measurements, image=ImageRef(pushed or plan.image_tag, built.manifest_digest)
    )
    envelope = None
    attached: tuple[str, ...] = ()
    if spec.provenance is not None:
        statement = make_provenance(spec, plan, artifacts, measurements, built, base, base_ref)
        envelope = sign_provenance(statement, spec.provenance.key)
        if pushed is not None:
            attached = attach_provenance(pushed, built, envelope, progress.task)
    policy = (
        policy_fragment(plan, measurements, key_files, out, artifacts.releases)
        if key_files or certified_by_secret_server(plan)
        else None
    )
    if out is not None:
        write_output(
            out,
            built,
            plan.image_tag,
            measurements,
            policy,
            deploy_info(spec, plan, base, rootfs),
            progress.task,
            artifacts.sbom,
            envelope.to_json() if envelope is not None else None,
        )
    return BuildResult(
        spec,
        plan,
        artifacts,
        measurements,
        out,
        tuple(created),
        key_files,
        built,
        pushed,
        standin_base(rootfs) if rootfs is not None else None,
        envelope,
        attached,
    )


def deploy_info(
    spec: Spec, plan: ServicePlan, base: Image, rootfs: RootFS | None
) -> ServiceInfo | None:
    """service.json: how the built service runs (ports, health, drain, numeric user, ...)
    for `enclave-build k8s`; the user is resolved as the image assembly resolves it. None for
    a service that listens on no port (nothing to deploy behind a Service)."""
    if not plan.ports:
        return None
    base_user = (base.config.get("config") or {}).get("User") or None
    owner = runtime_owner(plan.user if plan.user and plan.user != "root" else base_user, rootfs)
    return service_info(plan, spec.deploy, owner, tls=spec.tls is not None)


def certified_by_secret_server(plan: ServicePlan) -> bool:
    """Whether the enclave asks the secret server for its serving certificate (``[tls] issuer =
    "secret-server"``): the server must know its measurements even without a key to release."""
    config = plan.server_config
    return config is not None and config.tls is not None and config.tls.issuer == "secret-server"


def policy_fragment(
    plan: ServicePlan,
    measurements: Measurements,
    key_files: dict[str, Path],
    relative_to: Path | None = None,
    releases: tuple[SecretRelease, ...] = (),
) -> str:
    """The secret-server configuration this build needs: which key goes to which enclave
    (secrets-policy.toml, :class:`enclave_build.contract.policy_fragment.PolicyFragment`).

    Without *releases* (Gramine) one rule per key: its raw bytes under its own name. With the
    libOS backend's *releases* (Occlum) one rule per release with its ``encoding``; a release
    asked for under another name than its key's (Occlum's fixed ``image_key``) is the rule
    ``KEY@NAME`` with ``requested_as = NAME``, so several services' image keys can live on one
    secret server (each released only to its own enclave).

    Paths are relative to *relative_to* (the output directory the fragment is written to), like
    the ``measurements.json`` it names, so no host path enters the outputs: `enclave-build
    secrets config` (and the secret server) resolve them against the fragment's own
    directory."""
    header = (
        f"Secret-server policy fragment for service {plan.service!r}, written by enclave-build.",
        "Merge it into the secret server's secrets.toml (`enclave-build secrets config`); the "
        "key files stay on the server.",
        "Paths are relative to this file's directory; keys_dir is the build's [secrets] keys_dir.",
        f"The enclave identity is in measurements.json (mr_enclave {measurements.mr_enclave}).",
    )

    def relative(path: Path) -> Path:
        return Path(os.path.relpath(path, relative_to)) if relative_to is not None else path

    keys_dir = None
    directories = {path.parent for path in key_files.values()}
    if len(directories) == 1:  # [secrets] keys_dir: `secrets config` takes key files only there
        keys_dir = relative(next(iter(directories)))
    users: dict[str, list[str]] = {}
    for mount in plan.mounts:
        if mount.key_name:
            users.setdefault(mount.key_name, []).append(mount.path)

    def file_of(name: str) -> Path:
        if name not in key_files:
            raise EnclaveBuildError(
                f"internal: the enclave asks for key {name!r}, which the build did not load"
            )
        return relative(key_files[name])

    rules: list[SecretRule] = []
    notes: list[str] = []
    if not releases:
        for name in sorted(key_files):
            rules.append(SecretRule(name, file_of(name), (plan.service,)))
            notes.append(f"{name}: decrypts {', '.join(users.get(name, [])) or 'the service'}")
    for release in releases:
        renamed = release.request != release.key
        rules.append(
            SecretRule(
                f"{release.key}@{release.request}" if renamed else release.key,
                file_of(release.key),
                (plan.service,),
                encoding=release.encoding,
                requested_as=release.request if renamed else None,
            )
        )
        if renamed:
            notes.append(
                f"{release.request}: what the enclave asks for; the secret server "
                f"answers with key {release.key} as {release.encoding}"
            )
        else:
            used = ", ".join(users.get(release.key, [])) or "the service"
            notes.append(f"{release.key}: decrypts {used} ({release.encoding})")
    return PolicyFragment(
        None, (MEASUREMENTS_FILE,), tuple(rules), keys_dir, header, tuple(notes)
    ).to_toml()


def write_output(
    out: Path,
    image: Image,
    tag: str | None,
    measurements: Measurements,
    policy: str | None = None,
    service: ServiceInfo | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    sbom: bytes = b"",
    provenance: str | None = None,
) -> None:
    """Write the output directory atomically: a sibling temp dir renamed into place.

    ``oci/`` is an OCI image layout of the built image; ``measurements.json`` its identity;
    ``secrets-policy.toml`` the secret server's fragment; ``service.json`` how it runs
    (builder.deploy.service_info); ``sbom.spdx.json`` the enclave's SBOM (the same bytes as in
    the image); ``provenance.dsse.json`` the signed provenance. Wrap keys never go here."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        write_oci_layout(image, staging / "oci", tag, progress)
        (staging / MEASUREMENTS_FILE).write_text(measurements.to_json())
        if policy is not None:
            (staging / POLICY_FILE).write_text(policy)
        if service is not None:
            (staging / SERVICE_FILE).write_text(service.to_json())
        if sbom:
            (staging / SBOM_FILE).write_bytes(sbom)
        if provenance is not None:
            (staging / PROVENANCE_FILE).write_text(provenance)
        os.chmod(staging, 0o755)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_pending(artifacts: LibOSArtifacts, target: Path) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    assert artifacts.pending is not None  # called for a pending signature only
    tmp.write_bytes(artifacts.pending.signing_data)
    os.replace(tmp, target)
    return target


def _pending_message(
    pending: PendingSignature, tbs: Path, spec: Spec, created: Sequence[Path] = ()
) -> str:
    keys = "".join(
        f"generated wrap key {path} (mode 0600): keep it, step two and the secret "
        "server need it, and it cannot be recovered\n"
        for path in created
    )
    return keys + (
        f"external signing: MRENCLAVE {pending.mr_enclave}\n"
        f"wrote the {len(pending.signing_data)} bytes to sign to {tbs}.\n"
        "Sign them with the enclave key (RSA-3072, e=3, PKCS#1 v1.5, SHA-256), e.g.\n"
        f"  openssl dgst -sha256 -sign enclave-key.pem -out {tbs.with_suffix('.sig')} {tbs}\n"
        "or your HSM/KMS, then finish the build with the detached signature:\n"
        f"  enclave-build build {spec.path} --signature {tbs.with_suffix('.sig')}"
    )
