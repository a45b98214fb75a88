"""enclave-build's model server: KServe Open Inference Protocol v2 over gRPC and REST.

Runs inside the enclave (Gramine) or as a plain process in simulation. It is its own top-level
package: it never imports ``builder``; from ``attestation`` it uses only the small, pure modules
that ship into the image with it (RA-TLS certificates, protected files).
"""

__all__ = ["__version__"]
__version__ = "0.2.0"
