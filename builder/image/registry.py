"""A small OCI distribution (registry v2) client: pull by tag or digest, push by digest.

Credentials come from the Docker config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``) through the docker SDK (:mod:`docker.auth`): ``auths`` entries,
``credHelpers`` and ``credsStore`` (the same ``docker-credential-*`` helpers Docker uses).
Bearer-token and Basic challenges are both answered; an expired or revoked token is fetched
again. Connection errors, 429 and 5xx answers are retried with backoff.

A secret only goes to the host it is stored for. Basic credentials are sent to the registry, and
to a bearer-token realm only over https (plain http only on loopback, for tests) and only if the
realm is the registry's own host (Docker Hub's registry and its token service auth.docker.io
count as one, as Docker itself stores them); a realm on another host receives that host's own
credentials from the Docker config, if it has any, else an anonymous token request.

Plain HTTP is used only for loopback registries (localhost, 127.0.0.0/8, ::1), like Docker's
default, or hosts listed in ``ENCLAVE_BUILD_INSECURE_REGISTRIES`` (comma-separated); credentials
are never sent over plain HTTP to a host that is not loopback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from .oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobStore,
    Descriptor,
    Image,
    ImageError,
    check_digest,
    parse_config,
    parse_index,
    parse_json_object,
    parse_manifest,
    sha256_digest,
)
from .reference import DOCKER_HUB, RegistryRef

_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
_RETRIES = 4
_TIMEOUT = (10, 300)
_HUB_TOKEN_HOST = "auth.docker.io"
_DEFAULT_TOKEN_LIFETIME = 60  # seconds, when the token answer names none (distribution spec)
_EXPIRY_MARGIN = 5  # refresh this long before a token expires
_MAX_MANIFEST = 4 << 20


class RegistryError(ImageError):
    pass


class RegistryAuthError(RegistryError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (`docker login` to some registries)


def credentials(host: str) -> Credentials | None:
    """The credentials the Docker config holds for *host* (docker SDK lookup), or None."""
    import docker.auth
    from docker.errors import DockerException

    try:
        config = docker.auth.load_config()
        if host in (DOCKER_HUB, "docker.io", "index.docker.io"):
            entry = config.resolve_authconfig(None)  # Hub: "https://index.docker.io/v1/"
        else:
            entry = None
            for key in (host, f"https://{host}", f"http://{host}"):
                entry = config.resolve_authconfig(key)
                if entry:
                    break
    except (DockerException, binascii.Error, ValueError, OSError) as exc:
        raise RegistryAuthError(
            f"Docker config: cannot read the credentials for {host}: {exc}"
        ) from None
    if not entry:
        return None
    token = entry.get("IdentityToken") or entry.get("identitytoken")
    if token:
        return Credentials(identity_token=str(token))
    user = entry.get("Username") or entry.get("username") or ""
    secret = entry.get("Password") or entry.get("password") or ""
    if not user and not secret:
        return None
    return Credentials(str(user), str(secret))


def _hostname(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[1 : netloc.index("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0]


def _loopback(netloc: str) -> bool:
    name = _hostname(netloc)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _plain_http(host: str) -> bool:
    name = _hostname(host)
    insecure = {
        h.strip() for h in os.environ.get("ENCLAVE_BUILD_INSECURE_REGISTRIES", "").split(",")
    }
    return host in insecure or name in insecure or _loopback(host)


@dataclass
class _Token:
    header: str
    expires: float  # time.monotonic() after which it is fetched again
    challenge: dict[str, str] = field(default_factory=dict)


@dataclass
class RegistryClient:
    host: str
    session: requests.Session = field(default_factory=requests.Session)
    #: Waits between retries (seconds) and tells when a token expires; tests give their own.
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        scheme = "http" if _plain_http(self.host) else "https"
        self.api_host = "registry-1.docker.io" if self.host == DOCKER_HUB else self.host
        self.base = f"{scheme}://{self.api_host}/v2"
        self._token: dict[str, _Token] = {}

    # ------------------------------------------------------------------ plumbing

    def _request(
        self, method: str, url: str, repository: str, scope: str, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        delay = 0.5
        refreshed = False
        for attempt in range(_RETRIES + 1):
            token = self._valid_token(scope)
            if token is not None:
                headers["Authorization"] = token.header
            rewind = getattr(kwargs.get("data"), "seek", None)
            if rewind is not None:  # a file body: sent again from its start on a retry
                rewind(0)
            try:
                response = self.session.request(
                    method, url, headers=headers, timeout=_TIMEOUT, **kwargs
                )
            except requests.ConnectionError as exc:
                if attempt >= _RETRIES - 1:
                    raise RegistryError(f"cannot reach registry {self.host}: {exc}") from None
                self.sleep(delay)
                delay *= 2
                continue
            if response.status_code == 401 and (token is None or not refreshed):
                # No token yet, or the one we hold expired early or was revoked: (re)authenticate
                # once for this request.
                refreshed = token is not None
                self._token.pop(scope, None)
                self._authenticate(response, repository, scope)
                continue
            if response.status_code == 401:
                raise RegistryAuthError(
                    f"registry {self.host} refused the credentials for {repository} "
                    f"(run `docker login {self.host}`; credentials are read from the Docker "
                    "config)"
                )
            if response.status_code == 403:
                raise RegistryAuthError(
                    f"registry {self.host}: access to {repository} denied ({scope.split(':')[-1]})"
                )
            if response.status_code == 429 or response.status_code >= 500:
                if attempt >= _RETRIES - 1:
                    raise RegistryError(
                        f"registry {self.host}: {method} {url} failed with "
                        f"HTTP {response.status_code} after {_RETRIES} tries"
                    )
                self.sleep(delay)
                delay *= 2
                continue
            return response
        raise RegistryError(f"registry {self.host}: {method} {url} failed")

    def _valid_token(self, scope: str) -> _Token | None:
        """The token for *scope*, fetched again first if it is about to expire."""
        token = self._token.get(scope)
        if token is None or self.clock() < token.expires:
            return token
        del self._token[scope]
        if token.challenge:
            self._fetch_token(
                token.challenge, scope.split(":")[1] if ":" in scope else scope, scope
            )
            return self._token.get(scope)
        return None

    def _authenticate(self, response: requests.Response, repository: str, scope: str) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            if self.base.startswith("http://") and not _loopback(self.api_host):
                raise RegistryAuthError(
                    f"registry {self.host} asks for a password over plain "
                    "http: credentials are only sent over https"
                )
            creds = credentials(self.host)
            if creds is None or not creds.username:
                raise RegistryAuthError(
                    f"registry {self.host} needs credentials for "
                    f"{repository}: run `docker login {self.host}`"
                )
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            self._token[scope] = _Token(f"Basic {token}", float("inf"))
            return
        if not challenge.lower().startswith("bearer"):
            raise RegistryAuthError(
                f"registry {self.host}: unsupported auth challenge {challenge[:200]!r}"
            )
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if "realm" not in params:
            raise RegistryAuthError(f"registry {self.host}: bearer challenge without a realm")
        self._fetch_token(params, repository, scope)

    def _realm_credentials(self, realm: str) -> tuple[Credentials | None, str | None]:
        """(credentials to send to the token *realm*, why none are sent)."""
        parts = urlsplit(realm)
        netloc = parts.netloc.rsplit("@", 1)[-1].lower()
        if parts.scheme == "http" and not _loopback(netloc):
            return None, f"token realm {realm} is plain http"
        if parts.scheme not in ("http", "https") or not netloc:
            raise RegistryAuthError(
                f"registry {self.host}: token realm {realm!r} is not an http(s) URL"
            )
        # Same host name, any port: a registry and its token service on another port of the same
        # machine are one operator.
        same = _hostname(netloc) == _hostname(self.api_host.lower())
        if self.host == DOCKER_HUB and _hostname(netloc) == _HUB_TOKEN_HOST:
            same = True
        if same:
            return credentials(self.host), None
        # Another host: only the credentials the user stored for *that* host.
        own = credentials(netloc)
        return own, None if own else f"token realm {realm} is not {self.api_host}"

    def _fetch_token(self, params: dict[str, str], repository: str, scope: str) -> None:
        realm = params["realm"]
        creds, withheld = self._realm_credentials(realm)
        query = {"service": params.get("service", ""), "scope": scope}
        try:
            if creds is not None and creds.identity_token:
                answer = self.session.post(
                    realm,
                    data={
                        **query,
                        "grant_type": "refresh_token",
                        "client_id": "enclave-build",
                        "refresh_token": creds.identity_token,
                    },
                    timeout=_TIMEOUT,
                )
            else:
                auth = (creds.username, creds.password) if creds is not None else None
                answer = self.session.get(realm, params=query, auth=auth, timeout=_TIMEOUT)
        except requests.RequestException as exc:
            raise RegistryAuthError(f"registry {self.host}: token request failed: {exc}") from None
        if answer.status_code in (401, 403):
            why = f"; credentials were not sent because the {withheld}" if withheld else ""
            raise RegistryAuthError(
                f"registry {self.host} refused the credentials for "
                f"{repository} (run `docker login {self.host}`){why}"
            )
        if answer.status_code != 200:
            raise RegistryAuthError(
                f"registry {self.host}: token request answered HTTP {answer.status_code}"
            )
        try:
            data = answer.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"registry {self.host}: the token service answered no token")
        lifetime = data.get("expires_in", _DEFAULT_TOKEN_LIFETIME)
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        expires = self.clock() + max(float(lifetime) - _EXPIRY_MARGIN, 1.0)
        self._token[scope] = _Token(f"Bearer {token}", expires, dict(params))

    @staticmethod
    def _check(response: requests.Response, what: str) -> None:
        if response.status_code == 404:
            raise RegistryError(f"{what}: not found")
        if response.status_code >= 400:
            raise RegistryError(f"{what}: HTTP {response.status_code} {response.text[:200]}")

    # ------------------------------------------------------------------ pull

    def pull(
        self,
        ref: RegistryRef,
        store: BlobStore,
        progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    ) -> Image:
        scope = f"repository:{ref.repository}:pull"
        manifest_bytes, media_type = self._get_manifest(ref, ref.reference, scope)
        data = parse_json_object(manifest_bytes, f"{ref}: manifest")
        if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in data:
            chosen = next(
                (
                    m
                    for m in parse_index(data, f"{ref}: index")
                    if (m.platform or {}).get("os") == "linux"
                    and (m.platform or {}).get("architecture") == "amd64"
                ),
                None,
            )
            if chosen is None:
                raise RegistryError(f"{ref}: no linux/amd64 image in the index")
            manifest_bytes, media_type = self._get_manifest(ref, chosen.digest, scope)
            data = parse_json_object(manifest_bytes, f"{ref}: manifest {chosen.digest}")
        if "manifests" in data:
            raise RegistryError(f"{ref}: an index nested in an index is not supported")
        config_desc, layers = parse_manifest(data, f"{ref}: manifest ({media_type})")
        total = sum(d.size for d in layers if not store.has(d.digest))
        advance = progress(f"pulling {ref}", total) if progress else None
        for desc in [config_desc, *layers]:
            if not store.has(desc.digest):
                self._get_blob(
                    ref.repository,
                    desc.digest,
                    store,
                    scope,
                    advance if desc is not config_desc else None,
                )
        config = parse_config(store.read(config_desc.digest), f"{ref}: config")
        return Image(store, config, config_desc, layers, manifest_bytes, f"docker://{ref}")

    def _get_manifest(self, ref: RegistryRef, reference: str, scope: str) -> tuple[bytes, str]:
        if reference.startswith("sha256:"):
            check_digest(reference, f"{ref}: manifest")
        url = f"{self.base}/{ref.repository}/manifests/{reference}"
        response = self._request("GET", url, ref.repository, scope, headers={"Accept": _ACCEPT})
        self._check(response, f"image {ref.host}/{ref.repository}:{reference}")
        body = response.content
        if len(body) > _MAX_MANIFEST:
            raise RegistryError(f"{ref}: manifest of {len(body)} bytes is implausibly large")
        if reference.startswith("sha256:") and sha256_digest(body) != reference:
            raise RegistryError(f"{ref}: manifest does not match digest {reference}")
        return body, response.headers.get("Content-Type", "").split(";")[0]

    def _get_blob(
        self,
        repository: str,
        digest: str,
        store: BlobStore,
        scope: str,
        advance: Callable[[int], None] | None,
    ) -> None:
        url = f"{self.base}/{repository}/blobs/{digest}"
        response = self._request("GET", url, repository, scope, stream=True)
        self._check(response, f"blob {digest} of {repository}")
        response.raw.decode_content = True
        store.put_stream(response.raw, expected=digest, progress=advance)

    # ------------------------------------------------------------------ push

    def push(
        self,
        ref: RegistryRef,
        image: Image,
        progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
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
        response = self._request(
            "PUT",
            url,
            ref.repository,
            scope,
            data=image.manifest_bytes,
            headers={"Content-Type": OCI_MANIFEST},
        )
        self._check(response, f"pushing the manifest of {ref}")
        digest = image.manifest_digest
        assert digest is not None  # the manifest was just sent
        answered = response.headers.get("Docker-Content-Digest")
        if answered:
            check_digest(answered, f"{ref}: Docker-Content-Digest answered by the registry")
        if answered and answered != digest:
            raise RegistryError(f"{ref}: registry stored manifest {answered}, expected {digest}")
        return digest

    def _has_blob(self, repository: str, digest: str, scope: str) -> bool:
        response = self._request(
            "HEAD", f"{self.base}/{repository}/blobs/{digest}", repository, scope
        )
        return response.status_code == 200

    def _put_blob(
        self,
        repository: str,
        desc: Descriptor,
        store: BlobStore,
        scope: str,
        advance: Callable[[int], None] | None,
    ) -> None:
        start = self._request("POST", f"{self.base}/{repository}/blobs/uploads/", repository, scope)
        self._check(start, f"starting the upload of {desc.digest}")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base.rsplit("/v2", 1)[0] + location
        separator = "&" if "?" in location else "?"
        with open(store.path(desc.digest), "rb") as handle:
            body = _Counting(handle, advance)
            done = self._request(
                "PUT",
                f"{location}{separator}digest={desc.digest}",
                repository,
                scope,
                data=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(desc.size),
                },
            )
        self._check(done, f"uploading {desc.digest}")

    # ------------------------------------------------------------------ artifacts

    def put_blob_bytes(self, repository: str, data: bytes) -> str:
        """Upload a small blob (a config, an attestation) unless the registry has it; its
        digest."""
        digest = sha256_digest(data)
        scope = f"repository:{repository}:pull,push"
        if self._has_blob(repository, digest, scope):
            return digest
        start = self._request("POST", f"{self.base}/{repository}/blobs/uploads/", repository, scope)
        self._check(start, f"starting the upload of {digest}")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base.rsplit("/v2", 1)[0] + location
        separator = "&" if "?" in location else "?"
        done = self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            repository,
            scope,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._check(done, f"uploading {digest}")
        return digest

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> requests.Response:
        """PUT a manifest (or index) under *reference* (a tag or its digest); the answer (its
        headers say, e.g., whether the registry took a ``subject``: ``OCI-Subject``)."""
        scope = f"repository:{repository}:pull,push"
        response = self._request(
            "PUT",
            f"{self.base}/{repository}/manifests/{reference}",
            repository,
            scope,
            data=body,
            headers={"Content-Type": media_type},
        )
        self._check(response, f"pushing manifest {repository}:{reference}")
        return response

    def manifest_bytes(self, ref: RegistryRef, reference: str) -> tuple[bytes, str] | None:
        """The manifest or index *reference* names in *ref*'s repository (bytes, media type);
        None when there is none."""
        try:
            return self._get_manifest(ref, reference, f"repository:{ref.repository}:pull")
        except RegistryError as exc:
            if str(exc).endswith(": not found"):
                return None
            raise

    def referrers(self, ref: RegistryRef, digest: str) -> bytes | None:
        """The OCI 1.1 referrers index of *digest*; None when the registry has no referrers
        API (then the referrers tag schema's fallback tag holds them)."""
        check_digest(digest, f"{ref}: subject")
        response = self._request(
            "GET",
            f"{self.base}/{ref.repository}/referrers/{digest}",
            ref.repository,
            f"repository:{ref.repository}:pull",
            headers={"Accept": OCI_INDEX},
        )
        kind = response.headers.get("Content-Type", "").split(";")[0]
        if response.status_code != 200 or kind != OCI_INDEX:
            return None
        if len(response.content) > _MAX_MANIFEST:
            raise RegistryError(f"{ref}: referrers index of {len(response.content)} bytes")
        return response.content

    def blob_bytes(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob's bytes, checked against *digest*; more than *limit* bytes is refused."""
        check_digest(digest, f"{repository}: blob")
        scope = f"repository:{repository}:pull"
        response = self._request(
            "GET", f"{self.base}/{repository}/blobs/{digest}", repository, scope, stream=True
        )
        self._check(response, f"blob {digest} of {repository}")
        data = response.raw.read(limit + 1, decode_content=True)
        if len(data) > limit:
            raise RegistryError(f"{repository}: blob {digest} is larger than {limit} bytes")
        if sha256_digest(data) != digest:
            raise RegistryError(f"{repository}: blob {digest} does not match its digest")
        return data


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
