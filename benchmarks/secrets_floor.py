"""The secret server against the cheapest TLS 1.3 server with the same certificates, in one run.

Three servers, each in a process of its own, all up for the whole run:

* **floor**: implemented here: pyOpenSSL, one thread, blocking, one connection at a time; the
  same server certificate and key, TLS 1.3, a client certificate required and accepted without
  Python verify logic (as ours: OpenSSL still checks the client's CertificateVerify, one P-384
  signature with Gramine's RA-TLS key type), no session tickets; it reads the 35-byte
  secret_prov request and answers the response header, the length and a 16-byte secret. No
  attestation, no policy, no audit, no caps, no deadlines.
* **tls-only**: our server (default configuration: one worker process per core, verification
  cache) with quote verification disabled (every client passes as one enclave; the policy
  still decides and the audit line is still written);
* **attested**: our server, default configuration, verifying every client's RA-TLS evidence.

The clients are benchmarks/secrets.py's: asyncio TLS connections in ``--client-processes``
processes presenting synthetic RA-TLS certificates (32 enclaves of one synthetic platform, TCG
DICE, P-384). At each concurrency level every server gets the same load in turn, ``--rounds``
times (interleaved), so the machine's load hits all three. Server CPU per connection is the
CPU time of the server's process and its worker processes (``/proc``), sampled around each
load, divided by the connections it served; the ratios are ours / floor per round (medians).

Goals (from the issue): attested <= 1.2x the floor; 1,000 concurrent with 0 failures.

    .venv/bin/python benchmarks/secrets_floor.py [--levels 1,50,1000] [--requests 1000]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# this directory's secrets.py would shadow the standard library's secrets module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from OpenSSL import SSL

from benchmarks.secrets import TrustEveryone, drive, setup, write_config
from enclave_build.attestation.config import load_config
from enclave_build.attestation.server import SecretServer
from enclave_build.attestation.wire import REQUEST, RESPONSE

GOAL_RATIO = 1.2
GOAL_LEVEL = 1000
_HZ = os.sysconf("SC_CLK_TCK")


def floor_context(directory: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate_chain_file(str(directory / "server.crt"))
    ctx.use_privatekey_file(str(directory / "server.key"))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
    return ctx


def serve_floor(directory: Path, addresses) -> None:
    ctx = floor_context(directory)
    secret = (directory / "model.key").read_bytes()
    answer = RESPONSE + struct.pack(">I", len(secret)) + secret
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    addresses.put(listener.getsockname())
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            request = b""
            while len(request) < len(REQUEST):
                request += conn.recv(len(REQUEST) - len(request))
            if request == REQUEST:
                conn.sendall(answer)
            conn.shutdown()
        except (SSL.Error, OSError):
            pass
        finally:
            sock.close()


def serve_ours(config: Path, trust_everyone: bool, addresses) -> None:
    server = SecretServer(
        load_config(config), verifier_for=TrustEveryone if trust_everyone else None
    )
    addresses.put(server.start())
    multiprocessing.Event().wait()  # until terminated (the worker processes with it)


def tree_cpu(pid: int) -> float:
    """CPU seconds of *pid* and its descendants that are alive."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _HZ
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(tree_cpu(int(child)) for child in f.read().split())
    except FileNotFoundError:
        pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,50,1000")
    ap.add_argument("--requests", type=int, default=1000, help="connections per level and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--client-processes", type=int, default=2)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(
        f"{len(os.sched_getaffinity(0))} cores, {args.client_processes} client processes, "
        f"{args.rounds} interleaved rounds; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (compare rows of one run only)",
        flush=True,
    )
    mp = multiprocessing.get_context("fork")
    sides = ("floor", "tls-only", "attested")
    with tempfile.TemporaryDirectory(prefix="eb-bench-secrets-floor-") as tmp:
        directory = Path(tmp)
        ca, allow, clients = setup(directory)
        procs = {}
        addresses = {}
        for side in sides:
            queue = mp.Queue()
            if side == "floor":
                procs[side] = mp.Process(target=serve_floor, args=(directory, queue), daemon=True)
            else:
                config = write_config(directory, allow, None, True, side)
                procs[side] = mp.Process(
                    target=serve_ours, args=(config, side == "tls-only", queue), daemon=True
                )
            procs[side].start()
            addresses[side] = tuple(queue.get(timeout=60))
        results: dict[int, dict[str, list]] = {}
        try:
            for level in levels:
                total = max(args.requests, level)
                runs: dict[str, list] = {side: [] for side in sides}
                for _ in range(args.rounds):
                    for side in sides:
                        pid = procs[side].pid
                        assert pid is not None  # started
                        c0 = tree_cpu(pid)
                        elapsed, latencies, failures = drive(
                            addresses[side],
                            ca,
                            clients,
                            level,
                            total,
                            args.client_processes,
                            False,
                        )
                        cpu = tree_cpu(pid) - c0
                        runs[side].append(
                            {
                                "cpu_ms": 1e3 * cpu / max(1, len(latencies)),
                                "per_s": len(latencies) / elapsed,
                                "p50_ms": 1e3 * statistics.median(latencies)
                                if latencies
                                else float("nan"),
                                "failures": failures,
                            }
                        )
                results[level] = runs
                print(f"level {level} done", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.join(10)
    print(
        f"\nserver CPU per connection (ms; medians over rounds), ratio = ours / floor "
        f"(median of per-round ratios); goal: attested <= {GOAL_RATIO}x floor, 0 failures at "
        f"{GOAL_LEVEL} concurrent"
    )
    print(
        f"{'clients':>7} | {'floor':>6} {'tls-only':>8} {'attested':>8} | {'tls/floor':>9} "
        f"{'att/floor':>9} | {'conn/s floor':>12} {'tls':>5} {'att':>5} | failures f/t/a"
    )
    ok = True
    for level, runs in results.items():
        med = {
            side: {k: statistics.median(r[k] for r in runs[side]) for k in ("cpu_ms", "per_s")}
            for side in sides
        }
        fails = {side: sum(r["failures"] for r in runs[side]) for side in sides}
        ratio = {
            side: statistics.median(
                o["cpu_ms"] / f["cpu_ms"] for f, o in zip(runs["floor"], runs[side], strict=True)
            )
            for side in ("tls-only", "attested")
        }
        met = ratio["attested"] <= GOAL_RATIO and (level != GOAL_LEVEL or fails["attested"] == 0)
        ok &= met
        print(
            f"{level:>7} | {med['floor']['cpu_ms']:6.3f} {med['tls-only']['cpu_ms']:8.3f} "
            f"{med['attested']['cpu_ms']:8.3f} | {ratio['tls-only']:9.2f} "
            f"{ratio['attested']:9.2f} | {med['floor']['per_s']:12.0f} "
            f"{med['tls-only']['per_s']:5.0f} {med['attested']['per_s']:5.0f} | "
            f"{fails['floor']}/{fails['tls-only']}/{fails['attested']}"
            f"  -> {'met' if met else 'NOT met'}"
        )
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"verdict: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
