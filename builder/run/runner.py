"""`enclave-build run BUILD_DIR --simulate`: run a built image here, without SGX.

SIMULATION ONLY. Nothing is attested: the quotes come from a simulated quoter signing with a
synthetic test PKI, which a secret server accepts only when told to trust that PKI's root.

Before anything starts, the image is checked as `enclave-build inspect` checks it
(:func:`builder.image.inspect.inspect_opened`): labels, measurements.json and the SIGSTRUCT
agree, MRENCLAVE re-derived from the image's own manifest and libpal.so is the one signed, every
trusted file hashes to the manifest's value, and nothing untrusted lies on the server's
PYTHONPATH. Any disagreement refuses the run (exit 1), naming what differs.

Nothing starts when this machine cannot run it (:func:`check_before_start`): a port the
service listens on is in use (exit 1, naming the spec key that set it), or, for a plain
process, a runtime of the model server is not installed here (exit 2, with the install line).

The image is unpacked once into the cache. Then:

- **gramine-direct** when the root holds a real Gramine and we are root: the enclave's own
  manifest runs under the real LibOS, in a chroot of a private, writable view of the image with
  the layers' owners and modes restored (builder.run.rootfs), as the image's user
  (builder.run.gramine_direct). The LibOS enforces the trusted files; attestation is simulated.
- **plain process** otherwise, for Python-server images: the host's Python runs the manifest's
  argv (``python -m enclave_build.model_server --config ...``) in a fresh root holding only the files Gramine
  would let the enclave open (builder.run.view), with ``ENCLAVE_BUILD_ROOT`` = that root (the
  server maps image paths under it) and ``PYTHONPATH`` = the manifest's PYTHONPATH mapped under
  it. Frameworks that run a binary (tfserving, ovms) cannot run this way: exit 2.

In both modes a :class:`attestation.simulated_quoter.SimulatedQuoter` serves quotes on
127.0.0.1 (``ENCLAVE_BUILD_SIMULATED_QUOTER=HOST:PORT`` names it) for the identity re-derived
from what runs: the MRENCLAVE measured from the image's manifest and libpal.so, and the
signer, ISV ids and debug flag of its verified SIGSTRUCT.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from enclave_build.attestation.measurements import Measurements, MeasurementsError
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.names import LISTEN_ENV, MEASUREMENTS_FILE, ROOT_ENV
from enclave_build.contract.names import SIMULATED_QUOTER_ENV as QUOTER_ENV

from ..base_kind import standin_base
from ..build_dir import build_output
from ..cache import cache_root
from ..errors import EnclaveBuildError, UsageError
from ..image.blob_cache import BlobCache
from ..image.oci import Image
from ..image.verify import EnclaveVerification, python_path
from ..rootfs import RootFS
from ..trim import Trim
from . import gramine_direct
from .failures import EXPLAINED, Limits, explain, report_lines
from .gramine_direct import DirectLaunch, resolve_user, wait_forwarding
from .observe import (
    OPENS_FILE,
    Observation,
    ObserveError,
    PidsCgroup,
    Sampler,
    strace_available,
    write_trusted,
)
from .rootfs import apply_ownership, image_ownership, private_root
from .view import enclave_view

BANNER = (
    "SIMULATION: not an SGX enclave; nothing here is attested. Quotes come from a "
    "simulated quoter signed by a SYNTHETIC test PKI; a secret server accepts them only "
    "if configured to trust that PKI's root. Never use this for real secrets."
)
_PYTHON = re.compile(r"python(3(\.\d+)?)?")


class RunError(EnclaveBuildError):
    """The build cannot be run (missing outputs, unreadable image, no way to start it)."""


class CannotSimulate(UsageError):
    """This build cannot run in this simulation mode (exit code 2)."""


@dataclass
class RunOptions:
    pki: Path | None = None  # synthetic PKI directory (default: in the cache)
    env: Mapping[str, str] = field(default_factory=dict)
    mode: str = "auto"  # "auto", "gramine-direct" or "process"
    stdout: IO[Any] | int | None = None
    stderr: IO[Any] | int | None = None
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    started: Callable[[subprocess.Popen], None] | None = None  # called with the process
    #: plain process: serve on the image's wildcard addresses instead of 127.0.0.1
    listen_all: bool = False
    #: gramine-direct: hold the service to the enclave's own limits (sgx.max_threads as a pids
    #: cgroup limit, sgx.enclave_size as its address-space limit), as SGX would
    enforce_limits: bool = False
    #: write what the run used (builder.run.observe) into this directory
    observe: Path | None = None


@dataclass
class Build:
    directory: Path
    image: Image
    measurements: Measurements
    app: str  # /enclave/SERVICE
    manifest: dict[str, Any]  # the parsed SERVICE.manifest.sgx
    user: str | None  # the image config's User
    ownership: list[Any]  # builder.run.rootfs entries to restore
    #: the image's files checked against its SIGSTRUCT (they agree, or there is no Build)
    verification: EnclaveVerification

    @property
    def quoted(self) -> Measurements:
        """The identity the simulated quoter vouches for: re-derived from what runs (the
        image's manifest and libpal.so measured here; signer, ISV ids and debug from its
        verified SIGSTRUCT), not read from measurements.json."""
        identity = self.verification.identity
        if (
            identity is None
            or not identity.agrees
            or identity.mr_enclave is None
            or identity.sigstruct is None
        ):
            raise RunError(
                f"{self.directory}: the image's identity was not verified; no "
                "quotes are made for it"
            )
        sig = identity.sigstruct
        return dataclasses.replace(
            self.measurements,
            identity=EnclaveIdentity(
                identity.mr_enclave,
                sig["mr_signer"],
                sig["isv_prod_id"],
                sig["isv_svn"],
                sig["debug"],
            ),
        )


def parse_env(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def open_build(
    directory: str | Path, log: Callable[[str], None] | None = None
) -> tuple[Build, Path]:
    """Check BUILD_DIR's outputs (a project directory: its build in out/; UsageError when it
    holds no build), read the image, and verify it (as `inspect` does; RunError naming every
    disagreement); returns the build and the cached unpacked root filesystem (*log*: where
    cache pruning and the project note report; default stderr)."""
    # A build output, or a project directory with its build in out/ (UsageError, exit 2,
    # for anything else).
    directory = build_output(directory, log=log)
    with BlobCache(cache_root()).in_use():  # no prune removes a blob while it is read
        return _open_verified(directory, log)


def _open_verified(directory: Path, log: Callable[[str], None] | None) -> tuple[Build, Path]:
    from ..image.inspect import inspect_opened, open_image

    try:
        image, measurements = open_image(str(directory))
    except MeasurementsError as exc:
        raise RunError(f"{directory / MEASUREMENTS_FILE}: {exc}") from None
    assert measurements is not None
    if measurements.libos != "gramine":
        raise RunError(
            f"{directory}: built with libos = {measurements.libos!r}; `run "
            "--simulate` runs Gramine builds only (there is no Occlum runtime "
            "here). Run an Occlum "
            "image with its own runtime on an SGX machine: docker run --device "
            "/dev/sgx_enclave --device /dev/sgx_provision IMAGE"
        )
    # Reading the layers' owners and unpacking both decompress every layer: do them together.
    with ThreadPoolExecutor(1) as pool:
        ownership = pool.submit(image_ownership, image)
        result = inspect_opened(str(directory), image, measurements, log=log)
        owners = ownership.result()
    verification = result.verification
    if not result.agrees or verification is None or verification.manifest is None:
        raise RunError(
            f"{directory}: the image is not what its identity says "
            "(measurements.json, labels, SIGSTRUCT and the image's own manifest, "
            "libpal.so and trusted files must agree); not starting (run `enclave-build "
            "inspect` on it, or rebuild):\n  - " + "\n  - ".join(result.problems)
        )
    config = image.config.get("config") or {}
    build = Build(
        directory,
        image,
        measurements,
        verification.app,
        verification.manifest,
        config.get("User") or None,
        owners,
        verification,
    )
    return build, verification.rootfs.root


def choose_mode(build: Build, root: Path, requested: str = "auto") -> str:
    """'gramine-direct' or 'process', or CannotSimulate saying why neither works."""
    real = gramine_direct.has_gramine_direct(root)
    if not real:
        standin = standin_base(RootFS(root, str(build.directory)))
        missing = (
            "the image was built on a STAND-IN base (`enclave-build base standin`: "
            "placeholder binaries, no Gramine to run)"
            if standin is not None
            else f"the image has no real Gramine ({gramine_direct.DIRECT_LOADER})"
        )
    if requested == "gramine-direct" or (requested == "auto" and real and os.geteuid() == 0):
        if not real:
            raise CannotSimulate(
                f"{build.directory}: {missing}. Rebuild with a real base, e.g. --base "
                "dir:ROOTFS from `enclave-build base gramine ROOTFS` (root)"
            )
        if os.geteuid() != 0:
            raise CannotSimulate("gramine-direct runs need root (chroot and bind mounts)")
        return "gramine-direct"
    entry = str(build.manifest.get("libos", {}).get("entrypoint", ""))
    if not _PYTHON.fullmatch(entry.rsplit("/", 1)[-1]):
        why = missing if not real else "gramine-direct needs root"
        raise CannotSimulate(
            f"{build.measurements.framework!r} runs a binary ({entry}), not our Python model "
            f"server, so it cannot run as a plain process here, and {why}. Simulate it under "
            "gramine-direct: build on a real Gramine base (`enclave-build base gramine ROOTFS` as "
            "root, then --base dir:ROOTFS) and run as root."
        )
    return "process"


def _loader_env(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict((manifest.get("loader") or {}).get("env") or {})


def process_command(
    build: Build, root: Path, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and cwd of a plain-process run of the manifest's Python argv in
    *root* (the run's view of the image): the manifest's PYTHONPATH, mapped under *root*, is
    the only one (none if the manifest sets none, as in the enclave)."""
    argv = list((build.manifest.get("loader") or {}).get("argv") or [])
    if not argv:
        raise RunError(f"{build.app}.manifest.sgx has no loader.argv")
    manifest_env = _loader_env(build.manifest)
    out_env = dict(os.environ)
    out_env.pop("PYTHONPATH", None)
    for name, value in manifest_env.items():
        # plain values only; LD_LIBRARY_PATH names Gramine's C library, not the host's
        if isinstance(value, str) and name not in (
            "LD_LIBRARY_PATH",
            "LD_PRELOAD",
            "PYTHONPATH",
            "HOME",
            "PATH",
        ):
            out_env[name] = value
    out_env.update(env)
    out_env[ROOT_ENV] = str(root)
    pythonpath = [str(_under(root, p)) for p in python_path(build.manifest) if _under(root, p)]
    if pythonpath:
        out_env["PYTHONPATH"] = ":".join(pythonpath)
    else:
        out_env.pop("PYTHONPATH", None)
    out_env["PYTHONDONTWRITEBYTECODE"] = "1"
    start_dir = str((build.manifest.get("fs") or {}).get("start_dir") or "/")
    cwd = _under(root, start_dir) or root
    return [sys.executable, *argv[1:]], out_env, cwd if cwd.is_dir() else root


