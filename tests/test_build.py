"""The build pipeline end to end against the stand-in Gramine rootfs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_build.attestation.measurements import Measurements

from .conftest import image_rootfs, run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[enclave]
size = "1G"
max_threads = 16
isv_prod_id = 4
isv_svn = 9

[signing]
key = "key.pem"
"""


def _project(directory: Path, signing_key: Path, spec: str = SPEC) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 10))
    shutil.copy(signing_key, directory / "key.pem")
    return write_spec(directory, spec)


def test_build_via_default_command_writes_outputs(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    proc = run_cli(
        "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr.decode()
    m = Measurements.from_dict(json.loads(proc.stdout))
    assert (m.service, m.framework, m.libos, m.isv_prod_id, m.isv_svn, m.debug) == (
        "face",
        "tflite",
        "gramine",
        4,
        9,
        False,
    )
    assert Measurements.load(tmp_path / "out/measurements.json") == m

    # The SIGSTRUCT written agrees with measurements.json and re-signing the manifest with
    # `gramine sign` (the gramine-sgx-sign equivalent) gives the same bytes.
    files = image_rootfs(tmp_path / "out")
    info = json.loads(
        run_cli(
            "gramine", "sigstruct", str(files / "enclave/face.sig"), "--json", cwd=tmp_path
        ).stdout
    )
    assert (info["mr_enclave"], info["mr_signer"]) == (m.mr_enclave, m.mr_signer)
    resign = run_cli(
        "gramine",
        "sign",
        "--manifest",
        str(files / "enclave/face.manifest.sgx"),
        "--libpal",
        f"{standin_root}/usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so",
        "--offsets",
        f"{standin_root}/usr/lib/python3/dist-packages/_graminelibos_offsets.py",
        "--key",
        "key.pem",
        "--date",
        "0000-00-00",
        "--sigfile",
        "again.sig",
        cwd=tmp_path,
    )
    assert resign.returncode == 0, resign.stderr.decode()
    assert (tmp_path / "again.sig").read_bytes() == (files / "enclave/face.sig").read_bytes()


def test_same_inputs_in_other_directories_give_identical_measurements(
    tmp_path, standin_root, signing_key
):
    results = []
    for name in ("one", "two/deeper"):
        _project(tmp_path / name, signing_key)
        proc = run_cli(
            "build",
            "spec.toml",
            "--base",
            f"dir:{standin_root}",
            "--output",
            "o",
            cwd=tmp_path / name,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        files = image_rootfs(tmp_path / name / "o")
        results.append(
            (
                (tmp_path / name / "o/measurements.json").read_text(),
                (files / "enclave/face.manifest.sgx").read_bytes(),
                (files / "enclave/face.sig").read_bytes(),
            )
        )
    assert results[0] == results[1]


def test_changed_model_changes_mrenclave(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build

    spec = _project(tmp_path, signing_key)
    first = build(spec, base=f"dir:{standin_root}").measurements
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(b" other model"))
    second = build(spec, base=f"dir:{standin_root}").measurements
    assert first.mr_enclave != second.mr_enclave
    assert first.mr_signer == second.mr_signer


def test_log_level_goes_into_the_measured_manifest(tmp_path, standin_root, signing_key):
    import tomllib

    from enclave_build.builder.build import build

    spec = _project(tmp_path, signing_key)
    out = tmp_path / "out"
    default = build(spec, base=f"dir:{standin_root}", output=out).measurements
    manifest = tomllib.loads((image_rootfs(out) / "enclave/face.manifest.sgx").read_text())
    assert manifest["loader"]["log_level"] == "error"
    _project(
        tmp_path, signing_key, SPEC.replace("isv_svn = 9", 'isv_svn = 9\nlog_level = "warning"')
    )
    warning = build(spec, base=f"dir:{standin_root}", output=out).measurements
    manifest = tomllib.loads((image_rootfs(out) / "enclave/face.manifest.sgx").read_text())
    assert manifest["loader"]["log_level"] == "warning"
    assert warning.mr_enclave != default.mr_enclave


def test_debug_build_warns(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key, SPEC.replace("isv_svn = 9", "isv_svn = 9\ndebug = true"))
    proc = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", "--json", cwd=tmp_path)
    assert proc.returncode == 0
    assert b"warning: building a DEBUG enclave" in proc.stderr
    assert json.loads(proc.stdout)["debug"] is True


def test_headline_command_writes_the_default_output(tmp_path, standin_root, signing_key):
    """`enclave-build spec.toml` (no --output) writes out/ next to the spec and says so."""
    _project(tmp_path, signing_key)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = run_cli(str(tmp_path / "spec.toml"), "--base", f"dir:{standin_root}", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert json.loads((out / "measurements.json").read_text())["service"] == "face"
    assert (out / "oci" / "index.json").is_file()
    assert f"output       {out}" in proc.stdout.decode()
    # built on the stand-in: the summary says so, from the marker the stand-in carries
    assert "base         a STAND-IN (`enclave-build base standin`)" in proc.stdout.decode()
    assert not list(elsewhere.iterdir())


def test_failed_build_keeps_previous_output(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    ok = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    assert ok.returncode == 0
    before = (tmp_path / "out/measurements.json").read_text()
    (tmp_path / "model.tflite").unlink()
    bad = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert (tmp_path / "out/measurements.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0] == "cache"  # the tests' own cache
    }


def test_build_never_empties_a_directory_it_did_not_write(tmp_path, standin_root):
    """`--output DIR` replaces DIR as a whole: a directory holding the user's files (the
    model, the CA, notes) or the project itself is refused (exit 2, naming it and why) and left
    as it was; a new or empty directory, or an earlier build output, is written."""
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite_bytes(bytes(range(256)) * 4))
    init = run_cli(
        "init", "--model", str(model), "--base", f"dir:{standin_root}", "wipe", cwd=tmp_path
    )
    assert init.returncode == 0, init.stderr.decode()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    refused = [
        ("wipe/models", "it contains models[0].path"),
        ("wipe/tls", "it contains [secrets] ca"),
        ("wipe", "it is the spec's directory"),
        (".", "it contains the spec's directory"),
        ("wipe/keys", "it is [secrets] keys_dir"),
        ("notes", "not replacing this directory: it holds notes.txt, which no build output holds"),
    ]
    for output, why in refused:
        proc = run_cli("build", "-q", "wipe", "--output", output, cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (output, err)
        assert f"error: --output {output}: {why}" in err, err
    dev = run_cli("dev", "wipe", "--output", "wipe/models", cwd=tmp_path)  # builds the same way
    assert dev.returncode == 2 and "it contains models[0].path" in dev.stderr.decode()
    assert _tree(tmp_path) == before  # nothing removed, nothing written (not even a wrap key)

    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):  # new/empty, then an earlier build output: replaced
        proc = run_cli("build", "-q", "wipe", "--output", "empty", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
    assert (empty / "measurements.json").is_file() and (empty / "oci" / "oci-layout").is_file()
    (empty / "deploy").mkdir()  # something of the user's in an earlier output
    proc = run_cli("build", "-q", "wipe", "--output", "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--output empty: not replacing this directory: it holds deploy" in proc.stderr.decode()
    assert (empty / "deploy").is_dir()
    assert "never emptied" in run_cli("build", "--help").stdout.decode()


def test_base_standin_is_refused_at_once_with_the_spelling_that_works(tmp_path):
    """`standin` is a keyword of `init --base`; given to build or dev it is refused at once
    (exit 2, nothing looked up on Docker Hub) with the --base that works here."""
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite_bytes(bytes(range(256)) * 4))
    assert run_cli("init", "--model", str(model), "plain", cwd=tmp_path).returncode == 0
    assert (
        run_cli(
            "init", "--model", str(model), "--base", "standin", "local", cwd=tmp_path
        ).returncode
        == 0
    )
    for command in ("build", "dev"):
        proc = run_cli(command, "plain", "--base", "standin", cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert "--base standin: `standin` is a keyword of `enclave-build init --base` only" in err
        assert "`enclave-build base standin DIR` makes one, then --base dir:DIR" in err
        assert "registry" not in err and "docker.io" not in err
        proc = run_cli(command, "local", "--base", "standin", cwd=tmp_path)
        project_standin = (tmp_path / "local/.enclave-build/standin").resolve()
        assert f"this project has one: --base dir:{project_standin}" in proc.stderr.decode()
    assert not (tmp_path / "plain/out").exists() and not (tmp_path / "local/out").exists()


def test_base_without_gramine_is_a_clear_error(tmp_path, signing_key):
    _project(tmp_path, signing_key)
    empty = tmp_path / "empty-root"
    (empty / "usr/lib/python3/dist-packages").mkdir(parents=True)
    proc = run_cli("build", "spec.toml", "--base", f"dir:{empty}", cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "error: no Gramine installation found in the base image" in err
    assert "/usr/lib/python3/dist-packages/graminelibos/__init__.py" in err
    assert "Bases that work: gramineproject/gramine:1.9-noble" in err
    assert "`enclave-build base gramine ROOTFS`" in err


def test_encrypted_password_key_via_env(tmp_path, standin_root):
    from enclave_build.builder.gramine.signer import write_new_key

    directory = tmp_path / "p"
    directory.mkdir()
    write_new_key(directory / "key.pem", b"pw")
    (directory / "model.tflite").write_bytes(tflite_bytes())
    write_spec(directory, SPEC.replace('key = "key.pem"', 'key = "key.pem"\npassphrase_env = "K"'))
    missing = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", cwd=directory)
    assert missing.returncode == 2
    assert b"signing.passphrase_env names K, which is not set in the environment" in missing.stderr
    ok = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", cwd=directory, env={"K": "pw"}
    )
    assert ok.returncode == 0, ok.stderr.decode()
    wrong = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", cwd=directory, env={"K": "nope"}
    )
    assert wrong.returncode == 1
    assert (
        b"cannot load the signing key (wrong passphrase, or not a PEM private key)" in wrong.stderr
    )


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_external_signing_two_step_build(tmp_path, standin_root, signing_key):
    """The spec names only the public key: step one stops with exit 3 and the bytes to sign;
    step two, given the detached signature, produces the same enclave as local signing."""
    local = _project(tmp_path / "local", signing_key)
    assert (
        run_cli(
            "build",
            str(local),
            "--base",
            f"dir:{standin_root}",
            "--output",
            str(tmp_path / "local/out"),
        ).returncode
        == 0
    )

    ext = tmp_path / "ext"
    _project(ext, signing_key)
    subprocess.run(
        ["openssl", "rsa", "-in", str(signing_key), "-pubout", "-out", str(ext / "pub.pem")],
        check=True,
        capture_output=True,
    )
    (ext / "key.pem").unlink()  # the build machine never has the private key
    write_spec(ext, SPEC.replace('key = "key.pem"', 'public_key = "pub.pem"'))
    step1 = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=ext
    )
    assert step1.returncode == 3, step1.stderr.decode()
    assert b"wrote the 256 bytes to sign to" in step1.stderr
    assert not (ext / "out").exists()
    assert f"wrote the 256 bytes to sign to {ext / 'face.sigstruct.tbs'}" in step1.stderr.decode()
    subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-sign",
            str(signing_key),
            "-out",
            str(ext / "sigstruct.sig"),
            str(ext / "face.sigstruct.tbs"),
        ],
        check=True,
    )
    step2 = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--signature",
        "sigstruct.sig",
        cwd=ext,
    )
    assert step2.returncode == 0, step2.stderr.decode()
    assert (image_rootfs(ext / "out") / "enclave/face.sig").read_bytes() == (
        image_rootfs(tmp_path / "local/out") / "enclave/face.sig"
    ).read_bytes()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["build"],
        ["plugins"],
        ["keygen"],
        ["gramine"],
        ["gramine", "sign"],
        ["gramine", "sigstruct"],
        ["base"],
        ["base", "standin"],
        ["base", "list"],
        ["base", "build"],
        ["inspect"],
        ["pf"],
        ["pf", "encrypt"],
        ["pf", "decrypt"],
        ["pf", "info"],
        ["pf", "keygen"],
        ["quote"],
        ["quote", "verify"],
        ["secrets"],
        ["secrets", "serve"],
        ["attest"],
    ],
)
def test_every_command_has_help(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0
    assert b"Usage: " in proc.stdout
    assert b"--help" in proc.stdout


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("enclave-build, version ")
