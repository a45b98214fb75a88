"""One checkout's secret server as a process of its own, for ``benchmarks/secrets.py
--baseline-root``: the checkout's code comes first on ``PYTHONPATH`` (set by the caller, see
scripts/package_tree.py's ``checkout_tree``) and is imported under *prefix* (``enclave_build.``
for the namespaced layout, nothing for the older top-level one).

    PYTHONPATH=TREE python benchmarks/secret_server_proc.py PREFIX CONFIG [--pin]

Prints one JSON line when serving (``address``, ``processes``, ``module``: the file the server
class came from), serves until its standard input closes or gives a line, shuts down, and prints
one JSON line with ``cpu``: CPU seconds of this process and its (reaped) worker processes.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from pathlib import Path

# this directory's secrets.py would shadow the standard library's secrets module
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--pin"]):
        print(__doc__, file=sys.stderr)
        return 2
    prefix, config = argv[0], argv[1]
    if argv[2:]:
        os.sched_setaffinity(0, {0})  # the server alone on core 0 (so one process by default)
    load_config = importlib.import_module(prefix + "attestation.config").load_config
    server_module = importlib.import_module(prefix + "attestation.server")
    server = server_module.SecretServer(load_config(Path(config)))
    host, port = server.start()
    print(
        json.dumps(
            {
                "address": [host, port],
                "processes": server.processes,
                "module": (
                    str(Path(server_module.__file__).resolve()) if server_module.__file__ else None
                ),
            }
        ),
        flush=True,
    )
    sys.stdin.readline()
    server.shutdown()
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes, reaped
    cpu = mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps({"cpu": cpu}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
