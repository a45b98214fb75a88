"""`enclave-build init`: a commented spec, a signing key and keys/ for the user's own model; and
the newcomer's whole path from an empty directory: init -> build -> inspect (--extract)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.errors import UsageError
from enclave_build.builder.gramine.signer import PemSigner
from enclave_build.builder.init import (
    MODEL_PLACEHOLDER,
    init_project,
    installed_frameworks,
    render_section,
    size_text,
)
from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.spec import SpecError, load_spec
from enclave_build.contract.schema import Field, Section

from .conftest import onnx_bytes, run_cli, saved_model_dir, tflite_bytes

BUILTIN = ("tflite", "tfserving", "openvino")


def _sections():
    return PluginRegistry().framework_sections()


def _make_model(project: Path, framework: str) -> Path:
    """The user's step 1: a model where the spec's placeholder points."""
    path = project / MODEL_PLACEHOLDER
    if framework == "tfserving":  # a SavedModel directory
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"\x08\x01")
    else:
        path.write_bytes(tflite_bytes(bytes(64)))
    return path


def _make_ca(project: Path) -> None:
    """The user's step 2 (`enclave-build secrets tls DIR/tls --host localhost`)."""
    from enclave_build.attestation.synthetic import tls_ca_and_server

    tls_ca_and_server(project / "tls", ["localhost"], days=30, ca_name="test CA")


@pytest.mark.parametrize("framework", BUILTIN)
def test_generated_spec_validates_once_the_model_exists(tmp_path, framework):
    project = tmp_path / f"my-{framework}"
    result = init_project(project, framework=framework)
    assert (result.service, result.framework, result.key_created) == (
        f"my-{framework}",
        framework,
        True,
    )

    # Placeholder model (and the CA of step 2) missing: clear problems, naming the files.
    with pytest.raises(SpecError) as missing:
        load_spec(result.spec, _sections())
    lines = missing.value.lines()
    assert any(
        "models[0].path: file not found" in line
        and str(project.resolve() / MODEL_PLACEHOLDER) in line
        for line in lines
    ), lines
    assert all("models[0].path" in line or "secrets.ca" in line for line in lines), lines

    _make_model(project, framework)
    _make_ca(project)
    spec = load_spec(result.spec, _sections())

    fw = installed_frameworks()[framework]
    assert spec.service.name == f"my-{framework}" and spec.service.framework == framework
    assert spec.models[0].path == (project / MODEL_PLACEHOLDER).resolve()
    assert spec.models[0].encrypt is True
    assert spec.secrets.server == "localhost:4433"
    assert spec.signing.key == (project / "keys/enclave-key.pem").resolve()
    assert spec.enclave.size == fw.default_enclave_size
    assert spec.enclave.max_threads == fw.default_max_threads
    # The framework section is generated from its schema: every field, with its default.
    assert dict(spec.section(framework)) == {f.name: f.default for f in fw.section.fields}
    data = tomllib.loads(result.spec.read_text())
    assert list(data[framework]) == fw.section.field_names()


def test_key_and_directories(tmp_path):
    result = init_project(tmp_path / "svc")
    keys = tmp_path / "svc/keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE(result.key.stat().st_mode) == 0o600
    assert (tmp_path / "svc/models").is_dir()
    PemSigner.from_file(result.key)  # RSA-3072, e=3, accepted for signing


def test_never_overwrites_and_force_replaces_only_the_spec(tmp_path):
    project = tmp_path / "svc"
    first = init_project(project)
    key = first.key.read_bytes()
    first.spec.write_text("# edited by the user\n")

    with pytest.raises(UsageError) as refused:
        init_project(project)
    assert str(first.spec) in str(refused.value) and str(first.key) in str(refused.value)
    assert first.spec.read_text() == "# edited by the user\n"

    proc = run_cli("init", str(project))
    assert proc.returncode == 2
    assert "spec.toml" in proc.stderr.decode() and "enclave-key.pem" in proc.stderr.decode()

    again = init_project(project, framework="openvino", force=True)
    assert again.key_created is False and again.key.read_bytes() == key
    assert 'framework = "openvino"' in again.spec.read_text()


def test_force_keeps_the_model_that_models_holds(tmp_path):
    project = tmp_path / "svc"
    init_project(project, framework="openvino")
    (project / "models/face.xml").write_text("<net/>")
    (project / "models/face.bin").write_bytes(b"w")
    again = init_project(project, framework="openvino", force=True)
    models = tomllib.loads(again.spec.read_text())["models"]
    assert [m["path"] for m in models] == ["models/face.xml"]
    (project / "models/other.xml").write_text("<net/>")  # two: which one is not guessed
    third = init_project(project, framework="openvino", force=True)
    assert MODEL_PLACEHOLDER in third.spec.read_text()


