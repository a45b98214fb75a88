"""enclave-build's contracts: the files that cross a boundary, one typed definition each.

The builder writes them, the enclave runtime (the model server) and the secret server read
them; each format has one dataclass with one writer and one reader that validates the whole
file and reports every problem at once as ``FILE:LINE: KEY: message``:

=====================  =========================================  ============================
file                   type (module)                              writer / reader
=====================  =========================================  ============================
model-server.json      :class:`.server_config.ServerConfig`       ``to_json`` / ``load``
measurements.json      :class:`.measurements.Measurements`        ``to_json`` / ``load``
service.json           :class:`.service_info.ServiceInfo`         ``to_json`` / ``load``
secrets-policy.toml    :class:`.policy_fragment.PolicyFragment`   ``to_toml`` / ``load``
secrets.toml           :class:`.secrets_config.SecretsConfig`     ``to_toml`` / ``load``
sbom.spdx.json         :class:`.sbom.Sbom` (SPDX 2.3)              builder.sbom / ``load``
provenance.dsse.json   :class:`.provenance.DsseEnvelope`,          ``to_json`` / ``load``
                       :class:`.provenance.Provenance`             ``statement_bytes`` /
                                                                  ``from_statement``
=====================  =========================================  ============================

Also here: the one :class:`.identity.EnclaveIdentity` (and MRSIGNER's computation), the names
of image paths, output files and environment variables (:mod:`.names`), the schema engine every
configuration file validates through (:mod:`.schema`), the one :class:`.size.Size` type, and
the JSON Schemas of the formats (:mod:`.schemas`).

Standard library only (TOML writing imports tomli-w when called, which only the builder does),
and nothing of the project: this package ships into every image that runs enclave-build's code.
"""
