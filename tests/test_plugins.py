"""Plugins: builtins come from a module list, third parties through entry points; a broken
plugin is reported and hides nothing; a third-party package adds a framework and commands."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import enclave_build
from enclave_build.builder.errors import EnclaveBuildError
from enclave_build.builder.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    PluginError,
    PluginRegistry,
)
from enclave_build.plugin import Framework, hookimpl

from .conftest import image_rootfs, model_files, run_cli, tflite_bytes, write_spec

THIRD_PARTY = Path(__file__).parent / "thirdparty_plugin"


def test_builtins_are_registered_from_the_module_list():
    registry = PluginRegistry()
    names = {info.name: info for info in registry.describe()}
    # (a third-party plugin may be installed too: README installs the onnxruntime example's)
    builtin = [info for info in names.values() if info.source == "enclave-build"]
    assert {info.name for info in builtin} == {name for name, _ in DEFAULT_PLUGINS}
    assert {fw for info in builtin for fw in info.frameworks} == {
        "tfserving",
        "tflite",
        "openvino",
        "secret-server",
    }
    assert {name for info in builtin for name in info.libos} == {"gramine", "occlum"}
    assert set(registry.libos) == {"gramine", "occlum"}
    assert names["tfserving"].source == "enclave-build"
    assert names["tfserving"].hooks == ("enclave_build_check_model", "enclave_build_frameworks")
    assert names["k8s"].hooks == names["attest"].hooks == ("enclave_build_register_commands",)
    assert registry.failures == []
    # ... and not through entry points: the group holds third-party plugins only
    import importlib.metadata

    assert not [
        ep
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.value.startswith("enclave_build.")
    ]


def test_plugins_command_lists_name_version_source_hooks():
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0
    infos = {p["name"]: p for p in json.loads(proc.stdout)}
    assert infos["gramine"]["libos"] == ["gramine"]
    assert infos["openvino"]["frameworks"] == ["openvino"]
    assert infos["tflite"]["version"] == enclave_build.__version__
    assert infos["tflite"]["error"] is None


def test_duplicate_framework_names_are_refused():
    """Two plugins offering one name: neither is used, a build that needs it fails naming both,
    and everything else keeps working."""

    class Dup:
        @hookimpl
        def enclave_build_frameworks(self):
            return [Framework("tflite", "dup", "x", plan=lambda spec: None)]

    registry = PluginRegistry(extra_plugins=[Dup()])
    with pytest.raises(PluginError, match="two plugins provide the framework 'tflite'"):
        registry.framework("tflite")
    assert "tflite" not in registry.frameworks and "openvino" in registry.frameworks
    assert [f.error for f in registry.failures] == [
        "both provide the framework 'tflite': neither is used"
    ]


class _EntryPoint:
    """What importlib.metadata gives for an entry point: name, value, dist, load()."""

    def __init__(self, name, value, load):
        self.name, self.value, self.dist, self.load = name, value, None, load


def _failing_import():
    raise ModuleNotFoundError("No module named 'onnxruntime'")


def test_a_plugin_that_fails_to_import_is_recorded_and_hides_nothing():
    registry = PluginRegistry(
        entry_points=[_EntryPoint("broken", "broken_plugin", _failing_import)]
    )
    (failure,) = registry.failures
    assert failure.name == "broken"
    assert failure.error == "failed to load: ModuleNotFoundError: No module named 'onnxruntime'"
    assert set(registry.frameworks) == {"tfserving", "tflite", "openvino", "secret-server"}
    assert set(registry.libos) == {"gramine", "occlum"}
    with pytest.raises(PluginError) as info:
        registry.framework("onnx")
    assert "framework 'onnx' is not installed" in str(info.value)
    assert "broken (broken_plugin): failed to load: ModuleNotFoundError" in str(info.value)


def test_a_plugin_whose_hook_raises_is_dropped_with_all_its_hooks():
    configured = []

    class Raises:
        @hookimpl
        def enclave_build_frameworks(self):
            raise RuntimeError("cannot read my settings\nsecond line")

        @hookimpl
        def enclave_build_configure(self, spec, plan):
            configured.append(plan)

    class Wrong:
        @hookimpl
        def enclave_build_libos(self):
            return ["not a LibOS"]

    registry = PluginRegistry(extra_plugins=[Raises(), Wrong()])
    errors = sorted(f.error for f in registry.failures)
    assert errors == [
        "failed in enclave_build_frameworks: RuntimeError: cannot read my settings",
        "failed in enclave_build_libos: TypeError: returned 'not a LibOS' where a LibOS was "
        "expected",
    ]
    assert not registry.pm.hook.enclave_build_configure.get_hookimpls() or all(
        impl.plugin_name != "Raises"
        for impl in registry.pm.hook.enclave_build_configure.get_hookimpls()
    )
    assert set(registry.libos) == {"gramine", "occlum"}
    assert "tflite" in registry.frameworks


def test_a_build_that_needs_a_broken_plugin_fails_naming_it(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    spec = write_spec(
        tmp_path, '[service]\nname = "echo"\nframework = "echo"\n\n[signing]\nkey = "key.pem"\n'
    )
    registry = PluginRegistry(entry_points=[_EntryPoint("echo", "echo_framework", _failing_import)])
    with pytest.raises(SpecError) as info:
        build(spec, base=f"dir:{standin_root}", registry=registry)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "service.framework: 'echo' is not an installed framework" in message
    assert (
        "echo (echo_framework): failed to load: ModuleNotFoundError: No module named "
        "'onnxruntime'" in message
    )
    # the other frameworks build as before, with the broken plugin still installed
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    spec = write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\n'
        '[[models]]\nname = "m"\npath = "m.tflite"\nencrypt = false\n'
        '[signing]\nkey = "key.pem"\n',
    )
    assert build(spec, base=f"dir:{standin_root}", registry=registry).measurements is not None


def _broken_site(tmp_path: Path) -> Path:
    """A site directory holding a distribution whose entry point names a missing module."""
    site = tmp_path / "broken-site"
    info = site / "enclave_build_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: enclave-build-broken\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[enclave_build]\nbroken = no_such_module_here\ncommands = raising_commands\n"
    )
    (site / "raising_commands.py").write_text(
        "from enclave_build.plugin import hookimpl\n\n"
        "@hookimpl\ndef enclave_build_register_commands(cli):\n"
        "    raise RuntimeError('no room for my commands')\n"
    )
    return site


@pytest.mark.integration
def test_the_cli_lists_a_broken_plugin_and_warns_about_it_elsewhere(tmp_path):
    env = {"PYTHONPATH": str(_broken_site(tmp_path))}
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 1
    text = listing.stdout.decode()
    assert "broken BROKEN  (enclave-build-broken: no_such_module_here)" in text
    assert (
        "error:    failed to load: ModuleNotFoundError: No module named "
        "'no_such_module_here'" in text
    )
    assert "tflite 0.3.0  (enclave-build)" in text
    assert (
        "commands BROKEN  (enclave-build-broken)\n    error:    failed in "
        "enclave_build_register_commands: RuntimeError: no room for my commands" in text
    )
    as_json = {p["name"]: p for p in json.loads(run_cli("plugins", "--json", env=env).stdout)}
    assert as_json["broken"]["error"].startswith("failed to load: ModuleNotFoundError")
    assert as_json["tflite"]["error"] is None
    other = run_cli("base", "list", env=env)
    assert other.returncode == 0 and b"gramine-python" in other.stdout
    assert other.stderr.decode().splitlines() == [
        "warning: broken (enclave-build-broken: no_such_module_here): failed to load: "
        "ModuleNotFoundError: No module named 'no_such_module_here' (see `enclave-build "
        "plugins`)",
        "warning: commands (enclave-build-broken): failed in enclave_build_register_commands: "
        "RuntimeError: no room for my commands (see `enclave-build plugins`)",
    ]
    # the builtin command groups are all there
    assert run_cli("k8s", "--help", env=env).returncode == 0


def test_configure_hook_can_stop_a_build(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build

    class Refuse:
        @hookimpl
        def enclave_build_configure(self, spec, plan):
            raise EnclaveBuildError("policy plugin: debug builds are not allowed here")

    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    spec = write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\n'
        '[[models]]\nname = "m"\npath = "m.tflite"\nencrypt = false\n'
        '[signing]\nkey = "key.pem"\n',
    )
    with pytest.raises(EnclaveBuildError, match="debug builds are not allowed here"):
        build(spec, base=f"dir:{standin_root}", registry=PluginRegistry(extra_plugins=[Refuse()]))


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "GLIBC_TUNABLES", "OPENSSL_CONF"])
def test_a_plugin_cannot_pass_loader_variables_through_from_the_host(
    tmp_path, standin_root, signing_key, name
):
    """A passthrough of a variable that changes what the enclave loads would make the
    measurement say nothing about what runs: refused, naming it."""
    from enclave_build.builder.build import build
    from enclave_build.builder.errors import EnclaveBuildError

    class Passthrough:
        @hookimpl
        def enclave_build_configure(self, spec, plan):
            plan.env_passthrough.append(name)

    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    spec = write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\n'
        '[[models]]\nname = "m"\npath = "m.tflite"\nencrypt = false\n'
        '[signing]\nkey = "key.pem"\n',
    )
    with pytest.raises(EnclaveBuildError, match=f"{name} would be passed through from the host"):
        build(
            spec, base=f"dir:{standin_root}", registry=PluginRegistry(extra_plugins=[Passthrough()])
        )


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install the third-party plugin into its own directory (not into this environment)."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(THIRD_PARTY, source)  # setuptools writes build/ next to the sources
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.mark.integration
def test_third_party_plugin_is_listed_and_builds(
    installed_plugin, tmp_path, standin_root, signing_key
):
    env = {"PYTHONPATH": str(installed_plugin)}
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "echo 0.3.0  (enclave-build-echo-plugin)" in listing.stdout.decode()
    assert (
        "enclave_build_configure, enclave_build_frameworks, "
        "enclave_build_register_commands" in listing.stdout.decode()
    )
    # its command group (enclave_build_register_commands), beside the builtin ones
    greet = run_cli("echo", "greet", "world", env=env)
    assert (greet.returncode, greet.stdout) == (0, b"hello, world\n"), greet.stderr
    assert b"  echo " in run_cli("--help", env=env).stdout

    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    write_spec(
        tmp_path,
        '[service]\nname = "echo"\nframework = "echo"\n\n'
        '[signing]\nkey = "key.pem"\n\n[echo]\ngreeting = "hi there"\n',
    )
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    measurements = json.loads(proc.stdout)
    assert measurements["framework"] == "echo"
    manifest = tomllib.loads(
        (image_rootfs(tmp_path / "out") / "enclave/echo.manifest.sgx").read_text()
    )
    assert manifest["loader"]["env"]["ECHO_GREETING"] == "hi there"
    assert manifest["loader"]["env"]["ECHO_CONFIGURED_BY"] == "echo-plugin"
    assert manifest["loader"]["argv"][-2:] == ["--port", "7007"]

    # Without the plugin installed, the same spec names an unknown framework.
    bare = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", cwd=tmp_path)
    assert bare.returncode == 2
    assert b"'echo' is not an installed framework" in bare.stderr


# --- keys, ownership and Python-server plans ----------------------------------------------------

CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"


def _keys_project(tmp_path: Path, signing_key: Path, framework: str, extra: str = "") -> Path:
    a, b = model_files(tmp_path, framework)
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    (tmp_path / "ca.pem").write_text(CA)
    return write_spec(
        tmp_path,
        f'''[service]
name = "multi"
framework = "{framework}"

[[models]]
name = "a"
path = "{a}"

[[models]]
name = "b"
path = "{b}"
key = "owner-b"

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "keys"

[signing]
key = "key.pem"
{extra}''',
    )


def test_python_server_serves_models_with_several_keys(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build

    spec = _keys_project(tmp_path, signing_key, "tflite")
    result = build(spec, base=f"dir:{standin_root}", output=tmp_path / "out")
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    assert mounts["/models/a/1"]["key_name"] == "multi-key"
    assert mounts["/models/b/1"]["key_name"] == "owner-b"
    assert mounts["/models/b/1"]["type"] == "encrypted"
    env = manifest["loader"]["env"]
    assert "LD_PRELOAD" not in env and "SECRET_PROVISION_SET_KEY" not in env
    assert manifest["sgx"]["remote_attestation"] == "dcap"
    config = json.loads(
        next(f.data for f in result.artifacts.files if f.dest == "/enclave/model-server.json")
    )
    assert config["keys"] == {
        "server": "secrets.example.com:4433",
        "ca": "/enclave/secret-server-ca.pem",
        "names": ["multi-key", "owner-b"],
        "timeout_seconds": 10,
        "evidence": "tcg-dice",
    }
    assert [(m["name"], m["key"], m["path"]) for m in config["models"]] == [
        ("a", "multi-key", "/models/a/1/a.tflite"),
        ("b", "owner-b", "/models/b/1/b.tflite"),
    ]
    policy = tomllib.loads((tmp_path / "out/secrets-policy.toml").read_text())
    assert [(s["name"], Path(s["file"]).name) for s in policy["secrets"]] == [
        ("multi-key", "multi-key.key"),
        ("owner-b", "owner-b.key"),
    ]
    assert "# owner-b: decrypts /models/b/1" in (tmp_path / "out/secrets-policy.toml").read_text()


@pytest.mark.parametrize(
    "framework,extra,what",
    [
        ("tfserving", "", "tfserving"),
        ("openvino", '\n[openvino]\nmode = "ovms"\n', 'openvino (mode "ovms")'),
    ],
)
def test_binary_frameworks_allow_one_key_with_a_located_error(
    tmp_path, monkeypatch, standin_root, signing_key, framework, extra, what
):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    _keys_project(tmp_path, signing_key, framework, extra)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}")
    assert info.value.exit_code == 2
    assert info.value.lines() == [
        f"spec.toml:12: models[1].key: all encrypted models must use the same key ('multi-key') "
        f"with framework {what}: Gramine's provisioning constructor gives the enclave exactly "
        "one key per start; serve models with different keys from separate services, or with a "
        'framework whose server fetches its own keys (tflite, openvino mode "python")'
    ]


def _layer_members(output: Path) -> dict[str, tarfile.TarInfo]:
    index = json.loads((output / "oci/index.json").read_text())
    blobs = output / "oci/blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    members = {}
    for layer in manifest["layers"][1:]:  # the layers the build added
        data = gzip.decompress((blobs / layer["digest"].split(":")[1]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members.update({m.name: m for m in tar.getmembers()})
    return members


def test_encrypted_files_belong_to_the_runtime_user(tmp_path, standin_root, signing_key):
    """Gramine opens an encrypted file's host file read-write: uid 10001 must own it."""
    from enclave_build.builder.build import build

    spec = _keys_project(tmp_path, signing_key, "tflite", "\n[build]\nreproducible = true\n")
    build(spec, base=f"dir:{standin_root}", output=tmp_path / "out")
    members = _layer_members(tmp_path / "out")
    for path in ("models/a/1/a.tflite", "models/b/1/b.tflite"):
        info = members[path]
        assert (info.uid, info.gid) == (10001, 10001), path
        assert info.mode & 0o600 == 0o600
    for directory in ("models/a/1", "models/b/1"):
        assert (members[directory].uid, members[directory].mode & 0o700) == (10001, 0o700)
    assert (members["models"].uid, members["models/a"].uid) == (0, 0)
    config = members["enclave/model-server.json"]
    assert (config.uid, config.mode) == (0, 0o644)  # trusted files stay root's
    # Deterministic: the same build gives the same layers.
    build(spec, base=f"dir:{standin_root}", output=tmp_path / "again")
    assert (tmp_path / "out/oci/index.json").read_bytes() == (
        tmp_path / "again/oci/index.json"
    ).read_bytes()