def test_unknown_framework_and_bad_directory_names(tmp_path):
    proc = run_cli("init", "--framework", "x", str(tmp_path / "svc"))
    assert proc.returncode == 2
    assert "no such framework 'x'; did you mean 'tflite'?" in proc.stderr.decode()
    proc = run_cli("init", "--framework", "openvin", str(tmp_path / "svc"))
    assert proc.returncode == 2 and "did you mean 'openvino'?" in proc.stderr.decode()
    assert not (tmp_path / "svc").exists()

    proc = run_cli("init", str(tmp_path / "My_Model"))
    assert proc.returncode == 2
    assert "--name my-model" in proc.stderr.decode()
    assert not (tmp_path / "My_Model").exists()
    result = init_project(tmp_path / "My_Model", name="face")
    assert result.service == "face"
    with pytest.raises(UsageError):
        init_project(tmp_path / "other", name="Not A Label")


def test_cli_prints_every_next_step_to_dev(tmp_path):
    """Without a model and a base, init prints every step from there to a served model: the
    model, a base, the build, `dev`; commands only, no file of a checkout. The secret server's
    CA and certificate are made for the --secret-server host."""
    proc = run_cli("init", "svc", "--secret-server", "secrets.example.com:4433", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "enclave-build init --force --model YOUR_MODEL svc" in out
    base_step = (
        "enclave-build init --force --base standin --secret-server secrets.example.com:4433 svc"
    )
    assert base_step in out
    assert "enclave-build build svc\n" in out and "enclave-build dev svc\n" in out
    for checkout_only in ("scripts/", "examples/", ".venv", "docs/"):
        assert checkout_only not in out, checkout_only
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "svc/tls/server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "secrets.example.com" in names.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE((tmp_path / "svc/tls/server.key").stat().st_mode) == 0o600
    as_json = run_cli("init", "svc2", "--json", cwd=tmp_path)
    info = json.loads(as_json.stdout)
    assert [s["command"].split()[0:3] for s in info["next_steps"]] == [
        ["enclave-build", "init", "--force"],
        ["enclave-build", "init", "--force"],
        ["enclave-build", "build", "svc2"],
        ["enclave-build", "dev", "svc2"],
    ]
    assert set(info) == {
        "directory",
        "spec",
        "key",
        "key_created",
        "framework",
        "service",
        "secret_server",
        "model",
        "base",
        "tls_created",
        "spec_edited",
        "next_steps",
    }
    assert info["tls_created"] is True and info["model"] is None and info["base"] is None
    tls = tmp_path / info["directory"] / "tls"
    assert (tls / "issuer-ca.pem").is_file() and (tls / "issuer-ca.key").stat().st_mode & 0o077 == 0
    assert "tls/issuer-ca.key" in (tmp_path / info["directory"] / ".gitignore").read_text()


def test_render_section_of_a_third_party_schema_is_valid_toml():
    section = Section(
        "thing",
        "a plugin's options",
        (
            Field("port", "int", "a port", default=1, minimum=1, maximum=9),
            Field("on", "bool", "a switch", default=True),
            Field("args", "list[str]", "flags", default=["-a", 'quote"d']),
            Field("env", "table[str]", "variables", default={"A": "1"}),
            Field("mode", "str", "a mode", default="x", choices=("x", "y")),
            Field("token", "str", "no default"),
            Field("must", "str", "required", required=True),
        ),
    )
    text = "\n".join(render_section(section))
    data = tomllib.loads(text)
    assert data == {
        "thing": {"port": 1, "on": True, "args": ["-a", 'quote"d'], "env": {"A": "1"}, "mode": "x"}
    }
    assert "# must = ...   # REQUIRED" in text and "(1 to 9)" in text
    assert size_text(2 << 30) == "2G" and size_text(512 << 20) == "512M"


def test_init_build_inspect_from_an_empty_directory(tmp_path, standin_root):
    """A newcomer's path, all through the CLI, from an empty directory: init, a model of
    their own, the secret server's CA, build, inspect, and the auditor's --extract."""
    assert run_cli("init", "face", cwd=tmp_path).returncode == 0
    project = tmp_path / "face"
    (project / "models/face.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 4))
    spec = project / "spec.toml"
    spec.write_text(spec.read_text().replace(f'"{MODEL_PLACEHOLDER}"', '"models/face.tflite"'))
    # init made the secret server's CA for localhost; a new one replaces it (before a build)
    tls = run_cli(
        "secrets", "tls", "face/tls", "--host", "localhost", "--json", "--force", cwd=tmp_path
    )
    assert tls.returncode == 0, tls.stderr.decode()
    assert json.loads(tls.stdout)["server"] == "localhost:4433"

    build = run_cli(
        "build",
        "face/spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "face/out",
        "--json",
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr.decode()
    measurements = json.loads(build.stdout)
    assert measurements["service"] == "face"

    check = run_cli("inspect", "face/out", cwd=tmp_path)
    assert check.returncode == 0, check.stderr.decode()
    assert "agrees           true" in check.stdout.decode()

    extract = run_cli("inspect", "face/out", "--extract", "audit", "--json", cwd=tmp_path)
    assert extract.returncode == 0, extract.stderr.decode()
    info = json.loads(extract.stdout)
    audit = tmp_path / "audit"
    assert sorted(Path(p).name for p in info["extracted"]) == [
        "face.manifest.sgx",
        "face.sig",
        "measurements.json",
    ]
    assert (audit / "measurements.json").read_bytes() == (
        project / "out/measurements.json"
    ).read_bytes()
    sig = run_cli("gramine", "sigstruct", str(audit / "face.sig"), "--json")
    assert json.loads(sig.stdout)["mr_enclave"] == measurements["mr_enclave"]
    assert "sgx." in (audit / "face.manifest.sgx").read_text()

    # The policy fragment the build wrote feeds `secrets config --json`.
    pki = run_cli("secrets", "simulate-pki", "pki", "--json", cwd=tmp_path)
    assert pki.returncode == 0, pki.stderr.decode()
    pki_info = json.loads(pki.stdout)
    config = run_cli(
        "secrets",
        "config",
        "face/out",
        "--cert",
        "face/tls/server.crt",
        "--key",
        "face/tls/server.key",
        "--root-ca",
        pki_info["root_ca"],
        "--collateral",
        pki_info["collateral"],
        "--out",
        "secrets.toml",
        "--json",
        cwd=tmp_path,
    )
    assert config.returncode == 0, config.stderr.decode()
    config_info = json.loads(config.stdout)
    assert config_info["secrets"] == ["face-key"]
    assert [Path(k["file"]).name for k in config_info["keys"]] == ["face-key.key"]


def test_init_model_copies_it_and_the_printed_commands_build_it(tmp_path):
    """`init --model FILE`: the model is copied and named in the spec after its stem; the
    printed commands are all a newcomer runs: the stand-in base (no base given), the build,
    then `dev` (run in tests/test_dev.py)."""
    model = tmp_path / "face.tflite"
    model.write_bytes(tflite_bytes(bytes(range(256)) * 4))
    proc = run_cli("init", "--model", str(model), "--json", "face", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    project = tmp_path / "face"
    assert (project / "models/face.tflite").read_bytes() == model.read_bytes()
    models = tomllib.loads((project / "spec.toml").read_text())["models"]
    assert (models[0]["path"], models[0]["name"], info["model"]) == (
        "models/face.tflite",
        "face",
        "face",
    )
    commands = [step["command"] for step in info["next_steps"]]
    assert commands == [
        "enclave-build init --force --base standin face",
        "enclave-build build face",
        "enclave-build dev face",
    ]
    for command in commands[:2]:
        ran = run_cli(*command.split()[1:], cwd=tmp_path)
        assert ran.returncode == 0, (command, ran.stderr.decode())
    assert tomllib.loads((project / "spec.toml").read_text())["models"][0]["name"] == "face"
    assert run_cli("inspect", "face/out", cwd=tmp_path).returncode == 0


def test_init_model_refusals_write_nothing(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite_bytes())
    with pytest.raises(UsageError, match="serves no models"):
        init_project(tmp_path / "srv", framework="secret-server", model=model)
    assert not (tmp_path / "srv").exists()
    (tmp_path / "p/models").mkdir(parents=True)
    (tmp_path / "p/models/m.tflite").write_bytes(b"mine")
    with pytest.raises(UsageError, match="already exists; not overwriting"):
        init_project(tmp_path / "p", model=model)
    assert (tmp_path / "p/models/m.tflite").read_bytes() == b"mine"
    assert not (tmp_path / "p/spec.toml").exists()
    # An OpenVINO IR graph brings its weights.
    (tmp_path / "ir.xml").write_text("<net/>")
    (tmp_path / "ir.bin").write_bytes(b"\0" * 8)
    init_project(tmp_path / "ov", framework="openvino", model=tmp_path / "ir.xml")
    assert sorted(p.name for p in (tmp_path / "ov/models").iterdir()) == ["ir.bin", "ir.xml"]


def test_init_secret_server_writes_its_own_spec_and_steps(tmp_path):
    """The secret server as an enclave serves no models and fetches no keys: no [[models]], no
    [secrets]; its steps are owner certificate + policies, build (stand-in with its runtimes),
    upload."""
    result = init_project(tmp_path / "keys-srv", framework="secret-server")
    data = tomllib.loads(result.spec.read_text())
    assert "models" not in data and "secrets" not in data
    assert data["secret-server"]["owners"] == ["owner.crt"]
    assert "# policies = ...   # REQUIRED" in result.spec.read_text()
    commands = [step.command for step in result.next_steps]
    assert commands[0].startswith("openssl req -x509") and "keys-srv/keys/owner.key" in commands[0]
    assert "--runtimes secret-server" in result.next_steps[1].what
    assert commands[2].startswith("enclave-build secrets upload localhost:4433")
    # What is left for the user is named by the spec check, file, line and key.
    with pytest.raises(SpecError) as missing:
        load_spec(result.spec, _sections())
    assert any(
        "secret-server.policies: required key is missing" in line for line in missing.value.lines()
    ), missing.value.lines()


def _written(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_init_picks_the_framework_that_serves_the_model_and_refuses_one_that_cannot(tmp_path):
    """Without --framework, init takes the framework from the model (and says which); a named
    framework that cannot serve it, or a file that is no model, is exit 2 with nothing
    written."""
    (tmp_path / "silero_vad.onnx").write_bytes(onnx_bytes(bytes(64)))
    (tmp_path / "face.xml").write_text('<net name="face"><layers/></net>')
    (tmp_path / "face.bin").write_bytes(bytes(16))
    (tmp_path / "wake.tflite").write_bytes(tflite_bytes(bytes(64)))
    saved_model_dir(tmp_path / "saved" / "1")
    for model, framework in [
        ("silero_vad.onnx", "openvino"),
        ("face.xml", "openvino"),
        ("wake.tflite", "tflite"),
        ("saved/1", "tfserving"),
    ]:
        project = f"p-{framework}-{Path(model).stem}".replace("_", "-")
        proc = run_cli("init", "--model", model, project, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        assert f"framework {framework}: chosen for {Path(model).name}" in proc.stderr.decode()
        assert f"framework {framework}, model" in proc.stdout.decode()
        spec = tomllib.loads((tmp_path / project / "spec.toml").read_text())
        assert spec["service"]["framework"] == framework, model
        load_spec(tmp_path / project / "spec.toml", _sections())  # a spec that validates

    wrong = run_cli(
        "init", "--framework", "tflite", "--model", "silero_vad.onnx", "nope", cwd=tmp_path
    )
    assert wrong.returncode == 2
    err = wrong.stderr.decode()
    assert "--model silero_vad.onnx: framework tflite does not serve it" in err
    assert "Frameworks that serve it: openvino (--framework openvino" in err
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("fake.xml", b"<net/>", "its weights fake.bin are not next to it"),
        ("notes.tflite", b"these are my notes, not a model\n" * 4, "not a TFLite model"),
        ("readme.onnx", b"hello\n", "no installed framework serves it"),
        ("notes.txt", b"hello\n", "no installed framework serves it"),
    ],
)
def test_init_refuses_what_is_not_a_model_before_writing_anything(tmp_path, name, content, says):
    (tmp_path / name).write_bytes(content)
    proc = run_cli("init", "--model", name, "p", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout.decode()
    assert f"error: --model {name}: " in proc.stderr.decode() and says in proc.stderr.decode()
    assert not (tmp_path / "p").exists()


def test_force_model_replaces_only_the_model(tmp_path):
    """`init --force --model NEW DIR` on a project: the new copy, models[0] path and name set in
    place (the user's edits and comments stay), the old copy gone, keys and tls/ untouched; a
    model the project's framework cannot serve (or another option) is refused, nothing
    written."""
    (tmp_path / "old_model.tflite").write_bytes(tflite_bytes(bytes(64)))
    (tmp_path / "new_model.tflite").write_bytes(tflite_bytes(bytes(range(128))))
    (tmp_path / "vad.onnx").write_bytes(onnx_bytes(bytes(64)))
    base = "dir:/srv/gramine-base"
    first = run_cli("init", "--model", "old_model.tflite", "--base", base, "p", cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    project = tmp_path / "p"
    spec = project / "spec.toml"
    text = spec.read_text()
    text = text.replace('size = "2G"', 'size = "1G"  # mine: the model is small')
    text = text.replace('# tag = "p:latest"', 'tag = "registry.example.com/p:7"')
    spec.write_text(text + "# my own note\n")
    kept = {k: v for k, v in _written(project).items() if k.startswith(("keys/", "tls/"))}

    proc = run_cli("init", "--force", "--model", "new_model.tflite", "p", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "updated p/spec.toml" in proc.stdout.decode()
    assert "removed p/models/old_model.tflite" in proc.stderr.decode()
    assert sorted(p.name for p in (project / "models").iterdir()) == ["new_model.tflite"]
    edited = spec.read_text()
    assert (
        edited
        == text.replace('name = "old_model"', 'name = "new_model"').replace(
            '"models/old_model.tflite"', '"models/new_model.tflite"'
        )
        + "# my own note\n"
    )
    data = tomllib.loads(edited)
    assert data["enclave"]["size"] == "1G" and data["image"] == {
        "base": base,
        "tag": "registry.example.com/p:7",
    }
    assert {k: v for k, v in _written(project).items() if k.startswith(("keys/", "tls/"))} == kept

    before = _written(project)
    other = run_cli("init", "--force", "--model", "vad.onnx", "p", cwd=tmp_path)
    assert other.returncode == 2
    err = other.stderr.decode()
    assert "is framework tflite, which does not serve it" in err
    assert "Framework openvino serves it: run `enclave-build init --model vad.onnx NEW_DIR`" in err
    for refused in (
        ["--framework", "openvino", "--model", "new_model.tflite"],
        ["--model", "new_model.tflite", "--base", "standin"],
    ):
        proc = run_cli("init", "--force", *refused, "p", cwd=tmp_path)
        assert proc.returncode == 2, refused
    assert _written(project) == before
    # a name the user chose is kept; only the path follows the model
    spec.write_text(edited.replace('name = "new_model"', 'name = "detector"'))
    assert (
        run_cli("init", "--force", "--model", "old_model.tflite", "p", cwd=tmp_path).returncode == 0
    )
    model = tomllib.loads(spec.read_text())["models"][0]
    assert (model["name"], model["path"]) == ("detector", "models/old_model.tflite")


def test_force_without_a_model_keeps_the_framework(tmp_path):
    """The printed step `init --force --base standin DIR` keeps an openvino project openvino."""
    (tmp_path / "face.xml").write_text("<net/>")
    (tmp_path / "face.bin").write_bytes(bytes(8))
    assert run_cli("init", "--model", "face.xml", "p", cwd=tmp_path).returncode == 0
    again = run_cli("init", "--force", "--base", "dir:/srv/base", "p", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    data = tomllib.loads((tmp_path / "p/spec.toml").read_text())
    assert data["service"]["framework"] == "openvino"
    assert data["models"][0]["path"] == "models/face.xml"


def test_the_printed_init_steps_keep_what_this_init_chose(tmp_path):
    """The base step (`init --force --base standin ...`) repeats the options that shaped the
    spec: run as printed it keeps the service name, the in-cluster secret server and the
    namespace of `init --k8s` (and the framework)."""
    (tmp_path / "face.xml").write_text("<net/>")
    (tmp_path / "face.bin").write_bytes(bytes(8))
    proc = run_cli(
        "init",
        "--model",
        "face.xml",
        "--k8s",
        "vision",
        "--name",
        "face",
        "p",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    before = tomllib.loads((tmp_path / "p/spec.toml").read_text())
    (step,) = [
        s["command"] for s in json.loads(proc.stdout)["next_steps"] if "--base" in s["command"]
    ]
    assert step == "enclave-build init --force --base standin --name face --k8s vision p"
    again = run_cli(*step.split()[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    after = tomllib.loads((tmp_path / "p/spec.toml").read_text())
    assert after["image"]["base"] == "dir:.enclave-build/standin"
    for key in ("service", "secrets", "deploy", "models"):
        assert after[key] == before[key], key
