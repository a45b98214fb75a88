"""A REAL Gramine 1.9 base root filesystem for tests that boot images under the real LibOS.

``gramine_base()`` builds it once per machine with ``enclave-build base gramine --archive``
(builder.realbase: Debian bookworm minbase via mmdebstrap, the Gramine archive from
``../shared/gramine/`` next to the repository, the Python runtimes of
``base_images/gramine-python/requirements.txt`` in the system Python) and caches it under ``~/.cache/enclave-build/test-bases/<hash of the inputs>``
($ENCLAVE_BUILD_TEST_BASES overrides): built in a temporary
directory, renamed into place when complete, so a second call (or a second test session) returns
at once. Use it as ``--base dir:PATH``.

The ``gramine_base_dir`` fixture skips when the Gramine archive is not there or the machine cannot
build the base (not root, no network) -- unless ``CI=true``, where a missing real base is a
failure, not a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "builder" / "realbase"  # the code that makes the base
REQUIREMENTS = REPO / "base_images" / "gramine-python" / "requirements.txt"
ARCHIVE_NAME = "gramine-1.9-debian12-x86_64.tar.gz"
COMPLETE = ".enclave-build-test-base"
# Bump to rebuild every cached base (e.g. after a Debian point release you want picked up).
GENERATION = "2"


class GramineBaseUnavailable(RuntimeError):
    """This machine cannot provide the real Gramine base (the message says why)."""


def gramine_archive() -> Path | None:
    """The Gramine 1.9 archive: $GRAMINE_ARCHIVE, else ../shared/gramine/ next to the repo."""
    explicit = os.environ.get("GRAMINE_ARCHIVE")
    candidates = [Path(explicit)] if explicit else []
    candidates.append(REPO.parent / "shared" / "gramine" / ARCHIVE_NAME)
    return next((p for p in candidates if p.is_file()), None)


def _cache_dir() -> Path:
    """$ENCLAVE_BUILD_TEST_BASES, else ~/.cache/enclave-build/test-bases. Deliberately not
    $XDG_CACHE_HOME: the test suite points that at a fresh directory for every test."""
    explicit = os.environ.get("ENCLAVE_BUILD_TEST_BASES")
    if explicit:
        return Path(explicit)
    return Path(os.path.expanduser("~")) / ".cache" / "enclave-build" / "test-bases"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_key(archive: Path) -> str:
    """Hash of everything the base is built from."""
    h = hashlib.sha256(f"gramine-base generation {GENERATION}\n".encode())
    recipe = sorted(RECIPE.glob("*.py"))
    for part in (_sha256(archive), *(_sha256(p) for p in recipe), _sha256(REQUIREMENTS)):
        h.update(part.encode() + b"\n")
    return h.hexdigest()[:24]


def gramine_base(log=None) -> Path:
    """The cached real Gramine base (built now if needed). Raises GramineBaseUnavailable."""
    archive = gramine_archive()
    if archive is None:
        raise GramineBaseUnavailable(
            f"no Gramine archive ({ARCHIVE_NAME} in {REPO.parent / 'shared' / 'gramine'} or "
            "$GRAMINE_ARCHIVE)"
        )
    cache = _cache_dir()
    target = cache / base_key(archive)
    if (target / COMPLETE).exists():
        return target / "rootfs"
    if os.geteuid() != 0:
        raise GramineBaseUnavailable("building the Gramine base needs root (mmdebstrap, chroot)")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        if (target / COMPLETE).exists():
            return target / "rootfs"
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        lines: list[str] = []

        def show(line: str) -> None:
            lines.append(line)
            if log is not None:
                log(line + "\n")

        try:
            from enclave_build.builder.errors import EnclaveBuildError
            from enclave_build.builder.realbase import BaseRecipe, GramineArchive, make_gramine_base

            try:
                make_gramine_base(
                    BaseRecipe(work / "rootfs", GramineArchive(archive), python=sys.executable),
                    show,
                )
            except EnclaveBuildError as exc:
                tail = "\n".join(lines[-25:])
                raise GramineBaseUnavailable(
                    f"enclave-build base gramine failed: {exc}\n{tail}"
                ) from None
            (work / COMPLETE).write_text(f"{archive}\n")
            os.rename(work, target)
        except BaseException:
            from enclave_build.builder.realbase.tools import remove_tree

            remove_tree(work)  # never into anything a killed tool left mounted
            raise
    return target / "rootfs"


def require_gramine_base() -> Path:
    """The base, or a pytest skip (a failure when CI=true)."""
    try:
        return gramine_base()
    except GramineBaseUnavailable as exc:
        reason = f"real Gramine base unavailable: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: the real-LibOS tests must run)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def gramine_base_dir() -> Path:
    """Path of the real Gramine base root filesystem (read-only: copy before changing it)."""
    return require_gramine_base()


if __name__ == "__main__":
    print(gramine_base(log=lambda text: sys.stderr.write(text)))
