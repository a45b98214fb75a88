"""The Gramine libOS backend: plan -> final manifest -> MRENCLAVE -> signed SIGSTRUCT.

1. The manifest is rendered from a jinja2 template (StrictUndefined) into TOML text, parsed
   into a dict and checked against the Gramine 1.9 schema.
2. Trusted files are expanded and hashed: paths the plan adds come from the build machine,
   everything else from the base image's root filesystem.
3. The final manifest is serialized by tomli-w (deterministic for the same dict) and measured
   with the base image's own libpal.so and offsets file, then signed.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
import tomllib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import jinja2
import tomli_w

from enclave_build.contract.sbom import SBOM_PATH
from enclave_build.contract.size import Size
from enclave_build.plugin import (
    SECRET_SERVER_CA,
    ArtifactFile,
    BuildOptions,
    EnclaveIdentity,
    FileKind,
    KeyDelivery,
    LibOSArtifacts,
    PendingSignature,
    PlanFile,
    ServicePlan,
)

from ..elf import LoaderView, closure, read_deps
from ..errors import EnclaveBuildError, UsageError
from ..hashing import HashCache, hash_files
from ..model_digests import plan_model_files
from ..model_files import plan_file_contents, regular_files
from ..plan import host_may_set
from ..python_closure import python_closure
from ..rootfs import RootFS
from ..sbom import LibOSInfo, ModelFile, SbomInputs, TrustedFile, sbom_bytes
from ..trim import Trim
from . import protected_files, trusted_files
from .manifest_schema import check_manifest
from .measure import EnclaveTooSmall, PalImage
from .offsets import Offsets
from .runtime import GramineRuntime, discover
from .sign import sign_manifest, signing_data_for
from .signer import Signer
from .sigstruct import SigDate

ENCLAVE_DIR = "/enclave"
TEMPLATE = "manifest.toml.j2"


class ManifestRenderError(EnclaveBuildError):
    pass


def _toml(value: Any) -> str:
    """A TOML literal for a string, number, bool or array (via tomli-w's own escaping)."""
    if isinstance(value, dict):
        raise ManifestRenderError("tables cannot be rendered inline by the `toml` filter")
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("enclave_build.builder.gramine", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["toml"] = _toml
    return env


def size_text(size: int) -> str:
    """A manifest size: ``"4G"``, ``"256M"``, else bytes."""
    return Size(size).text()


def manifest_path(plan: ServicePlan) -> str:
    return f"{ENCLAVE_DIR}/{plan.service}.manifest.sgx"


def sigstruct_path(plan: ServicePlan) -> str:
    return f"{ENCLAVE_DIR}/{plan.service}.sig"


DEFAULT_LD_LIBRARY_PATH = "/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
DEFAULT_HOME = "/tmp"


ARCH_LIBDIR = "/lib/x86_64-linux-gnu"


def render_manifest(
    plan: ServicePlan,
    runtime: GramineRuntime,
    log_level: str = "error",
    extra_trusted: list[str] | None = None,
    arch_libdir: bool = False,
) -> dict[str, Any]:
    """The manifest as a dict, with trusted files not yet expanded or hashed.

    *extra_trusted* are image paths resolved against the base before rendering (the Python
    closure, paths trusted when present); the ELF closure is added by :func:`finalize_manifest`.
    *arch_libdir*: the base keeps libraries in a real /lib/x86_64-linux-gnu (no merged /usr),
    which Gramine's /lib mount would hide: mount it too and search it.
    """
    trusted = [f"file:{runtime.runtimedir}/", f"file:{plan.entrypoint}"]
    trusted += [f"file:{p}" for p in plan.trusted]
    trusted += [f"file:{p}" for p in extra_trusted or []]
    files = plan.image_files()
    trusted += [f"file:{f.dest}" for f in files if f.kind is FileKind.TRUSTED]
    if plan.secrets and plan.secrets.ca_cert:
        trusted.append(f"file:{ca_cert_dest(plan)}")
    allowed = [f"file:{p}" for p in plan.allowed]
    allowed += [f"file:{f.dest}" for f in files if f.kind is FileKind.ALLOWED]
    values = {"HOME": DEFAULT_HOME, **plan.env, **provisioning_env(plan)}
    unsafe = sorted(n for n in set(plan.env_passthrough) if not host_may_set(n))
    if unsafe:
        raise ManifestRenderError(
            f"environment variable(s) {', '.join(unsafe)} would be "
            "passed through from the host, but each changes what the "
            "enclave loads (set it as a measured value instead)"
        )
    clash = sorted(set(values) & set(plan.env_passthrough))
    if clash:
        raise ManifestRenderError(
            f"environment variable(s) {', '.join(clash)} both set and passed through from the host"
        )
    env = sorted((k, v) for k, v in values.items() if k != "LD_LIBRARY_PATH")
    mounts = [
        {"path": m.path, "type": m.type.value, "uri": m.uri, "key_name": m.key_name}
        for m in plan.mounts
    ]
    try:
        text = (
            _environment()
            .get_template(TEMPLATE)
            .render(
                plan=plan,
                runtime=runtime,
                log_level=log_level,
                env=env,
                mounts=mounts,
                passthrough=sorted(set(plan.env_passthrough)),
                ld_library_path=_library_path(plan, arch_libdir),
                arch_libdir=ARCH_LIBDIR if arch_libdir else "",
                tmpfs_tmp=not any(m.path.rstrip("/") == "/tmp" for m in plan.mounts),
                stack_size=size_text(plan.enclave.stack_size),
                enclave_size=size_text(plan.enclave.size),
                remote_attestation="dcap" if plan.secrets else "none",
                provisioning=bool(plan.secrets and plan.secrets.keys),
                trusted=list(dict.fromkeys(trusted)),
                allowed=list(dict.fromkeys(allowed)),
            )
        )
    except jinja2.TemplateError as exc:
        raise ManifestRenderError(f"manifest template: {exc}") from exc
    try:
        manifest = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestRenderError(f"rendered manifest is not valid TOML ({exc}):\n{text}") from exc
    check_manifest(manifest)
    return manifest


def _library_path(plan: ServicePlan, arch_libdir: bool) -> str:
    dirs = plan.env.get("LD_LIBRARY_PATH", DEFAULT_LD_LIBRARY_PATH).split(":")
    if arch_libdir and ARCH_LIBDIR not in dirs:
        dirs.insert(1 if dirs and dirs[0] == "/lib" else 0, ARCH_LIBDIR)
    return ":".join(dirs)


def has_arch_libdir(rootfs: RootFS) -> bool:
    """True when /lib is a real directory holding x86_64-linux-gnu (no merged /usr)."""
    st = rootfs.lstat("/lib")
    arch = rootfs.lstat(ARCH_LIBDIR)
    return (
        st is not None
        and stat.S_ISDIR(st.st_mode)
        and arch is not None
        and stat.S_ISDIR(arch.st_mode)
    )


PROVISION_LIBRARY = "libsecret_prov_attest.so"


def provisioning_env(plan: ServicePlan) -> dict[str, str]:
    """Environment for Gramine's secret-provisioning constructor (LD_PRELOADed): before main(),
    it attests to the secret server over RA-TLS and installs the one key it receives as
    /dev/attestation/keys/<name>, which the encrypted mounts use."""
    if plan.secrets is None or not plan.secrets.keys:
        return {}
    if plan.secrets.delivery is KeyDelivery.IN_ENCLAVE:
        return {}  # the program fetches its own keys; nothing runs before main()
    if len(plan.secrets.keys) != 1:
        names = ", ".join(k.name for k in plan.secrets.keys)
        raise ManifestRenderError(
            f"the plan needs several provisioned keys ({names}), but Gramine's provisioning "
            "constructor installs exactly one key per enclave start: use one key per service"
        )
    if plan.secrets.ca_cert is None:
        raise ManifestRenderError("secret provisioning needs the secret server's CA ([secrets] ca)")
    preload = plan.env.get("LD_PRELOAD")
    return {
        "LD_PRELOAD": f"{PROVISION_LIBRARY}:{preload}" if preload else PROVISION_LIBRARY,
        "SECRET_PROVISION_CONSTRUCTOR": "1",
        "SECRET_PROVISION_SET_KEY": plan.secrets.keys[0].name,
        "SECRET_PROVISION_SERVERS": plan.secrets.server,
        "SECRET_PROVISION_CA_CHAIN_PATH": ca_cert_dest(plan),
    }


def ca_cert_dest(plan: ServicePlan) -> str:
    return SECRET_SERVER_CA


def _plan_sources(plan: ServicePlan) -> list[PlanFile]:
    """Files the plan adds in clear text (trusted or allowed), including the secret server CA."""
    files = [f for f in plan.image_files() if f.kind is not FileKind.ENCRYPTED]
    if plan.secrets and plan.secrets.ca_cert:
        files.append(PlanFile(plan.secrets.ca_cert, ca_cert_dest(plan), FileKind.TRUSTED))
    return files


def expand_plan_file(item: PlanFile, uri_path: str) -> list[tuple[str, Path | bytes]]:
    """(uri, content) for a trusted path the plan itself adds: a host path or generated bytes."""
    if item.data is not None:
        return [(f"file:{uri_path}", item.data)]
    assert item.source is not None
    if item.dest.endswith("/"):
        base = item.source / uri_path[len(item.dest) :]
        if base.is_dir():
            return [
                (f"file:{item.dest}{p.relative_to(item.source).as_posix()}", p)
                for p in regular_files(base)
            ]
        return [(f"file:{uri_path}", base)]
    return [(f"file:{uri_path}", item.source)]


def loader_view(manifest: dict[str, Any], rootfs: RootFS) -> LoaderView:
    """The enclave's dynamic-loader view of the image, from the manifest's mounts and
    LD_LIBRARY_PATH (Gramine's glibc at /lib first)."""
    mounts = {
        m["path"]: m["uri"][len("file:") :]
        for m in manifest["fs"]["mounts"]
        if m.get("type", "chroot") == "chroot" and m.get("uri", "").startswith("file:")
    }
    path = manifest["loader"].get("env", {}).get("LD_LIBRARY_PATH", "")
    if isinstance(path, dict):
        path = path.get("value", "")
    return LoaderView(rootfs, mounts, tuple(p for p in path.split(":") if p.startswith("/")))


def elf_closure_uris(
    manifest: dict[str, Any],
    plan: ServicePlan,
    rootfs: RootFS,
    image_files: list[str],
    plan_files: dict[str, Path],
) -> list[str]:
    """file: URIs of the libraries the trusted ELF files need that are not trusted yet.

    The entrypoint's closure is strict (a missing library is an error naming it); libraries
    other trusted objects need (plugins a runtime may never load) are added when present."""
    view = loader_view(manifest, rootfs)
    known = {dest: read_deps(source) for dest, source in plan_files.items()}
    entry = closure([plan.entrypoint], view, strict=True, known=known)
    rest = closure(list(plan_files) + image_files, view, known=known)
    out: list[str] = []
    for lib in list(entry.libraries) + list(rest.libraries):
        out.append(f"file:{lib}")
        try:
            resolved = rootfs.resolve(lib)
        except Exception:  # noqa: BLE001 - found by the resolver, so it resolves
            continue
        if resolved != lib:
            out.append(f"file:{resolved}")  # the target too, should the LibOS follow the link
    return list(dict.fromkeys(out))


def finalize_manifest(
    manifest: dict[str, Any],
    plan: ServicePlan,
    rootfs: RootFS,
    cache: HashCache | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    sbom: Callable[[tuple[TrustedFile, ...]], bytes] | None = None,
) -> bytes:
    """Expand and hash every trusted file, the ELF closure of the trusted ELF files and the
    LibOS entrypoint; return the final bytes. *sbom* makes the SBOM's bytes from the trusted
    files; they become a trusted file too (``SBOM_PATH``)."""
    added = _plan_sources(plan)
    from_plan: list[tuple[str, Path | bytes]] = []
    from_image: list[str] = []
    for uri in manifest["sgx"]["trusted_files"]:
        path = uri[len("file:") :]
        owner = next(
            (
                f
                for f in added
                if f.dest == path or (f.dest.endswith("/") and path.startswith(f.dest))
            ),
            None,
        )
        if owner is not None:
            from_plan.extend(expand_plan_file(owner, path))
        else:
            from_image.append(uri)

    image_files = trusted_files.expand(from_image, rootfs)
    entries: dict[str, Path | bytes] = {f.uri: rootfs.host_path(f.inner) for f in image_files}
    for uri, content in from_plan:
        if isinstance(content, Path) and not content.is_file():
            raise trusted_files.TrustedFileError(f"{content}: added by the plan but not found")
        entries[uri] = content  # what the plan adds replaces the base image's file
    plan_elves = {
        uri[len("file:") :]: c
        for uri, c in from_plan
        if isinstance(c, Path) and not c.name.endswith((".py", ".pyc", ".json", ".txt"))
    }
    extra = elf_closure_uris(
        manifest,
        plan,
        rootfs,
        [f.uri[len("file:") :] for f in image_files if f.uri[len("file:") :] not in plan_elves],
        plan_elves,
    )
    extra = [uri for uri in extra if uri not in entries]
    for item in trusted_files.expand(extra, rootfs):
        entries.setdefault(item.uri, rootfs.host_path(item.inner))
    if plan.enclave.trim:
        entries = apply_trim(entries, manifest, plan, rootfs, plan_elves)
    libos_host = rootfs.host_path(rootfs.resolve(manifest["loader"]["entrypoint"]["uri"][5:]))

    # Several URIs can name one host file (a link and its target, the LibOS entrypoint): hash
    # and count each once, so the progress total is what hashing advances.
    paths = list(dict.fromkeys([c for c in entries.values() if isinstance(c, Path)] + [libos_host]))
    total = sum(p.stat().st_size for p in paths)
    advance = progress("hashing trusted files", total) if progress else None
    digests: dict[Any, str] = dict(hash_files(paths, cache=cache, progress=advance))
    for uri in entries:
        try:
            uri.encode("utf-8")
        except UnicodeEncodeError:
            raise trusted_files.TrustedFileError(
                f"{uri!a}: a trusted file whose name is not UTF-8; the Gramine manifest (TOML) "
                "cannot name it: rename it, or leave it out of the image"
            ) from None

    def sha256(content: Path | bytes) -> str:
        return (
            digests[content] if isinstance(content, Path) else hashlib.sha256(content).hexdigest()
        )

    if sbom is not None:
        # The SBOM lists every trusted file with the digest the manifest holds, and is one
        # itself: the manifest (hence MRENCLAVE) binds its hash.
        mounts = enclave_mounts(manifest)
        listed = tuple(
            TrustedFile(
                enclave_view(mounts, uri[len("file:") :]), uri[len("file:") :], sha256(c), c
            )
            for uri, c in entries.items()
        )
        entries[f"file:{SBOM_PATH}"] = sbom(listed)
    manifest["sgx"]["trusted_files"] = [
        {"uri": uri, "sha256": sha256(c)} for uri, c in entries.items()
    ]
    manifest["loader"]["entrypoint"]["sha256"] = digests[libos_host]
    return tomli_w.dumps(manifest).encode("utf-8")


def apply_trim(
    entries: dict[str, Path | bytes],
    manifest: dict[str, Any],
    plan: ServicePlan,
    rootfs: RootFS,
    plan_elves: dict[str, Path],
) -> dict[str, Path | bytes]:
    """*entries* without the trusted files ``[enclave] trim`` leaves out (builder.trim), but
    with every library a kept ELF file needs. A trim that would leave out the program's
    entrypoint, or has an entry matching no trusted file, is a spec error naming the entry."""
    trim = Trim.of(plan.enclave.trim)
    where = plan.origin.locate("enclave.trim") if plan.origin is not None else "enclave.trim"
    matched: set[str] = set()
    removed: set[str] = set()
    for uri in entries:
        entry = trim.match(uri[len("file:") :])
        if entry is not None:
            matched.add(entry.text)
            removed.add(uri)
    program = trim.match(plan.entrypoint)
    if program is not None:
        raise UsageError(
            f"{where}: {program.text!r} leaves out the program itself ({plan.entrypoint}); "
            "remove that entry"
        )
    unmatched = [e.text for e in trim.entries if e.text not in matched]
    if unmatched:
        raise UsageError(
            f"{where}: {unmatched[0]!r} matches no trusted file of this build"
            + (f" (nor do {len(unmatched) - 1} more entries)" if len(unmatched) > 1 else "")
            + "; remove it (the base image changed? `enclave-build profile --write` writes "
            "the trim again)"
        )
    kept = [uri[len("file:") :] for uri in entries if uri not in removed]
    needed = set(
        elf_closure_uris(
            manifest,
            plan,
            rootfs,
            [p for p in kept if p not in plan_elves],
            {p: c for p, c in plan_elves.items() if f"file:{p}" not in removed},
        )
    )
    return {uri: c for uri, c in entries.items() if uri not in removed or uri in needed}


def shipped_plan_files(plan: ServicePlan, final: bytes) -> list[ArtifactFile]:
    """The files the plan adds in clear text, as image files: without those ``[enclave]
    trim`` left out of the trusted files *final* holds (an untrusted file the build ships
    where the program imports from would look added afterwards: builder.image.verify)."""
    out: list[ArtifactFile] = []
    if not plan.enclave.trim:
        for item in _plan_sources(plan):
            out.append(ArtifactFile(item.dest, data=item.data, source=item.source, mode=item.mode))
        return out
    kept = {e["uri"] for e in tomllib.loads(final.decode("utf-8"))["sgx"]["trusted_files"]}
    for item in _plan_sources(plan):
        if item.kind is not FileKind.TRUSTED:  # allowed files are never trimmed
            out.append(ArtifactFile(item.dest, data=item.data, source=item.source, mode=item.mode))
            continue
        whole = item.data is not None or item.source is None or not item.source.is_dir()
        if whole:
            if f"file:{item.dest}" in kept:
                out.append(
                    ArtifactFile(item.dest, data=item.data, source=item.source, mode=item.mode)
                )
            continue
        for uri, content in expand_plan_file(item, item.dest):
            if uri in kept and isinstance(content, Path):
                out.append(ArtifactFile(uri[len("file:") :], source=content, mode=item.mode))
    return out


def enclave_mounts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(image directory, enclave path) of the manifest's chroot mounts and root, longest first."""
    pairs = [("/", "/")]
    for m in manifest["fs"]["mounts"]:
        uri = m.get("uri", "")
        if m.get("type", "chroot") == "chroot" and uri.startswith("file:"):
            pairs.append((uri[len("file:") :], m["path"]))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def enclave_view(mounts: list[tuple[str, str]], image_path: str) -> str:
    """Where the enclave sees the image file *image_path* (through the longest mount holding it)."""
    for source, target in mounts:
        if image_path == source:
            return target
        prefix = source.rstrip("/") + "/"
        if image_path.startswith(prefix):
            return posixpath.join(target, image_path[len(prefix) :])
    return image_path


def encrypted_items(item: PlanFile) -> list[tuple[str, Path | bytes]]:
    return plan_file_contents(item)


def encrypt_plan_files(plan: ServicePlan, options: BuildOptions) -> list[ArtifactFile]:
    """Encrypt every ENCRYPTED plan file as a Gramine protected file into the staging directory.

    The embedded path is the file's normalized absolute path in the image: the enclave opens it
    there through its encrypted mount (mount uri = mount path), and Gramine checks the two match.
    """
    todo = [
        (item, dest, content)
        for item in plan.image_files()
        if item.kind is FileKind.ENCRYPTED
        for dest, content in encrypted_items(item)
    ]
    if not todo:
        return []
    if options.staging is None:
        raise EnclaveBuildError("internal: encrypted files need a staging directory")
    total = sum(len(c) if isinstance(c, bytes) else c.stat().st_size for _, _, c in todo)
    advance = options.progress.task("encrypting", total)
    out = []
    for item, dest, content in todo:
        key = options.wrap_keys.get(item.key_name or "")
        if key is None:
            raise EnclaveBuildError(f"{dest}: no wrap key {item.key_name!r} was loaded")
        embedded = posixpath.normpath(dest)
        staged = options.staging / "encrypted" / embedded.lstrip("/")
        staged.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            protected_files.encrypt_bytes(
                key, content, staged, embedded, reproducible=options.reproducible
            )
            advance(len(content))
        else:
            protected_files.encrypt_file(
                key, content, staged, embedded, reproducible=options.reproducible, progress=advance
            )
        # Gramine opens an encrypted file's host file read-write: the runtime user must own it.
        out.append(
            ArtifactFile(
                embedded, source=staged, mode=item.mode | 0o600, writable=True, ciphertext=True
            )
        )
    return out


def resolve_trusted(plan: ServicePlan, rootfs: RootFS) -> list[str]:
    """Image paths the plan trusts that depend on what the base holds: the Python closure and
    the paths trusted when present."""
    paths: list[str] = []
    if plan.python is not None:
        paths += python_closure(plan.python, rootfs).files
    paths += [p for p in plan.trusted_if_present if rootfs.exists(p.rstrip("/") or "/")]
    return paths


def _size_text(size: int) -> str:
    return Size(size).text(fallback="hex")


def _too_small(plan: ServicePlan, exc: EnclaveTooSmall) -> UsageError:
    """The spec's enclave size (or the framework default) cannot hold the enclave: a spec error
    naming [enclave] size, its line and the smallest size that fits."""
    where = plan.origin.locate("enclave.size") if plan.origin is not None else "enclave.size"
    size = _size_text(plan.enclave.size)
    return UsageError(
        f"{where}: {size!r} is too small for {exc.threads} threads, the manifest "
        f"and libpal; allowed: a power of two of at least "
        f"{_size_text(exc.needed)!r} (or fewer [enclave] max_threads)"
    )


def build(plan: ServicePlan, rootfs: RootFS, options: BuildOptions) -> LibOSArtifacts:
    runtime = discover(rootfs)
    if (
        plan.secrets
        and plan.secrets.keys
        and plan.secrets.delivery is KeyDelivery.CONSTRUCTOR
        and not rootfs.exists(posixpath.join(runtime.runtimedir, PROVISION_LIBRARY))
    ):
        raise EnclaveBuildError(
            f"the base image's Gramine has no {runtime.runtimedir}/{PROVISION_LIBRARY}, which "
            "encrypted models need to receive their key (install Gramine's SGX build with RA-TLS)"
        )
    if not rootfs.exists(plan.entrypoint):
        raise EnclaveBuildError(
            f"entrypoint {plan.entrypoint} not found in the base image ({rootfs})"
        )
    manifest = render_manifest(
        plan,
        runtime,
        options.log_level,
        resolve_trusted(plan, rootfs),
        arch_libdir=has_arch_libdir(rootfs),
    )
    # BuildOptions holds these as object (the plugin API names no Gramine type)
    hash_cache = cast("HashCache | None", options.hash_cache)
    encrypted = encrypt_plan_files(plan, options)
    libos = LibOSInfo("gramine", runtime.version, runtime.libpal, rootfs.host_path(runtime.libpal))
    made: list[bytes] = []

    def sbom(trusted: tuple[TrustedFile, ...]) -> bytes:
        models = model_files(plan, encrypted if options.reproducible else [])
        inputs = SbomInputs(plan.service, trusted, models, libos, rootfs)
        made.append(sbom_bytes(inputs, options.progress.task))
        return made[-1]

    final = finalize_manifest(manifest, plan, rootfs, hash_cache, options.progress.task, sbom)
    offs = Offsets.parse(
        rootfs.read_bytes(runtime.offsets).decode("utf-8", "replace"), runtime.offsets
    )
    pal = PalImage.from_bytes(rootfs.read_bytes(runtime.libpal), runtime.libpal)
    date = SigDate.parse(options.sig_date)

    files = [ArtifactFile(manifest_path(plan), data=final), ArtifactFile(SBOM_PATH, data=made[0])]
    files += shipped_plan_files(plan, final)
    files += encrypted
    entrypoint = ("gramine-sgx", posixpath.join(ENCLAVE_DIR, plan.service))

    try:
        if options.signer is None:
            mr_enclave, tbs = signing_data_for(final, pal, offs, date, manifest_path(plan))
            return LibOSArtifacts(
                "gramine",
                tuple(files),
                entrypoint,
                None,
                PendingSignature(mr_enclave.hex(), tbs),
                manifest=final,
                sbom=made[0],
            )
        signer = cast(Signer, options.signer)
        signed = sign_manifest(final, pal, offs, signer, date, manifest_path(plan))
    except EnclaveTooSmall as exc:
        raise _too_small(plan, exc) from None
    files.append(ArtifactFile(sigstruct_path(plan), data=signed.sigstruct_bytes))
    identity = EnclaveIdentity(
        signed.mr_enclave.hex(),
        signed.mr_signer.hex(),
        signed.sigstruct.body.isv_prod_id,
        signed.sigstruct.body.isv_svn,
        plan.enclave.debug,
    )
    return LibOSArtifacts(
        "gramine",
        tuple(files),
        entrypoint,
        identity,
        manifest=final,
        sigstruct=signed.sigstruct_bytes,
        sbom=made[0],
    )


def model_files(plan: ServicePlan, encrypted: list[ArtifactFile]) -> tuple[ModelFile, ...]:
    """The model files the plan ships (:func:`builder.model_digests.plan_model_files`), each
    with its plaintext and, when encrypted, the protected file the build made of it."""
    staged = {f.dest: f.source for f in encrypted}
    return tuple(
        ModelFile(
            f.model,
            f.version,
            f.path,
            f.content,
            f.encrypted,
            staged.get(f.path) if f.encrypted else None,
        )
        for f in plan_model_files(plan)
    )
