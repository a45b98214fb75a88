"""Gaps a newcomer hits outside the build itself (issue 10): what an installed enclave-build
ships, the hints when a Docker-engine base cannot be had, and the test wrapper's last lines."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.image.oci import ImageError
from enclave_build.builder.image.sources import open_base

from .conftest import REPO, run_cli, tflite_bytes, write_spec

PACKAGES = ("builder", "attestation", "plugins", "base_images", "model_server")


def _package_of(path: Path) -> tuple[str, Path]:
    """(dotted package name as installed, under enclave_build; package directory) of the nearest
    package pyproject.toml lists that holds *path*."""
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    directory = path.parent
    while True:
        name = ".".join(("enclave_build",) + directory.relative_to(REPO).parts)
        if name in listed:
            return name, directory
        directory = directory.parent


def test_every_data_file_of_a_package_is_installed():
    """`pip install .` / `pipx install .` copies only .py files and package-data: a data file
    outside it works in the checkout and breaks an installed enclave-build (base_images'
    requirements.txt, which `base build gramine-python` COPYs, once was)."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    missing = []
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*")):
            if (
                not path.is_file()
                or path.suffix in (".py", ".pyc")
                or "__pycache__" in path.parts
                or ".egg-info" in str(path)
            ):
                continue
            name, directory = _package_of(path)
            shipped = {
                Path(directory, match).resolve()
                for pattern in package_data.get(name, []) + package_data.get("*", [])
                for match in glob.glob(pattern, root_dir=directory)
            }
            if path.resolve() not in shipped:
                missing.append(str(path.relative_to(REPO)))
    assert not missing, f"not in [tool.setuptools.package-data], so not installed: {missing}"


def test_installing_prints_no_setuptools_warning(monkeypatch):
    """setuptools reads pyproject.toml the way `pip install .` has it do, and warns about
    nothing (a `license = { text = ... }` table printed a deprecation block per build step)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(REPO / "pyproject.toml"))
    assert [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught] == []


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


def test_no_engine_names_dir_and_base_build(monkeypatch, tmp_path):
    """The frameworks' default bases are docker-daemon: images; with no engine the error says
    how to build without one, and which `base build` makes that base once one runs."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ImageError) as caught:
        open_base("docker-daemon:enclave-build/gramine-python:1.9-3.11", cache=tmp_path)
    message = str(caught.value)
    assert "cannot talk to the Docker engine" in message
    assert "--base dir:ROOTFS" in message and "enclave-build base standin DIR" in message
    assert "`enclave-build base build gramine-python` makes this base" in message
    with pytest.raises(ImageError) as other:
        open_base("docker-daemon:someone/else:1", cache=tmp_path)
    assert "--base dir:ROOTFS" in str(other.value) and "base build" not in str(other.value)


def test_missing_engine_image_names_the_base_build_that_makes_it(monkeypatch, tmp_path):
    import docker
    from docker.errors import ImageNotFound

    class Images:
        def get(self, name):
            raise ImageNotFound(f"No such image: {name}")

    class Client:
        images = Images()

    monkeypatch.setattr(docker, "from_env", lambda: Client())
    with pytest.raises(
        ImageError,
        match=r"has no image 'enclave-build/gramine-tfserving:"
        r"1\.9-2\.15\.1'; make it with `enclave-build base build "
        r"gramine-tfserving`.*--base dir:ROOTFS",
    ):
        open_base("docker-daemon:enclave-build/gramine-tfserving:1.9-2.15.1", cache=tmp_path)
    with pytest.raises(ImageError, match=r"has no image 'my/own:2'; `docker pull my/own:2`"):
        open_base("docker-daemon:my/own:2", cache=tmp_path)


def test_base_build_without_an_engine_points_at_doctor(monkeypatch, tmp_path):
    from enclave_build.builder.image.base_build import build_base

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(
        ImageError,
        match=r"cannot talk to the Docker engine.*`enclave-build "
        r"doctor` says how to start one.*--base dir:ROOTFS",
    ):
        build_base("gramine-python", None, None, ())


def test_cli_build_on_the_default_base_without_an_engine(tmp_path, signing_key):
    """What a newcomer runs first: a spec without --base on a machine with no engine."""
    (tmp_path / "m.tflite").write_bytes(tflite_bytes(bytes(64)))
    spec = write_spec(
        tmp_path,
        f"""
[service]
name = "face"
framework = "tflite"
[[models]]
name = "m"
path = "m.tflite"
encrypt = false
[signing]
key = "{signing_key}"
""",
    )
    proc = run_cli("build", str(spec), env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "--base dir:ROOTFS" in err and "enclave-build base build gramine-python" in err
    assert not (tmp_path / "out").exists()


# --- scripts/test.sh: what did not run is in its last lines -------------------------------


def _venv_is_current() -> bool:
    """scripts/venv.sh reinstalls when pyproject.toml or constraints.txt changed; running the
    wrapper then would take minutes, so these tests need the stamp it leaves."""
    digest = hashlib.sha256(
        (REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes()
    ).hexdigest()[:16]
    return (REPO / ".venv" / f".installed-{digest}").exists()


def _wrapper(tmp_path: Path, tests: str, installed: bool) -> subprocess.CompletedProcess:
    """Run scripts/test.sh on *tests* as a non-root user would (stub `id`), with dpkg saying
    every system package is installed or none is (stub `dpkg-query`): nothing is installed."""
    if not _venv_is_current():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true: .venv is not up to date (source scripts/venv.sh)")
        pytest.skip(
            ".venv is not up to date with pyproject.toml/constraints.txt "
            "(source scripts/venv.sh): the wrapper would reinstall it first"
        )
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "id").write_text("#!/bin/sh\necho 1000\n")
    (stubs / "dpkg-query").write_text(
        "#!/bin/sh\n" + ("printf 'install ok installed'\n" if installed else "exit 1\n")
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    sample = tmp_path / "test_sample.py"
    sample.write_text(tests)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(REPO / "scripts/test.sh"), "-q", "-p", "no:cacheprovider", str(sample)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_wrapper_ends_with_what_did_not_run_and_why(tmp_path):
    proc = _wrapper(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "def test_needs_moon():\n    pytest.skip('needs the moon')\n",
        False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.rstrip().splitlines()[-4:]
    assert last[0] == "scripts/test.sh: 1 test(s) did not run on this machine:"
    assert last[1].split(None, 1) == ["1", "needs the moon"]
    assert last[2].startswith("scripts/test.sh: system packages not installed (needs root): ")
    assert "docker.io" in last[2] and "sudo apt-get install" in last[2]
    assert last[3] == "1 passed, 0 failed, 1 skipped"


@pytest.mark.integration
def test_wrapper_says_so_when_everything_ran_and_keeps_pytests_exit_code(tmp_path):
    proc = _wrapper(tmp_path, "def test_ok():\n    pass\n", True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().splitlines()[-2:] == [
        "scripts/test.sh: every selected test ran on this machine (none skipped)",
        "1 passed, 0 failed, 0 skipped",
    ]
    (tmp_path / "f").mkdir()
    failing = _wrapper(tmp_path / "f", "def test_bad():\n    assert False\n", True)
    assert failing.returncode == 1
    assert failing.stdout.rstrip().splitlines()[-1] == "0 passed, 1 failed, 0 skipped"
