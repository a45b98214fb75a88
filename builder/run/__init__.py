"""Run a built image without SGX (`enclave-build run BUILD_DIR --simulate`).

SIMULATION ONLY: nothing is attested. See :mod:`builder.run.runner` (the run),
:mod:`builder.run.gramine_direct` (the real LibOS in a chroot, no enclave) and
:mod:`builder.run.rootfs` (a private root per run).
"""

from .runner import BANNER, CannotSimulate, RunError, RunOptions, open_build, parse_env, run_build

__all__ = [
    "run_build",
    "RunOptions",
    "RunError",
    "CannotSimulate",
    "open_build",
    "parse_env",
    "BANNER",
]
