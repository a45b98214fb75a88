"""Fuzz targets: every parser of untrusted input, fed random and mutated input. Each target
may only succeed or raise the project's own error type with a message; nothing else escapes.

In CI each target runs a bounded number of examples (a few seconds); ``benchmarks/fuzz.py``
runs the same targets for as long as asked and prints executions per target. The counts of a
test run are printed at the end of this module (``fuzz executions: ...``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ms_backends import NO_SOURCE

#: examples per target in the test suite (each target stays within a few seconds)
CI_EXAMPLES = int(os.environ.get("ENCLAVE_BUILD_FUZZ_EXAMPLES", "150"))
COUNTS: Counter[str] = Counter()

# ------------------------------------------------------------------ mutations

#: a mutation: flips (offset, xor), then an optional truncation or extension
mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 1 << 16)),
    st.binary(max_size=64),
)


def mutate(data: bytes, mutation: tuple) -> bytes:
    flips, cut, tail = mutation
    out = bytearray(data)
    for offset, xor in flips:
        if out:
            out[offset % len(out)] ^= xor
    if cut is not None and out:
        del out[cut % (len(out) + 1) :]
    return bytes(out) + tail


def _touched(data: bytes, mutated: bytes) -> set[int]:
    if len(data) != len(mutated):
        return {-1}
    return {i for i, (a, b) in enumerate(zip(data, mutated, strict=True)) if a != b}


# ------------------------------------------------------------------ layer applier

_COMPONENTS = [
    "a",
    "b",
    "etc",
    "..",
    ".",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..",
    ".wh...",
    ".wh.",
    "OUT",
]
_KINDS = ["file", "dir", "sym", "lnk", "chr", "fifo"]
_names = st.tuples(
    st.sampled_from(["", "./", "/"]), st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4)
).map(lambda t: t[0] + "/".join(t[1]))
_targets = st.one_of(
    _names,
    st.sampled_from(
        [
            "{OUTSIDE}",
            "{OUTSIDE}/victim",
            "/",
            "../../..",
            "../../outside",
            "../../outside/victim",
            "/etc/passwd",
            "a",
            "a/b",
        ]
    ),
)
_entry = st.tuples(_names, st.sampled_from(_KINDS), _targets, st.binary(max_size=16))
layers = st.tuples(
    st.lists(st.lists(_entry, max_size=8), min_size=1, max_size=3), st.one_of(st.none(), mutations)
)


def _tar(entries: list, outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, target, data in entries:
            name = name.replace("OUT", str(outside).lstrip("/"))
            if not name.strip("/"):
                continue
            info = tarfile.TarInfo(name)
            info.mode = 0o4755
            target = target.replace("{OUTSIDE}", str(outside))
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = target if kind in ("sym", "lnk") else ""
            tar.addfile(info)
    return buf.getvalue()


def _tree(directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        st_ = os.lstat(path)
        out[str(path.relative_to(directory))] = (
            stat.S_IFMT(st_.st_mode),
            st_.st_size,
            st_.st_ino,
            path.read_bytes() if stat.S_ISREG(st_.st_mode) else None,
        )
    return out


def check_layers(case: tuple) -> None:
    from enclave_build.builder.image.oci import ImageError
    from enclave_build.builder.image.unpack import apply_layer

    COUNTS["layer applier"] += 1
    stack, mutation = case
    with tempfile.TemporaryDirectory(prefix="fuzz-layer-") as tmp:
        top = Path(tmp)
        root, outside = top / "root", top / "outside"
        root.mkdir()
        outside.mkdir()
        (outside / "victim").write_bytes(b"host")
        before = _tree(outside)
        for index, entries in enumerate(stack):
            data = _tar(entries, outside)
            if mutation is not None and index == len(stack) - 1:
                data = mutate(data, mutation)
            try:
                apply_layer(root, io.BytesIO(data), f"fuzz layer {index}")
            except ImageError as exc:
                assert str(exc).startswith(f"fuzz layer {index}")
        assert _tree(outside) == before, "a layer changed a file outside the root"
        assert sorted(os.listdir(top)) == ["outside", "root"]
        for path in root.rglob("*"):
            mode = os.lstat(path).st_mode
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)), path
            assert not mode & (stat.S_ISUID | stat.S_ISGID), path


# ------------------------------------------------------------------ quotes and RA-TLS


@functools.cache
def _pki():
    from enclave_build.attestation.synthetic import SyntheticPKI

    pki = SyntheticPKI()
    return pki, pki.collateral_json()


@functools.cache
def _quote() -> bytes:
    pki, _ = _pki()
    return pki.quote(hashlib.sha256(b"e").digest(), hashlib.sha256(b"s").digest(), bytes(64), 1, 2)


def check_quote(mutation: tuple) -> None:
    from enclave_build.attestation.quote import Quote, QuoteFormatError
    from enclave_build.attestation.verify import QuoteRejected, verify_quote

    COUNTS["quote parsing"] += 1
    raw = mutate(_quote(), mutation)
    try:
        quote = Quote.parse(raw)
        quote.pem_chain()
    except QuoteFormatError as exc:
        assert str(exc)
    pki, collateral = _pki()
    try:
        verify_quote(raw, collateral, root_ca_der=pki.root_der)
    except QuoteRejected as exc:
        assert str(exc)
    else:
        assert (
            raw == _quote() or _touched(_quote(), raw) <= set(range(368 + 32, 432)) or True
        )  # report_data bytes 32..63 are signed: verified by dcap-qvl
        # a changed quote must not verify unless the change is outside what is signed
        assert raw == _quote(), "a mutated quote verified"


@functools.cache
def _ratls(fmt: str):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from enclave_build.attestation.ratls import create_certificate

    pki, _ = _pki()
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if fmt == "cczoo"
        else ec.generate_private_key(ec.SECP384R1())
    )
    cert, key = create_certificate(
        fmt, lambda rd: pki.quote(bytes(32), bytes(32), rd, 1, 2), key=key
    )
    return cert, key


ratls_cases = st.tuples(
    st.sampled_from(["tcg-dice", "gramine-legacy", "cczoo"]),
    st.sampled_from(["extension", "certificate"]),
    mutations,
)


def check_ratls(case: tuple) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from enclave_build.attestation.ratls import EvidenceError, extract_evidence

    COUNTS["RA-TLS certificates"] += 1
    fmt, where, mutation = case
    cert, key = _ratls(fmt)
    if where == "certificate":
        der = mutate(cert.public_bytes(serialization.Encoding.DER), mutation)
        try:
            with warnings.catch_warnings():  # e.g. "serial number which wasn't positive"
                warnings.simplefilter("ignore")
                target = x509.load_der_x509_certificate(der)
        except ValueError:
            return  # not a certificate at all: rejected by TLS before our code sees it
    else:
        ext = next(e for e in cert.extensions if isinstance(e.value, x509.UnrecognizedExtension))
        value = mutate(ext.value.value, mutation)
        builder = (
            x509.CertificateBuilder()
            .subject_name(cert.subject)
            .issuer_name(cert.issuer)
            .public_key(key.public_key())
            .serial_number(cert.serial_number)
            .not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc)
            .add_extension(x509.UnrecognizedExtension(ext.oid, value), critical=False)
        )
        target = builder.sign(key, hashes.SHA256())
    try:
        evidence = extract_evidence(target)
    except EvidenceError as exc:
        assert str(exc)
    else:
        assert evidence.format == fmt


# ------------------------------------------------------------------ protected files

_PF_KEY = bytes(range(16))


@functools.cache
def _pf_file() -> bytes:
    from enclave_build.attestation.protected_files import encrypt_bytes

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.pf"
        encrypt_bytes(
            _PF_KEY, bytes(range(256)) * 40, path, "/secrets/model.bin", reproducible=True
        )
        return path.read_bytes()


def check_pf(mutation: tuple) -> None:
    from enclave_build.attestation.protected_files import PFError, decrypt_stream

    COUNTS["PF decryption"] += 1
    base = _pf_file()
    data = mutate(base, mutation)
    out = io.BytesIO()
    try:
        decrypt_stream(_PF_KEY, io.BytesIO(data), len(data), out, "/secrets/model.bin", "fuzz.pf")
    except PFError as exc:
        assert str(exc).startswith("fuzz.pf")
        return
    assert data == base, "a modified protected file decrypted"
    assert out.getvalue() == bytes(range(256)) * 40


# ------------------------------------------------------------------ SIGSTRUCT


@functools.cache
def _sigstruct() -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from enclave_build.builder.gramine.sigstruct import (
        ARCH_LAYOUT,
        SigDate,
        Sigstruct,
        SigstructBody,
    )

    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    body = SigstructBody(
        hashlib.sha256(b"x").digest(),
        SigDate(2026, 1, 1),
        1,
        2,
        0x4,
        0x3,
        ~0x2 & (2**64 - 1),
        0xFFFFFFFFFFFFFFFC,
        0,
        0xFFFFFFFF,
    )
    unsigned = Sigstruct(body)
    sig = key.sign(unsigned.signing_data(ARCH_LAYOUT), padding.PKCS1v15(), hashes.SHA256())
    return unsigned.with_signature(
        key.public_key().public_numbers().n, int.from_bytes(sig, "big")
    ).to_bytes(ARCH_LAYOUT)


#: bytes EINIT does not look at: reserved, outside the signed ranges
_UNCHECKED = set(range(1028, 1040))


def check_sigstruct(mutation: tuple) -> None:
    from enclave_build.builder.gramine.sigstruct import (
        ARCH_LAYOUT,
        Sigstruct,
        SigstructError,
        describe,
    )

    COUNTS["SIGSTRUCT parsing"] += 1
    base = _sigstruct()
    data = mutate(base, mutation)
    try:
        sig = Sigstruct.from_bytes(data, ARCH_LAYOUT, "fuzz.sig")
        info = describe(sig)
    except SigstructError as exc:
        assert str(exc)
        return
    json.dumps(info)
    valid = sig.signature_problem(ARCH_LAYOUT) is None
    assert valid == (_touched(base, data) <= _UNCHECKED), (valid, sorted(_touched(base, data)))


# ------------------------------------------------------------------ registry manifests

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 40), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_digests = st.one_of(
    st.just("sha256:" + "a" * 64),
    st.just("sha256:" + "/" * 54 + "etc/passwd"),
    st.just("sha256:" + "../" * 21 + "x"),
    st.text(max_size=72),
    st.integers(),
)
_descriptor = st.fixed_dictionaries(
    {
        "mediaType": st.one_of(st.just("application/vnd.oci.image.layer.v1.tar"), _json),
        "digest": _digests,
        "size": st.one_of(st.integers(-1, 1 << 20), _json),
    },
    optional={
        "annotations": _json,
        "platform": st.one_of(st.just({"os": "linux", "architecture": "amd64"}), _json),
    },
)
_manifest = st.fixed_dictionaries(
    {"schemaVersion": st.one_of(st.just(2), _json)},
    optional={
        "config": st.one_of(_descriptor, _json),
        "layers": st.one_of(st.lists(_descriptor, max_size=3), _json),
        "manifests": st.one_of(st.lists(_descriptor, max_size=3), _json),
        "mediaType": st.sampled_from(
            [
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
            ]
        ),
    },
)
manifest_cases = st.one_of(
    _manifest.map(lambda m: json.dumps(m).encode()),
    _json.map(lambda m: json.dumps(m).encode()),
    st.tuples(_manifest.map(lambda m: json.dumps(m).encode()), mutations).map(lambda t: mutate(*t)),
)


class _Answer:
    def __init__(self, status: int, body: bytes = b"", content_type: str = ""):
        self.status_code, self.content, self.text = status, body, body.decode("latin-1")
        self.headers = {"Content-Type": content_type} if content_type else {}


class _Registry:
    """A session whose registry answers every manifest request with *body*."""

    def __init__(self, body: bytes):
        self.body = body

    def request(self, method, url, headers=None, **kwargs):
        if "/manifests/" in url:
            return _Answer(200, self.body, "application/vnd.oci.image.index.v1+json")
        return _Answer(404)


def check_manifest(body: bytes) -> None:
    from enclave_build.builder.image.oci import (
        BlobStore,
        ImageError,
        parse_config,
        parse_index,
        parse_json_object,
        parse_manifest,
    )
    from enclave_build.builder.image.reference import RegistryRef
    from enclave_build.builder.image.registry import RegistryClient

    COUNTS["registry manifests/indexes"] += 1
    for parse in (lambda d: parse_manifest(d, "fuzz"), lambda d: parse_index(d, "fuzz")):
        try:
            parse(parse_json_object(body, "fuzz"))
        except ImageError as exc:
            assert str(exc)
    try:
        parse_config(body, "fuzz config")
    except ImageError as exc:
        assert str(exc)
    with tempfile.TemporaryDirectory(prefix="fuzz-registry-") as tmp:
        client = RegistryClient("127.0.0.1:5000", _Registry(body))  # type: ignore[arg-type]  # a stand-in session
        try:
            client.pull(RegistryRef("127.0.0.1:5000", "x", "1"), BlobStore(Path(tmp)))
        except ImageError as exc:
            assert str(exc)


# ------------------------------------------------------------------ the model server's REST side


def _rest_requests() -> list[bytes]:
    """Well-formed requests the REST server answers 200 (JSON, binary, gzip, keep-alive)."""
    import gzip

    import numpy as np

    x = np.arange(4, dtype=np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": 16},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    plain = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}]}'
    strings = b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"data":["ab",""]}]}'
    packed = gzip.compress(plain)

    def post(model: str, body: bytes, extra: str = "") -> bytes:
        return (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + post("echo", plain),
        post("echo", head + x, f"Inference-Header-Content-Length: {len(head)}\r\n"),
        post("echo", packed, "Content-Encoding: gzip\r\n"),
        post("len", strings) + b"GET /v2/models/echo HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n\r\n",
    ]


_RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n((?:[^\r\n]+\r\n)*)\r\n")


@functools.cache
def _rest_server():
    """One REST server on 127.0.0.1 for the whole run (echo and BYTES models)."""
    import atexit

    from enclave_build.model_server.config import ModelConfig
    from enclave_build.model_server.core import LoadedModel

    from .ms_backends import BytesLength
    from .rest_env import RestInThread, echo_model

    mc = ModelConfig("len", "1", "tests.ms_backends:BytesLength", "/none")
    srv = RestInThread(
        {"echo": echo_model(), "len": LoadedModel(mc, [BytesLength(mc, NO_SOURCE)])},
        max_request_bytes=1 << 16,
    )
    atexit.register(srv.close)
    return srv


rest_cases = st.tuples(st.integers(0, len(_rest_requests()) - 1), mutations)


def check_rest(case: tuple) -> None:
    """A mutated request on a real connection: the answer is nothing (an incomplete request)
    or a sequence of complete, well-framed responses, never a 500, and the server serves on."""
    COUNTS["REST requests"] += 1
    index, mutation = case
    srv = _rest_server()
    data = mutate(_rest_requests()[index], mutation)
    answer = srv.exchange(data)
    pos = 0
    while pos < len(answer):
        m = _RESPONSE.match(answer, pos)
        assert m, (data, answer[pos : pos + 200])
        status = int(m.group(1))
        assert 200 <= status < 600 and status != 500, (data, answer)
        lengths = re.findall(rb"(?im)^content-length: (\d+)\r$", m.group(2))
        assert len(lengths) == 1, (data, answer)
        pos = m.end() + int(lengths[0])
        assert pos <= len(answer), (data, answer)
    if mutation == ([], None, b""):
        assert answer.count(b" 200 OK") >= 1, answer
    health = srv.exchange(b"GET /v2/health/ready HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200"), health


def check_rest_body(case: tuple) -> None:
    """A mutated inference body decoded for the echo and BYTES models: arrays, or ServeError
    with a message (never another exception)."""
    from enclave_build.model_server.config import ModelConfig
    from enclave_build.model_server.core import LoadedModel, ServeError
    from enclave_build.model_server.rest import decode_infer

    from .ms_backends import BytesLength
    from .rest_env import echo_model

    COUNTS["KServe REST bodies"] += 1
    index, mutation = case
    request = _rest_requests()[index]
    head, _, body = request.partition(b"\r\n\r\n")
    m = re.search(rb"Inference-Header-Content-Length: (\d+)", head)
    header_len = int(m.group(1)) if m else None
    body = mutate(body, mutation)
    mc = ModelConfig("len", "1", "tests.ms_backends:BytesLength", "/none")
    for model in (echo_model(), LoadedModel(mc, [BytesLength(mc, NO_SOURCE)])):
        try:
            decode_infer(model, body, header_len, 1 << 16)
        except ServeError as exc:
            assert exc.message and exc.kind in (ServeError.INVALID, ServeError.TOO_LARGE), exc


# ------------------------------------------------------------------ registry of targets

TARGETS: dict[str, tuple[Any, Callable[[Any], None]]] = {
    "layer applier": (layers, check_layers),
    "RA-TLS certificates": (ratls_cases, check_ratls),
    "quote parsing": (mutations, check_quote),
    "PF decryption": (mutations, check_pf),
    "SIGSTRUCT parsing": (mutations, check_sigstruct),
    "registry manifests/indexes": (manifest_cases, check_manifest),
    "REST requests": (rest_cases, check_rest),
    "KServe REST bodies": (rest_cases, check_rest_body),
}


def run(name: str, examples: int, **overrides: Any) -> None:
    """Run target *name* for *examples* generated inputs (raises on the first failure)."""
    strategy, check = TARGETS[name]
    options: dict[str, Any] = dict(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    options.update(overrides)
    settings(**options)(given(strategy)(check))()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    line = "fuzz executions: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name):
    run(name, CI_EXAMPLES)


def test_quote_shorter_than_its_fixed_signature_fields_is_a_format_error():
    """Found by review of what the quote target exercises: a signature-data length that agrees
    with the total size but leaves no room for the fixed fields used to raise struct.error."""
    from enclave_build.attestation.quote import Quote, QuoteFormatError

    for sig_len in (0, 1, 577):
        raw = _quote()[:432] + sig_len.to_bytes(4, "little") + bytes(sig_len)
        with pytest.raises(QuoteFormatError):
            Quote.parse(raw)
