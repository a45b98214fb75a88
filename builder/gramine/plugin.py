"""The Gramine 1.9 libOS backend as a plugin (builtin, registered like any third-party one)."""

from __future__ import annotations

from enclave_build.plugin import LibOS, hookimpl


@hookimpl
def enclave_build_libos():
    from . import backend

    return [
        LibOS(
            name="gramine",
            description="Gramine 1.9 (manifest, trusted files, SIGSTRUCT)",
            build=backend.build,
        )
    ]
