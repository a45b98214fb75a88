"""Image references with the transport names users know from skopeo and podman.

* ``docker://host/name:tag``, ``docker://name@sha256:...`` or a bare ``name:tag`` — a registry
* ``docker-daemon:name:tag`` — the local Docker engine
* ``oci:DIR[:tag]`` — an OCI image layout directory
* ``oci-archive:FILE[:tag]`` — a tar of an OCI image layout
* ``docker-archive:FILE`` — a ``docker save`` tar
* ``dir:PATH`` — an unpacked root filesystem (enclave-build's own; no layers, no config)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

DOCKER_HUB = "registry-1.docker.io"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
TRANSPORTS = ("docker://", "docker-daemon:", "oci:", "oci-archive:", "docker-archive:", "dir:")


@dataclass(frozen=True)
class RegistryRef:
    """host/repository plus a tag or a digest."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        host = "" if self.host == DOCKER_HUB else f"{self.host}/"
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{host}{self.repository}{suffix}"

    def with_digest(self, digest: str) -> "RegistryRef":
        return RegistryRef(self.host, self.repository, None, digest)


@dataclass(frozen=True)
class ImageSource:
    transport: str          # "docker", "docker-daemon", "oci", "oci-archive", "docker-archive", "dir"
    location: str           # registry ref text, daemon name, path
    tag: str | None = None  # for oci / oci-archive
    registry: RegistryRef | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.registry}"
        suffix = f":{self.tag}" if self.tag else ""
        return f"{self.transport}:{self.location}{suffix}"


def parse_registry_ref(text: str) -> RegistryRef:
    """``[host[:port]/]path[:tag][@sha256:...]`` with Docker's defaults (docker.io, library/)."""
    original = text
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise UsageError(f"image reference {original!r}: digest must be sha256:<64 hex>")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
            raise UsageError(f"image reference {original!r}: invalid tag {tag!r}")
    parts = text.split("/", 1)
    if len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host, path = parts
    else:
        host, path = DOCKER_HUB, text
        if "/" not in path:
            path = f"library/{path}"
    if host == "docker.io":
        host = DOCKER_HUB
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", path):
        raise UsageError(f"image reference {original!r}: invalid repository name {path!r} "
                         "(lower-case letters, digits, '.', '_', '-', '/')")
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(host, path, tag, digest)


def parse_source(text: str) -> ImageSource:
    if text.startswith("docker://"):
        return ImageSource("docker", text[9:], registry=parse_registry_ref(text[9:]))
    for transport in ("docker-daemon", "docker-archive", "dir"):
        if text.startswith(transport + ":"):
            location = text[len(transport) + 1:]
            if not location:
                raise UsageError(f"{text!r}: {transport}: needs a name or path")
            return ImageSource(transport, location)
    for transport in ("oci-archive", "oci"):
        if text.startswith(transport + ":"):
            location, tag = text[len(transport) + 1:], None
            if ":" in location.rsplit("/", 1)[-1]:
                location, tag = location.rsplit(":", 1)
            if not location:
                raise UsageError(f"{text!r}: {transport}: needs a path")
            return ImageSource(transport, location, tag)
    return ImageSource("docker", text, registry=parse_registry_ref(text))
