"""The Occlum 0.31 libOS backend as a plugin (builtin, registered like any third-party one).

It declares the ``[occlum]`` spec section (:mod:`.spec_section`), whose values reach the
backend as ``plan.libos_options``."""

from __future__ import annotations

from enclave_build.plugin import LibOS, hookimpl

from . import spec_section


@hookimpl
def enclave_build_libos():
    from . import backend

    return [
        LibOS(
            name="occlum",
            description="Occlum 0.31 (Occlum.json, copy_bom, occlum build/package in "
            "Occlum's container; needs a Docker engine)",
            build=backend.build,
            section=spec_section.SECTION,
            options=spec_section.options,
            # Occlum's init fetches the keys and verifies the server by its quote
            # ([occlum] server_measurements): no [secrets] ca.
            secrets_ca=False,
        )
    ]


@hookimpl
def enclave_build_configure(spec, plan):  # (the spec is not read)
    """Occlum's init fetches the keys and decrypts the image (builder.occlum.configure)."""
    from .configure import configure_plan

    configure_plan(plan)
