"""`enclave-build doctor`: every check through replaced probes (no network, no devices)."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tomllib
import venv

import pytest
from click.testing import CliRunner

from enclave_build.builder import doctor
from enclave_build.builder.cli import main
from enclave_build.builder.doctor import MISSING, OK, WARN, Probes, diagnose
from enclave_build.contract.names import STANDIN_MARKER
from enclave_build.model_server.runtimes import serve_install_command, serve_requirements

from .conftest import REPO

IDS = [
    "docker.engine",
    "registry.credentials",
    "sgx.enclave_device",
    "sgx.provision_device",
    "sgx.aesmd",
    "sgx.pccs",
    "realbase.mmdebstrap",
    "realbase.gramine_archive",
    "runtime.ai_edge_litert",
    "runtime.openvino",
    "runtime.grpc",
    "runtime.httptools",
]


#: The distributions of pyproject.toml's `serve` extra (what the install lines must name).
SERVE_DISTRIBUTIONS = {
    re.match(r"[A-Za-z0-9._-]+", r).group(0).lower()
    for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serve"]
}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


class Bare(Probes):
    """A machine with nothing: no engine, no config, no devices, no PCCS, no runtimes."""

    def __init__(self, **overrides):
        self.env_vars: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.programs: set[str] = set()
        self.modules: dict[str, str] = {}
        self.http: list[tuple[str, float]] = []
        self.http_result: object = 200
        self.config: tuple = (None, {})
        self.root = 1000
        self.checkout_dir = None  # an installed enclave-build (no checkout)
        self.__dict__.update(overrides)

    def checkout(self):
        return self.checkout_dir

    def env(self, name):
        return self.env_vars.get(name)

    def which(self, name):
        return f"/usr/bin/{name}" if name in self.programs else None

    def euid(self):
        return self.root

    def kernel(self):
        return "6.1.0-test"

    def path_kind(self, path):
        return self.kinds.get(str(path))

    def read_text(self, path):
        return self.files.get(str(path))

    def docker_version(self):
        if "engine" not in self.programs:
            raise ConnectionError("Error while fetching server API version: no socket")
        return "26.1.5"

    def docker_config(self):
        return self.config

    def http_status(self, url, timeout):
        self.http.append((url, timeout))
        if isinstance(self.http_result, BaseException):
            raise self.http_result
        return self.http_result

    def import_version(self, module):
        if module not in self.modules:
            raise ModuleNotFoundError(f"No module named {module!r}")
        return self.modules[module]

    def gramine_in_base(self, ref):  # pragma: no cover - replaced where used
        raise AssertionError("not asked for a base")


def _by_id(report):
    return {c.id: c for c in report.checks}


def test_a_bare_machine_gets_a_fix_for_everything_and_nothing_is_contacted():
    probes = Bare()
    report = diagnose(probes=probes)
    assert [c.id for c in report.checks] == IDS
    # not needed here: warnings (without an archive, `base gramine` uses Gramine's repository)
    optional = {"registry.credentials", "sgx.pccs", "realbase.gramine_archive"}
    for check in report.checks:
        assert check.status == (WARN if check.id in optional else MISSING), check
        assert check.fix, check
    assert probes.http == []  # no PCCS configured: nothing contacted
    checks = _by_id(report)
    assert "apt-get install docker.io" in checks["docker.engine"].fix
    assert "--base dir:" in checks["docker.engine"].fix
    assert "5.11" in checks["sgx.enclave_device"].fix and "DCAP" in checks["sgx.enclave_device"].fix
    assert "not configured" in checks["sgx.pccs"].detail
    # enclave-build is not on PyPI: the fix names the serve extra's own distributions
    serve = serve_requirements()
    assert serve is not None and {_name(r) for r in serve} == SERVE_DISTRIBUTIONS
    litert = next(r for r in serve if _name(r) == "ai-edge-litert")
    assert f"-m pip install '{litert}'" in checks["runtime.ai_edge_litert"].fix
    assert serve_install_command(serve) in checks["runtime.openvino"].fix
    assert "httptools" in checks["runtime.httptools"].detail
    for check in report.checks:
        assert "enclave-build[serve]" not in str(check.fix), check.id
    for check in report.checks:  # an installed enclave-build has no checkout's files
        for checkout_only in ("scripts/", "constraints.txt", "examples/", "demo.sh"):
            assert checkout_only not in f"{check.detail} {check.fix}", (check.id, checkout_only)
    assert "only SGX machines need one" in checks["sgx.pccs"].detail
    assert "packages.gramineproject.io" in checks["realbase.gramine_archive"].detail
    assert "enclave-build base gramine ROOTFS" in checks["realbase.mmdebstrap"].detail
    assert "enclave-build base build gramine-python" in checks["realbase.mmdebstrap"].fix
    assert report.ok is False and report.counts() == {OK: 0, MISSING: len(IDS) - 3, WARN: 3}


def test_an_sgx_machine_without_a_pccs_misses_it():
    probes = Bare(kinds={doctor.SGX_ENCLAVE: "char"})
    assert _by_id(diagnose(probes=probes))["sgx.pccs"].status == MISSING


def test_no_registry_login_is_only_a_warning():
    """Credentials are optional (public pulls): their absence does not fail --strict."""
    for config in [(None, {}), ("/c.json", {"auths": [], "credHelpers": {}, "credsStore": None})]:
        check = _by_id(diagnose(probes=Bare(config=config)))["registry.credentials"]
        assert check.status == WARN and "docker login" in check.fix, config


def test_a_complete_sgx_machine():
    probes = Bare(
        programs={"engine", "docker", "mmdebstrap", "docker-credential-pass"},
        kinds={
            doctor.SGX_ENCLAVE: "char",
            doctor.SGX_PROVISION: "char",
            doctor.AESMD_SOCKET: "socket",
            "/archive.tgz": "file",
        },
        env_vars={"GRAMINE_ARCHIVE": "/archive.tgz"},
        files={
            doctor.QCNL_CONF: '{\n  // the PCCS\n  "pccs_url": '
            '"https://pccs.internal:8081/sgx/certification/v4/",\n'
            '  "use_secure_cert": true\n}\n'
        },
        config=(
            "/home/u/.docker/config.json",
            {
                "auths": ["registry.example.com"],
                "credHelpers": {"gcr.io": "pass"},
                "credsStore": None,
            },
        ),
        modules={
            "ai_edge_litert": "2.3.0",
            "openvino": "2026.4",
            "grpc": "1.85",
            "httptools": "0.9.0",
        },
        root=0,
    )
    report = diagnose(probes=probes)
    assert all(c.status == OK for c in report.checks), [c for c in report.checks if c.status != OK]
    assert report.ok
    assert probes.http == [
        ("https://pccs.internal:8081/sgx/certification/v4/rootcacrl", doctor.PCCS_TIMEOUT)
    ]
    assert doctor.PCCS_TIMEOUT <= 10
    checks = _by_id(report)
    assert "Docker 26.1.5" in checks["docker.engine"].detail
    assert "registry.example.com" in checks["registry.credentials"].detail


@pytest.mark.parametrize(
    "result, status, words",
    [
        (404, WARN, "HTTP 404"),
        (ssl.SSLCertVerificationError("self-signed certificate"), WARN, "does not verify"),
        (TimeoutError("timed out"), MISSING, "not reachable"),
    ],
)
def test_pccs_answers(result, status, words):
    probes = Bare(
        env_vars={"PCCS_URL": "https://127.0.0.1:8081/sgx/certification/v4"}, http_result=result
    )
    check = _by_id(diagnose(probes=probes))["sgx.pccs"]
    assert check.status == status and words in check.detail and check.fix
    assert probes.http[0][0] == "https://127.0.0.1:8081/sgx/certification/v4/rootcacrl"


def test_pccs_url_from_the_legacy_qcnl_format_and_bad_urls():
    probes = Bare(
        files={
            doctor.QCNL_CONF: "# old format\nPCCS_URL=https://old:8081/sgx/"
            "certification/v3/\nUSE_SECURE_CERT=FALSE\n"
        }
    )
    assert doctor.pccs_url(probes) == ("https://old:8081/sgx/certification/v3/", doctor.QCNL_CONF)
    probes = Bare(env_vars={"PCCS_URL": "ftp://x"})
    assert _by_id(diagnose(probes=probes))["sgx.pccs"].status == WARN
    assert probes.http == []


def test_credentials_helper_missing_is_a_warning():
    probes = Bare(config=("/c.json", {"auths": [], "credHelpers": {}, "credsStore": "desktop"}))
    check = _by_id(diagnose(probes=probes))["registry.credentials"]
    assert check.status == WARN and "credsStore desktop" in check.detail


def test_engine_installed_but_stopped_and_legacy_sgx_driver():
    probes = Bare(programs={"dockerd"}, kinds={doctor.SGX_LEGACY: "char"})
    checks = _by_id(diagnose(probes=probes))
    assert "start dockerd" in checks["docker.engine"].fix
    assert "legacy" in checks["sgx.enclave_device"].detail


def test_tflite_runtime_is_accepted_instead_of_litert():
    probes = Bare(modules={"tflite_runtime": "2.14.0"})
    check = _by_id(diagnose(probes=probes))["runtime.ai_edge_litert"]
    assert check.status == OK and "tflite_runtime 2.14.0" in check.detail


def test_gramine_in_a_base(standin_root, tmp_path):
    real = Probes()
    probes = Bare()
    probes.gramine_in_base = real.gramine_in_base  # the real discovery, on the stand-in
    check = _by_id(diagnose(f"dir:{standin_root}", probes))["gramine.base"]
    # The stand-in has Gramine's layout and says it is one: found, with a warning.
    assert check.status == WARN and "Gramine 1.9" in check.detail
    assert "a STAND-IN base (`enclave-build base standin`" in check.detail
    assert "/usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so" in check.detail
    assert "enclave-build base gramine ROOTFS" in check.fix and "--archive" in check.fix
    assert "enclave-build base build gramine" in check.fix
    # Without its marker the same tree is only a base that lacks gramine-direct.
    plain = tmp_path / "plain"
    shutil.copytree(standin_root, plain, symlinks=True)
    (plain / STANDIN_MARKER.lstrip("/")).unlink()
    lacking = _by_id(diagnose(f"dir:{plain}", probes))["gramine.base"]
    assert lacking.status == WARN and "no real gramine-direct" in lacking.detail
    assert "stand-in" not in lacking.detail.lower()
    missing = _by_id(diagnose(f"dir:{tmp_path / 'nothing'}", probes))["gramine.base"]
    assert missing.status == MISSING and "not found" in missing.detail and missing.fix
    (tmp_path / "empty").mkdir()
    empty = _by_id(diagnose(f"dir:{tmp_path / 'empty'}", probes))["gramine.base"]
    assert empty.status == MISSING and "no Gramine installation" in empty.detail


def test_cli_json_schema_exit_codes_and_text(monkeypatch):
    monkeypatch.setattr(doctor, "Probes", Bare)
    runner = CliRunner()
    result = runner.invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"schema", "ok", "counts", "checks"} and data["schema"] == 1
    assert data["ok"] is False
    for check in data["checks"]:
        assert set(check) == {"id", "title", "status", "detail", "fix"}
    assert [c["id"] for c in data["checks"]] == IDS

    assert runner.invoke(main, ["doctor", "--strict"]).exit_code == 1
    text = runner.invoke(main, ["doctor"]).output
    assert text.splitlines()[0].startswith("missing  Docker engine: ")
    assert "         fix: " in text
    assert f"0 ok, {len(IDS) - 3} missing, 3 warn" in text


def test_the_real_http_probe_on_loopback():
    """Probes.http_status itself, against a PCCS stand-in on 127.0.0.1 (nothing else)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path.endswith("/rootcacrl") else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/sgx/certification/v4/"
        probes = Bare(env_vars={"PCCS_URL": url})
        probes.http_status = Probes().http_status
        assert _by_id(diagnose(probes=probes))["sgx.pccs"].status == OK
        assert Probes().http_status(f"http://127.0.0.1:{server.server_port}/x", 2) == 404
    finally:
        server.shutdown()
        server.server_close()


