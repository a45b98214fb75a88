"""Where enclave-build keeps its caches: ``$XDG_CACHE_HOME/enclave-build`` (default
``~/.cache/enclave-build``): file digests, image blobs, unpacked root filesystems, layer records.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "enclave-build"
