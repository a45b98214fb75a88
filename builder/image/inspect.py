"""Read an enclave image's identity back -- labels, SIGSTRUCT, measurements.json -- and check that
they agree with each other and with the image's own files (:mod:`builder.image.verify`)."""

from __future__ import annotations

import difflib
import json
import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_build.contract.measurements import Measurements
from enclave_build.contract.names import MEASUREMENTS_FILE

from ..cache import cache_root
from ..errors import EnclaveBuildError, UsageError
from ..hashing import HashCache
from .assemble import LABEL_PREFIX
from .blob_cache import BlobCache
from .oci import BlobStore, Image, ImageError
from .reference import parse_source
from .registry import RegistryClient
from .sources import read_docker_archive, read_oci_layout
from .unpack import OPAQUE, WHITEOUT, member_path, open_layer, unpacked_rootfs
from .verify import EnclaveVerification, verify_enclave


def read_file(image: Image, path: str) -> bytes | None:
    """The file at *path*, read from the topmost layer that has it (no full unpacking)."""
    want = path.lstrip("/")
    parent = posixpath.dirname(want)
    for layer in reversed(image.layers):
        try:
            with open(image.store.path(layer.digest), "rb") as handle:
                with tarfile.open(fileobj=open_layer(handle), mode="r|") as tar:
                    hidden = False
                    for member in tar:
                        name = member_path(member.name)
                        if name == want and member.isfile():
                            data = tar.extractfile(member)
                            return data.read() if data else None
                        if name in (
                            posixpath.join(parent, WHITEOUT + posixpath.basename(want)),
                            posixpath.join(parent, OPAQUE),
                        ):
                            hidden = True
                    if hidden:
                        return None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ImageError(f"{image.source}: layer {layer.digest}: cannot read: {exc}") from None
    return None


def open_image(text: str) -> tuple[Image, Measurements | None]:
    """An image from a reference, or from a build output directory (DIR/oci + measurements)."""
    directory = Path(text)
    store = BlobStore(cache_root() / "blobs")
    if directory.is_dir():
        measurements = None
        if (directory / MEASUREMENTS_FILE).exists():
            measurements = Measurements.load(directory / MEASUREMENTS_FILE)
        layout = directory / "oci" if (directory / "oci").is_dir() else directory
        return read_oci_layout(layout, None, store, str(layout)), measurements
    source = parse_source(text)
    if source.transport == "docker":
        assert source.registry is not None
        try:
            return RegistryClient(source.registry.host).pull(source.registry, store), None
        except ImageError as exc:
            hint = _build_dir_hint(text)
            if hint is None:
                raise
            raise ImageError(f"{exc}; {hint}") from None
    if source.transport == "oci":
        return read_oci_layout(Path(source.location), source.tag, store, text), None
    if source.transport == "docker-archive":
        return read_docker_archive(Path(source.location), store, text), None
    from .sources import open_base

    return open_base(text).image, None


def _build_dir_hint(text: str) -> str | None:
    """For a bare reference that failed as a registry image: was a build directory meant?
    (`inspect my-model/ot` for my-model/out reads as Docker Hub's my-model/ot.)"""
    if text.startswith("docker://"):
        return None
    path = Path(text)
    parent = path.parent
    if not parent.is_dir():
        return None
    try:
        builds = [
            entry.name
            for entry in parent.iterdir()
            if entry.is_dir() and ((entry / "oci").is_dir() or (entry / "oci-layout").is_file())
        ]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, builds, n=1, cutoff=0.6)
    if close:
        return f"as a build directory, {text} does not exist: did you mean {parent / close[0]}?"
    if parent != Path("."):
        return f"as a build directory, {text} does not exist either"
    return None


