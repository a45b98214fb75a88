"""Occlum's GrSecret vs Gramine's secret_prov on one secret server: keys/s, p50/p99, CPU per key.

Both protocols are served by ONE secret server process in one run; at each concurrency level
three ways of fetching keys run one after another:

* **secret_prov** (the baseline): Gramine's exchange, one RA-TLS connection per key (the TLS
  server name names the key; client certificate ECDSA P-384, TCG DICE evidence; the server
  presents its CA-signed ECDSA P-256 certificate);
* **grsecret**: one mutual RA-TLS connection and one ``ratls.GrSecret/GetSecret`` call per key
  (both certificates Occlum-format: RSA-2048, raw quote in 1.2.840.113741.1);
* **grsecret xK**: K GetSecret calls, one after another, on each connection, as Occlum's init
  fetches several keys over one channel. Its latency is per connection (K keys); the per-call
  p50 and the server CPU of each extra call say what a call costs once the connection is
  attested.

The server (default: one worker process per core, verification cache on, audit log written)
runs in a process of its own with a simulated quoter for its own RA-TLS certificate; the
clients run in ``--client-processes`` other processes: asyncio TLS connections presenting
synthetic RA-TLS certificates of 16 enclave identities on one synthetic platform (every quote
carries the same QE report, as a real quoting enclave's do). Server CPU is read from /proc
for the server process and its workers before and after each run.

The GrSecret client drives HTTP/2 itself rather than using grpcio: after the TLS handshake
(ALPN h2, stdlib ssl as for the baseline) it writes the connection preface and pre-encoded
HPACK literal request headers, reads frames, decodes the response headers with ``hpack`` and
the SecretReply by hand, and checks grpc-status 0 and every secret byte. That keeps the
client's share of the two shared cores small and in view (its CPU per key and per extra call
are printed next to the server's), with no grpcio threads or channel machinery in between. The
server's certificate is checked once, as Occlum's init checks it (its quote verified, the
identity matched against an ra_config), then pinned for every connection; that per-connection
client cost is left out. Correctness against a stock grpcio client is tests/test_grsecret.py's
job.

    python benchmarks/grsecret.py [--requests 300] [--levels 1,16] [--calls 4] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import os
import ssl
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation.config import load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.occlum_ra import RaConfig
from enclave_build.attestation.quote_source import SIMULATED_QUOTER_ENV
from enclave_build.attestation.server import SecretServer
from enclave_build.attestation.simulated_quoter import SimulatedQuoter
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.attestation.wire import REQUEST, RESPONSE
from enclave_build.contract.identity import EnclaveIdentity
from tests.attest_env import Platform
from tests.secret_client import verify_peer_certificate

MR_SIGNER = hashlib.sha256(b"bench signer").digest()
SERVER_MR_ENCLAVE = hashlib.sha256(b"bench secret server").digest()
IDENTITIES = 16
SECRET_SIZE = 16  # a wrap key


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class BenchEnv:
    directory: Path
    pki: SyntheticPKI
    ca: Path  # the secret_prov listener's TLS CA
    config: Path
    secrets: tuple[bytes, ...]  # key-0 .. key-(K-1)
    dice_clients: tuple[ClientCert, ...]  # Gramine-format (secret_prov)
    occlum_clients: tuple[ClientCert, ...]  # Occlum-format (GrSecret)
    server_measurements: Measurements


def _write_pair(directory: Path, stem: str, cert, key) -> ClientCert:
    paths = ClientCert(directory / f"{stem}.crt", directory / f"{stem}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def setup(directory: Path, keys: int, max_requests: int, processes: int | None = None) -> BenchEnv:
    """PKI, TLS certificates, measurements, *keys* secrets each released to every identity,
    the server configuration (both listeners) and the client certificates."""
    pki = SyntheticPKI()
    platform = Platform(pki)
    ca, _, _ = tls_ca_and_server(directory)
    (directory / "collateral.json").write_text(pki.collateral_json())
    (directory / "root.pem").write_bytes(pki.root_pem)
    (directory / "builds").mkdir()
    services: list[str] = []
    dice: list[ClientCert] = []
    occlum: list[ClientCert] = []
    for index in range(IDENTITIES):
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
        services.append(f'"svc{index}"')
        for fmt, out in (("tcg-dice", dice), ("cczoo", occlum)):
            cert, key = platform.enclave_cert(
                fmt=fmt, mr_enclave=mr_enclave, mr_signer=MR_SIGNER, isv_prod_id=1, isv_svn=1
            )
            out.append(_write_pair(directory, f"{fmt}-{index}", cert, key))
    secrets = tuple(os.urandom(SECRET_SIZE) for _ in range(keys))
    rules = ""
    for index, secret in enumerate(secrets):
        (directory / f"key-{index}.bin").write_bytes(secret)
        rules += (
            f'\n[[secrets]]\nname = "key-{index}"\nfile = "key-{index}.bin"\n'
            f"allow = [{', '.join(services)}]\n"
        )
    config = directory / "secrets.toml"
    config.write_text(f"""measurements = ["builds/*.json"]

