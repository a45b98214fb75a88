"""What `pip install` puts in site-packages: one import namespace, ``enclave_build``, holding
the directories the project keeps (builder/, plugins/, attestation/, model_server/,
base_images/), and one version."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import enclave_build

from .conftest import REPO

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
    assert sorted(SETUPTOOLS["packages"]) == sorted(on_disk)


def test_one_version_for_the_cli_the_model_server_and_the_distribution():
    from enclave_build import builder, model_server

    assert builder.__version__ == model_server.__version__ == enclave_build.__version__
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "enclave_build.__version__"}


@pytest.mark.integration
def test_the_wheel_installs_one_top_level_name(tmp_path):
    """Build the wheel and install it (no dependencies) into a fresh virtual environment: the
    only top-level import name it adds is ``enclave_build``, which imports from there with its
    subpackages, and the console script runs."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("enclave_build-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        top_level = archive.read(next(n for n in archive.namelist()
                                      if n.endswith(".dist-info/top_level.txt"))).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"enclave_build"}
    assert top_level.split() == ["enclave_build"]
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(env / "site"), str(wheel)], check=True, capture_output=True)
    installed = sorted(p.name for p in (env / "site").iterdir()
                       if not p.name.endswith(".dist-info") and p.name != "bin")
    assert installed == ["enclave_build"]
    # the installed wheel first, then this environment's dependencies -- added as a plain path,
    # so its .pth files (the checkout's editable install) are not read
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path.append(sys.argv[2]); "
            "import enclave_build, enclave_build.builder.cli, enclave_build.model_server.server, "
            "enclave_build.attestation.server, enclave_build.plugins.tflite; "
            "print(enclave_build.__version__, enclave_build.__file__)")
    out = subprocess.run([str(python), "-I", "-c", code, str(env / "site"),
                          sysconfig.get_paths()["purelib"]], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    version, location = out.stdout.split()
    assert version == enclave_build.__version__
    assert Path(location).is_relative_to(env / "site")
    templates = env / "site" / "enclave_build" / "builder" / "gramine" / "templates"
    assert (templates / "manifest.toml.j2").is_file()
    assert (env / "site" / "enclave_build" / "base_images" / "gramine-python" /
            "requirements.txt").is_file()
