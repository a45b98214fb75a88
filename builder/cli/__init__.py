"""The command line, ``enclave-build``: one module per command group, one output module
(:mod:`.output`: JSON, progress, warnings, errors and the exit codes). Commands parse
arguments, call the library and print; every command is also a Python API."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
