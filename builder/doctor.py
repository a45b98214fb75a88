"""``enclave-build doctor``: what this machine can do, and how to fix what it cannot.

:func:`diagnose` runs every check and returns a :class:`Report`. Each check has a stable
``id``, a ``status`` (``ok``, ``missing`` or ``warn``), a one-line ``detail`` of what was found
and, unless ok, a ``fix``. The probes (Docker, files, imports, HTTP) go through a
:class:`Probes` object so tests replace them; nothing on the network is contacted unless
configured: the Docker engine ``DOCKER_HOST`` (or the local socket) names, the PCCS that
``PCCS_URL`` or ``/etc/sgx_default_qcnl.conf`` names (one GET, bounded timeout), and the base
given with ``--base``.

JSON (``doctor --json``, schema 1)::

    {"schema": 1,
     "ok": true | false,                # no check is "missing"
     "counts": {"ok": N, "missing": N, "warn": N},
     "checks": [{"id": "docker.engine", "title": "Docker engine",
                 "status": "ok" | "missing" | "warn",
                 "detail": "...", "fix": "..." | null}, ...]}

Check ids, in this order: ``docker.engine``, ``registry.credentials``, ``sgx.enclave_device``,
``sgx.provision_device``, ``sgx.aesmd``, ``sgx.pccs``, ``gramine.base`` (only with
``base``), ``realbase.mmdebstrap``, ``realbase.gramine_archive``, ``runtime.ai_edge_litert``,
``runtime.openvino``, ``runtime.grpc``, ``runtime.httptools``. New checks may be added; ids
and keys do not change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave_build.model_server.runtimes import (
    install_command,
    serve_install_command,
    serve_requirements,
)

if TYPE_CHECKING:
    from enclave_build.contract.standin_base import StandInBase

    from .gramine.runtime import GramineRuntime

SCHEMA_VERSION = 1
OK, MISSING, WARN = "ok", "missing", "warn"
SGX_ENCLAVE = "/dev/sgx_enclave"
SGX_PROVISION = "/dev/sgx_provision"
SGX_LEGACY = "/dev/isgx"
AESMD_SOCKET = "/var/run/aesmd/aesm.socket"
QCNL_CONF = "/etc/sgx_default_qcnl.conf"
PCCS_TIMEOUT = 5.0
DOCKER_TIMEOUT = 5
#: Where a checkout keeps a local Gramine 1.9 build, relative to the checkout's parent (the
#: development layout); an installed enclave-build has no checkout, and looks only at
#: $GRAMINE_ARCHIVE.
CHECKOUT_ARCHIVE = Path("shared") / "gramine" / "gramine-1.9-debian12-x86_64.tar.gz"
_NO_ENGINE = (
    "or build without an engine: --base dir:ROOTFS, oci:DIR, oci-archive:FILE or "
    "docker://REGISTRY/NAME:TAG"
)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    status: str
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != MISSING for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, MISSING, WARN)}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "ok": self.ok,
            "counts": self.counts(),
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True)
class BaseGramine:
    """What :meth:`Probes.gramine_in_base` finds in a base."""

    runtime: GramineRuntime
    direct: bool  # a real gramine-direct (launcher and loader)
    standin: StandInBase | None  # the stand-in's marker, if the base is one


class Probes:
    """How the checks look at the machine (replaced in tests)."""

    def checkout(self) -> Path | None:
        """The checkout enclave-build runs from (its pyproject.toml beside builder/), None
        for an installed copy (site-packages, pipx)."""
        root = Path(__file__).resolve().parent.parent
        if (root / "pyproject.toml").is_file() and (root / "builder" / "doctor.py").is_file():
            return root
        return None

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def euid(self) -> int:
        return os.geteuid()

    def kernel(self) -> str:
        return os.uname().release

    def path_kind(self, path: str | Path) -> str | None:
        """ "char", "socket", "file", "dir", "other", or None when absent."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None
        for kind, test in (
            ("char", stat.S_ISCHR),
            ("socket", stat.S_ISSOCK),
            ("file", stat.S_ISREG),
            ("dir", stat.S_ISDIR),
        ):
            if test(mode):
                return kind
        return "other"

    def read_text(self, path: str | Path) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def docker_version(self) -> str:
        """The engine's version; raises with the reason when it cannot be reached."""
        import docker

        client = docker.from_env(timeout=DOCKER_TIMEOUT)
        try:
            client.ping()
            return str(client.version().get("Version", "?"))
        finally:
            client.close()

    def docker_config(self) -> tuple[str | None, dict[str, Any]]:
        """(path of the Docker config file or None, its auths/credHelpers/credsStore)."""
        import docker.auth
        from docker.utils.config import find_config_file

        path = find_config_file()
        config = docker.auth.load_config(path) if path else {}
        return (str(path) if path else None), {
            "auths": sorted(getattr(config, "auths", {}) or {}),
            "credHelpers": dict(getattr(config, "cred_helpers", {}) or {}),
            "credsStore": getattr(config, "creds_store", None),
        }

    def http_status(self, url: str, timeout: float) -> int:
        """The HTTP status of one GET (HTTPError statuses returned, not raised)."""
        request = urllib.request.Request(url, headers={"User-Agent": "enclave-build doctor"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except urllib.error.URLError as exc:
            import ssl

            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise exc.reason from None  # reachable, but not trusted
            raise

    def import_version(self, module: str) -> str:
        """Import *module*; its version (or "?"). Raises when it cannot be imported."""
        import importlib

        mod = importlib.import_module(module)
        return str(getattr(mod, "__version__", "?"))

    def gramine_in_base(self, ref: str) -> BaseGramine:
        """The Gramine found in base *ref*, whether it has a real gramine-direct, and whether
        the base is a stand-in."""
        from .base_kind import standin_base
        from .errors import UsageError
        from .gramine.runtime import discover
        from .image.reference import parse_source
        from .image.sources import open_base
        from .rootfs import RootFS

        source = parse_source(ref)
        if source.transport == "dir":
            # The root filesystem open_base would read, without making its image layer (a tar
            # of the whole tree in the blob cache) that only a build needs.
            root = Path(source.location).resolve()
            if not root.is_dir():
                raise UsageError(f"{ref}: root filesystem directory not found")
            rootfs = RootFS(root, ref)
        else:
            rootfs = open_base(ref).rootfs
        from .run.gramine_direct import has_gramine_direct

        return BaseGramine(
            discover(rootfs), has_gramine_direct(Path(rootfs.root)), standin_base(rootfs)
        )


# --------------------------------------------------------------------------- checks


def _docker_engine(p: Probes) -> Check:
    title = "Docker engine"
    host = p.env("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        version = p.docker_version()
    except ImportError:
        return Check(
            "docker.engine",
            title,
            MISSING,
            "the docker SDK (Python) is not installed",
            "pip install docker (a dependency of enclave-build)",
        )
    except Exception as exc:  # noqa: BLE001 - the SDK raises DockerException, requests' and OS errors
        reason = _first_line(exc)
        if p.env("DOCKER_HOST") is None and p.path_kind("/var/run/docker.sock") is None:
            reason = "/var/run/docker.sock does not exist (no engine running)"
        if p.which("dockerd") is None and p.which("docker") is None:
            fix = "install it (`apt-get install docker.io`) and start dockerd, " + _NO_ENGINE
        else:
            fix = (
                "start dockerd (`systemctl start docker`, or `dockerd &` as root) or point "
                "DOCKER_HOST at a running engine, " + _NO_ENGINE
            )
        return Check("docker.engine", title, MISSING, f"not reachable at {host}: {reason}", fix)
    return Check(
        "docker.engine",
        title,
        OK,
        f"Docker {version} at {host} (docker-daemon: bases, --load, base build)",
    )


def _registry_credentials(p: Probes) -> Check:
    title = "registry credentials"
    fix = (
        "`docker login REGISTRY` (needed only for private registries and --push; public "
        "pulls work without)"
    )
    try:
        path, config = p.docker_config()
    except Exception as exc:  # noqa: BLE001 - a broken config file, whatever its parser raises
        return Check(
            "registry.credentials",
            title,
            WARN,
            f"the Docker config cannot be read: {_first_line(exc)}",
            "fix or remove the file ($DOCKER_CONFIG/config.json or ~/.docker/config.json)",
        )
    # Optional: public pulls and registries without auth need none, so absent is a warning.
    if path is None:
        return Check(
            "registry.credentials",
            title,
            WARN,
            "no Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json)",
            fix,
        )
    found = list(config.get("auths") or [])
    broken: list[str] = []
    helpers = dict(config.get("credHelpers") or {})
    store = config.get("credsStore")
    for host, helper in sorted(helpers.items()):
        (found if p.which(f"docker-credential-{helper}") else broken).append(
            f"{host} (helper {helper})"
        )
    if store:
        (found if p.which(f"docker-credential-{store}") else broken).append(f"credsStore {store}")
    if broken:
        return Check(
            "registry.credentials",
            title,
            WARN,
            f"{path}: helper program not found for {', '.join(broken)}"
            + (f"; usable: {', '.join(found)}" if found else ""),
            "install the docker-credential-NAME helper on PATH, or remove it from the "
            "config and `docker login` again",
        )
    if not found:
        return Check("registry.credentials", title, WARN, f"{path} holds no credentials", fix)
    return Check("registry.credentials", title, OK, f"{path}: {', '.join(found)}")


def _sgx_device(p: Probes, path: str, check_id: str, use: str) -> Check:
    title = f"SGX device {path}"
    kind = p.path_kind(path)
    if kind == "char":
        return Check(check_id, title, OK, f"present ({use})")
    legacy = p.path_kind(SGX_LEGACY) == "char"
    detail = ("absent" if kind is None else f"is a {kind}, not a character device") + (
        f"; only the legacy out-of-tree driver's {SGX_LEGACY} is present" if legacy else ""
    )
    return Check(
        check_id,
        title,
        MISSING,
        f"{detail} ({use})",
        "needs SGX hardware with SGX enabled in the firmware and an SGX-enabled kernel "
        f"(Linux >= 5.11, in-tree driver; this one is {p.kernel()}) or Intel's DCAP "
        "driver; in a container pass --device " + path + ". Without it: build here "
        "and test with `enclave-build run BUILD --simulate`",
    )


def _aesmd(p: Probes) -> Check:
    title = "aesmd socket"
    kind = p.path_kind(AESMD_SOCKET)
    if kind == "socket":
        return Check(
            "sgx.aesmd", title, OK, f"{AESMD_SOCKET} (quotes for Gramine's DCAP attestation)"
        )
    return Check(
        "sgx.aesmd",
        title,
        MISSING,
        f"{AESMD_SOCKET} "
        + ("absent" if kind is None else f"is a {kind}, not a socket")
        + " (Gramine gets its DCAP quotes through aesmd)",
        "install and start Intel's AESM service with the DCAP plugins (sgx-aesm-service, "
        "libsgx-aesm-ecdsa-plugin, libsgx-aesm-pce-plugin, libsgx-dcap-default-qpl from "
        "Intel's SGX apt repository); in a container mount /var/run/aesmd",
    )


def pccs_url(p: Probes) -> tuple[str | None, str]:
    """(the configured PCCS URL or None, where it came from)."""
    url = p.env("PCCS_URL")
    if url:
        return url, "PCCS_URL"
    text = p.read_text(QCNL_CONF)
    if text is None:
        return None, ""
    # JSON (DCAP >= 1.15; may carry // comments) or the older KEY=VALUE form.
    stripped = re.sub(r"^\s*//.*$|(?<=[,{\[\s])//[^\"\n]*$", "", text, flags=re.M)
    try:
        data = json.loads(stripped)
        if isinstance(data, dict) and isinstance(data.get("pccs_url"), str) and data["pccs_url"]:
            return data["pccs_url"], QCNL_CONF
    except ValueError:
        match = re.search(r"^\s*PCCS_URL\s*=\s*(\S+)", text, re.M)
        if match:
            return match.group(1), QCNL_CONF
    return None, QCNL_CONF


def _pccs(p: Probes) -> Check:
    title = "PCCS"
    url, origin = pccs_url(p)
    if url is None:
        where = f"{QCNL_CONF} names none" if origin else f"PCCS_URL unset, no {QCNL_CONF}"
        # needed where quotes are made (an SGX machine); elsewhere only a warning
        sgx = p.path_kind(SGX_ENCLAVE) == "char"
        return Check(
            "sgx.pccs",
            title,
            MISSING if sgx else WARN,
            f"not configured ({where}); nothing contacted"
            + ("" if sgx else " (only SGX machines need one)"),
            f'on SGX machines the quote provider needs one: set "pccs_url" in '
            f"{QCNL_CONF} (or PCCS_URL); a secret server takes --pccs-url or offline "
            "--collateral",
        )
    if not re.match(r"https?://", url):
        return Check(
            "sgx.pccs",
            title,
            WARN,
            f"{origin}: {url!r} is not an http(s) URL",
            f"set an https:// URL in {origin}",
        )
    probe = url.rstrip("/") + "/rootcacrl"
    import ssl

    try:
        status = p.http_status(probe, PCCS_TIMEOUT)
    except ssl.SSLCertVerificationError as exc:
        return Check(
            "sgx.pccs",
            title,
            WARN,
            f"{url} ({origin}) answers, but its TLS "
            f"certificate does not verify here: "
            f"{getattr(exc, 'verify_message', None) or _first_line(exc)}",
            "give the PCCS a certificate this machine trusts (a secret server's "
            'pccs_url needs one; qcnl\'s "use_secure_cert": false accepts any)',
        )
    except Exception as exc:  # noqa: BLE001 - URLError, timeouts, connection errors: all "not reachable"
        reason = getattr(exc, "reason", None) or exc
        return Check(
            "sgx.pccs",
            title,
            MISSING,
            f"{url} ({origin}) not reachable within {PCCS_TIMEOUT:g} s: {_first_line(reason)}",
            "start the PCCS or fix the URL (it ends in /sgx/certification/v4/)",
        )
    if status == 200:
        return Check("sgx.pccs", title, OK, f"{url} ({origin}): GET rootcacrl answered 200")
    return Check(
        "sgx.pccs",
        title,
        WARN,
        f"{url} ({origin}) answers, but GET rootcacrl gave HTTP {status}",
        "check that the URL is the PCCS v4 base "
        "(https://HOST:8081/sgx/certification/v4/) and that the PCCS has its "
        "collateral cached",
    )


#: How to get a real Gramine base, for the fixes of the base checks.
REAL_BASE_ROUTES = (
    "as root, `enclave-build base gramine ROOTFS` (Debian 12 + Gramine 1.9 from Gramine's "
    "package repository, key pinned; `--archive FILE` for a local Gramine build) and --base "
    "dir:ROOTFS; with Docker, `enclave-build base build gramine` then `enclave-build base build "
    "gramine-python` (the same from Debian 12 and Gramine's repository); or a published base "
    "(docker://...)"
)


def _gramine_base(p: Probes, ref: str) -> Check:
    from .errors import EnclaveBuildError

    title = f"Gramine in {ref}"
    try:
        found_base = p.gramine_in_base(ref)
    except EnclaveBuildError as exc:
        return Check(
            "gramine.base",
            title,
            MISSING,
            str(exc),
            "use a base with Gramine 1.9: " + REAL_BASE_ROUTES,
        )
    runtime = found_base.runtime
    found = f"Gramine {runtime.version}, libpal {runtime.libpal}, offsets {runtime.offsets}"
    if found_base.standin is not None:
        return Check(
            "gramine.base",
            title,
            WARN,
            f"{found}; a STAND-IN base (`enclave-build base standin`: placeholder binaries in "
            "Gramine's layout): builds measure and sign, nothing boots, `run --simulate` can "
            "only use process mode",
            "for a base that boots: " + REAL_BASE_ROUTES,
        )
    if not found_base.direct:
        return Check(
            "gramine.base",
            title,
            WARN,
            f"{found}; but no real gramine-direct in it: builds measure and sign, `run "
            "--simulate` can only use process mode",
            "for a base that runs under gramine-direct: " + REAL_BASE_ROUTES,
        )
    return Check("gramine.base", title, OK, found)


def _mmdebstrap(p: Probes) -> Check:
    title = "mmdebstrap (base gramine: a real base without Docker)"
    found = p.which("mmdebstrap")
    if found is None:
        return Check(
            "realbase.mmdebstrap",
            title,
            MISSING,
            "not on PATH (`enclave-build base gramine ROOTFS` makes a Debian 12 + "
            "Gramine 1.9 base with it)",
            "`apt-get install mmdebstrap`; or, with Docker, `enclave-build base build "
            "gramine` and `enclave-build base build gramine-python`",
        )
    if p.euid() != 0:
        return Check(
            "realbase.mmdebstrap",
            title,
            WARN,
            f"{found}, but not running as root",
            "run `enclave-build base gramine ROOTFS` as root (mmdebstrap and chroot), "
            'e.g. sudo "$(command -v enclave-build)" base gramine ROOTFS',
        )
    return Check(
        "realbase.mmdebstrap",
        title,
        OK,
        f"{found} (`enclave-build base gramine ROOTFS`: Gramine from its package "
        "repository, or --archive FILE)",
    )


def _gramine_archive(p: Probes) -> Check:
    title = "Gramine 1.9 archive (optional: base gramine --archive)"
    checkout = p.checkout()
    archive = p.env("GRAMINE_ARCHIVE") or (
        str(checkout.parent / CHECKOUT_ARCHIVE) if checkout is not None else None
    )
    if archive is None:
        return Check(
            "realbase.gramine_archive",
            title,
            WARN,
            "none given ($GRAMINE_ARCHIVE is not set); `enclave-build base gramine ROOTFS` "
            "installs Gramine 1.9 from packages.gramineproject.io instead (needs that host "
            "reachable)",
            "nothing to do where packages.gramineproject.io is reachable: `enclave-build base "
            "gramine ROOTFS` (root) makes a real base; otherwise a Gramine 1.9 build in Debian "
            "package layout for `base gramine ROOTFS --archive FILE` (or $GRAMINE_ARCHIVE), or "
            "a published base (docker://...); for builds only, the stand-in (`enclave-build "
            "base standin DIR`)",
        )
    if p.path_kind(archive) == "file":
        return Check(
            "realbase.gramine_archive",
            title,
            OK,
            f"{archive} (`enclave-build base gramine ROOTFS --archive {archive}` uses "
            "it instead of Gramine's package repository)",
        )
    # Optional since `base gramine` installs from Gramine's repository: a warning, no failure.
    return Check(
        "realbase.gramine_archive",
        title,
        WARN,
        f"{archive} not found; `enclave-build base gramine ROOTFS` installs Gramine 1.9 "
        "from packages.gramineproject.io instead (needs that host reachable)",
        "nothing to do where packages.gramineproject.io is reachable; otherwise a "
        "Gramine 1.9 build in Debian package layout for --archive (or $GRAMINE_ARCHIVE), "
        "or a published base (docker://...); for builds only, the stand-in "
        "(`enclave-build base standin DIR`)",
    )


_RUNTIMES = (
    (
        "runtime.ai_edge_litert",
        "ai_edge_litert",
        "ai-edge-litert",
        "LiteRT: tflite models under `run --simulate` (process mode)",
        ("tflite_runtime",),
    ),
    (
        "runtime.openvino",
        "openvino",
        "openvino",
        "OpenVINO: openvino models under `run --simulate` (process mode)",
        (),
    ),
    (
        "runtime.grpc",
        "grpc",
        "grpcio",
        "gRPC: the model server's KServe v2 gRPC listener in process mode",
        (),
    ),
    (
        "runtime.httptools",
        "httptools",
        "httptools",
        "httptools: the model server's KServe v2 REST listener in process mode",
        (),
    ),
)


def _runtime(
    p: Probes, check_id: str, module: str, package: str, use: str, fallbacks: tuple[str, ...]
) -> Check:
    title = f"Python module {module}"
    try:
        version = p.import_version(module)
        return Check(check_id, title, OK, f"{module} {version} in {sys.executable} ({use})")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything
        reason = _first_line(exc)
    for other in fallbacks:
        try:
            version = p.import_version(other)
            return Check(check_id, title, OK, f"{other} {version} instead ({use})")
        except Exception:  # noqa: BLE001
            continue
    serve = serve_requirements()
    pinned = [r for r in serve or () if _distribution(r) == _distribution(package)] or [package]
    return Check(
        check_id,
        title,
        MISSING,
        f"cannot import {module} in {sys.executable}: {reason} ({use})",
        f"{install_command(pinned)} (all the runtimes of enclave-build's `serve` extra: "
        f"{serve_install_command(serve)})",
    )


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised (``ai_edge-LiteRT>=1`` -> ai-edge-litert)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    return re.sub(r"[-_.]+", "-", name.group(0)).lower() if name else requirement


def diagnose(base: str | None = None, probes: Probes | None = None) -> Report:
    """Run every check (see the module doc); *base* adds the Gramine-in-base check."""
    p = probes or Probes()
    report = Report()
    report.checks.append(_docker_engine(p))
    report.checks.append(_registry_credentials(p))
    report.checks.append(
        _sgx_device(p, SGX_ENCLAVE, "sgx.enclave_device", "gramine-sgx creates enclaves through it")
    )
    report.checks.append(
        _sgx_device(
            p,
            SGX_PROVISION,
            "sgx.provision_device",
            "needed for DCAP quotes, i.e. remote attestation",
        )
    )
    report.checks.append(_aesmd(p))
    report.checks.append(_pccs(p))
    if base is not None:
        report.checks.append(_gramine_base(p, base))
    report.checks.append(_mmdebstrap(p))
    report.checks.append(_gramine_archive(p))
    for args in _RUNTIMES:
        report.checks.append(_runtime(p, *args))
    return report


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["diagnose", "Report", "Check", "Probes", "pccs_url", "SCHEMA_VERSION"]


#: The most of a log ``doctor --log`` reads (its end: a failure is logged last).
MAX_LOG_BYTES = 64 << 20


def explain_log(log_file: Path, spec_path: Path | None = None) -> list[Any]:
    """The failures :func:`builder.run.failures.explain` recognises in *log_file* (its last
    :data:`MAX_LOG_BYTES`), sized with the ``[enclave]`` table of *spec_path* if given
    (UsageError naming the file when it is not TOML)."""
    import tomllib

    from .errors import UsageError
    from .run.failures import Limits, explain, parse_size
    from .trim import Trim

    limits = Limits()
    trim = Trim()
    if spec_path is not None:
        try:
            data = tomllib.loads(spec_path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{spec_path}: cannot read the spec: {exc}") from None
        enclave = data.get("enclave")
        if not isinstance(enclave, dict):
            enclave = {}
        threads = enclave.get("max_threads")
        limits = Limits(
            parse_size(enclave.get("size")),
            threads if isinstance(threads, int) and not isinstance(threads, bool) else None,
        )
        entries = enclave.get("trim")
        if isinstance(entries, list):
            trim = Trim.of(e for e in entries if isinstance(e, str))
    try:
        with open(log_file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - MAX_LOG_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        raise UsageError(f"{log_file}: cannot read it: {exc.strerror or exc}") from None
    return explain(text.splitlines(), limits, trim=trim)
