"""What owns the files of an image: Python distributions (``*.dist-info``: METADATA and RECORD)
and Debian packages (the dpkg database: ``/var/lib/dpkg/status`` and ``info/*.list``), read
from the base's root filesystem as text (nothing in the image is executed)."""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass
from email.parser import HeaderParser

from ..rootfs import RootFS, RootFSError

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_INFO = "/var/lib/dpkg/info"
#: Directory pairs that name the same files on a merged-/usr system.
_MERGED = (("/usr/lib/", "/lib/"), ("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"))
#: The longest METADATA or RECORD read (a larger one is not a Python distribution's).
_MAX_TEXT = 16 << 20


@dataclass(frozen=True)
class Owner:
    """A package owning image files: *kind* ``python`` or ``deb``."""

    kind: str
    name: str
    version: str
    license: str | None = None  # Python: License-Expression, License or licence classifiers
    purl: str = ""


def python_owners(rootfs: RootFS, paths: list[str]) -> dict[str, Owner]:
    """Image path -> the Python distribution whose RECORD lists it, for the *paths* that lie in
    a ``site-packages``/``dist-packages`` directory."""
    site_dirs = sorted({_site_dir(p) for p in paths} - {None})  # type: ignore[arg-type]
    wanted = set(paths)
    owners: dict[str, Owner] = {}
    for site in site_dirs:
        try:
            names = rootfs.listdir(site)
        except (OSError, RootFSError):
            continue
        for name in sorted(names):
            if not name.endswith(".dist-info"):
                continue
            info = posixpath.join(site, name)
            meta = _read(rootfs, posixpath.join(info, "METADATA"))
            if meta is None:
                continue
            headers = HeaderParser().parsestr(meta)
            dist, version = headers.get("Name"), headers.get("Version")
            if not dist or not version:
                continue
            owner = Owner(
                "python",
                dist,
                version,
                _python_license(headers),
                f"pkg:pypi/{dist.lower().replace('_', '-')}@{version}",
            )
            record = _read(rootfs, posixpath.join(info, "RECORD")) or ""
            for row in csv.reader(io.StringIO(record)):
                if not row or not row[0]:
                    continue
                path = posixpath.normpath(posixpath.join(site, row[0]))
                if path in wanted:
                    owners.setdefault(path, owner)
    return owners


def deb_owners(rootfs: RootFS, paths: list[str]) -> dict[str, Owner]:
    """Image path -> the installed Debian package that lists it (merged-/usr spellings
    included). A base without a dpkg database (a stand-in, distroless) owns nothing."""
    status = _read(rootfs, DPKG_STATUS)
    if status is None:
        return {}
    wanted = set(paths)
    aliases: dict[str, str] = {}
    for path in paths:
        for usr, root in _MERGED:
            if path.startswith(usr):
                aliases.setdefault(root + path[len(usr) :], path)
            elif path.startswith(root):
                aliases.setdefault(usr + path[len(root) :], path)
    owners: dict[str, Owner] = {}
    for para in status.split("\n\n"):
        fields = _paragraph(para)
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version or not fields.get("Status", "").endswith(" installed"):
            continue
        arch = fields.get("Architecture", "")
        owner = Owner("deb", name, version, None, f"pkg:deb/debian/{name}@{version}?arch={arch}")
        listing = _read(rootfs, posixpath.join(DPKG_INFO, f"{name}:{arch}.list"))
        if listing is None:
            listing = _read(rootfs, posixpath.join(DPKG_INFO, f"{name}.list"))
        for line in (listing or "").splitlines():
            if line in wanted:
                owners.setdefault(line, owner)
            elif line in aliases:
                owners.setdefault(aliases[line], owner)
    return owners


def _site_dir(path: str) -> str | None:
    for marker in ("/site-packages/", "/dist-packages/"):
        at = path.find(marker)
        if at >= 0:
            return path[: at + len(marker) - 1]
    return None


def _read(rootfs: RootFS, path: str) -> str | None:
    try:
        st = rootfs.lstat(path)
        if st is None or st.st_size > _MAX_TEXT:
            return None
        return rootfs.read_bytes(path).decode("utf-8", "replace")
    except (OSError, RootFSError):
        return None


def _paragraph(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue  # continuation lines (descriptions, conffiles) are not needed
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _python_license(headers: object) -> str | None:
    get = headers.get  # type: ignore[attr-defined]
    for key in ("License-Expression", "License"):
        value = get(key)
        if value and value.strip() and value.strip().upper() != "UNKNOWN":
            text = value.strip()
            return text if len(text) <= 200 else text.splitlines()[0][:200]
    classifiers = [
        c.split("::")[-1].strip()
        for c in headers.get_all("Classifier") or []  # type: ignore[attr-defined]
        if c.startswith("License ::")
    ]
    return "; ".join(classifiers) or None
