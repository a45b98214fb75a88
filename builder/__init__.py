"""enclave-build: signed SGX enclave images for ML model servers from one spec.toml.

Public API (everything the CLI does is available here)::

    from enclave_build.builder.build import build, BuildResult
    from enclave_build.builder.spec import load_spec, Spec
    from enclave_build.builder.plan import ServicePlan
"""

from .. import __version__

__all__ = ["__version__"]
