"""Which spec.toml key a Gramine manifest key comes from.

The manifest template (``templates/manifest.toml.j2``) writes these keys straight from the
plan's enclave resources, which ``[enclave]`` sets; a difference in one of them between two
builds is a difference in that spec key. Keys that several spec keys feed (``loader.argv``,
``loader.env``, ``fs.mounts``) or that the framework plugin decides are named as manifest keys
only.
"""

from __future__ import annotations

#: manifest key -> the spec key (``SECTION.KEY``, as written in spec.toml) it comes from.
MANIFEST_TO_SPEC: dict[str, str] = {
    "sgx.enclave_size": "enclave.size",
    "sgx.max_threads": "enclave.max_threads",
    "sgx.edmm_enable": "enclave.edmm",
    "sgx.debug": "enclave.debug",
    "sgx.isvprodid": "enclave.isv_prod_id",
    "sgx.isvsvn": "enclave.isv_svn",
    "loader.log_level": "enclave.log_level",
}


def spec_key(manifest_key: str) -> str | None:
    """The spec key *manifest_key* comes from, or None when no single spec key sets it."""
    return MANIFEST_TO_SPEC.get(manifest_key)


__all__ = ["MANIFEST_TO_SPEC", "spec_key"]
