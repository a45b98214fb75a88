"""Attestation side of enclave-build: the measurements format shared with the builder, and
(growing) RA-TLS verification and the secret server. Never imports ``builder``."""
