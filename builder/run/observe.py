"""What a ``gramine-direct`` run used: threads, memory and the files it opened.

Under ``gramine-direct`` the LibOS is an ordinary Linux process (the direct-mode loader), so
what it uses can be read from the host:

- **threads**: a pids cgroup made for the run (:class:`PidsCgroup`) that the launch joins
  before anything starts; its ``pids.peak`` is the exact peak of tasks (every LibOS thread,
  the LibOS's own helpers included, is a host thread; under SGX each takes a TCS slot). Where
  the kernel has no ``pids.peak``, the peak of ``/proc/PID/task`` sampled every
  :data:`SAMPLE_SECONDS` is used (it can miss a short-lived thread). The same cgroup's
  ``pids.max`` enforces ``sgx.max_threads`` for ``run --enforce-limits``;
- **memory**: the loader's ``VmPeak`` (peak virtual address space: what the enclave's range,
  ``sgx.enclave_size``, must hold -- every mapping the LibOS makes for the program, reserved or
  touched, lies in it) and ``VmHWM`` (peak resident memory: what EPC pressure would be with
  EDMM), from ``/proc/PID/status``; both are kernel-kept peaks, read every sample;
- **opened files**: ``strace -f`` of the launch, ``open``/``openat``/``openat2`` that
  succeeded (:func:`opened_paths`). The LibOS opens a host file for each file the program
  opens (a trusted file is hashed at its first open), with the image path, because the loader
  runs chrooted in the image. ``/proc``/``/dev`` sampling would miss files opened and closed
  between samples, and Gramine's ``trace`` log level slows every system call.

:class:`Observation` is written as JSON (schema 1) by the run (``run --observe DIR``) after
every sample and at the end, for ``enclave-build profile`` to read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError

SAMPLE_SECONDS = 0.2
OBSERVATION_FILE = "observation.json"
OPENS_FILE = "opens.strace"
SCHEMA = 1


class ObserveError(EnclaveBuildError):
    """The run cannot be observed or limited as asked (the message says why)."""


@dataclass
class Observation:
    """What one run used (None: not measured)."""

    mode: str
    peak_threads: int | None = None
    threads_from: str = ""  # "pids.peak (exact)" or "sampled /proc/PID/task"
    peak_virtual: int | None = None  # bytes, VmPeak of the loader
    peak_resident: int | None = None  # bytes, VmHWM of the loader
    samples: int = 0
    max_threads: int | None = None  # the manifest's sgx.max_threads
    enclave_size: int | None = None  # the manifest's sgx.enclave_size
    enforced: bool = False
    exit_code: int | None = None
    opens_file: str | None = None  # strace output, if traced

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)

    def write(self, directory: Path) -> None:
        tmp = directory / f".{OBSERVATION_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, directory / OBSERVATION_FILE)

    @classmethod
    def read(cls, directory: Path) -> Observation | None:
        try:
            return cls.from_json(json.loads((directory / OBSERVATION_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


# --------------------------------------------------------------------------- pids cgroup


def _pids_hierarchy() -> Path | None:
    """Where a pids cgroup can be made: the cgroup v1 ``pids`` hierarchy's root, or a cgroup v2
    root whose subtree has the pids controller."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        pre, _, post = line.partition(" - ")
        parts, fs = pre.split(), post.split()
        if len(parts) < 5 or len(fs) < 3:
            continue
        point, fstype, options = parts[4], fs[0], fs[2]
        if fstype == "cgroup" and "pids" in options.split(","):
            return Path(point)
    for line in mounts:
        pre, _, post = line.partition(" - ")
        parts, fs = pre.split(), post.split()
        if len(parts) >= 5 and fs and fs[0] == "cgroup2":
            root = Path(parts[4])
            try:
                if "pids" in (root / "cgroup.subtree_control").read_text().split():
                    return root
            except OSError:
                continue
    return None


