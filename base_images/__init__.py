"""Dockerfiles of the base images enclave-build builds on, and of the two images a Kubernetes
deployment needs besides (aesmd, the secret server); see README.md in this directory.

``enclave-build base build NAME`` builds one with the Docker engine; the files ship inside the
Python package so the command works from an installed enclave-build too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enclave_build import __version__

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BaseImageRecipe:
    name: str
    tag: str  # the tag `base build` gives it (frameworks' default bases)
    description: str
    #: The build context needs an enclave-build wheel (`base build NAME --wheel FILE`).
    needs_wheel: bool = False

    @property
    def directory(self) -> Path:
        return HERE / self.name


BASES = {
    b.name: b
    for b in (
        BaseImageRecipe(
            "gramine",
            "enclave-build/gramine:1.9",
            "Debian 12 + Gramine 1.9 (SGX build, RA-TLS / secret provisioning) + DCAP "
            "quote library",
        ),
        BaseImageRecipe(
            "gramine-tfserving",
            "enclave-build/gramine-tfserving:1.9-2.15.1",
            "the Gramine base + tensorflow_model_server 2.15.1",
        ),
        BaseImageRecipe(
            "gramine-openvino",
            "enclave-build/gramine-openvino:1.9-2024.5",
            "OpenVINO Model Server 2024.5 (Ubuntu 22.04) + Gramine 1.9",
        ),
        BaseImageRecipe(
            "gramine-python",
            "enclave-build/gramine-python:1.9-3.11",
            "the Gramine base + Python 3.11 with LiteRT, OpenVINO, grpcio, numpy (system Python)",
        ),
        BaseImageRecipe(
            "gramine-secret-server",
            "enclave-build/gramine-secret-server:1.9-3.11",
            "the Gramine base + Python 3.11 with pyOpenSSL, cryptography, dcap-qvl, cbor2 "
            "(the secret server as an enclave)",
        ),
        BaseImageRecipe(
            "occlum",
            "enclave-build/occlum:0.31.0",
            "the Occlum 0.31 toolchain image (for the Occlum backend)",
        ),
        BaseImageRecipe(
            "occlum-python",
            "enclave-build/occlum-python:0.31.0-3.11",
            "Occlum 0.31's runtime (Ubuntu 20.04, glibc 2.31 = Occlum's) + Python 3.11 "
            "with the gramine-python runtimes (the Occlum runtime base of the Python "
            "model server)",
        ),
        BaseImageRecipe(
            "aesmd",
            "enclave-build/sgx-aesmd:2.25.100.3",
            "Kubernetes prerequisite ([deploy] aesmd_image): Intel's aesmd with the DCAP "
            "ECDSA quoting plugins and quote provider (SGX PSW 2.25, DCAP 1.22), uid "
            "10001, read-only root filesystem",
        ),
        BaseImageRecipe(
            "secret-server",
            f"enclave-build/secret-server:{__version__}",
            "Kubernetes prerequisite ([deploy] secret_server_image): `enclave-build "
            "secrets serve` from an enclave-build wheel (--wheel), uid 10001, read-only "
            "root filesystem, port 4433",
            needs_wheel=True,
        ),
    )
}
