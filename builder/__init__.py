"""enclave-build: signed SGX enclave images for ML model servers from one spec.toml.

Public API (everything the CLI does is available here)::

    from builder.build import build, BuildResult
    from builder.spec import load_spec, Spec
    from builder.plan import ServicePlan
"""

__version__ = "0.1.0"
