"""Shared fixtures.

Conformance tests read ../shared/vectors in place (made by the real Gramine 1.9 tools) and skip
with a reason when it is absent (a fresh clone has no ../shared); under CI=true (CI always has
it) a missing vectors directory FAILS, so conformance can never pass by not running.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .services import dockerd_unavailable, remove_tree, start_dockerd, start_registry, stop

#: Fixtures shared by several test modules.
pytest_plugins = ["tests.fixtures", "tests.gramine_base"]

REPO = Path(__file__).resolve().parent.parent
SHARED_VECTORS = Path(os.environ.get("ENCLAVE_BUILD_VECTORS", REPO.parent / "shared" / "vectors"))


def vectors_dir(name: str) -> Path:
    path = SHARED_VECTORS / name
    if not path.is_dir():
        message = (
            f"conformance vectors not found at {path} (../shared is absent in a fresh "
            "clone; set ENCLAVE_BUILD_VECTORS to point at them)"
        )
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path


def optional_vectors(name: str) -> Path | None:
    """The vectors directory *name* for an optional cross-check: None when absent, except under
    CI=true, where a missing one fails the test instead of silently skipping the check."""
    path = SHARED_VECTORS / name
    if path.is_dir():
        return path
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true: conformance vectors not found at {path}", pytrace=False)
    return None


@pytest.fixture(scope="session")
def sign_vectors(tmp_path_factory) -> Path:
    """A private copy of the gramine-sgx-sign vectors: their (public, test-only) signing key is
    world-readable in ../shared, and enclave-build refuses such keys; the copy is mode 0600."""
    import shutil

    copy = tmp_path_factory.mktemp("vectors") / "sgx-sign"
    shutil.copytree(vectors_dir("sgx-sign"), copy)
    os.chmod(copy, 0o755)
    for path in copy.iterdir():
        os.chmod(path, 0o600 if path.suffix == ".pem" else 0o644 | (path.stat().st_mode & 0o111))
    return copy


@pytest.fixture(scope="session")
def standin_root(tmp_path_factory) -> Path:
    from enclave_build.builder.standin import make_standin_rootfs

    return make_standin_rootfs(tmp_path_factory.mktemp("standin") / "rootfs")


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> Path:
    from enclave_build.builder.gramine.signer import write_new_key

    path = tmp_path_factory.mktemp("keys") / "enclave-key.pem"
    write_new_key(path)
    return path


@functools.cache
def sgx_key_pem() -> bytes:
    """One RSA-3072 (e = 3) private key in PEM, for specs whose [signing] key is loaded (and
    checked) but never signs with."""
    from cryptography.hazmat.primitives import serialization

    from enclave_build.builder.gramine.signer import generate_key

    return generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own hash cache directory (XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "enclave_build", *args],
        capture_output=True,
        env=full_env,
        cwd=cwd,
        input=input,
        timeout=300,
    )


def tflite_bytes(body: bytes = b"") -> bytes:
    """A file the build takes for a TFLite model (the FlatBuffer identifier TFL3 at bytes
    4..8, a root table with no fields: no operators, no state) followed by *body*, at least
    the minimum size; not a model LiteRT can run."""
    head = (
        (12).to_bytes(4, "little")
        + b"TFL3"
        + (4).to_bytes(2, "little")
        + (4).to_bytes(2, "little")
        + (4).to_bytes(4, "little")
    )
    return (head + body).ljust(32, b"\0")


def onnx_bytes(body: bytes = b"") -> bytes:
    """A file the build takes for an ONNX model (a protobuf with ir_version 7 and a graph
    field holding *body*); not a model a runtime can load."""
    length, varint = len(body), b""
    while True:
        varint += bytes([(length & 0x7F) | (0x80 if length > 0x7F else 0)])
        length >>= 7
        if not length:
            break
    return b"\x08\x07" + b"\x3a" + varint + body


def saved_model_dir(directory: Path, body: bytes = b"") -> Path:
    """A directory the build takes for one version of a TensorFlow SavedModel
    (saved_model.pb starting as a SavedModel protobuf, variables/); not one TF Serving can
    load."""
    (directory / "variables").mkdir(parents=True, exist_ok=True)
    (directory / "saved_model.pb").write_bytes(b"\x08\x01" + body)
    (directory / "variables" / "variables.index").write_bytes(b"\0" + body)
    return directory


def model_files(directory: Path, framework: str, names: tuple[str, ...] = ("a", "b")) -> list[str]:
    """One model per name in *directory* that *framework* serves (a SavedModel directory for
    tfserving, else a .tflite file); their paths relative to *directory*."""
    paths = []
    for name in names:
        if framework == "tfserving":
            saved_model_dir(directory / name, f" model {name}".encode() * 40)
            paths.append(name)
        else:
            (directory / f"{name}.tflite").write_bytes(tflite_bytes(f" model {name}".encode() * 40))
            paths.append(f"{name}.tflite")
    return paths


def write_spec(directory: Path, text: str, name: str = "spec.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def image_rootfs(output_dir: Path) -> Path:
    """The root filesystem of the image in a build output (DIR/oci), unpacked for reading."""
    from enclave_build.builder.cache import cache_root
    from enclave_build.builder.image.oci import BlobStore
    from enclave_build.builder.image.sources import read_oci_layout
    from enclave_build.builder.image.unpack import unpacked_rootfs

    store = BlobStore(cache_root() / "blobs")
    image = read_oci_layout(Path(output_dir) / "oci", None, store, str(output_dir))
    return unpacked_rootfs(
        store, image.layers, image.diff_ids, cache_root() / "rootfs", str(output_dir)
    ).root


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    """A Docker engine of our own (vfs storage, no iptables/bridge), for the whole session."""
    import tempfile

    reason = dockerd_unavailable()
    if reason:
        pytest.skip(reason)
    # In /tmp, not tmp_path_factory's deeper directory: the socket's path must stay short.
    workdir = Path(tempfile.mkdtemp(prefix="eb-dockerd-", dir="/tmp"))
    previous = os.environ.get("DOCKER_HOST")
    engine = None
    try:
        engine = start_dockerd(workdir)
        os.environ["DOCKER_HOST"] = engine.host
        yield engine
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        if engine is not None:
            stop(engine.process)
        remove_tree(workdir)  # the engine's data root and exec root are in it


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """docker-registry on 127.0.0.1 (random port), for the whole session."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    stop(reg.process)
