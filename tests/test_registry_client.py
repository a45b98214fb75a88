"""Registry client behaviour that a real registry does not show on demand: retries, challenges,
Docker config credentials, references."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from builder.errors import UsageError
from builder.image import registry as reg
from builder.image.reference import parse_registry_ref, parse_source


class FakeResponse:
    def __init__(self, status: int, headers: dict | None = None, body: bytes = b""):
        self.status_code = status
        self.headers = headers or {}
        self.content = body
        self.text = body.decode()

    def json(self):
        return json.loads(self.content)


class FakeSession:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def request(self, method, url, headers=None, **kwargs):
        self.calls.append((method, url, dict(headers or {})))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get(self, url, params=None, auth=None, **kwargs):
        self.calls.append(("TOKEN", url, {"params": params, "auth": auth}))
        return self.answers.pop(0)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr(reg.time, "sleep", lambda s: None)


def test_5xx_and_connection_errors_are_retried():
    session = FakeSession([requests.ConnectionError("reset"), FakeResponse(503),
                           FakeResponse(200, body=b"ok")])
    client = reg.RegistryClient("127.0.0.1:5000", session)
    response = client._request("GET", f"{client.base}/x/manifests/1", "x", "repository:x:pull")
    assert response.status_code == 200 and len(session.calls) == 3


def test_persistent_failure_gives_up_with_a_clear_error():
    session = FakeSession([FakeResponse(502)] * 4)
    client = reg.RegistryClient("127.0.0.1:5000", session)
    with pytest.raises(reg.RegistryError, match=r"failed with HTTP 502 after 4 tries"):
        client._request("GET", f"{client.base}/x/manifests/1", "x", "repository:x:pull")


def test_bearer_challenge_uses_docker_config_credentials(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {"registry.example.com": {"auth": base64.b64encode(b"ci:pw").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    challenge = {"WWW-Authenticate": 'Bearer realm="https://auth.example.com/token",'
                                     'service="registry.example.com"'}
    session = FakeSession([FakeResponse(401, challenge),
                           FakeResponse(200, body=b'{"token": "T0K"}'),
                           FakeResponse(200, body=b"manifest")])
    client = reg.RegistryClient("registry.example.com", session)
    assert client.base.startswith("https://")  # not loopback: TLS
    client._request("GET", f"{client.base}/team/app/manifests/1", "team/app",
                    "repository:team/app:pull")
    token_call = session.calls[1]
    assert token_call[2]["auth"] == ("ci", "pw")
    assert token_call[2]["params"] == {"service": "registry.example.com",
                                       "scope": "repository:team/app:pull"}
    assert session.calls[2][2]["Authorization"] == "Bearer T0K"


def test_plain_http_only_for_loopback(monkeypatch):
    assert reg.RegistryClient("127.0.0.1:5000").base.startswith("http://")
    assert reg.RegistryClient("localhost:5000").base.startswith("http://")
    assert reg.RegistryClient("10.0.0.5:5000").base.startswith("https://")
    monkeypatch.setenv("ENCLAVE_BUILD_INSECURE_REGISTRIES", "10.0.0.5:5000")
    assert reg.RegistryClient("10.0.0.5:5000").base.startswith("http://")


@pytest.mark.parametrize("text,expected", [
    ("ubuntu", ("registry-1.docker.io", "library/ubuntu", "latest", None)),
    ("gramineproject/gramine:v1.9", ("registry-1.docker.io", "gramineproject/gramine", "v1.9", None)),
    ("127.0.0.1:5000/face:1", ("127.0.0.1:5000", "face", "1", None)),
    ("localhost/a/b@sha256:" + "a" * 64, ("localhost", "a/b", None, "sha256:" + "a" * 64)),
])
def test_registry_references(text, expected):
    ref = parse_registry_ref(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize("text,transport,location,tag", [
    ("docker://127.0.0.1:5000/x:1", "docker", "127.0.0.1:5000/x:1", None),
    ("docker-daemon:app:2", "docker-daemon", "app:2", None),
    ("oci:/tmp/layout:v1", "oci", "/tmp/layout", "v1"),
    ("oci:/tmp/layout", "oci", "/tmp/layout", None),
    ("oci-archive:img.tar", "oci-archive", "img.tar", None),
    ("docker-archive:/tmp/save.tar", "docker-archive", "/tmp/save.tar", None),
    ("dir:/srv/rootfs", "dir", "/srv/rootfs", None),
])
def test_sources(text, transport, location, tag):
    source = parse_source(text)
    assert (source.transport, source.location, source.tag) == (transport, location, tag)


@pytest.mark.parametrize("text,message", [
    ("Upper/Case:1", "invalid repository name"),
    ("x@sha256:123", "digest must be sha256:<64 hex>"),
    ("x:bad tag", "invalid tag"),
])
def test_bad_references(text, message):
    with pytest.raises(UsageError, match=message):
        parse_registry_ref(text)