def test_runtime_user_names_resolve_through_the_base_passwd(standin_root):
    from enclave_build.builder.image.assemble import UserError, runtime_owner
    from enclave_build.builder.rootfs import RootFS

    rootfs = RootFS(standin_root)
    assert runtime_owner("ovms", rootfs) == (5000, 5000)
    assert runtime_owner("10001", rootfs) == (10001, 10001)
    assert runtime_owner("4242", rootfs) == (4242, 0)
    assert runtime_owner("ovms:root", rootfs) == (5000, 0)
    assert runtime_owner(None, rootfs) == (0, 0)
    with pytest.raises(UserError, match="user 'nobody-here', which is not in /etc/passwd"):
        runtime_owner("nobody-here", rootfs)


def test_a_third_party_backend_plugin_uses_python_server_plan(
    tmp_path, monkeypatch, standin_root, signing_key
):
    """Only the public API: a framework plugin adding a backend to our server, the backend's
    code found through its entry point and shipped, its runtime trusted from the base."""
    from enclave_build.builder.build import build
    from enclave_build.plugin import Framework, python_server_plan

    site = tmp_path / "site"
    (site / "eb_fake_backend").mkdir(parents=True)
    (site / "eb_fake_backend/__init__.py").write_text("class Backend:\n    pass\n")
    info = site / "eb_fake_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eb-fake-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[enclave_model_server.backends]\nfake = eb_fake_backend:Backend\n"
    )
    monkeypatch.syspath_prepend(str(site))

    framework = Framework(
        "fakefw",
        "a third-party framework",
        f"dir:{standin_root}",
        plan=lambda spec: python_server_plan(
            spec, framework, backend="fake", packages=["unused-runtime"]
        ),
    )

    class Plugin:
        @hookimpl
        def enclave_build_frameworks(self):
            return [framework]

    (tmp_path / "m.onnx").write_bytes(b"ONNX")
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    spec = write_spec(
        tmp_path,
        '[service]\nname = "fake"\nframework = "fakefw"\n\n'
        '[[models]]\nname = "m"\npath = "m.onnx"\nencrypt = false\n\n'
        '[signing]\nkey = "key.pem"\n',
    )
    result = build(spec, registry=PluginRegistry(extra_plugins=[Plugin()]))
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    uris = {tf["uri"] for tf in manifest["sgx"]["trusted_files"]}
    assert "file:/opt/enclave-build/python/eb_fake_backend/__init__.py" in uris
    assert "file:/usr/local/lib/python3.11/dist-packages/unused/__init__.py" in uris
    entry = next(f for f in result.artifacts.files if f.dest.endswith("entry_points.txt"))
    assert entry.data == b"[enclave_model_server.backends]\nfake = eb_fake_backend:Backend\n"
    config = json.loads(
        next(f.data for f in result.artifacts.files if f.dest == "/enclave/model-server.json")
    )
    assert config["models"][0]["backend"] == "fake"

    bad = Framework(
        "badfw",
        "unknown backend",
        f"dir:{standin_root}",
        plan=lambda spec: python_server_plan(spec, bad, backend="no-such-runtime"),
    )
    with pytest.raises(EnclaveBuildError, match="no model-server backend named 'no-such-runtime'"):
        bad.plan(result.spec)


