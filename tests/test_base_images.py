"""base_images/: structural checks of every Dockerfile, and `enclave-build base build` against a
real Docker engine (with a local FROM-scratch Dockerfile: the real bases need internet)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from enclave_build.base_images import BASES

from .conftest import REPO, run_cli

DOCKERFILES = {name: recipe.directory / "Dockerfile" for name, recipe in BASES.items()}


def _lines(path: Path) -> list[str]:
    """Logical Dockerfile lines (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_base_pins_its_versions(name):
    lines = _lines(DOCKERFILES[name])
    args = {m.group(1): m.group(2) for line in lines if (m := re.match(r"ARG (\w+)=(\S+)", line))}
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms, "no FROM"
    for ref in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), ref)
        assert ":" in resolved and not resolved.endswith(":latest"), f"unpinned base {ref}"
    text = " ".join(lines)
    for package in re.findall(
        r'"(gramine|libsgx-dcap-default-qpl|tflite-runtime|openvino|grpcio)'
        r'(=+)?([^"]*)"',
        text,
    ):
        assert package[1] and package[2], f"unpinned package {package[0]}"
    if name in ("gramine", "gramine-openvino"):  # the two that install Gramine themselves
        assert '"gramine=${GRAMINE_VERSION}"' in text and args.get("GRAMINE_VERSION") == "1.9"
    else:
        assert '"gramine=' not in text


@pytest.mark.parametrize("name", sorted(BASES))
def test_no_secrets_in_bases(name):
    text = DOCKERFILES[name].read_text()
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\w*(KEY|PASSWORD|TOKEN|SECRET)\w*\s*=", text)
    assert not re.search(r"(?im)^\s*(COPY|ADD)\s+.*\.(pem|key|p12)\b", text)
    assert "docker login" not in text


@pytest.mark.parametrize(
    "name", ["gramine", "gramine-tfserving", "gramine-python", "gramine-openvino", "occlum-python"]
)
def test_runtime_bases_drop_root(name):
    users = [line.split()[1] for line in _lines(DOCKERFILES[name]) if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"{name} runs as root"


def test_occlum_base_documents_why_it_keeps_root():
    assert "expect root" in DOCKERFILES["occlum"].read_text()


def test_base_list_command():
    proc = run_cli("base", "list")
    assert proc.returncode == 0
    for recipe in BASES.values():
        assert recipe.tag in proc.stdout.decode()


def test_frameworks_default_to_the_bases_tags():
    from enclave_build.builder.plugins import PluginRegistry

    tags = {recipe.tag for recipe in BASES.values()}
    registry = PluginRegistry()
    builtin = {
        fw
        for info in registry.describe()
        if info.source == "enclave-build"
        for fw in info.frameworks
    }  # not a third-party plugin's (its own base)
    assert builtin
    for name in builtin:
        assert registry.frameworks[name].default_base.removeprefix("docker-daemon:") in tags


def test_unknown_base_is_a_usage_error():
    proc = run_cli("base", "build", "gramine-cuda")
    assert proc.returncode == 2
    assert b"unknown base 'gramine-cuda'; known: gramine, gramine-tfserving" in proc.stderr


@pytest.mark.integration
def test_base_build_command_builds_and_tags(dockerd, tmp_path):
    import docker

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hello").write_text("hi\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM scratch\nARG VERSION=1\nCOPY etc/hello /etc/hello\nLABEL version=${VERSION}\n"
    )
    proc = run_cli(
        "base",
        "build",
        "--dir",
        str(tmp_path),
        "--tag",
        "eb-test/custom:1",
        "--build-arg",
        "VERSION=7",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("eb-test/custom:1 sha256:")
    assert docker.from_env().images.get("eb-test/custom:1").labels["version"] == "7"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Dockerfile").write_text("FROM scratch\nCOPY missing-file /x\n")
    bad = run_cli("base", "build", "--dir", str(broken), "--tag", "eb-test/broken:1")
    assert bad.returncode == 1
    assert b"building eb-test/broken:1 failed" in bad.stderr


@pytest.mark.parametrize("template", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_templates(template):
    path = REPO / "examples" / "ci" / template
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    text = path.read_text()
    assert "enclave-build build" in text and "--push" in text and "enclave-build inspect" in text
    assert "measurements.json" in text
    assert "BEGIN" not in text  # no key material in a template
    assert "--signature" in text  # the external-signing path is shown


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned"
            pins[name.lower()] = version
    return pins


def test_occlum_python_base_matches_occlums_glibc_and_the_gramine_runtimes():
    """The Occlum runtime base is Ubuntu 20.04 (glibc 2.31, Occlum 0.31's own) with the same
    Python runtime pins as gramine-python, in the layout the framework plugins trust."""
    text = " ".join(_lines(DOCKERFILES["occlum-python"]))
    assert "ARG OCCLUM_RUNTIME=occlum/occlum:0.31.0-rt-ubuntu20.04" in text
    assert "ARG GLIBC_VERSION=2.31" in text and "platform.libc_ver()" in text
    assert "--only-binary=:all:" in text
    assert "/usr/local/lib/python${PYTHON_VERSION}/dist-packages/numpy" in text
    gramine = _pins(BASES["gramine-python"].directory / "requirements.txt")
    occlum = _pins(BASES["occlum-python"].directory / "requirements.txt")
    # Occlum's init fetches the keys, so its model server never verifies a quote (no dcap-qvl).
    assert {k: v for k, v in gramine.items() if k != "dcap-qvl"} == occlum
    constraints = _pins(REPO / "constraints.txt")
    for name in ("cryptography", "cffi", "pycparser", "dcap-qvl"):
        assert gramine[name] == constraints[name], f"{name}: keep the test environment's pin"
    from enclave_build.builder.occlum.backend import PYTHON_RUNTIME_BASE
    from enclave_build.plugin import PYTHON

    assert BASES["occlum-python"].tag == PYTHON_RUNTIME_BASE
    assert PYTHON == "/usr/bin/python3.11" and "ARG PYTHON_VERSION=3.11" in text


def test_every_file_a_base_dockerfile_copies_is_in_its_directory():
    from enclave_build.base_images import BASES

    for recipe in BASES.values():
        text = (recipe.directory / "Dockerfile").read_text()
        for line in re.findall(r"^(?:COPY|ADD)\s+(.+)$", text, flags=re.M):
            if "--from=" in line:  # from another stage or image, not the build context
                continue
            words = [w for w in line.split() if not w.startswith("--")]
            for source in words[:-1]:
                if recipe.needs_wheel and source == "*.whl":
                    continue  # `base build NAME --wheel FILE` adds it to the context
                assert (recipe.directory / source).exists(), (recipe.name, source)
