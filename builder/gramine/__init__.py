"""Gramine 1.9 libOS backend (a builtin plugin, registered through the ``enclave_build``
entry-point group like any third-party plugin)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..plugin_api import LibOS


@hookimpl
def enclave_build_libos():
    from . import backend

    return [LibOS(name="gramine", description="Gramine 1.9 (manifest, trusted files, SIGSTRUCT)",
                  build=backend.build)]