[server]
listen = "127.0.0.1:0"
cert = "server.crt"
key = "server.key"
max_connections = 256
max_connections_per_peer = 256
timeout = 60
audit_log = "audit.jsonl"
{f"processes = {processes}" if processes else ""}

[attestation]
root_ca = "root.pem"
collateral = "collateral.json"

[grsecret]
listen = "127.0.0.1:0"
idle = 10.0
max_requests = {max_requests}
{rules}""")
    server = Measurements(
        "secret-server",
        "secret-server",
        "gramine",
        EnclaveIdentity(SERVER_MR_ENCLAVE.hex(), MR_SIGNER.hex(), 7, 3, False),
        ImageRef(None, None),
    )
    return BenchEnv(directory, pki, ca, config, secrets, tuple(dice), tuple(occlum), server)


# --------------------------------------------------------------------------- the server


def _serve(env: BenchEnv, ready, stop, pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {0})  # the server alone on core 0 (so one process by default)
    with SimulatedQuoter(env.pki, env.server_measurements, warn=False) as quoter:
        os.environ[SIMULATED_QUOTER_ENV] = quoter.env_value  # the server's own RA-TLS cert
        server = SecretServer(load_config(env.config))
        server.start()
        ready.put((server.address, server.grsecret_address, server.processes))
        stop.wait()
        server.shutdown()


_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process *pid* and its live child processes."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def pinned_server_certificate(env: BenchEnv, address) -> bytes:
    """The GrSecret listener's certificate, checked once as Occlum's init checks it (quote
    verified, identity matched against an ra_config); then pinned by every client."""
    pem = ssl.get_server_certificate(tuple(address)).encode()
    m = env.server_measurements
    ra_config: dict[str, Any] = {
        flag: "on"
        for flag in (
            "verify_mr_enclave",
            "verify_mr_signer",
            "verify_isv_prod_id",
            "verify_isv_svn",
            "verify_config_svn",
            "verify_enclave_debuggable",
        )
    }
    ra_config["sgx_mrs"] = [
        {
            "mr_enclave": m.mr_enclave,
            "mr_signer": m.mr_signer,
            "isv_prod_id": m.isv_prod_id,
            "isv_svn": m.isv_svn,
            "config_svn": 0,
            "debuggable": False,
        }
    ]
    verify_peer_certificate(
        x509.load_pem_x509_certificate(pem),
        RaConfig.from_dict(ra_config),
        env.pki.collateral_json(),
        root_ca_der=env.pki.root_der,
    )
    return pem


# --------------------------------------------------------------------------- HTTP/2 client

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2);
    self-contained, so the same bytes serve every call."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


REQUEST_HEADERS = b"".join(
    _literal(n, v)
    for n, v in (
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/ratls.GrSecret/GetSecret"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    )
)


def request_message(name: str) -> bytes:
    """A gRPC frame carrying SecretRequest{name} (field 1, length-delimited)."""
    raw = name.encode()
    assert len(raw) < 128
    body = b"\x0a" + bytes([len(raw)]) + raw
    return struct.pack(">BI", 0, len(body)) + body


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def reply_secret(body: bytes) -> bytes:
    """The secret in one gRPC-framed SecretReply: field 1, base64 text (quoted or bare)."""
    if len(body) < 5 or body[0] != 0 or struct.unpack(">I", body[1:5])[0] != len(body) - 5:
        raise RuntimeError(f"not one uncompressed gRPC message ({len(body)} bytes)")
    message, at, text = body[5:], 0, None
    while at < len(message):
        tag, at = _varint(message, at)
        if tag & 7 != 2:
            raise RuntimeError(f"unexpected wire type in SecretReply (tag {tag})")
        length, at = _varint(message, at)
        if tag >> 3 == 1:
            text = message[at : at + length]
        at += length
    if text is None:
        raise RuntimeError("SecretReply has no secret")
    return base64.b64decode(text.strip(b'"'), validate=True)


class H2Client:
    """Unary GetSecret calls, one at a time, on one TLS connection (ALPN h2 negotiated)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = hpack.Decoder()
        self.stream = 1

    async def _frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = head[3], head[4], struct.unpack(">I", head[5:])[0] & 0x7FFFFFFF
        return kind, flags, stream, await self.reader.readexactly(length)

    async def get(self, name: str) -> bytes:
        stream, self.stream = self.stream, self.stream + 2
        out = PREFACE + h2_frame(SETTINGS, 0, 0) if stream == 1 else b""
        self.writer.write(
            out
            + h2_frame(HEADERS, END_HEADERS, stream, REQUEST_HEADERS)
            + h2_frame(DATA, END_STREAM, stream, request_message(name))
        )
        body, block = bytearray(), bytearray()
        headers: dict[str, str] = {}
        while True:
            kind, flags, sid, payload = await self._frame()
            if kind == SETTINGS and not flags & ACK:
                self.writer.write(h2_frame(SETTINGS, ACK, 0))
                continue
            if kind == PING and not flags & ACK:
                self.writer.write(h2_frame(PING, ACK, 0, payload))
                continue
            if kind == GOAWAY:
                raise RuntimeError(f"server sent GOAWAY (error {payload[4:8].hex()})")
            if sid != stream:
                continue  # WINDOW_UPDATE, SETTINGS ACK, ...
            if kind == RST_STREAM:
                raise RuntimeError(f"server reset the stream (error {payload.hex()})")
            if kind in (DATA, HEADERS) and flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if kind == DATA:
                body += payload
            elif kind in (HEADERS, CONTINUATION):
                if kind == HEADERS and flags & PRIORITY:
                    payload = payload[5:]
                block += payload
                if flags & END_HEADERS:
                    headers.update(
                        (k.decode(), v.decode())
                        for k, v in self.decoder.decode(bytes(block), raw=True)
                    )
                    block.clear()
            if flags & END_STREAM and kind in (DATA, HEADERS):
                break
        if headers.get("grpc-status") != "0":
            raise RuntimeError(
                f"grpc-status {headers.get('grpc-status')}: {headers.get('grpc-message', '')}"
            )
        return reply_secret(bytes(body))

    async def close(self) -> None:
        self.writer.write(h2_frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
        await _close(self.writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ssl.SSLError, ConnectionError):
        pass


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Mode:
    name: str
    protocol: str  # "secret_prov" or "grsecret"
    calls: int  # keys per connection


def _contexts(mode: Mode, env: BenchEnv, server_pem: bytes) -> list[ssl.SSLContext]:
    contexts = []
    for client in env.dice_clients if mode.protocol == "secret_prov" else env.occlum_clients:
        if mode.protocol == "secret_prov":
            ctx = ssl.create_default_context(cafile=str(env.ca))
            ctx.check_hostname = False  # the server name (SNI) names the key, as keys.py does
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False  # pinned: the one certificate trusted is the server's
            ctx.load_verify_locations(cadata=server_pem.decode())
            ctx.set_alpn_protocols(["h2"])
        ctx.load_cert_chain(client.cert, client.key)
        contexts.append(ctx)
    return contexts


async def _secret_prov(address, ctx, env: BenchEnv, key: int) -> tuple[float, list, str]:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        *address, ssl=ctx, server_hostname=f"key-{key}", ssl_handshake_timeout=60
    )
    version = writer.get_extra_info("ssl_object").version()
    writer.write(REQUEST)
    data = await reader.read()
    await _close(writer)
    secret = env.secrets[key]
    if data != RESPONSE + len(secret).to_bytes(4, "big") + secret:
        raise RuntimeError(f"bad secret_prov reply ({len(data)} bytes): {data[:80]!r}")
    return time.perf_counter() - start, [], version


