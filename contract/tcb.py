"""Which TCB statuses of an enclave's platform a verifier accepts (Intel's TCB info levels)."""

from __future__ import annotations

from dataclasses import dataclass

#: Every status Intel's TCB info assigns a platform, best first.
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)


@dataclass(frozen=True)
class TcbPolicy:
    """What a quote's platform may be: *allowed_statuses*, and among their advisories those of
    *allowed_advisories* only (None: any) and none of *denied_advisories*; *allow_debug* admits
    DEBUG enclaves (see the verifier for whether it can)."""

    allowed_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_advisories: frozenset[str] | None = None  # None: any advisory of an allowed status
    denied_advisories: frozenset[str] = frozenset()
    allow_debug: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.allowed_statuses) - set(TCB_STATUSES)
        if unknown:
            raise ValueError(
                f"unknown TCB status {sorted(unknown)[0]!r}; known: {', '.join(TCB_STATUSES)}"
            )

    def relaxations(self) -> list[str]:
        """Human-readable list of what this policy allows beyond the strict default."""
        extra = sorted(set(self.allowed_statuses) - {"UpToDate"})
        return [f"TCB status {s} allowed" for s in extra]


__all__ = ["TCB_STATUSES", "TcbPolicy"]