# --------------------------------------------------------------------------- python-server spec checks

_SERVER_SPEC = """[service]
name = "svc"
framework = "{framework}"

[[models]]
name = "m"
path = "m.tflite"
encrypt = false
{enclave}
[{framework}]
{section}

[signing]
key = "key.pem"
"""


def _server_spec_error(
    tmp_path,
    monkeypatch,
    standin_root,
    signing_key,
    framework: str,
    section: str,
    enclave: str = "",
):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    (tmp_path / "m.tflite").write_bytes(tflite_bytes(bytes(60)))
    shutil.copy(signing_key, tmp_path / "key.pem")
    write_spec(tmp_path, _SERVER_SPEC.format(framework=framework, section=section, enclave=enclave))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}", output=tmp_path / "out")
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()  # nothing built, nothing signed
    return info.value.lines()


@pytest.mark.parametrize("framework", ["tflite", "openvino"])
def test_python_server_same_grpc_and_rest_port_is_a_located_spec_error(
    tmp_path, monkeypatch, standin_root, signing_key, framework
):
    lines = _server_spec_error(
        tmp_path,
        monkeypatch,
        standin_root,
        signing_key,
        framework,
        "grpc_port = 8000\nrest_port = 8000",
    )
    assert lines == [
        f"spec.toml:12: {framework}.rest_port: the REST port equals grpc_port "
        "(8000): the gRPC and REST servers need two different ports"
    ]


