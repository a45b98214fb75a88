"""Moved: :mod:`enclave_build.contract.locate` (kept for importers of the old name)."""

from enclave_build.contract.locate import KeyLocator  # noqa: F401
