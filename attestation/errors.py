"""The root of every error the attestation package raises: callers catch
:class:`AttestationError` (the command line maps it to an exit code once, at its boundary).

Each error keeps the built-in base it had (``ValueError``, ``RuntimeError``) beside the root,
so code that catches those goes on working.
"""

from __future__ import annotations


class AttestationError(Exception):
    """Something in attestation failed: a quote, a peer, a key exchange, a file it read."""


class AttestationConfigError(AttestationError):
    """A configuration or policy a person wrote (secrets.toml, a policy, verifier settings) is
    wrong; the message names the file and the key."""
