"""Run an unpacked image's enclave under ``gramine-direct``: the real LibOS, without SGX.

The image's root filesystem is the LibOS's root (``fs.root = file:/``), so the loader must run in
a chroot of it. The launch happens in a private mount namespace (``unshare --mount
--propagation private``): ``/proc``, ``/dev`` and ``/sys`` are bind-mounted into the root there
(``/proc`` and ``/sys`` read-only), then ``chroot --userspec`` drops to the image's user and
execs ``gramine-direct /enclave/SERVICE``. Every one of those steps is an ``exec``, so the process
we start *is* the Gramine loader (signals reach it directly), and the mounts exist only in its
namespace: they vanish with it, however it ends, and the host never sees them.

``gramine-direct APP`` loads ``APP.manifest``; an image carries ``APP.manifest.sgx`` (the signed
manifest, trusted-file hashes included), which :func:`prepare_manifest` copies next to it. Since
Gramine 1.9 the LibOS enforces ``sgx.trusted_files`` and ``file_check_policy`` in direct mode too,
so a file the manifest does not trust fails with EACCES exactly as in an enclave. Not available in
direct mode: ``/dev/attestation/{quote,user_report_data}`` (only ``keys/`` exists).

Needs root (chroot, mounts) and the ``unshare``, ``mount`` and ``chroot`` tools (util-linux,
coreutils) on the host.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import EnclaveBuildError
from ..rootfs import RootFS, RootFSError

GRAMINE_DIRECT = "/usr/bin/gramine-direct"
#: the direct-mode loader gramine-direct execs (Debian package layout)
DIRECT_LOADER = "/usr/lib/x86_64-linux-gnu/gramine/direct/loader"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# (inside the root, host source, read-only, recursive)
BIND_MOUNTS = (
    ("/proc", "/proc", True, False),
    ("/dev", "/dev", False, True),
    ("/sys", "/sys", True, False),
)


class LaunchError(EnclaveBuildError):
    """The enclave cannot be started under gramine-direct."""


@dataclass(frozen=True)
class DirectLaunch:
    """What to run: *app* is the image path of the manifest without its suffix
    (``/enclave/SERVICE``); *env* is the loader's environment (the LibOS passes on only the
    variables the manifest declares ``passthrough``)."""

    root: Path
    app: str
    uid: int = 0
    gid: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()  # passed on only if the manifest allows command-line argv
    #: a cgroup directory (pids) the launch joins before anything starts
    cgroup: Path | None = None
    #: RLIMIT_AS of the loader (bytes): the enclave's address space, sgx.enclave_size
    address_space: int | None = None
    #: strace the launch's successful opens into this file (builder.run.observe)
    trace_opens: Path | None = None


def has_gramine_direct(root: Path) -> bool:
    """True if *root* holds a real gramine-direct (launcher and loader; a stand-in has neither)."""
    loader = root / DIRECT_LOADER.lstrip("/")
    try:
        with open(loader, "rb") as handle:
            is_elf = handle.read(4) == b"\x7fELF"
    except OSError:
        return False
    return is_elf and (root / GRAMINE_DIRECT.lstrip("/")).is_file()


def resolve_user(root: Path, user: str | None) -> tuple[int, int]:
    """uid and gid for an image config's ``User`` (``uid``, ``uid:gid``, ``name``,
    ``name:group``), looked up in the image's /etc/passwd and /etc/group. Empty: root."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    passwd = _table(root / "etc/passwd")
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if len(e) > 3 and e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name and len(e) > 3), None)
        if entry is None:
            raise LaunchError(f"image user {user!r}: no user {name!r} in the image's /etc/passwd")
        uid = int(entry[2])
    if group:
        if group.isdigit():
            return uid, int(group)
        found = next((e for e in _table(root / "etc/group") if e[0] == group and len(e) > 2), None)
        if found is None:
            raise LaunchError(f"image user {user!r}: no group {group!r} in the image's /etc/group")
        return uid, int(found[2])
    return uid, int(entry[3]) if entry is not None and entry[3].isdigit() else 0


def _table(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def prepare_manifest(root: Path, app: str) -> Path:
    """Copy ``APP.manifest.sgx`` to ``APP.manifest`` inside *root* (what gramine-direct loads).

    Both paths resolve inside *root*, as the LibOS in the chroot sees them: a symlink in the
    image (``APP.manifest -> /etc/...``, or a linked directory) never makes this read or write a
    file of the host. The copy replaces whatever is at ``APP.manifest`` (renamed into place)."""
    rootfs = RootFS(Path(root))
    name = posixpath.basename(app)
    try:
        inner = rootfs.resolve(posixpath.dirname(app) or "/")
    except RootFSError as exc:
        raise LaunchError(f"{app}: {exc}") from None
    directory = rootfs.host_path(inner)
    plain = directory / f"{name}.manifest"
    try:
        data = rootfs.read_bytes(posixpath.join(inner, f"{name}.manifest.sgx"))
    except RootFSError as exc:
        if plain.is_file() and not plain.is_symlink():
            return plain
        raise LaunchError(
            f"the image has no manifest for {app} (expected {app}.manifest.sgx): {exc}"
        ) from None
    tmp = directory / f".{name}.manifest.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, plain)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise LaunchError(
            f"{app}.manifest: cannot write it next to {app}.manifest.sgx: {exc.strerror or exc}"
        ) from None
    return plain


