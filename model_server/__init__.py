"""enclave-build's model server: KServe Open Inference Protocol v2 over gRPC and REST.

Runs inside the enclave (Gramine) or as a plain process in simulation. It never imports
``enclave_build.builder``; from ``attestation`` it uses only the small, pure modules
that ship into the image with it (RA-TLS certificates, protected files).
"""

from .. import __version__

__all__ = ["__version__"]
