"""Sizes in bytes: one :class:`Size` type for every size grammar enclave-build reads.

Each file or tool that names sizes has its own notation, and each is a :class:`Grammar` here:

==================  =========================================  ================================
grammar             examples                                   used by
==================  =========================================  ================================
``SPEC_SIZE``       ``"512M"``, ``"4G"``                       spec.toml ([enclave] size,
                                                               [limits] byte limits)
``HUMAN_SIZE``      ``"10G"``, ``"1.5GiB"``, ``"500 MB"``,     blob-cache limits (environment,
                    ``"0"``                                    ``cache prune --max-size``)
``OCCLUM_SIZE``     ``"64M"``, ``"64MB"``, ``"4096B"``         [occlum] sizes, Occlum.json
``GRAMINE_SIZE``    ``"256M"``, ``"0x10000000"``, ``1024``     Gramine manifests
``K8S_MEMORY``      ``"512Mi"``, ``"2Gi"``, ``"1024"``         [deploy] memory quantities
``K8S_BYTES``       ``"64Gi"``, ``"64G"`` (10^9), ``"68719"``  a node's EPC (Kubernetes
                                                               quantities, decimal or binary)
``OCCLUM_JSON_SIZE`` ``"32MB"``, ``"4096B"``                  Occlum.json (as Occlum reads it)
``CLI_SIZE``        ``"4G"``, ``"4Gi"``, ``"512M"``            ``plan-capacity --enclave-size``
==================  =========================================  ================================

K, M, G, T (and Ki, Mi, ...) are binary multiples everywhere except Kubernetes' decimal
suffixes (k, M, G, ... in ``K8S_BYTES``), as Kubernetes reads them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import ContractError

_BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
INT64_MAX = (1 << 63) - 1


class SizeError(ContractError):
    """Text that is not a size in the grammar asked for; the message says what is allowed."""


@dataclass(frozen=True)
class Grammar:
    """One notation for sizes: a full-match *pattern* with groups ``number`` and ``unit``,
    the bytes of each unit (case-folded when *fold_case*), and the bounds."""

    name: str
    pattern: str
    units: dict[str, int]
    doc: str
    fraction: bool = False  # "1.5G"
    integer_base: int = 10  # 0: Python's int(x, 0) (0x.., 0o..)
    minimum: int = 1
    maximum: int | None = None
    fold_case: bool = False
    strip: bool = False  # surrounding blanks are not part of the size
    noun: str = "a size"
    range_doc: str = ""  # what the bounds allow, for the error message
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_compiled", re.compile(self.pattern, re.IGNORECASE if self.fold_case else 0)
        )

    def parse(self, text: str) -> int:
        probe = text.strip() if self.strip else text
        match = self._compiled.fullmatch(probe)
        if match is None:
            raise SizeError(f"{text!r} is not {self.noun}; allowed: {self.doc}")
        unit = match.group("unit") or ""
        scale = self.units[unit.upper() if self.fold_case else unit]
        number = match.group("number")
        try:
            value = (
                int(float(number) * scale)
                if self.fraction
                else int(number, self.integer_base) * scale
            )
        except ValueError:
            raise SizeError(f"{text!r} is not {self.noun}; allowed: {self.doc}") from None
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            bound = self.range_doc or (
                f"at least {self.minimum}"
                if self.maximum is None
                else f"{self.minimum} to {self.maximum} bytes"
            )
            raise SizeError(f"{text!r} is out of range; allowed: {bound}")
        return value


SPEC_SIZE = Grammar(
    "spec",
    r"(?P<number>[1-9][0-9]*)(?P<unit>[KMG])",
    {k: _BINARY[k] for k in "KMG"},
    'a positive integer with a K, M or G suffix, e.g. "512M" or "4G"',
)
HUMAN_SIZE = Grammar(
    "human",
    r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]?)(?:i?B)?",
    {"": 1, **{k: _BINARY[k] for k in "KMGT"}},
    'a number of bytes with an optional K, M, G or T (binary multiples), e.g. "10G"',
    fraction=True,
    minimum=0,
    fold_case=True,
    strip=True,
)
OCCLUM_SIZE = Grammar(
    "occlum",
    r"(?P<number>[0-9]+)\s*(?:(?P<unit>[KMGT])B?|B)",
    {"": 1, **{k: _BINARY[k] for k in "KMGT"}},
    '<integer><K|M|G|T>, optionally with a trailing B, e.g. "64M" or "64MB"',
    minimum=0,
    strip=True,
)
GRAMINE_SIZE = Grammar(
    "gramine",
    r"(?P<number>(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[0-9]+))(?P<unit>[KMG]?)",
    {"": 1, **{k: _BINARY[k] for k in "KMG"}},
    "an integer (decimal or 0x hex) with an optional K, M or G suffix, e.g. '256M', '4G' or "
    "'0x10000000'",
    integer_base=0,
    minimum=0,
)
K8S_MEMORY = Grammar(
    "k8s-memory",
    r"(?P<number>[1-9][0-9]*)(?P<unit>Ki|Mi|Gi|Ti)?",
    {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40},
    'bytes with a binary suffix, e.g. "512Mi" or "2Gi"',
    noun="a memory quantity",
)
K8S_BYTES = Grammar(
    "k8s-bytes",
    r"(?P<number>[0-9]+)(?P<unit>k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?",
    {
        "": 1,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "P": 10**15,
        "E": 10**18,
        "Ki": 1 << 10,
        "Mi": 1 << 20,
        "Gi": 1 << 30,
        "Ti": 1 << 40,
        "Pi": 1 << 50,
        "Ei": 1 << 60,
    },
    "bytes as Kubernetes writes them: an integer, or with a decimal suffix k, M, G, T (64G = "
    "64 x 10^9) or a binary one Ki, Mi, Gi, Ti (64Gi = 64 x 2^30)",
    maximum=INT64_MAX,
    strip=True,
    noun="a quantity of bytes",
    range_doc=f"more than 0 and at most {INT64_MAX} bytes",
)
OCCLUM_JSON_SIZE = Grammar(
    "occlum-json",
    r"\s*\+?(?P<number>[0-9]+)\s*(?P<unit>KB|MB|GB|TB|B)\s*",
    {"B": 1, **{k + "B": _BINARY[k] for k in "KMGT"}},
    'an integer with a unit KB, MB, GB, TB or B, e.g. "32MB"',
    minimum=0,
    maximum=(1 << 64) - 1,
    range_doc="at most 2^64-1 bytes",
)
CLI_SIZE = Grammar(
    "cli",
    r"(?P<number>[1-9][0-9]*)(?P<unit>K|M|G|T|Ki|Mi|Gi|Ti)?",
    {"": 1, **{k: _BINARY[k] for k in "KMGT"}, **{k + "i": _BINARY[k] for k in "KMGT"}},
    "an integer with K, M, G or T (binary units, Gi etc. also accepted), e.g. 4G or 512Mi",
    maximum=INT64_MAX,
    strip=True,
    range_doc="at most 2^63-1 bytes",
)

#: Regular expressions of the grammars whose text a schema field checks by pattern.
K8S_MEMORY_PATTERN = K8S_MEMORY.pattern.replace("(?P<number>", "(").replace("(?P<unit>", "(")


class Size(int):
    """A number of bytes. ``Size.parse("4G")`` reads one; ``str(Size(4 << 30))`` is ``4G``."""

    def __new__(cls, value: int = 0) -> Size:
        if int(value) < 0:
            raise SizeError(f"{value}: a size cannot be negative")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str | int, grammar: Grammar = SPEC_SIZE) -> Size:
        """*text* read in *grammar* (SizeError saying what is allowed); an int is taken as
        bytes."""
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(text)
        if not isinstance(text, str):
            raise SizeError(f"{text!r} is not a size; allowed: {grammar.doc}")
        return cls(grammar.parse(text))

    @property
    def is_power_of_two(self) -> bool:
        return self > 0 and not self & (self - 1)

    def text(self, *, fallback: str = "bytes") -> str:
        """The largest binary unit that divides it: ``4G``, ``512M``, ``64K``; otherwise
        *fallback*: ``"bytes"`` (the plain number), ``"hex"`` (``0x...``), or ``"error"``
        (SizeError: not a whole number of KiB)."""
        for unit in ("G", "M", "K"):
            scale = _BINARY[unit]
            if self >= scale and self % scale == 0:
                return f"{self // scale}{unit}"
        if fallback == "hex":
            return f"{int(self):#x}"
        if fallback == "error":
            raise SizeError(f"{int(self)} is not a whole number of KiB")
        return str(int(self))

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"Size({int(self)})"

    def occlum_text(self) -> str:
        """The largest exact Occlum.json unit: ``"32MB"``, ``"1536B"``."""
        for unit in ("T", "G", "M", "K"):
            if self and self % _BINARY[unit] == 0:
                return f"{self // _BINARY[unit]}{unit}B"
        return f"{int(self)}B"

    def mebibytes_text(self) -> str:
        """Rounded up to whole MiB, Kubernetes style: ``"512Mi"``."""
        return f"{math.ceil(self / (1 << 20))}Mi"

    def gigabytes_text(self) -> str:
        """``4G`` when a whole number of GiB, else rounded up to whole MiB (``"1536M"``)."""
        if self % (1 << 30) == 0:
            return f"{self >> 30}G"
        return f"{math.ceil(self / (1 << 20))}M"


__all__ = [
    "Size",
    "SizeError",
    "Grammar",
    "SPEC_SIZE",
    "HUMAN_SIZE",
    "OCCLUM_SIZE",
    "OCCLUM_JSON_SIZE",
    "GRAMINE_SIZE",
    "K8S_MEMORY",
    "K8S_BYTES",
    "CLI_SIZE",
    "K8S_MEMORY_PATTERN",
    "INT64_MAX",
]
