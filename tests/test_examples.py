"""Every example spec builds exactly as shipped, after the scripts a user runs first.

The example tree is copied into a temporary directory with the same relative layout
(examples/NAME/spec.toml, examples/models/, examples/keys/), so the specs' relative paths are
used unchanged and the outputs land in the copy; models come from examples/fetch_models.py (the
tfserving SavedModel is made with a pinned TensorFlow, see examples/half_plus_two.py) and keys
from examples/make_keys.sh. Builds use the stand-in Gramine base, as the other build tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO, run_cli
from .models import fetch_models, get_or_skip
from .test_serving_e2e import onnx_plugin  # noqa: F401  (fixture)

EXAMPLES = REPO / "examples"
# spec (relative to examples/) -> the fetch_models.py group a user runs for it
SPECS = {
    "tflite/spec.toml": "tflite",
    "openvino/spec.toml": "openvino",
    "tfserving/spec.toml": "tfserving",
    "plugins/onnxruntime/spec.toml": "onnxruntime",
    "secret-server/spec.toml": "tflite",  # serves the tflite example: that build comes first
}
#: specs that need another example built first (their [secret-server] policies name its out/)
NEEDS_BUILT = {"secret-server/spec.toml": "tflite/spec.toml"}
#: specs whose base adds runtimes to gramine-python's: the stand-in gets them as the manual
#: says (docs/getting-started/install.md),
#: `enclave-build base standin DIR --runtimes NAME`
RUNTIMES = {
    "secret-server/spec.toml": "secret-server",
    "plugins/onnxruntime/spec.toml": "onnxruntime",
}
CONSOLE_SCRIPT = Path(sys.executable).parent / "enclave-build"


def _shipped_specs() -> set[str]:
    return {
        str(p.relative_to(EXAMPLES))
        for p in EXAMPLES.rglob("spec.toml")
        if not {"out", "models", "keys"} & set(p.relative_to(EXAMPLES).parts[:-1])
    }


def test_every_example_spec_is_covered():
    shipped = _shipped_specs()
    assert shipped == set(SPECS), (
        f"example specs not built by test_example_builds_as_shipped: {sorted(shipped - set(SPECS))}"
        f"; listed but gone: {sorted(set(SPECS) - shipped)} (add each to SPECS with what a user "
        "runs first)"
    )
    assert set(SPECS.values()) <= set(fetch_models.GROUPS)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_example_models_come_from_its_fetch_group(spec):
    """Each [[models]] path of the spec, as shipped, is where `fetch_models.py GROUP` puts a
    model (so the build cannot fail for a missing model after that one command)."""
    path = EXAMPLES / spec
    data = tomllib.loads(path.read_text())
    models_dir = (EXAMPLES / "models").resolve()
    placed = {
        (models_dir / (fetch_models.MADE.get(name) or fetch_models.ASSETS[name].dest)).resolve()
        for name in fetch_models.GROUPS[SPECS[spec]]
    }
    for model in data.get("models", []):  # a model file, or a directory (IR, SavedModel) of them
        wanted = (path.parent / model["path"]).resolve()
        assert any(p == wanted or wanted in p.parents for p in placed), (spec, wanted, placed)


@pytest.fixture(scope="module")
def example_tree(tmp_path_factory) -> Path:
    """A copy of examples/ (specs, scripts) with its models fetched and keys made, as a user
    would after `python examples/fetch_models.py` and `bash examples/make_keys.sh`."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"needs the installed console script {CONSOLE_SCRIPT}")
    root = tmp_path_factory.mktemp("newuser")
    for spec in SPECS:
        (root / "examples" / spec).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EXAMPLES / spec, root / "examples" / spec)
    shutil.copyfile(EXAMPLES / "make_keys.sh", root / "examples" / "make_keys.sh")
    env = {**os.environ, "PATH": f"{CONSOLE_SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"}
    keys = subprocess.run(
        ["bash", "examples/make_keys.sh"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert keys.returncode == 0, keys.stderr
    assert (root / "examples/keys/enclave-key.pem").stat().st_mode & 0o077 == 0
    return root


def _models(tree: Path, group: str) -> None:
    """What `python examples/fetch_models.py GROUP` does, into the copy (the skip/fail rule of
    tests/models.py applies when a wheel or TensorFlow cannot be had)."""
    for name in fetch_models.GROUPS[group]:
        get_or_skip(name)
        fetch_models.fetch(name, tree / "examples" / "models")


@pytest.mark.integration
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_example_builds_as_shipped(spec, example_tree, standin_root, request, tmp_path):
    _models(example_tree, SPECS[spec])
    base, env = standin_root, None
    if SPECS[spec] == "onnxruntime":  # a third-party plugin: installed as its README says
        env = {"PYTHONPATH": str(request.getfixturevalue("onnx_plugin"))}
    if spec in RUNTIMES:
        base = tmp_path / "standin-runtimes"
        made = run_cli("base", "standin", str(base), "--runtimes", RUNTIMES[spec])
        assert made.returncode == 0, made.stderr.decode()
    if spec in NEEDS_BUILT:
        first = NEEDS_BUILT[spec]
        if not (example_tree / "examples" / first).parent.joinpath("out").is_dir():
            built = run_cli(
                "build", f"examples/{first}", "--base", f"dir:{standin_root}", cwd=example_tree
            )
            assert built.returncode == 0, built.stderr.decode()
    proc = run_cli("build", f"examples/{spec}", "--base", f"dir:{base}", cwd=example_tree, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    # Exactly as shipped: the copy's spec is byte-identical to the repository's.
    assert (example_tree / "examples" / spec).read_bytes() == (EXAMPLES / spec).read_bytes()

    out = (example_tree / "examples" / spec).parent / "out"  # the default: out/ next to it
    measurements = json.loads((out / "measurements.json").read_text())
    shipped = tomllib.loads((EXAMPLES / spec).read_text())
    assert measurements["service"] == shipped["service"]["name"]
    assert measurements["framework"] == shipped["service"]["framework"]
    if any(m.get("encrypt", True) for m in shipped.get("models", [])):
        assert (out / "secrets-policy.toml").is_file()
    inspected = run_cli("inspect", str(out), "--json", env=env)
    assert inspected.returncode == 0, inspected.stderr.decode()
    report = json.loads(inspected.stdout)
    assert report["agrees"] is True
    assert report["sigstruct"]["mr_enclave"] == measurements["mr_enclave"]


@pytest.mark.integration
def test_half_plus_two_is_a_real_savedmodel_that_computes_half_plus_two(tmp_path):
    """The tfserving example's model: made by TensorFlow, loaded back, f(1.0) = 2.5."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import half_plus_two
    finally:
        sys.path.remove(str(EXAMPLES))
    get_or_skip("half_plus_two")  # the venv and the cached model, or the reason they cannot be
    venv = half_plus_two.ensure_venv()
    made = subprocess.run(
        [
            str(venv / "bin/python"),
            str(EXAMPLES / "half_plus_two.py"),
            "--make",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert "f(1.0) = 2.5" in made.stdout
    assert "serving_default(x float32 [-1]) -> y float32 [-1]" in made.stdout
    assert half_plus_two.is_made(tmp_path / "m")
    # The SavedModel protobuf names the signature and its tensors.
    pb = (tmp_path / "m/saved_model.pb").read_bytes()
    assert b"serving_default" in pb


def test_a_second_run_waits_for_the_tensorflow_install_instead_of_removing_it(
    tmp_path, monkeypatch
):
    """Seen: `fetch_models.py tfserving` started while a CI job was installing TensorFlow into
    the same cached venv took it for a half-made one, removed it under the running pip and
    left a venv marked ready with its packages gone. The second run must wait for the first."""
    import threading

    sys.path.insert(0, str(EXAMPLES))
    try:
        import half_plus_two
    finally:
        sys.path.remove(str(EXAMPLES))
    venv = tmp_path / "tf-venv"
    monkeypatch.setenv("ENCLAVE_BUILD_TF_VENV", str(venv))
    installing, waiting = threading.Event(), threading.Event()
    calls: list[str] = []

    def fake_run(argv, what, timeout):  # creating the venv, then pip install
        calls.append(what)
        if what == "creating the venv":
            (venv / "bin").mkdir(parents=True)
            (venv / "bin/python").touch()
            return
        (venv / "installed").write_text("tensorflow")
        installing.set()
        assert waiting.wait(30), "the second run did not wait for the first one's install"

    def say(message):
        if message.startswith("waiting for another process"):
            waiting.set()

    results: dict[str, Path] = {}

    def run(name):
        results[name] = half_plus_two.ensure_venv(run=fake_run, say=say)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert installing.wait(30)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(60)
    second.join(60)
    assert results == {"first": venv, "second": venv}
    assert calls == ["creating the venv", f"pip install {half_plus_two.TENSORFLOW}"]
    assert (venv / "installed").read_text() == "tensorflow"


def test_manual_shows_how_to_build_each_example_on_the_standin():
    """What test_example_builds_as_shipped does for the examples needing runtimes is what the
    manual's install page tells a user to run (the stand-in alone lacks them: the build would
    stop)."""
    install = (REPO / "docs" / "getting-started" / "install.md").read_text()
    for spec, runtimes in RUNTIMES.items():
        assert f"--runtimes {runtimes}" in install, spec
        assert f"enclave-build build examples/{spec} --base dir:" in install, spec
        assert f"--runtimes {runtimes}" in (EXAMPLES / spec).read_text(), spec


def test_one_model_that_cannot_be_fetched_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    done = []

    def fake_fetch(name, models_dir):
        if name == "half_plus_two":
            raise fetch_models.FetchError("cannot make half_plus_two: no TensorFlow here")
        target = models_dir / name.replace("/", "_")
        target.write_bytes(b"x")
        done.append(name)
        return target

    monkeypatch.setattr(fetch_models, "fetch", fake_fetch)
    assert fetch_models.main(["tfserving", "onnxruntime", "--dest", str(tmp_path)]) == 1
    assert done == ["text_direction_cls.onnx"]  # fetched after the failure
    err = capsys.readouterr().err
    assert "no TensorFlow here" in err and "not fetched: half_plus_two" in err
