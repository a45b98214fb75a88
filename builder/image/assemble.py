"""Put the libOS artifacts on top of the base image: layers, config, labels, manifest.

Two layers are added: the service's files (models, encrypted files, CA certificate, configs)
and the enclave files (manifest, SIGSTRUCT), so a rebuild that only re-signs reuses the first.
The config keeps the base's environment and settings, and gets the entrypoint, exposed ports and
labels carrying the enclave identity. Timestamps are SOURCE_DATE_EPOCH (or 0).

Files the enclave opens read-write on the host (Gramine protected files: the LibOS opens their
host file with read-write access) and the directories holding them belong to the image's
runtime user (the plan's user, else the base image's ``User``), resolved through the base's
``/etc/passwd`` and ``/etc/group``; everything else is 0:0.
"""

from __future__ import annotations

import copy
import datetime as _dt
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclave_build.attestation.measurements import Measurements

from ..errors import EnclaveBuildError
from ..hashing import HashCache
from ..plan import ServicePlan
from ..plugin_types import ArtifactFile, LibOSArtifacts
from ..rootfs import RootFS, RootFSError
from .layers import LayerEntry, source_date_epoch, write_layer
from .oci import (
    OCI_CONFIG,
    TO_OCI,
    BlobStore,
    Descriptor,
    Image,
    ImageError,
    canonical_json,
    oci_manifest,
)

LABEL_PREFIX = "org.enclave-build."
ENCLAVE_DIR = "/enclave/"


def identity_labels(measurements: Measurements) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}service": measurements.service,
        f"{LABEL_PREFIX}framework": measurements.framework,
        f"{LABEL_PREFIX}libos": measurements.libos,
        f"{LABEL_PREFIX}mr_enclave": measurements.mr_enclave,
        f"{LABEL_PREFIX}mr_signer": measurements.mr_signer,
        f"{LABEL_PREFIX}isv_prod_id": str(measurements.isv_prod_id),
        f"{LABEL_PREFIX}isv_svn": str(measurements.isv_svn),
        f"{LABEL_PREFIX}debug": "true" if measurements.debug else "false",
    }


class UserError(EnclaveBuildError):
    """The image's runtime user cannot be resolved in the base image."""