def command(launch: DirectLaunch) -> list[str]:
    """The host command line: private mount namespace, bind mounts, chroot, gramine-direct."""
    root = str(Path(launch.root).resolve())
    steps = ["set -e"]
    if launch.cgroup is not None:
        # joined first: every task of the launch (the loader's threads) is counted and limited
        steps.append(f"echo $$ > {shlex.quote(str(launch.cgroup / 'cgroup.procs'))}")
    for inner, source, read_only, recursive in BIND_MOUNTS:
        target = shlex.quote(root + inner)
        steps.append(f"mount {'--rbind' if recursive else '--bind'} {source} {target}")
        if read_only:
            steps.append(f"mount -o remount,bind,ro {target}")
    limit = ["prlimit", f"--as={launch.address_space}", "--"] if launch.address_space else []
    chroot = [
        *limit,
        "chroot",
        f"--userspec={launch.uid}:{launch.gid}",
        f"--groups={launch.gid}",
        root,
        GRAMINE_DIRECT,
        launch.app,
        *launch.args,
    ]
    steps.append("exec " + shlex.join(chroot))
    env = [f"{k}={v}" for k, v in sorted({"PATH": HOST_PATH, **launch.env}.items())]
    trace: list[str] = []
    if launch.trace_opens is not None:
        from .observe import strace_prefix

        trace = strace_prefix(launch.trace_opens)
    return [
        *trace,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "env",
        "-i",
        *env,
        "/bin/sh",
        "-c",
        "; ".join(steps),
    ]


def check(launch: DirectLaunch) -> None:
    root = Path(launch.root)
    if os.geteuid() != 0:
        raise LaunchError(
            "gramine-direct runs need root (chroot and bind mounts); run as root, "
            "or use a plain-process simulation"
        )
    if not root.is_dir():
        raise LaunchError(f"{root}: no such root filesystem directory")
    if not has_gramine_direct(root):
        raise LaunchError(
            f"{root}: no Gramine in this root filesystem ({GRAMINE_DIRECT} and "
            f"{DIRECT_LOADER} are needed; a stand-in base has neither)"
        )
    tools = ["unshare", "mount", "chroot", "env"]
    tools += ["prlimit"] if launch.address_space else []
    tools += ["strace"] if launch.trace_opens is not None else []
    for tool in tools:
        if shutil.which(tool) is None:
            raise LaunchError(f"{tool!r} not found on the host (util-linux / coreutils)")
    for inner, _source, _ro, _rec in BIND_MOUNTS:
        point = root / inner.lstrip("/")
        if point.is_symlink() or (point.exists() and not point.is_dir()):
            raise LaunchError(f"{point}: mount point is not a directory")


def start(launch: DirectLaunch, **popen: Any) -> subprocess.Popen:
    """Start the loader (a new session, so terminal signals reach it only through us).
    Extra keyword arguments go to :class:`subprocess.Popen` (stdout=..., stderr=...)."""
    check(launch)
    prepare_manifest(Path(launch.root), launch.app)
    for inner, _source, _ro, _rec in BIND_MOUNTS:
        (Path(launch.root) / inner.lstrip("/")).mkdir(exist_ok=True)
    popen.setdefault("start_new_session", True)
    return subprocess.Popen(command(launch), **popen)


def wait_forwarding(
    process: subprocess.Popen,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    group: bool = False,
) -> int:
    """Wait for *process*; SIGTERM/SIGINT sent to us become SIGTERM to it (a second one:
    SIGKILL); *group*: to its whole process group (it leads one: a tracer that ignores them
    in front of the loader). Returns its exit code (128 + N if a signal N ended it)."""
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        sig = signal.SIGKILL if len(received) > 1 else signal.SIGTERM
        try:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass

    previous = {}
    in_main = _is_main_thread()
    if in_main:
        for sig in signals:
            previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                code = process.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def run(
    launch: DirectLaunch, stdout: IO[Any] | int | None = None, stderr: IO[Any] | int | None = None
) -> int:
    """Run to completion, streaming output (inherited, unless given), forwarding SIGTERM."""
    return wait_forwarding(start(launch, stdout=stdout, stderr=stderr))


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = [
    "DirectLaunch",
    "LaunchError",
    "has_gramine_direct",
    "resolve_user",
    "prepare_manifest",
    "command",
    "start",
    "run",
    "wait_forwarding",
    "GRAMINE_DIRECT",
    "DIRECT_LOADER",
]
