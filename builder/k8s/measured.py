"""``k8s --profile`` and ``plan-capacity --profile``: the EPC sized from a measured run.

A profile is what ``enclave-build profile --json`` prints: its ``recommendation`` holds the
``[enclave] size`` and ``max_threads`` a real run under ``gramine-direct`` needs. How far it
can replace the build's own size depends on SGX:

- with **EDMM**, the enclave commits EPC pages as it uses them: the request is the recommended
  size (above the measured peak with a margin), not the build's whole enclave range;
- **without EDMM**, every page of the build's ``sgx.enclave_size`` is added at start: the
  request stays the build's size, and a note says to apply the profile (``profile --write``,
  rebuild) to request less;
- a build smaller than the recommendation (size or threads) would fail under SGX: an error
  (exit 2) saying to apply the profile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from enclave_build.contract.service_info import EnclaveInfo

from ..errors import UsageError
from ..run.failures import size_text


@dataclass(frozen=True)
class MeasuredProfile:
    """The recommendation of one ``profile --json`` report."""

    path: Path
    service: str
    size: int  # bytes: the recommended [enclave] size
    max_threads: int
    peak_virtual: int | None = None  # bytes, what the run used

    @classmethod
    def load(cls, path: str | Path) -> MeasuredProfile:
        """*path* read and checked (UsageError naming the file and key)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"--profile {path}: no such file") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(
                f"--profile {path}: not the JSON `enclave-build profile --json` prints ({exc})"
            ) from None
        if not isinstance(data, dict) or data.get("schema") != 1:
            raise UsageError(
                f"--profile {path}: schema: not a profile report of schema 1 (what "
                "`enclave-build profile --json` prints)"
            )
        rec = data.get("recommendation")
        rec = rec if isinstance(rec, dict) else {}
        size, threads = rec.get("size_bytes"), rec.get("max_threads")
        if not isinstance(size, int) or not isinstance(threads, int):
            size = threads = 0
        if not _positive(size) or not _positive(threads):
            raise UsageError(
                f"--profile {path}: recommendation.size_bytes / max_threads: the run measured "
                "no enclave (a plain-process run has no LibOS); profile under gramine-direct"
            )
        service = data.get("service")
        if not isinstance(service, str):
            raise UsageError(f"--profile {path}: service: missing")
        memory = data.get("memory")
        peak = memory.get("peak_virtual_bytes") if isinstance(memory, dict) else None
        return cls(path, service, size, threads, peak if _positive(peak) else None)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def profiled_enclave(
    service: str, enclave: EnclaveInfo, profile: MeasuredProfile
) -> tuple[EnclaveInfo, str]:
    """The enclave the EPC request is sized for, and a note saying how (see the module
    doc); UsageError when the profile is another service's or the build is too small."""
    where = f"--profile {profile.path}"
    if profile.service != service:
        raise UsageError(f"{where}: a profile of {profile.service!r}, but the build is {service!r}")
    apply = "apply it (`enclave-build profile --write`, then rebuild)"
    if profile.size > enclave.size or profile.max_threads > enclave.max_threads:
        raise UsageError(
            f"{where}: the run needed [enclave] size {size_text(profile.size)!r} and "
            f"max_threads {profile.max_threads}; this build has {size_text(enclave.size)!r} "
            f"and {enclave.max_threads}: under SGX it would run out; {apply}"
        )
    if enclave.edmm:
        return replace(enclave, size=profile.size), (
            f"EPC sized from {profile.path}: {size_text(profile.size)} measured-and-margined "
            f"(EDMM commits pages as they are used; the enclave's range is "
            f"{size_text(enclave.size)})"
        )
    if profile.size < enclave.size:
        return enclave, (
            f"{profile.path} recommends [enclave] size {size_text(profile.size)}, but this "
            f"build's enclave ({size_text(enclave.size)}, no EDMM) adds every page at start: "
            f"the EPC request stays {size_text(enclave.size)}; {apply} to request less"
        )
    return enclave, f"the build's enclave is the size {profile.path} recommends"


__all__ = ["MeasuredProfile", "profiled_enclave"]
