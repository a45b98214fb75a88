"""`enclave-build base gramine`: the real-base recipe without running it (the apt files of the
repository route, the signing-key check, the command lines, the refusals), and both routes for
real (integration): the archive route, and the repository route against a signed stand-in of
Gramine's repository on 127.0.0.1 (packages.gramineproject.io cannot be reached from the
development machines)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from enclave_build.builder.errors import UsageError
from enclave_build.builder.realbase import commands, gramine_apt, openpgp
from enclave_build.builder.realbase.create import (
    BaseRecipe,
    GramineArchive,
    check,
    default_requirements,
    extract_archive,
    move_console_scripts,
)
from enclave_build.builder.realbase.gramine_apt import GramineRepository, KeyringError
from enclave_build.builder.realbase.tools import ToolError, run

from .conftest import run_cli

GPG = shutil.which("gpg")


def _stop_agent(home: Path) -> None:
    """gpg starts an agent per home directory; it must not outlive the test."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
    )


def _gpg_key(home: Path, name: str) -> tuple[bytes, bytes, str]:
    """A fresh ed25519 key made by GnuPG: (binary export, armored export, fingerprint)."""
    home.mkdir(mode=0o700, parents=True)
    base = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    try:
        subprocess.run(
            base
            + [
                "--passphrase",
                "",
                "--quick-gen-key",
                f"{name} <{name}@example.com>",
                "ed25519",
                "sign",
                "0",
            ],
            check=True,
            capture_output=True,
        )
        binary = subprocess.run(base + ["--export"], check=True, capture_output=True).stdout
        armored = subprocess.run(
            base + ["--armor", "--export"], check=True, capture_output=True
        ).stdout
        listing = subprocess.run(
            base + ["--with-colons", "--list-keys"], check=True, capture_output=True
        ).stdout.decode()
    finally:
        _stop_agent(home)
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return binary, armored, fpr


@pytest.mark.skipif(GPG is None, reason="needs gpg to make OpenPGP keys")
def test_fingerprints_agree_with_gnupg(tmp_path):
    binary, armored, fpr = _gpg_key(tmp_path / "a", "repo")
    assert openpgp.primary_fingerprints(binary) == [fpr]
    assert openpgp.primary_fingerprints(armored) == [fpr]
    assert openpgp.dearmor(armored) == binary
    other, _, second = _gpg_key(tmp_path / "b", "other")
    assert openpgp.primary_fingerprints(binary + other) == [fpr, second]


def test_old_and_new_packet_framing():
    body = (
        bytes([4]) + b"\x60\x2d\x22\xc9" + bytes([22]) + b"\x09" + b"\x2b\x06\x01\x04\x01"
        b"\xda\x47\x0f\x01" + b"\x01\x07" + b"\x40" + bytes(32)
    )
    import hashlib

    expected = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    old = bytes([0x80 | (6 << 2) | 0, len(body)]) + body  # old format, 1-byte length
    new = bytes([0xC0 | 6, len(body)]) + body  # new format
    uid = bytes([0xC0 | 13, 4]) + b"test"
    assert openpgp.primary_fingerprints(old + uid) == [expected]
    assert openpgp.primary_fingerprints(new) == [expected]
    for broken in (
        new[:-1],
        b"\x00" + new,
        bytes([0xC0 | 6, 0xE1]) + body,
        uid,
        bytes([0xC0 | 6, 2]) + b"\x05\x00",
    ):
        with pytest.raises(openpgp.OpenPGPError):
            openpgp.primary_fingerprints(broken)
    with pytest.raises(openpgp.OpenPGPError):
        openpgp.dearmor(b"x" * (openpgp.MAX_KEYRING + 1))


@pytest.mark.skipif(GPG is None, reason="needs gpg to make OpenPGP keys")
def test_keyring_is_trusted_only_with_the_pinned_fingerprint(tmp_path):
    binary, armored, fpr = _gpg_key(tmp_path / "a", "mirror")
    with pytest.raises(KeyringError, match="not the pinned EA3C 2D62 4681 AC96"):
        GramineRepository().check_keyring(binary, "downloaded")
    mirror = GramineRepository(url="https://apt.example.com/gramine/", fingerprints=(fpr,))
    assert mirror.check_keyring(armored, "mirror.asc") == binary  # stored binary for apt
    other, _, _ = _gpg_key(tmp_path / "b", "intruder")
    with pytest.raises(KeyringError, match=r"intruder|holds the key"):
        mirror.check_keyring(binary + other, "two keys")
    with pytest.raises(KeyringError, match="not an OpenPGP keyring"):
        mirror.check_keyring(b"<html>404</html>", "a web page")
    local = tmp_path / "mirror.gpg"
    local.write_bytes(binary)
    assert mirror.fetch_keyring(local) == binary  # a local copy: nothing downloaded


