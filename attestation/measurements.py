"""measurements.json, as the secret server reads it: the contract type
:class:`enclave_build.contract.measurements.Measurements` (one definition, one writer, one
reader; ``attestation/`` never imports ``builder/``)."""

from enclave_build.contract.measurements import ImageRef, Measurements, MeasurementsError

__all__ = ["ImageRef", "Measurements", "MeasurementsError"]