def test_python_server_needing_more_threads_than_max_threads_is_a_located_spec_error(
    tmp_path, monkeypatch, standin_root, signing_key
):
    lines = _server_spec_error(
        tmp_path,
        monkeypatch,
        standin_root,
        signing_key,
        "tflite",
        "instances = 4\nthreads = 4",
        enclave="\n[enclave]\nmax_threads = 16\n",
    )
    assert lines == [
        "spec.toml:11: enclave.max_threads: the enclave needs at least 24 threads "
        "(1 model(s) x 4 instance(s) x 4 thread(s) + 8 of the model server's own) "
        "but [enclave] max_threads is 16: raise [enclave] max_threads to 24 or "
        "more, or lower [tflite] instances or threads"
    ]


def test_python_server_threads_over_the_framework_default_point_at_instances(
    tmp_path, monkeypatch, standin_root, signing_key
):
    lines = _server_spec_error(
        tmp_path, monkeypatch, standin_root, signing_key, "tflite", "instances = 8\nthreads = 4"
    )  # default max_threads 32
    assert lines[0].startswith(
        "spec.toml:11: tflite.instances: the enclave needs at least 40 threads"
    )


def test_openvino_extra_args_in_python_mode_is_a_located_spec_error_exit_2(
    tmp_path, monkeypatch, standin_root, signing_key
):
    lines = _server_spec_error(
        tmp_path,
        monkeypatch,
        standin_root,
        signing_key,
        "openvino",
        'extra_args = ["--log_level", "DEBUG"]',
    )
    assert lines == [
        'spec.toml:11: openvino.extra_args: only for mode = "ovms" (the python '
        "mode's server takes no ovms flags): remove extra_args or set mode = "
        '"ovms"'
    ]
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out2", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert b"error: spec.toml:11: openvino.extra_args: only for mode" in proc.stderr