def test_the_apt_files_of_the_repository_route():
    """What Gramine 1.9's installation guide says for Debian 12, written as files."""
    repo = GramineRepository()
    files = repo.apt_files(b"KEYRING")
    assert set(files) == {
        "/etc/apt/keyrings/gramine-keyring-bookworm.gpg",
        "/etc/apt/sources.list.d/gramine.list",
        "/etc/apt/preferences.d/gramine",
    }
    assert files[gramine_apt.KEYRING_PATH] == b"KEYRING"
    lines = [
        line
        for line in files[gramine_apt.SOURCES_PATH].decode().splitlines()
        if not line.startswith("#")
    ]
    assert lines == [
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg] "
        "https://packages.gramineproject.io/ bookworm main"
    ]
    stanzas = [
        dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        for block in files[gramine_apt.PREFERENCES_PATH].decode().split("\n\n")
    ]
    assert stanzas == [
        {"Package": "gramine", "Pin": "version 1.9", "Pin-Priority": "1001"},
        {"Package": "*", "Pin": "origin packages.gramineproject.io", "Pin-Priority": "100"},
    ]
    assert (
        gramine_apt.KEYRING_URL == "https://packages.gramineproject.io/gramine-keyring-bookworm.gpg"
    )
    assert gramine_apt.FINGERPRINTS == ("EA3C2D624681AC968521587A5EE1171912234070",)
    assert repo.install_spec() == "gramine=1.9"
    mirror = GramineRepository(url="http://127.0.0.1:8080/gramine")
    assert "http://127.0.0.1:8080/gramine/ bookworm main" in mirror.sources_list()
    assert "Pin: origin 127.0.0.1" in mirror.preferences()
    for bad in ({"url": "ftp://x/"}, {"url": "https://x/ y"}, {"fingerprints": ("abc",)}):
        with pytest.raises(UsageError):
            GramineRepository(**bad)


