"""Which files of a directory the plan adds (a model directory: IR, SavedModel) reach the image.

Only the directory's own regular files, never through a symbolic link: a link in a model
directory may point anywhere on the build machine (``/etc/shadow``, the signing key, a
directory elsewhere, a loop), and shipping its target — hashed as a trusted file, or encrypted
into the image — would put a host file the spec never named into the enclave image. Links,
FIFOs, sockets and device nodes are left out with a warning naming them (copy the target in,
e.g. ``cp -rL``, if it belongs to the model). Every libOS backend and the image assembly use
this one list, so what is measured, encrypted and shipped is the same set of files.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path


class SkippedModelFile(UserWarning):
    """A non-regular entry (symbolic link, FIFO, device) of a plan directory was left out."""


def regular_files(top: Path) -> list[Path]:
    """The regular files under the directory *top*, sorted, found without following links."""
    out: list[Path] = []
    for directory, dirs, files in os.walk(top, followlinks=False):
        dirs.sort()
        linked_dirs = [d for d in dirs if os.path.islink(os.path.join(directory, d))]
        for name in sorted(files + linked_dirs):
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                out.append(path)
            else:
                what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                target = f" to {os.readlink(path)}" if stat.S_ISLNK(mode) else ""
                warnings.warn(
                    f"{path}: {what}{target}; left out of the image (only a "
                    "directory's own regular files are shipped: copy the file in "
                    "if the model needs it)",
                    SkippedModelFile,
                    stacklevel=2,
                )
    return sorted(out)
