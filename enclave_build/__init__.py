"""enclave-build: signed SGX enclave images for ML model servers from one spec.toml.

Everything installs under this one import namespace:

* ``enclave_build.builder`` -- spec, plan, plugins, libOS backends, image assembly, the CLI;
* ``enclave_build.plugins`` -- the builtin framework plugins;
* ``enclave_build.attestation`` -- RA-TLS, quote verification, policy, the secret server;
* ``enclave_build.model_server`` -- the KServe v2 model server that runs in the enclave;
* ``enclave_build.base_images`` -- the base images' Dockerfiles.

This module stays import-light (no third-party imports): it ships into enclave images with the
model server.
"""

__all__ = ["__version__"]
#: The one version of the distribution: the CLI, the model server and the secret server report it.
__version__ = "0.3.0"
