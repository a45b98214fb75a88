"""Image references with the transport names users know from skopeo and podman.

* ``docker://host/name:tag``, ``docker://name@sha256:...`` or a bare ``name:tag`` — a registry
* ``docker-daemon:name:tag`` — the local Docker engine
* ``oci:DIR[:tag]`` — an OCI image layout directory
* ``oci-archive:FILE[:tag]`` — a tar of an OCI image layout
* ``docker-archive:FILE`` — a ``docker save`` tar
* ``dir:PATH`` — an unpacked root filesystem (enclave-build's own; no layers, no config)
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from ..errors import UsageError

DOCKER_HUB = "registry-1.docker.io"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?")
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


@dataclass(frozen=True)
class ImageSource:
    transport: str  # "docker", "docker-daemon", "oci", "oci-archive", "docker-archive", "dir"
    location: str  # registry ref text, daemon name, path
    tag: str | None = None  # for oci / oci-archive
    registry: RegistryRef | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.registry}"
        suffix = f":{self.tag}" if self.tag else ""
        return f"{self.transport}:{self.location}{suffix}"


def names_registry_host(text: str) -> bool:
    """Whether *text* is a reference that names its registry host (``HOST.DOMAIN/...``,
    ``HOST:PORT/...``, ``localhost/...``): one that cannot be a mistyped local path."""
    head, slash, rest = text.partition("/")
    return bool(slash and rest) and ("." in head or ":" in head or head == "localhost")


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
    if not _HOST.fullmatch(host):
        raise UsageError(
            f"image reference {original!r}: invalid registry host {host!r} (HOST or HOST:PORT)"
        )
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", path):
        raise UsageError(
            f"image reference {original!r}: invalid repository name {path!r} "
            "(lower-case letters, digits, '.', '_', '-', '/')"
        )
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(host, path, tag, digest)


def parse_source(text: str) -> ImageSource:
    """An image reference with its transport (see the module docstring). A bare reference is a
    registry's; an unknown or mistyped transport, or a path without ``dir:``/``oci:``, is a
    :class:`UsageError` naming what was probably meant."""
    if text.startswith("docker://"):
        return ImageSource("docker", text[9:], registry=parse_registry_ref(text[9:]))
    for transport in ("docker-daemon", "docker-archive", "dir"):
        if text.startswith(transport + ":"):
            location = text[len(transport) + 1 :]
            if not location:
                raise UsageError(f"{text!r}: {transport}: needs a name or path")
            return ImageSource(transport, location)
    for transport in ("oci-archive", "oci"):
        if text.startswith(transport + ":"):
            location, tag = text[len(transport) + 1 :], None
            if ":" in location.rsplit("/", 1)[-1]:
                location, tag = location.rsplit(":", 1)
            if not location:
                raise UsageError(f"{text!r}: {transport}: needs a path")
            return ImageSource(transport, location, tag)
    _refuse_non_registry(text)
    return ImageSource("docker", text, registry=parse_registry_ref(text))


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+_-]*):(.*)", re.S)
_TRANSPORT_NAMES = [t.rstrip(":/") for t in TRANSPORTS]


def _refuse_non_registry(text: str) -> None:
    """A registry reference is what is left; refuse what clearly is not one."""
    valid = ", ".join(TRANSPORTS)
    if text.startswith(("/", "./", "../", "~")) or text in (".", "..") or _is_dir(text):
        hint = (
            f"oci:{text}"
            if _is_dir(text) and os.path.exists(os.path.join(text, "oci-layout"))
            else f"dir:{text}"
        )
        raise UsageError(
            f"image reference {text!r} looks like a path, not a registry image; "
            f"did you mean {hint}? (transports: {valid})"
        )
    match = _SCHEME.fullmatch(text)
    if match is None:
        return
    scheme, rest = match.groups()
    if re.match(r"\d+(/|\Z)", rest):
        return  # HOST:PORT/NAME
    name = scheme.lower()
    ratio = {t: difflib.SequenceMatcher(None, name, t).ratio() for t in _TRANSPORT_NAMES}
    mistyped = sorted(
        (
            t
            for t in _TRANSPORT_NAMES
            if (t != "docker" or rest.startswith("//"))
            and (ratio[t] >= 0.75 or sorted(name) == sorted(t))
        ),
        key=lambda t: (sorted(name) != sorted(t), -ratio[t]),
    )
    registry_name = False
    if not rest.startswith("//"):
        try:
            parse_registry_ref(text)
            registry_name = True
        except UsageError:
            if not re.search(r"[/:]", rest):
                raise  # NAME:TAG with a bad name or tag: the registry's message says which
    if registry_name and not mistyped:
        return  # NAME:TAG, e.g. ubuntu:24.04
    nearest = mistyped or difflib.get_close_matches(name, _TRANSPORT_NAMES, n=1, cutoff=0.5)
    hint = f"did you mean {TRANSPORTS[_TRANSPORT_NAMES.index(nearest[0])]}? " if nearest else ""
    why = f" (for the registry image of that name write docker://{text})" if registry_name else ""
    raise UsageError(
        f"image reference {text!r}: unknown transport {scheme + ':'!r}; {hint}"
        f"valid transports: {valid}, or a registry image [HOST/]NAME[:TAG]{why}"
    )


def _is_dir(text: str) -> bool:
    try:
        return os.path.isdir(text)
    except (OSError, ValueError):
        return False
