"""What `pip install` puts in site-packages: one import namespace, ``enclave_build``, holding
the directories the project keeps (builder/, plugins/, attestation/, model_server/,
base_images/), and one version."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import enclave_build

from .conftest import REPO, image_rootfs

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_the_package_list_matches_the_directories_on_disk():
    """pyproject.toml lists the packages explicitly (the namespace mapping needs that): every
    package directory on disk is in it, and nothing else."""
    on_disk = {"enclave_build"}
    for name, directory in SETUPTOOLS["package-dir"].items():
        root = REPO / directory
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            parts = init.parent.relative_to(root).parts
            on_disk.add(".".join((name, *parts)))
        for data_dir in root.rglob("*"):  # data-only directories with importable names
            parts = data_dir.relative_to(root).parts
            if (
                data_dir.is_dir()
                and all(p.isidentifier() for p in parts)
                and "__pycache__" not in parts
                and not (data_dir / "__init__.py").exists()
            ):
                on_disk.add(".".join((name, *parts)))
    assert sorted(SETUPTOOLS["packages"]) == sorted(on_disk)


def test_one_version_for_the_cli_the_model_server_and_the_distribution():
    from enclave_build import builder, model_server

    assert builder.__version__ == model_server.__version__ == enclave_build.__version__
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "enclave_build.__version__"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """enclave-build's wheel, built from this checkout."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = wheels.glob("enclave_build-*.whl")
    return built


@pytest.mark.integration
def test_the_wheel_installs_one_top_level_name(tmp_path, wheel):
    """Build the wheel and install it (no dependencies) into a fresh virtual environment: the
    only top-level import name it adds is ``enclave_build``, which imports from there with its
    subpackages, and the console script runs."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        top_level = archive.read(
            next(n for n in archive.namelist() if n.endswith(".dist-info/top_level.txt"))
        ).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"enclave_build"}
    assert top_level.split() == ["enclave_build"]
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(env / "site"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    installed = sorted(
        p.name
        for p in (env / "site").iterdir()
        if not p.name.endswith(".dist-info") and p.name != "bin"
    )
    assert installed == ["enclave_build"]
    # the installed wheel first, then this environment's dependencies -- added as a plain path,
    # so its .pth files (the checkout's editable install) are not read
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.append(sys.argv[2]); "
        "import enclave_build, enclave_build.builder.cli, enclave_build.model_server.server, "
        "enclave_build.plugin, "
        "enclave_build.attestation.server, enclave_build.plugins.tflite; "
        "print(enclave_build.__version__, enclave_build.__file__)"
    )
    out = subprocess.run(
        [str(python), "-I", "-c", code, str(env / "site"), sysconfig.get_paths()["purelib"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    version, location = out.stdout.split()
    assert version == enclave_build.__version__
    assert Path(location).is_relative_to(env / "site")
    templates = env / "site" / "enclave_build" / "builder" / "gramine" / "templates"
    assert (templates / "manifest.toml.j2").is_file()
    assert (
        env / "site" / "enclave_build" / "base_images" / "gramine-python" / "requirements.txt"
    ).is_file()


#: Runs enclave-build's command line with the wheel's installation first on the path and this
#: environment's dependencies after it (a plain path: the checkout's editable install is not
#: read), and says where enclave_build came from.
CLI = (
    "import sys; site, deps = sys.argv[1:3]; sys.path.insert(0, site); sys.path.append(deps); "
    "sys.argv = ['enclave-build', *sys.argv[3:]]; import enclave_build; "
    "print('from', enclave_build.__file__, file=sys.stderr); "
    "from enclave_build.builder.cli import main; main()"
)


@pytest.mark.integration
def test_doctor_from_the_wheel_looks_for_no_checkout_file(tmp_path, wheel):
    """Installed from the wheel (as pipx does), doctor resolves no path of a checkout inside
    site-packages: without $GRAMINE_ARCHIVE it says none was given and how to get a base."""
    import json

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "GRAMINE_ARCHIVE"}
    proc = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "python"),
            "-I",
            "-c",
            CLI,
            str(site),
            sysconfig.get_paths()["purelib"],
            "doctor",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"from {site / 'enclave_build' / '__init__.py'}" in proc.stderr
    checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    archive = checks["realbase.gramine_archive"]
    assert "site" not in archive["detail"] and "shared/gramine" not in archive["detail"]
    assert archive["detail"].startswith("none given ($GRAMINE_ARCHIVE is not set)")
    assert "enclave-build base gramine ROOTFS" in archive["fix"]


@pytest.mark.integration
def test_a_third_party_plugin_written_against_the_stable_api_builds_from_the_wheel(
    tmp_path, wheel, signing_key
):
    """tests/thirdparty_plugin imports only enclave_build.plugin: installed with the wheel
    (pip, into one target directory), it is listed, adds its command group, and builds an image
    on the stand-in base."""
    import json
    import shutil
    import tomllib

    site = tmp_path / "site"
    source = tmp_path / "plugin-src"
    shutil.copytree(REPO / "tests" / "thirdparty_plugin", source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(wheel),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), "-I", "-c", CLI, str(site), sysconfig.get_paths()["purelib"], *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    listing = cli("plugins")
    assert listing.returncode == 0, listing.stderr
    assert f"from {site / 'enclave_build' / '__init__.py'}" in listing.stderr
    assert "echo 0.3.0  (enclave-build-echo-plugin)" in listing.stdout
    assert cli("echo", "greet", "wheel").stdout == "hello, wheel\n"

    base = cli("base", "standin", str(tmp_path / "standin"))
    assert base.returncode == 0, base.stderr
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    (tmp_path / "spec.toml").write_text(
        '[service]\nname = "echo"\nframework = "echo"\n\n'
        '[signing]\nkey = "key.pem"\n\n'
        '[echo]\ngreeting = "from a wheel"\n'
    )
    built = cli(
        "build", "spec.toml", "--base", f"dir:{tmp_path / 'standin'}", "--output", "out", "--json"
    )
    assert built.returncode == 0, built.stderr
    measurements = json.loads(built.stdout)
    assert measurements["framework"] == "echo" and len(measurements["mr_enclave"]) == 64
    assert json.loads((tmp_path / "out" / "measurements.json").read_text()) == measurements
    manifest = tomllib.loads(
        (image_rootfs(tmp_path / "out") / "enclave/echo.manifest.sgx").read_text()
    )
    assert manifest["loader"]["env"]["ECHO_GREETING"] == "from a wheel"
    assert manifest["loader"]["env"]["ECHO_CONFIGURED_BY"] == "echo-plugin"


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
