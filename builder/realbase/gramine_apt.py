"""Gramine's official Debian package repository: where it is, which key signs it, and the apt
files that install Gramine 1.9 from it into a Debian 12 root filesystem.

The facts are Gramine 1.9's own documentation (``Documentation/installation.rst``, section
"Debian 12", and ``Documentation/verify-sig.rst``, "Verifying packages", of the v1.9 tag;
https://gramine.readthedocs.io/en/stable/installation.html):

- the source line ``deb [arch=amd64 signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg]
  https://packages.gramineproject.io/ bookworm main``, its keyring downloaded from
  ``https://packages.gramineproject.io/gramine-keyring-bookworm.gpg``;
- Debian and Ubuntu releases older than Debian 13 and Ubuntu 24.04 are signed with the
  "Gramine Project signing key (2021)", fingerprint
  ``EA3C 2D62 4681 AC96 8521 587A 5EE1 1719 1223 4070`` (ed25519);
- the package ``gramine``, version ``1.9`` (``debian/changelog`` of the tag).

The downloaded keyring is trusted only if its primary keys are exactly the pinned ones (the
download is HTTPS, the pin is what makes it the right key; Gramine's documentation recommends
keeping a verified local copy: ``--keyring FILE`` uses one). The pin file makes apt take
``gramine`` at exactly 1.9 from that repository and nothing else from it unasked.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnclaveBuildError, UsageError
from .openpgp import OpenPGPError, dearmor, primary_fingerprints, spaced

REPOSITORY = "https://packages.gramineproject.io/"
SUITE = "bookworm"
COMPONENT = "main"
KEYRING_URL = f"https://packages.gramineproject.io/gramine-keyring-{SUITE}.gpg"
#: "Gramine Project signing key (2021)": signs the bookworm suite.
FINGERPRINTS = ("EA3C2D624681AC968521587A5EE1171912234070",)
PACKAGE = "gramine"
VERSION = "1.9"

KEYRING_PATH = f"/etc/apt/keyrings/gramine-keyring-{SUITE}.gpg"
SOURCES_PATH = "/etc/apt/sources.list.d/gramine.list"
PREFERENCES_PATH = "/etc/apt/preferences.d/gramine"
DOWNLOAD_TIMEOUT = 30.0


class KeyringError(EnclaveBuildError):
    """The repository's signing keyring is not the pinned key (or cannot be read)."""


@dataclass(frozen=True)
class GramineRepository:
    """Where Gramine 1.9 comes from on the repository route: Gramine's repository, or a mirror
    of it (*url*; with *fingerprints* of the key the mirror signs with, if it re-signs)."""

    url: str = REPOSITORY
    suite: str = SUITE
    component: str = COMPONENT
    fingerprints: tuple[str, ...] = FINGERPRINTS
    version: str = VERSION

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise UsageError(f"--repository {self.url!r}: an http(s):// URL of an apt repository")
        if any(c.isspace() for c in self.url + self.suite + self.component):
            raise UsageError(f"--repository {self.url!r}: no spaces allowed")
        for fpr in self.fingerprints:
            if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
                raise UsageError(
                    f"--key-fingerprint {fpr!r}: 40 upper-case hex digits "
                    "(a version 4 OpenPGP fingerprint, spaces removed)"
                )

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]

    def sources_list(self) -> str:
        """The one-line sources.list entry (deb822 would do too; the one-line form is what
        Gramine documents)."""
        url = self.url if self.url.endswith("/") else self.url + "/"
        return (
            f"# Gramine {self.version}, from Gramine's package repository (written by "
            "enclave-build base gramine)\n"
            f"deb [arch=amd64 signed-by={KEYRING_PATH}] {url} {self.suite} "
            f"{self.component}\n"
        )

    def preferences(self) -> str:
        """apt pins: gramine at exactly this version; nothing else from this origin unless
        asked for by name."""
        return (
            f"# written by enclave-build base gramine\n"
            f"Package: {PACKAGE}\n"
            f"Pin: version {self.version}\n"
            f"Pin-Priority: 1001\n"
            f"\n"
            f"Package: *\n"
            f"Pin: origin {self.host}\n"
            f"Pin-Priority: 100\n"
        )

    def install_spec(self) -> str:
        """What apt-get install is given."""
        return f"{PACKAGE}={self.version}"

    def apt_files(self, keyring: bytes) -> dict[str, bytes]:
        """Path in the root filesystem -> content, for a keyring already checked with
        :meth:`check_keyring`."""
        return {
            KEYRING_PATH: keyring,
            SOURCES_PATH: self.sources_list().encode(),
            PREFERENCES_PATH: self.preferences().encode(),
        }

    def check_keyring(self, data: bytes, where: str) -> bytes:
        """*data* (binary or armored) as a binary keyring, if its primary keys are exactly
        the pinned ones; KeyringError otherwise."""
        try:
            found = primary_fingerprints(data)
            binary = dearmor(data)
        except OpenPGPError as exc:
            raise KeyringError(f"{where}: not an OpenPGP keyring: {exc}") from None
        unexpected = [f for f in found if f not in self.fingerprints]
        if unexpected:
            raise KeyringError(
                f"{where}: holds the key {', '.join(spaced(f) for f in unexpected)}, not "
                f"the pinned {' or '.join(spaced(f) for f in self.fingerprints)}; refusing "
                "to trust it (a mirror that re-signs: pass its key's --key-fingerprint)"
            )
        return binary

    def fetch_keyring(self, local: Path | None = None) -> bytes:
        """The checked keyring: from *local* (a trusted copy), else downloaded."""
        if local is not None:
            try:
                data = local.read_bytes()
            except OSError as exc:
                raise UsageError(f"--keyring {local}: {exc.strerror or exc}") from None
            return self.check_keyring(data, str(local))
        url = KEYRING_URL if self.fingerprints == FINGERPRINTS else None
        if url is None:
            raise UsageError("--key-fingerprint: pass that key itself with --keyring FILE")
        request = urllib.request.Request(url, headers={"User-Agent": "enclave-build"})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                data = response.read(2 << 20)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EnclaveBuildError(
                f"cannot download Gramine's signing key from {url}: {reason}; without "
                "internet access use a local Gramine archive (--archive) or a verified copy "
                "of the key (--keyring FILE)"
            ) from None
        return self.check_keyring(data, url)


__all__ = [
    "GramineRepository",
    "KeyringError",
    "REPOSITORY",
    "SUITE",
    "KEYRING_URL",
    "FINGERPRINTS",
    "KEYRING_PATH",
    "SOURCES_PATH",
    "PREFERENCES_PATH",
    "VERSION",
]
