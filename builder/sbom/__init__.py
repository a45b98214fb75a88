"""The enclave's SBOM (SPDX 2.3 JSON), written with the SPDX project's library; the format's
conventions and its reader are :mod:`enclave_build.contract.sbom`."""

from .writer import LibOSInfo, ModelFile, SbomInputs, TrustedFile, sbom_bytes

__all__ = ["LibOSInfo", "ModelFile", "SbomInputs", "TrustedFile", "sbom_bytes"]