@dataclass
class Inspection:
    image: str
    digest: str | None
    labels: dict[str, str]
    sigstruct: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    #: the image's own files checked against its SIGSTRUCT (None: not a Gramine enclave image)
    verification: EnclaveVerification | None = None

    @property
    def agrees(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "labels": self.labels,
            "sigstruct": self.sigstruct,
            "rederived": self.verification.to_json() if self.verification else None,
            "agrees": self.agrees,
            "problems": self.problems,
        }


def inspect_image(
    text: str, hash_cache: HashCache | None = None, log: Callable[[str], None] | None = None
) -> Inspection:
    """Read IMAGE's identity back and check it: labels, SIGSTRUCT, measurements.json (for a
    build directory), and the image's own files -- MRENCLAVE re-derived from its manifest and
    libpal.so, every trusted file's hash, nothing untrusted on the server's PYTHONPATH
    (:mod:`builder.image.verify`). The image is unpacked into the cache to do so (*log*: where
    cache pruning reports)."""
    with BlobCache(cache_root()).in_use():  # no prune removes a blob while it is read
        image, measurements = open_image(text)
        return inspect_opened(text, image, measurements, hash_cache, log)


def enclave_app(image: Image, service: str) -> str:
    """The enclave an image runs, ``/enclave/SERVICE``: the argument of its ``gramine-*``
    entrypoint, else the service's default place. Inspect, extract and run all use this one."""
    entrypoint = (image.config.get("config") or {}).get("Entrypoint") or []
    if (
        len(entrypoint) == 2
        and isinstance(entrypoint[0], str)
        and posixpath.basename(entrypoint[0]).startswith("gramine")
        and isinstance(entrypoint[1], str)
        and entrypoint[1].startswith("/")
        and ".." not in entrypoint[1].split("/")
    ):
        return posixpath.normpath(entrypoint[1])
    return f"/enclave/{service}"


def _enclave_paths(image: Image, service: str) -> tuple[str, str]:
    """Where the image keeps its manifest and SIGSTRUCT."""
    stem = enclave_app(image, service)
    return f"{stem}.manifest.sgx", f"{stem}.sig"


def inspect_opened(
    text: str,
    image: Image,
    measurements: Measurements | None,
    hash_cache: HashCache | None = None,
    log: Callable[[str], None] | None = None,
) -> Inspection:
    """:func:`inspect_image` of an image already opened (with :func:`open_image`)."""
    labels = {
        k[len(LABEL_PREFIX) :]: v for k, v in image.labels.items() if k.startswith(LABEL_PREFIX)
    }
    result = Inspection(text, image.manifest_digest, labels, None)
    service = labels.get("service")
    if not service or "mr_enclave" not in labels:
        result.problems.append("no enclave-build labels: not an image built by enclave-build")
        return result
    if labels.get("libos", "gramine") != "gramine":
        # Occlum: the SIGSTRUCT is in the SGX SDK metadata of the signed LibOS
        # (/enclave/build/lib/libocclum-libos.signed.so), which is not read here.
        result.problems.append(
            f"built with libos = {labels['libos']!r}: inspect reads "
            "Gramine's SIGSTRUCT only, so its identity cannot be checked "
            "here (the build compared `occlum print mrenclave|mrsigner` "
            "with what it signed)"
        )
        return result
    try:
        rootfs = unpacked_rootfs(
            image.store, image.layers, image.diff_ids, cache_root() / "rootfs", text, log=log
        )
    except ImageError as exc:
        result.problems.append(f"cannot unpack the image to check its files: {exc}")
        return result
    own_cache = hash_cache is None
    cache = hash_cache or HashCache()
    try:
        verification = verify_enclave(rootfs, enclave_app(image, service), cache)
    finally:
        if own_cache:
            cache.close()
    result.verification = verification
    info = verification.identity.sigstruct if verification.identity else None
    result.sigstruct = info
    if info is not None:
        expected = {
            "mr_enclave": info["mr_enclave"],
            "mr_signer": info["mr_signer"],
            "isv_prod_id": str(info["isv_prod_id"]),
            "isv_svn": str(info["isv_svn"]),
            "debug": "true" if info["debug"] else "false",
        }
        for key, value in expected.items():
            if labels.get(key) != value:
                result.problems.append(
                    f"label {LABEL_PREFIX}{key} = {labels.get(key)!r}, but "
                    f"the SIGSTRUCT says {value!r}"
                )
        if measurements is not None:
            for key in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug"):
                got = getattr(measurements, key)
                want = info[key]
                if got != want:
                    result.problems.append(
                        f"measurements.json {key} = {got!r}, but the SIGSTRUCT says {want!r}"
                    )
    if (
        measurements is not None
        and measurements.image.digest
        and measurements.image.digest != image.manifest_digest
    ):
        result.problems.append(
            f"measurements.json names image {measurements.image.digest}, "
            f"the layout holds {image.manifest_digest}"
        )
    result.problems += verification.problems
    return result