def _under(root: Path, image_path: str) -> Path | None:
    """*image_path* inside *root* (None for a relative path or one with '..')."""
    if not image_path.startswith("/") or ".." in image_path.split("/"):
        return None
    return root / posixpath.normpath(image_path).lstrip("/")


def _pki(directory: Path | None, log: Callable[[str], None]):
    from enclave_build.attestation.synthetic import PKIError, SyntheticPKI

    try:
        if directory is not None:
            return SyntheticPKI.load(directory), Path(directory)
        default = cache_root() / "simulated-pki"
        if (default / "root.pem").is_file():
            return SyntheticPKI.load(default), default
        pki = SyntheticPKI()
        pki.save(default)
        log(
            f"run: created a synthetic test PKI in {default} (a secret server must set "
            f'root_ca = "{default / "root.pem"}" to accept its quotes)'
        )
        return pki, default
    except PKIError as exc:
        raise RunError(str(exc)) from None


def _check_encrypted_files(
    build: Build, root: Path, uid: int, gid: int, log: Callable[[str], None]
) -> None:
    """Warn about encrypted-mount files the runtime user cannot open read-write (Gramine opens
    them O_RDWR; the run will fail on them, as it would in a real container)."""
    if uid == 0:
        return
    bad = []
    for mount in (build.manifest.get("fs") or {}).get("mounts") or []:
        if not isinstance(mount, dict) or mount.get("type") != "encrypted":
            continue
        uri = str(mount.get("uri", ""))
        host = root / uri.removeprefix("file:").lstrip("/")
        paths = (
            [host]
            if host.is_file()
            else [p for p in host.rglob("*") if p.is_file()]
            if host.is_dir()
            else []
        )
        for path in paths:
            st = path.stat()
            ok = (
                (st.st_uid == uid and st.st_mode & 0o600 == 0o600)
                or (st.st_gid == gid and st.st_mode & 0o060 == 0o060)
                or st.st_mode & 0o006 == 0o006
            )
            if not ok:
                bad.append(f"/{path.relative_to(root)}")
    if bad:
        log(
            f"run: warning: the image user ({uid}:{gid}) cannot open these encrypted files "
            f"read-write, and Gramine opens them read-write: {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}"
        )