def _table(rootfs: RootFS | None, path: str) -> list[list[str]]:
    if rootfs is None:
        return []
    try:
        text = rootfs.read_bytes(path).decode("utf-8", "replace")
    except (OSError, RootFSError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def runtime_owner(user: str | None, rootfs: RootFS | None) -> tuple[int, int]:
    """uid and gid of a Docker ``User`` value (``name``, ``uid``, ``name:group``, ``uid:gid``)
    inside the base image. A numeric uid without a passwd entry gets gid 0, as Docker does."""
    if not user or user in ("root", "0", "0:0"):
        return 0, 0
    name, _, group = user.partition(":")
    passwd = _table(rootfs, "/etc/passwd")
    entry = next((r for r in passwd if len(r) >= 4 and (r[0] == name or r[2] == name)), None)
    if name.isdigit():
        uid = int(name)
    elif entry is not None:
        uid = int(entry[2])
    else:
        raise UserError(
            f"the image runs as user {name!r}, which is not in /etc/passwd of the "
            f"base image ({rootfs}); set a numeric User or add the user"
        )
    if group:
        if group.isdigit():
            return uid, int(group)
        row = next((r for r in _table(rootfs, "/etc/group") if len(r) >= 3 and r[0] == group), None)
        if row is None:
            raise UserError(
                f"the image runs as group {group!r}, which is not in /etc/group of "
                f"the base image ({rootfs})"
            )
        return uid, int(row[2])
    return uid, int(entry[3]) if entry is not None else 0


def _entries(files: list[ArtifactFile], owner: tuple[int, int] = (0, 0)) -> list[LayerEntry]:
    out = []
    owned_dirs: set[str] = set()
    for item in files:
        dest = posixpath.normpath(item.dest)
        uid, gid = owner if item.writable else (0, 0)
        mode = item.mode | 0o600 if item.writable else item.mode
        if item.writable and owner != (0, 0):
            owned_dirs.add(posixpath.dirname(dest))
        if item.data is not None:
            out.append(LayerEntry(dest, "file", mode, data=item.data, uid=uid, gid=gid))
        elif item.source is not None and Path(item.source).is_dir():
            root = Path(item.source)
            for path in sorted(root.rglob("*")):
                inner = posixpath.join(dest, path.relative_to(root).as_posix())
                if path.is_symlink():
                    continue  # only regular files of a model directory are shipped
                if path.is_dir():
                    out.append(LayerEntry(inner, "dir", 0o755))
                elif path.is_file():
                    out.append(LayerEntry(inner, "file", mode, source=path, uid=uid, gid=gid))
                    if item.writable and owner != (0, 0):
                        owned_dirs.add(posixpath.dirname(inner))
        elif item.source is not None:
            out.append(LayerEntry(dest, "file", mode, source=Path(item.source), uid=uid, gid=gid))
    explicit = {e.path for e in out}
    out = [
        LayerEntry(e.path, e.kind, e.mode, uid=owner[0], gid=owner[1])
        if e.kind == "dir" and e.path in owned_dirs
        else e
        for e in out
    ]
    out += [
        LayerEntry(d, "dir", 0o755, uid=owner[0], gid=owner[1])
        for d in sorted(owned_dirs - explicit)
        if d != "/"
    ]
    return out


def _created() -> str:
    moment = _dt.datetime.fromtimestamp(source_date_epoch(), _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def assemble(
    base: Image,
    plan: ServicePlan,
    artifacts: LibOSArtifacts,
    measurements: Measurements,
    store: BlobStore,
    hash_cache: HashCache | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    rootfs: RootFS | None = None,
) -> Image:
    """The service image: base layers + service files + enclave files. *rootfs* (the base's)
    resolves the runtime user's name to the owner of the files it must open read-write."""
    base_user = (base.config.get("config") or {}).get("User") or None
    owner = runtime_owner(plan.user if plan.user and plan.user != "root" else base_user, rootfs)
    enclave_files = [
        f
        for f in artifacts.files
        if f.dest.startswith(ENCLAVE_DIR)
        and f.data is not None
        and not f.dest.startswith(ENCLAVE_DIR + "secrets/")
    ]
    service_files = [f for f in artifacts.files if f not in enclave_files]
    groups = [
        (what, group)
        for what, group in (
            ("service files (models, encrypted files, configs)", _entries(service_files, owner)),
            ("enclave manifest and SIGSTRUCT", _entries(enclave_files)),
        )
        if group
    ]
    total = sum(
        e.source.stat().st_size if e.source else len(e.data or b"")
        for _, group in groups
        for e in group
    )
    advance = progress("writing layers", total) if progress else None
    added = [write_layer(group, store, hash_cache, advance) for _, group in groups]

    for desc in [base.config_descriptor, *base.layers]:
        if not store.has(desc.digest):
            base.store.copy_into(store, desc.digest)
    layers = []
    for desc in base.layers:
        if desc.media_type not in TO_OCI:
            raise ImageError(
                f"base layer {desc.digest} has unsupported media type {desc.media_type}"
            )
        layers.append(Descriptor(TO_OCI[desc.media_type], desc.digest, desc.size))

    config = copy.deepcopy(base.config)
    for transient in ("container", "container_config", "docker_version", "parent", "id"):
        config.pop(transient, None)
    created = _created()
    config["created"] = created
    runtime: dict[str, Any] = dict(config.get("config") or {})
    runtime["Entrypoint"] = list(artifacts.entrypoint)
    runtime["Cmd"] = None
    runtime["WorkingDir"] = ENCLAVE_DIR.rstrip("/")
    if plan.user and plan.user != "root":
        runtime["User"] = plan.user
    ports = dict(runtime.get("ExposedPorts") or {})
    for port in plan.ports:
        ports[f"{port.number}/{port.protocol.lower()}"] = {}
    if ports:
        runtime["ExposedPorts"] = ports
    labels = dict(runtime.get("Labels") or {})
    labels.update(plan.labels)
    labels.update(identity_labels(measurements))
    runtime["Labels"] = labels
    config["config"] = runtime
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": list(base.diff_ids) + [blob.diff_id for blob in added],
    }
    config["history"] = list(config.get("history") or []) + [
        {
            "created": created,
            "created_by": f"enclave-build: {what}",
            "comment": f"enclave-build {plan.libos} {plan.framework}",
        }
        for what, _ in groups
    ]

    raw = canonical_json(config)
    config_desc = Descriptor(OCI_CONFIG, store.put_bytes(raw), len(raw))
    all_layers = layers + [blob.descriptor for blob in added]
    manifest = oci_manifest(config_desc, all_layers)
    return Image(store, config, config_desc, all_layers, manifest, "built")
