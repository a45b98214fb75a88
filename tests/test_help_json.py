"""`--json` output: every command that has it documents its keys in --help, and each command's
JSON parses and has exactly its documented (stable) top-level keys. The text output of the same
commands follows the one style: booleans true/false, signatures valid / INVALID: reason."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import pytest

from .conftest import run_cli, tflite_bytes, write_spec
from .test_help import COMMANDS, _help

MEASUREMENTS = {
    "service",
    "framework",
    "libos",
    "mr_enclave",
    "mr_signer",
    "isv_prod_id",
    "isv_svn",
    "debug",
    "image",
}
SIGSTRUCT = {
    "mr_enclave",
    "mr_signer",
    "isv_prod_id",
    "isv_svn",
    "date",
    "debug",
    "attributes",
    "signature_valid",
    "signature_problem",
}
# command -> its documented top-level keys (a list's items for commands that print a list)
SCHEMAS = {
    "enclave-build build": MEASUREMENTS,
    "enclave-build inspect": {
        "image",
        "digest",
        "labels",
        "sigstruct",
        "rederived",
        "agrees",
        "problems",
    },
    "enclave-build gramine sigstruct": SIGSTRUCT,
    "enclave-build gramine sign": {"mr_enclave", "mr_signer", "isv_prod_id", "isv_svn"},
    "enclave-build plugins": {"name", "version", "source", "hooks", "frameworks", "libos", "error"},
    "enclave-build pf info": {
        "format",
        "version",
        "file_size",
        "nodes",
        "plaintext_size_range",
        "metadata_nonce",
    },  # + path, plaintext_size with --wrap-key
    "enclave-build base list": {"name", "tag", "description"},
    "enclave-build init": {
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
    },
    "enclave-build doctor": {"schema", "ok", "counts", "checks"},
    "enclave-build secrets tls": {
        "ca",
        "cert",
        "key",
        "issuer_ca",
        "issuer_key",
        "hosts",
        "days",
        "server",
    },
    "enclave-build secrets simulate-pki": {"written", "root_ca", "collateral", "synthetic"},
    "enclave-build secrets config": {"written", "secrets", "measurements", "keys"},
    "enclave-build quote verify": {
        "verified",
        "status",
        "advisory_ids",
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "debug",
        "attributes",
        "report_data",
    },
    "enclave-build cache ls": {"root", "blobs", "rootfs", "limits"},
    "enclave-build cache prune": {
        "removed",
        "freed",
        "kept",
        "kept_bytes",
        "rootfs_freed",
        "records_removed",
    },
    "enclave-build cache clean": {
        "removed",
        "freed",
        "kept",
        "kept_bytes",
        "rootfs_freed",
        "records_removed",
    },
}
# Not here: commands whose JSON is checked by their own tests against a served endpoint
# (attest, secrets upload: tests/test_attest_cli.py); they must still name their keys in --help.


def _json_option(command: click.Command) -> click.Option | None:
    return next(
        (p for p in command.params if isinstance(p, click.Option) and "--json" in p.opts), None
    )


@pytest.mark.parametrize("path", sorted(p for p, c in COMMANDS.items() if _json_option(c)))
def test_json_keys_are_documented_in_help(path):
    """--json's help (or the epilog) names the keys, e.g. 'Print as JSON: a, b, c'."""
    option = _json_option(COMMANDS[path])
    text = (option.help or "") + "\n" + (COMMANDS[path].epilog or "")
    documented = set(re.findall(r"\b([a-z][a-z0-9_]+)\b", text))
    keys = SCHEMAS.get(path)
    if keys is None and path not in SCHEMAS:
        assert re.search(r"JSON[^.\n]*:", text), (
            f"{path}: --json help must list the JSON keys ('Print as JSON: key, key, ...')"
        )
        return
    missing = (keys or set()) - documented
    assert not missing, f"{path}: --json keys not named in --help: {sorted(missing)}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, standin_root, signing_key) -> Path:
    d = tmp_path_factory.mktemp("json")
    (d / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 8))
    shutil.copy(signing_key, d / "key.pem")
    tls = json.loads(
        run_cli("secrets", "tls", str(d / "tls"), "--host", "localhost", "--json").stdout
    )
    assert set(tls) == SCHEMAS["enclave-build secrets tls"]
    write_spec(
        d,
        f'''[service]
name = "jsonface"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"

[secrets]
server = "localhost:4433"
ca = "{tls["ca"]}"

[signing]
key = "key.pem"
''',
    )
    built = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", "--json", cwd=d)
    assert built.returncode == 0, built.stderr.decode()
    assert set(json.loads(built.stdout)) == SCHEMAS["enclave-build build"]
    return d


