"""Exception hierarchy shared by the builder.

Every error a user can cause derives from :class:`EnclaveBuildError`; the CLI prints its
message (never a traceback) and exits with :attr:`EnclaveBuildError.exit_code`.
"""

from __future__ import annotations


class EnclaveBuildError(Exception):
    """Base class for errors caused by input (files, specs, keys), not by bugs."""

    exit_code = 1


class UsageError(EnclaveBuildError):
    """Bad input given on the command line or in a spec; exit code 2 like click's usage errors."""

    exit_code = 2