@dataclass
class Extraction:
    """What :func:`extract_image` wrote, and the inspection of the same image."""

    inspection: Inspection
    written: list[Path]

    def to_json(self) -> dict[str, Any]:
        return {**self.inspection.to_json(), "extracted": [str(p) for p in self.written]}


def extract_image(text: str, directory: str | Path) -> Extraction:
    """Write the image's enclave files into *directory* for auditors: ``SERVICE.manifest.sgx``
    and ``SERVICE.sig`` exactly as the image holds them, and ``measurements.json`` (given a build
    output directory: its file, byte for byte) or else ``labels.json`` (the image's reference,
    digest and ``org.enclave-build.*`` labels). Never overwrites: if any of those files exists,
    nothing is written (UsageError, exit 2). The files are written even when the inspection
    finds disagreements (see ``Extraction.inspection.problems``)."""
    with BlobCache(cache_root()).in_use():
        image, measurements = open_image(text)
        result = inspect_opened(text, image, measurements)
    labels = {k: v for k, v in image.labels.items() if k.startswith(LABEL_PREFIX)}
    service = result.labels.get("service", "")
    if not service or "mr_enclave" not in result.labels:
        raise EnclaveBuildError(
            f"{text}: no enclave-build labels: not an image built by "
            "enclave-build, nothing to extract"
        )
    # The label comes from the image: only a service name (a DNS label) names our files.
    stem = service if re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", service) else "enclave"
    manifest_path, sig_path = _enclave_paths(image, service)
    files: list[tuple[str, bytes]] = []
    for path, name in ((manifest_path, f"{stem}.manifest.sgx"), (sig_path, f"{stem}.sig")):
        data = read_file(image, path)
        if data is None:
            raise EnclaveBuildError(f"{text}: the image has no {path}")
        files.append((name, data))
    build_dir = Path(text)
    if measurements is not None and (build_dir / MEASUREMENTS_FILE).is_file():
        files.append((MEASUREMENTS_FILE, (build_dir / MEASUREMENTS_FILE).read_bytes()))
    else:
        files.append(
            (
                "labels.json",
                (
                    json.dumps(
                        {"image": text, "digest": image.manifest_digest, "labels": labels},
                        indent=2,
                        sort_keys=True,
                    )
                    + "\n"
                ).encode(),
            )
        )
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: exists and is not a directory")
    existing = [
        str(target / name)
        for name, _ in files
        if (target / name).exists() or (target / name).is_symlink()
    ]
    if existing:
        raise UsageError(
            f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
            "; not overwriting (extract into an empty directory)"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in files:
            fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            written.append(target / name)
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename}: already exists; not overwriting") from None
    except OSError as exc:
        raise EnclaveBuildError(f"{target}: cannot write: {exc.strerror}") from None
    return Extraction(result, written)


__all__ = [
    "inspect_image",
    "inspect_opened",
    "enclave_app",
    "extract_image",
    "read_file",
    "open_image",
    "Inspection",
    "Extraction",
]
