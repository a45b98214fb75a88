"""Secret server throughput: attest + provision per second at 1, 50, 500 and 1000 concurrent
clients, with p50/p99 latency and the server's CPU time per connection, for three servers in
the same run:

* **before**: the old path — one process, no verification cache (dcap-qvl on every quote);
* **after**: the default — one worker process per core sharing the listening socket, each with
  a verification cache (after a platform's first quote, one ECDSA check per quote);
* **TLS only**: the "after" server with quote verification disabled (every client passes
  as one enclave; the policy still decides): the ceiling TLS itself sets.

Server and clients share this machine but not a process: the server (and its worker
processes) run apart from the clients, which are asyncio TLS connections in ``--client-processes``
processes presenting synthetic RA-TLS certificates (32 enclave identities on one synthetic
platform, TCG DICE format, ECDSA P-384 like Gramine's; every quote of the platform carries the
same QE report, as a real quoting enclave's do). With ``--pin`` the server has core 0 and the
clients core 1 (so "after" runs one process): per-core capacity.

Goals (printed): <= 1.0 ms server CPU per attested connection, >= 2x the "before"
attested/s, 0 failures at 1000 concurrent.

    python benchmarks/secrets.py [--requests 1500] [--levels 1,50,500,1000] [--pin]

**Before/after** (``--baseline-root DIR``): instead of the three servers above, the same server
(``--compare``: "after", the default server, or "before", one process without the cache) from
another checkout ("before") and from this one ("after"), each in a process of its own
(benchmarks/secret_server_proc.py, the checkout's code first on its path), both up for the whole
run. At each level the same client load (the same processes, certificates and request counts)
runs on "before" then "after", ``--rounds`` times (pooled), so drift in the machine's load hits
both. It prints attested/s, p50 and p99 of both with the after/before ratios, server CPU per
connection of both, and a verdict: "no regression" when "after"'s server CPU per connection is
within 10 % (``--tolerance``) or 0.03 ms of "before"'s, its attested/s at every level at least
90 % of "before"'s and it has no more failures; otherwise "REGRESSION" saying what (and the exit
status is 1). The baseline may have either layout: the namespaced one (``enclave_build.attestation``)
or the older one with top-level packages (``attestation``, the checkout itself on the path); both
read the same secrets.toml and measurement files, and run with this checkout's virtual
environment. For example, against the commit before the code moved under ``enclave_build``::

    git worktree add --detach ../base 35263d6
    python benchmarks/secrets.py --baseline-root ../base --levels 1,50,500 --rounds 3
    python benchmarks/secrets.py --baseline-root ../base --levels 1,50 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "scripts"))

from cryptography.hazmat.primitives import serialization
from package_tree import checkout_prefix, checkout_tree

from enclave_build.attestation.config import load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.server import SecretServer
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.attestation.wire import REQUEST
from enclave_build.contract.identity import EnclaveIdentity
from tests.attest_env import Platform, verified_evidence

MR_SIGNER = hashlib.sha256(b"bench signer").digest()


class TrustEveryone:
    """A client verifier that believes every client is enclave 0 without looking at its
    certificate: the server then costs what TLS and the policy decision cost."""

    def __init__(self, config) -> None:
        self._evidence = verified_evidence(
            hashlib.sha256(b"bench-0").hexdigest(), MR_SIGNER.hex(), 1, 1
        )

    def verify(self, peer, timeout: float):
        return self._evidence


SERVERS = {
    # name: (client verifier factory (None: the real one), [server] processes (None: default),
    #        verification cache)
    "before": (None, 1, False),
    "after": (None, None, True),
    "tls-only": (TrustEveryone, None, True),
}


def write_config(
    directory: Path, allow: list[str], processes: int | None, cache: bool, label: str = ""
) -> Path:
    """secrets.toml for the benchmark; the same file for either layout of a checkout (the
    top-level layout's attestation/config.py reads these keys too). *label* names the file and
    its audit log apart from another server's in the same directory."""
    allow_list = ", ".join(f'"{a}"' for a in allow)
    name = f"{label}-" if label else ""
    path = directory / f"secrets-{name}{processes}-{cache}.toml"
    path.write_text(f"""measurements = ["builds/*.json"]

[server]
listen = "127.0.0.1:0"
cert = "server.crt"
key = "server.key"
max_connections = 1100
max_connections_per_peer = 1100
timeout = 60
audit_log = "{name}audit.jsonl"
{f"processes = {processes}" if processes else ""}

[attestation]
root_ca = "root.pem"
collateral = "collateral.json"
verification_cache = {"true" if cache else "false"}

[[secrets]]
name = "model-key"
file = "model.key"
allow = [{allow_list}]
""")
    return path


def setup(directory: Path, identities: int = 32):
    """The PKI, TLS certificates, measurements and the client certificates (as PEM files)."""
    pki = SyntheticPKI()
    platform = Platform(pki)
    ca, _, _ = tls_ca_and_server(directory)
    (directory / "collateral.json").write_text(pki.collateral_json())
    (directory / "root.pem").write_bytes(pki.root_pem)
    (directory / "model.key").write_bytes(os.urandom(16))
    (directory / "builds").mkdir()
    clients, allow = [], []
    for index in range(identities):
        mr_enclave = hashlib.sha256(f"bench-{index}".encode()).digest()
        (directory / "builds" / f"{index}.json").write_text(
            Measurements(
                f"svc{index}",
                "tflite",
                "gramine",
                EnclaveIdentity(mr_enclave.hex(), MR_SIGNER.hex(), 1, 1, False),
                ImageRef(None, None),
            ).to_json()
        )
        allow.append(f"svc{index}")
        cert, key = platform.enclave_cert(
            mr_enclave=mr_enclave, mr_signer=MR_SIGNER, isv_prod_id=1, isv_svn=1
        )
        cert_path, key_path = directory / f"c{index}.pem", directory / f"k{index}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        clients.append((cert_path, key_path))
    return ca, allow, clients


def contexts_for(ca: Path, clients) -> list[ssl.SSLContext]:
    contexts = []
    for cert_path, key_path in clients:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(cert_path, key_path)
        contexts.append(ctx)
    return contexts


async def one(address, ctx) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        *address, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=60
    )
    writer.write(REQUEST)
    data = await reader.read()
    writer.close()
    try:
        await writer.wait_closed()
    except (ssl.SSLError, ConnectionError):
        pass
    if len(data) != 37 + 4 + 16:
        raise RuntimeError(f"bad reply ({len(data)} bytes)")
    return time.perf_counter() - start


