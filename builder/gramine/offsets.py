"""Gramine's layout constants, read from ``_graminelibos_offsets.py`` as data.

Gramine installs this file next to its Python package. It holds ``NAME = 0xHEX`` lines
(plus a comment header). It comes out of an image we do not trust yet, so it is parsed
line by line and never imported or executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnclaveBuildError

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(0x[0-9a-fA-F]+|[0-9]+)\s*\Z")

#: Every constant the measurement and SIGSTRUCT code reads.
REQUIRED = (
    "PAGESIZE",
    "SSA_FRAME_SIZE",
    "SSA_FRAME_NUM",
    "TCS_SIZE",
    "ENCLAVE_STACK_SIZE",
    "ENCLAVE_SIG_STACK_SIZE",
    "DEFAULT_ENCLAVE_BASE",
    "MMAP_MIN_ADDR",
    "TCS_OSSA",
    "TCS_NSSA",
    "TCS_OENTRY",
    "TCS_OGS_BASE",
    "TCS_OFS_LIMIT",
    "TCS_OGS_LIMIT",
    "SGX_COMMON_SELF",
    "SGX_COMMON_STACK_PROTECTOR_CANARY",
    "STACK_PROTECTOR_CANARY_DEFAULT",
    "SGX_ENCLAVE_SIZE",
    "SGX_TCS_OFFSET",
    "SGX_INITIAL_STACK_ADDR",
    "SGX_SIG_STACK_LOW",
    "SGX_SIG_STACK_HIGH",
    "SGX_SSA",
    "SGX_GPR",
    "SGX_GPR_SIZE",
    "SGX_MANIFEST_SIZE",
    "SGX_HEAP_MIN",
    "SGX_HEAP_MAX",
    "SGX_FLAGS_DEBUG",
    "SGX_FLAGS_MODE64BIT",
    "SGX_MISCSELECT_EXINFO",
    "SGX_XFRM_LEGACY",
    "SGX_XFRM_AVX",
    "SGX_XFRM_AVX512",
    "SGX_XFRM_AMX",
    "SGX_XFRM_MPX",
    "SGX_XFRM_PKRU",
    "SGX_FLAGS_MASK_CONST",
    "SGX_XFRM_MASK_CONST",
    "SGX_MISCSELECT_MASK_CONST",
    "SGX_ARCH_SIGSTRUCT_HEADER",
    "SGX_ARCH_SIGSTRUCT_VENDOR",
    "SGX_ARCH_SIGSTRUCT_DATE",
    "SGX_ARCH_SIGSTRUCT_HEADER2",
    "SGX_ARCH_SIGSTRUCT_SWDEFINED",
    "SGX_ARCH_SIGSTRUCT_MODULUS",
    "SGX_ARCH_SIGSTRUCT_EXPONENT",
    "SGX_ARCH_SIGSTRUCT_SIGNATURE",
    "SGX_ARCH_SIGSTRUCT_MISC_SELECT",
    "SGX_ARCH_SIGSTRUCT_MISC_MASK",
    "SGX_ARCH_SIGSTRUCT_ATTRIBUTES",
    "SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK",
    "SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH",
    "SGX_ARCH_SIGSTRUCT_ISV_PROD_ID",
    "SGX_ARCH_SIGSTRUCT_ISV_SVN",
    "SGX_ARCH_SIGSTRUCT_Q1",
    "SGX_ARCH_SIGSTRUCT_Q2",
    "SGX_ARCH_SIGSTRUCT_SIZE",
)


class OffsetsError(EnclaveBuildError):
    """The offsets file is missing, malformed or incomplete."""


@dataclass(frozen=True)
class Offsets:
    """Named integer constants; attribute access (``offs.PAGESIZE``) like Gramine's module."""

    values: dict[str, int]
    source: str = "<offsets>"

    def __getattr__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def parse(cls, text: str, source: str = "<offsets>") -> Offsets:
        values: dict[str, int] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                raise OffsetsError(
                    f"{source}:{lineno}: expected a 'NAME = 0xHEX' line, got {raw.strip()[:60]!r}"
                )
            name, value = match.groups()
            values[name] = int(value, 0)
        missing = [name for name in REQUIRED if name not in values]
        if missing:
            raise OffsetsError(
                f"{source}: not a Gramine offsets file: missing {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        return cls(values, source)

    @classmethod
    def load(cls, path: str | Path) -> Offsets:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OffsetsError(f"{path}: cannot read Gramine offsets file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise OffsetsError(f"{path}: not a text file") from exc
        return cls.parse(text, str(path))
