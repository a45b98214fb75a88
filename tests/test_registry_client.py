"""Registry client behaviour that a real registry does not show on demand: retries, challenges,
Docker config credentials, references."""

from __future__ import annotations

import base64
import json
import os

import pytest
import requests

from enclave_build.builder.errors import UsageError
from enclave_build.builder.image import registry as reg
from enclave_build.builder.image.reference import parse_registry_ref, parse_source


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

    def post(self, url, data=None, **kwargs):
        self.calls.append(("OAUTH", url, {"data": data}))
        return self.answers.pop(0)


def _client(host: str, session=None, **kwargs) -> reg.RegistryClient:
    """A client that does not wait between retries."""
    if session is not None:
        kwargs["session"] = session
    return reg.RegistryClient(host, sleep=lambda seconds: None, **kwargs)


def test_5xx_and_connection_errors_are_retried():
    session = FakeSession(
        [requests.ConnectionError("reset"), FakeResponse(503), FakeResponse(200, body=b"ok")]
    )
    client = _client("127.0.0.1:5000", session)
    response = client._request("GET", f"{client.base}/x/manifests/1", "x", "repository:x:pull")
    assert response.status_code == 200 and len(session.calls) == 3


def test_persistent_failure_gives_up_with_a_clear_error():
    session = FakeSession([FakeResponse(502)] * 4)
    client = _client("127.0.0.1:5000", session)
    with pytest.raises(reg.RegistryError, match=r"failed with HTTP 502 after 4 tries"):
        client._request("GET", f"{client.base}/x/manifests/1", "x", "repository:x:pull")


def test_bearer_challenge_uses_docker_config_credentials(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"auths": {"registry.example.com": {"auth": base64.b64encode(b"ci:pw").decode()}}}
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    challenge = {
        "WWW-Authenticate": 'Bearer realm="https://registry.example.com/token",'
        'service="registry.example.com"'
    }
    session = FakeSession(
        [
            FakeResponse(401, challenge),
            FakeResponse(200, body=b'{"token": "T0K"}'),
            FakeResponse(200, body=b"manifest"),
        ]
    )
    client = _client("registry.example.com", session)
    assert client.base.startswith("https://")  # not loopback: TLS
    client._request(
        "GET", f"{client.base}/team/app/manifests/1", "team/app", "repository:team/app:pull"
    )
    token_call = session.calls[1]
    assert token_call[2]["auth"] == ("ci", "pw")
    assert token_call[2]["params"] == {
        "service": "registry.example.com",
        "scope": "repository:team/app:pull",
    }
    assert session.calls[2][2]["Authorization"] == "Bearer T0K"


def test_plain_http_only_for_loopback(monkeypatch):
    assert _client("127.0.0.1:5000").base.startswith("http://")
    assert _client("localhost:5000").base.startswith("http://")
    assert _client("10.0.0.5:5000").base.startswith("https://")
    monkeypatch.setenv("ENCLAVE_BUILD_INSECURE_REGISTRIES", "10.0.0.5:5000")
    assert _client("10.0.0.5:5000").base.startswith("http://")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("ubuntu", ("registry-1.docker.io", "library/ubuntu", "latest", None)),
        (
            "gramineproject/gramine:v1.9",
            ("registry-1.docker.io", "gramineproject/gramine", "v1.9", None),
        ),
        ("127.0.0.1:5000/face:1", ("127.0.0.1:5000", "face", "1", None)),
        ("localhost/a/b@sha256:" + "a" * 64, ("localhost", "a/b", None, "sha256:" + "a" * 64)),
    ],
)
def test_registry_references(text, expected):
    ref = parse_registry_ref(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "text,transport,location,tag",
    [
        ("docker://127.0.0.1:5000/x:1", "docker", "127.0.0.1:5000/x:1", None),
        ("docker-daemon:app:2", "docker-daemon", "app:2", None),
        ("oci:/tmp/layout:v1", "oci", "/tmp/layout", "v1"),
        ("oci:/tmp/layout", "oci", "/tmp/layout", None),
        ("oci-archive:img.tar", "oci-archive", "img.tar", None),
        ("docker-archive:/tmp/save.tar", "docker-archive", "/tmp/save.tar", None),
        ("dir:/srv/rootfs", "dir", "/srv/rootfs", None),
    ],
)
def test_sources(text, transport, location, tag):
    source = parse_source(text)
    assert (source.transport, source.location, source.tag) == (transport, location, tag)


@pytest.mark.parametrize(
    "text,message",
    [
        ("Upper/Case:1", "invalid repository name"),
        ("x@sha256:123", "digest must be sha256:<64 hex>"),
        ("x:bad tag", "invalid tag"),
    ],
)
def test_bad_references(text, message):
    with pytest.raises(UsageError, match=message):
        parse_registry_ref(text)


# ------------------------------------------------------------------ credentials and token realms


def _docker_config(tmp_path, monkeypatch, auths: dict, **extra) -> None:
    entries = {
        host: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}
        for host, (user, pw) in auths.items()
    }
    (tmp_path / "config.json").write_text(json.dumps({"auths": entries, **extra}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def _token_request(realm: str, host: str = "registry.example.com") -> dict:
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="{host}"'}
    session = FakeSession(
        [
            FakeResponse(401, challenge),
            FakeResponse(200, body=b'{"token": "T0K"}'),
            FakeResponse(200, body=b"ok"),
        ]
    )
    client = _client(host, session)  # a recording stand-in
    client._request(
        "GET", f"{client.base}/team/app/manifests/1", "team/app", "repository:team/app:pull"
    )
    assert session.calls[1][0] == "TOKEN" and session.calls[1][1] == realm
    return session.calls[1][2]


def test_credentials_are_not_sent_to_a_realm_on_another_host(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"registry.example.com": ("ci", "pw")})
    assert _token_request("https://evil.example.net/token")["auth"] is None


def test_credentials_are_not_sent_to_a_plain_http_realm(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"registry.example.com": ("ci", "pw")})
    assert _token_request("http://registry.example.com/token")["auth"] is None