async def _grsecret(address, ctx, env: BenchEnv, key: int, calls: int):
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        *address, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=60
    )
    tls = writer.get_extra_info("ssl_object")
    version = tls.version()
    if tls.selected_alpn_protocol() != "h2":
        await _close(writer)
        raise RuntimeError("the server did not select ALPN h2")
    client, per_call = H2Client(reader, writer), []
    for n in range(calls):
        index = (key + n) % len(env.secrets)
        began = time.perf_counter()
        if await client.get(f"key-{index}") != env.secrets[index]:
            raise RuntimeError(f"key-{index}: wrong secret")
        if n:
            per_call.append(time.perf_counter() - began)
    await client.close()
    return time.perf_counter() - start, per_call, version


async def load(
    mode: Mode, address, contexts, env: BenchEnv, concurrency: int, connections: int, offset: int
):
    gate = asyncio.Semaphore(concurrency)
    latencies, per_call, errors, versions = [], [], [], set()

    async def task(i: int) -> None:
        async with gate:
            ctx = contexts[i % len(contexts)]
            try:
                if mode.protocol == "secret_prov":
                    took, calls, version = await _secret_prov(
                        address, ctx, env, i % len(env.secrets)
                    )
                else:
                    took, calls, version = await _grsecret(
                        address, ctx, env, i % len(env.secrets), mode.calls
                    )
            except Exception as exc:  # noqa: BLE001 - counted, the first one shown
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append(took)
            per_call.extend(calls)
            versions.add(version)

    await asyncio.gather(*(task(offset + i) for i in range(connections)))
    return latencies, per_call, errors, versions


