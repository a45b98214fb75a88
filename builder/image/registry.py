"""A small OCI distribution (registry v2) client: pull by tag or digest, push by digest.

Credentials come from the Docker config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``): ``auths`` entries, ``credHelpers`` and ``credsStore`` (through the
same ``docker-credential-*`` helpers Docker uses). Bearer-token and Basic challenges are both
answered. Connection errors, 429 and 5xx answers are retried with backoff.

Plain HTTP is used only for loopback registries (localhost, 127.0.0.0/8, ::1), like Docker's
default, or hosts listed in ``ENCLAVE_BUILD_INSECURE_REGISTRIES`` (comma-separated).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from .oci import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, BlobStore, Descriptor,
                  Image, ImageError, sha256_digest)
from .reference import DOCKER_HUB, RegistryRef

_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
_RETRIES = 4
_TIMEOUT = (10, 300)


class RegistryError(ImageError):
    pass


class RegistryAuthError(RegistryError):
    pass


def _docker_config() -> dict[str, Any]:
    directory = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        return json.loads((directory / "config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryAuthError(f"{directory / 'config.json'}: unreadable Docker config: {exc}")


def credentials(host: str) -> tuple[str, str] | None:
    """(username, secret) for *host* from the Docker config, or None."""
    config = _docker_config()
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    helper = next((config.get("credHelpers", {}).get(k) for k in keys
                   if k in config.get("credHelpers", {})), None) or config.get("credsStore")
    if helper:
        found = _from_helper(helper, keys[0] if host != DOCKER_HUB else keys[-3])
        if found:
            return found
    for key in keys:
        entry = config.get("auths", {}).get(key)
        if entry and entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryAuthError(f"Docker config: malformed auth entry for {key}") from None
            return user, secret
        if entry and entry.get("identitytoken"):
            return "<token>", entry["identitytoken"]
    return None


def _from_helper(helper: str, server: str) -> tuple[str, str] | None:
    try:
        proc = subprocess.run([f"docker-credential-{helper}", "get"], input=server.encode(),
                              capture_output=True, timeout=30)
    except FileNotFoundError:
        raise RegistryAuthError(f"Docker config names credential helper {helper!r}, but "
                                f"docker-credential-{helper} is not installed") from None
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data.get("Username", ""), data.get("Secret", "")


def _plain_http(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:host.index("]")]
    insecure = {h.strip() for h in os.environ.get("ENCLAVE_BUILD_INSECURE_REGISTRIES", "").split(",")}
    if host in insecure or name in insecure or name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class RegistryClient:
    host: str
    session: requests.Session | None = None

    def __post_init__(self) -> None:
        self.session = self.session or requests.Session()
        scheme = "http" if _plain_http(self.host) else "https"
        api_host = "registry-1.docker.io" if self.host == DOCKER_HUB else self.host
        self.base = f"{scheme}://{api_host}/v2"
        self._token: dict[str, str] = {}

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, url: str, repository: str, scope: str,
                 **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        delay = 0.5
        for attempt in range(_RETRIES):
            if scope in self._token:
                headers["Authorization"] = self._token[scope]
            body = kwargs.get("data")
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                response = self.session.request(method, url, headers=headers,  # type: ignore[union-attr]
                                                timeout=_TIMEOUT, **kwargs)
            except requests.ConnectionError as exc:
                if attempt == _RETRIES - 1:
                    raise RegistryError(f"cannot reach registry {self.host}: {exc}") from None
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code == 401 and scope not in self._token:
                self._authenticate(response, repository, scope)
                continue
            if response.status_code == 401:
                raise RegistryAuthError(
                    f"registry {self.host} refused the credentials for {repository} "
                    f"(run `docker login {self.host}`; credentials are read from the Docker "
                    "config)")
            if response.status_code == 403:
                raise RegistryAuthError(f"registry {self.host}: access to {repository} denied "
                                        f"({scope.split(':')[-1]})")
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == _RETRIES - 1:
                    raise RegistryError(f"registry {self.host}: {method} {url} failed with "
                                        f"HTTP {response.status_code} after {_RETRIES} tries")
                time.sleep(delay)
                delay *= 2
                continue
            return response
        raise RegistryError(f"registry {self.host}: {method} {url} failed")

    def _authenticate(self, response: requests.Response, repository: str, scope: str) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        creds = credentials(self.host)
        if challenge.lower().startswith("basic"):
            if creds is None:
                raise RegistryAuthError(f"registry {self.host} needs credentials for "
                                        f"{repository}: run `docker login {self.host}`")
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            self._token[scope] = f"Basic {token}"
            return
        if not challenge.lower().startswith("bearer"):
            raise RegistryAuthError(f"registry {self.host}: unsupported auth challenge "
                                    f"{challenge!r}")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"service": params.get("service", ""), "scope": scope}
        auth = creds if creds and creds[0] != "<token>" else None
        try:
            answer = self.session.get(params["realm"], params=query, auth=auth,  # type: ignore[union-attr]
                                      timeout=_TIMEOUT)
        except (KeyError, requests.RequestException) as exc:
            raise RegistryAuthError(f"registry {self.host}: token request failed: {exc}") from None
        if answer.status_code in (401, 403):
            raise RegistryAuthError(f"registry {self.host} refused the credentials for "
                                    f"{repository} (run `docker login {self.host}`)")
        if answer.status_code != 200:
            raise RegistryAuthError(f"registry {self.host}: token request answered "
                                    f"HTTP {answer.status_code}")
        data = answer.json()
        self._token[scope] = f"Bearer {data.get('token') or data.get('access_token')}"

    @staticmethod
    def _check(response: requests.Response, what: str) -> None:
        if response.status_code == 404:
            raise RegistryError(f"{what}: not found")
        if response.status_code >= 400:
            raise RegistryError(f"{what}: HTTP {response.status_code} {response.text[:200]}")

    # ------------------------------------------------------------------ pull

    def pull(self, ref: RegistryRef, store: BlobStore,
             progress: Callable[[str, int | None], Callable[[int], None]] | None = None) -> Image:
        scope = f"repository:{ref.repository}:pull"
        manifest_bytes, media_type = self._get_manifest(ref, ref.reference, scope)
        data = json.loads(manifest_bytes)
        if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in data:
            chosen = next((m for m in data.get("manifests", [])
                           if m.get("platform", {}).get("os") == "linux"
                           and m.get("platform", {}).get("architecture") == "amd64"), None)
            if chosen is None:
                raise RegistryError(f"{ref}: no linux/amd64 image in the index")
            manifest_bytes, media_type = self._get_manifest(ref, chosen["digest"], scope)
            data = json.loads(manifest_bytes)
        if data.get("schemaVersion") != 2 or "config" not in data:
            raise RegistryError(f"{ref}: unsupported manifest ({media_type})")
        config_desc = Descriptor.from_json(data["config"])
        layers = [Descriptor.from_json(layer) for layer in data.get("layers", [])]
        total = sum(d.size for d in layers if not store.has(d.digest))
        advance = progress(f"pulling {ref}", total) if progress else None
        for desc in [config_desc, *layers]:
            if not store.has(desc.digest):
                self._get_blob(ref.repository, desc.digest, store, scope,
                               advance if desc is not config_desc else None)
        config = json.loads(store.read(config_desc.digest))
        return Image(store, config, config_desc, layers, manifest_bytes, f"docker://{ref}")

    def _get_manifest(self, ref: RegistryRef, reference: str, scope: str) -> tuple[bytes, str]:
        url = f"{self.base}/{ref.repository}/manifests/{reference}"
        response = self._request("GET", url, ref.repository, scope, headers={"Accept": _ACCEPT})
        self._check(response, f"image {ref.host}/{ref.repository}:{reference}")
        body = response.content
        if reference.startswith("sha256:") and sha256_digest(body) != reference:
            raise RegistryError(f"{ref}: manifest does not match digest {reference}")
        return body, response.headers.get("Content-Type", "").split(";")[0]

    def _get_blob(self, repository: str, digest: str, store: BlobStore, scope: str,
                  advance: Callable[[int], None] | None) -> None:
        url = f"{self.base}/{repository}/blobs/{digest}"
        response = self._request("GET", url, repository, scope, stream=True)
        self._check(response, f"blob {digest} of {repository}")
        response.raw.decode_content = True
        store.put_stream(response.raw, expected=digest, progress=advance)

    # ------------------------------------------------------------------ push

    def push(self, ref: RegistryRef, image: Image,
             progress: Callable[[str, int | None], Callable[[int], None]] | None = None
             ) -> str:
        """Push blobs and the manifest; returns the manifest digest."""
        assert image.manifest_bytes is not None
        scope = f"repository:{ref.repository}:pull,push"
        blobs = [image.config_descriptor, *image.layers]
        missing = [d for d in blobs if not self._has_blob(ref.repository, d.digest, scope)]
        advance = progress(f"pushing {ref}", sum(d.size for d in missing)) if progress else None
        for desc in missing:
            self._put_blob(ref.repository, desc, image.store, scope, advance)
        url = f"{self.base}/{ref.repository}/manifests/{ref.tag or image.manifest_digest}"
        response = self._request("PUT", url, ref.repository, scope, data=image.manifest_bytes,
                                 headers={"Content-Type": OCI_MANIFEST})
        self._check(response, f"pushing the manifest of {ref}")
        digest = image.manifest_digest
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise RegistryError(f"{ref}: registry stored manifest {answered}, expected {digest}")
        return digest  # type: ignore[return-value]

    def _has_blob(self, repository: str, digest: str, scope: str) -> bool:
        response = self._request("HEAD", f"{self.base}/{repository}/blobs/{digest}", repository,
                                 scope)
        return response.status_code == 200

    def _put_blob(self, repository: str, desc: Descriptor, store: BlobStore, scope: str,
                  advance: Callable[[int], None] | None) -> None:
        start = self._request("POST", f"{self.base}/{repository}/blobs/uploads/", repository, scope)
        self._check(start, f"starting the upload of {desc.digest}")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base.rsplit("/v2", 1)[0] + location
        separator = "&" if "?" in location else "?"
        with open(store.path(desc.digest), "rb") as handle:
            body = _Counting(handle, advance)
            done = self._request("PUT", f"{location}{separator}digest={desc.digest}", repository,
                                 scope, data=body,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Length": str(desc.size)})
        self._check(done, f"uploading {desc.digest}")


class _Counting:
    """A file wrapper that reports upload progress."""

    def __init__(self, handle: Any, advance: Callable[[int], None] | None):
        self.handle = handle
        self.advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        if self.advance and data:
            self.advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 20):
            yield chunk
