"""The installed package's shape for a checkout, as links: ``DEST/enclave_build/builder ->
CHECKOUT/builder``, ... (pyproject's [tool.setuptools.package-dir]), so that ``DEST`` on
``PYTHONPATH`` imports that checkout's ``enclave_build`` whole. scripts/typecheck.py lays it
for mypy; benchmarks lay it to run another checkout's code (a checkout on ``PYTHONPATH`` alone
would import only its top-level ``enclave_build`` and take the subpackages from the installed
one)."""

from __future__ import annotations

import tomllib
from pathlib import Path


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """Each installed package of pyproject's package-dir mapping and the directory it comes from."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: (pyproject.parent / path).resolve() for name, path in mapping.items()}


def link_tree(pyproject: Path, root: Path) -> Path:
    """Lay (again) ``root/enclave_build`` as the installed package's shape; returns ``root``.

    The top-level package is a directory whose modules are links to the real package's files;
    every mapped subpackage is one link to its directory."""
    dirs = package_dirs(pyproject)
    top = [name for name in dirs if "." not in name]
    for name in top:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.iterdir():
            if old.is_symlink():
                old.unlink()
        for source in sorted(dirs[name].glob("*.py")):
            (target / source.name).symlink_to(source)
    for name, source in dirs.items():
        if "." in name:
            (root / name.replace(".", "/")).symlink_to(source, target_is_directory=True)
    return root


def run_root(checkout: Path, dest: Path) -> Path:
    """*dest* laid for running *checkout*'s code: its ``enclave_build`` tree, and links to its
    tests/, benchmarks/ and examples/ (which the benchmarks import). Returns *dest*."""
    link_tree(checkout / "pyproject.toml", dest)
    for name in ("tests", "benchmarks", "examples"):
        if (checkout / name).is_dir() and not (dest / name).exists():
            (dest / name).symlink_to(checkout / name, target_is_directory=True)
    return dest