# --------------------------------------------------------------------------- libOS sections


def test_a_libos_backend_declares_its_own_spec_section(tmp_path, monkeypatch, signing_key):
    """Validated by the spec engine like every section (file, line, key), allowed only with
    the backend selected, its values in plan.libos_options; no core field involved."""
    from enclave_build.builder.build import load, make_plan
    from enclave_build.builder.spec import SpecError
    from enclave_build.plugin import Field, LibOS, Section

    section = Section(
        "toylibos",
        "a toy libOS",
        (Field("heap", "size", "heap size", default="64M"),),
        owner="toylibos",
    )

    class Toy:
        @hookimpl
        def enclave_build_libos(self):
            return [
                LibOS(
                    "toylibos", "a toy", build=lambda plan, rootfs, options: None, section=section
                )
            ]

    registry = PluginRegistry(extra_plugins=[Toy()])
    shutil.copy(signing_key, tmp_path / "key.pem")
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    common = (
        '[[models]]\nname = "m"\npath = "m.tflite"\nencrypt = false\n[signing]\nkey = "key.pem"\n'
    )
    monkeypatch.chdir(tmp_path)
    write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\nlibos = "toylibos"\n'
        + common
        + '[toylibos]\nheap = "128M"\n',
    )
    spec, _ = load("spec.toml", registry)
    assert spec.section("toylibos") == {"heap": 128 << 20}
    assert make_plan(spec, registry).libos_options == {"heap": 128 << 20}

    write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\n'
        + common
        + '[toylibos]\nheap = "3M"\nheep = 1\n',
    )
    with pytest.raises(SpecError) as info:
        load("spec.toml", registry)
    assert info.value.lines() == [
        "spec.toml:10: toylibos: [toylibos] applies only to "
        'service.libos = "toylibos" (this spec\'s libos is '
        "'gramine')"
    ]
    write_spec(
        tmp_path,
        '[service]\nname = "x"\nframework = "tflite"\nlibos = "toylibos"\n'
        + common
        + '[toylibos]\nheap = "3M"\n',
    )
    with pytest.raises(SpecError) as info:
        load("spec.toml", registry)
    assert info.value.lines()[0].startswith(
        "spec.toml:12: toylibos.heap: '3M' is not a power of two"
    )
