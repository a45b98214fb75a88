"""Hostile-client load on the secret server: legitimate attesting clients while a share of all
connections is hostile. Everything on 127.0.0.1, bounded in count and time.

Hostile kinds (round robin): ``no-tls`` (connects, never starts TLS), ``stall`` (half a
ClientHello, then silence), ``garbage`` (a valid RA-TLS handshake, then 35 bytes of garbage
instead of the request), ``bad-cert`` (a client certificate without SGX evidence, or with an
extension that cannot be parsed), ``big-request`` (a valid handshake, then 64 KiB).

Checked and printed: every legitimate client received its secret; every hostile connection
has its own audit line (matched by its source port) with a decision and a reason; the server's
resident memory (supervisor + worker processes, sampled through the run) stays flat: the
growth after a full-concurrency warm-up, and within the second half of the run.

    python benchmarks/hostile_load.py [--legit 1000] [--hostile-share 0.2] [--concurrency 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from enclave_build.attestation.config import load_config
from enclave_build.attestation.server import SecretServer
from enclave_build.attestation.wire import REQUEST
from tests.attest_env import Platform, make_env

KINDS = ("no-tls", "stall", "garbage", "bad-cert", "big-request")
# The first 5 + 40 bytes of a TLS ClientHello record (claims 512 bytes, sends 40): a stall.
PARTIAL_HELLO = bytes.fromhex("1603010200") + bytes.fromhex("010001fc0303") + os.urandom(34)


def _pem_pair(directory: Path, name: str, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _plain_cert(unparseable: bool):
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if unparseable:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ExtensionOID.CERTIFICATE_POLICIES, b"\x30\x05\x01\x01"),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()), key


def _context(ca: Path, pair: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*pair)
    return ctx


def _serve(config: Path, pipe) -> None:
    server = SecretServer(load_config(config))
    server.start()
    pipe.send((server.address, os.getpid(), list(server.worker_pids)))
    pipe.recv()  # until told to stop
    server.shutdown()
    pipe.send("stopped")


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def _read_to_end(reader, limit: float) -> bytes:
    data = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                data += chunk
    except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
        pass
    return data


async def _close(writer) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError, OSError):
        pass


async def _legit(address, ctx, secret: bytes, limit: float) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        *address, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=limit
    )
    writer.write(REQUEST)
    data = await _read_to_end(reader, limit)
    await _close(writer)
    if data[41:] != secret:
        raise RuntimeError(f"no secret ({len(data)} bytes)")
    return time.perf_counter() - start


async def _hostile(kind: str, index: int, address, contexts, limit: float):
    """Run one hostile connection; return its source 'host:port' (what the audit line names)
    and the wall-clock span it was open (ports are reused, so lines are matched by both)."""
    began = time.time()
    peer = await _hostile_exchange(kind, index, address, contexts, limit)
    return peer, began, time.time()


async def _hostile_exchange(kind: str, index: int, address, contexts, limit: float) -> str:
    if kind in ("no-tls", "stall"):
        reader, writer = await asyncio.open_connection(*address)
        peer = "{}:{}".format(*writer.get_extra_info("sockname")[:2])
        if kind == "stall":
            writer.write(PARTIAL_HELLO)
        await _read_to_end(reader, limit)  # until the server's deadline cuts it
        await _close(writer)
        return peer
    ctx = {
        "garbage": contexts["legit"],
        "big-request": contexts["legit"],
        "bad-cert": contexts["plain"] if index % 2 else contexts["unparseable"],
    }[kind]
    try:
        reader, writer = await asyncio.open_connection(
            *address, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=limit
        )
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        raise RuntimeError(f"{kind}: could not connect: {exc}") from None
    peer = "{}:{}".format(*writer.get_extra_info("sockname")[:2])
    payload = {
        "garbage": os.urandom(len(REQUEST)),
        "big-request": os.urandom(64 * 1024),
        "bad-cert": REQUEST,
    }[kind]
    try:
        writer.write(payload)
        await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    await _read_to_end(reader, limit)
    await _close(writer)
    return peer


def run(
    legit: int = 1000,
    hostile_share: float = 0.2,
    concurrency: int = 200,
    timeout: float = 5.0,
    processes: int | None = None,
    sample_every: float = 0.25,
    directory: Path | None = None,
) -> dict:
    """The whole exercise; returns the figures (see main for what they mean)."""
    import multiprocessing

    own = directory is None
    tmp = tempfile.TemporaryDirectory(prefix="eb-hostile-") if own else None
    directory = Path(tmp.name) if tmp is not None else directory
    assert directory is not None
    try:
        env = make_env(
            directory / "env", timeout=timeout, max_connections=4096, processes=processes
        )
        text = env.config.read_text().replace(
            "[server]\n", "[server]\nmax_connections_per_peer = 4096\nworkers = 256\n", 1
        )
        env.config.write_text(text)
        platform = Platform(env.pki)
        contexts = {
            "legit": _context(
                env.ca, _pem_pair(directory, "legit", *platform.enclave_cert("face"))
            ),
            "plain": _context(env.ca, _pem_pair(directory, "plain", *_plain_cert(False))),
            "unparseable": _context(
                env.ca, _pem_pair(directory, "unparseable", *_plain_cert(True))
            ),
        }
        secret = env.secrets["face"]
        hostile = round(legit * hostile_share / (1 - hostile_share))

        mp = multiprocessing.get_context("fork")
        ours, theirs = mp.Pipe()
        server = mp.Process(target=_serve, args=(env.config, theirs))
        server.start()
        address, supervisor, workers = ours.recv()
        pids = [supervisor, *workers]

        samples: list[tuple[float, int]] = []
        sampling = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not sampling.wait(sample_every):
                samples.append((time.monotonic() - began, _rss_kib(pids)))

        async def drive() -> dict:
            # warm-up: the verification cache, then a full-concurrency burst twice (worker
            # threads, allocator arenas): what is measured after it is steady state
            await _legit(address, contexts["legit"], secret, 30)
            for _ in range(2):
                await asyncio.gather(
                    *(
                        _legit(address, contexts["legit"], secret, 60)
                        for _ in range(min(concurrency, legit))
                    ),
                    return_exceptions=True,
                )  # not measured
            baseline = _rss_kib(pids)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            gate = asyncio.Semaphore(concurrency)
            latencies: list[float] = []
            failures: list[str] = []
            peers: dict[str, list[str]] = {kind: [] for kind in KINDS}
            hostile_errors: list[str] = []
            # interleave: one hostile connection every legit/hostile legitimate ones
            plan = ["legit"] * legit
            step = legit / max(hostile, 1)
            for i in range(hostile):
                plan.insert(int((i + 1) * step) + i, KINDS[i % len(KINDS)])

            async def one(index: int, what: str) -> None:
                async with gate:
                    try:
                        if what == "legit":
                            latencies.append(await _legit(address, contexts["legit"], secret, 60))
                        else:
                            peers[what].append(
                                await _hostile(what, index, address, contexts, timeout * 3)
                            )
                    except Exception as exc:  # noqa: BLE001 - counted
                        (failures if what == "legit" else hostile_errors).append(
                            f"{what}: {type(exc).__name__}: {exc}"
                        )

            started = time.perf_counter()
            await asyncio.gather(*(one(i, what) for i, what in enumerate(plan)))
            elapsed = time.perf_counter() - started
            return {
                "baseline_kib": baseline,
                "latencies": latencies,
                "failures": failures,
                "peers": peers,
                "hostile_errors": hostile_errors,
                "elapsed": elapsed,
            }

        try:
            result = asyncio.run(drive())
        finally:
            sampling.set()
            time.sleep(timeout + 0.5)  # connections cut at their deadline get their lines
            end_kib = _rss_kib(pids)
            ours.send("stop")
            ours.recv()
            server.join(30)
        audit = [
            json.loads(line) for line in (env.directory / "audit.jsonl").read_text().splitlines()
        ]
        by_peer: dict[str, list[tuple[float, dict]]] = {}
        for record in audit:
            if "peer" in record:
                moment = dt.datetime.fromisoformat(record["time"]).timestamp()
                by_peer.setdefault(record["peer"], []).append((moment, record))
        audited, reasons = {}, {}
        for kind, spans in result["peers"].items():
            matched = []
            for peer, began, ended in spans:
                lines = [
                    r
                    for moment, r in by_peer.get(peer, [])
                    if began - 0.05 <= moment <= ended + 0.5
                ]
                matched.append(lines)
            audited[kind] = (
                len(spans),
                sum(
                    1
                    for ls in matched
                    if len(ls) == 1 and ls[0].get("decision") == "deny" and ls[0].get("reason")
                ),
            )
            reasons[kind] = sorted({ls[0]["reason"][:60] for ls in matched if ls})[:3]
        rss = [kib for _, kib in samples] or [result["baseline_kib"]]
        half = [kib for moment, kib in samples if moment >= samples[-1][0] / 2] if samples else rss
        latencies = sorted(result["latencies"])
        return {
            "legit": legit,
            "served": len(latencies),
            "failures": result["failures"],
            "hostile": hostile,
            "hostile_errors": result["hostile_errors"],
            "audited": audited,
            "reasons": reasons,
            "elapsed": result["elapsed"],
            "rate": len(latencies) / result["elapsed"] if result["elapsed"] else 0.0,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": (
                latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
                if latencies
                else float("nan")
            ),
            "rss_baseline_kib": result["baseline_kib"],
            "rss_peak_kib": max(rss),
            "rss_end_kib": end_kib,
            "rss_samples": len(samples),
            "rss_growth_kib": end_kib - result["baseline_kib"],
            "rss_second_half_growth_kib": end_kib - half[0],
            "processes": len(workers) or 1,
            "allowed_lines": sum(1 for r in audit if r.get("decision") == "allow"),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legit", type=int, default=1000, help="legitimate clients")
    parser.add_argument(
        "--hostile-share", type=float, default=0.2, help="share of all connections that are hostile"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=200,
        help="connections in flight at once (legitimate and hostile)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="the server's per-connection deadline (cuts stalled clients)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="[server] processes (default: the server's: one per core)",
    )
    args = parser.parse_args()
    if not 0 <= args.hostile_share < 1 or args.legit < 1 or args.legit > 20000:
        parser.error("--legit must be 1..20000 and --hostile-share in [0, 1)")
    r = run(args.legit, args.hostile_share, args.concurrency, args.timeout, args.processes)
    print(
        f"server: {r['processes']} worker process(es), deadline {args.timeout:.1f} s; "
        f"{args.concurrency} connections in flight"
    )
    print(
        f"legitimate: {r['served']}/{r['legit']} served, {len(r['failures'])} failed, "
        f"{r['rate']:.0f}/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
        f"({r['elapsed']:.1f} s)"
    )
    for failure in r["failures"][:5]:
        print(f"  failed: {failure}")
    total = sum(n for n, _ in r["audited"].values())
    lines = sum(a for _, a in r["audited"].values())
    print(
        f"hostile: {total} of {r['hostile'] + r['legit']} connections "
        f"({total / (total + r['legit']):.0%}); {lines} with exactly one deny audit line"
    )
    for kind, (count, with_line) in r["audited"].items():
        print(f"  {kind:>11}: {with_line}/{count} audited  e.g. {'; '.join(r['reasons'][kind])}")
    for error in r["hostile_errors"][:5]:
        print(f"  hostile client error: {error}")
    mib = lambda kib: kib / 1024
    print(
        f"server RSS (all processes): {mib(r['rss_baseline_kib']):.1f} MiB after warm-up, "
        f"peak {mib(r['rss_peak_kib']):.1f} MiB, {mib(r['rss_end_kib']):.1f} MiB at the end "
        f"(growth {mib(r['rss_growth_kib']):+.1f} MiB, of which "
        f"{mib(r['rss_second_half_growth_kib']):+.1f} MiB in the second half of the run; "
        f"{r['rss_samples']} samples)"
    )
    ok = not r["failures"] and r["served"] == r["legit"] and lines == total
    print(
        "result: "
        + (
            "every legitimate client served, every hostile connection audited"
            if ok
            else "NOT all legitimate clients served / hostile ones audited"
        )
    )


if __name__ == "__main__":
    main()
