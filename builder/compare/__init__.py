"""Compare two builds (``enclave-build diff``): what differs in what determines their enclave
identity and their image (:func:`builder.compare.sides.diff_builds`)."""