def test_a_realm_on_another_host_gets_only_its_own_credentials(tmp_path, monkeypatch):
    _docker_config(
        tmp_path,
        monkeypatch,
        {"registry.example.com": ("ci", "pw"), "auth.example.com": ("tok", "en")},
    )
    assert _token_request("https://auth.example.com/token")["auth"] == ("tok", "en")


def test_loopback_http_realm_of_a_loopback_registry_gets_credentials(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"127.0.0.1:5000": ("ci", "pw")})
    assert _token_request("http://127.0.0.1:5001/token", "127.0.0.1:5000")["auth"] == ("ci", "pw")


def test_docker_hub_credentials_go_to_its_token_service(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"https://index.docker.io/v1/": ("hub", "pw")})
    assert _token_request("https://auth.docker.io/token", "registry-1.docker.io")["auth"] == (
        "hub",
        "pw",
    )


def test_refused_token_request_says_why_credentials_were_withheld(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"registry.example.com": ("ci", "pw")})
    challenge = {"WWW-Authenticate": 'Bearer realm="http://registry.example.com/t"'}
    session = FakeSession([FakeResponse(401, challenge), FakeResponse(401)])
    client = _client("registry.example.com", session)
    with pytest.raises(
        reg.RegistryAuthError, match=r"not sent because the token realm .* plain http"
    ):
        client._request("GET", f"{client.base}/a/manifests/1", "a", "repository:a:pull")


def test_basic_credentials_are_not_sent_over_plain_http_to_a_remote_registry(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"10.0.0.5:5000": ("ci", "pw")})
    monkeypatch.setenv("ENCLAVE_BUILD_INSECURE_REGISTRIES", "10.0.0.5:5000")
    session = FakeSession([FakeResponse(401, {"WWW-Authenticate": 'Basic realm="r"'})])
    client = _client("10.0.0.5:5000", session)
    with pytest.raises(reg.RegistryAuthError, match="only sent over https"):
        client._request("GET", f"{client.base}/a/manifests/1", "a", "repository:a:pull")
    assert len(session.calls) == 1


def test_an_expired_token_is_fetched_again_on_401(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"registry.example.com": ("ci", "pw")})
    challenge = {"WWW-Authenticate": 'Bearer realm="https://registry.example.com/token"'}
    session = FakeSession(
        [
            FakeResponse(401, challenge),
            FakeResponse(200, body=b'{"token": "T1", "expires_in": 300}'),
            FakeResponse(200, body=b"first"),
            FakeResponse(401, challenge),  # T1 revoked / expired early
            FakeResponse(200, body=b'{"token": "T2", "expires_in": 300}'),
            FakeResponse(200, body=b"second"),
        ]
    )
    client = _client("registry.example.com", session)
    url = f"{client.base}/a/manifests/1"
    assert client._request("GET", url, "a", "repository:a:pull").content == b"first"
    assert client._request("GET", url, "a", "repository:a:pull").content == b"second"
    assert session.calls[3][2]["Authorization"] == "Bearer T1"
    assert session.calls[5][2]["Authorization"] == "Bearer T2"


def test_a_token_is_refreshed_before_it_expires(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"registry.example.com": ("ci", "pw")})
    clock = [1000.0]
    challenge = {"WWW-Authenticate": 'Bearer realm="https://registry.example.com/token"'}
    session = FakeSession(
        [
            FakeResponse(401, challenge),
            FakeResponse(200, body=b'{"token": "T1", "expires_in": 60}'),
            FakeResponse(200, body=b"first"),
            FakeResponse(200, body=b'{"token": "T2", "expires_in": 60}'),
            FakeResponse(200, body=b"second"),
        ]
    )
    client = _client("registry.example.com", session, clock=lambda: clock[0])
    url = f"{client.base}/a/manifests/1"
    client._request("GET", url, "a", "repository:a:pull")
    clock[0] += 120
    assert client._request("GET", url, "a", "repository:a:pull").content == b"second"
    assert session.calls[3][0] == "TOKEN"
    assert session.calls[4][2]["Authorization"] == "Bearer T2"


def test_credential_helpers_through_the_docker_sdk(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'echo "{\\"ServerURL\\":\\"$server\\",\\"Username\\":\\"h\\",'
        '\\"Secret\\":\\"s3\\"}"\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(
        json.dumps({"credHelpers": {"registry.example.com": "fake"}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert reg.credentials("registry.example.com") == reg.Credentials("h", "s3")
    assert reg.credentials("other.example.com") is None


def test_identity_token_is_exchanged_with_oauth(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"registry.example.com": {"identitytoken": "REFRESH"}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    challenge = {
        "WWW-Authenticate": 'Bearer realm="https://registry.example.com/oauth2/token",'
        'service="registry.example.com"'
    }
    session = FakeSession(
        [
            FakeResponse(401, challenge),
            FakeResponse(200, body=b'{"access_token": "AT"}'),
            FakeResponse(200, body=b"ok"),
        ]
    )
    client = _client("registry.example.com", session)
    client._request("GET", f"{client.base}/a/manifests/1", "a", "repository:a:pull")
    assert session.calls[1][0] == "OAUTH"
    assert session.calls[1][2]["data"]["refresh_token"] == "REFRESH"
    assert session.calls[2][2]["Authorization"] == "Bearer AT"
