"""The bytes of a secret the policy released: its file, or the key its owner uploaded."""

from __future__ import annotations

from dataclasses import dataclass

from enclave_build.contract.secrets_config import SecretRule

from ..upload import UploadStore
from ..wire import MAX_SECRET


@dataclass(frozen=True)
class Unavailable:
    """The released secret cannot be handed over, and why."""

    reason: str
    not_uploaded: bool = False  # an uploaded secret whose owner has not uploaded it yet


def read_secret(rule: SecretRule, uploads: UploadStore) -> bytes | Unavailable:
    """The stored bytes of *rule*'s secret (read at every release, so a changed file is
    served at once), or why they cannot be served."""
    secret = rule.file.read_bytes() if rule.file is not None else uploads.get(rule.name)
    if secret is None:
        return Unavailable(
            f"secret {rule.name!r} has not been uploaded by its owner yet "
            "(enclave-build secrets upload)",
            not_uploaded=True,
        )
    if not secret or len(secret) > MAX_SECRET:
        return Unavailable("secret file is empty or too large")
    return secret