def test_help_has_an_example():
    for command in (["doctor"], ["init"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def _hiding_env(tmp_path, modules: tuple[str, ...]) -> dict[str, str]:
    """Environment for a Python whose import system does not find *modules*."""
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nHIDDEN = {set(modules)!r}\n\n\n"
        "class _NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HIDDEN:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n\n\n"
        "sys.meta_path.insert(0, _NotInstalled())\n"
    )
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize("pipx", [False, True])
def test_doctor_names_the_serve_extras_distributions_for_this_install(tmp_path, pipx):
    """`enclave-build doctor` where a runtime is missing (httptools, which the REST listener
    needs): the fix installs the serve extra's own distributions (read from the installed
    metadata) with this Python's pip, or with `pipx inject` when enclave-build runs from a pipx
    environment; never `pip install 'enclave-build[serve]'` (no such package on PyPI)."""
    import os

    python = sys.executable
    if pipx:  # a pipx-style environment (.../pipx/venvs/enclave-build) seeing this install
        env_dir = tmp_path / "pipx" / "venvs" / "enclave-build"
        venv.EnvBuilder(with_pip=False).create(env_dir)
        (next(env_dir.glob("lib/python*/site-packages")) / "this-install.pth").write_text(
            f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
        )
        python = str(env_dir / "bin" / "python")
    proc = subprocess.run(
        [python, "-m", "enclave_build", "doctor", "--json"],
        env={**os.environ, **_hiding_env(tmp_path, ("httptools",))},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}["runtime.httptools"]
    assert check["status"] == MISSING and "REST listener" in check["detail"]
    fix = check["fix"]
    head = "pipx inject enclave-build " if pipx else f"{python} -m pip install "
    assert fix.startswith(head + "'httptools"), fix
    assert "enclave-build[serve]" not in fix
    serve_line = fix.split("`serve` extra: ", 1)[1]
    assert serve_line.startswith(head)
    assert {_name(w.strip("'")) for w in serve_line[len(head) :].rstrip(")").split()} == (
        SERVE_DISTRIBUTIONS
    )


def test_the_gramine_archive_is_looked_for_beside_a_checkout_only():
    """Installed (pipx, site-packages), doctor looks at $GRAMINE_ARCHIVE only and says how to
    get a base; a checkout also looks beside it (../shared/gramine/)."""
    from pathlib import Path

    installed = _by_id(diagnose(probes=Bare()))["realbase.gramine_archive"]
    assert installed.status == WARN
    assert installed.detail.startswith("none given ($GRAMINE_ARCHIVE is not set)")
    assert "shared/gramine" not in installed.detail + installed.fix
    assert "`enclave-build base gramine ROOTFS` (root) makes a real base" in installed.fix
    checkout = _by_id(diagnose(probes=Bare(checkout_dir=Path("/src/enclave-build"))))
    assert checkout["realbase.gramine_archive"].detail.startswith(
        "/src/shared/gramine/gramine-1.9-debian12-x86_64.tar.gz not found"
    )
