"""Builds fed hostile or careless input: crashes become errors, outputs carry no host path or
time, the output swap is atomic and recovers, open keys are refused, and the CLI's `gramine
sign` and `secrets serve` go through the library and the common error mapping."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from enclave_build.builder import build as build_module
from enclave_build.builder.dir_swap import exchange_paths, recover_output, replace_dir
from enclave_build.builder.errors import EnclaveBuildError, UsageError
from enclave_build.builder.gramine.signer import PemSigner, SignerError
from enclave_build.builder.image.reference import parse_source

from .conftest import image_rootfs, run_cli, sgx_key_pem, write_spec

ALLOW_OPEN_KEY_ENV = "ENCLAVE_BUILD_ALLOW_OPEN_KEY"

ENCRYPTED_SPEC = """[service]
name = "tfs-secure"
framework = "tfserving"

[[models]]
name = "half_plus_two"
path = "saved_model"

[enclave]
size = "8G"
max_threads = 64

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"

[tls]
cert = "tls.crt"
key = "tls.key"

[build]
reproducible = true

[signing]
key = "key.pem"
"""


def _encrypted_project(project: Path, signing_key: Path, standin_root: Path) -> Path:
    """A project tree holding everything a build reads: spec, model, TLS material, signing key,
    wrap keys (the default keys_dir) and the base root filesystem."""
    (project / "saved_model" / "variables").mkdir(parents=True)
    (project / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01MODEL" * 300)
    (project / "saved_model" / "variables" / "variables.data").write_bytes(b"WEIGHTS" * 700)
    (project / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    (project / "tls.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
    )
    (project / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    shutil.copy(signing_key, project / "key.pem")
    shutil.copytree(standin_root, project / "rootfs", symlinks=True)
    return write_spec(project, ENCRYPTED_SPEC)


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (target) and directory (mode) under *root*, by relative path."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = f"dir {stat.S_IMODE(path.stat().st_mode):o}"
        else:
            out[rel] = path.read_bytes()
    return out


# ------------------------------------------------------------------ defect 5: errors, not crashes


def test_omitted_keys_dir_defaults_to_keys_beside_the_spec(tmp_path):
    """[secrets] without keys_dir used to leave the raw string "keys" (AttributeError later)."""
    from enclave_build.builder.spec import load_spec

    spec_path = write_spec(tmp_path, ENCRYPTED_SPEC)
    for name in ("saved_model", "ca.pem", "tls.crt", "tls.key"):
        (tmp_path / name).touch()
    (tmp_path / "key.pem").write_bytes(sgx_key_pem())
    spec = load_spec(spec_path, {"tfserving": None})
    assert spec.secrets.keys_dir == tmp_path.resolve() / "keys"
    assert isinstance(spec.secrets.keys_dir, Path)


@pytest.mark.parametrize(
    "text,nearest",
    [
        ("docker-deamon:x", "docker-daemon:"),
        ("docker-deamon:localhost:5000/x", "docker-daemon:"),  # was a requests InvalidURL
        ("oci-archiv:f.tar", "oci-archive:"),  # was Docker Hub's library/oci-archiv
        ("docker-archiv:/tmp/save.tar", "docker-archive:"),
        ("dockerdaemon:app:1", "docker-daemon:"),
        ("dokcer://registry.example.com/x:1", "docker://"),
        ("dri:/srv/rootfs", "dir:"),
    ],
)
def test_unknown_transport_is_a_usage_error_naming_the_nearest(text, nearest):
    with pytest.raises(UsageError) as info:
        parse_source(text)
    message = str(info.value)
    assert f"unknown transport {text.split(':', 1)[0] + ':'!r}" in message
    assert f"did you mean {nearest}?" in message
    assert (
        "valid transports: docker://, docker-daemon:, oci:, oci-archive:, docker-archive:, "
        "dir:" in message
    )


@pytest.mark.parametrize("text", ["https://registry.example.com/x", "foo:/some/path", "a:b:c"])
def test_other_schemes_are_usage_errors_too(text):
    with pytest.raises(UsageError, match="unknown transport"):
        parse_source(text)


@pytest.mark.parametrize(
    "text",
    [
        "ubuntu:24.04",
        "docker:24",
        "python:3.12-slim",
        "localhost:5000/face:1",
        "127.0.0.1:5000/a/b:2",
        "gramineproject/gramine:v1.9",
    ],
)
def test_registry_names_that_look_like_schemes_stay_registry_names(text):
    assert parse_source(text).transport == "docker"


def test_path_like_base_suggests_dir(tmp_path, monkeypatch):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "oci-layout").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for text, hint in [
        (str(tmp_path / "rootfs"), f"dir:{tmp_path / 'rootfs'}"),
        ("./rootfs", "dir:./rootfs"),
        ("../elsewhere", "dir:../elsewhere"),
        ("rootfs", "dir:rootfs"),
        ("layout", "oci:layout"),
    ]:
        with pytest.raises(UsageError, match=f"looks like a path.*did you mean {hint}\\?"):
            parse_source(text)


def test_cli_bad_base_exits_2_before_writing_anything(tmp_path, signing_key, standin_root):
    project = tmp_path / "p"
    project.mkdir()
    _encrypted_project(project, signing_key, standin_root)
    for base in ("docker-deamon:localhost:5000/x", "oci-archiv:f.tar", "./rootfs"):
        proc = run_cli("build", "spec.toml", "--base", base, "--output", "out", cwd=project)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert "did you mean" in err
    assert not (project / "out").exists()
    assert not (project / "keys").exists()  # no wrap key made for a build that cannot start


# ------------------------------------------------------------------ defect 6: reproducible bytes


def test_same_project_in_two_directories_gives_identical_output_bytes(
    tmp_path, signing_key, standin_root
):
    """The whole project (spec, model, keys, base rootfs) copied elsewhere, built from another
    working directory with absolute paths on the command line: every output byte is equal,
    image digest included. (Before: the dir: base's absolute path was in the image history and
    the policy fragment named the key file by absolute path.)"""
    from enclave_build.builder.gramine.protected_files import write_wrap_key

    first = tmp_path / "first"
    first.mkdir()
    _encrypted_project(first, signing_key, standin_root)
    (first / "keys").mkdir(mode=0o700)
    write_wrap_key(first / "keys" / "tfs-secure-key.key")
    second = tmp_path / "somewhere" / "else" / "second"
    shutil.copytree(first, second, symlinks=True)

    results = []
    for project, cwd in ((first, first), (second, tmp_path)):
        proc = run_cli(
            "build",
            str(project / "spec.toml"),
            "--base",
            f"dir:{project / 'rootfs'}",
            "--output",
            str(project / "out"),
            "--json",
            cwd=cwd,
            env={"SOURCE_DATE_EPOCH": ""},
        )
        assert proc.returncode == 0, proc.stderr.decode()
        results.append(json.loads(proc.stdout))
    assert results[0] == results[1]
    assert results[0]["image"]["digest"].startswith("sha256:")
    one, two = _tree(first / "out"), _tree(second / "out")
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []
    import gzip

    for name, content in two.items():  # and no host path at all, in the layers' tars either
        if isinstance(content, bytes):
            if content[:2] == b"\x1f\x8b":
                content = gzip.decompress(content)
            assert str(tmp_path).encode() not in content, name
            assert b"/somewhere/else" not in content, name
    # The policy fragment's key path is relative to the output and names the real key file.
    import tomllib

    policy = tomllib.loads((second / "out/secrets-policy.toml").read_text())
    assert (second / "out" / policy["secrets"][0]["file"]).resolve() == (
        second / "keys/tfs-secure-key.key"
    ).resolve()
    # The dir: base's history entry names no path.
    config = json.loads(image_config(second / "out"))
    assert config["history"][0]["created_by"] == "enclave-build: root filesystem from a dir: base"


def image_config(output: Path) -> bytes:
    index = json.loads((output / "oci/index.json").read_bytes())
    blob = lambda digest: (output / "oci/blobs/sha256" / digest.split(":", 1)[1]).read_bytes()
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    return blob(manifest["config"]["digest"])


def test_policy_fragment_is_tomli_w_data_with_safe_comments(tmp_path):
    import tomllib

    from enclave_build.attestation.measurements import ImageRef, Measurements
    from enclave_build.builder.plan import EnclaveResources, Mount, MountType, ServicePlan
    from enclave_build.contract.identity import EnclaveIdentity

    plan = ServicePlan(
        "svc",
        "tflite",
        "gramine",
        "b",
        "svc:1",
        "/bin/x",
        ["x"],
        EnclaveResources(1 << 30, 16),
        mounts=[
            Mount('/models/a"b\n[[secrets]]\nname = "evil"', MountType.ENCRYPTED, "file:/m", 'k"1')
        ],
    )
    measurements = Measurements(
        "svc",
        "tflite",
        "gramine",
        EnclaveIdentity("a" * 64, "b" * 64, 0, 0, False),
        ImageRef("svc:1", None),
    )
    out = tmp_path / "out"
    text = build_module.policy_fragment(plan, measurements, {'k"1': tmp_path / "keys/k.key"}, out)
    assert tomllib.loads(text) == {
        "measurements": ["measurements.json"],
        "keys_dir": "../keys",
        "secrets": [{"name": 'k"1', "file": "../keys/k.key", "allow": ["svc"]}],
    }
    assert text.startswith("# Secret-server policy fragment for service 'svc'")
    assert '# k"1: decrypts /models/a"b?[[secrets]]?name = "evil"\n' in text


# ------------------------------------------------------------------ defect 7: atomic output swap


def _output(root: Path, name: str, marker: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "measurements.json").write_text(marker)
    return directory


class _Crash(BaseException):
    """The build process dying at this point."""


def test_crash_between_the_steps_of_the_swap_leaves_an_output(tmp_path, monkeypatch):
    """A crash at any point of replacing an output leaves the old or the new one at OUT."""
    out = _output(tmp_path, "out", "old")
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out:  # moving the new output in: die before it happens
            raise _Crash()
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(_Crash()))
    new = _output(tmp_path, ".out.tmp-1-x", "new")
    with pytest.raises(_Crash):
        replace_dir(new, out)
    assert (out / "measurements.json").read_text() in ("old", "new")


def test_exchange_swaps_in_one_step(tmp_path):
    out = _output(tmp_path, "out", "old")
    new = _output(tmp_path, ".out.tmp-1-x", "new")
    if not exchange_paths(new, out):
        pytest.skip("this filesystem cannot exchange (renameat2 RENAME_EXCHANGE)")
    assert (out / "measurements.json").read_text() == "new"
    assert (new / "measurements.json").read_text() == "old"


def test_a_parked_output_is_put_back_by_the_next_build(
    tmp_path, monkeypatch, signing_key, standin_root
):
    """Without exchange support the old output is parked as .out.old-PID between two renames;
    a build that dies there leaves it, and the next run restores it (or drops it if OUT exists)."""
    out = _output(tmp_path, "out", "old")
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out:
            raise _Crash()
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(_Crash):
        replace_dir(_output(tmp_path, ".out.tmp-1-x", "new"), out, exchange=lambda a, b: False)
    monkeypatch.setattr(os, "rename", real_rename)
    parked = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert not out.exists() and parked == [f".out.old-{os.getpid()}"]
    # As a dead build's leftover:
    os.rename(tmp_path / parked[0], tmp_path / ".out.old-999999999")
    recover_output(out)
    assert (out / "measurements.json").read_text() == "old"
    # With OUT present, a leftover is only removed; a live build's is left alone.
    _output(tmp_path, ".out.old-999999998", "stale")
    _output(tmp_path, f".out.old-{os.getppid()}", "busy")
    recover_output(out)
    assert (out / "measurements.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.old-")) == [
        f".out.old-{os.getppid()}"
    ]


def test_build_recovers_a_parked_output_and_removes_stale_temps(
    tmp_path, signing_key, standin_root
):
    project = tmp_path / "p"
    project.mkdir()
    spec = _encrypted_project(project, signing_key, standin_root)
    spec.write_text(ENCRYPTED_SPEC.replace('[tls]\ncert = "tls.crt"\nkey = "tls.key"\n', ""))
    first = run_cli("build", "spec.toml", "--base", "dir:rootfs", "--output", "out", cwd=project)
    assert first.returncode == 0, first.stderr.decode()
    before = _tree(project / "out")
    os.rename(project / "out", project / ".out.old-999999999")  # died mid-swap
    _output(project, ".out.tmp-999999999-abc", "half-written")  # and its staging dir
    # A build that fails (here: the model is gone) still leaves the recovered output.
    shutil.rmtree(project / "saved_model")
    failed = run_cli("build", "spec.toml", "--base", "dir:rootfs", "--output", "out", cwd=project)
    assert failed.returncode == 2, failed.stderr.decode()
    assert _tree(project / "out") == before
    # no parked output or staging directory is left (.enclave-build/ holds the first build's
    # record of its inputs, builder.build_stamp)
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".")) == [".enclave-build"]
    assert [p.name for p in (project / ".enclave-build").iterdir()] == ["builds"]


# ------------------------------------------------------------------ defect 9: keys


def test_signing_key_readable_by_others_is_refused_with_the_fix(
    tmp_path, signing_key, standin_root
):
    project = tmp_path / "p"
    project.mkdir()
    _encrypted_project(project, signing_key, standin_root)
    (project / "key.pem").chmod(0o644)
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        "dir:rootfs",
        "--output",
        "out",
        cwd=project,
        env={ALLOW_OPEN_KEY_ENV: ""},
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    key = project / "key.pem"
    assert (
        f"error: {key}: the signing key is accessible to its group and other users "
        f"(mode 0644)" in err
    )
    assert f"Fix: chmod 600 {key}" in err and "Traceback" not in err
    assert not (project / "out").exists()
    # The explicit override builds, loudly.
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        "dir:rootfs",
        "--output",
        "out",
        cwd=project,
        env={ALLOW_OPEN_KEY_ENV: "1"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"warning: {key}: the signing key is accessible" in proc.stderr.decode()
    assert f"used anyway: {ALLOW_OPEN_KEY_ENV}=1" in proc.stderr.decode()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_other_access_is_refused_by_the_library(tmp_path, signing_key, monkeypatch, mode):
    monkeypatch.delenv(ALLOW_OPEN_KEY_ENV, raising=False)
    key = tmp_path / "k.pem"
    shutil.copy(signing_key, key)
    key.chmod(mode)
    with pytest.raises(SignerError, match=f"mode {mode:04o}"):
        PemSigner.from_file(key)
    key.chmod(0o600)
    PemSigner.from_file(key)
    key.chmod(0o400)
    PemSigner.from_file(key)


def test_empty_passphrase_never_writes_an_unencrypted_key(tmp_path):
    from enclave_build.builder.gramine.signer import write_new_key

    with pytest.raises(SignerError, match="empty passphrase"):
        write_new_key(tmp_path / "k.pem", b"")
    assert not (tmp_path / "k.pem").exists()


# ------------------------------------------------------------------ the CLI holds no logic


def test_gramine_sign_is_a_library_call(tmp_path, signing_key, standin_root):
    from enclave_build.builder.gramine.sign import sign_manifest_file

    project = tmp_path / "p"
    project.mkdir()
    spec = _encrypted_project(project, signing_key, standin_root)
    spec.write_text(ENCRYPTED_SPEC.replace('[tls]\ncert = "tls.crt"\nkey = "tls.key"\n', ""))
    proc = run_cli("build", "spec.toml", "--base", "dir:rootfs", "--output", "out", cwd=project)
    assert proc.returncode == 0, proc.stderr.decode()
    files = image_rootfs(project / "out")
    manifest = files / "enclave/tfs-secure.manifest.sgx"
    libpal = standin_root / "usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so"
    offsets = standin_root / "usr/lib/python3/dist-packages/_graminelibos_offsets.py"
    result = sign_manifest_file(
        manifest,
        libpal,
        offsets,
        key=project / "key.pem",
        date="0000-00-00",
        sigfile=tmp_path / "again.sig",
    )
    assert result.signed is not None and result.written == tmp_path / "again.sig"
    assert (tmp_path / "again.sig").read_bytes() == (files / "enclave/tfs-secure.sig").read_bytes()
    measurements = json.loads((project / "out/measurements.json").read_text())
    assert result.signed.summary()["mr_enclave"] == measurements["mr_enclave"]
    step_one = sign_manifest_file(
        manifest, libpal, offsets, tbs_out=tmp_path / "x.tbs", date="0000-00-00"
    )
    assert step_one.signed is None and step_one.mr_enclave == result.mr_enclave
    assert (tmp_path / "x.tbs").stat().st_size == step_one.tbs_size == 256
    for bad in (
        {},
        {"key": project / "key.pem", "tbs_out": tmp_path / "y"},
        {"key": project / "key.pem"},
        {"signature": tmp_path / "x.tbs", "sigfile": tmp_path / "z"},
    ):
        with pytest.raises(UsageError):
            sign_manifest_file(manifest, libpal, offsets, **bad)


def test_secrets_serve_uses_the_common_error_mapping(tmp_path):
    from .attest_env import make_env

    env = make_env(tmp_path / "env")
    # A TLS certificate the server cannot use: a runtime error, exit 1 (was a traceback).
    (env.directory / "server.crt").write_text("not a certificate\n")
    proc = run_cli("secrets", "serve", "--config", str(env.config))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "error: " in err and "cannot use the TLS certificate" in err
    assert "Traceback" not in err
    # A bad secrets.toml: a usage error, exit 2.
    env.config.write_text(env.config.read_text() + "\n[bogus]\n")
    proc = run_cli("secrets", "serve", "--config", str(env.config))
    assert proc.returncode == 2, proc.stderr.decode()
    assert proc.stderr.decode().startswith("error: ") and b"Traceback" not in proc.stderr


def test_errors_maps_foreign_exceptions_to_exit_codes(capsys):
    from enclave_build.builder.cli.output import errors

    class Foreign(ValueError):
        pass

    for kind, code in ((UsageError, 2), (EnclaveBuildError, 1)):
        with pytest.raises(SystemExit) as info:
            with errors({Foreign: kind}):
                raise Foreign("two\nlines")
        assert info.value.code == code
        assert capsys.readouterr().err == "error: two\nerror: lines\n"
    with pytest.raises(KeyError):  # anything else is not swallowed
        with errors({Foreign: UsageError}):
            raise KeyError("bug")


# ------------------------------------------------------------------ defect 8: checks that hide


def test_missing_conformance_vectors_fail_under_ci(monkeypatch):
    from .conftest import optional_vectors, vectors_dir

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: conformance vectors not found"):
        vectors_dir("no-such-vectors")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        optional_vectors("no-such-vectors")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        vectors_dir("no-such-vectors")
    assert optional_vectors("no-such-vectors") is None
