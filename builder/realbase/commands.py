"""The command lines that make a real Gramine base: mmdebstrap (with the hooks that install
Gramine from its repository), pip for the Python runtimes, and what runs in the new root. Pure
functions of their inputs, so they are checked without running anything."""

from __future__ import annotations

import shlex
from pathlib import Path

from .gramine_apt import GramineRepository

SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYVER = "3.11"
SITE = f"/usr/local/lib/python{PYVER}/dist-packages"
#: Newest glibc of the base: Debian 12 has 2.36; manylinux wheels up to that run on it.
GLIBC_MINOR = 36
RUNTIME_UID = 10001
SGX_GID = 10002

#: The Debian package's Depends (gramine 1.9), libunwind8, and the interpreter the model
#: server runs on.
PACKAGES = (
    "libprotobuf-c1",
    "libunwind8",
    "libcurl4",
    "ca-certificates",
    "python3",
    "python3-click",
    "python3-cryptography",
    "python3-jinja2",
    "python3-pyelftools",
    "python3-tomli",
    "python3-tomli-w",
    "python3-voluptuous",
    f"python{PYVER}",
)


def mmdebstrap(
    root: Path,
    mirror: str = DEBIAN_MIRROR,
    repository: GramineRepository | None = None,
    apt_files: Path | None = None,
) -> list[str]:
    """Debian 12 minbase with PACKAGES into *root*; with *repository*, customize hooks that put
    the apt files staged under *apt_files* (the same paths as in the root) in place and
    install Gramine from it inside the new root."""
    args = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES)]
    if repository is not None:
        assert apt_files is not None
        args += [f"--customize-hook={hook}" for hook in repository_hooks(repository, apt_files)]
    return args + [SUITE, str(root), mirror]


def repository_hooks(repository: GramineRepository, apt_files: Path) -> list[str]:
    """mmdebstrap customize hooks (sh, the new root as $1; run with /proc, /dev and the host's
    resolv.conf in place): copy the keyring, the source line and the pin in, then install."""
    from .gramine_apt import KEYRING_PATH, PREFERENCES_PATH, SOURCES_PATH

    hooks = []
    for inner in (KEYRING_PATH, SOURCES_PATH, PREFERENCES_PATH):
        directory = str(Path(inner).parent)
        source = shlex.quote(str(apt_files / inner.lstrip("/")))
        hooks.append(f'install -d -m 0755 "$1{directory}" && install -m 0644 {source} "$1{inner}"')
    apt = 'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get'
    hooks.append(f"{apt} update")
    hooks.append(
        f"{apt} install -y --no-install-recommends {shlex.quote(repository.install_spec())}"
    )
    return hooks


def pip_install(python: str, root: Path, requirements: list[Path]) -> list[str]:
    """pip (of this machine's *python*) installing *requirements* into the base's system Python
    site directory: binary wheels for CPython 3.11 on glibc <= 2.36 only, whatever Python runs
    pip."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_x86_64", "linux_x86_64"]
    args = [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
        "--no-compile",
        "--target",
        f"{root}{SITE}",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYVER,
        "--abi",
        f"cp{PYVER.replace('.', '')}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in platforms:
        args += ["--platform", platform]
    for path in requirements:
        args += ["-r", str(path)]
    return args


def compileall(root: Path) -> list[str]:
    """Every Python tree to unchecked-hash .pyc (inside the LibOS a file's st_mtime is 0, so
    timestamp-checked .pyc files always look stale). -f rewrites Debian's own .pyc too."""
    return [
        "chroot",
        str(root),
        f"/usr/bin/python{PYVER}",
        "-m",
        "compileall",
        "-q",
        "-f",
        "--invalidation-mode",
        "unchecked-hash",
        f"/usr/lib/python{PYVER}",
        "/usr/lib/python3/dist-packages",
        SITE,
    ]


def runtime_user(root: Path) -> list[list[str]]:
    """The runtime user ``enclave`` (uid 10001, gid 0, in group sgx_prv), as in the Gramine
    base image's Dockerfile."""
    return [
        ["chroot", str(root), "groupadd", "--system", "--gid", str(SGX_GID), "sgx_prv"],
        [
            "chroot",
            str(root),
            "useradd",
            "--system",
            "--uid",
            str(RUNTIME_UID),
            "--gid",
            "0",
            "--groups",
            "sgx_prv",
            "--home-dir",
            "/enclave",
            "--create-home",
            "enclave",
        ],
    ]


HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


__all__ = [
    "mmdebstrap",
    "repository_hooks",
    "pip_install",
    "compileall",
    "runtime_user",
    "PACKAGES",
    "SITE",
    "PYVER",
    "DEBIAN_MIRROR",
    "SUITE",
    "HOSTS",
    "RUNTIME_UID",
]