def test_mmdebstrap_installs_gramine_from_the_repository_in_its_hooks(tmp_path):
    repo = GramineRepository()
    args = commands.mmdebstrap(tmp_path / "root", "http://mirror/debian", repo, tmp_path / "apt")
    assert args[0] == "mmdebstrap" and args[-3:] == [
        "bookworm",
        str(tmp_path / "root"),
        "http://mirror/debian",
    ]
    include = next(a for a in args if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert "python3.11" in include and "libcurl4" in include and "gramine" not in include
    hooks = [a.split("=", 1)[1] for a in args if a.startswith("--customize-hook=")]
    assert hooks[0] == (
        f'install -d -m 0755 "$1/etc/apt/keyrings" && install -m 0644 '
        f"{tmp_path}/apt/etc/apt/keyrings/gramine-keyring-bookworm.gpg "
        f'"$1/etc/apt/keyrings/gramine-keyring-bookworm.gpg"'
    )
    assert hooks[-2:] == [
        'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get update',
        'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y '
        "--no-install-recommends gramine=1.9",
    ]
    plain = commands.mmdebstrap(tmp_path / "root")
    assert not [a for a in plain if a.startswith("--customize-hook")]


def test_pip_takes_wheels_for_the_bases_python_only(tmp_path):
    args = commands.pip_install("/usr/bin/python3", tmp_path, [Path("r.txt")])
    assert args[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert ["--target", f"{tmp_path}/usr/local/lib/python3.11/dist-packages"] == args[
        args.index("--target") : args.index("--target") + 2
    ]
    assert (
        "--only-binary=:all:" in args
        and ["--python-version", "3.11"]
        == args[args.index("--python-version") : args.index("--python-version") + 2]
    )
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_37_x86_64" not in platforms
    assert args[-2:] == ["-r", "r.txt"]
    assert (
        default_requirements()[0].name == "requirements.txt"
        and default_requirements()[0].parent.name == "gramine-python"
    )


def test_refusals_come_before_anything_is_made(tmp_path):
    recipe = BaseRecipe(tmp_path / "base", GramineArchive(tmp_path / "missing.tgz"))
    with pytest.raises(UsageError, match="needs root"):
        check(recipe, euid=1000, which=lambda name: "/usr/bin/" + name)
    with pytest.raises(UsageError, match="apt-get install mmdebstrap"):
        check(recipe, euid=0, which=lambda name: None)
    with pytest.raises(UsageError, match=r"missing\.tgz: no such file"):
        check(recipe, euid=0, which=lambda name: "/usr/bin/" + name)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "x").write_text("")
    with pytest.raises(UsageError, match="not an empty directory"):
        check(recipe, euid=0, which=lambda name: "/usr/bin/" + name)
    assert not (tmp_path / "missing.tgz").exists()


def test_cli_refuses_mixed_routes_and_unknown_files(tmp_path):
    proc = run_cli(
        "base", "gramine", str(tmp_path / "r"), "--archive", "a.tgz", "--keyring", "k.gpg"
    )
    assert proc.returncode == 2 and b"--archive installs Gramine from that file" in proc.stderr
    proc = run_cli("base", "gramine", str(tmp_path / "r"), "--key-fingerprint", "AB" * 20)
    assert proc.returncode == 2 and b"pass that key with --keyring" in proc.stderr
    if os.geteuid() != 0:
        proc = run_cli("base", "gramine", str(tmp_path / "r"))
        assert proc.returncode == 2 and b"needs root" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_tool_output_is_shown_and_a_failure_names_its_tail():
    lines: list[str] = []
    run([sys.executable, "-c", "print('one'); print('two')"], "printer", lines.append)
    assert lines == ["  | one", "  | two"]
    with pytest.raises(ToolError, match=r"failing failed .* exited with 3\):\nbad news"):
        run(
            [sys.executable, "-c", "print('bad news'); raise SystemExit(3)"],
            "failing",
            lambda line: None,
        )
    with pytest.raises(ToolError, match="cannot run"):
        run(["/nonexistent/tool"], "nothing", lambda line: None)
    quiet: list[str] = []
    run(
        [
            sys.executable,
            "-c",
            "import time\nfor i in range(4): print(i, flush=True); time.sleep(0.1)",
        ],
        "slow",
        quiet.append,
        heartbeat=0.15,
        show_output=False,
    )
    assert quiet and all(line.startswith("  (slow: still running") for line in quiet)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def test_the_archive_is_extracted_safely(tmp_path):
    def item(name, kind=tarfile.REGTYPE, data=b"", mode=0o755, link=""):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.linkname = kind, len(data), mode, link
        return info, data

    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "usr").chmod(0o755)
    good = tmp_path / "good.tgz"
    good.write_bytes(
        _tar(
            [
                item("./usr", tarfile.DIRTYPE, mode=0o700),
                item("./usr/bin/gramine-direct", data=b"#!/bin/sh\n"),
                item("./usr/bin/gramine-sgx", tarfile.SYMTYPE, link="gramine-direct"),
                item("./usr/bin/suid", data=b"x", mode=0o4755),
            ]
        )
    )
    extract_archive(good, root)
    assert (root / "usr/bin/gramine-direct").read_bytes() == b"#!/bin/sh\n"
    assert os.readlink(root / "usr/bin/gramine-sgx") == "gramine-direct"
    assert (root / "usr").stat().st_mode & 0o777 == 0o755  # existing directories kept
    assert not (root / "usr/bin/suid").stat().st_mode & 0o4000  # no setuid from an archive
    from enclave_build.builder.errors import EnclaveBuildError

    for bad in ([item("../escape", data=b"x")], [item("dev/x", tarfile.CHRTYPE)]):
        path = tmp_path / "bad.tgz"
        path.write_bytes(_tar(bad))
        with pytest.raises(EnclaveBuildError):
            extract_archive(path, root)
    assert not (tmp_path / "escape").exists()


def test_console_scripts_move_to_usr_local_bin_with_the_bases_python(tmp_path):
    scripts = tmp_path / commands.SITE.lstrip("/") / "bin"
    scripts.mkdir(parents=True)
    (scripts / "tool").write_text("#!/home/me/.venv/bin/python3\nimport sys\n")
    move_console_scripts(tmp_path)
    moved = tmp_path / "usr/local/bin/tool"
    assert moved.read_text() == "#!/usr/bin/python3.11\nimport sys\n"
    assert moved.stat().st_mode & 0o111 and not scripts.exists()


