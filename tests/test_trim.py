"""[enclave] trim: which image paths an entry leaves out, the profile's compression into
directory entries, the spec's checks, the build (stand-in base: the manifest loses the files,
keeps the program and every library a kept ELF file needs, service.json records the entries)
and the crash explanation that names the entry to remove."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.run.failures import explain
from enclave_build.builder.spec_edit import set_table_list
from enclave_build.builder.trim import Trim, compress, entry_problem

from .conftest import image_rootfs, run_cli
from .test_build import SPEC, _project


def test_entries_match_files_directories_and_globs():
    trim = Trim.of(
        ["/usr/lib/python3.11/email/", "/usr/lib/python3.11/**/*.py", "/etc/x", "/a/b*/c?.so"]
    )
    match = lambda p: trim.match(p).text if trim.match(p) else None
    assert match("/usr/lib/python3.11/email/mime/text.pyc") == "/usr/lib/python3.11/email/"
    assert match("/usr/lib/python3.11/os.py") == "/usr/lib/python3.11/**/*.py"
    assert match("/usr/lib/python3.11/json/decoder.py") == "/usr/lib/python3.11/**/*.py"
    assert match("/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc") is None
    assert match("/etc/x") == "/etc/x" and match("/etc/xy") is None
    assert match("/a/bz/c1.so") == "/a/b*/c?.so"
    assert match("/a/bz/q/c1.so") is None  # * stays within one segment
    assert match("/usr/lib/python3.11/emailx/a.pyc") is None


def test_entry_problems():
    assert entry_problem("/ok/") is None and entry_problem("/ok/**/*.py") is None
    for bad in ("/", "relative", "/a/../b", "/a//b", "/a/./b", "/a*/"):
        assert entry_problem(bad), bad


def test_compress_makes_directory_entries_of_wholly_unused_directories():
    trusted = ["/a/b/1", "/a/b/2", "/a/b/c/3", "/a/c/1", "/a/c/2", "/a/d", "/a/e"]
    unused = ["/a/b/1", "/a/b/2", "/a/b/c/3", "/a/c/1", "/a/d"]
    # /a/b/ (3 files, all unused, /a/b/c/ inside it); /a/c/ has a used file; /a/ too
    assert compress(unused, trusted) == ["/a/b/", "/a/c/1", "/a/d"]
    assert compress(["/x/only"], ["/x/only", "/y"]) == ["/x/only"]  # one file: not a directory


def test_set_table_list_replaces_a_multiline_array_and_keeps_the_rest():
    text = (
        '[service]\nname = "x"\n\n[enclave]\nsize = "8G"\ntrim = [\n  "/a/",  # why\n  "/b",\n]\n'
        'max_threads = 3\n\n[image]\nbase = "y"\n'
    )
    out = set_table_list(text, "enclave", "trim", ["/a/", "/c/"], "profile")
    data = tomllib.loads(out)
    assert data["enclave"] == {"size": "8G", "trim": ["/a/", "/c/"], "max_threads": 3}
    assert data["image"] == {"base": "y"}
    assert (
        '# profile (was 2 entries)\ntrim = [\n    "/a/",\n    "/c/",\n]\nmax_threads = 3\n' in out
    )
    added = set_table_list('[enclave]\nsize = "1G"\n', "enclave", "trim", ["/z"], "p")
    assert tomllib.loads(added)["enclave"] == {"size": "1G", "trim": ["/z"]}


REFUSED = "[P1:T1:python3.11] warning: Disallowing access to file '{}'; file is not allowed."


def test_a_refused_file_the_trim_left_out_names_the_entry(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/python3.11/email").mkdir(parents=True)
    (root / "usr/lib/python3.11/email/parser.pyc").write_bytes(b"")
    trim = Trim.of(["/usr/lib/python3.11/email/", "/etc/hosts"])
    lines = [REFUSED.format("parser.pyc"), REFUSED.format("hosts"), REFUSED.format("other")]
    found = {e.kind: e for e in explain(lines, trim=trim, root=root)}
    trimmed = found["file-trimmed"]
    assert trimmed.key == "[enclave] trim"
    assert "trim left out" in trimmed.what  # with the root: certain
    assert (
        'remove "/usr/lib/python3.11/email/" (it leaves out /usr/lib/python3.11/email/parser.pyc)'
        in trimmed.change
    )
    assert 'remove "/etc/hosts" (it leaves out /etc/hosts)' in trimmed.change
    assert found["file-refused"].paths == ("other",)  # not the trim's: the old explanation
    # without a trim, the same lines are plain refused files
    assert [e.kind for e in explain(lines)] == ["file-refused"]


def test_doctor_log_names_the_trim_entry_from_the_spec(tmp_path):
    log = tmp_path / "enclave.log"
    log.write_text(REFUSED.format("decoder.cpython-311.pyc") + "\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('[enclave]\ntrim = ["/usr/lib/python3.11/json/"]\n')
    proc = run_cli("doctor", "--log", str(log), "--spec", str(spec), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    kinds = {e["kind"]: e for e in json.loads(proc.stdout)["explanations"]}
    assert kinds["file-trimmed"]["key"] == "[enclave] trim"
    assert '"/usr/lib/python3.11/json/"' in kinds["file-trimmed"]["change"]


# --------------------------------------------------------------------------- the build

#: the server's own attestation-server modules are files the plan adds on the PYTHONPATH
SERVER_DIR = "/opt/enclave-build/python/enclave_build/attestation/server/"
TRIMMED = SPEC.replace(
    "isv_svn = 9",
    'isv_svn = 9\ntrim = [\n  "/usr/lib/python3.11/unittest/",\n'
    '  "/usr/lib/x86_64-linux-gnu/libssl.so.3",\n  "/etc/nsswitch.conf",\n'
    f'  "{SERVER_DIR}",\n]',
)


def _trusted(out: Path) -> set[str]:
    manifest = tomllib.loads((image_rootfs(out) / "enclave/face.manifest.sgx").read_text())
    return {t["uri"][len("file:") :] for t in manifest["sgx"]["trusted_files"]}


def test_build_leaves_trimmed_files_out_but_keeps_needed_libraries(
    tmp_path, standin_root, signing_key
):
    from enclave_build.builder.build import build

    spec = _project(tmp_path / "a", signing_key)
    full = build(spec, base=f"dir:{standin_root}", output=tmp_path / "a/out").measurements
    before = _trusted(tmp_path / "a/out")
    assert "/etc/nsswitch.conf" in before and "/usr/lib/x86_64-linux-gnu/libssl.so.3" in before
    assert any(p.startswith("/usr/lib/python3.11/unittest/") for p in before)

    spec = _project(tmp_path / "b", signing_key, TRIMMED)
    trimmed = build(spec, base=f"dir:{standin_root}", output=tmp_path / "b/out").measurements
    after = _trusted(tmp_path / "b/out")
    assert after < before
    assert "/etc/nsswitch.conf" not in after
    assert not any(p.startswith("/usr/lib/python3.11/unittest/") for p in after)
    # _ssl's extension module is kept and links libssl: the library stays trusted
    assert "/usr/lib/x86_64-linux-gnu/libssl.so.3" in after
    assert trimmed.mr_enclave != full.mr_enclave  # the trusted list is measured
    # a file the plan adds and the trim leaves out is not shipped (an untrusted file on the
    # PYTHONPATH would fail the image's verification), the base's own files stay in the image
    assert any(p.startswith(SERVER_DIR) for p in before)
    assert not any(p.startswith(SERVER_DIR) for p in after)
    assert not (image_rootfs(tmp_path / "b/out") / SERVER_DIR.lstrip("/")).exists()
    assert (image_rootfs(tmp_path / "b/out") / "etc/nsswitch.conf").exists()
    verified = run_cli("inspect", str(tmp_path / "b/out"))
    assert verified.returncode == 0, verified.stderr.decode()[-2000:]
    info = json.loads((tmp_path / "b/out/service.json").read_text())
    assert info["trim"] == [
        "/usr/lib/python3.11/unittest/",
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/etc/nsswitch.conf",
        SERVER_DIR,
    ]
    sbom = json.loads((image_rootfs(tmp_path / "b/out") / "enclave/sbom.spdx.json").read_text())
    assert "/etc/nsswitch.conf" not in json.dumps(sbom)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"/usr/bin/python3.11"', "leaves out the program itself (/usr/bin/python3.11)"),
        ('"/nowhere/"', "'/nowhere/' matches no trusted file of this build"),
        ('"relative"', "an absolute image path"),
    ],
)
def test_a_trim_that_cannot_work_is_a_spec_error(
    tmp_path, standin_root, signing_key, entry, message
):
    spec = _project(
        tmp_path, signing_key, SPEC.replace("isv_svn = 9", f"isv_svn = 9\ntrim = [{entry}]")
    )
    proc = run_cli("build", str(spec), "--base", f"dir:{standin_root}", cwd=tmp_path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "spec.toml:15: enclave.trim" in stderr and message in stderr


def test_trim_is_refused_for_a_libos_without_per_file_trust(tmp_path, signing_key):
    spec = _project(
        tmp_path,
        signing_key,
        SPEC.replace('framework = "tflite"', 'framework = "tflite"\nlibos = "occlum"').replace(
            "isv_svn = 9", 'isv_svn = 9\ntrim = ["/etc/x"]'
        ),
    )
    proc = run_cli("build", str(spec), cwd=tmp_path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "enclave.trim" in stderr and "Gramine only" in stderr