async def load(address, contexts, concurrency: int, total: int, offset: int = 0):
    gate = asyncio.Semaphore(concurrency)
    latencies, failures = [], 0

    async def task(i: int):
        nonlocal failures
        async with gate:
            try:
                latencies.append(await one(address, contexts[i % len(contexts)]))
            except Exception:  # noqa: BLE001 - counted
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(task(offset + i) for i in range(total)))
    return time.perf_counter() - start, latencies, failures


def _client(address, ca, clients, concurrency, total, offset, start, results, pin):
    if pin:
        os.sched_setaffinity(0, {1})
    contexts = contexts_for(ca, clients)
    start.wait()
    results.put(asyncio.run(load(address, contexts, concurrency, total, offset)))


def drive(address, ca, clients, level: int, total: int, processes: int, pin: bool):
    """*total* connections at *level* concurrency, split over *processes* client processes."""
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    processes = max(1, min(processes, level))
    start, results = mp.Event(), mp.Queue()
    workers = []
    for index in range(processes):
        share = level // processes + (index < level % processes)
        count = total // processes + (index < total % processes)
        workers.append(
            mp.Process(
                target=_client,
                args=(address, ca, clients, share, count, index * 7, start, results, pin),
            )
        )
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # let every client process load its certificates
    began = time.perf_counter()
    start.set()
    latencies, failures = [], 0
    for _ in workers:
        _, part, failed = results.get(timeout=600)
        latencies += part
        failures += failed
    elapsed = time.perf_counter() - began
    for worker in workers:
        worker.join(10)
    return elapsed, latencies, failures


