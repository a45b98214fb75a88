"""The schema engine plugins describe their spec sections with (:class:`Field`, :class:`Section`).

One engine validates every configuration file enclave-build reads; it lives in the contract
package, :mod:`enclave_build.contract.schema`, and is re-exported here (and by
:mod:`enclave_build.plugin`, the stable plugin API).
"""

from enclave_build.contract.schema import (Field, Problem, Section, did_you_mean,  # noqa: F401
                                           parse_size, validate_section, validate_table)

__all__ = ["Field", "Problem", "Section", "did_you_mean", "parse_size", "validate_section",
           "validate_table"]