def _client(
    mode, addresses, env, server_pem, concurrency, connections, offset, start, results, pin
):
    if pin:
        os.sched_setaffinity(0, {1})
    contexts = _contexts(mode, env, server_pem)
    address = addresses[0] if mode.protocol == "secret_prov" else addresses[1]
    start.wait()
    before = _own_cpu()
    outcome = asyncio.run(load(mode, address, contexts, env, concurrency, connections, offset))
    results.put((*outcome, _own_cpu() - before))


def _own_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    keys_per_s: float
    p50_ms: float
    p99_ms: float
    call_p50_ms: float | None  # calls after the first on a connection
    call_p99_ms: float | None
    failures: int
    first_error: str | None
    cpu_ms_per_key: float
    cpu_ms_per_connection: float
    client_cpu_ms_per_key: float
    versions: set


def _percentile(values: list[float], q: float) -> float:
    return values[max(0, math.ceil(len(values) * q) - 1)] * 1000


def drive(
    mode: Mode,
    addresses,
    env: BenchEnv,
    server_pem: bytes,
    server_pid: int,
    level: int,
    keys: int,
    processes: int,
    pin: bool,
) -> Result:
    """*keys* keys fetched *mode*'s way by *level* concurrent connections, split over
    *processes* client processes; the server's CPU time over the run."""
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    connections = max(math.ceil(keys / mode.calls), level)
    processes = max(1, min(processes, level))
    start, results = mp.Event(), mp.Queue()
    workers = []
    for index in range(processes):
        share = level // processes + (index < level % processes)
        count = connections // processes + (index < connections % processes)
        workers.append(
            mp.Process(
                target=_client,
                args=(
                    mode,
                    addresses,
                    env,
                    server_pem,
                    share,
                    count,
                    index * 7,
                    start,
                    results,
                    pin,
                ),
            )
        )
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # let every client process load its certificates
    cpu_before = server_cpu(server_pid)
    began = time.perf_counter()
    start.set()
    latencies, per_call, errors, versions, client_cpu = [], [], [], set(), 0.0
    for _ in workers:
        part, calls, failed, seen, used = results.get(timeout=600)
        latencies += part
        per_call += calls
        errors += failed
        versions |= seen
        client_cpu += used
    elapsed = time.perf_counter() - began
    time.sleep(0.05)  # the server's last audit lines and closes
    cpu = server_cpu(server_pid) - cpu_before
    for worker in workers:
        worker.join(10)
    latencies.sort()
    per_call.sort()
    delivered = len(latencies) * mode.calls
    return Result(
        keys_per_s=delivered / elapsed,
        p50_ms=statistics.median(latencies) * 1000 if latencies else math.nan,
        p99_ms=_percentile(latencies, 0.99) if latencies else math.nan,
        call_p50_ms=statistics.median(per_call) * 1000 if per_call else None,
        call_p99_ms=_percentile(per_call, 0.99) if per_call else None,
        failures=len(errors),
        first_error=errors[0] if errors else None,
        cpu_ms_per_key=cpu / max(delivered, 1) * 1000,
        cpu_ms_per_connection=cpu / max(len(latencies), 1) * 1000,
        client_cpu_ms_per_key=client_cpu / max(delivered, 1) * 1000,
        versions=versions,
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=300,
        help="keys fetched per way and concurrency level (default 300)",
    )
    parser.add_argument(
        "--levels", default="1,16", help="concurrent connections, comma-separated (default 1,16)"
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=4,
        help="GetSecret calls per connection in the multi-call run (default 4)",
    )
    parser.add_argument(
        "--processes", type=int, default=None, help="[server] processes (default: one per core)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes generating the load (default 2)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server on core 0 only, clients on core 1 only: per-core capacity",
    )
    args = parser.parse_args()
    try:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--levels: expected comma-separated integers, got {args.levels!r}")
    if not levels or min(levels) < 1:
        parser.error("--levels: each level must be at least 1")
    if args.requests < 1 or args.calls < 2 or args.client_processes < 1:
        parser.error("--requests and --client-processes must be >= 1, --calls >= 2")
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("--pin needs two cores")
    modes = (
        Mode("secret_prov", "secret_prov", 1),
        Mode("grsecret", "grsecret", 1),
        Mode(f"grsecret x{args.calls}", "grsecret", args.calls),
    )
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    results: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="eb-bench-grsecret-") as tmp:
        env = setup(Path(tmp), keys=args.calls, max_requests=args.calls, processes=args.processes)
        ready, stop = mp.Queue(), mp.Event()
        server = mp.Process(target=_serve, args=(env, ready, stop, args.pin))
        server.start()
        assert server.pid is not None
        try:
            address, grsecret_address, processes = ready.get(timeout=120)
            server_pem = pinned_server_certificate(env, grsecret_address)
            for level in levels:  # the three ways side by side at each level
                for mode in modes:
                    results[(mode.name, level)] = drive(
                        mode,
                        (address, grsecret_address),
                        env,
                        server_pem,
                        server.pid,
                        level,
                        args.requests,
                        args.client_processes,
                        args.pin,
                    )
        finally:
            stop.set()
            server.join(60)
            if server.is_alive():
                server.terminate()
                server.join(10)
    report(modes, levels, results, processes, args)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and not math.isnan(base) else "n/a"


