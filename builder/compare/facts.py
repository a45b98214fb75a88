"""What one side of a comparison holds that determines its identity: read from a build output
or an image (:func:`image_facts`).

For a Gramine enclave that is the final manifest (every key, and each trusted file's SHA-256),
the ``libpal.so`` and layout constants of the image's Gramine (measured with the manifest into
MRENCLAVE), and the SIGSTRUCT (signer, ISV ids, attributes, date). For an Occlum enclave it is
``Occlum.json`` and the identity the build recorded (the signed LibOS is compared as a file).
Either way the image itself: its config, and its files (compared by
:mod:`builder.compare.image_files`).

This reads what the image *says*; ``enclave-build inspect`` checks that an image agrees with
itself (its MRENCLAVE re-derived, every trusted file hashed).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_build.contract.measurements import Measurements
from enclave_build.contract.provenance import PROVENANCE_FILE, DsseEnvelope, Provenance
from enclave_build.contract.sbom import SBOM_FILE, SBOM_PATH, Sbom, SbomError

from ..errors import EnclaveBuildError
from ..gramine.identity import read_sigstruct
from ..gramine.runtime import discover
from ..image.assemble import LABEL_PREFIX
from ..image.inspect import enclave_app
from ..image.oci import Image
from ..rootfs import RootFS, RootFSError
from .result import Side

#: Larger files cannot be a manifest, a SIGSTRUCT, a libpal.so or an Occlum.json.
MAX_ENCLAVE_FILE = 64 << 20
#: Where an Occlum image keeps its instance's configuration.
OCCLUM_JSON = "/enclave/Occlum.json"
#: Labels that repeat the enclave identity (compared as the identity itself).
IDENTITY_LABELS = frozenset(
    LABEL_PREFIX + name
    for name in (
        "service",
        "framework",
        "libos",
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "debug",
    )
)
#: Manifest lists whose order means nothing: compared entry by entry.
_SET_LISTS = ("sgx.allowed_files",)


@dataclass(frozen=True)
class TrustedFile:
    """A file the manifest measures: where it lies in the image, and its SHA-256."""

    image_path: str
    sha256: str


@dataclass
class BuildFacts:
    """One side: *side* (what it is), and what of it was readable (None: not available)."""

    side: Side
    identity: dict[str, Any] = field(default_factory=dict)  # service, framework, ...
    manifest: dict[str, Any] | None = None  # flattened keys, trusted files left out
    trusted: dict[str, TrustedFile] | None = None  # enclave path -> file
    libos: dict[str, Any] | None = None  # libpal.so digest, layout constants, version
    sigstruct: dict[str, Any] | None = None
    occlum_config: dict[str, Any] | None = None
    image_config: dict[str, Any] | None = None
    #: image path -> owning package ("NAME VERSION"), from the side's SBOM
    packages: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None  # provenance: resolved dependencies
    #: the image and its unpacked root (for comparing files); the enclave's own files
    image: Image | None = None
    rootfs: RootFS | None = None
    own_files: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested tables; a list of tables keyed by each table's path (or uri), as
    ``fs.mounts[/models].type``; the entries of an unordered list (``sgx.allowed_files``)
    keyed by themselves; every other list is one value."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        field_name = "path" if all("path" in v for v in value) else "uri"
        keyed = [v.get(field_name) for v in value]
        if all(isinstance(k, str) for k in keyed) and len(set(keyed)) == len(keyed):
            for key, item in zip(keyed, value, strict=True):
                rest = {k: v for k, v in item.items() if k != field_name}
                out.update(
                    flatten(rest, f"{prefix}[{key}]") if rest else {f"{prefix}[{key}]": True}
                )
            return out
    if prefix in _SET_LISTS and isinstance(value, list):
        for item in value:
            out[f"{prefix}[{item.get('uri') if isinstance(item, dict) else item}]"] = True
        return out
    out[prefix] = value
    return out


def _uri_path(uri: Any) -> str | None:
    if not isinstance(uri, str) or not uri.startswith("file:"):
        return None
    return posixpath.normpath(uri[len("file:") :])


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def enclave_paths(manifest: dict[str, Any]) -> Callable[[str], str]:
    """Image path -> the path the enclave sees it at, through the manifest's chroot mounts
    (Gramine's runtime ``/lib`` lies in the image under Gramine's own directory)."""
    mounts: list[tuple[str, str]] = []
    fs = _table(manifest, "fs")
    for mount in fs.get("mounts") or ():
        if not isinstance(mount, dict) or mount.get("type", "chroot") != "chroot":
            continue
        source, target = _uri_path(mount.get("uri")), mount.get("path")
        if source and isinstance(target, str) and source != "/":
            mounts.append((source, posixpath.normpath(target)))
    mounts.sort(key=lambda m: -len(m[0]))

    def convert(path: str) -> str:
        for source, target in mounts:
            if path == source or path.startswith(source + "/"):
                return posixpath.normpath(target + path[len(source) :])
        return path

    return convert


def trusted_files(manifest: dict[str, Any], problems: list[str]) -> dict[str, TrustedFile]:
    """The LibOS and every ``sgx.trusted_files`` entry, by enclave path."""
    convert = enclave_paths(manifest)
    entries: list[Any] = []
    loader = _table(manifest, "loader")
    if isinstance(loader.get("entrypoint"), dict):
        entries.append(loader["entrypoint"])
    sgx = _table(manifest, "sgx")
    entries += list(sgx.get("trusted_files") or ())
    out: dict[str, TrustedFile] = {}
    for entry in entries:
        path = _uri_path(entry.get("uri")) if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if path is None or not isinstance(digest, str):
            problems.append(f"a trusted file entry without a file: URI and sha256: {entry!r}")
            continue
        out[convert(path)] = TrustedFile(path, digest)
    return out


def manifest_values(manifest: dict[str, Any]) -> dict[str, Any]:
    """Every manifest key but the trusted files (compared file by file) and the LibOS's
    digest (a trusted file too)."""
    values = flatten(manifest)
    values.pop("loader.entrypoint.sha256", None)
    values.pop("sgx.trusted_files", None)
    return {k: v for k, v in values.items() if not k.startswith("sgx.trusted_files[")}


def sigstruct_values(info: dict[str, Any]) -> dict[str, Any]:
    """The SIGSTRUCT fields besides MRENCLAVE and MRSIGNER (which are the identity)."""
    values = {
        "isv_prod_id": info["isv_prod_id"],
        "isv_svn": info["isv_svn"],
        "debug": info["debug"],
        "date": info["date"],
    }
    for key in ("flags", "xfrm", "flags_mask", "xfrm_mask", "misc_select", "misc_mask"):
        values[f"attributes.{key}"] = info["attributes"][key]
    return values


def config_values(image: Image) -> dict[str, Any]:
    """The image config that is not the layers: architecture, os, created and ``config.*``
    (entrypoint, environment, user, ports, labels but the identity's)."""
    config = image.config
    values: dict[str, Any] = {
        key: config.get(key) for key in ("architecture", "os", "created") if key in config
    }
    inner = dict(config.get("config") or {})
    labels = {
        k: v for k, v in (inner.pop("Labels", None) or {}).items() if k not in IDENTITY_LABELS
    }
    values.update(flatten(inner, "config"))
    for key, value in sorted(labels.items()):
        values[f"config.Labels.{key}"] = value
    return values


def read_small(rootfs: RootFS, path: str) -> bytes:
    """A regular file of the image (symlinks resolved inside it), at most
    :data:`MAX_ENCLAVE_FILE` bytes; RootFSError otherwise."""
    resolved = rootfs.resolve(path)
    st = rootfs.lstat(resolved)
    if st is None:
        raise RootFSError(f"{path}: not found in the image")
    if not stat.S_ISREG(st.st_mode):
        raise RootFSError(f"{path}: not a regular file")
    if st.st_size > MAX_ENCLAVE_FILE:
        raise RootFSError(f"{path}: {st.st_size} bytes, larger than any enclave file can be")
    return rootfs.read_bytes(resolved)


def image_facts(
    source: str,
    kind: str,
    image: Image,
    rootfs: RootFS,
    measurements: Measurements | None,
    directory: Path | None = None,
) -> BuildFacts:
    """The facts of an image (unpacked at *rootfs*); *measurements* and *directory*: a build
    output's (its SBOM and provenance are read when it has them)."""
    labels = image.labels
    libos = measurements.libos if measurements else labels.get(LABEL_PREFIX + "libos")
    service = measurements.service if measurements else labels.get(LABEL_PREFIX + "service")
    facts = BuildFacts(
        Side(
            source,
            kind,
            libos,
            measurements.mr_enclave if measurements else labels.get(LABEL_PREFIX + "mr_enclave"),
            measurements.mr_signer if measurements else labels.get(LABEL_PREFIX + "mr_signer"),
            image.manifest_digest,
        ),
        image=image,
        rootfs=rootfs,
        image_config=config_values(image),
    )
    facts.identity = {
        "service": service,
        "framework": measurements.framework
        if measurements
        else labels.get(LABEL_PREFIX + "framework"),
        "libos": libos,
    }
    if not service:
        facts.notes.append(f"{source}: no enclave-build labels: compared as a plain image")
        return facts
    if libos == "occlum":
        _occlum(facts, rootfs)
    else:
        _gramine(facts, image, rootfs, service)
    facts.packages = _owners(_sbom(directory, rootfs, facts.notes, source))
    if directory is not None and (directory / PROVENANCE_FILE).is_file():
        provenance = load_provenance(directory / PROVENANCE_FILE)
        facts.inputs = provenance_inputs(provenance)
    facts.identity["mr_signer"] = facts.side.mr_signer  # MRENCLAVE is what is explained
    return facts


def _gramine(facts: BuildFacts, image: Image, rootfs: RootFS, service: str) -> None:
    import tomllib

    app = enclave_app(image, service)
    manifest_path, sig_path = f"{app}.manifest.sgx", f"{app}.sig"
    facts.own_files = frozenset({manifest_path, sig_path})
    source = facts.side.source
    try:
        sig = read_small(rootfs, sig_path)
        _sig, info, _problems = read_sigstruct(sig, sig_path)
        if info is not None:
            facts.sigstruct = sigstruct_values(info)
            # the signed values win over what labels or measurements.json repeat
            facts.side = _with_identity(facts.side, info["mr_enclave"], info["mr_signer"])
        else:
            facts.notes.append(f"{source}: {sig_path} is not a SIGSTRUCT")
    except RootFSError as exc:
        facts.notes.append(f"{source}: {exc}")
    try:
        manifest = tomllib.loads(read_small(rootfs, manifest_path).decode("utf-8"))
    except RootFSError as exc:
        facts.notes.append(f"{source}: {exc}")
        return
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        facts.notes.append(f"{source}: {manifest_path} is not a TOML manifest: {exc}")
        return
    problems: list[str] = []
    facts.manifest = manifest_values(manifest)
    facts.trusted = trusted_files(manifest, problems)
    facts.notes += [f"{source}: {manifest_path}: {p}" for p in problems]
    try:
        runtime = discover(rootfs)
        facts.libos = {
            "gramine.version": runtime.version,
            "libpal.so": _sha256(read_small(rootfs, runtime.libpal)),
            "layout constants": _sha256(read_small(rootfs, runtime.offsets)),
        }
    except EnclaveBuildError as exc:
        facts.notes.append(f"{source}: cannot read the image's Gramine: {exc}")


def _occlum(facts: BuildFacts, rootfs: RootFS) -> None:
    source = facts.side.source
    facts.notes.append(
        f"{source}: an Occlum enclave: compared Occlum.json, the identity the build recorded "
        "and the image's files (the signed LibOS and the encrypted SEFS image among them); "
        "Occlum's own measurement inputs are not read one by one"
    )
    try:
        data = json.loads(read_small(rootfs, OCCLUM_JSON))
    except RootFSError as exc:
        facts.notes.append(f"{source}: {exc}")
        return
    except ValueError as exc:
        facts.notes.append(f"{source}: {OCCLUM_JSON} is not JSON: {exc}")
        return
    facts.occlum_config = flatten(data)
    facts.own_files = frozenset({OCCLUM_JSON})


def _sbom(directory: Path | None, rootfs: RootFS, notes: list[str], source: str) -> Sbom | None:
    """The side's SBOM: the build output's, else the one the image ships (None without)."""
    try:
        if directory is not None and (directory / SBOM_FILE).is_file():
            return Sbom.load(directory / SBOM_FILE)
        try:
            text = read_small(rootfs, SBOM_PATH)
        except RootFSError:
            return None
        return Sbom.parse(text.decode("utf-8", "replace"), SBOM_PATH)
    except SbomError as exc:
        notes.append(
            f"{source}: its SBOM cannot be read, so no file is named with its package: {exc}"
        )
        return None


def _owners(sbom: Sbom | None) -> dict[str, str]:
    """Image path -> "NAME VERSION" of the package that owns the file; models' files (clear
    and encrypted) -> "model NAME VERSION"."""
    if sbom is None:
        return {}
    owners = {}
    for item in sbom.files:
        if item.package is not None:
            owners[item.image_path] = " ".join(
                p for p in (item.package.name, item.package.version) if p
            )
    for model in sbom.models:
        for model_file in model.files:
            owners.setdefault(model_file.path, f"model {model.name} {model.version}")
    return owners


def load_provenance(path: Path) -> Provenance:
    """The statement of the provenance file at *path* (its signature is not checked here:
    that is `verify-provenance`'s)."""
    envelope = DsseEnvelope.load(path)
    return Provenance.from_statement(envelope.payload, str(path))


def provenance_inputs(provenance: Provenance) -> dict[str, Any]:
    """The build inputs a provenance names, by name: the spec, the base, each model file, the
    enclave-build version, and the digests of the manifest and SBOM it recorded."""
    inputs: dict[str, Any] = {
        f"spec {provenance.spec.path}": provenance.spec.sha256,
        "base": f"{provenance.base_ref}@{provenance.base_digest}",
        "enclave-build": provenance.enclave_build_version,
        f"manifest {provenance.manifest.path}": provenance.manifest.sha256,
        f"sbom {provenance.sbom.path}": provenance.sbom.sha256,
    }
    for model in provenance.models:
        inputs[f"model {model.name} {model.version} {model.path}"] = model.sha256
    return inputs


def provenance_facts(source: str, provenance: Provenance) -> BuildFacts:
    """What a provenance file says: the identity, the SIGSTRUCT fields it records, the image
    digest and the inputs (no manifest, files or image to compare)."""
    identity = provenance.identity
    attributes = provenance.attributes.to_dict()
    facts = BuildFacts(
        Side(
            source,
            "provenance",
            provenance.libos,
            identity.mr_enclave,
            identity.mr_signer,
            provenance.image_digest,
        ),
        identity={
            "service": provenance.service,
            "framework": provenance.framework,
            "libos": provenance.libos,
            "mr_signer": identity.mr_signer,
        },
        sigstruct={
            "isv_prod_id": identity.isv_prod_id,
            "isv_svn": identity.isv_svn,
            "debug": identity.debug,
            **{f"attributes.{key}": value for key, value in attributes.items()},
        },
        inputs=provenance_inputs(provenance),
    )
    facts.notes.append(
        f"{source}: a provenance file records the identity, the image digest and the build "
        "inputs, not the manifest or the files: compared at that level"
    )
    return facts


def _with_identity(side: Side, mr_enclave: str, mr_signer: str | None) -> Side:
    from dataclasses import replace

    return replace(side, mr_enclave=mr_enclave, mr_signer=mr_signer or side.mr_signer)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "BuildFacts",
    "TrustedFile",
    "image_facts",
    "provenance_facts",
    "provenance_inputs",
    "load_provenance",
    "flatten",
    "enclave_paths",
    "trusted_files",
    "manifest_values",
    "sigstruct_values",
    "config_values",
    "read_small",
    "MAX_ENCLAVE_FILE",
]