@pytest.mark.integration
def test_archive_route_makes_a_real_base(tmp_path):
    """The archive route for real (mmdebstrap from Debian's mirror, pip from PyPI, root):
    the result is a Gramine base that boots (gramine-direct) and a build measures on."""
    from .gramine_base import gramine_archive

    archive = gramine_archive()
    reason = None
    if archive is None:
        reason = "no Gramine archive (../shared/gramine/ or $GRAMINE_ARCHIVE)"
    elif os.geteuid() != 0:
        reason = "needs root (mmdebstrap, chroot)"
    elif shutil.which("mmdebstrap") is None:
        reason = "mmdebstrap is not installed"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the real-base route must run)", pytrace=False)
        pytest.skip(reason)
    target = tmp_path / "gramine-base"
    proc = run_cli(
        "base",
        "gramine",
        str(target),
        "--archive",
        str(archive),
        env={"ENCLAVE_BUILD_PROGRESS_INTERVAL": "20"},
    )
    text = proc.stderr.decode()
    assert proc.returncode == 0, text[-4000:]
    for step in (
        "[1/5] Debian 12",
        "[2/5] Gramine from",
        "[3/5] Python runtimes",
        "[4/5] compiling Python",
        "[5/5] runtime user enclave",
        "base gramine: done",
    ):
        assert step in text, text[-4000:]
    assert "  | I: " in text  # mmdebstrap's own progress, shown as it comes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gramine-base"]  # no temp left
    assert (target / "usr/bin/gramine-direct").is_file()
    assert (target / "usr/local/lib/python3.11/dist-packages/numpy").is_dir()
    assert "enclave:x:10001:0:" in (target / "etc/passwd").read_text()
    version = subprocess.run(
        ["chroot", str(target), "gramine-direct", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and "1.9" in version.stdout + version.stderr
    doctor = run_cli("doctor", "--base", f"dir:{target}", "--json")
    import json

    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["id"] == "gramine.base")
    assert check["status"] == "ok", check


@pytest.mark.integration
def test_an_interrupted_base_leaves_nothing_and_nothing_mounted(tmp_path):
    """Ctrl-C while mmdebstrap installs inside the new root (with /proc, /dev and /sys mounted
    there): exit 130 with one line, the tool stopped, no half-made root, nothing mounted."""
    import signal

    from enclave_build.builder.realbase.tools import mounts_below

    from .gramine_base import gramine_archive

    archive = gramine_archive()
    if archive is None or os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        reason = "needs root, mmdebstrap and a Gramine archive"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true)", pytrace=False)
        pytest.skip(reason)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave_build",
            "base",
            "gramine",
            str(tmp_path / "base"),
            "--archive",
            str(archive),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if "installing remaining packages inside the chroot" in line:
                proc.send_signal(signal.SIGINT)
                break
        seen += proc.communicate(timeout=180)[1].splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "\n".join(seen)
    assert proc.returncode == 130 and seen[-1] == "interrupted", text[-3000:]
    assert "Traceback" not in text
    assert list(tmp_path.iterdir()) == [] and mounts_below(tmp_path) == []
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout == b""


def _local_gramine_repository(root: Path, archive: Path, home: Path) -> str:
    """An apt repository like packages.gramineproject.io (suite bookworm, component main)
    holding a `gramine` 1.9 package made from the local Gramine build, its InRelease signed
    with a fresh key; returns that key's fingerprint."""
    pkg = root / "build" / "gramine"
    (pkg / "DEBIAN").mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(pkg), "--no-same-owner"], check=True)
    depends = ", ".join(p for p in commands.PACKAGES if p.startswith(("lib", "python3")))
    (pkg / "DEBIAN" / "control").write_text(
        "Package: gramine\nVersion: 1.9\nArchitecture: amd64\nMaintainer: tests <t@example.com>\n"
        f"Depends: {depends}\nDescription: Gramine 1.9 (test package of the local build)\n"
    )
    pool = root / "repo" / "pool" / "main" / "g" / "gramine"
    pool.mkdir(parents=True)
    subprocess.run(
        [
            "dpkg-deb",
            "--root-owner-group",
            "--build",
            str(pkg),
            str(pool / "gramine_1.9_amd64.deb"),
        ],
        check=True,
        capture_output=True,
    )
    index = root / "repo" / "dists" / "bookworm" / "main" / "binary-amd64"
    index.mkdir(parents=True)
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "pool"],
        cwd=root / "repo",
        check=True,
        capture_output=True,
    ).stdout
    (index / "Packages").write_bytes(packages)
    import hashlib

    release = (
        "Origin: tests\nSuite: bookworm\nCodename: bookworm\nArchitectures: amd64\n"
        "Components: main\nDate: Mon, 07 Dec 2026 00:00:00 UTC\nSHA256:\n"
    )
    release += (
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
    )
    dists = root / "repo" / "dists" / "bookworm"
    (dists / "Release").write_text(release)
    _, _, fpr = _gpg_key(home, "mirror")
    try:
        subprocess.run(
            [
                "gpg",
                "--homedir",
                str(home),
                "--batch",
                "--yes",
                "--local-user",
                fpr,
                "--clearsign",
                "--output",
                str(dists / "InRelease"),
                str(dists / "Release"),
            ],
            check=True,
            capture_output=True,
        )
    finally:
        _stop_agent(home)
    return fpr


