"""Gramine protected files (format "GRAFS_PF" 2.0): encrypt, decrypt and inspect.

The layout (Gramine's common/src/protected_files), 4 KiB nodes:

* node 0, metadata: a plaintext header (file id, version 2.0, 32-byte KDF nonce, GCM tag,
  feature flags) and an AES-GCM-128 encrypted part (the embedded path, the plaintext size, the
  root MHT node's key and tag, and the first 3 KiB of data). Its key is derived from the 16-byte
  wrap key with NIST SP 800-108 counter-mode AES-CMAC, label "SGX-PROTECTED-FS-METADATA-KEY".
* then, only for files over 3 KiB, MHT node m at physical index 1 + 97 m, each followed by up to
  96 data nodes. An MHT node holds {key, tag} for its 96 data nodes and its 32 child MHT nodes
  (children of m are 32 m + 1 .. 32 m + 32).
* every data and MHT node is AES-GCM-128 with its own key and an all-zero IV, no AAD.

Normally node keys and the KDF nonce are random, as in Gramine. *Reproducible* mode derives them
from the wrap key, the embedded path, the node position and the node's plaintext, so the same
inputs give the same bytes. It reveals exactly one thing more than random mode: whether two
encryptions (same wrap key, same path) have equal plaintext at the same node — i.e. equality of
files, or of 4 KiB-aligned parts of them.

Files are streamed: memory stays at a few MiB (the MHT nodes still waiting for children, about
1/3000 of the file size). Decryption writes to a temporary file renamed into place only after
every tag has verified, so a failed or interrupted decryption never leaves plaintext behind.

This module ships into enclave images with the model server (which decrypts with it in a
plain-process simulation): it imports only the standard library and ``cryptography`` (APIs
present in Debian 12's python3-cryptography 38), never ``builder``. The builder uses it through
``builder.gramine.protected_files``, which maps :class:`PFError` to its own error hierarchy.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from .errors import AttestationError

NODE = 4096
FILE_ID = 0x46505F5346415247  # "GRAFS_PF" little-endian
VERSION = (2, 0)
KEY_SIZE = 16
MAC_SIZE = 16
NONCE_SIZE = 32
PATH_MAX = 260 + 512  # including the terminating NUL
MD_DATA = 3072  # plaintext bytes held by the metadata node
DATA_PER_MHT = 96
CHILDREN_PER_MHT = 32
_HEADER = struct.Struct("<QBB32s16sB")  # 59 bytes, plaintext part of node 0
_MD_FIXED = struct.Struct(f"<{PATH_MAX}sQ16s16s")  # path, size, root key, root tag
_ENCRYPTED_PART = _MD_FIXED.size + MD_DATA  # 3884
_PADDING = NODE - _HEADER.size - _ENCRYPTED_PART  # 153
_KDF_LABEL = b"SGX-PROTECTED-FS-METADATA-KEY"
_ZERO_IV = bytes(12)
_ENTRY = KEY_SIZE + MAC_SIZE
_CHILD_BASE = DATA_PER_MHT * _ENTRY  # offset of the child-MHT entries in an MHT node
_REPRO_LABEL = b"enclave-build reproducible protected files v1"


class PFError(AttestationError, ValueError):
    """A protected file cannot be written, read or trusted."""


ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Layout:
    """Node counts for a plaintext size."""

    size: int

    @property
    def data_nodes(self) -> int:
        return 0 if self.size <= MD_DATA else -(-(self.size - MD_DATA) // NODE)

    @property
    def mht_nodes(self) -> int:
        return -(-self.data_nodes // DATA_PER_MHT)

    @property
    def nodes(self) -> int:
        return 1 + self.mht_nodes + self.data_nodes

    @property
    def file_size(self) -> int:
        return self.nodes * NODE


def data_node_index(d: int) -> int:
    """Physical node index of logical data node *d*."""
    return d + 2 + d // DATA_PER_MHT


def mht_node_index(m: int) -> int:
    """Physical node index of logical MHT node *m* (0 is the root)."""
    return 1 + m * (1 + DATA_PER_MHT)


def read_wrap_key(path: str | Path) -> bytes:
    path = Path(path)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise PFError(f"{path}: cannot read wrap key: {exc.strerror}") from exc
    if len(key) != KEY_SIZE:
        raise PFError(f"{path}: a wrap key is exactly 16 raw bytes, this file has {len(key)}")
    return key


def write_wrap_key(path: str | Path) -> bytes:
    """Create a new random wrap key file (mode 0600); refuses to overwrite."""
    key = os.urandom(KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PFError(f"{path}: already exists; not overwriting a key") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def _metadata_key(wrap_key: bytes, nonce: bytes) -> bytes:
    kdf_input = struct.pack("<I64s32sI", 1, _KDF_LABEL, nonce, 128)
    mac = CMAC(algorithms.AES(wrap_key))
    mac.update(kdf_input)
    return mac.finalize()


def _check_path(path: str) -> bytes:
    raw = path.encode("utf-8")
    if not raw or b"\0" in raw or len(raw) >= PATH_MAX:
        raise PFError(f"embedded path {path!r} must be 1..{PATH_MAX - 1} bytes without NUL")
    return raw


class _Keys:
    """Node keys and the metadata nonce: random, or derived for reproducible output."""

    def __init__(self, wrap_key: bytes, path: bytes, reproducible: bool):
        self._derive = reproducible
        if reproducible:
            self._root = hmac.digest(wrap_key, _REPRO_LABEL, "sha256")
            self._path = hashlib.sha256(path).digest()
        self._pool = b""
        self._next = 0

    def node_key(self, physical: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        if self._derive:
            msg = (
                b"node"
                + self._path
                + physical.to_bytes(8, "little")
                + hashlib.sha256(plaintext).digest()
            )
            return hmac.digest(self._root, msg, "sha256")[:KEY_SIZE]
        if self._next >= len(self._pool):
            self._pool, self._next = os.urandom(KEY_SIZE * 4096), 0
        key = self._pool[self._next : self._next + KEY_SIZE]
        self._next += KEY_SIZE
        return key

    def nonce(self, metadata_plaintext: bytes) -> bytes:
        if self._derive:
            msg = b"nonce" + self._path + hashlib.sha256(metadata_plaintext).digest()
            return hmac.digest(self._root, msg, "sha256")
        return os.urandom(NONCE_SIZE)


def _seal(key: bytes, plaintext: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    out = AESGCM(key).encrypt(_ZERO_IV, bytes(plaintext), None)
    return out[:-MAC_SIZE], out[-MAC_SIZE:]


def _open(key: bytes, ciphertext: bytes | memoryview, tag: bytes) -> bytes:
    return AESGCM(key).decrypt(_ZERO_IV, bytes(ciphertext) + tag, None)


# encrypt_into/decrypt_into (no copies) appeared in cryptography 43; Debian 12's
# python3-cryptography is 38, where the copying calls are the only ones.
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")


def _seal_into(key: bytes, plaintext: memoryview, out: memoryview) -> None:
    """AES-GCM of *plaintext* (zero IV, no AAD) into *out*: ciphertext then tag."""
    if _HAS_INTO:
        AESGCM(key).encrypt_into(_ZERO_IV, plaintext, None, out)
    else:
        out[:] = AESGCM(key).encrypt(_ZERO_IV, bytes(plaintext), None)


def _open_into(key: bytes | memoryview, sealed: bytearray | memoryview, out: memoryview) -> None:
    """Verify and decrypt *sealed* (ciphertext then tag) into *out*; InvalidTag on failure."""
    if _HAS_INTO:
        AESGCM(key).decrypt_into(_ZERO_IV, sealed, None, out)
    else:
        out[:] = AESGCM(bytes(key)).decrypt(_ZERO_IV, bytes(sealed), None)


# ------------------------------------------------------------------------------------ encrypt


class _Writer:
    """pwrite()s on a background thread, so the kernel's copy overlaps the next node's crypto.
    At most a few buffers are in flight; the first error is raised on the next call or exit."""

    _IN_FLIGHT = 4

    def __init__(self, fd: int):
        self._fd = fd
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pf-writer")
        self._futures: list[Future] = []
        # Reused group buffers: fresh large allocations cost page faults (slow on VMs). A buffer
        # is handed out again only after _IN_FLIGHT + 1 later ones, when its write has finished.
        self._ring = [bytearray(DATA_PER_MHT * NODE + MAC_SIZE) for _ in range(self._IN_FLIGHT + 2)]
        self._turn = 0

    def buffer(self) -> memoryview:
        """A group-sized buffer that no pending write still uses."""
        self._turn = (self._turn + 1) % len(self._ring)
        return memoryview(self._ring[self._turn])

    def write(self, data: bytes | memoryview, offset: int) -> None:
        while len(self._futures) >= self._IN_FLIGHT:
            self._futures.pop(0).result()
        self._futures.append(self._pool.submit(self._pwrite, data, offset))

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True)


def encrypt_stream(
    wrap_key: bytes,
    src: BinaryIO,
    size: int,
    out_fd: int,
    path: str,
    *,
    reproducible: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    """Encrypt *size* bytes read from *src* into the file open as *out_fd* (written with pwrite)."""
    if len(wrap_key) != KEY_SIZE:
        raise PFError("a wrap key is exactly 16 bytes")
    raw_path = _check_path(path)
    keys = _Keys(wrap_key, raw_path, reproducible)
    layout = Layout(size)
    reader = _ExactReader(src, size)
    md_data = reader.read(min(size, MD_DATA))
    if progress:
        progress(len(md_data))
    root_key = root_tag = bytes(KEY_SIZE)
    with _Writer(out_fd) as writer:
        if layout.data_nodes:
            root_key, root_tag = _encrypt_nodes(reader, layout, keys, writer, progress)
        reader.expect_end()
        metadata_plaintext = _MD_FIXED.pack(raw_path, size, root_key, root_tag) + md_data.ljust(
            MD_DATA, b"\0"
        )
        nonce = keys.nonce(metadata_plaintext)
        ct, tag = _seal(_metadata_key(wrap_key, nonce), metadata_plaintext)
        header = _HEADER.pack(FILE_ID, VERSION[0], VERSION[1], nonce, tag, 0)
        writer.write(header + ct + bytes(_PADDING), 0)


class _ExactReader:
    def __init__(self, src: BinaryIO, size: int):
        self._src, self._size, self._left = src, size, size

    def read(self, n: int) -> bytes:
        data = self._src.read(n)
        if len(data) != n:
            raise PFError(f"input changed while reading: shorter than {self._size} bytes")
        self._left -= n
        return data

    def read_into(self, buffer: memoryview) -> int:
        """Fill *buffer* from the input (short only at the end of input); return bytes read."""
        want = min(len(buffer), self._left)
        got = 0
        while got < want:
            n = self._src.readinto(buffer[got:want])  # type: ignore[attr-defined]  # a binary file
            if not n:
                raise PFError(f"input changed while reading: shorter than {self._size} bytes")
            got += n
        self._left -= got
        return got

    @property
    def left(self) -> int:
        return self._left

    def expect_end(self) -> None:
        if self._src.read(1):
            raise PFError(f"input changed while reading: longer than {self._size} bytes")


def _encrypt_nodes(
    reader: _ExactReader, layout: Layout, keys: _Keys, writer: _Writer, progress: ProgressFn | None
) -> tuple[bytes, bytes]:
    """Write every data and MHT node; return the root MHT node's key and tag.

    Data nodes are sealed group by group (96 per MHT node). An MHT node can only be sealed once
    its 32 child MHT nodes are, and those come later in the file, so MHT plaintexts wait in
    *pending* until their last child is done; then they are sealed bottom-up.
    """
    n_mht = layout.mht_nodes
    pending: dict[int, bytearray] = {}
    waiting: dict[int, int] = {}
    root: list[tuple[bytes, bytes]] = []

    def seal_mht(m: int) -> None:
        while True:
            plaintext = pending.pop(m)
            del waiting[m]
            key = keys.node_key(mht_node_index(m), plaintext)
            ct, tag = _seal(key, plaintext)
            writer.write(ct, mht_node_index(m) * NODE)
            if m == 0:
                root.append((key, tag))
                return
            parent = (m - 1) // CHILDREN_PER_MHT
            at = _CHILD_BASE + ((m - 1) % CHILDREN_PER_MHT) * _ENTRY
            pending[parent][at : at + _ENTRY] = key + tag
            waiting[parent] -= 1
            if waiting[parent]:
                return
            m = parent

    chunk_buffer = bytearray(DATA_PER_MHT * NODE)
    chunk = memoryview(chunk_buffer)
    for m in range(n_mht):
        mht = bytearray(NODE)
        first_child = CHILDREN_PER_MHT * m + 1
        pending[m] = mht
        waiting[m] = max(0, min(n_mht, first_child + CHILDREN_PER_MHT) - first_child)
        first = m * DATA_PER_MHT
        count = min(DATA_PER_MHT, layout.data_nodes - first)
        taken = reader.read_into(chunk[: count * NODE])
        if taken < count * NODE:
            chunk[taken : count * NODE] = bytes(count * NODE - taken)  # zero tail of last node
        # Each node is sealed straight into the output buffer; its tag lands where the next
        # node starts and is copied into the MHT entry before that node overwrites it.
        out = writer.buffer()
        for i in range(count):
            plaintext = chunk[i * NODE : (i + 1) * NODE]
            key = keys.node_key(data_node_index(first + i), plaintext)
            end = (i + 1) * NODE
            _seal_into(key, plaintext, out[i * NODE : end + MAC_SIZE])
            at = i * _ENTRY
            mht[at : at + KEY_SIZE] = key
            mht[at + KEY_SIZE : at + _ENTRY] = out[end : end + MAC_SIZE]
        writer.write(out[: count * NODE], data_node_index(first) * NODE)
        if progress:
            progress(taken)
        if waiting[m] == 0:
            seal_mht(m)
    assert not pending and root, "every MHT node must have been sealed"
    return root[0]


def encrypt_file(
    wrap_key: bytes,
    src: str | Path,
    dst: str | Path,
    path: str | None = None,
    *,
    reproducible: bool = False,
    progress: ProgressFn | None = None,
) -> None:
    """Encrypt *src* to *dst*, embedding *path* (default: *dst* as given, like pf-crypt)."""
    src, dst = Path(src), Path(dst)
    embedded = path if path is not None else str(dst)
    try:
        handle = open(src, "rb")
    except OSError as exc:
        raise PFError(f"{src}: cannot read: {exc.strerror}") from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        _atomic_output(
            dst,
            lambda fd: encrypt_stream(
                wrap_key, handle, size, fd, embedded, reproducible=reproducible, progress=progress
            ),
        )


def encrypt_bytes(
    wrap_key: bytes, data: bytes, dst: str | Path, path: str, *, reproducible: bool = False
) -> None:
    """Encrypt in-memory *data* (a generated config, a TLS key) to *dst*."""
    import io

    _atomic_output(
        Path(dst),
        lambda fd: encrypt_stream(
            wrap_key, io.BytesIO(data), len(data), fd, path, reproducible=reproducible
        ),
    )


# ------------------------------------------------------------------------------------ decrypt


@dataclass(frozen=True)
class Header:
    version: tuple[int, int]
    nonce: bytes
    tag: bytes
    flags: int
    file_size: int


@dataclass(frozen=True)
class Metadata:
    header: Header
    path: str
    size: int
    root_key: bytes
    root_tag: bytes
    data: bytes  # first min(size, 3072) bytes


def read_header(node0: bytes, file_size: int, source: str = "file") -> Header:
    if len(node0) < NODE or file_size % NODE:
        raise PFError(
            f"{source}: not a Gramine protected file (size {file_size} is not a multiple of {NODE})"
        )
    file_id, major, minor, nonce, tag, flags = _HEADER.unpack_from(node0)
    if file_id != FILE_ID:
        raise PFError(f"{source}: not a Gramine protected file (no GRAFS_PF header)")
    if (major, minor) != VERSION:
        raise PFError(
            f"{source}: protected-file format {major}.{minor} is not supported "
            f"(expected {VERSION[0]}.{VERSION[1]})"
        )
    if flags:
        raise PFError(
            f"{source}: unknown or pending-write feature flags {flags:#x}: the file "
            "was modified or not closed cleanly"
        )
    if any(node0[_HEADER.size + _ENCRYPTED_PART : NODE]):
        raise PFError(f"{source}: metadata node padding is not zero: the file was modified")
    return Header((major, minor), nonce, tag, flags, file_size)


def read_metadata(wrap_key: bytes, node0: bytes, file_size: int, source: str = "file") -> Metadata:
    header = read_header(node0, file_size, source)
    encrypted = node0[_HEADER.size : _HEADER.size + _ENCRYPTED_PART]
    try:
        plain = _open(_metadata_key(wrap_key, header.nonce), encrypted, header.tag)
    except InvalidTag:
        raise PFError(
            f"{source}: wrong wrap key, or the metadata node was modified "
            "(its GCM tag does not verify)"
        ) from None
    raw_path, size, root_key, root_tag = _MD_FIXED.unpack_from(plain)
    path = raw_path.split(b"\0", 1)[0].decode("utf-8", "replace")
    expected = Layout(size).file_size
    if expected != file_size:
        raise PFError(
            f"{source}: {file_size} bytes, but a protected file holding {size} bytes "
            f"is {expected} bytes: it was truncated or extended"
        )
    if size <= MD_DATA and (any(root_key) or any(root_tag)):
        raise PFError(f"{source}: inconsistent metadata (root node key for a small file)")
    return Metadata(header, path, size, root_key, root_tag, plain[_MD_FIXED.size :][:size])


def decrypt_stream(
    wrap_key: bytes,
    src: BinaryIO,
    file_size: int,
    out: BinaryIO,
    expected_path: str | None = None,
    source: str = "file",
    progress: ProgressFn | None = None,
) -> Metadata:
    """Verify and decrypt; raises :class:`PFError` at the first problem."""
    meta = read_metadata(wrap_key, src.read(NODE), file_size, source)
    if expected_path is not None and meta.path != expected_path:
        raise PFError(
            f"{source}: embedded path is {meta.path!r}, expected {expected_path!r} "
            "(Gramine refuses to open it under another path)"
        )
    out.write(meta.data)
    if progress:
        progress(len(meta.data))
    layout = Layout(meta.size)
    if not layout.data_nodes:
        return meta

    def node_failed(kind: str, index: int) -> PFError:
        return PFError(
            f"{source}: {kind} node {index} failed its integrity check: the file was "
            "modified (or a node was moved)"
        )

    decrypted: dict[int, bytes] = {}
    left = meta.size - MD_DATA
    block = memoryview(bytearray(NODE * (1 + DATA_PER_MHT)))  # reused: no page faults per group
    plain = memoryview(bytearray(NODE * DATA_PER_MHT))
    sealed = memoryview(bytearray(NODE + MAC_SIZE))  # one node's ciphertext + tag
    for m in range(layout.mht_nodes):
        first = m * DATA_PER_MHT
        count = min(DATA_PER_MHT, layout.data_nodes - first)
        src.seek(mht_node_index(m) * NODE)
        want = NODE * (1 + count)
        got = 0
        while got < want:
            n = src.readinto(block[got:want])  # type: ignore[attr-defined]  # a binary file
            if not n:
                raise PFError(f"{source}: truncated at node {mht_node_index(m) + got // NODE}")
            got += n
        if m == 0:
            key, tag = meta.root_key, meta.root_tag
        else:
            parent = decrypted[(m - 1) // CHILDREN_PER_MHT]
            at = _CHILD_BASE + ((m - 1) % CHILDREN_PER_MHT) * _ENTRY
            key, tag = parent[at : at + KEY_SIZE], parent[at + KEY_SIZE : at + _ENTRY]
        try:
            mht = _open(key, block[:NODE], tag)
        except InvalidTag:
            raise node_failed("MHT", mht_node_index(m)) from None
        if CHILDREN_PER_MHT * m + 1 < layout.mht_nodes:
            decrypted[m] = mht  # kept until its last child MHT node has been read
        if m and (m - 1) % CHILDREN_PER_MHT == CHILDREN_PER_MHT - 1:
            decrypted.pop((m - 1) // CHILDREN_PER_MHT, None)
        for i in range(count):
            at = i * _ENTRY
            sealed[:NODE] = block[(i + 1) * NODE : (i + 2) * NODE]
            sealed[NODE:] = mht[at + KEY_SIZE : at + _ENTRY]
            try:
                _open_into(mht[at : at + KEY_SIZE], sealed, plain[i * NODE : (i + 1) * NODE])
            except InvalidTag:
                raise node_failed("data", data_node_index(first + i)) from None
        take = min(left, count * NODE)
        out.write(plain[:take])
        left -= take
        if progress:
            progress(take)
    return meta


def decrypt_file(
    wrap_key: bytes,
    src: str | Path,
    dst: str | Path,
    expected_path: str | None = None,
    progress: ProgressFn | None = None,
) -> Metadata:
    """Decrypt *src* to *dst*; *dst* appears only if everything verified."""
    src, dst = Path(src), Path(dst)
    try:
        handle = open(src, "rb")
    except OSError as exc:
        raise PFError(f"{src}: cannot read: {exc.strerror}") from exc
    result: list[Metadata] = []
    with handle:
        size = os.fstat(handle.fileno()).st_size

        def run(fd: int) -> None:
            with os.fdopen(os.dup(fd), "wb") as out:
                result.append(
                    decrypt_stream(wrap_key, handle, size, out, expected_path, str(src), progress)
                )

        _atomic_output(dst, run, mode=0o600)
    return result[0]


def inspect_file(src: str | Path, wrap_key: bytes | None = None) -> dict:
    """Header fields (no key needed); with the wrap key also the embedded path and size."""
    src = Path(src)
    try:
        with open(src, "rb") as handle:
            node0 = handle.read(NODE)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise PFError(f"{src}: cannot read: {exc.strerror}") from exc
    header = read_header(node0, size, str(src))
    nodes = size // NODE
    info: dict = {
        "format": "GRAFS_PF",
        "version": f"{header.version[0]}.{header.version[1]}",
        "file_size": size,
        "nodes": nodes,
        "plaintext_size_range": _size_range(nodes),
        "metadata_nonce": header.nonce.hex(),
    }
    if wrap_key is not None:
        meta = read_metadata(wrap_key, node0, size, str(src))
        info.update(path=meta.path, plaintext_size=meta.size)
    return info


def _size_range(nodes: int) -> list[int]:
    """Plaintext sizes that give exactly *nodes* nodes (from the header alone)."""
    if nodes == 1:
        return [0, MD_DATA]
    lo_data: int | None = None
    hi_data = 0
    for data in range(max(1, (nodes - 1) * DATA_PER_MHT // (DATA_PER_MHT + 1) - 1), nodes):
        if 1 + -(-data // DATA_PER_MHT) + data == nodes:
            lo_data = data if lo_data is None else lo_data
            hi_data = data
    if lo_data is None:
        return []
    return [MD_DATA + (lo_data - 1) * NODE + 1, MD_DATA + hi_data * NODE]


def _atomic_output(dst: Path, write: Callable[[int], None], mode: int = 0o644) -> None:
    """Run *write(fd)* on a temp file next to *dst*; rename into place only on success."""
    directory = dst.parent if str(dst.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise PFError(f"{dst}: cannot create output: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        write(fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dst)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise
