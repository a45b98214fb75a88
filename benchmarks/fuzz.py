"""Long fuzzing runs of the targets in tests/test_fuzz.py; prints executions per target.

Each target (layer applier, RA-TLS certificates, quote parsing, PF decryption, SIGSTRUCT
parsing, registry manifests/indexes, REST requests on a real connection, KServe REST bodies) is
run in rounds of generated inputs until its time budget is used up. A target that lets anything but the project's own error escape (or breaks one of its
properties: nothing written outside the unpack root, no modified PF/SIGSTRUCT/quote accepted)
stops the run with hypothesis' minimal failing example and exit status 1.

    python benchmarks/fuzz.py [--seconds 60] [--target NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

# The repository root instead of this script's directory: benchmarks/secrets.py would shadow the
# standard library's `secrets` (which hypothesis and cryptography import).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tests import test_fuzz

ROUND = 500  # examples per round: small enough to stop close to the budget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    parser.add_argument(
        "--target",
        action="append",
        choices=list(test_fuzz.TARGETS),
        help="run only this target (repeatable)",
    )
    args = parser.parse_args()
    # mutated certificates with a non-positive serial: cryptography warns, then parses them
    warnings.filterwarnings("ignore", message="Parsed a serial number")
    names = args.target or list(test_fuzz.TARGETS)
    print(f"{'target':<28} {'executions':>11} {'seconds':>8} {'exec/s':>8}")
    failed = False
    for name in names:
        start = time.monotonic()
        try:
            while time.monotonic() - start < args.seconds:
                test_fuzz.run(name, ROUND)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other targets
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
        elapsed = time.monotonic() - start
        count = test_fuzz.COUNTS[name]
        print(f"{name:<28} {count:>11} {elapsed:>8.1f} {count / elapsed:>8.0f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
