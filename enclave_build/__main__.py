"""``python -m enclave_build`` is the ``enclave-build`` command."""

import sys

from enclave_build.builder.cli import main

sys.exit(main())