def build_trim(directory: Path) -> Trim:
    """The build's ``[enclave] trim`` (service.json; none for a build that predates it)."""
    from enclave_build.contract.names import SERVICE_FILE
    from enclave_build.contract.service_info import ServiceInfo

    try:
        return Trim.of(ServiceInfo.load(directory / SERVICE_FILE).trim)
    except Exception:  # noqa: BLE001 - an older build: no trim to explain
        return Trim()


def secret_server_hint(directory: Path, timeout: float = 1.0) -> str | None:
    """After a failed run: a hint when nothing answers at the secret server the build fetches
    its keys from (service.json) -- the enclave stopped at start-up with "cannot reach the
    secret server" -- naming ``enclave-build dev``, which starts one. None when it answers, or
    there are no keys."""
    import socket

    from enclave_build.contract.names import SERVICE_FILE
    from enclave_build.contract.service_info import ServiceInfo

    try:
        info = ServiceInfo.load(directory / SERVICE_FILE)
    except Exception:  # noqa: BLE001 - an older build: no hint, the run goes on
        return None
    if not info.keys or not info.secret_server:
        return None
    host, _, port = info.secret_server.rpartition(":")
    host = host.strip("[]")
    if host in ("localhost", "127.0.0.1", "::1"):
        # Whether something listens, without connecting to it (a connection that says
        # nothing would be a refused client in the secret server's audit log).
        family = socket.AF_INET6 if host == "::1" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("::1" if host == "::1" else "127.0.0.1", int(port)))
            except OSError:
                return None  # in use: something listens there
        reason = "Connection refused"
    else:
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
    import shlex

    project = directory.resolve().parent
    words = ["enclave-build", "dev", str(project if (project / "spec.toml").is_file() else "SPEC")]
    if directory.resolve() != project / "out" or words[2] == "SPEC":
        words += ["--output", str(directory)]
    return (
        f"run: nothing answers at {info.secret_server} ({reason}), the secret server "
        f"this enclave gets its keys {', '.join(info.keys)} from. Start one (`enclave-build "
        "secrets config "
        f"{directory} ... --out secrets.toml`, then `enclave-build secrets serve --config "
        f"secrets.toml`), or let `{shlex.join(words)}` start it and the run (with the "
        "--base the build had, if any)"
    )


