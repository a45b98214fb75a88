"""Make a real Gramine 1.9 base root filesystem here (``enclave-build base gramine ROOTFS``).

Two routes to Gramine, the same tree either way:

- **repository** (the default): Gramine's official Debian package repository
  (:mod:`.gramine_apt`: source line, signing key checked against its pinned fingerprint, apt
  pin), ``apt-get install gramine=1.9`` inside the new root;
- **archive** (``--archive FILE``): a Gramine 1.9 build laid out like the Debian package,
  extracted over the root (what this project's CI has; its libpal.so is a local build, so
  MRENCLAVEs differ from ones made on the official package).

Steps, each announced, the tools' own output shown as it comes:

1. Debian 12 (bookworm) minbase with Gramine's run-time dependencies and Python 3.11, by
   mmdebstrap from a Debian mirror (on the repository route, Gramine is installed by its
   customize hooks);
2. (archive route) the archive extracted over it;
3. the Python runtimes the frameworks need (``base_images/gramine-python/requirements.txt`` by
   default) into the system Python, ``/usr/local/lib/python3.11/dist-packages``, by pip;
4. every Python tree compiled to unchecked-hash ``.pyc``;
5. the runtime user ``enclave`` (uid 10001, gid 0), ``/etc/hosts``, apt caches emptied.

Root is needed (mmdebstrap, chroot). The tree is made in a hidden sibling of ROOTFS and renamed
into place when complete: a failed or interrupted run leaves no ROOTFS (nor anything mounted).
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EnclaveBuildError, UsageError
from . import commands, tools
from .gramine_apt import GramineRepository

Log = Callable[[str], None]


@dataclass(frozen=True)
class GramineArchive:
    """A Gramine 1.9 build in Debian package layout (a .tar.gz to extract at /)."""

    path: Path


@dataclass(frozen=True)
class BaseRecipe:
    target: Path
    gramine: GramineArchive | GramineRepository = field(default_factory=GramineRepository)
    requirements: tuple[Path, ...] = ()
    keyring: Path | None = None  # repository route: a trusted local copy of the key
    mirror: str = commands.DEBIAN_MIRROR
    python: str = sys.executable  # runs pip (downloads wheels for the base's CPython)


def default_requirements() -> tuple[Path, ...]:
    """The runtimes of base gramine-python (tflite, openvino's Python mode, plugins)."""
    from enclave_build.base_images import BASES

    return (BASES["gramine-python"].directory / "requirements.txt",)


def check(
    recipe: BaseRecipe, euid: int | None = None, which: Callable[[str], str | None] = shutil.which
) -> None:
    """What makes the recipe impossible here, as a usage error (before anything is made)."""
    if (os.geteuid() if euid is None else euid) != 0:
        raise UsageError(
            "enclave-build base gramine needs root (mmdebstrap and chroot): run "
            'it with sudo, e.g. sudo "$(command -v enclave-build)" base gramine '
            f"{recipe.target}"
        )
    if which("mmdebstrap") is None:
        raise UsageError("mmdebstrap is not installed: apt-get install mmdebstrap")
    target = recipe.target
    if os.path.lexists(target) and not (target.is_dir() and not any(target.iterdir())):
        raise UsageError(f"{target}: exists and is not an empty directory; give a new path")
    if isinstance(recipe.gramine, GramineArchive) and not recipe.gramine.path.is_file():
        raise UsageError(f"--archive {recipe.gramine.path}: no such file")
    for path in recipe.requirements:
        if not path.is_file():
            raise UsageError(f"--requirements {path}: no such file")


def make_gramine_base(recipe: BaseRecipe, log: Log, heartbeat: float = 10.0) -> Path:
    """Make the base (see the module doc); returns its path."""
    check(recipe)
    target = recipe.target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tidy(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    root = work / "rootfs"
    started = time.monotonic()
    try:
        keyring = None
        if isinstance(recipe.gramine, GramineRepository):
            keyring = recipe.gramine.fetch_keyring(recipe.keyring)
        _make(recipe, root, work, keyring, log, heartbeat)
        if target.is_dir():
            target.rmdir()  # the empty directory check() allowed
        os.rename(root, target)
    finally:
        tools.remove_tree(work)
    log(
        f"base gramine: done in {time.monotonic() - started:.0f} s: {target} (use it as "
        f"--base dir:{target})"
    )
    return target


def _make(
    recipe: BaseRecipe, root: Path, work: Path, keyring: bytes | None, log: Log, heartbeat: float
) -> None:
    steps = 5 if isinstance(recipe.gramine, GramineArchive) else 4
    count = iter(range(1, steps + 1))

    def step(text: str) -> None:
        log(f"base gramine: [{next(count)}/{steps}] {text}")

    repository = recipe.gramine if isinstance(recipe.gramine, GramineRepository) else None
    apt_files = None
    if repository is not None:
        assert keyring is not None
        apt_files = work / "apt"
        for inner, content in repository.apt_files(keyring).items():
            path = apt_files / inner.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        step(
            f"Debian 12 (minbase) from {recipe.mirror}, then Gramine {repository.version} "
            f"from {repository.url} (mmdebstrap)"
        )
    else:
        step(f"Debian 12 (minbase) from {recipe.mirror} (mmdebstrap)")
    tools.run(
        commands.mmdebstrap(root, recipe.mirror, repository, apt_files),
        "mmdebstrap",
        log,
        heartbeat,
    )
    if isinstance(recipe.gramine, GramineArchive):
        step(f"Gramine from {recipe.gramine.path}")
        extract_archive(recipe.gramine.path, root)
    if not (root / "usr/bin/gramine-direct").is_file():
        raise EnclaveBuildError(
            "Gramine was not installed: no usr/bin/gramine-direct in the new root"
        )
    requirements = list(recipe.requirements or default_requirements())
    step(f"Python runtimes into {commands.SITE} ({', '.join(str(p) for p in requirements)})")
    tools.run(commands.pip_install(recipe.python, root, requirements), "pip", log, heartbeat)
    move_console_scripts(root)
    step("compiling Python to unchecked-hash .pyc")
    try:
        tools.run(commands.compileall(root), "compileall", log, heartbeat, show_output=False)
    except tools.ToolError:
        # A few files of the standard library are deliberately not valid Python (test data).
        log("  (compileall reported files it could not compile: those are skipped)")
    step(f"runtime user enclave (uid {commands.RUNTIME_UID}), /etc/hosts")
    for args in commands.runtime_user(root):
        tools.run(args, args[2], log, heartbeat)
    (root / "etc/hosts").write_text(commands.HOSTS)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    lists = root / "var/lib/apt/lists"
    for path in lists.iterdir() if lists.is_dir() else ():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def extract_archive(archive: Path, root: Path) -> None:
    """The Gramine archive over *root*: regular files, directories and symbolic links only,
    nothing outside the root, existing directories kept (as ``tar --no-overwrite-dir``)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for member in tar.getmembers():
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                if not name.strip("/."):
                    continue
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise EnclaveBuildError(
                        f"{archive}: {member.name}: not a file, directory or symbolic link"
                    )
                if (root / name).is_dir() and member.isdir():
                    continue
                members.append(member)
            tar.extractall(root, members, filter="tar")
    except (tarfile.TarError, OSError) as exc:
        raise EnclaveBuildError(f"{archive}: cannot extract it: {exc}") from None


def move_console_scripts(root: Path) -> None:
    """pip --target leaves console scripts in SITE/bin with this machine's interpreter in
    their #! line: move them to /usr/local/bin, run by the base's python3.11."""
    scripts = root / commands.SITE.lstrip("/") / "bin"
    if not scripts.is_dir():
        return
    dest = root / "usr/local/bin"
    dest.mkdir(parents=True, exist_ok=True)
    for script in sorted(scripts.iterdir()):
        if not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            data = f"#!/usr/bin/python{commands.PYVER}".encode() + data[data.index(b"\n") :]
        (dest / script.name).write_bytes(data)
        (dest / script.name).chmod(0o755)
    shutil.rmtree(scripts)


def tidy(target: Path) -> None:
    """Remove what runs killed earlier left beside *target* (their process is gone)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(stale.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tools.remove_tree(stale)
        except PermissionError:
            pass


__all__ = [
    "BaseRecipe",
    "GramineArchive",
    "GramineRepository",
    "make_gramine_base",
    "check",
    "default_requirements",
    "extract_archive",
]