def _serve(kind: str, config: Path, addresses, stop, pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {0})  # the server alone on core 0 (so one process by default)
    server = SecretServer(load_config(config), verifier_for=SERVERS[kind][0])
    addresses.put((server.start(), server.processes))
    stop.wait()
    server.shutdown()
    import resource

    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes, reaped
    addresses.put(mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime)


def run(
    kind: str,
    directory: Path,
    ca,
    allow,
    clients,
    levels,
    requests,
    pin: bool,
    client_processes: int,
):
    import multiprocessing

    _, processes, cache = SERVERS[kind]
    config = write_config(directory, allow, processes, cache)
    mp = multiprocessing.get_context("fork")
    addresses, stop = mp.Queue(), mp.Event()
    process = mp.Process(target=_serve, args=(kind, config, addresses, stop, pin))
    process.start()
    address, used = addresses.get(timeout=60)
    results: dict = {"processes": used}
    served = 0
    try:
        for level in levels:
            total = max(requests, level)
            elapsed, latencies, failures = drive(
                address, ca, clients, level, total, client_processes, pin
            )
            results[level] = summary(latencies, elapsed, failures)
            served += len(latencies)
    finally:
        stop.set()
        cpu = addresses.get(timeout=120)
        process.join(60)
    results["cpu_ms"] = cpu / max(served, 1) * 1000
    return results


