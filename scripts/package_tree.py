"""The installed package's shape for a checkout, as links: ``DEST/enclave_build/builder ->
CHECKOUT/builder``, ... (pyproject's [tool.setuptools.package-dir]), so that ``DEST`` on
``PYTHONPATH`` imports that checkout's ``enclave_build`` whole. scripts/typecheck.py lays it
for mypy; benchmarks lay it to run another checkout's code (a checkout on ``PYTHONPATH`` alone
would import only its top-level ``enclave_build`` and take the subpackages from the installed
one). :func:`checkout_tree` does the same for a checkout of either layout (the namespaced one,
or the older one whose packages were top-level directories)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
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


#: The namespace every package installs under since the checkouts that map it in pyproject.
NAMESPACE = "enclave_build"


@dataclass(frozen=True)
class CheckoutTree:
    """How to import a checkout's code: *path* goes first on ``PYTHONPATH`` and *prefix* before
    a package's name (``enclave_build.`` for the namespaced layout, nothing for the older one
    whose packages were top-level directories)."""

    checkout: Path
    path: Path
    prefix: str

    @property
    def layout(self) -> str:
        return "namespaced" if self.prefix else "top-level"

    def module(self, name: str) -> str:
        """The import name of the checkout's package *name* (``model_server``, ``attestation``)."""
        return self.prefix + name


def checkout_prefix(checkout: Path, package: str) -> str:
    """The import prefix of *checkout*'s *package* (``model_server``, ``attestation``, ...):

    * ``"enclave_build."``: the namespaced layout (pyproject maps ``enclave_build.PACKAGE`` in
      [tool.setuptools.package-dir]);
    * ``""``: the older top-level layout (no such mapping; ``PACKAGE/__init__.py`` in the
      checkout, imported by that name).

    Raises ValueError naming the checkout when it is neither."""
    pyproject = checkout / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{checkout}: no pyproject.toml (not an enclave-build checkout)")
    try:
        config = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{pyproject}: not TOML ({exc})") from None
    mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    if f"{NAMESPACE}.{package}" in mapping:
        return f"{NAMESPACE}."
    if mapping:
        raise ValueError(
            f"{pyproject}: [tool.setuptools.package-dir] maps no {NAMESPACE}.{package}"
        )
    if (checkout / package / "__init__.py").is_file():
        return ""
    raise ValueError(
        f"{checkout}: no {package}/__init__.py and no [tool.setuptools.package-dir] in "
        "pyproject.toml: neither layout of an enclave-build checkout"
    )


def checkout_tree(checkout: Path, dest: Path, package: str) -> CheckoutTree:
    """*checkout* made importable for running its *package*: the namespaced layout laid at
    *dest* by :func:`run_root`, the top-level layout as it is (see :func:`checkout_prefix`)."""
    checkout = checkout.resolve()
    prefix = checkout_prefix(checkout, package)
    path = run_root(checkout, dest) if prefix else checkout
    return CheckoutTree(checkout, path, prefix)
