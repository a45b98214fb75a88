"""``python -m enclave_build.builder.cli``: the same as ``enclave-build``."""

from .main import main

main()