def _json(*args: str, cwd: Path | None = None, code: int = 0):
    proc = run_cli(*args, "--json", cwd=cwd)
    assert proc.returncode == code, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_json_of_inspect_sigstruct_sign(project, standin_root):
    report = _json("inspect", str(project / "out"))
    assert set(report) == SCHEMAS["enclave-build inspect"]
    assert set(report["sigstruct"]) == SIGSTRUCT and report["agrees"] is True
    extracted = _json("inspect", str(project / "out"), "--extract", str(project / "audit"))
    assert set(extracted) == SCHEMAS["enclave-build inspect"] | {"extracted"}
    sig = project / "audit/jsonface.sig"
    info = _json("gramine", "sigstruct", str(sig))
    assert set(info) == SIGSTRUCT
    assert info["signature_valid"] is True and info["signature_problem"] is None
    signed = _json(
        "gramine",
        "sign",
        "--manifest",
        str(project / "audit/jsonface.manifest.sgx"),
        "--libpal",
        f"{standin_root}/usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so",
        "--offsets",
        f"{standin_root}/usr/lib/python3/dist-packages/_graminelibos_offsets.py",
        "--key",
        str(project / "key.pem"),
        "--date",
        "0000-00-00",
        "--sigfile",
        str(project / "again.sig"),
    )
    assert set(signed) == SCHEMAS["enclave-build gramine sign"]
    assert signed["mr_enclave"] == info["mr_enclave"]

    # The text output: one style (true/false, valid).
    text = run_cli("gramine", "sigstruct", str(sig)).stdout.decode()
    assert re.search(r"^debug\s+false$", text, re.M) and re.search(
        r"^signature\s+valid$", text, re.M
    )
    assert "False" not in text and "True" not in text
    text = run_cli("inspect", str(project / "out")).stdout.decode()
    assert re.search(r"^agrees\s+true$", text, re.M) and re.search(r"^debug\s+false$", text, re.M)


def test_json_of_secrets_config_pki_and_quote_verify(project, tmp_path):
    pki = _json("secrets", "simulate-pki", str(tmp_path / "pki"))
    assert set(pki) == SCHEMAS["enclave-build secrets simulate-pki"] and pki["synthetic"] is True
    config = _json(
        "secrets",
        "config",
        str(project / "out"),
        "--cert",
        str(project / "tls/server.crt"),
        "--key",
        str(project / "tls/server.key"),
        "--root-ca",
        pki["root_ca"],
        "--collateral",
        pki["collateral"],
        "--out",
        str(tmp_path / "secrets.toml"),
    )
    assert set(config) == SCHEMAS["enclave-build secrets config"]
    assert config["secrets"] == ["jsonface-key"]

    from enclave_build.attestation.synthetic import SyntheticPKI

    measured = json.loads((project / "out/measurements.json").read_text())
    quote = SyntheticPKI.load(tmp_path / "pki").quote(
        bytes.fromhex(measured["mr_enclave"]), bytes.fromhex(measured["mr_signer"])
    )
    (tmp_path / "quote.bin").write_bytes(quote)
    verified = _json(
        "quote",
        "verify",
        str(tmp_path / "quote.bin"),
        "--collateral",
        pki["collateral"],
        "--root-ca",
        pki["root_ca"],
    )
    assert set(verified) == SCHEMAS["enclave-build quote verify"] and verified["verified"] is True
    assert verified["mr_enclave"] == measured["mr_enclave"]
    refused = _json(
        "quote", "verify", str(tmp_path / "quote.bin"), "--collateral", pki["collateral"], code=1
    )  # Intel's root: refused, still JSON
    assert set(refused) == {"verified", "reason"} and refused["verified"] is False


def test_json_of_plugins_base_list_pf_info_init_doctor(tmp_path):
    for item in _json("plugins"):
        assert set(item) == SCHEMAS["enclave-build plugins"]
    for item in _json("base", "list"):
        assert set(item) == SCHEMAS["enclave-build base list"]
    assert run_cli("pf", "keygen", "--out", str(tmp_path / "w.key")).returncode == 0
    (tmp_path / "plain").write_bytes(b"x" * 5000)
    assert (
        run_cli(
            "pf",
            "encrypt",
            "--wrap-key",
            str(tmp_path / "w.key"),
            "--input",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "enc"),
            "--path",
            "/m/plain",
        ).returncode
        == 0
    )
    without = _json("pf", "info", str(tmp_path / "enc"))
    with_key = _json("pf", "info", str(tmp_path / "enc"), "--wrap-key", str(tmp_path / "w.key"))
    assert set(without) == SCHEMAS["enclave-build pf info"]
    assert set(with_key) == set(without) | {"path", "plaintext_size"}
    assert with_key["path"] == "/m/plain" and with_key["plaintext_size"] == 5000
    init = _json("init", str(tmp_path / "proj"))
    assert set(init) == SCHEMAS["enclave-build init"]
    assert all(set(step) == {"what", "command"} for step in init["next_steps"])
    doctor = _json("doctor")
    assert set(doctor) == SCHEMAS["enclave-build doctor"] and doctor["schema"] == 1
    assert all(set(c) == {"id", "title", "status", "detail", "fix"} for c in doctor["checks"])


def test_json_of_cache_ls_prune_clean(project):
    from enclave_build.builder.cache import cache_root
    from enclave_build.builder.image.oci import BlobStore

    BlobStore(cache_root() / "blobs").put_bytes(b"a cached blob")
    listed = _json("cache", "ls")
    assert set(listed) == SCHEMAS["enclave-build cache ls"] and listed["blobs"]["count"] > 0
    assert set(listed["blobs"]["items"][0]) == {"digest", "size", "last_used", "shared"}
    for command in ("prune", "clean"):
        report = _json("cache", command)
        assert set(report) == SCHEMAS[f"enclave-build cache {command}"]


def test_every_json_command_is_exercised():
    """A command that gains --json gets a schema here (or, by another team, documents its keys
    in --help, which test_json_keys_are_documented_in_help checks)."""
    exercised = set(SCHEMAS)
    with_json = {p for p, c in COMMANDS.items() if _json_option(c)}
    assert exercised <= with_json, sorted(exercised - with_json)
    assert _help("enclave-build gramine sigstruct")