def report(modes, levels, results, processes, args) -> None:
    print(
        f"{os.cpu_count()} cores; server: {processes} process(es), one for both listeners; "
        f"{args.client_processes} client process(es); {args.requests} keys per row"
        + ("; pinned: server on core 0, clients on core 1" if args.pin else "")
    )
    print(
        f"{'way':>14} {'conc':>5} | {'keys/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'call p50':>8} {'call p99':>8} {'fail':>5} | {'server CPU/key':>14} "
        f"{'/conn':>6} {'client CPU/key':>14}  tls"
    )
    for level in levels:
        for mode in modes:
            r = results[(mode.name, level)]
            call50 = f"{r.call_p50_ms:8.2f}" if r.call_p50_ms is not None else f"{'':>8}"
            call99 = f"{r.call_p99_ms:8.2f}" if r.call_p99_ms is not None else f"{'':>8}"
            print(
                f"{mode.name:>14} {level:>5} | {r.keys_per_s:>7.0f} {r.p50_ms:>7.2f} "
                f"{r.p99_ms:>7.2f} {call50} {call99} {r.failures:>5} | "
                f"{r.cpu_ms_per_key:>14.2f} {r.cpu_ms_per_connection:>6.2f} "
                f"{r.client_cpu_ms_per_key:>14.2f}  "
                f"{','.join(sorted(r.versions))}"
            )
    print(
        f"p50/p99: ms per connection (a {modes[2].name} connection fetches {args.calls} keys); "
        "call p50/p99: ms per GetSecret after the first on a connection; CPU in ms (server: "
        "its process and workers; client: the load generator)."
    )
    multi = modes[2]
    print(
        "ratios against secret_prov at the same level (throughput > 1: more keys per second; "
        "p50 > 1: slower per key):"
    )
    for level in levels:
        a, b, c = (results[(m.name, level)] for m in modes)
        extra_call = (c.cpu_ms_per_connection - b.cpu_ms_per_connection) / (multi.calls - 1)
        client_call = (c.client_cpu_ms_per_key * multi.calls - b.client_cpu_ms_per_key) / (
            multi.calls - 1
        )
        line = (
            f"  {level:>4} concurrent: grsecret throughput {_ratio(b.keys_per_s, a.keys_per_s)}"
            f", p50 {_ratio(b.p50_ms, a.p50_ms)}; {multi.name} throughput "
            f"{_ratio(c.keys_per_s, a.keys_per_s)}"
        )
        if c.call_p50_ms is not None:
            line += (
                f"; one more GetSecret on an attested connection: p50 {c.call_p50_ms:.2f} ms "
                f"({_ratio(c.call_p50_ms, a.p50_ms)} a secret_prov key), "
                f"{extra_call:.2f} ms server CPU ({client_call:.2f} ms client CPU)"
            )
        print(line)
    print(
        "What differs per connection: GrSecret's TLS uses RSA-2048 on both sides (Occlum's "
        "RA-TLS format) plus an HTTP/2 connection; secret_prov's an ECDSA P-256 server "
        "certificate and a P-384 client certificate."
    )
    for (name, level), r in results.items():
        if r.first_error:
            print(f"{name} at {level}: {r.failures} failure(s), first: {r.first_error}")


if __name__ == "__main__":
    main()
