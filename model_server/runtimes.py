"""What a runtime is to the model server: a Python module it (or a backend) imports at run
time, and the command that installs it. The server checks them before it fetches any key
(:mod:`model_server.preflight`); backends declare theirs (``Backend.runtimes``).

Standard library only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

#: How the model server's own runtimes and the builtin backends' are installed.
SERVE_EXTRA = "pip install 'enclave-build[serve]'"


@dataclass(frozen=True)
class Runtime:
    """A Python module something needs at run time: any one of *modules* (import names,
    checked without importing them), installed by *install* (a command line)."""

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


__all__ = ["SERVE_EXTRA", "Runtime"]