class CheckoutServer:
    """A checkout's secret server (either layout) in a process of its own
    (benchmarks/secret_server_proc.py), serving *config* until :meth:`stop`."""

    def __init__(self, root: Path, workdir: Path, label: str, config: Path, pin: bool):
        self.tree = checkout_tree(root, workdir / f"root-{label}", "attestation")
        self.label = label
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "secret_server_proc.py"),
                self.tree.prefix,
                str(config),
                *(["--pin"] if pin else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=self.tree.path,
            env={**os.environ, "PYTHONPATH": str(self.tree.path)},
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None  # pipes
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            raise SystemExit(f"{label} secret server ({root}) did not start")
        started = json.loads(line)
        self.address = tuple(started["address"])
        self.processes: int = started["processes"]
        self.module: str = started["module"]

    def stop(self) -> float:
        """Shut the server down; its CPU seconds (every process) over its life."""
        assert self.proc.stdout is not None and self.proc.stdin is not None  # pipes
        self.proc.stdin.close()
        line = self.proc.stdout.readline()
        self.proc.wait(60)
        if not line:
            raise SystemExit(f"{self.label} secret server exited with {self.proc.returncode}")
        return float(json.loads(line)["cpu"])


SIDES = ("before", "after")


def run_before_after(
    kind: str,
    roots: dict[str, Path],
    directory: Path,
    ca,
    allow,
    clients,
    levels,
    requests,
    pin: bool,
    client_processes: int,
    rounds: int,
) -> dict[str, dict]:
    """The server *kind* from both checkouts, up together; at each level the same load on
    "before" then "after", *rounds* times (pooled)."""
    _, processes, cache = SERVERS[kind]
    servers: dict[str, CheckoutServer] = {}
    try:
        for side in SIDES:
            config = write_config(directory, allow, processes, cache, side)
            servers[side] = CheckoutServer(roots[side], directory, side, config, pin)
            tree = servers[side].tree
            print(
                f"{side}: {tree.checkout} ({tree.layout} layout), server from "
                f"{servers[side].module}, {servers[side].processes} process(es)",
                flush=True,
            )
        results: dict[str, dict] = {side: {"processes": servers[side].processes} for side in SIDES}
        served = dict.fromkeys(SIDES, 0)
        for level in levels:
            total = max(requests, level)
            pooled: dict[str, tuple[list[float], float, int]] = {
                side: ([], 0.0, 0) for side in SIDES
            }
            for _ in range(rounds):
                for side in SIDES:
                    elapsed, latencies, failures = drive(
                        servers[side].address, ca, clients, level, total, client_processes, pin
                    )
                    lat, spent, failed = pooled[side]
                    pooled[side] = (lat + latencies, spent + elapsed, failed + failures)
            for side in SIDES:
                latencies, elapsed, failures = pooled[side]
                results[side][level] = summary(latencies, elapsed, failures)
                served[side] += len(latencies)
    finally:
        cpu = {side: server.stop() for side, server in servers.items()}
    for side in SIDES:
        results[side]["cpu_ms"] = cpu[side] / max(served[side], 1) * 1000
    return results


def summary(latencies: list[float], elapsed: float, failures: int) -> tuple:
    """(attested/s, p50 ms, p99 ms, failures) of one level."""
    if not latencies:
        return (0.0, float("nan"), float("nan"), failures)
    latencies = sorted(latencies)
    return (
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        failures,
    )


#: Before/after verdict: "after" may be this much worse (relative) than "before" ...
TOLERANCE = 0.10
#: ... or, for server CPU per connection, this many ms, whichever is larger.
CPU_SLACK_MS = 0.03


def verdict(results: dict[str, dict], levels, tolerance: float) -> tuple[bool, list[str]]:
    """Whether "after" did not regress against "before", and what did: server CPU per
    connection within *tolerance* or CPU_SLACK_MS, attested/s at each level at least
    (1 - *tolerance*) of before's, no more failures at any level."""
    before, after = results["before"], results["after"]
    problems = []
    if after["cpu_ms"] > before["cpu_ms"] + max(before["cpu_ms"] * tolerance, CPU_SLACK_MS):
        problems.append(
            f"server CPU per connection {after['cpu_ms']:.2f} ms vs {before['cpu_ms']:.2f} ms"
        )
    for level in levels:
        if after[level][0] < before[level][0] * (1 - tolerance):
            problems.append(
                f"{after[level][0]:.0f} vs {before[level][0]:.0f} attested/s at {level} clients"
            )
        if after[level][3] > before[level][3]:
            problems.append(f"{after[level][3]} vs {before[level][3]} failures at {level} clients")
    return not problems, problems


def print_before_after(results: dict[str, dict], levels, kind: str, tolerance: float) -> bool:
    before, after = results["before"], results["after"]
    print(
        f"{'clients':>8} | {'before /s':>10} {'p50 ms':>7} {'p99 ms':>7} {'fail':>4} | "
        f"{'after /s':>10} {'p50 ms':>7} {'p99 ms':>7} {'fail':>4} | {'/s ratio':>8} "
        f"{'p50 ratio':>9}"
    )
    for level in levels:
        b, a = before[level], after[level]
        print(
            f"{level:>8} | {b[0]:>10.0f} {b[1]:>7.1f} {b[2]:>7.1f} {b[3]:>4} | "
            f"{a[0]:>10.0f} {a[1]:>7.1f} {a[2]:>7.1f} {a[3]:>4} | "
            f"{a[0] / b[0] if b[0] else float('nan'):>8.2f} {a[1] / b[1]:>9.2f}"
        )
    for side in SIDES:
        r = results[side]
        print(
            f"{side:>8}: {r['processes']} server process(es), server CPU per connection "
            f"{r['cpu_ms']:.2f} ms"
        )
    print(f"server CPU per connection after/before: {after['cpu_ms'] / before['cpu_ms']:.2f}")
    ok, problems = verdict(results, levels, tolerance)
    rule = (
        f"server CPU per connection within {tolerance:.0%} or {CPU_SLACK_MS} ms of before, "
        f"attested/s at least {1 - tolerance:.0%} of before at every level, no more failures"
    )
    if ok:
        print(f"verdict ({kind} server): no regression ({rule})")
    else:
        print(f"verdict ({kind} server): REGRESSION ({'; '.join(problems)}); rule: {rule}")
    return ok


def before_after(args, levels) -> bool:
    """The --baseline-root run; True when "after" did not regress."""
    roots = {"before": args.baseline_root, "after": REPO}
    with tempfile.TemporaryDirectory(prefix="eb-bench-secrets-") as tmp:
        ca, allow, clients = setup(Path(tmp))
        results = run_before_after(
            args.compare,
            roots,
            Path(tmp),
            ca,
            allow,
            clients,
            levels,
            args.requests,
            args.pin,
            args.client_processes,
            args.rounds,
        )
    print(
        f"{os.cpu_count()} cores; {args.client_processes} client process(es); the "
        f"{args.compare!r} server of {roots['before']} (before) and {roots['after']} (after), "
        f"{args.rounds} interleaved round(s) per level"
        + ("; pinned: server on core 0, clients on core 1" if args.pin else "")
    )
    return print_before_after(results, levels, args.compare, args.tolerance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=1500,
        help="connections per concurrency level (at least the level)",
    )
    parser.add_argument("--levels", default="1,50,500,1000")
    parser.add_argument(
        "--servers",
        default="before,after,tls-only",
        help=f"which servers to run, of {', '.join(SERVERS)}",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="processes generating the load (asyncio TLS clients in each)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server on core 0 only, clients on core 1 only: per-core capacity",
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        help="compare with this checkout's secret server ('before'; either layout): the "
        "--compare server from it and from this checkout, interleaved per level, with ratios "
        "and a verdict",
    )
    parser.add_argument(
        "--compare",
        default="after",
        choices=["before", "after"],
        help="with --baseline-root: the server run from both checkouts (default: after, "
        "the default server)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --baseline-root: before/after pairs per level (pooled)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"with --baseline-root: relative slack of the verdict (default {TOLERANCE})",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.baseline_root is not None:
        if args.rounds < 1:
            parser.error("--rounds: at least 1")
        try:  # the layout, checked before minutes of load
            checkout_prefix(args.baseline_root.resolve(), "attestation")
        except ValueError as exc:
            parser.error(f"--baseline-root: {exc}")
        sys.exit(0 if before_after(args, levels) else 1)
    kinds = [k for k in args.servers.split(",") if k]
    unknown = sorted(set(kinds) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}; known: {', '.join(SERVERS)}")
    with tempfile.TemporaryDirectory(prefix="eb-bench-secrets-") as tmp:
        ca, allow, clients = setup(Path(tmp))
        results = {
            kind: run(
                kind,
                Path(tmp),
                ca,
                allow,
                clients,
                levels,
                args.requests,
                args.pin,
                args.client_processes,
            )
            for kind in kinds
        }
    print(
        f"{os.cpu_count()} cores; {args.client_processes} client process(es)"
        + ("; pinned: server on core 0, clients on core 1" if args.pin else "")
    )
    header = f"{'clients':>8}"
    for kind in kinds:
        header += f" | {kind + ' /s':>13} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5}"
    print(header)
    for level in levels:
        row = f"{level:>8}"
        for kind in kinds:
            rate, p50, p99, failed = results[kind][level]
            row += f" | {rate:>13.0f} {p50:>8.1f} {p99:>8.1f} {failed:>5}"
        print(row)
    for kind in kinds:
        r = results[kind]
        print(
            f"{kind:>8}: {r['processes']} server process(es), server CPU per connection "
            f"{r['cpu_ms']:.2f} ms"
        )
    if "before" in results and "after" in results:
        before, after = results["before"], results["after"]
        ratios = [after[lv][0] / before[lv][0] for lv in levels if before[lv][0] and lv >= 50]
        top = max(levels)
        cpu_ok = after["cpu_ms"] <= 1.0
        ratio_ok = bool(ratios) and min(ratios) >= 2.0
        fail_ok = after[top][3] == 0
        print(
            f"goal: <= 1.0 ms server CPU per attested connection: {after['cpu_ms']:.2f} ms "
            f"({'met' if cpu_ok else 'NOT met'})"
        )
        print(
            "goal: >= 2x the old path's attested/s (levels >= 50): "
            + ", ".join(f"{r:.2f}x" for r in ratios)
            + f" ({'met' if ratio_ok else 'NOT met'})"
        )
        print(
            f"goal: 0 failures at {top} concurrent: {after[top][3]} "
            f"({'met' if fail_ok else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
