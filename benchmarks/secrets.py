"""Secret server throughput: attest + provision per second at 1, 50, 500 and 1000 concurrent
clients, with p50/p99 latency, next to the same server with attestation disabled (TLS only) in
the same run. Goals: >= 300/s on 2 cores; 1000 concurrent clients with 0 failures.

Server and clients share this machine (2 cores) but not a process: the server runs in its own
process (its own GIL), the clients are asyncio TLS connections in this one presenting synthetic
RA-TLS certificates (a pool of 32 enclave identities, TCG DICE format, ECDSA P-384 like
Gramine's). The clients' TLS work competes with the server for the same two cores.

    python benchmarks/secrets.py [--requests 1500] [--levels 1,50,500,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from attestation.config import load_config
from attestation.measurements import ImageRef, Measurements
from attestation.policy import Decision
from attestation.ratls import create_certificate
from attestation.server import REQUEST, SecretServer
from attestation.synthetic import SyntheticPKI, tls_ca_and_server

MR_SIGNER = hashlib.sha256(b"bench signer").digest()


class TlsOnlyServer(SecretServer):
    """Baseline: the same server, but every TLS client gets the secret without attestation."""

    def _attest(self, conn, state, record):  # noqa: ANN001, ANN202
        return Decision(state.policy.secrets[0], "baseline: attestation disabled")


def setup(directory: Path, identities: int = 32):
    pki = SyntheticPKI()
    ca, _, _ = tls_ca_and_server(directory)
    (directory / "collateral.json").write_text(pki.collateral_json())
    (directory / "root.pem").write_bytes(pki.root_pem)
    (directory / "model.key").write_bytes(os.urandom(16))
    (directory / "builds").mkdir()
    contexts = []
    allow = []
    for index in range(identities):
        mr_enclave = hashlib.sha256(f"bench-{index}".encode()).digest()
        (directory / "builds" / f"{index}.json").write_text(Measurements(
            f"svc{index}", "tflite", "gramine", mr_enclave.hex(), MR_SIGNER.hex(), 1, 1, False,
            ImageRef(None, None)).to_json())
        allow.append(f"svc{index}")
        cert, key = create_certificate(
            "tcg-dice", lambda rd, me=mr_enclave: pki.quote(me, MR_SIGNER, rd, 1, 1))
        cert_path, key_path = directory / f"c{index}.pem", directory / f"k{index}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(cert_path, key_path)
        contexts.append(ctx)
    allow_list = ", ".join(f'"{a}"' for a in allow)
    (directory / "secrets.toml").write_text(f'''measurements = ["builds/*.json"]

[server]
listen = "127.0.0.1:0"
cert = "server.crt"
key = "server.key"
max_connections = 1100
max_connections_per_peer = 1100
timeout = 60
audit_log = "audit.jsonl"

[attestation]
root_ca = "root.pem"
collateral = "collateral.json"

[[secrets]]
name = "model-key"
file = "model.key"
allow = [{allow_list}]
''')
    return directory / "secrets.toml", contexts


async def one(address, ctx) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(*address, ssl=ctx, server_hostname="localhost",
                                                   ssl_handshake_timeout=60)
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


async def load(address, contexts, concurrency: int, total: int):
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
    await asyncio.gather(*(task(i) for i in range(total)))
    return time.perf_counter() - start, latencies, failures


def _serve(baseline: bool, config: Path, addresses, stop, pin: bool) -> None:  # noqa: ANN001
    if pin:
        os.sched_setaffinity(0, {0})  # the server alone on core 0
    server = (TlsOnlyServer if baseline else SecretServer)(load_config(config))
    addresses.put(server.start())
    stop.wait()
    server.shutdown()
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    addresses.put(usage.ru_utime + usage.ru_stime)


def run(baseline: bool, config, contexts, levels, requests, pin: bool = False):
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    addresses, stop = mp.Queue(), mp.Event()
    process = mp.Process(target=_serve, args=(baseline, config, addresses, stop, pin))
    process.start()
    address = addresses.get(timeout=60)
    results: dict = {}
    served = 0
    try:
        for level in levels:
            total = max(requests, level)
            elapsed, latencies, failures = asyncio.run(load(address, contexts, level, total))
            latencies.sort()
            results[level] = (len(latencies) / elapsed, statistics.median(latencies) * 1000,
                              latencies[int(len(latencies) * 0.99) - 1] * 1000, failures)
            served += len(latencies)
    finally:
        stop.set()
        cpu = addresses.get(timeout=120)
        process.join(60)
    results["cpu_ms"] = cpu / max(served, 1) * 1000
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--levels", default="1,50,500,1000")
    parser.add_argument("--pin", action="store_true",
                        help="server on core 0 only, clients on core 1 only: per-core capacity")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {1})
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="eb-bench-secrets-") as tmp:
        config, contexts = setup(Path(tmp))
        attested = run(False, config, contexts, levels, args.requests, args.pin)
        baseline = run(True, config, contexts, levels, args.requests, args.pin)
    print(f"{'clients':>8} | {'attest+provision /s':>20} {'p50 ms':>8} {'p99 ms':>8} {'fail':>5} | "
          f"{'TLS only /s':>12} {'p50 ms':>8} {'p99 ms':>8} | ratio")
    for level in levels:
        a, b = attested[level], baseline[level]
        print(f"{level:>8} | {a[0]:>20.0f} {a[1]:>8.1f} {a[2]:>8.1f} {a[3]:>5} | {b[0]:>12.0f} "
              f"{b[1]:>8.1f} {b[2]:>8.1f} | {a[0] / b[0]:.2f}")
    a, b = attested["cpu_ms"], baseline["cpu_ms"]
    print(f"server CPU per connection: {a:.2f} ms attested, {b:.2f} ms TLS only "
          f"(capacity on 2 server cores: ~{2000 / a:.0f}/s attested, ~{2000 / b:.0f}/s TLS only)")
    if args.pin:
        print("pinned: the server had ONE core (core 0), the clients the other")
    print("goals: >= 300/s attested; 0 failures at 1000 concurrent")


if __name__ == "__main__":
    main()
