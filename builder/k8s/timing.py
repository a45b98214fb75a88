"""Probe and shutdown budgets that follow from the enclave's size and the server's drain.

**Start-up.** Before the server listens, the loader creates the enclave: every page of the
enclave range is added (EADD) and the measured ones extended, the LibOS initialises the whole
heap, then trusted files are hashed as they are opened and keys are fetched over RA-TLS. Adding
pages dominates and grows with the size, so the startup probe allows::

    budget = STARTUP_BASE + size_in_GiB x STARTUP_PER_GIB  (+ KEY_FETCH per provisioned key)

``STARTUP_BASE`` (60 s) covers process start, file hashing of a typical model and the model
load; ``STARTUP_PER_GIB`` is 15 s without EDMM (EADD + EEXTEND + zeroing run at a few hundred
MiB/s on current Xeons, plus paging when EPC is overcommitted) and 3 s with EDMM (pages are
added when touched). The probe runs every ``PERIOD`` seconds with
``failureThreshold = ceil(budget / PERIOD)``; liveness and readiness start only after it
succeeded, so a slow enclave creation is never killed by the liveness probe.

**Shutdown.** On SIGTERM the model server turns unready, stops accepting and finishes admitted
requests for up to its ``drain_seconds``; a preStop pause of ``PRESTOP_SECONDS`` first lets
endpoints drop the pod. Tearing down the enclave (EREMOVE of every page) takes
``TEARDOWN_PER_GIB`` per GiB, so::

    terminationGracePeriodSeconds = PRESTOP + drain + size_in_GiB x TEARDOWN_PER_GIB + SLACK

Servers whose drain is unknown (a framework's own binary) are given ``DEFAULT_DRAIN``.
"""

from __future__ import annotations

import math

from ..deploy.quantity import GI

PERIOD = 10
STARTUP_BASE = 60
STARTUP_PER_GIB = 15
STARTUP_PER_GIB_EDMM = 3
KEY_FETCH = 10  # the model server's per-key fetch timeout (keys.timeout_seconds)
PRESTOP_SECONDS = 5
TEARDOWN_PER_GIB = 1
SLACK = 5
DEFAULT_DRAIN = 30


def gib(size: int) -> float:
    return size / GI


def startup_budget(enclave_size: int, *, edmm: bool, keys: int) -> int:
    per_gib = STARTUP_PER_GIB_EDMM if edmm else STARTUP_PER_GIB
    return math.ceil(STARTUP_BASE + gib(enclave_size) * per_gib + keys * KEY_FETCH)


def startup_failure_threshold(enclave_size: int, *, edmm: bool, keys: int) -> int:
    return math.ceil(startup_budget(enclave_size, edmm=edmm, keys=keys) / PERIOD)


def grace_period(enclave_size: int, drain_seconds: float | None) -> int:
    drain = DEFAULT_DRAIN if drain_seconds is None else drain_seconds
    return math.ceil(PRESTOP_SECONDS + drain + gib(enclave_size) * TEARDOWN_PER_GIB + SLACK)
