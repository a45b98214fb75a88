"""Occlum 0.31 libOS backend (a builtin plugin, registered through the ``enclave_build``
entry-point group like any third-party plugin). Occlum's own tools build the enclave, in
Occlum's container: see :mod:`builder.occlum.backend`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..plugin_api import LibOS


@hookimpl
def enclave_build_libos():
    from . import backend

    return [LibOS(name="occlum",
                  description="Occlum 0.31 (Occlum.json, copy_bom, occlum build/package in "
                              "Occlum's container; needs a Docker engine)",
                  build=backend.build)]


@hookimpl
def enclave_build_configure(spec, plan):  # noqa: ARG001 - the spec is not read
    """Occlum's init fetches the keys and decrypts the image (builder.occlum.configure)."""
    from .configure import configure_plan

    configure_plan(plan)