@pytest.mark.integration
def test_repository_route_installs_gramine_from_a_signed_mirror(tmp_path):
    """The repository route end to end against a mirror on 127.0.0.1 (packages.gramineproject.io
    cannot be reached here): the mirror's key checked by fingerprint, apt inside the new root
    trusting exactly that keyring, gramine=1.9 installed by the mmdebstrap hooks. A keyring
    with another key is refused before anything is made."""
    import functools
    import http.server
    import threading

    from .gramine_base import gramine_archive

    archive = gramine_archive()
    missing = [
        what
        for what, ok in (
            ("a Gramine archive", archive is not None),
            ("root", os.geteuid() == 0),
            ("mmdebstrap", shutil.which("mmdebstrap")),
            ("gpg", GPG),
            ("dpkg-scanpackages", shutil.which("dpkg-scanpackages")),
        )
        if not ok
    ]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"needs {', '.join(missing)} (CI=true)", pytrace=False)
        pytest.skip(f"needs {', '.join(missing)}")
    home = tmp_path / "gpg"
    fpr = _local_gramine_repository(tmp_path, archive, home)
    keyring = tmp_path / "mirror.asc"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(home), "--armor", "--export", fpr],
            check=True,
            capture_output=True,
        ).stdout
    )
    _stop_agent(home)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "repo")
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    small = tmp_path / "requirements.txt"
    small.write_text("cbor2==5.6.5\n")
    try:
        wrong = run_cli(
            "base",
            "gramine",
            str(tmp_path / "refused"),
            "--repository",
            url,
            "--keyring",
            str(keyring),
            "--key-fingerprint",
            "AB" * 20,
        )
        assert wrong.returncode == 1 and b"not the pinned AB" in wrong.stderr, wrong.stderr
        assert not (tmp_path / "refused").exists()
        # A key that passes our pin but did not sign the mirror: apt itself refuses it.
        stranger, _, stranger_fpr = _gpg_key(tmp_path / "gpg-stranger", "stranger")
        (tmp_path / "stranger.gpg").write_bytes(stranger)
        unsigned = run_cli(
            "base",
            "gramine",
            str(tmp_path / "unsigned"),
            "--repository",
            url,
            "--keyring",
            str(tmp_path / "stranger.gpg"),
            "--key-fingerprint",
            stranger_fpr,
            "--requirements",
            str(small),
        )
        assert unsigned.returncode == 1, unsigned.stderr.decode()[-3000:]
        assert b"mmdebstrap failed" in unsigned.stderr and (
            b"NO_PUBKEY" in unsigned.stderr or b"not signed" in unsigned.stderr
        ), unsigned.stderr.decode()[-3000:]
        assert not (tmp_path / "unsigned").exists()
        assert not list(tmp_path.glob(".unsigned.tmp-*"))
        target = tmp_path / "base"
        proc = run_cli(
            "base",
            "gramine",
            str(target),
            "--repository",
            url,
            "--keyring",
            str(keyring),
            "--key-fingerprint",
            fpr,
            "--requirements",
            str(small),
        )
    finally:
        server.shutdown()
    text = proc.stderr.decode()
    assert proc.returncode == 0, text[-4000:]
    assert f"then Gramine 1.9 from {url}" in text and "[4/4]" in text
    status = subprocess.run(
        ["chroot", str(target), "dpkg-query", "-W", "gramine"], capture_output=True, text=True
    )
    assert status.stdout.split() == ["gramine", "1.9"], status
    assert (target / "usr/bin/gramine-direct").is_file()
    assert (target / gramine_apt.KEYRING_PATH.lstrip("/")).read_bytes() == openpgp.dearmor(
        keyring.read_bytes()
    )
    assert (
        f"signed-by={gramine_apt.KEYRING_PATH}] {url} bookworm main"
        in (target / gramine_apt.SOURCES_PATH.lstrip("/")).read_text()
    )
    assert "Pin: version 1.9" in (target / gramine_apt.PREFERENCES_PATH.lstrip("/")).read_text()
    assert (target / "usr/local/lib/python3.11/dist-packages/cbor2").is_dir()
    assert not (target / "usr/local/lib/python3.11/dist-packages/numpy").exists()