class PidsCgroup:
    """A pids cgroup for one run (removed by :meth:`close`); ``limit`` sets ``pids.max``."""

    def __init__(self, limit: int | None = None):
        hierarchy = _pids_hierarchy()
        if hierarchy is None:
            raise ObserveError("no pids cgroup controller is mounted here (/sys/fs/cgroup)")
        self.path = hierarchy / f"enclave-build-run-{uuid.uuid4().hex[:12]}"
        try:
            self.path.mkdir()
            if limit is not None:
                (self.path / "pids.max").write_text(f"{limit}\n")
        except OSError as exc:
            self.close()
            raise ObserveError(
                f"cannot make a pids cgroup in {hierarchy}: {exc.strerror or exc}"
            ) from None

    def peak(self) -> int | None:
        """``pids.peak`` (None where the kernel has none)."""
        try:
            return int((self.path / "pids.peak").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def refused(self) -> int:
        """How many forks/clones ``pids.max`` refused (``pids.events`` max)."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # tasks still leaving
                time.sleep(0.1)


# --------------------------------------------------------------------------- sampling


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _kib(value: str | None) -> int | None:
    if not value:
        return None
    parts = value.split()
    return int(parts[0]) * 1024 if parts and parts[0].isdigit() else None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def loader_pids(root_pid: int) -> list[int]:
    """The direct-mode loader processes at or under *root_pid* (the LibOS's processes)."""
    found, todo, seen = [], [root_pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gramine/direct/loader" in cmdline or b"gramine/direct/libpal" in cmdline:
            found.append(pid)
        todo += _children(pid)
    return found


class Sampler:
    """Samples the loader under a started process every :data:`SAMPLE_SECONDS` into
    *observation* (and *directory*, if given) until :meth:`stop`."""

    def __init__(
        self,
        root_pid: int,
        observation: Observation,
        cgroup: PidsCgroup | None,
        directory: Path | None = None,
    ):
        self.root_pid = root_pid
        self.observation = observation
        self.cgroup = cgroup
        self.directory = directory
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="run-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        obs = self.observation
        tasks = 0
        for pid in loader_pids(self.root_pid):
            status = _status(pid)
            peak, hwm = _kib(status.get("VmPeak")), _kib(status.get("VmHWM"))
            if peak is not None:
                obs.peak_virtual = max(obs.peak_virtual or 0, peak)
            if hwm is not None:
                obs.peak_resident = max(obs.peak_resident or 0, hwm)
            threads = status.get("Threads", "").strip()
            tasks += int(threads) if threads.isdigit() else 0
        exact = self.cgroup.peak() if self.cgroup is not None else None
        if exact is not None:
            obs.peak_threads, obs.threads_from = exact, "pids.peak (exact)"
        elif tasks:
            obs.peak_threads = max(obs.peak_threads or 0, tasks)
            obs.threads_from = f"sampled /proc/PID/task every {SAMPLE_SECONDS:g} s"
        obs.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                self.sample()
                if self.directory is not None:
                    self.observation.write(self.directory)

    def stop(self) -> Observation:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self.directory is not None:
                self.observation.write(self.directory)
        return self.observation


# --------------------------------------------------------------------------- opened files


def strace_available() -> bool:
    return shutil.which("strace") is not None


def strace_prefix(output: Path) -> list[str]:
    """The command that traces a launch's successful opens into *output*. ``-I 3`` (strace's
    default with ``-o``): strace itself ignores SIGTERM/SIGINT, so the run's signals go to the
    loader (the run sends them to the process group) and strace ends with it."""
    return [
        "strace",
        "-f",
        "-qq",
        "-I",
        "3",
        "--seccomp-bpf",
        "-e",
        "trace=open,openat,openat2",
        "-e",
        "signal=none",
        "-e",
        "status=successful",
        "-o",
        str(output),
        "--",
    ]


_OPEN = re.compile(r"\b(?:open|openat|openat2)\((?:[^,]*, )?\"((?:[^\"\\]|\\.)*)\"")


def opened_paths(strace_text: str) -> set[str]:
    """Absolute paths that a traced run opened successfully (a file's path as the program in
    the chroot named it: image paths)."""
    found = set()
    for line in strace_text.splitlines():
        match = _OPEN.search(line)
        if match is None or "= -1" in line:
            continue
        path = match[1].encode().decode("unicode_escape", errors="replace")
        if path.startswith("/"):
            found.add(os.path.normpath(path))
    return found


# --------------------------------------------------------------------------- trusted files

TRUSTED_FILE = "trusted.json"
_MERGED = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def package_owners(root: Path) -> dict[str, str]:
    """Image path -> the Debian package that installed it, from the image's
    ``/var/lib/dpkg/info/*.list`` (``/lib/...`` also as ``/usr/lib/...``: merged /usr)."""
    owners: dict[str, str] = {}
    info = root / "var/lib/dpkg/info"
    try:
        lists = sorted(info.glob("*.list"))
    except OSError:
        return owners
    for listing in lists:
        package = listing.name[: -len(".list")].split(":", 1)[0]
        try:
            text = listing.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if not line.startswith("/"):
                continue
            owners.setdefault(line, package)
            if line.startswith(_MERGED):
                owners.setdefault("/usr" + line, package)
    return owners


def write_trusted(directory: Path, trusted: list[str], root: Path) -> None:
    """``trusted.json``: every trusted file (image path) with its Debian package (None when
    no package installed it: the service's own files, pip-installed ones)."""
    owners = package_owners(root)
    data = {"schema": SCHEMA, "trusted": {p: owners.get(p) for p in sorted(trusted)}}
    (directory / TRUSTED_FILE).write_text(json.dumps(data, indent=0) + "\n")


__all__ = [
    "package_owners",
    "write_trusted",
    "TRUSTED_FILE",
    "Observation",
    "ObserveError",
    "PidsCgroup",
    "Sampler",
    "loader_pids",
    "opened_paths",
    "strace_prefix",
    "strace_available",
    "OBSERVATION_FILE",
    "OPENS_FILE",
]
