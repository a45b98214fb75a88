"""What a runtime is to the model server: a Python module it (or a backend) imports at run
time, and the command that installs it. The server checks them before it fetches any key
(:mod:`model_server.preflight`); backends declare theirs (``Backend.runtimes``).

The model server's own runtimes and the builtin backends' come with enclave-build's ``serve``
extra. enclave-build is installed from a wheel or a checkout (it is not on PyPI), so the
install line names the extra's distributions themselves, as the installed distribution's
metadata lists them (:func:`serve_requirements`): ``PYTHON -m pip install 'grpcio<2,>=1.66'
...`` into the environment that runs, or ``pipx inject enclave-build ...`` when that
environment is a pipx one (:func:`install_command`).

Standard library only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: The distribution whose ``serve`` extra holds the server's runtimes.
DISTRIBUTION = "enclave-build"
#: ``Runtime.install`` of the model server's own runtimes and the builtin backends': the line
#: printed is :func:`serve_install_command` (the extra's distributions, for this environment).
SERVE_EXTRA = f"{DISTRIBUTION}[serve]"
_SERVE_MARKER = re.compile(r"""\bextra\s*==\s*["']serve["']""")


def serve_requirements(
    requires: Callable[[str], Sequence[str] | None] = importlib.metadata.requires,
) -> list[str] | None:
    """The requirements of enclave-build's ``serve`` extra as its installed metadata lists them
    (``grpcio<2,>=1.66``, ...), markers left out; None where that metadata is not installed
    (e.g. inside an image, which ships the server's code only)."""
    try:
        listed = requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found: list[str] = []
    for line in listed:
        requirement, _, marker = line.partition(";")
        if _SERVE_MARKER.search(marker) and requirement.strip() not in found:
            found.append(requirement.strip())
    return found or None


def under_pipx(prefix: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this Python is a pipx-managed environment (``.../pipx/venvs/NAME``, or under
    ``$PIPX_HOME/venvs``)."""
    prefix = os.path.realpath(sys.prefix if prefix is None else prefix)
    environ = os.environ if environ is None else environ
    if "/pipx/venvs/" in prefix + "/":
        return True
    home = environ.get("PIPX_HOME")
    if not home:
        return False
    return prefix.startswith(os.path.realpath(os.path.join(home, "venvs")) + "/")


def install_command(requirements: Sequence[str], *, pipx: bool | None = None) -> str:
    """The command that installs *requirements* where this Python runs: ``pipx inject
    enclave-build ...`` in a pipx environment, else ``PYTHON -m pip install ...``."""
    words = " ".join(shlex.quote(r) for r in requirements)
    if under_pipx() if pipx is None else pipx:
        return f"pipx inject {DISTRIBUTION} {words}"
    return f"{shlex.quote(sys.executable)} -m pip install {words}"


def serve_install_command(
    requirements: Sequence[str] | None = None, *, pipx: bool | None = None
) -> str:
    """How to install the ``serve`` extra's runtimes here (*requirements*: default
    :func:`serve_requirements`)."""
    requirements = serve_requirements() if requirements is None else requirements
    if not requirements:
        return (
            f"install the runtimes of {DISTRIBUTION}'s `serve` extra where the server runs "
            f"(pip install 'WHEEL[serve]' with {DISTRIBUTION}'s wheel, or '.[serve]' in its "
            "checkout; in an image, its base provides them)"
        )
    return install_command(requirements, pipx=pipx)


@dataclass(frozen=True)
class Runtime:
    """A Python module something needs at run time: any one of *modules* (import names,
    checked without importing them), installed by *install* (a command line, or
    :data:`SERVE_EXTRA` for the runtimes of enclave-build's ``serve`` extra)."""

    modules: tuple[str, ...]
    install: str = SERVE_EXTRA

    def missing(self, find: Callable[[str], object] = importlib.util.find_spec) -> bool:
        for module in self.modules:
            try:
                if find(module) is not None:
                    return False
            except (ImportError, ValueError):
                continue
        return True

    def describe(self) -> str:
        rest = f" (or {', '.join(self.modules[1:])})" if len(self.modules) > 1 else ""
        return self.modules[0] + rest

    def install_command(self) -> str:
        """The line that installs it here."""
        return serve_install_command() if self.install == SERVE_EXTRA else self.install


__all__ = [
    "SERVE_EXTRA",
    "Runtime",
    "serve_requirements",
    "serve_install_command",
    "install_command",
    "under_pipx",
]
