"""Gramine protected files, as the builder uses them.

The implementation lives in :mod:`attestation.protected_files` (it ships into enclave images
with the model server, so it must not depend on the builder). This module re-exports it and
turns its :class:`attestation.protected_files.PFError` into :class:`PFError` here, which is an
:class:`~builder.errors.EnclaveBuildError` (the CLI prints it and exits 1) *and* a subclass of
the attestation error (code catching either keeps working).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from enclave_build.attestation import protected_files as _impl

from ..errors import EnclaveBuildError


class PFError(EnclaveBuildError, _impl.PFError):
    """A protected file cannot be written, read or trusted."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _mapped(function: _F) -> _F:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except PFError:
            raise
        except _impl.PFError as exc:
            raise PFError(str(exc)) from exc.__cause__

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps *function*'s signature


read_wrap_key = _mapped(_impl.read_wrap_key)
write_wrap_key = _mapped(_impl.write_wrap_key)
encrypt_stream = _mapped(_impl.encrypt_stream)
encrypt_file = _mapped(_impl.encrypt_file)
encrypt_bytes = _mapped(_impl.encrypt_bytes)
read_header = _mapped(_impl.read_header)
read_metadata = _mapped(_impl.read_metadata)
decrypt_stream = _mapped(_impl.decrypt_stream)
decrypt_file = _mapped(_impl.decrypt_file)
inspect_file = _mapped(_impl.inspect_file)