def check_before_start(build: Build, root: Path, mode: str, listen_all: bool = False) -> None:
    """Refuse to start what could not run here: a runtime this Python lacks for a plain
    process (CannotSimulate, exit 2, with the install line), a port in use (RunError, naming
    the spec key; ports are measured). Nothing has started yet: no quoter, no key request."""
    from .preflight import check_host

    process = mode == "process"
    host = "127.0.0.1" if process and not listen_all else "0.0.0.0"
    checks = check_host(build.directory, root, process=process, host=host)
    if checks.runtimes:
        raise CannotSimulate("not started: " + "\nnot started: ".join(checks.runtimes))
    if checks.ports:
        raise RunError("not started: " + "\nnot started: ".join(checks.ports))


#: Lines of the service's output kept for explaining a failure.
WATCH_LINES = 4000


class OutputWatch:
    """The service's stdout and stderr passed through to where they would have gone (this
    process's own, by default) while the last :data:`WATCH_LINES` lines are kept for
    :func:`builder.run.failures.explain`. Destinations given as files or descriptors are
    passed to the process as they are (nothing kept)."""

    def __init__(self, stdout: IO[Any] | int | None, stderr: IO[Any] | int | None):
        self.targets = (stdout, stderr)
        self.lines: deque[str] = deque(maxlen=WATCH_LINES)
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def streams(self) -> tuple[Any, Any]:
        return tuple(subprocess.PIPE if t is None else t for t in self.targets)  # type: ignore[return-value]

    def attach(self, process: subprocess.Popen) -> None:
        pipes = ((process.stdout, sys.stdout), (process.stderr, sys.stderr))
        for (pipe, target), given in zip(pipes, self.targets, strict=True):
            if pipe is None or given is not None:  # the caller's own destination
                continue
            thread = threading.Thread(target=self._pump, args=(pipe, target), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _pump(self, pipe: IO[bytes], target: IO[str]) -> None:
        out = getattr(target, "buffer", None)
        for raw in iter(pipe.readline, b""):
            try:
                if out is not None:
                    out.write(raw)
                    out.flush()
                else:
                    target.write(raw.decode(errors="replace"))
                    target.flush()
            except (OSError, ValueError):
                pass
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        pipe.close()

    def join(self, timeout: float = 10.0) -> None:
        for thread in self.threads:
            thread.join(timeout)


def _observation_setup(
    options: RunOptions, limits: Limits, log: Callable[[str], None]
) -> tuple[PidsCgroup | None, Path | None]:
    """The pids cgroup (for --enforce-limits or --observe) and the strace output (--observe)
    of a gramine-direct launch. Enforcing needs the cgroup (RunError without one); observing
    falls back to sampling /proc without it, and to no file list without strace."""
    cgroup = None
    if options.enforce_limits or options.observe is not None:
        try:
            cgroup = PidsCgroup(limits.max_threads if options.enforce_limits else None)
        except ObserveError as exc:
            if options.enforce_limits:
                raise RunError(f"--enforce-limits: {exc}") from None
            log(f"run: {exc}; threads are sampled from /proc instead (may miss short-lived ones)")
    if options.enforce_limits:
        log(
            f"run: enforcing the enclave's limits: sgx.max_threads = {limits.max_threads} "
            f"(pids cgroup), sgx.enclave_size = {limits.enclave_size} bytes (address space)"
        )
    trace = None
    if options.observe is not None:
        options.observe.mkdir(parents=True, exist_ok=True)
        if strace_available():
            trace = options.observe / OPENS_FILE
        else:
            log("run: strace is not installed: the files the service opens are not recorded")
    return cgroup, trace


def run_build(directory: str | Path, options: RunOptions | None = None) -> int:
    """Run the build in BUILD_DIR (simulation); returns the service's exit code."""
    from enclave_build.attestation.simulated_quoter import QuoterError, SimulatedQuoter

    options = options or RunOptions()
    log = options.log
    build, cached = open_build(directory, log)
    mode = choose_mode(build, cached, options.mode)
    check_before_start(build, cached, mode, options.listen_all)
    pki, pki_dir = _pki(options.pki, log)
    log(BANNER)
    quoted = build.quoted
    view = private_root(cached) if mode == "gramine-direct" else enclave_view(build.verification)
    with view as root:
        if mode == "gramine-direct":
            apply_ownership(root, build.ownership)
            uid, gid = resolve_user(root, build.user)
        else:
            uid, gid = os.getuid(), os.getgid()
        quoter = SimulatedQuoter(pki, quoted)
        try:
            host, port = quoter.start()
        except QuoterError as exc:
            raise RunError(str(exc)) from None
        limits = Limits.from_manifest(build.manifest, options.enforce_limits)
        watch = OutputWatch(options.stdout, options.stderr)
        out_stream, err_stream = watch.streams()
        cgroup: PidsCgroup | None = None
        trace: Path | None = None
        try:
            env = {**options.env, QUOTER_ENV: f"{host}:{port}"}
            log(
                f"run: {build.measurements.service} ({build.measurements.framework}), mode "
                f"{mode}, mr_enclave {quoted.mr_enclave} (re-derived from the image's manifest "
                f"and libpal.so; {len(build.verification.trusted)} trusted files checked), "
                f"quoter {host}:{port}, PKI {pki_dir}"
            )
            if mode == "gramine-direct":
                declared = _loader_env(build.manifest)
                for name in options.env:
                    value = declared.get(name)
                    if not (isinstance(value, dict) and value.get("passthrough")):
                        log(
                            f"run: warning: the manifest does not pass {name} through "
                            f"(loader.env.{name} = {{ passthrough = true }}); the enclave will "
                            "not see it"
                        )
                _check_encrypted_files(build, root, uid, gid, log)
                cgroup, trace = _observation_setup(options, limits, log)
                if options.observe is not None:
                    write_trusted(options.observe, list(build.verification.trusted), root)
                process = gramine_direct.start(
                    DirectLaunch(
                        root,
                        build.app,
                        uid,
                        gid,
                        env,
                        cgroup=cgroup.path if cgroup is not None else None,
                        address_space=limits.enclave_size if options.enforce_limits else None,
                        trace_opens=trace,
                    ),
                    stdout=out_stream,
                    stderr=err_stream,
                )
            else:
                argv, full_env, cwd = process_command(build, root, env)
                if not options.listen_all:
                    full_env[LISTEN_ENV] = "127.0.0.1"
                    log(
                        f"run: plain process: {build.measurements.service} listens on 127.0.0.1 "
                        "only (--listen-all for the image's addresses)"
                    )
                if options.enforce_limits:
                    log(
                        "run: warning: --enforce-limits applies under gramine-direct only; a "
                        "plain process is held to no enclave limit"
                    )
                process = subprocess.Popen(
                    argv,
                    env=full_env,
                    cwd=cwd,
                    stdout=out_stream,
                    stderr=err_stream,
                    start_new_session=True,
                )
            watch.attach(process)
            if options.started is not None:
                options.started(process)
            observation = Observation(
                mode,
                max_threads=limits.max_threads,
                enclave_size=limits.enclave_size,
                enforced=options.enforce_limits and mode == "gramine-direct",
                opens_file=str(trace) if trace is not None else None,
            )
            sampler = (
                Sampler(process.pid, observation, cgroup, options.observe).start()
                if options.observe is not None or cgroup is not None
                else None
            )
            code = wait_forwarding(process, group=trace is not None)
            watch.join()
            if sampler is not None:
                observation.exit_code = code
                sampler.stop()
            if code not in (0, 128 + 2, 128 + 15):  # not a clean stop, nor SIGINT/SIGTERM
                refused = cgroup.refused() if cgroup is not None else None
                explained = explain(
                    watch.lines,
                    limits if mode == "gramine-direct" else Limits(),
                    code,
                    threads_refused=refused,
                    trim=build_trim(build.directory),
                    root=root if mode == "gramine-direct" else None,
                )
                if explained:
                    log(f"run: the service exited with status {code}; {EXPLAINED}")
                    for line in report_lines(explained, "run: "):
                        log(line)
                hint = secret_server_hint(build.directory)
                if hint:
                    log(hint)
            return code
        finally:
            quoter.stop()
            if cgroup is not None:
                cgroup.close()


__all__ = [
    "run_build",
    "RunOptions",
    "RunError",
    "CannotSimulate",
    "open_build",
    "choose_mode",
    "check_before_start",
    "process_command",
    "parse_env",
    "BANNER",
    "QUOTER_ENV",
    "ROOT_ENV",
    "LISTEN_ENV",
]
