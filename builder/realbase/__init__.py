"""A real Gramine 1.9 base root filesystem made on this machine (``enclave-build base gramine``):
Debian 12 by mmdebstrap, Gramine from its package repository or a local archive, the Python
runtimes of the frameworks. See :mod:`.create`."""

from __future__ import annotations

from .create import BaseRecipe, GramineArchive, check, default_requirements, make_gramine_base
from .gramine_apt import GramineRepository, KeyringError

__all__ = [
    "BaseRecipe",
    "GramineArchive",
    "GramineRepository",
    "KeyringError",
    "check",
    "default_requirements",
    "make_gramine_base",
]
