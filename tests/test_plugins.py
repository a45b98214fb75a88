"""Plugins: builtins arrive through entry points; a third-party package adds a framework."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from builder.errors import EnclaveBuildError
from builder.plugin_api import Framework, hookimpl
from builder.plugins import PluginError, PluginRegistry

from .conftest import image_rootfs, run_cli, write_spec

THIRD_PARTY = Path(__file__).parent / "thirdparty_plugin"


def test_builtins_are_loaded_from_entry_points():
    registry = PluginRegistry()
    assert set(registry.frameworks) == {"tfserving", "tflite", "openvino"}
    assert set(registry.libos) == {"gramine"}
    names = {info.name: info for info in registry.describe()}
    assert names["tfserving"].source == "enclave-build"
    assert names["tfserving"].hooks == ("enclave_build_frameworks",)


def test_plugins_command_lists_name_version_source_hooks():
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0
    infos = {p["name"]: p for p in json.loads(proc.stdout)}
    assert infos["gramine"]["libos"] == ["gramine"]
    assert infos["openvino"]["frameworks"] == ["openvino"]
    assert infos["tflite"]["version"] == "0.1.0"


def test_duplicate_framework_names_are_refused():
    class Dup:
        @hookimpl
        def enclave_build_frameworks(self):
            return [Framework("tflite", "dup", "x", plan=lambda spec: None)]

    with pytest.raises(PluginError, match="two plugins provide the framework 'tflite'"):
        PluginRegistry(extra_plugins=[Dup()])


def test_configure_hook_can_stop_a_build(tmp_path, standin_root, signing_key):
    from builder.build import build

    class Refuse:
        @hookimpl
        def enclave_build_configure(self, spec, plan):
            raise EnclaveBuildError("policy plugin: debug builds are not allowed here")

    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())
    spec = write_spec(tmp_path, '[service]\nname = "x"\nframework = "tflite"\n'
                                '[signing]\nkey = "key.pem"\n')
    with pytest.raises(EnclaveBuildError, match="debug builds are not allowed here"):
        build(spec, base=f"dir:{standin_root}", registry=PluginRegistry(extra_plugins=[Refuse()]))


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install the third-party plugin into its own directory (not into this environment)."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(THIRD_PARTY, source)  # setuptools writes build/ next to the sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    return target


@pytest.mark.integration
def test_third_party_plugin_is_listed_and_builds(installed_plugin, tmp_path, standin_root,
                                                 signing_key):
    env = {"PYTHONPATH": str(installed_plugin)}
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "echo 0.3.0  (enclave-build-echo-plugin)" in listing.stdout.decode()
    assert "enclave_build_configure, enclave_build_frameworks" in listing.stdout.decode()

    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())
    write_spec(tmp_path, '[service]\nname = "echo"\nframework = "echo"\n\n'
                         '[signing]\nkey = "key.pem"\n\n[echo]\ngreeting = "hi there"\n')
    proc = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out",
                   "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    measurements = json.loads(proc.stdout)
    assert measurements["framework"] == "echo"
    manifest = tomllib.loads((image_rootfs(tmp_path / "out") / "enclave/echo.manifest.sgx").read_text())
    assert manifest["loader"]["env"]["ECHO_GREETING"] == "hi there"
    assert manifest["loader"]["env"]["ECHO_CONFIGURED_BY"] == "echo-plugin"
    assert manifest["loader"]["argv"][-2:] == ["--port", "7007"]

    # Without the plugin installed, the same spec names an unknown framework.
    bare = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", cwd=tmp_path)
    assert bare.returncode == 2
    assert b"'echo' is not an installed framework" in bare.stderr
